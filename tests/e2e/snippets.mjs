// The browser-console snippets of README.md in headless Chromium, driven by playwright-core:
// run by test_console_snippets.py, which starts the server and publishes when asked to.
//
// Each snippet runs on a fresh tab of its page (the demo page has loaded socket.io-client as
// `io`), evaluated as the DevTools console evaluates what is typed into it (CDP
// Runtime.evaluate in REPL mode). Its console.log calls are collected in order, each as one
// line: its arguments, strings as they are and other values as JSON, joined by spaces.
//
// Protocol with the Python harness, one JSON object per line:
//   stdout  {"publish": "<snippet name>"}         the snippet answered its joins: publish
//   stdin   {"published": "<snippet name>"}       the server accepted the publish
//   stdout  {"done": {"<name>": [lines], ...}}    every snippet logged its lines
// Diagnostics go to stderr; a failure exits 1 with its reason (and a screenshot).
//
// Environment: SNIPPETS (JSON: [{"name", "page", "io", "code", "before", "after"}]: the page
// to type it on, whether that page must have `io`, how many console lines to wait for
// before asking for the publish, and after it; no publish when after is 0), CHROMIUM (the
// browser), ARTIFACTS (where failure screenshots go).
import { rmSync } from "node:fs";
import { join as pathJoin } from "node:path";
import { createInterface } from "node:readline";

import { launchChromium } from "../support/chromium.mjs";

const WAIT = 5000; // milliseconds any single expected event may take
const { SNIPPETS, CHROMIUM, ARTIFACTS } = process.env;
for (const [name, value] of Object.entries({ SNIPPETS, CHROMIUM, ARTIFACTS })) {
  if (!value) throw new Error(`${name} is not set: run tests/e2e/test_console_snippets.py`);
}
const snippets = JSON.parse(SNIPPETS);

// --- the harness ----------------------------------------------------------------------------

const answers = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function publish(name) {
  process.stdout.write(JSON.stringify({ publish: name }) + "\n");
  const { value, done } = await answers.next();
  if (done) throw new Error("the harness closed stdin before publishing");
  const answer = JSON.parse(value);
  if (answer.published !== name) throw new Error(`the harness answered ${value}`);
}

const started = Date.now();
function step(text) {
  console.error(`[snippets ${((Date.now() - started) / 1000).toFixed(2)}s] ${text}`);
}

// --- console lines, awaited in order ----------------------------------------------------------

class ConsoleLines {
  constructor(page, problems) {
    this.lines = [];
    this.read = 0;
    this.wake = null;
    // Arguments are read from the page asynchronously: one chain keeps the calls' order.
    this.chain = Promise.resolve();
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console error: ${message.text()}`);
      if (message.type() !== "log") return;
      this.chain = this.chain
        .then(() => Promise.all(message.args().map((arg) => arg.jsonValue())))
        .then((values) => {
          const shown = values.map((v) => (typeof v === "string" ? v : JSON.stringify(v)));
          this.lines.push(shown.join(" "));
          this.wake?.();
        })
        .catch((error) => problems.push(`cannot read a console.log call: ${error.message}`));
    });
  }

  async next(what) {
    const deadline = Date.now() + WAIT;
    while (this.read === this.lines.length) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no console line within ${WAIT} ms (waiting for ${what})`);
      let timer;
      await new Promise((resolve) => {
        this.wake = resolve;
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
      this.wake = null;
    }
    return this.lines[this.read++];
  }
}

// --- the browser --------------------------------------------------------------------------

const browser = await launchChromium(CHROMIUM);
const { context } = browser;
context.setDefaultTimeout(WAIT);

async function runSnippet(snippet, page, problems) {
  const lines = new ConsoleLines(page, problems);
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("response", (response) => {
    if (response.status() >= 400) problems.push(`HTTP ${response.status()} for ${response.url()}`);
  });
  step(`${snippet.name}: open ${snippet.page}`);
  await page.goto(snippet.page);
  if (snippet.io && !(await page.evaluate(() => typeof io === "function"))) {
    throw new Error("the page has not loaded socket.io-client as io");
  }
  step(`${snippet.name}: type the snippet into the console`);
  const cdp = await context.newCDPSession(page);
  const result = await cdp.send("Runtime.evaluate", { expression: snippet.code, replMode: true });
  if (result.exceptionDetails) {
    const details = result.exceptionDetails;
    throw new Error(`the snippet threw: ${details.exception?.description ?? details.text}`);
  }
  const seen = [];
  while (seen.length < snippet.before) seen.push(await lines.next("the answer to join"));
  step(`${snippet.name}: logged ${seen.join(", ")}`);
  if (snippet.after === 0) return seen;
  step(`${snippet.name}: publish`);
  await publish(snippet.name);
  const total = snippet.before + snippet.after;
  while (seen.length < total) seen.push(await lines.next("the published message"));
  step(`${snippet.name}: logged ${seen.slice(snippet.before).join(", ")}`);
  return seen;
}

const failure = pathJoin(ARTIFACTS, "readme-snippets-failure.png");
rmSync(failure, { force: true }); // a screenshot of an older failure would mislead
const logged = {};
let failed = false;
let page = null;
const problems = [];
try {
  for (const snippet of snippets) {
    page = await context.newPage();
    logged[snippet.name] = await runSnippet(snippet, page, problems);
    await page.close();
    page = null;
  }
  if (problems.length) throw new Error(`the page reported:\n  ${problems.join("\n  ")}`);
  process.stdout.write(JSON.stringify({ done: logged }) + "\n");
} catch (error) {
  failed = true;
  console.error(`[snippets] FAILED: ${error.message}`);
  if (problems.length) console.error(`[snippets] the page reported:\n  ${problems.join("\n  ")}`);
  if (page !== null) {
    await page.screenshot({ path: failure, fullPage: true }).catch(() => {});
    console.error(`[snippets] screenshot of the failure: ${failure}`);
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
