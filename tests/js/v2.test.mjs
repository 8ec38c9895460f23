// Socket.io v2 clients (EIO3) as the reference 2.x server treats them: a refused connect is
// a plain string error, and namespaces multiplexed on one connection each carry their own
// token. And binary attachments, however many, get an error ack, not a dropped connection.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import ioV2 from "socket.io-client-v2";

import { call, connect, register, startServer } from "./harness.mjs";

let server;
before(async () => {
  server = await startServer();
});
after(async () => server.stop());

describe("socket.io-client v2", () => {
  test("a refused connect gets the message as a plain string", async () => {
    const socket = ioV2(`${server.url}/pilot`, { query: { token: "garbage" }, reconnection: false, forceNew: true });
    const error = await new Promise((resolve) => socket.once("error", resolve));
    socket.close();
    assert.equal(typeof error, "string", JSON.stringify(error));
    assert.match(error, /^INVALID_TOKEN: /);
  });

  test("namespaces multiplexed on one connection each carry their own token", async () => {
    const pilot = await register(server, "pilot");
    const customer = await register(server, "customer");
    // Same manager (no forceNew): one engine connection, whose URL carries the first token.
    const url = `${server.url}`;
    const asPilot = ioV2(`${url}/pilot`, { query: { token: pilot.token }, reconnection: false });
    await new Promise((resolve, reject) => {
      asPilot.once("connect", resolve);
      asPilot.once("error", reject);
    });
    const asCustomer = ioV2(`${url}/customer`, { query: { token: customer.token }, reconnection: false });
    await new Promise((resolve, reject) => {
      asCustomer.once("connect", resolve);
      asCustomer.once("error", (err) => reject(new Error(String(err))));
    });
    assert.equal(asPilot.io, asCustomer.io, "one connection");
    const watched = await call(asCustomer, "order:watch", { order_id: "00000000-0000-7000-8000-000000000000" });
    assert.equal(watched.error.code, "ORDER_NOT_FOUND", JSON.stringify(watched));
    asPilot.io.close();
  });
});

describe("binary attachments", () => {
  test("one, two or ten attachments get BAD_PAYLOAD and the socket stays", async () => {
    const pilot = await register(server, "pilot");
    const socket = await connect(server, "/pilot", { token: pilot.token });
    for (const count of [1, 2, 10]) {
      const buffers = Array.from({ length: count }, (_, i) => Buffer.from([i, 1, 2]));
      const ack = await call(socket, "location", ...buffers);
      assert.equal(ack.error?.code, "BAD_PAYLOAD", `${count}: ${JSON.stringify(ack)}`);
    }
    assert.equal(socket.connected, true);
    socket.close();
  });
});
