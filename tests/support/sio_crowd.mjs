// N socket.io-client clients with their DEFAULT transports (HTTP long-polling first, then
// the upgrade to WebSocket, as browsers run it), for tests of `serve --workers` and proxies.
//
// Environment: URL (the server), N (clients), TOPIC, COUNT (messages to expect each),
// EXTRA (optional JSON of more client options), SOURCES (optional: spread the clients over
// that many source addresses, 127.0.0.2 and up). Protocol with the Python test, one JSON object per line on stdout:
//   {"ready": <seconds to connect and join every client>}      then the test publishes
//   {"done": {"received": n, "complete": k, "errors": [...], "transports": {...}}}
import { Agent } from "node:http";
import { createRequire } from "node:module";

const require = createRequire(new URL("../../demo/package.json", import.meta.url));
const { io } = require("socket.io-client");

const { URL: SERVER, N, TOPIC, COUNT, EXTRA, SOURCES } = process.env;
const total = Number(N);
const expected = Number(COUNT);
const errors = [];
const received = new Array(total).fill(0);
const started = Date.now();
const sockets = [];

function joined(socket) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no @join within 30 s")), 30000);
    socket.on("message", (data) => {
      const frame = JSON.parse(data);
      if (frame.topic === "@join") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

await Promise.all(
  Array.from({ length: total }, async (_, i) => {
    const options = { reconnection: false, ...(EXTRA ? JSON.parse(EXTRA) : {}) };
    if (SOURCES) {
      // Polling goes through the agent, the WebSocket through localAddress.
      options.localAddress = `127.0.0.${2 + (i % Number(SOURCES))}`;
      options.agent = new Agent({ keepAlive: true, localAddress: options.localAddress });
    }
    const socket = io(SERVER, options);
    sockets.push(socket);
    socket.on("connect_error", (err) => errors.push(`client ${i}: connect_error ${err.message}`));
    socket.on("disconnect", (reason) => {
      if (reason !== "io client disconnect") errors.push(`client ${i}: disconnect ${reason}`);
    });
    socket.io.on("error", (err) => errors.push(`client ${i}: engine error ${err.message}`));
    const join = joined(socket);
    socket.on("connect", () => socket.send(JSON.stringify({ command: "join", topics: [TOPIC] })));
    try {
      await join;
    } catch (err) {
      errors.push(`client ${i}: ${err.message}`);
      return;
    }
    socket.on("message", (data) => {
      if (JSON.parse(data).topic === TOPIC && ++received[i] === expected) completed();
    });
  }),
);
let complete = received.filter((n) => n >= expected).length;
let finish;
const allThere = new Promise((resolve) => {
  finish = resolve;
});
function completed() {
  complete += 1;
  if (complete === total) finish();
}
if (complete === total) finish();
process.stdout.write(JSON.stringify({ ready: (Date.now() - started) / 1000 }) + "\n");
// Every client has every message, or 20 s have passed.
await Promise.race([allThere, new Promise((resolve) => setTimeout(resolve, 20000))]);
const transports = {};
for (const socket of sockets) {
  const name = socket.io.engine?.transport?.name ?? "none";
  transports[name] = (transports[name] ?? 0) + 1;
}
process.stdout.write(
  JSON.stringify({
    done: {
      received: received.reduce((a, b) => a + b, 0),
      complete: received.filter((n) => n === expected).length,
      errors,
      transports,
    },
  }) + "\n",
);
for (const socket of sockets) socket.close();
process.exit(0);
