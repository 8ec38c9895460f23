// Runs one protocol test suite against a fresh dispatchd:
//
//   DISPATCHD_BIN=/path/to/dispatchd node tests/protocol/launch.mjs <suite dir> [mocha args...]
//
// Starts the binary as tests/js/harness.mjs does (random port, embedded SQLite in a temp
// dir) with the suites' reference settings (ping interval 300 ms, ping timeout 200 ms,
// max payload 1e6), runs mocha on <suite dir>/test-suite.js with DISPATCHD_URL set to the
// server's URL, stops the server and exits with mocha's status. The server's log is kept
// in the temp dir and printed when the suite fails.
import { spawn } from "node:child_process";
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

const [suiteArg, ...mochaArgs] = process.argv.slice(2);
const BIN = process.env.DISPATCHD_BIN;
if (!suiteArg || !BIN) {
  console.error("usage: DISPATCHD_BIN=<dispatchd binary> node launch.mjs <suite dir> [mocha args...]");
  process.exit(2);
}
const suite = resolve(suiteArg);

// Settings every suite gets: the reference servers' values (see README.md).
const SETTINGS = {
  DISPATCHD__REALTIME__PING_INTERVAL_MS: "300",
  DISPATCHD__REALTIME__PING_TIMEOUT_MS: "200",
  DISPATCHD__REALTIME__MAX_POLLING_BODY_BYTES: "1000000",
};
// ...and per suite (the socket.io reference server has connectTimeout: 1000).
const SUITE_SETTINGS = {
  "engine.io": {},
  "socket.io": { DISPATCHD__REALTIME__CONNECT_TIMEOUT_MS: "1000" },
};

async function startServer(settings) {
  const dir = mkdtempSync(join(tmpdir(), "dispatchd-protocol-"));
  const logPath = join(dir, "server.log");
  const log = createWriteStream(logPath);
  const env = {
    PATH: process.env.PATH,
    DISPATCHD__SERVER__ADDR: "127.0.0.1:0",
    DISPATCHD__DATABASE__SQLITE_PATH: join(dir, "dispatchd.db"),
    DISPATCHD__RATE_LIMIT__REQUESTS_PER_MINUTE: "100000",
    DISPATCHD__LOG__LEVEL: process.env.DISPATCHD_PROTOCOL_LOG_LEVEL ?? "warn,dispatchd=info",
    ...settings,
  };
  const child = spawn(BIN, [], { env, stdio: ["ignore", "pipe", "pipe"] });
  child.stderr.pipe(log, { end: false });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve(code ?? signal)));
  const lines = createInterface({ input: child.stdout });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start within 30 s")), 30_000);
    exited.then((code) => reject(new Error(`the server exited with ${code} before listening`)));
    child.once("error", (err) => reject(new Error(`cannot start ${BIN}: ${err.message}`)));
    lines.on("line", (line) => {
      log.write(line + "\n");
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (entry.message === "dispatchd listening") {
        clearTimeout(timer);
        resolve(entry.addr);
      }
    });
  });
  let stopping = false;
  return {
    url: `http://${addr}`,
    logPath,
    // Resolves if the server exits before stop().
    unexpectedExit: exited.then((code) => (stopping ? new Promise(() => {}) : code)),
    async stop() {
      stopping = true;
      if (child.exitCode === null && child.signalCode === null) {
        const killer = setTimeout(() => child.kill("SIGKILL"), 30_000);
        child.kill("SIGTERM");
        await exited;
        clearTimeout(killer);
      }
      await new Promise((resolve) => log.end(resolve));
    },
    remove() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Runs mocha on the suite; stops it (and fails) if the server exits meanwhile.
async function runMocha(server) {
  const mocha = join(suite, "node_modules", ".bin", "mocha");
  const child = spawn(process.execPath, [mocha, "test-suite.js", ...mochaArgs], {
    cwd: suite,
    env: { ...process.env, DISPATCHD_URL: server.url },
    stdio: "inherit",
  });
  const done = new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
  // Interrupted: stop mocha; the server is stopped below.
  const interrupted = new Promise((resolve) => {
    for (const signal of ["SIGINT", "SIGTERM"]) {
      process.once(signal, () => {
        console.error(`\n${signal}: stopping`);
        child.kill("SIGTERM");
        resolve(1);
      });
    }
  });
  const serverGone = server.unexpectedExit.then((code) => {
    console.error(`\ndispatchd exited (${code}) while the suite was running`);
    child.kill("SIGTERM");
    return 1;
  });
  return Promise.race([done, serverGone, interrupted]);
}

const name = suite.split("/").pop();
const server = await startServer({ ...SETTINGS, ...(SUITE_SETTINGS[name] ?? {}) });
console.log(`dispatchd for the ${name} suite at ${server.url}`);
let status = 1;
try {
  status = await runMocha(server);
} finally {
  await server.stop();
  if (status !== 0) {
    console.error(`\n--- dispatchd log (${server.logPath}) ---`);
    console.error(readFileSync(server.logPath, "utf8").split("\n").slice(-200).join("\n"));
  }
  server.remove();
}
process.exit(status);
