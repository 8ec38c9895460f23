// Bursts from the official clients: what a client buffered while offline is answered in full
// (every ack arrives, over long-polling too, and a v2 client's whole buffer in one POST is
// taken), and a normal reconnect flush is never punished with a disconnect.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { call, connect, connectV2, fix, register, startServer } from "./harness.mjs";

/** `count` location events emitted at once; resolves with their acks. */
function burst(socket, count) {
  const acks = [];
  for (let i = 0; i < count; i += 1) {
    acks.push(new Promise((resolve) => socket.emit("location", { points: [fix(12.97, 77.59, i)] }, resolve)));
  }
  return Promise.race([
    Promise.all(acks),
    new Promise((_, reject) => setTimeout(() => reject(new Error("not every ack arrived within 20 s")), 20_000)),
  ]);
}

describe("bursts with the budget lifted", () => {
  let server;
  before(async () => {
    server = await startServer({
      DISPATCHD__REALTIME__BUDGETS__LOCATION__PER_SEC: "1000000",
      DISPATCHD__REALTIME__BUDGETS__LOCATION__BURST: "1000000",
    });
  });
  after(async () => server.stop());

  test("every ack of 500 events arrives over long-polling (v4 client)", async () => {
    const pilot = await register(server, "pilot");
    const socket = await connect(server, "/pilot", { token: pilot.token }, { transports: ["polling"] });
    const acks = await burst(socket, 500);
    assert.equal(acks.length, 500);
    assert.ok(acks.every((ack) => typeof ack.ok === "boolean"), JSON.stringify(acks.find((ack) => !ack)));
    assert.equal(socket.connected, true);
    socket.close();
  });

  test("a v2 client's 3,000 buffered events in one long-polling POST are all answered", async () => {
    const pilot = await register(server, "pilot");
    const socket = await connectV2(server, "/pilot", pilot.token, { transports: ["polling"] });
    // The first emit goes out alone; the rest wait for it and leave in one POST (~200 KB).
    const acks = await burst(socket, 3000);
    assert.equal(acks.length, 3000);
    assert.equal(socket.connected, true);
    socket.close();
  });
});

describe("a reconnect flush with the default budgets", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => server.stop());

  test("30 location events buffered through a network drop are answered, and the socket stays", async () => {
    const pilot = await register(server, "pilot");
    const socket = await connect(server, "/pilot", { token: pilot.token }, { reconnection: true, reconnectionDelay: 50 });
    assert.equal((await call(socket, "location", { points: [fix(12.97, 77.59, 0)] })).ok, true);
    const reasons = [];
    socket.on("disconnect", (reason) => reasons.push(reason));
    // The network drops: the transport closes under the client, which buffers and reconnects.
    const back = new Promise((resolve) => socket.io.once("reconnect", resolve));
    socket.io.engine.close();
    const acks = [];
    for (let i = 1; i <= 30; i += 1) {
      acks.push(new Promise((resolve) => socket.emit("location", { points: [fix(12.97 + i * 0.0001, 77.59, i * 3)] }, resolve)));
    }
    await back;
    const answers = await Promise.all(acks);
    assert.deepEqual(
      answers.map((ack) => (ack.ok ? "ok" : ack.error.code)),
      Array(30).fill("ok"),
    );
    assert.equal(reasons.length, 1, `one drop only: ${reasons}`);
    assert.notEqual(reasons[0], "io server disconnect");
    assert.equal(socket.connected, true);
    socket.close();
  });
});
