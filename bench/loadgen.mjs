// One load generator process of bench/: many subscribing sockets, in node.
//
// Driven by the bench driver over stdin/stdout, one JSON object per line:
//
//   -> {"cmd":"connect", "kind":"ws"|"sio"|"stomp", "engine":"raw"|"ws", "url":...,
//       "topics":[...], "first":i, "count":n, "concurrency":c, "timeout_ms":t,
//       "total_timeout_ms":t, "addr_every":k}
//   <- {"event":"connected", "ok":n, "failed":m, "errors":{...}, "ms":...}
//   -> {"cmd":"phase", "phase":p}          count only messages of phase p from now on
//   -> {"cmd":"count", "expected":{topic: messages}}
//   <- {"event":"count", "received":n, "want":m}
//   -> {"cmd":"stats", "expected":{topic: messages}}
//   <- {"event":"stats", "received":..., "lost":..., "dup":..., "hist":[[bucket,n],...], ...}
//   -> {"cmd":"close"}                     <- {"event":"closed"} then exit
//
// Connection i (global index, `first + j`) joins topics[i % topics.length], so the driver
// knows what each socket should receive. Past `addr_every` connections the source
// address moves to 127.0.0.2, 127.0.0.3, ...: one source address has ~28,000 ephemeral
// ports (net.ipv4.ip_local_port_range).
//
// Message bodies carry `~<send time in us, CLOCK_MONOTONIC>.<phase>~`; node's hrtime and
// Python's time.monotonic_ns() read the same clock on Linux, so latency is a subtraction.
// The parse works on the raw frame bytes of every protocol (JSON text, a Socket.IO
// packet, a STOMP MESSAGE frame): find '~', read digits.

import { randomBytes } from "node:crypto";
import net from "node:net";
import { createInterface } from "node:readline";
import { WebSocket } from "ws";

const TILDE = 0x7e;
const DOT = 0x2e;

// Latency histogram, log-linear: exact below 128 us, then 64 buckets per power of two
// (about 1.6% resolution) up to 2^32 us. bench/stats.py decodes the same layout.
const SUB = 64;
const HIST_SIZE = 128 + (32 - 7) * SUB;
let hist = new Float64Array(HIST_SIZE);

function bucketOf(us) {
  if (us < 128) return us < 0 ? 0 : us | 0;
  if (us >= 4294967295) us = 4294967295;
  const v = us >>> 0;
  const e = 31 - Math.clz32(v);
  return 128 + (e - 7) * SUB + ((v >>> (e - 6)) & (SUB - 1));
}

// performance.now() is fast; anchor it to CLOCK_MONOTONIC once.
const { performance } = globalThis;
const originUs = Number(process.hrtime.bigint() / 1000n) - performance.now() * 1000;
const nowUs = () => performance.now() * 1000 + originUs;

let phase = -1;
let received = 0; // messages of the current phase
let stale = 0; // messages of an earlier phase (a backlog that spilled over)
let other = 0; // frames we did not recognise
let firstUs = 0;
let lastUs = 0;
let maxUs = 0;
let closedDuringPhase = 0;
const conns = [];
const closeCodes = {};

function onPayload(conn, buf, now) {
  // buf: the frame's payload; the body is after the first '~'. `now`: when the chunk
  // holding the frame was read (one clock read per chunk), or undefined.
  let i = buf.indexOf(TILDE);
  if (i < 0) {
    other++;
    return;
  }
  const n = buf.length;
  let ts = 0;
  for (i++; i < n; i++) {
    const c = buf[i] - 48;
    if (c < 0 || c > 9) break;
    ts = ts * 10 + c;
  }
  let p = 0;
  if (buf[i] === DOT) {
    for (i++; i < n; i++) {
      const c = buf[i] - 48;
      if (c < 0 || c > 9) break;
      p = p * 10 + c;
    }
  }
  if (p !== phase) {
    stale++;
    return;
  }
  if (now === undefined) now = nowUs();
  const lat = now - ts;
  hist[bucketOf(lat)]++;
  if (lat > maxUs) maxUs = lat;
  if (received === 0) firstUs = now;
  lastUs = now;
  received++;
  conn.recv++;
}

// --- protocols: what to send once open, and how to read each frame --------------------

