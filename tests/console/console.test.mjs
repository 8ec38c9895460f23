// The dispatcher console in a real browser: Debian's Chromium, driven by playwright-core,
// against a real server (embedded store) with a small city of pilots on their own sockets.
// A dispatcher made with the admin CLI signs in; the map shows the pilots the server has; an
// order placed over REST is on the board within a second; an order left searching raises an
// alert; assigning through the page reaches the pilot's socket and moves the row; the page
// logs no error and loads nothing from elsewhere. A screenshot is kept.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchChromium, screenshotPath } from "../js/browser.mjs";
import { PICKUP, api, createOrder, dispatcher, next, pilotOnDuty, register, startServer, PASSWORD } from "../js/harness.mjs";

let server;
let browser;
const sockets = [];

before(async () => {
  // Alerts after 3 s of searching, and access tokens of 65 s (the page renews them a minute
  // before they expire: here at once), so that the test need not wait minutes.
  server = await startServer({ DISPATCHD__CONSOLE__ALERT_SEARCH_SECS: "3", DISPATCHD__AUTH__ACCESS_TTL_SECS: "65" });
  browser = await launchChromium();
});

after(async () => {
  for (const socket of sockets) socket.close();
  await browser?.close();
  await server.stop();
});

test("a dispatcher watches the city, sees a new order at once and assigns it by hand", async () => {
  // The city: one pilot at the pickup (the nearest), six more around it.
  const near = await pilotOnDuty(server, PICKUP.lat, PICKUP.lng);
  sockets.push(near.socket);
  for (let index = 1; index <= 6; index += 1) {
    const around = await pilotOnDuty(server, PICKUP.lat + 0.004 * index, PICKUP.lng - 0.003 * index);
    sockets.push(around.socket);
  }
  const desk = await dispatcher(server);
  const box = `${PICKUP.lng - 0.2},${PICKUP.lat - 0.2},${PICKUP.lng + 0.2},${PICKUP.lat + 0.2}`;
  const onServer = await api(server, "GET", `/dispatch/pilots?bbox=${box}`, undefined, desk.token);
  const serverCount = onServer.body.data.items.length;
  assert.equal(serverCount, 7, JSON.stringify(onServer.body));

  const page = await browser.newPage({ viewport: { width: 1400, height: 860 } });
  const errors = [];
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(message.text());
  });
  page.on("pageerror", (error) => errors.push(error.message));
  const outside = [];
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(server.url) && !url.startsWith(server.url.replace("http", "ws"))) outside.push(url);
  });

  const response = await page.goto(`${server.url}/`);
  assert.equal(new URL(page.url()).pathname, "/console", "/ leads to the console");
  const policy = response.headers()["content-security-policy"];
  assert.match(policy, /script-src 'self';/, policy);
  assert.doesNotMatch(policy, /unsafe-inline|unsafe-eval|\*/, policy);
  // The status filter offers the statuses an open order rests in: a pickup goes through
  // picked_up to in_transit in one step, and a "picked up" option never matched anything.
  const statusOptions = await page.locator("#filter-status option").evaluateAll((options) => options.map((o) => o.value));
  assert.deepEqual(statusOptions, ["", "searching_driver", "assigned", "in_transit", "returning", "pending"]);

  await page.getByTestId("login-phone").fill("+910000000000");
  await page.getByTestId("login-password").fill("not the password");
  await page.getByTestId("login-submit").click();
  await page.getByText(/INVALID_CREDENTIALS/).waitFor();
  // (Chromium logs the refused login's 401 as a console error: that one was expected.)
  errors.length = 0;

  await page.getByTestId("login-phone").fill(desk.phone);
  await page.getByTestId("login-password").fill(PASSWORD);
  await page.getByTestId("login-submit").click();
  await page.getByTestId("map").waitFor();
  const token = () => page.evaluate(() => JSON.parse(sessionStorage.getItem("dispatchd.console.session"))?.access);
  const firstToken = await token();
  await page.waitForFunction(
    (expected) => document.querySelector('[data-testid="pilots-online"]')?.textContent === String(expected),
    serverCount,
    { timeout: 5000 },
  );

  // A new order: on the board within a second, searching.
  const customer = await register(server, "customer");
  const offered = next(near.socket, "offer", 5000);
  const order = await createOrder(server, customer);
  const placed = Date.now();
  const row = page.locator(`[data-testid="order-row"][data-order-id="${order}"]`);
  await row.waitFor({ timeout: 1000 });
  const seenAfter = Date.now() - placed;
  assert.equal(await row.getAttribute("data-status"), "searching_driver");
  assert.equal(await page.getByTestId("orders-searching").textContent(), "1");
  console.log(`order on the board ${seenAfter} ms after the REST answer`);

  // The nearest pilot turns the offer down, so it stays searching: an alert comes.
  const offer = await offered;
  assert.equal(offer?.order_id, order, "matching offers it to the nearest pilot first");
  near.socket.emit("offer:reject", { offer_id: offer.offer_id }, () => {});
  const alert = page.getByTestId("alert").filter({ hasText: order.slice(-6) }).first();
  await alert.waitFor({ timeout: 8000 });

  // Assigned by hand from the board: the pilot hears it, the row moves.
  const told = new Promise((resolve) => {
    const listener = (event) => {
      if (event.order_id === order && event.type === "assigned") {
        near.socket.off("order:event", listener);
        resolve(event);
      }
    };
    near.socket.on("order:event", listener);
  });
  await row.getByTestId("assign-button").click();
  const choice = page.getByTestId("assign-pilot").first();
  await choice.waitFor();
  await choice.click();
  const event = await Promise.race([told, new Promise((resolve) => setTimeout(() => resolve(null), 5000))]);
  assert.ok(event, "the pilot's socket hears of its assignment");
  assert.equal(event.data.pilot_id, near.pilot.id, "the nearest pilot was the first choice");
  await page.locator(`[data-testid="order-row"][data-order-id="${order}"][data-status="assigned"]`).waitFor();
  await page.locator('#detail[data-status="assigned"]').waitFor();

  // An error is shown as the API words it: assigning the same order again.
  const again = await api(server, "POST", `/dispatch/orders/${order}/assign`, { pilot_id: near.pilot.id }, desk.token);
  assert.equal(again.body.error.code, "ORDER_TAKEN");

  // The median wait to assignment counts this one (read again at most 5 s after it).
  await page.waitForFunction(() => document.querySelector('[data-testid="median-wait"]')?.textContent !== "–", null, {
    timeout: 15000,
  });
  await page.screenshot({ path: screenshotPath("dispatchd-console.png") });
  // An error is shown as the API words it: a pilot that became busy since the list was read.
  const second = await createOrder(server, customer);
  const secondRow = page.locator(`[data-testid="order-row"][data-order-id="${second}"]`);
  await secondRow.getByTestId("assign-button").click();
  await page.locator(`#detail[data-order-id="${second}"]`).waitFor();
  const stale = page.getByTestId("assign-pilot").first();
  await stale.waitFor();
  const taken = await stale.getAttribute("data-pilot-id");
  const third = await createOrder(server, customer);
  const meanwhile = await api(server, "POST", `/dispatch/orders/${third}/assign`, { pilot_id: taken }, desk.token);
  assert.equal(meanwhile.status, 200, JSON.stringify(meanwhile.body));
  await stale.click();
  await page.getByTestId("error").filter({ hasText: "PILOT_BUSY" }).waitFor({ timeout: 3000 });
  // (Chromium logs the refused request's 409 as a console error: that one was expected.)
  errors.splice(0, errors.length, ...errors.filter((text) => !/status of 409/.test(text)));
  await row.click();
  await page.locator(`#detail[data-order-id="${order}"]`).waitFor();

  // Cancelled from the detail, with the dispatcher's reason: the row leaves the board.
  await page.getByTestId("cancel-button").click();
  await page.getByTestId("cancel-reason").fill("customer called: wrong drop");
  await page.getByTestId("cancel-button").click();
  await row.waitFor({ state: "detached", timeout: 3000 });
  const events = await api(server, "GET", `/orders/${order}/events`, undefined, desk.token);
  const last = events.body.data.at(-1);
  assert.equal(last.type, "cancelled");
  assert.equal(last.data.note, "customer called: wrong drop");

  assert.deepEqual(outside, [], "the console loads nothing from elsewhere");
  assert.deepEqual(errors, [], "no console errors");

  // The token was renewed before it expired, and the live feed took the new one.
  assert.notEqual(await token(), firstToken, "the access token was refreshed");
  assert.equal(await page.locator("#link").textContent(), "live");

  // Signing out ends the session.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByTestId("login-submit").waitFor();
});

