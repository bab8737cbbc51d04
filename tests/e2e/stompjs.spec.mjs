// @stomp/stompjs, the STOMP client of browser applications, against a STOMP-over-WebSocket
// server: run by test_stompjs.py, unchanged, against rabbitsocks' callbacks.stomp and against
// RabbitMQ's own Web-STOMP plugin. That both pass is what "drop-in" means.
//
// Node has no WebSocket of its own before version 22: the `ws` package stands in, as the
// stomp.js documentation suggests. stomp.js then offers v12.stomp, v11.stomp and v10.stomp
// exactly as in a browser.
//
// Protocol with the Python harness, one JSON object per line:
//   stdout  {"publish": {"exchange", "key", "payload": "<base64>", "properties": {...}}}
//   stdin   {"published": "<key>"}           RabbitMQ confirmed the AMQP publish
//   stdout  {"done": {"server": "...", "checks": N}}
// Diagnostics go to stderr; a failure exits 1 with its reason.
//
// Environment: STOMP_URL, STOMP_PREFIX (P: the script uses /topic/P.#, /topic/Ps.# and
// /queue/P-q, names of this run's own), STOMP_LOGIN, STOMP_PASSCODE.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

// Both packages are installed in demo/ (scripts/build-demo), pinned by its lock file.
const require = createRequire(new URL("../../demo/package.json", import.meta.url));
const { Client } = require("@stomp/stompjs");
globalThis.WebSocket ??= require("ws");

const WAIT = 5000; // milliseconds any single expected event may take
const { STOMP_URL, STOMP_PREFIX, STOMP_LOGIN, STOMP_PASSCODE } = process.env;
for (const [name, value] of Object.entries({ STOMP_URL, STOMP_PREFIX })) {
  if (!value) throw new Error(`${name} is not set: run this through tests/e2e/test_stompjs.py`);
}
const P = STOMP_PREFIX;
let checks = 0;

// --- the harness ----------------------------------------------------------------------------

const answers = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function publishOverAmqp(exchange, key, payload, properties = {}) {
  const bytes = Buffer.from(payload);
  const request = { exchange, key, payload: bytes.toString("base64"), properties };
  process.stdout.write(JSON.stringify({ publish: request }) + "\n");
  const { value, done } = await answers.next();
  if (done) throw new Error("the harness closed stdin before confirming a publish");
  if (JSON.parse(value).published !== key) throw new Error(`the harness answered ${value}`);
}

function step(text) {
  console.error(`[stompjs.spec] ${text}`);
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  checks += 1;
}

