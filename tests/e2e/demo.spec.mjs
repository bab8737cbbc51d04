// The demo page in headless Chromium, driven by playwright-core: run by test_demo_page.py,
// which starts the server (with a callbacks.stomp listener beside it, for the page's STOMP
// transport) and publishes over AMQP when asked to.
//
// Protocol with the Python harness, one JSON object per line:
//   stdout  {"publish": {"topic": "t", "payload": "<base64>"}}   publish over AMQP, then answer
//   stdin   {"published": "t"}                                   RabbitMQ confirmed it
//   stdout  {"done": {"screenshot": "<path>"}}                   the scenario passed
// Diagnostics go to stderr; a failure exits 1 with its reason (and a screenshot).
//
// Environment: DEMO_URL (the page), DEMO_PREFIX (a routing-key word of this run's own),
// DEMO_RPC_TOKEN (the RPC endpoint's bearer token), CHROMIUM (the browser), ARTIFACTS (where
// screenshots go).
import { rmSync } from "node:fs";
import { join as pathJoin } from "node:path";
import { createInterface } from "node:readline";

import { launchChromium } from "../support/chromium.mjs";

const WAIT = 5000; // milliseconds any single expected event may take
const { DEMO_URL, DEMO_PREFIX, DEMO_RPC_TOKEN, CHROMIUM, ARTIFACTS } = process.env;
const required = { DEMO_URL, DEMO_PREFIX, DEMO_RPC_TOKEN, CHROMIUM, ARTIFACTS };
for (const [name, value] of Object.entries(required)) {
  if (!value) throw new Error(`${name} is not set: run this through tests/e2e/test_demo_page.py`);
}

// --- the harness ----------------------------------------------------------------------------

const answers = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function publishOverAmqp(topic, payload) {
  const bytes = typeof payload === "string" ? Buffer.from(payload, "utf8") : Buffer.from(payload);
  process.stdout.write(JSON.stringify({ publish: { topic, payload: bytes.toString("base64") } }) + "\n");
  const { value, done } = await answers.next();
  if (done) throw new Error("the harness closed stdin before confirming a publish");
  const answer = JSON.parse(value);
  if (answer.published !== topic) throw new Error(`the harness answered ${value}`);
}

function step(text) {
  console.error(`[demo.spec] ${text}`);
}

// --- the page -----------------------------------------------------------------------------

const browser = await launchChromium(CHROMIUM, { viewport: { width: 1200, height: 900 } });
const { context } = browser;
context.setDefaultTimeout(WAIT);
const page = context.pages()[0] ?? (await context.newPage());
const problems = [];
// The one error the scenario provokes, publishing before the token is given; once set, it
// stays set, since its console line may arrive after the page showed the answer.
let expected401 = false;
page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
page.on("response", (response) => {
  if (response.status() === 401 && expected401) return;
  if (response.status() >= 400) problems.push(`HTTP ${response.status()} for ${response.url()}`);
});
page.on("console", (message) => {
  if (expected401 && message.text().includes("status of 401")) return;
  if (message.type() === "error") problems.push(`console error: ${message.text()}`);
});

const log = (kind, topic, text) =>
  page.locator(`#log li[data-kind="${kind}"][data-topic="${topic}"]`, { hasText: text });
const status = page.locator("#status");

async function connected(description) {
  await page.locator('#status[data-state="connected"]', { hasText: description }).waitFor();
}

async function join(topic, nth = 1) {
  await page.getByLabel("Topic or pattern").fill(topic);
  await page.getByRole("button", { name: "Join", exact: true }).click();
  // @join comes once RabbitMQ bound the topic: publishing after it cannot be missed.
  await log("answer", "@join", topic).nth(nth - 1).waitFor();
}

async function received(topic, text) {
  await log("message", topic, text).waitFor();
}

