// The printable receipt in a real browser: Debian's Chromium, driven by playwright-core,
// renders the page a customer prints after delivery. A screenshot is kept for people to look
// at (DISPATCHD_SCREENSHOTS, default the system's temporary folder).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchChromium, screenshotPath } from "./browser.mjs";
import { DROP, PICKUP, api, call, dispatcher, fix, pilotOnDuty, register, startServer } from "./harness.mjs";

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await server.stop();
});

test("a delivered order's receipt renders as a printable page that loads nothing else", async () => {
  const customer = await register(server, "customer");
  const desk = await dispatcher(server);
  const body = {
    pickup: { ...PICKUP, address: "Gate <2> & Sons, MG Road" },
    drop: { ...DROP, address: "Hebbal flyover" },
    vehicle_type: "bike",
    payment_method: "cash",
  };
  const placed = await api(server, "POST", "/orders", body, customer.token);
  assert.equal(placed.status, 201, JSON.stringify(placed.body));
  const { id, delivery_otp: otp } = placed.body.data;
  const { pilot, socket } = await pilotOnDuty(server, PICKUP.lat, PICKUP.lng);
  const assigned = await api(server, "POST", `/dispatch/orders/${id}/assign`, { pilot_id: pilot.id }, desk.token);
  assert.equal(assigned.status, 200, JSON.stringify(assigned.body));
  for (const step of ["order:arrived", "order:picked_up"]) {
    assert.equal((await call(socket, step, { order_id: id })).ok, true, step);
  }
  await call(socket, "location", { points: [fix(DROP.lat, DROP.lng, 390)] });
  const delivered = await call(socket, "order:delivered", { order_id: id, otp });
  assert.equal(delivered.data?.status, "delivered", JSON.stringify(delivered));
  socket.close();

  const context = await browser.newContext({ extraHTTPHeaders: { authorization: `Bearer ${customer.token}` } });
  const page = await context.newPage();
  const outside = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(server.url)) outside.push(request.url());
  });
  const blocked = [];
  page.on("console", (message) => {
    if (message.type() === "error") blocked.push(message.text());
  });
  const response = await page.goto(`${server.url}/api/v1/orders/${id}/receipt?format=html`);
  assert.equal(response.status(), 200);
  assert.equal(await page.title(), `Receipt ${id}`);
  const text = await page.locator("body").innerText();
  assert.match(text, /Gate <2> & Sons, MG Road/, "the address shows as text, not as markup");
  assert.match(text, /Total\s+₹[\d,]+\.\d\d/);
  assert.match(text, /Cash/i);
  // The inline style applied: the total row is bold, the amounts right-aligned.
  const total = page.locator("tr.total td").first();
  assert.ok(Number(await total.evaluate((cell) => getComputedStyle(cell).fontWeight)) >= 600);
  assert.deepEqual(outside, [], "nothing is loaded from elsewhere");
  assert.deepEqual(blocked, [], "the Content-Security-Policy blocks nothing the page uses");
  const shot = screenshotPath("dispatchd-receipt.png");
  await page.screenshot({ path: shot, fullPage: true });
  await context.close();
});
