// A client cut off for flooding, while it keeps sending and reads as it goes, hears why: the
// server used to close the connection with the client's last events unread, the kernel then
// reset it, and the reset dropped what the client had not read yet (the `closing` event and
// every ack, about one time in three). Raw engine.io over `ws`, to send faster than the
// official client lets an app.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import WebSocket from "ws";

import { register, startServer } from "./harness.mjs";

/** Joins `/customer` on a raw connection; resolves with the socket and what it read. */
async function joined(server, token) {
  const ws = new WebSocket(`${server.url.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket`);
  const read = [];
  const closed = new Promise((resolve) => ws.on("close", (code) => resolve(code)));
  await new Promise((resolve, reject) => {
    ws.on("error", reject);
    ws.on("message", (data) => {
      const text = data.toString();
      if (text === "2") return ws.send("3");
      read.push(text);
      if (text.startsWith("0")) ws.send(`40/customer,${JSON.stringify({ token })}`);
      if (text.startsWith("40/customer,")) resolve();
    });
  });
  return { ws, read, closed };
}

describe("a flood cut off while the client still sends", () => {
  let server;
  before(async () => {
    server = await startServer({ DISPATCHD__REALTIME__BUDGETS__REFUSALS__BURST: "20" });
  });
  after(async () => server.stop());

  test("the flooder is told FLOODING before its connection ends, every time", async () => {
    for (let attempt = 0; attempt < 8; attempt += 1) {
      const customer = await register(server, "customer");
      const { ws, read, closed } = await joined(server, customer.token);
      for (let i = 1; i <= 1000; i += 1) ws.send(`42/customer,${i}["no:such:event",{}]`);
      const code = await Promise.race([closed, new Promise((resolve) => setTimeout(() => resolve("open"), 5000))]);
      assert.notEqual(code, "open", `attempt ${attempt}: the connection stayed open`);
      const told = read.some((text) => text.includes('"closing"') && text.includes("FLOODING"));
      assert.ok(told, `attempt ${attempt}: closed (${code}) without being told why; read ${read.length} messages`);
    }
  });
});
