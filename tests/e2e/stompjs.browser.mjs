// @stomp/stompjs in headless Chromium against callbacks.stomp: the browser's own WebSocket,
// the bundle a page would load (stomp.umd.min.js), run by test_stompjs.py.
//
// Protocol with the Python harness, as stompjs.spec.mjs: {"publish": ...} lines answered by
// {"published": key}, then {"done": {...}}.
//
// Environment: STOMP_URL, STOMP_PREFIX, CHROMIUM.
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { launchChromium } from "../support/chromium.mjs";

// The UMD bundle of the package installed in demo/ (its exports do not list the file).
const BUNDLE = fileURLToPath(
  new URL("../../demo/node_modules/@stomp/stompjs/bundles/stomp.umd.min.js", import.meta.url),
);
const WAIT = 5000;
const { STOMP_URL, STOMP_PREFIX, CHROMIUM } = process.env;
for (const [name, value] of Object.entries({ STOMP_URL, STOMP_PREFIX, CHROMIUM })) {
  if (!value) throw new Error(`${name} is not set: run this through tests/e2e/test_stompjs.py`);
}
const P = STOMP_PREFIX;

const answers = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function publishOverAmqp(exchange, key, payload, properties = {}) {
  const request = { exchange, key, payload: Buffer.from(payload).toString("base64"), properties };
  process.stdout.write(JSON.stringify({ publish: request }) + "\n");
  const { value, done } = await answers.next();
  if (done || JSON.parse(value).published !== key) throw new Error(`the harness answered ${value}`);
}

function step(text) {
  console.error(`[stompjs.browser] ${text}`);
}

step("launching Chromium");
const browser = await launchChromium(CHROMIUM);
try {
  const page = browser.context.pages()[0] ?? (await browser.context.newPage());
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  await page.setContent("<!doctype html><title>stomp.js</title>");
  await page.addScriptTag({ path: BUNDLE });

  step(`connecting to ${STOMP_URL}`);
  // In the page: connect, and subscribe to a topic and a queue, each with a receipt.
  const connected = await page.evaluate(
    async ({ url, P, WAIT }) => {
      const inbox = [];
      const waiters = [];
      window.nextMessage = () =>
        inbox.length
          ? Promise.resolve(inbox.shift())
          : new Promise((resolve, reject) => {
              waiters.push(resolve);
              setTimeout(() => reject(new Error("no MESSAGE in time")), WAIT);
            });
      const deliver = (message) => {
        const summary = { body: message.body, headers: message.headers };
        window.lastMessage = message;
        const waiter = waiters.shift();
        if (waiter) waiter(summary);
        else inbox.push(summary);
      };
      const client = new StompJs.Client({ brokerURL: url, reconnectDelay: 0, debug: () => {} });
      window.client = client;
      const frame = await new Promise((resolve, reject) => {
        client.onConnect = resolve;
        client.onStompError = (f) => reject(new Error(f.headers.message));
        client.activate();
      });
      const receipted = (id) => new Promise((resolve) => client.watchForReceipt(id, resolve));
      let done = receipted("t");
      client.subscribe(`/topic/${P}.*`, deliver, { receipt: "t" });
      await done;
      done = receipted("q");
      client.subscribe(`/queue/${P}-q`, deliver, { receipt: "q", ack: "client-individual" });
      await done;
      return { version: frame.headers.version, server: frame.headers.server };
    },
    { url: STOMP_URL, P, WAIT },
  );
  if (connected.version !== "1.2") throw new Error(`negotiated ${connected.version}`);

  step("a message from AMQP");
  await publishOverAmqp("amq.topic", `${P}.browser`, "to the browser", { content_type: "text/plain" });
  const fromAmqp = await page.evaluate(() => window.nextMessage());
  if (fromAmqp.body !== "to the browser") throw new Error(`got ${JSON.stringify(fromAmqp)}`);
  if (fromAmqp.headers.destination !== `/topic/${P}.browser`) throw new Error("destination");

  step("SEND to a queue, receive it, ACK it");
  // From the browser to a queue it consumes, with a receipt; then ACK it.
  const queued = await page.evaluate(
    async ({ P }) => {
      const client = window.client;
      const receipt = new Promise((resolve) => client.watchForReceipt("s", resolve));
      client.publish({ destination: `/queue/${P}-q`, body: "from the browser", headers: { receipt: "s" } });
      await receipt;
      const message = await window.nextMessage();
      window.lastMessage.ack();
      await client.deactivate();
      return message;
    },
    { P },
  );
  if (queued.body !== "from the browser") throw new Error(`got ${JSON.stringify(queued)}`);
  if (problems.length) throw new Error(problems.join("; "));
  process.stdout.write(JSON.stringify({ done: connected }) + "\n");
} catch (error) {
  console.error(`[stompjs.browser] ${error.stack ?? error}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
process.exit(); // stdin's reader would keep the process alive