function joinJson(topic) {
  return JSON.stringify({ command: "join", topics: [topic] });
}

const protocols = {
  // rabbitsocks pubsub on /websocket/, and the aiohttp floor: JSON text frames.
  ws: {
    url: (base) => base,
    subprotocols: undefined,
    onOpen(conn) {
      conn.send(joinJson(conn.topic));
    },
    onMessage(conn, buf, now) {
      if (conn.joined) return onPayload(conn, buf, now);
      const text = buf.toString();
      if (text.includes('"@join"')) conn.ready();
      else if (text.includes('"#join"') || text.includes('"#error"')) conn.fail(`refused: ${text}`);
    },
  },
  // Socket.IO v5 over Engine.IO v4, websocket transport only: one packet per frame.
  sio: {
    url: (base) => base,
    subprotocols: undefined,
    onOpen() {},
    onMessage(conn, buf, now) {
      const t = buf[0];
      if (t === 0x32) {
        // "2": Engine.IO ping; answer pong "3"
        conn.send("3");
        return;
      }
      if (conn.joined) return onPayload(conn, buf, now);
      const text = buf.toString();
      if (text.startsWith("0{")) conn.send("40");
      else if (text.startsWith("40")) {
        conn.send(`42${JSON.stringify(["message", joinJson(conn.topic)])}`);
      } else if (text.startsWith("44")) conn.fail(`connect refused: ${text}`);
      else if (text.includes("@join")) conn.ready();
      else if (text.includes("#join") || text.includes("#error")) conn.fail(`refused: ${text}`);
    },
  },
  // STOMP 1.2 over WebSocket (RabbitMQ Web-STOMP), one STOMP frame per WebSocket frame.
  stomp: {
    url: (base) => base,
    subprotocols: ["v12.stomp", "v11.stomp"],
    onOpen(conn) {
      conn.send("CONNECT\naccept-version:1.2,1.1\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0");
    },
    onMessage(conn, buf, now) {
      if (conn.joined) return onPayload(conn, buf, now);
      const text = buf.toString();
      if (text.startsWith("CONNECTED")) {
        conn.send(
          `SUBSCRIBE\nid:0\ndestination:/topic/${conn.topic}\nack:auto\nreceipt:r0\n\n\0`,
        );
      } else if (text.startsWith("RECEIPT")) conn.ready();
      else if (text.startsWith("ERROR")) conn.fail(`stomp error: ${text.split("\n", 3).join(" ")}`);
    },
  },
};

// --- connecting ------------------------------------------------------------------------
//
// Two client engines with the same behaviour. "raw" (the default) is a minimal RFC 6455
// client over net.Socket: it parses the server's frames in place, reads the clock once per
// TCP read rather than once per frame, and allocates nothing per frame but a subarray,
// which makes it several times cheaper per delivery than `ws` on a 2-core machine where
// the load generator shares the CPU with the server. "ws" is the `ws` library, kept to
// cross-check the raw engine (`--client ws`).

function settle(conn, resolve, timer) {
  conn.ready = () => {
    if (conn.done) return;
    conn.done = true;
    conn.joined = true;
    clearTimeout(timer.id);
    resolve({ conn });
  };
  conn.fail = (why) => {
    if (conn.done) return;
    conn.done = true;
    clearTimeout(timer.id);
    try {
      conn.terminate();
    } catch {}
    resolve({ error: why });
  };
}

function onClosed(conn, code) {
  if (!conn.done) conn.fail(`closed with ${code} before joining`);
  else if (phase >= 0) {
    closedDuringPhase++;
    closeCodes[code] = (closeCodes[code] || 0) + 1;
  }
}

function openWs(kind, url, topic, localAddress, timeoutMs) {
  const proto = protocols[kind];
  return new Promise((resolve) => {
    const conn = { topic, recv: 0, joined: false, done: false };
    const timer = { id: setTimeout(() => conn.fail(`timeout after ${timeoutMs} ms`), timeoutMs) };
    settle(conn, resolve, timer);
    const options = {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: timeoutMs,
      maxPayload: 16 * 1024 * 1024,
    };
    if (localAddress) options.localAddress = localAddress;
    let ws;
    try {
      ws = new WebSocket(url, proto.subprotocols, options);
    } catch (err) {
      resolve({ error: String(err.message || err) });
      return;
    }
    conn.send = (text) => ws.send(text);
    conn.terminate = () => ws.terminate();
    ws.binaryType = "nodebuffer";
    ws.on("open", () => proto.onOpen(conn));
    ws.on("message", (data) => proto.onMessage(conn, data));
    ws.on("error", (err) => conn.fail(String(err.code || err.message || err)));
    ws.on("close", (code) => onClosed(conn, code));
  });
}

