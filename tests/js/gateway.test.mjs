// The gateway as the apps meet it: the official socket.io-client, v4 (EIO4) and v2 (EIO3),
// WebSocket and long-polling, against a real dispatchd.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  api,
  call,
  collect,
  connect,
  connectV2,
  createOrder,
  dispatcher,
  fix,
  next,
  pilotOnDuty,
  register,
  startServer,
} from "./harness.mjs";

let server;
const open = [];
const track = (socket) => {
  open.push(socket);
  return socket;
};

before(async () => {
  server = await startServer({ DISPATCHD__REALTIME__BUDGETS__LOCATION__PER_SEC: "1000" });
});

after(async () => {
  for (const socket of open) socket.close();
  await server.stop();
});

/** The connect_error message a connection attempt gets (fails if it connects). */
async function refusal(namespace, auth) {
  try {
    const socket = await connect(server, namespace, auth);
    socket.close();
  } catch (err) {
    return err.message;
  }
  throw new Error(`connected to ${namespace}`);
}

describe("connecting", () => {
  test("each namespace admits its roles with a valid token", async () => {
    const pilot = await register(server, "pilot");
    const customer = await register(server, "customer");
    const staff = await dispatcher(server);
    track(await connect(server, "/pilot", { token: pilot.token }));
    track(await connect(server, "/customer", { token: customer.token }));
    track(await connect(server, "/dispatch", { token: staff.token }));
  });

  test("bad, missing, wrong-role and revoked tokens get a connect_error saying why", async () => {
    const pilot = await register(server, "pilot");
    const customer = await register(server, "customer");
    assert.match(await refusal("/pilot", {}), /^MISSING_TOKEN: /);
    assert.match(await refusal("/pilot", { token: "garbage" }), /^INVALID_TOKEN: /);
    assert.match(await refusal("/customer", { token: pilot.token }), /^FORBIDDEN_ROLE: /);
    assert.match(await refusal("/dispatch", { token: customer.token }), /^FORBIDDEN_ROLE: /);
    const out = await api(server, "POST", "/auth/logout", {}, customer.token);
    assert.equal(out.status, 200);
    assert.match(await refusal("/customer", { token: customer.token }), /^TOKEN_REVOKED: /);
  });

  test("a socket whose session ends is told why, then disconnected; auth:refresh answers", async () => {
    const pilot = await register(server, "pilot");
    const socket = await connect(server, "/pilot", { token: pilot.token });
    const refreshed = await call(socket, "auth:refresh", { token: pilot.token });
    assert.equal(refreshed.ok, true, JSON.stringify(refreshed));
    assert.ok(Date.parse(refreshed.data.expires_at) > Date.now());
    assert.equal((await call(socket, "auth:refresh", {})).error.code, "VALIDATION_ERROR");
    const ended = next(socket, "session:ended");
    const disconnected = new Promise((resolve) => socket.once("disconnect", resolve));
    const out = await api(server, "POST", "/auth/logout", {}, pilot.token);
    assert.equal(out.status, 200);
    assert.equal((await ended)?.code, "TOKEN_REVOKED");
    assert.equal(await disconnected, "io server disconnect");
  });

  test("WebSocket only, and long-polling that upgrades", async () => {
    const pilot = await register(server, "pilot");
    const ws = track(await connect(server, "/pilot", { token: pilot.token }, { transports: ["websocket"] }));
    assert.equal(ws.io.engine.transport.name, "websocket");
    const polling = track(await connect(server, "/pilot", { token: pilot.token }));
    const located = await call(polling, "location", { points: [fix(12.97, 77.59, 0)] });
    assert.equal(located.ok, true);
    await new Promise((resolve) => (polling.io.engine.transport.name === "websocket" ? resolve() : polling.io.engine.once("upgrade", resolve)));
    assert.equal(polling.io.engine.transport.name, "websocket");
    const onPollingOnly = track(await connect(server, "/pilot", { token: pilot.token }, { transports: ["polling"] }));
    assert.equal((await call(onPollingOnly, "location", { points: [fix(12.9701, 77.59, 30)] })).ok, true);
  });

  test("EIO3: socket.io-client v2 with the token in the query", async () => {
    const pilot = await register(server, "pilot");
    const socket = track(await connectV2(server, "/pilot", pilot.token));
    const ack = await call(socket, "location", { points: [fix(12.9716, 77.5946, 0)] });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(ack.data.accepted, 1);
    const customer = await register(server, "customer");
    await assert.rejects(connectV2(server, "/pilot", customer.token), /FORBIDDEN_ROLE/);
  });
});

