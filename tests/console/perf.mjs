// The dispatcher console under load, in Debian's Chromium: a server, `dispatchd-bench
// simulate` driving N pilots that report every second, and the console signed in with every
// pilot in view. Measures, over the window, the share of time the page's main thread is busy
// (Chromium's TaskDuration), long tasks (the Performance API), and the longest gap between
// two frames. Not part of the test suite: a benchmark (bench/RESULTS.md has its figures).
//
//   node tests/console/perf.mjs [--pilots 2000] [--seconds 30] [--screenshot docs/console.png]
//
// DISPATCHD_BIN and BENCH_BIN name the binaries (default: target/release/…).
import { spawn, spawnSync } from "node:child_process";
import { parseArgs } from "node:util";

import { launchChromium } from "../js/browser.mjs";
import { startServer } from "../js/harness.mjs";

const { values } = parseArgs({
  options: {
    pilots: { type: "string", default: "2000" },
    seconds: { type: "string", default: "30" },
    screenshot: { type: "string" },
  },
});
const pilots = Number(values.pilots);
const seconds = Number(values.seconds);
const root = new URL("../../", import.meta.url).pathname;
const DISPATCHD = process.env.DISPATCHD_BIN ?? `${root}target/release/dispatchd`;
const BENCH = process.env.BENCH_BIN ?? `${root}target/release/dispatchd-bench`;
const STAFF = { phone: "+919999900001", password: "bench password 1" };

process.env.DISPATCHD_BIN = DISPATCHD;
const server = await startServer({
  DISPATCHD__RATE_LIMIT__ENABLED: "false",
  DISPATCHD__SERVER__MAX_CONNECTIONS_PER_IP: "1000000",
  DISPATCHD__ORDERS__MAX_OPEN_PER_CUSTOMER: "1000000",
  DISPATCHD__AUTH__ARGON2_MEMORY_KIB: "64",
  DISPATCHD__AUTH__ARGON2_ITERATIONS: "1",
});
const made = spawnSync(DISPATCHD, ["admin", "create-user", "--role", "admin", "--phone", STAFF.phone, "--name", "Bench"], {
  env: { ...server.env, DISPATCHD_ADMIN_PASSWORD: STAFF.password },
  encoding: "utf8",
});
if (made.status !== 0) throw new Error(`create-user: ${made.stderr}`);

const simulate = spawn(
  BENCH,
  ["simulate", "--url", server.url, "--pilots", String(pilots), "--orders-per-min", "60", "--report-secs", "1", "--duration", String(seconds + 120)],
  { stdio: ["ignore", "ignore", "pipe"] },
);
await new Promise((resolve, reject) => {
  simulate.once("exit", (code) => reject(new Error(`simulate exited with ${code}`)));
  simulate.stderr.on("data", (chunk) => {
    if (String(chunk).includes(" s · orders")) resolve();
  });
});

const browser = await launchChromium();
const page = await browser.newPage({ viewport: { width: 1400, height: 860 } });
const errors = [];
page.on("pageerror", (error) => errors.push(error.message));
await page.goto(`${server.url}/console`);
await page.getByTestId("login-phone").fill(STAFF.phone);
await page.getByTestId("login-password").fill(STAFF.password);
await page.getByTestId("login-submit").click();
await page.waitForFunction((n) => Number(document.querySelector('[data-testid="pilots-online"]')?.textContent) >= n * 0.95, pilots, {
  timeout: 60_000,
});
// Settle, then measure.
await page.waitForTimeout(3_000);
const cdp = await page.context().newCDPSession(page);
await cdp.send("Performance.enable");
const metric = async (name) => (await cdp.send("Performance.getMetrics")).metrics.find((m) => m.name === name).value;
await page.evaluate(() => {
  window.__perf = { longTasks: [], gaps: [], last: performance.now() };
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__perf.longTasks.push(entry.duration);
  }).observe({ type: "longtask" });
  const frame = (now) => {
    window.__perf.gaps.push(now - window.__perf.last);
    window.__perf.last = now;
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
});
const busyBefore = await metric("TaskDuration");
const started = Date.now();
await page.waitForTimeout(seconds * 1000);
const busy = (await metric("TaskDuration")) - busyBefore;
const wall = (Date.now() - started) / 1000;
const seen = await page.evaluate(() => window.__perf);
const shown = Number(await page.getByTestId("pilots-online").textContent());
const gaps = seen.gaps.slice(1).sort((a, b) => a - b);
const result = {
  pilots,
  shown,
  seconds: wall,
  main_thread_busy_share: Number((busy / wall).toFixed(3)),
  long_tasks: seen.longTasks.length,
  longest_task_ms: Math.round(Math.max(0, ...seen.longTasks)),
  frames: gaps.length,
  frame_gap_p99_ms: Math.round(gaps[Math.floor(gaps.length * 0.99)] ?? 0),
  frame_gap_max_ms: Math.round(gaps.at(-1) ?? 0),
  page_errors: errors,
};
if (values.screenshot) await page.screenshot({ path: values.screenshot });
console.log(JSON.stringify(result));
simulate.kill("SIGINT");
await browser.close();
await server.stop();