// A client frame: FIN, opcode, MASK bit with an all-zero masking key (RFC 6455 5.3 wants
// an unpredictable key against proxy cache poisoning; on loopback to a server that only
// unmasks, a zero key is equivalent and saves the XOR).
function clientFrame(opcode, payload) {
  const n = payload.length;
  let header;
  if (n < 126) {
    header = Buffer.from([0x80 | opcode, 0x80 | n, 0, 0, 0, 0]);
  } else if (n < 65536) {
    header = Buffer.from([0x80 | opcode, 0x80 | 126, n >> 8, n & 255, 0, 0, 0, 0]);
  } else {
    header = Buffer.alloc(14);
    header[0] = 0x80 | opcode;
    header[1] = 0x80 | 127;
    header.writeUInt32BE(n, 6);
  }
  return Buffer.concat([header, payload]);
}

function openRaw(kind, url, topic, localAddress, timeoutMs) {
  const proto = protocols[kind];
  const u = new URL(url);
  return new Promise((resolve) => {
    const conn = { topic, recv: 0, joined: false, done: false };
    const timer = { id: setTimeout(() => conn.fail(`timeout after ${timeoutMs} ms`), timeoutMs) };
    settle(conn, resolve, timer);
    const options = { host: u.hostname, port: Number(u.port) };
    if (localAddress) options.localAddress = localAddress;
    const sock = net.connect(options);
    sock.setNoDelay(true);
    let upgraded = false;
    let closeCode = 1006;
    let pending = null; // bytes of an incomplete frame, or of the HTTP response
    let fragments = null; // payloads of a fragmented message (opcode 0 continuations)
    conn.send = (text) => sock.write(clientFrame(0x1, Buffer.from(text)));
    conn.terminate = () => sock.destroy();
    const protoHeader = proto.subprotocols
      ? `Sec-WebSocket-Protocol: ${proto.subprotocols.join(", ")}\r\n`
      : "";
    sock.on("connect", () => {
      sock.write(
        `GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n` +
          `Sec-WebSocket-Version: 13\r\n${protoHeader}\r\n`,
      );
    });
    sock.on("data", (chunk) => {
      let buf = pending === null ? chunk : Buffer.concat([pending, chunk]);
      pending = null;
      let off = 0;
      if (!upgraded) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) {
          pending = buf;
          return;
        }
        const status = buf.toString("latin1", 0, Math.min(end, 64)).split("\r\n", 1)[0];
        if (!/^HTTP\/1\.1 101/.test(status)) {
          conn.fail(`handshake: ${status}`);
          return;
        }
        upgraded = true;
        off = end + 4;
        proto.onOpen(conn);
      }
      let now; // read once per chunk, when the first data frame needs it
      const len = buf.length;
      while (len - off >= 2) {
        const b0 = buf[off];
        let n = buf[off + 1] & 0x7f;
        let h = 2;
        if (n === 126) {
          if (len - off < 4) break;
          n = buf.readUInt16BE(off + 2);
          h = 4;
        } else if (n === 127) {
          if (len - off < 10) break;
          n = buf.readUInt32BE(off + 6) + buf.readUInt32BE(off + 2) * 4294967296;
          h = 10;
        }
        if (len - off < h + n) break;
        const opcode = b0 & 0x0f;
        const payload = buf.subarray(off + h, off + h + n);
        off += h + n;
        if (opcode === 0x1 || opcode === 0x2 || opcode === 0x0) {
          let message = payload;
          if (opcode !== 0x0 && (b0 & 0x80) === 0) {
            fragments = [Buffer.from(payload)];
            continue;
          }
          if (opcode === 0x0) {
            if (fragments === null) continue;
            fragments.push(Buffer.from(payload));
            if ((b0 & 0x80) === 0) continue;
            message = Buffer.concat(fragments);
            fragments = null;
          }
          if (conn.joined && now === undefined) now = nowUs();
          proto.onMessage(conn, message, now);
        } else if (opcode === 0x9) {
          sock.write(clientFrame(0xa, Buffer.from(payload)));
        } else if (opcode === 0x8) {
          closeCode = n >= 2 ? payload.readUInt16BE(0) : 1005;
          sock.end(clientFrame(0x8, Buffer.from(payload.subarray(0, 2))));
          return;
        }
      }
      if (off < len) pending = buf.subarray(off);
    });
    sock.on("error", (err) => conn.fail(String(err.code || err.message || err)));
    sock.on("close", () => onClosed(conn, closeCode));
  });
}