test("a board with more open orders than it lists says how many it leaves out", async () => {
  // Its own server, listing two orders at most.
  const small = await startServer({ DISPATCHD__REALTIME__BOARD_MAX_ROWS: "2" });
  try {
    const placed = [];
    for (let index = 0; index < 3; index += 1) {
      placed.push(await createOrder(small, await register(small, "customer")));
    }
    const desk = await dispatcher(small);
    const page = await browser.newPage({ viewport: { width: 1400, height: 860 } });
    await page.goto(`${small.url}/console`);
    await page.getByTestId("login-phone").fill(desk.phone);
    await page.getByTestId("login-password").fill(PASSWORD);
    await page.getByTestId("login-submit").click();
    const note = page.getByTestId("board-truncated");
    await note.waitFor({ state: "visible", timeout: 5000 });
    assert.match(await note.textContent(), /^1 more open orders are not listed/);
    // All three search; the two waiting longest are the ones listed.
    const row = (order) => page.locator(`[data-testid="order-row"][data-order-id="${order}"]`);
    await row(placed[0]).waitFor();
    await row(placed[1]).waitFor();
    assert.equal(await row(placed[2]).count(), 0, "the newest search is left out");
    await page.screenshot({ path: screenshotPath("dispatchd-console-truncated.png") });
    await page.close();
  } finally {
    await small.stop();
  }
});
