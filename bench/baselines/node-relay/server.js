// Baseline for dispatchd's realtime benchmarks: the same relay semantics on Node socket.io,
// optionally with the Redis GEO write that many Node dispatch stacks do on every fix.
//
//   /pilot     `location {points}` (acked): `points` must be an array of 1..=100 objects with
//              numeric `lat`, `lng`, `ts`, or the whole report fails with
//              {ok: false, error: {code: "VALIDATION_ERROR", message}}. A point whose lat is not
//              a finite number in [-90, 90] or whose lng is not one in [-180, 180] is rejected,
//              the rest still count: {ok: true, data: {accepted, rejected: [{index, reason:
//              "invalid_coordinates"}]}}. The last accepted point is relayed as
//              `pilot:location {order_id, lat, lng, ts}` to the room `order:<pilot id>`.
//   /customer  `order:watch {order_id}` (acked): joins `order:<order_id>`.
//
// With REDIS_URL set, each report with an accepted point also writes the last one, in one
// MULTI, with GEOADD <GEO_KEY> lng lat <pilot id> and ZADD <GEO_KEY>:seen ts <pilot id>, and
// only then relays and acks; if Redis fails the ack is {ok: false, error: {code:
// "UNAVAILABLE", message}} and nothing is relayed. (Redis GEO cannot hold |lat| > 85.05112878;
// such a point is relayed and gets its ZADD but no GEOADD.) Redis is connected once at start;
// if it cannot be reached the server exits with status 1. Commands are not queued while the
// connection is down: they fail, and the client reconnects in the background.
//
// It does less than dispatchd, in its favour: the token is taken as the user id (no JWT
// check, no revocation lookup), points get only the range check above (no null-island,
// accuracy, ordering, age or speed rules), there is no in-memory index (at most the Redis
// write), no vehicle lookup, no database, and a smaller ack.
//
// Usage: PORT=0 node server.js  (prints {"listening": port, "pid": pid, "redis": bool} on stdout)
// Env:   PORT       port on 127.0.0.1 (default 0: any free port)
//        REDIS_URL  e.g. redis://127.0.0.1:6379; unset or empty: no Redis (the default)
//        GEO_KEY    the GEO set's key with REDIS_URL (default "bench:pilots:geo")
const http = require("node:http");
const { Server } = require("socket.io");

const MAX_POINTS = 100;
const GEO_MAX_LAT = 85.05112878;
const REDIS_URL = process.env.REDIS_URL || "";
const GEO_KEY = process.env.GEO_KEY || "bench:pilots:geo";
const SEEN_KEY = `${GEO_KEY}:seen`;

const server = http.createServer();
const io = new Server(server, { maxHttpBufferSize: 65536, pingInterval: 25000, pingTimeout: 20000 });
let redis = null;

function authenticate(socket, next) {
  const token = socket.handshake.auth?.token ?? socket.handshake.query?.token;
  if (!token) return next(new Error("MISSING_TOKEN: no token"));
  socket.data.user = String(token);
  next();
}

const failure = (code, message) => ({ ok: false, error: { code, message } });

// An error's message (an AggregateError from a multi-address connect has an empty one; a
// failed MULTI says only how many commands failed, its replies say why).
function describe(err) {
  if (err?.errorIndexes?.length && err.replies) return describe(err.replies[err.errorIndexes[0]]);
  if (err?.message) return err.message;
  if (err?.errors?.length) return err.errors.map(describe).join("; ");
  return err?.code ?? String(err);
}

// {error} for a malformed report, else {accepted: [point], rejected: [{index, reason}]}.
function check(payload) {
  const points = payload?.points;
  if (!Array.isArray(points)) return { error: "points: must be an array" };
  if (points.length < 1 || points.length > MAX_POINTS) {
    return { error: `points: must hold 1 to ${MAX_POINTS} points, not ${points.length}` };
  }
  const accepted = [];
  const rejected = [];
  for (let index = 0; index < points.length; index++) {
    const p = points[index];
    if (p === null || typeof p !== "object" || Array.isArray(p)) return { error: `points[${index}]: must be an object` };
    for (const field of ["lat", "lng", "ts"]) {
      if (typeof p[field] !== "number") return { error: `points[${index}].${field}: must be a number` };
    }
    if (!Number.isFinite(p.ts)) return { error: `points[${index}].ts: must be a finite number` };
    const valid = Number.isFinite(p.lat) && Number.isFinite(p.lng) && Math.abs(p.lat) <= 90 && Math.abs(p.lng) <= 180;
    if (valid) accepted.push(p);
    else rejected.push({ index, reason: "invalid_coordinates" });
  }
  return { accepted, rejected };
}

function relay(user, last) {
  io.of("/customer")
    .to(`order:${user}`)
    .volatile.emit("pilot:location", { order_id: user, lat: last.lat, lng: last.lng, ts: last.ts });
}

io.of("/pilot").use(authenticate).on("connection", (socket) => {
  socket.on("location", (payload, ack) => {
    const reply = typeof ack === "function" ? ack : () => {};
    const checked = check(payload);
    if (checked.error) return reply(failure("VALIDATION_ERROR", checked.error));
    const { accepted, rejected } = checked;
    const answer = { ok: true, data: { accepted: accepted.length, rejected } };
    const user = socket.data.user;
    const last = accepted[accepted.length - 1];
    if (!last) return reply(answer);
    if (!redis) {
      relay(user, last);
      return reply(answer);
    }
    const tx = redis.multi();
    if (Math.abs(last.lat) <= GEO_MAX_LAT) tx.geoAdd(GEO_KEY, { longitude: last.lng, latitude: last.lat, member: user });
    tx.zAdd(SEEN_KEY, { score: last.ts, value: user });
    tx.exec().then(
      () => {
        relay(user, last);
        reply(answer);
      },
      (err) => reply(failure("UNAVAILABLE", `redis: ${describe(err)}`)),
    );
  });
});

io.of("/customer").use(authenticate).on("connection", (socket) => {
  socket.on("order:watch", (payload, ack) => {
    socket.join(`order:${payload?.order_id}`);
    if (typeof ack === "function") ack({ ok: true, data: { order_id: payload?.order_id } });
  });
});

// The URL without its password, for messages.
function shown(url) {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparsable REDIS_URL)";
  }
}

async function connectRedis() {
  const { createClient } = require("redis");
  let ready = false;
  const client = createClient({
    url: REDIS_URL,
    disableOfflineQueue: true,
    socket: {
      connectTimeout: 5000,
      // At start: give up at once (the caller exits). Later: back off up to 2 s, forever.
      reconnectStrategy: (retries) => (ready ? Math.min(50 * 2 ** retries, 2000) : false),
    },
  });
  let lastLogged = "";
  client.on("error", (err) => {
    if (!ready || describe(err) === lastLogged) return;
    lastLogged = describe(err);
    console.error(`node-relay: redis error: ${lastLogged}`);
  });
  client.on("ready", () => {
    lastLogged = "";
  });
  await client.connect();
  ready = true;
  return client;
}

async function main() {
  if (REDIS_URL) {
    try {
      redis = await connectRedis();
    } catch (err) {
      console.error(`node-relay: cannot reach Redis at ${shown(REDIS_URL)}: ${describe(err)}`);
      process.exit(1);
    }
  }
  server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
    console.log(JSON.stringify({ listening: server.address().port, pid: process.pid, redis: redis !== null }));
  });
}

process.on("SIGTERM", () => process.exit(0));
main();