function within(promise, what, ms = WAIT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Messages of a subscription, awaited one at a time, in order.
class Inbox {
  constructor() {
    this.messages = [];
    this.waiters = [];
  }
  push = (message) => {
    const waiter = this.waiters.shift();
    if (waiter) waiter(message);
    else this.messages.push(message);
  };
  next(what) {
    const message = this.messages.shift();
    if (message) return Promise.resolve(message);
    return within(new Promise((resolve) => this.waiters.push(resolve)), what);
  }
}

// A SUBSCRIBE that returns once the server's RECEIPT came: messages published after it
// cannot be missed (the server bound or consumed before answering).
async function subscribe(client, destination, headers = {}) {
  const inbox = new Inbox();
  const receipt = `sub-${destination}-${Math.random()}`;
  const receipted = new Promise((resolve) => client.watchForReceipt(receipt, resolve));
  const subscription = client.subscribe(destination, inbox.push, { ...headers, receipt });
  await within(receipted, `RECEIPT of SUBSCRIBE ${destination}`);
  return { inbox, subscription };
}

async function send(client, destination, body, headers = {}) {
  const receipt = `send-${Math.random()}`;
  const receipted = new Promise((resolve) => client.watchForReceipt(receipt, resolve));
  if (typeof body === "string") client.publish({ destination, body, headers: { ...headers, receipt } });
  else client.publish({ destination, binaryBody: body, headers: { ...headers, receipt } });
  await within(receipted, `RECEIPT of SEND ${destination}`);
}

// --- the scenario -------------------------------------------------------------------------

const errors = [];
const client = new Client({
  brokerURL: STOMP_URL,
  connectHeaders: { login: STOMP_LOGIN ?? "guest", passcode: STOMP_PASSCODE ?? "guest", host: "/" },
  reconnectDelay: 0,
  heartbeatIncoming: 10000,
  heartbeatOutgoing: 10000,
  debug: () => {},
  onStompError: (frame) => errors.push(`ERROR ${frame.headers.message}: ${frame.body}`),
  onWebSocketError: (event) => errors.push(`WebSocket error: ${event.message ?? event}`),
});
const connected = new Promise((resolve) => {
  client.onConnect = resolve;
});
client.activate();
try {
  step(`connecting to ${STOMP_URL}`);
  const frame = await within(connected, "CONNECTED");
  check(frame.headers.version === "1.2", `STOMP 1.2 negotiated (got ${frame.headers.version})`);
  check(frame.headers["heart-beat"] === "10000,10000", `heart-beats (${frame.headers["heart-beat"]})`);
  check(Boolean(frame.headers.server), "a server header");
  check(Boolean(frame.headers.session), "a session header");

  step("/topic/ with wildcards, from an AMQP producer");
  const star = await subscribe(client, `/topic/${P}.*`);
  const hash = await subscribe(client, `/topic/${P}.#`);
  await publishOverAmqp("amq.topic", `${P}.a`, "hello from AMQP", {
    content_type: "text/plain",
    correlation_id: "corr-1",
    headers: { tenant: "acme" },
  });
  for (const { inbox, subscription } of [star, hash]) {
    const message = await inbox.next(`/topic/${P}.a on ${subscription.id}`);
    check(message.body === "hello from AMQP", "the body");
    check(message.headers.destination === `/topic/${P}.a`, `destination ${message.headers.destination}`);
    check(message.headers.subscription === subscription.id, "subscription");
    check(message.headers["content-type"] === "text/plain", "content-type");
    check(message.headers["correlation-id"] === "corr-1", "correlation-id");
    check(message.headers.tenant === "acme", "an AMQP header as a STOMP header");
    check(Boolean(message.headers["message-id"]), "message-id");
  }
  await publishOverAmqp("amq.topic", `${P}.a.b`, "deep");
  check((await hash.inbox.next("deep key on #")).body === "deep", "# matches two words");
  await publishOverAmqp("amq.topic", `${P}.z`, "sentinel");
  check((await star.inbox.next("sentinel on *")).body === "sentinel", "* skipped the deep key");
  check((await hash.inbox.next("sentinel on #")).body === "sentinel", "sentinel on #");

  step("SEND with a receipt, headers and a body holding NULs");
  // Another root than P, so that the wildcard subscriptions above see none of this.
  const sent = await subscribe(client, `/topic/${P}s.sent`);
  await send(client, `/topic/${P}s.sent`, "text body", { "content-type": "text/plain", custom: "v:1" });
  const echoed = await sent.inbox.next("the SEND");
  check(echoed.body === "text body", "SEND body");
  check(echoed.headers.custom === "v:1", "a custom header with a colon, escaped both ways");
  // UTF-8 with NULs: Web-STOMP sends every frame as a text WebSocket message, so a body that
  // is not UTF-8 would not reach a browser from it (rabbitsocks sends that one as binary).
  const bytes = new Uint8Array([0, 1, 2, 0, 10, 0xc3, 0xa9, 0]);
  await send(client, `/topic/${P}s.sent`, bytes, { "content-type": "application/octet-stream" });
  const binary = await sent.inbox.next("the SEND with NULs");
  check(Buffer.from(binary.binaryBody).equals(Buffer.from(bytes)), "a body with NULs (content-length)");

  step("/queue/ with client-individual acks, NACK and redelivery");
  const queue = `/queue/${P}-q`;
  const q = await subscribe(client, queue, { ack: "client-individual", "prefetch-count": "10" });
  await send(client, queue, "first");
  await send(client, queue, "second");
  const first = await q.inbox.next("first from the queue");
  const second = await q.inbox.next("second from the queue");
  check(first.body === "first" && second.body === "second", "queue order");
  check(first.headers.destination === queue, `queue destination ${first.headers.destination}`);
  check(first.headers.redelivered === "false", "not redelivered yet");
  second.ack();
  first.nack();
  const again = await q.inbox.next("the NACKed message again");
  check(again.body === "first", "redelivered body");
  check(again.headers.redelivered === "true", "redelivered flag");
  again.ack();
  await send(client, queue, "sentinel");
  check((await q.inbox.next("queue sentinel")).body === "sentinel", "nothing else was redelivered");
  q.subscription.unsubscribe();

  step("UNSUBSCRIBE stops a topic");
  star.subscription.unsubscribe({ receipt: "unsub" });
  await within(new Promise((resolve) => client.watchForReceipt("unsub", resolve)), "RECEIPT of UNSUBSCRIBE");
  await publishOverAmqp("amq.topic", `${P}.gone`, "after unsubscribe");
  check((await hash.inbox.next("# still subscribed")).body === "after unsubscribe", "# still gets it");
  await publishOverAmqp("amq.topic", `${P}.y`, "sentinel 2");
  check((await hash.inbox.next("sentinel 2")).body === "sentinel 2", "ordering");
  check(star.inbox.messages.length === 0, "nothing reached the cancelled subscription");

  check(errors.length === 0, `no ERROR frame (${errors.join("; ")})`);
  const server = frame.headers.server;
  await within(client.deactivate(), "DISCONNECT");
  process.stdout.write(JSON.stringify({ done: { server, checks } }) + "\n");
  process.exit(0);
} catch (error) {
  console.error(`[stompjs.spec] ${error.stack ?? error}`);
  if (errors.length) console.error(`[stompjs.spec] errors: ${errors.join("; ")}`);
  process.exit(1);
}