describe("/pilot", () => {
  test("an order is offered to the nearest pilot, who accepts it; a v2 pilot is offered the next", async () => {
    // Far north of the other tests' pilots, so nobody else is in reach.
    const customer = await register(server, "customer");
    const near = await pilotOnDuty(server, 13.302, 77.59);
    track(near.socket);
    const body = {
      pickup: { lat: 13.3, lng: 77.59, address: "Devanahalli" },
      drop: { lat: 13.33, lng: 77.6, address: "Vijayapura road" },
      vehicle_type: "bike",
      payment_method: "cash",
    };
    const offered = next(near.socket, "offer");
    const created = await api(server, "POST", "/orders", body, customer.token);
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const offer = await offered;
    assert.equal(offer.order_id, created.body.data.id);
    assert.ok(offer.expires_in_ms > 10000 && offer.pickup_distance_m < 300, JSON.stringify(offer));
    const accepted = await call(near.socket, "offer:accept", { offer_id: offer.offer_id });
    assert.equal(accepted.data.status, "assigned", JSON.stringify(accepted));
    assert.equal((await call(near.socket, "offer:reject", { offer_id: offer.offer_id })).error.code, "OFFER_EXPIRED");
    assert.equal((await call(near.socket, "offer:accept", { offer_id: "nope" })).error.code, "VALIDATION_ERROR");

    // An app on socket.io-client 2 (EIO3) gets offers and answers them the same way.
    const old = await register(server, "pilot");
    const v2 = track(await connectV2(server, "/pilot", old.token));
    assert.equal((await call(v2, "location", { points: [fix(13.304, 77.59, 0)] })).data.accepted, 1);
    assert.equal((await call(v2, "status:set", { status: "online" })).ok, true);
    const second = next(v2, "offer");
    const again = await api(server, "POST", "/orders", body, customer.token);
    const offerV2 = await second;
    assert.equal(offerV2.order_id, again.body.data.id);
    const rejected = await call(v2, "offer:reject", { offer_id: offerV2.offer_id, reason: "lunch" });
    assert.equal(rejected.data.status, "rejected", JSON.stringify(rejected));
  });

  test("location acks say what counted and why each refused point was refused", async () => {
    const { socket } = await pilotOnDuty(server, 12.96, 77.59);
    track(socket);
    const ack = await call(socket, "location", {
      points: [fix(12.9605, 77.5905, 60), fix(12.961, 77.591, 70, 400), fix(0, 0, 80), fix(95, 77, 90)],
    });
    assert.equal(ack.ok, true);
    assert.equal(ack.data.accepted, 1);
    assert.deepEqual(
      ack.data.rejected.map((r) => [r.index, r.reason]),
      [
        [1, "low_accuracy"],
        [2, "null_island"],
        [3, "invalid_coordinates"],
      ],
    );
  });

  test("malformed payloads get error acks, and the socket stays usable", async () => {
    const { socket } = await pilotOnDuty(server, 12.95, 77.58);
    track(socket);
    assert.equal((await call(socket, "location", { points: "north" })).error.code, "VALIDATION_ERROR");
    const missing = await call(socket, "location", {});
    assert.equal(missing.error.code, "VALIDATION_ERROR");
    assert.match(missing.error.message, /points/);
    assert.equal((await call(socket, "location", "just a string")).error.code, "VALIDATION_ERROR");
    assert.equal((await call(socket, "location")).error.code, "BAD_PAYLOAD");
    const huge = Array.from({ length: 101 }, (_, i) => fix(12.95, 77.58, i));
    assert.equal((await call(socket, "location", { points: huge })).error.code, "VALIDATION_ERROR");
    const binary = await call(socket, "location", Buffer.from([0xde, 0xad, 0xbe, 0xef]));
    assert.equal(binary.ok, false, JSON.stringify(binary));
    assert.equal((await call(socket, "status:set", { status: 42 })).error.code, "VALIDATION_ERROR");
    assert.equal(socket.connected, true);
    assert.equal((await call(socket, "location", { points: [fix(12.9502, 77.58, 200)] })).ok, true);
  });
});

