// Two nodes of one cluster behind a real Nginx running the project's configuration
// (deploy/nginx/dispatchd.conf, its upstream servers and listen address rewritten to loopback
// ports), the way deploy/compose.yaml runs them: REST, rate limits keyed on the address Nginx
// forwards, and the official socket.io-client over long-polling (which needs sticky sessions)
// and WebSocket (which needs the upgrade headers), with a realtime round trip across the nodes.
//
// Every test client comes from a loopback address of its own (127.0.0.x, all of which reach
// Linux's loopback interface), so Nginx sees distinct client addresses, hashes them to nodes, and
// forwards them in X-Real-IP.
//
// Needs the nginx binary (NGINX_BIN, or nginx on the PATH or in /usr/sbin; skipped with a
// message without one: deploy/check-compose.sh installs it), Postgres and Redis
// (DISPATCHD_TEST_DATABASE_URL, a user that may create databases, and DISPATCHD_TEST_REDIS_URL,
// as the Rust tests; scripts/test.sh starts both).
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { accessSync, chmodSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { after, before, describe, test } from "node:test";

import { call, connect, DROP, fix, next, PASSWORD, PICKUP, startServer, uniquePhone } from "./harness.mjs";

const BIN = process.env.DISPATCHD_BIN ?? new URL("../../target/debug/dispatchd", import.meta.url).pathname;
const NGINX_CONF = new URL("../../deploy/nginx/dispatchd.conf", import.meta.url);
const COMPOSE = new URL("../../deploy/compose.yaml", import.meta.url);
const DATABASE_URL = process.env.DISPATCHD_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const REDIS_URL = process.env.DISPATCHD_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
// REST requests per minute and client address; low, so that a test can spend a budget.
const BUDGET = 5;

function findNginx() {
  const candidates = process.env.NGINX_BIN
    ? [process.env.NGINX_BIN]
    : [...(process.env.PATH ?? "").split(delimiter).map((dir) => join(dir, "nginx")), "/usr/sbin/nginx", "/usr/local/sbin/nginx"];
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not this one
    }
  }
  return null;
}

const NGINX = findNginx();

/** The header the compose file tells the nodes to read the client's address from. */
function clientIpHeader() {
  const match = readFileSync(COMPOSE, "utf8").match(/DISPATCHD__RATE_LIMIT__CLIENT_IP_HEADER:\s*"?([\w-]+)"?/);
  assert.ok(match, "deploy/compose.yaml sets no DISPATCHD__RATE_LIMIT__CLIENT_IP_HEADER");
  return match[1];
}

