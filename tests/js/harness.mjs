// Starts a real dispatchd (the binary under test, embedded SQLite store) and gives tests
// what they need: its URL, accounts, orders, and sockets from the official clients.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { io } from "socket.io-client";
import ioV2 from "socket.io-client-v2";

const BIN = process.env.DISPATCHD_BIN ?? new URL("../../target/debug/dispatchd", import.meta.url).pathname;
export const PASSWORD = "correct horse battery";
export const PICKUP = { lat: 12.9716, lng: 77.5946 };
export const DROP = { lat: 13.01, lng: 77.62 };

let phones = 0;
export function uniquePhone() {
  phones += 1;
  const digits = String(Date.now() % 1e6).padStart(6, "0") + String(phones).padStart(4, "0");
  return `+91${digits}`;
}

/** Starts a server with `settings` (DISPATCHD__… environment variables) added. */
export async function startServer(settings = {}) {
  const dir = mkdtempSync(join(tmpdir(), "dispatchd-js-"));
  const env = { PATH: process.env.PATH, ...baseEnv(dir), ...settings };
  const child = spawn(BIN, [], { env, stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start within 30 s")), 30_000);
    child.once("exit", (code) => reject(new Error(`the server exited with ${code}`)));
    child.once("error", (err) => reject(new Error(`cannot start ${BIN}: ${err.message}`)));
    lines.on("line", (line) => {
      const log = JSON.parse(line);
      if (log.message === "dispatchd listening") {
        clearTimeout(timer);
        resolve(log.addr);
      }
    });
  });
  const url = `http://${addr}`;
  return {
    url,
    env,
    async stop() {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function baseEnv(dir) {
  return {
    DISPATCHD__SERVER__ADDR: "127.0.0.1:0",
    DISPATCHD__DATABASE__SQLITE_PATH: join(dir, "dispatchd.db"),
    DISPATCHD__RATE_LIMIT__REQUESTS_PER_MINUTE: "100000",
    DISPATCHD__LOG__LEVEL: "warn,dispatchd=info",
  };
}

export async function api(server, method, path, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${server.url}/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

/** Signs up a customer or a pilot (on a bike, approved as an operator does it). */
export async function register(server, role) {
  const phone = uniquePhone();
  const body = { name: "JS Test", phone, password: PASSWORD, role };
  if (role === "pilot") body.vehicle_type = "bike";
  const reply = await api(server, "POST", "/auth/register", body);
  if (reply.status !== 201) throw new Error(`register: ${JSON.stringify(reply.body)}`);
  if (role === "pilot") {
    const approved = spawnSync(BIN, ["admin", "approve-pilot", "--phone", phone, "--plate", "KA01AB1234"], {
      env: server.env,
      encoding: "utf8",
    });
    if (approved.status !== 0) throw new Error(`approve-pilot: ${approved.stderr}`);
  }
  return session(reply.body.data);
}

/** A dispatcher, created as an operator does (`dispatchd admin create-user`). */
export async function dispatcher(server) {
  const phone = uniquePhone();
  const made = spawnSync(BIN, ["admin", "create-user", "--role", "dispatcher", "--phone", phone, "--name", "Control"], {
    env: { ...server.env, DISPATCHD_ADMIN_PASSWORD: PASSWORD },
    encoding: "utf8",
  });
  if (made.status !== 0) throw new Error(`create-user: ${made.stderr}`);
  const reply = await api(server, "POST", "/auth/login", { phone, password: PASSWORD });
  return { ...session(reply.body.data), phone };
}

function session(grant) {
  return { id: grant.user.id, token: grant.access_token };
}

export async function createOrder(server, customer) {
  const body = {
    pickup: { ...PICKUP, address: "MG Road metro" },
    drop: { ...DROP, address: "Hebbal flyover" },
    vehicle_type: "bike",
    payment_method: "cash",
  };
  const reply = await api(server, "POST", "/orders", body, customer.token);
  if (reply.status !== 201) throw new Error(`order: ${JSON.stringify(reply.body)}`);
  return reply.body.data.id;
}

/** A fix `afterSecs` into a shift that began 400 s ago: plausible spacing without waiting. */
export function fix(lat, lng, afterSecs, accuracy = 5) {
  return { lat, lng, ts: Date.now() - 400_000 + afterSecs * 1000, accuracy };
}

/** A v4 client socket (EIO4) on `namespace`; resolves once connected. */
export function connect(server, namespace, auth, options = {}) {
  const socket = io(`${server.url}${namespace}`, { auth, reconnection: false, forceNew: true, ...options });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      reject(err);
    });
  });
}

/** A v2 client socket (EIO3) on `namespace`, token in the query; resolves once connected. */
export function connectV2(server, namespace, token, options = {}) {
  const socket = ioV2(`${server.url}${namespace}`, { query: { token }, reconnection: false, forceNew: true, ...options });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("error", (err) => {
      socket.close();
      reject(new Error(typeof err === "string" ? err : JSON.stringify(err)));
    });
    socket.once("connect_error", (err) => {
      socket.close();
      reject(err);
    });
  });
}

/** Emits and resolves with the ack (fails after 5 s). */
export function call(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ack for ${event}`)), 5000);
    socket.emit(event, ...args, (answer) => {
      clearTimeout(timer);
      resolve(answer);
    });
  });
}

/** Collects `event` payloads for `ms`. */
export function collect(socket, event, ms) {
  const seen = [];
  const listener = (data) => seen.push(data);
  socket.on(event, listener);
  return new Promise((resolve) =>
    setTimeout(() => {
      socket.off(event, listener);
      resolve(seen);
    }, ms),
  );
}

/** The next `event` within `ms`, or null. */
export function next(socket, event, ms = 3000) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      socket.off(event, listener);
      resolve(null);
    }, ms);
    const listener = (data) => {
      clearTimeout(timer);
      resolve(data);
    };
    socket.once(event, listener);
  });
}

/** A pilot connected on /pilot, with a first position, on duty. */
export async function pilotOnDuty(server, lat, lng) {
  const pilot = await register(server, "pilot");
  const socket = await connect(server, "/pilot", { token: pilot.token });
  const located = await call(socket, "location", { points: [fix(lat, lng, 0)] });
  if (located.data?.accepted !== 1) throw new Error(`location: ${JSON.stringify(located)}`);
  const onDuty = await call(socket, "status:set", { status: "online" });
  if (!onDuty.ok) throw new Error(`status: ${JSON.stringify(onDuty)}`);
  return { pilot, socket };
}