let openOne = openRaw;

async function connect(msg) {
  const start = performance.now();
  const errors = {};
  let ok = 0;
  let failed = 0;
  let next = 0;
  const deadline = start + msg.total_timeout_ms;
  async function lane() {
    while (next < msg.count) {
      const j = next++;
      const index = msg.first + j;
      if (performance.now() > deadline) {
        failed++;
        errors["connect phase time limit"] = (errors["connect phase time limit"] || 0) + 1;
        continue;
      }
      const topic = msg.topics[index % msg.topics.length];
      const block = Math.floor(index / msg.addr_every);
      const localAddress = block > 0 ? `127.0.0.${1 + block}` : undefined;
      const r = await openOne(msg.kind, msg.url, topic, localAddress, msg.timeout_ms);
      if (r.conn) {
        conns.push(r.conn);
        ok++;
      } else {
        failed++;
        errors[r.error] = (errors[r.error] || 0) + 1;
      }
    }
  }
  const lanes = [];
  for (let k = 0; k < Math.min(msg.concurrency, msg.count); k++) lanes.push(lane());
  await Promise.all(lanes);
  return { event: "connected", ok, failed, errors, ms: performance.now() - start };
}

function stats(expected) {
  let lost = 0;
  let dup = 0;
  let short = 0;
  for (const c of conns) {
    const want = expected[c.topic] || 0;
    if (c.recv < want) {
      lost += want - c.recv;
      short++;
    } else if (c.recv > want) dup += c.recv - want;
  }
  const sparse = [];
  for (let i = 0; i < HIST_SIZE; i++) if (hist[i]) sparse.push([i, hist[i]]);
  return {
    event: "stats",
    received,
    stale,
    other,
    lost,
    dup,
    short_conns: short,
    first_us: firstUs,
    last_us: lastUs,
    max_us: maxUs,
    hist: sparse,
    closed: closedDuringPhase,
    close_codes: closeCodes,
    open: conns.length,
  };
}

function resetPhase(p) {
  phase = p;
  received = 0;
  stale = 0;
  other = 0;
  firstUs = 0;
  lastUs = 0;
  maxUs = 0;
  closedDuringPhase = 0;
  for (const k of Object.keys(closeCodes)) delete closeCodes[k];
  hist = new Float64Array(HIST_SIZE);
  for (const c of conns) c.recv = 0;
}

function reply(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function closeAll() {
  for (const c of conns) {
    try {
      c.terminate();
    } catch {}
  }
  conns.length = 0;
}

const rl = createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  switch (msg.cmd) {
    case "connect":
      openOne = msg.engine === "ws" ? openWs : openRaw;
      reply(await connect(msg));
      break;
    case "phase":
      resetPhase(msg.phase);
      reply({ event: "phase", phase });
      break;
    case "count": {
      // How many the open sockets should have received, for the driver's drain wait.
      let want = 0;
      const expected = msg.expected || {};
      for (const c of conns) want += expected[c.topic] || 0;
      reply({ event: "count", received, stale, want });
      break;
    }
    case "stats":
      reply(stats(msg.expected || {}));
      break;
    case "close":
      await closeAll();
      reply({ event: "closed" });
      setTimeout(() => process.exit(0), 50);
      break;
    default:
      reply({ event: "error", error: `unknown command ${msg.cmd}` });
  }
});
// The driver going away ends us too: no orphaned load generators.
rl.on("close", () => {
  closeAll().finally(() => process.exit(0));
});