function psql(url, sql) {
  const run = spawnSync("psql", [url, "-qtAc", sql], { encoding: "utf8" });
  if (run.error || run.status !== 0) {
    throw new Error(`psql (${url}): ${run.error?.message ?? run.stderr.trim()}: needs Postgres at DISPATCHD_TEST_DATABASE_URL`);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** deploy/nginx/dispatchd.conf with the nodes on `ports` and listening on `listen`. */
function renderSite(ports, listen) {
  let upstreams = 0;
  const site = readFileSync(NGINX_CONF, "utf8")
    .replace(/^(\s*server\s+)dispatchd-\d+:8080\b/gm, (_, head) => `${head}127.0.0.1:${ports[upstreams++]}`)
    .replace(/^(\s*listen\s+)80\s*;/m, (_, head) => `${head}127.0.0.1:${listen};`);
  assert.equal(upstreams, ports.length, "deploy/nginx/dispatchd.conf should list the nodes as dispatchd-N:8080");
  assert.ok(site.includes(`listen 127.0.0.1:${listen};`), "deploy/nginx/dispatchd.conf should listen on 80");
  return site;
}

/** A real nginx in front of `nodes`, in a prefix directory of its own. */
async function startNginx(nodes) {
  const prefix = mkdtempSync(join(tmpdir(), "dispatchd-nginx-"));
  chmodSync(prefix, 0o755); // workers drop root to nobody
  const port = await freePort();
  const ports = nodes.map((node) => new URL(node.url).port);
  writeFileSync(join(prefix, "dispatchd.conf"), renderSite(ports, port));
  const temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    .map((kind) => `    ${kind}_temp_path ${join(prefix, kind)};`)
    .join("\n");
  writeFileSync(
    join(prefix, "nginx.conf"),
    `daemon off;
worker_processes 1;
pid ${join(prefix, "nginx.pid")};
error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off;
${temp}
    include ${join(prefix, "dispatchd.conf")};
}
`,
  );
  const child = spawn(NGINX, ["-p", `${prefix}/`, "-c", join(prefix, "nginx.conf"), "-e", "stderr"], {
    stdio: ["ignore", "inherit", "inherit"],
  });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const url = `http://127.0.0.1:${port}`;
  for (let tries = 0; ; tries += 1) {
    if (child.exitCode !== null) throw new Error(`nginx exited with ${child.exitCode} (its configuration is above)`);
    try {
      if ((await get(url, "/healthz", "127.0.0.1")).status === 200) break;
    } catch {
      // not listening yet
    }
    if (tries > 100) throw new Error("nginx did not answer within 10 s");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    url,
    async stop() {
      child.kill("SIGQUIT");
      await exited;
      rmSync(prefix, { recursive: true, force: true });
    },
  };
}

/** An HTTP request from the loopback address `from`. */
function request(base, method, path, from, { body, token, headers = {} } = {}) {
  const data = body === undefined ? undefined : JSON.stringify(body);
  const target = new URL(path, base);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: target.hostname,
        port: target.port,
        path: target.pathname + target.search,
        method,
        localAddress: from,
        agent: false,
        headers: {
          ...(data === undefined ? {} : { "content-type": "application/json" }),
          ...(token ? { authorization: `Bearer ${token}` } : {}),
          ...headers,
        },
      },
      (res) => {
        const chunks = [];
        res.on("data", (chunk) => chunks.push(chunk));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          let json = null;
          try {
            json = JSON.parse(text);
          } catch {
            // not JSON
          }
          resolve({ status: res.statusCode, headers: res.headers, body: json, text });
        });
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

const get = (base, path, from, options) => request(base, "GET", path, from, options);

/** Sum of `family` samples whose labels include every one of `labels`, from a node's /metrics. */
async function metric(node, family, labels = {}) {
  const text = await (await fetch(`${node.url}/metrics`)).text();
  let total = 0;
  for (const line of text.split("\n")) {
    const sample = line.match(/^(\w+)(?:\{(.*)\})? (\S+)$/);
    if (!sample || sample[1] !== family) continue;
    const have = sample[2] ?? "";
    if (Object.entries(labels).every(([key, value]) => have.includes(`${key}="${value}"`))) total += Number(sample[3]);
  }
  return total;
}

const skip = NGINX ? false : "no nginx binary found: install nginx (deploy/check-compose.sh does) or set NGINX_BIN";

describe("two nodes behind nginx (deploy/nginx/dispatchd.conf)", { skip }, () => {
  let nodes;
  let proxy;
  let database;
  let prefix;
  const open = [];
  // Loopback client addresses by the node Nginx sends them to (index into `nodes`).
  const clients = [[], []];

  before(async () => {
    const name = `dispatchd_test_${randomUUID().replaceAll("-", "")}`;
    psql(DATABASE_URL, `CREATE DATABASE ${name}`);
    database = { name, url: Object.assign(new URL(DATABASE_URL), { pathname: `/${name}` }).toString() };
    prefix = `dispatchd-test:${randomUUID().replaceAll("-", "")}:`;
    const shared = {
      DISPATCHD__DATABASE__URL: database.url,
      DISPATCHD__REDIS__URL: REDIS_URL,
      DISPATCHD__REDIS__KEY_PREFIX: prefix,
      DISPATCHD__REDIS__POSITIONS__FLUSH_INTERVAL_MS: "50",
      DISPATCHD__AUTH__JWT_SECRET: randomBytes(48).toString("base64"),
      DISPATCHD__CLUSTER__ENABLED: "true",
      DISPATCHD__RATE_LIMIT__CLIENT_IP_HEADER: clientIpHeader(),
      DISPATCHD__RATE_LIMIT__REQUESTS_PER_MINUTE: String(BUDGET),
      // A ping a second: a long poll ends each second, so a few seconds are many poll cycles.
      DISPATCHD__REALTIME__PING_INTERVAL_MS: "1000",
      DISPATCHD__REALTIME__PING_TIMEOUT_MS: "5000",
    };
    const first = await startServer({ ...shared, DISPATCHD__CLUSTER__NODE_ID: "proxy-test-1" });
    const second = await startServer({ ...shared, DISPATCHD__CLUSTER__NODE_ID: "proxy-test-2" });
    nodes = [first, second];
    proxy = await startNginx(nodes);
  });

  after(async () => {
    for (const socket of open) socket.close();
    await proxy?.stop();
    for (const node of nodes ?? []) await node.stop();
    if (database) psql(DATABASE_URL, `DROP DATABASE IF EXISTS ${database.name} WITH (FORCE)`);
    if (prefix) {
      const keys = spawnSync("redis-cli", ["-u", REDIS_URL, "--scan", "--pattern", `${prefix}*`], { encoding: "utf8" });
      const names = (keys.stdout ?? "").split("\n").filter(Boolean);
      for (let i = 0; i < names.length; i += 500) spawnSync("redis-cli", ["-u", REDIS_URL, "del", ...names.slice(i, i + 500)]);
    }
  });

  /** Which node a request from `from` reaches: the one whose /healthz count went up. */
  async function nodeFor(from) {
    const before = await Promise.all(nodes.map((node) => metric(node, "http_requests_total", { route: "/healthz" })));
    const answer = await get(proxy.url, "/healthz", from);
    assert.equal(answer.status, 200);
    const now = await Promise.all(nodes.map((node) => metric(node, "http_requests_total", { route: "/healthz" })));
    const reached = now.map((count, i) => count - before[i]);
    assert.equal(reached.reduce((a, b) => a + b), 1, `one request, counted ${reached}`);
    return reached.indexOf(1);
  }

  async function register(from, role) {
    const body = { name: "Proxy Test", phone: uniquePhone(), password: PASSWORD, role };
    if (role === "pilot") body.vehicle_type = "bike";
    const reply = await request(proxy.url, "POST", "/api/v1/auth/register", from, { body });
    assert.equal(reply.status, 201, `register through nginx: ${reply.text}`);
    if (role === "pilot") {
      const approved = spawnSync(BIN, ["admin", "approve-pilot", "--phone", body.phone, "--plate", "KA01AB1234"], {
        env: nodes[0].env,
        encoding: "utf8",
      });
      assert.equal(approved.status, 0, `approve-pilot: ${approved.stderr}`);
    }
    return { id: reply.body.data.user.id, token: reply.body.data.access_token };
  }

  /** A socket through nginx from `from`, on `transport` only. */
  async function socketFrom(from, namespace, token, transport) {
    const agent = new http.Agent({ localAddress: from, keepAlive: true });
    const socket = await connect({ url: proxy.url }, namespace, { token }, { transports: [transport], agent, localAddress: from }).catch(
      (err) => {
        throw new Error(`${namespace} over ${transport} through nginx (from ${from}): ${err.message}`, { cause: err });
      },
    );
    open.push(socket);
    return socket;
  }

  /** Which node holds the sockets open on `namespace` (exactly one node must). */
  async function nodeHolding(namespace) {
    const counts = await Promise.all(nodes.map((node) => metric(node, "socket_connected", { namespace })));
    assert.equal(counts.filter((count) => count > 0).length, 1, `sockets on ${namespace} per node: ${counts}`);
    return counts.findIndex((count) => count > 0);
  }

  test("requests are sticky per client address and both nodes take clients", async () => {
    for (let host = 10; host < 60 && (clients[0].length < 3 || clients[1].length < 3); host += 1) {
      const from = `127.0.0.${host}`;
      const node = await nodeFor(from);
      for (let again = 0; again < 3; again += 1) {
        assert.equal(await nodeFor(from), node, `${from} reached another node: no sticky sessions`);
      }
      clients[node].push(from);
    }
    assert.ok(clients[0].length >= 3 && clients[1].length >= 3, `clients per node: ${clients.map((c) => c.length)}: does nginx reach both nodes?`);
    assert.equal((await get(proxy.url, "/metrics", "127.0.0.1")).status, 404, "/metrics is not served to the public");
  });

  test("the rate limit counts the address nginx forwards, and a client cannot choose it", async () => {
    // Two clients of the same node: the node's own budget tells them apart only by the header.
    const [spender, other] = clients[0];
    const remaining = [];
    for (let i = 0; i < BUDGET; i += 1) {
      const reply = await get(proxy.url, "/api/v1/me", spender);
      assert.equal(reply.status, 401);
      remaining.push(Number(reply.headers["x-ratelimit-remaining"]));
    }
    assert.deepEqual(remaining, [4, 3, 2, 1, 0]);
    const over = await get(proxy.url, "/api/v1/me", spender);
    assert.equal(over.status, 429, over.text);
    assert.equal(over.body.error.code, "RATE_LIMITED");
    assert.ok(Number(over.headers["retry-after"]) >= 1);

    // Headers the client writes itself change nothing: nginx replaces X-Real-IP and appends
    // the real address to X-Forwarded-For.
    const forged = { "x-real-ip": "203.0.113.7", "x-forwarded-for": "203.0.113.7" };
    const spoofed = await get(proxy.url, "/api/v1/me", spender, { headers: forged });
    assert.equal(spoofed.status, 429, "a client chose its own rate-limit key with a forged header");

    // Another address on the same node still has its whole budget.
    const fresh = await get(proxy.url, "/api/v1/me", other);
    assert.equal(fresh.status, 401, fresh.text);
    assert.equal(fresh.headers["x-ratelimit-remaining"], String(BUDGET - 1));
  });

  test("long-polling and WebSocket through nginx: an order placed on one node reaches a pilot on the other and back", async () => {
    // The pilot's requests all go to one node, the customer's to the other.
    const pilotFrom = clients[0][2];
    const customerFrom = clients[1][0];
    const pilot = await register(pilotFrom, "pilot");
    const customer = await register(customerFrom, "customer");

    const pilotSocket = await socketFrom(pilotFrom, "/pilot", pilot.token, "polling");
    const pings = { count: 0 };
    pilotSocket.io.engine.on("ping", () => (pings.count += 1));
    const closed = [];
    pilotSocket.on("disconnect", (reason) => closed.push(reason));
    const located = await call(pilotSocket, "location", { points: [fix(PICKUP.lat + 0.002, PICKUP.lng, 0)] });
    assert.equal(located.data?.accepted, 1, JSON.stringify(located));
    assert.equal((await call(pilotSocket, "status:set", { status: "online" })).ok, true);

    const watcher = await socketFrom(customerFrom, "/customer", customer.token, "websocket");
    assert.equal(watcher.io.engine.transport.name, "websocket");
    assert.equal(pilotSocket.io.engine.transport.name, "polling");
    assert.equal(await nodeHolding("/pilot"), 0);
    assert.equal(await nodeHolding("/customer"), 1);

    const offered = next(pilotSocket, "offer", 10_000);
    const order = await request(proxy.url, "POST", "/api/v1/orders", customerFrom, {
      token: customer.token,
      body: {
        pickup: { ...PICKUP, address: "MG Road metro" },
        drop: { ...DROP, address: "Hebbal flyover" },
        vehicle_type: "bike",
        payment_method: "cash",
      },
    });
    assert.equal(order.status, 201, order.text);
    const orderId = order.body.data.id;
    const watched = await call(watcher, "order:watch", { order_id: orderId });
    assert.equal(watched.ok, true, JSON.stringify(watched));

    const offer = await offered;
    assert.equal(offer?.order_id, orderId, "the pilot (polling, the other node) got no offer");
    const assigned = next(watcher, "order:event", 5000);
    const accepted = await call(pilotSocket, "offer:accept", { offer_id: offer.offer_id });
    assert.equal(accepted.data?.status, "assigned", JSON.stringify(accepted));
    assert.equal((await assigned)?.type, "assigned", "the customer (WebSocket, the other node) heard nothing");

    const moved = next(watcher, "pilot:location", 5000);
    await call(pilotSocket, "location", { points: [fix(PICKUP.lat + 0.001, PICKUP.lng, 60)] });
    assert.equal((await moved)?.lat, PICKUP.lat + 0.001);

    // Long-polling keeps going: a poll cycle a second for four seconds, all on the same node,
    // without "Session ID unknown" (the session would close) or a reconnection.
    const pingsBefore = pings.count;
    await new Promise((resolve) => setTimeout(resolve, 4000));
    assert.ok(pings.count - pingsBefore >= 3, `${pings.count - pingsBefore} pings in 4 s over long-polling`);
    assert.deepEqual(closed, []);
    assert.equal(pilotSocket.connected, true);
    assert.equal(pilotSocket.io.engine.transport.name, "polling");
    assert.equal((await call(pilotSocket, "location", { points: [fix(PICKUP.lat + 0.0012, PICKUP.lng, 90)] })).ok, true);
    assert.equal(await nodeHolding("/pilot"), 0);
  });
});
