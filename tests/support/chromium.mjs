// Headless Chromium for the browser scripts of tests/e2e (demo.spec.mjs, snippets.mjs):
// Debian's build, driven by playwright-core, on a profile of its own.
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join as pathJoin } from "node:path";

// playwright-core is installed in demo/ (scripts/build-demo), pinned by its lock file.
const { chromium } = createRequire(new URL("../../demo/package.json", import.meta.url))(
  "playwright-core",
);

// The flags Debian's chromium needs in a container, and nothing that phones home.
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-quic",
  "--no-first-run",
  "--disable-component-update",
  "--disable-sync",
];

// Launch the Chromium at `executablePath`, headless, on a fresh profile, with playwright's
// `options` on top (a viewport, say). Returns its persistent context and `close()`, which
// closes it and deletes the profile.
export async function launchChromium(executablePath, options = {}) {
  const profile = mkdtempSync(pathJoin(tmpdir(), "rabbitsocks-chromium-"));
  const removeProfile = () => rmSync(profile, { recursive: true, force: true });
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath,
      headless: true,
      args: FLAGS,
      ...options,
    });
  } catch (error) {
    removeProfile();
    throw error;
  }
  return {
    context,
    async close() {
      await context.close();
      removeProfile();
    },
  };
}