const sio = `${DEMO_PREFIX}.sio`;
const ws = `${DEMO_PREFIX}.ws`;
const stomp = `${DEMO_PREFIX}.stomp`;
const screenshot = pathJoin(ARTIFACTS, "demo-page.png");
const failure = pathJoin(ARTIFACTS, "demo-page-failure.png");
rmSync(failure, { force: true }); // a screenshot of an older failure would mislead
let failed = false;
try {
  step(`open ${DEMO_URL}`);
  await page.goto(DEMO_URL);
  await connected("Socket.IO");
  await page.locator("#publish-form button[type=submit]:enabled").waitFor(); // RPC is on

  step("Socket.IO: join, then a text and a binary message over AMQP");
  await join(sio);
  await page.getByRole("button", { name: `Leave ${sio}` }).waitFor();
  await publishOverAmqp(sio, "hello from AMQP over Socket.IO");
  await received(sio, "hello from AMQP over Socket.IO");
  await publishOverAmqp(sio, [0xff, 0x00, 0x01]);
  await received(sio, "/wAB (binary, 3 bytes, base64)");

  step("bare WebSocket: the joined topic is joined again on the new connection");
  await page.getByLabel("Bare WebSocket").check();
  await connected("bare WebSocket");
  await log("answer", "@join", sio).nth(1).waitFor();
  await publishOverAmqp(sio, "still joined after the switch");
  await received(sio, "still joined after the switch");
  await join(`${ws}.*`);
  await page.getByLabel("Topic or pattern").fill(`${ws}.bad*`);
  await page.getByRole("button", { name: "Join", exact: true }).click();
  await log("error", "#join", "'*' and '#' must be whole words").waitFor();
  await publishOverAmqp(`${ws}.amqp`, "hello from AMQP over WebSocket");
  await received(`${ws}.amqp`, "hello from AMQP over WebSocket");

  step("publish from the page through the RPC HTTP endpoint, which asks for its token");
  await page.getByLabel("Topics", { exact: true }).fill(`${ws}.rpc`);
  await page.getByLabel("Payload", { exact: true }).fill('{"from": "the page"}');
  expected401 = true;
  await page.getByRole("button", { name: "Publish", exact: true }).click();
  await page.locator('#publish-result[data-ok="false"]', { hasText: "unauthorized" }).waitFor();
  await page.getByLabel("Bearer token").fill(DEMO_RPC_TOKEN);
  await page.getByRole("button", { name: "Publish", exact: true }).click();
  await page.locator('#publish-result[data-ok="true"]').waitFor();
  await received(`${ws}.rpc`, '{"from": "the page"}');

  step("leave");
  await page.getByRole("button", { name: `Leave ${ws}.*` }).click();
  await log("answer", "@leave", `${ws}.*`).waitFor();
  await page.getByRole("button", { name: `Leave ${ws}.*` }).waitFor({ state: "detached" });

  step("STOMP with stomp.js: the joined topic is subscribed again, on the STOMP listener");
  await page.getByLabel("STOMP (stomp.js)").check();
  await connected("STOMP 1.2");
  await log("answer", "RECEIPT", `SUBSCRIBE /topic/${sio}`).waitFor();
  await publishOverAmqp(sio, "hello from AMQP over STOMP");
  await received(sio, "hello from AMQP over STOMP");
  await page.getByLabel("Topic or pattern").fill(`${stomp}.*`);
  await page.getByRole("button", { name: "Join", exact: true }).click();
  await log("answer", "RECEIPT", `SUBSCRIBE /topic/${stomp}.*`).waitFor();
  await publishOverAmqp(`${stomp}.amqp`, "a wildcard over STOMP");
  await received(`${stomp}.amqp`, "a wildcard over STOMP");
  await page.getByRole("button", { name: `Leave ${stomp}.*` }).click();
  await log("answer", "RECEIPT", `UNSUBSCRIBE /topic/${stomp}.*`).waitFor();

  if (problems.length) throw new Error(`the page reported:\n  ${problems.join("\n  ")}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  process.stdout.write(JSON.stringify({ done: { screenshot } }) + "\n");
} catch (error) {
  failed = true;
  await page.screenshot({ path: failure, fullPage: true }).catch(() => {});
  console.error(`[demo.spec] FAILED: ${error.message}`);
  console.error(`[demo.spec] status: ${await status.textContent().catch(() => "?")}`);
  if (problems.length) console.error(`[demo.spec] the page reported:\n  ${problems.join("\n  ")}`);
  console.error(`[demo.spec] screenshot of the failure: ${failure}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
