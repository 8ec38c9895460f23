// Debian's Chromium, driven by playwright-core, for the tests of pages the server serves.
// Screenshots go to DISPATCHD_SCREENSHOTS (default: the system's temporary folder).
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

export function launchChromium() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Where a test keeps a screenshot named `name`. */
export function screenshotPath(name) {
  return join(process.env.DISPATCHD_SCREENSHOTS ?? tmpdir(), name);
}