describe("/customer", () => {
  test("a customer follows its order and only its pilot, and catches up by seq", async () => {
    const staff = await dispatcher(server);
    const customer = await register(server, "customer");
    const order = await createOrder(server, customer);
    const mine = await pilotOnDuty(server, 12.96, 77.59);
    const other = await pilotOnDuty(server, 12.965, 77.592);
    track(mine.socket);
    track(other.socket);

    const watcher = track(await connect(server, "/customer", { token: customer.token }));
    const snapshot = await call(watcher, "order:watch", { order_id: order });
    assert.equal(snapshot.ok, true);
    assert.deepEqual(
      snapshot.data.events.map((e) => e.type),
      ["created", "searching_driver"],
    );

    const pushed = next(watcher, "order:event");
    const assigned = await api(server, "POST", `/dispatch/orders/${order}/assign`, { pilot_id: mine.pilot.id }, staff.token);
    assert.equal(assigned.status, 200, JSON.stringify(assigned.body));
    const event = await pushed;
    assert.equal(event.type, "assigned");
    assert.equal(event.seq, 3);

    const positions = collect(watcher, "pilot:location", 800);
    await call(other.socket, "location", { points: [fix(12.966, 77.5925, 60)] });
    await call(mine.socket, "location", { points: [fix(12.962, 77.591, 60)] });
    const seen = await positions;
    assert.equal(seen.length, 1, JSON.stringify(seen));
    assert.equal(seen[0].order_id, order);
    assert.equal(seen[0].lat, 12.962);
    assert.ok(seen[0].eta_s > 0);

    const stranger = await register(server, "customer");
    const nosy = track(await connect(server, "/customer", { token: stranger.token }));
    assert.equal((await call(nosy, "order:watch", { order_id: order })).error.code, "ORDER_NOT_FOUND");

    watcher.close();
    const back = track(await connect(server, "/customer", { token: customer.token }));
    const replay = await call(back, "order:watch", { order_id: order, last_seq: 2 });
    assert.deepEqual(
      replay.data.events.map((e) => e.seq),
      [3],
    );
    assert.equal(replay.data.pilot_location.lat, 12.962);
  });
});

describe("/dispatch", () => {
  test("a viewport gets a snapshot, then deltas coalesced to at most 2 a second", async () => {
    const staff = await dispatcher(server);
    const { pilot, socket: pilotSocket } = await pilotOnDuty(server, 12.9, 77.7);
    track(pilotSocket);
    const map = track(await connect(server, "/dispatch", { token: staff.token }));
    const snapshot = await call(map, "viewport:set", { bbox: [77.69, 12.89, 77.71, 12.95] });
    assert.equal(snapshot.ok, true);
    assert.deepEqual(
      snapshot.data.pilots.map((p) => p.id),
      [pilot.id],
    );

    const frames = collect(map, "pilots:delta", 2000);
    for (let step = 1; step <= 30; step += 1) {
      const ack = await call(pilotSocket, "location", { points: [fix(12.9 + step * 0.0002, 77.7, step * 5)] });
      assert.equal(ack.data.accepted, 1);
      await new Promise((resolve) => setTimeout(resolve, 40));
    }
    const seen = await frames;
    assert.ok(seen.length >= 1 && seen.length <= 5, `${seen.length} frames in 2 s`);
    assert.equal(seen.at(-1).upserts[0].lat, 12.906);

    const bad = await call(map, "viewport:set", { bbox: [1, 2, 3] });
    assert.equal(bad.error.code, "VALIDATION_ERROR");
  });
});

describe("floods", () => {
  let strict;
  before(async () => {
    strict = await startServer({
      DISPATCHD__REALTIME__BUDGETS__LOCATION__PER_SEC: "1",
      DISPATCHD__REALTIME__BUDGETS__LOCATION__BURST: "2",
      DISPATCHD__REALTIME__BUDGETS__REFUSALS__PER_SEC: "1",
      DISPATCHD__REALTIME__BUDGETS__REFUSALS__BURST: "2",
    });
  });
  after(async () => strict.stop());

  test("a flooding pilot gets RATE_LIMITED acks, then is disconnected", async () => {
    const pilot = await register(strict, "pilot");
    const socket = await connect(strict, "/pilot", { token: pilot.token });
    const disconnected = new Promise((resolve) => socket.once("disconnect", resolve));
    const closing = new Promise((resolve) => socket.once("closing", resolve));
    const codes = [];
    for (let i = 0; i < 4; i += 1) {
      const ack = await call(socket, "location", { points: [fix(12.97, 77.59, i)] });
      codes.push(ack.ok ? "ok" : ack.error.code);
    }
    assert.deepEqual(codes, ["ok", "ok", "RATE_LIMITED", "RATE_LIMITED"]);
    socket.emit("location", { points: [fix(12.97, 77.59, 9)] });
    assert.equal((await closing).code, "FLOODING");
    assert.equal(await disconnected, "io server disconnect");
    const again = await register(strict, "pilot");
    const fresh = await connect(strict, "/pilot", { token: again.token });
    assert.equal((await call(fresh, "location", { points: [fix(12.97, 77.59, 0)] })).ok, true);
    fresh.close();
  });
});
