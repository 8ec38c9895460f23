// The dispatcher console: signs in over the REST API, watches the city over the /dispatch
// socket (viewport:set + pilots:delta + supply for the map, orders:subscribe + orders:delta
// for the board, order:event for the order open in detail), and steps in through the REST
// API. Plain browser JavaScript with Leaflet and the Socket.io client; no build step.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const STORE = "dispatchd.console.session";
  const STATUS_COLOURS = {
    available: "#2fb35e",
    on_offer: "#e0a526",
    busy: "#2b5fd9",
    break: "#98a2b3",
  };
  const ORDER_COLOURS = {
    pending: "#98a2b3",
    searching_driver: "#e0a526",
    assigned: "#2b5fd9",
    picked_up: "#2fb35e",
    in_transit: "#2fb35e",
    returning: "#c23030",
  };
  const FINAL = new Set(["delivered", "cancelled", "returned"]);
  // Past this many pilots in view, or below this zoom, pilots are drawn as counts per square.
  const AGGREGATE_OVER = 3000;
  const AGGREGATE_BELOW_ZOOM = 12;
  const CLUSTER_PX = 44;

  let config = null;
  let session = null;
  let socket = null;
  let refreshTimer = null;
  let map = null;
  let pilotLayer = null;
  let supplyLayer = null;
  let orderMarkers = null;
  let detailLayer = null;
  const pilots = new Map();
  // The supply cells in view, from the server: exact counts even when the view holds more
  // pilots than the server lists one by one (realtime.viewport_max_pilots).
  let supplyCells = [];
  const orders = new Map();
  const rows = new Map();
  let openOrder = null;
  let renderQueued = false;
  let boardOrder = "";

  // ---- REST -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(code, message, status) {
      super(message);
      this.code = code;
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (session) headers.authorization = `Bearer ${session.access}`;
    let response;
    try {
      response = await fetch(`/api/v1${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError("NETWORK", `the server cannot be reached (${err.message})`, 0);
    }
    let json = null;
    try {
      json = await response.json();
    } catch {
      json = null;
    }
    if (!response.ok || !json || json.success === false) {
      const error = json?.error ?? { code: `HTTP_${response.status}`, message: response.statusText };
      if (response.status === 401 && session && !path.startsWith("/auth/")) {
        signedOut(`${error.code}: ${error.message}`);
      }
      throw new ApiError(error.code, error.message, response.status);
    }
    return json.data;
  }

  // ---- session ----------------------------------------------------------------------------

  function remember(grant) {
    session = {
      access: grant.access_token,
      refresh: grant.refresh_token,
      expiresAt: Date.parse(grant.access_token_expires_at),
      user: grant.user,
    };
    sessionStorage.setItem(STORE, JSON.stringify(session));
    scheduleRefresh();
  }

  function restore() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(STORE));
      if (saved?.access && saved.expiresAt > Date.now()) return saved;
    } catch {
      // A damaged entry: sign in again.
    }
    sessionStorage.removeItem(STORE);
    return null;
  }

  // The access token is renewed a minute before it expires; the socket is told the new one.
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    const wait = Math.max(5_000, session.expiresAt - Date.now() - 60_000);
    refreshTimer = setTimeout(refresh, Math.min(wait, 2 ** 31 - 1));
  }

  async function refresh() {
    try {
      remember(await api("POST", "/auth/refresh", { refresh_token: session.refresh }));
      socket?.emit("auth:refresh", { token: session.access }, (ack) => {
        if (!ack?.ok) toast(`The live feed kept its old token: ${ack?.error?.code}`, true);
      });
    } catch (err) {
      if (err.status === 401) signedOut("Your session has ended; sign in again.");
      else refreshTimer = setTimeout(refresh, 10_000);
    }
  }

  async function signIn(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    $("login-error").textContent = "";
    try {
      const grant = await api("POST", "/auth/login", { phone: form.get("phone"), password: form.get("password") });
      if (!["dispatcher", "admin"].includes(grant.user.role)) {
        session = { access: grant.access_token };
        await api("POST", "/auth/logout").catch(() => {});
        session = null;
        $("login-error").textContent = "This console is for dispatchers and admins.";
        return;
      }
      remember(grant);
      start();
    } catch (err) {
      $("login-error").textContent = `${err.code}: ${err.message}`;
    }
  }

  async function signOut() {
    await api("POST", "/auth/logout").catch(() => {});
    signedOut("");
  }

  function signedOut(message) {
    clearTimeout(refreshTimer);
    session = null;
    sessionStorage.removeItem(STORE);
    socket?.disconnect();
    socket = null;
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message;
  }

  // ---- live feed --------------------------------------------------------------------------

  function connect() {
    socket = io("/dispatch", {
      auth: (give) => give({ token: session?.access }),
      transports: ["websocket", "polling"],
    });
    socket.on("connect", () => {
      link("up", "live");
      sendViewport();
      subscribe();
    });
    socket.on("disconnect", (reason) => {
      link("down", "reconnecting…");
      // The server closed it (a slow read, a new token): come back, with the current token.
      if (reason === "io server disconnect" && session) setTimeout(() => socket?.connect(), 1_000);
    });
    socket.on("connect_error", (err) => {
      link("down", err.message);
      if (/TOKEN_(EXPIRED|REVOKED)|INVALID_TOKEN/.test(err.message)) signedOut(err.message);
    });
    socket.on("session:ended", (ended) => {
      if (ended.code === "TOKEN_EXPIRED") refresh();
      else signedOut(`${ended.code}: ${ended.message}`);
    });
    socket.on("closing", (closing) => toast(`${closing.code}: ${closing.message}`, true));
    socket.on("pilots:delta", (delta) => {
      for (const frame of delta.upserts) pilots.set(frame.id, frame);
      for (const id of delta.removed) pilots.delete(id);
      pilotLayer.redraw();
      queueRender();
    });
    socket.on("supply", (message) => drawSupply(message.cells));
    socket.on("orders:delta", (delta) => {
      for (const row of delta.upserts) upsertOrder(row);
      if (delta.upserts.some((row) => row.status === "assigned")) statsSoon();
      queueRender();
    });
    socket.on("order:event", (event) => {
      if (event.order_id === openOrder) showDetail(openOrder);
    });
  }

  function link(state, text) {
    const element = $("link");
    element.className = `link ${state}`;
    element.textContent = text;
  }

  let viewportTimer = null;
  function sendViewport() {
    clearTimeout(viewportTimer);
    viewportTimer = setTimeout(() => {
      if (!socket?.connected) return;
      const bounds = map.getBounds();
      const clamp = (value, low, high) => Math.min(high, Math.max(low, value));
      const bbox = [
        clamp(bounds.getWest(), -180, 180),
        clamp(bounds.getSouth(), -90, 90),
        clamp(bounds.getEast(), -180, 180),
        clamp(bounds.getNorth(), -90, 90),
      ];
      socket.emit("viewport:set", { bbox }, (ack) => {
        if (!ack?.ok) return toast(`Map: ${ack?.error?.code}: ${ack?.error?.message}`, true);
        pilots.clear();
        for (const frame of ack.data.pilots) pilots.set(frame.id, frame);
        drawSupply(ack.data.supply);
        pilotLayer.redraw();
        queueRender();
      });
    }, 150);
  }

  function subscribe() {
    socket.emit("orders:subscribe", null, (ack) => {
      if (!ack?.ok) return toast(`Orders: ${ack?.error?.code}: ${ack?.error?.message}`, true);
      const seen = new Set();
      for (const row of ack.data.orders) {
        seen.add(row.id);
        upsertOrder(row);
      }
      // What ended while the feed was down.
      for (const id of orders.keys()) if (!seen.has(id)) dropOrder(id);
      // More open than one snapshot lists: the server left out the least urgent.
      const unlisted = ack.data.truncated ? ack.data.open_total - ack.data.orders.length : 0;
      const note = $("board-truncated");
      note.hidden = unlisted <= 0;
      note.textContent = unlisted > 0
        ? `${unlisted} more open orders are not listed: the board lists ${ack.data.max_rows} at most, ` +
          "those searching for a pilot first, the longest waiting first. Each appears when it next changes."
        : "";
      queueRender();
    });
  }

  function upsertOrder(row) {
    const held = orders.get(row.id);
    if (held && held.seq > row.seq) return;
    if (FINAL.has(row.status)) {
      dropOrder(row.id);
      return;
    }
    orders.set(row.id, row);
  }

  function dropOrder(id) {
    orders.delete(id);
    rows.get(id)?.remove();
    rows.delete(id);
  }

  // ---- map --------------------------------------------------------------------------------

  // Every pilot in view on one canvas: an arrow along its heading (a dot without one), in
  // its status's colour, hollow when stale; counts per square when there are too many.
  const PilotLayer = L.Layer.extend({
    onAdd(target) {
      this._canvas = L.DomUtil.create("canvas", "pilot-canvas leaflet-zoom-hide");
      target.getPanes().overlayPane.appendChild(this._canvas);
      target.on("moveend zoomend resize", this._reset, this);
      this._reset();
    },
    onRemove(target) {
      target.off("moveend zoomend resize", this._reset, this);
      this._canvas.remove();
    },
    _reset() {
      const size = map.getSize();
      const ratio = window.devicePixelRatio || 1;
      L.DomUtil.setPosition(this._canvas, map.containerPointToLayerPoint([0, 0]));
      this._canvas.width = size.x * ratio;
      this._canvas.height = size.y * ratio;
      this._canvas.style.width = `${size.x}px`;
      this._canvas.style.height = `${size.y}px`;
      this._draw();
    },
    redraw() {
      if (this._queued) return;
      this._queued = true;
      requestAnimationFrame(() => {
        this._queued = false;
        this._draw();
      });
    },
    _draw() {
      const context = this._canvas.getContext("2d");
      const ratio = window.devicePixelRatio || 1;
      context.setTransform(ratio, 0, 0, ratio, 0, 0);
      context.clearRect(0, 0, this._canvas.width, this._canvas.height);
      if (capped()) drawCellCounts(context);
      else if (pilots.size > AGGREGATE_OVER || map.getZoom() < AGGREGATE_BELOW_ZOOM) drawClusters(context);
      else drawPilots(context);
    },
  });

  /** The pilots the vehicle filter lets through. */
  function* shownPilots() {
    const vehicle = $("filter-vehicle").value;
    for (const pilot of pilots.values()) if (!vehicle || pilot.vehicle_type === vehicle) yield pilot;
  }

  function drawPilots(context) {
    for (const pilot of shownPilots()) {
      const at = map.latLngToContainerPoint([pilot.lat, pilot.lng]);
      const colour = STATUS_COLOURS[pilot.status] ?? "#667085";
      context.beginPath();
      if (pilot.heading == null) {
        context.arc(at.x, at.y, 5, 0, 2 * Math.PI);
      } else {
        const angle = (pilot.heading * Math.PI) / 180;
        const point = (distance, turn) => [
          at.x + distance * Math.sin(angle + turn),
          at.y - distance * Math.cos(angle + turn),
        ];
        context.moveTo(...point(8, 0));
        context.lineTo(...point(6, 2.5));
        context.lineTo(...point(3, Math.PI));
        context.lineTo(...point(6, -2.5));
        context.closePath();
      }
      if (pilot.stale) {
        context.strokeStyle = colour;
        context.lineWidth = 2;
        context.stroke();
      } else {
        context.fillStyle = colour;
        context.fill();
        context.strokeStyle = "#fff";
        context.lineWidth = 1;
        context.stroke();
      }
    }
  }

  /** The view holds more pilots than the server lists one by one. */
  function capped() {
    return pilots.size >= config.viewport_max_pilots;
  }

  /** Pilots on duty and available per supply cell (of the vehicle filtered, or all). */
  function cellCounts(cell) {
    const vehicle = $("filter-vehicle").value;
    const kinds = vehicle ? [cell[vehicle]] : [cell.bike, cell.auto, cell.mini_truck, cell.ev_cycle];
    return kinds.reduce((sum, kind) => ({ online: sum.online + kind.online, available: sum.available + kind.available }), {
      online: 0,
      available: 0,
    });
  }

  function drawCellCounts(context) {
    const bubbles = supplyCells.map((cell) => {
      const at = map.latLngToContainerPoint([cell.center.lat, cell.center.lng]);
      const { online, available } = cellCounts(cell);
      return { x: at.x, y: at.y, count: online, available };
    });
    drawBubbles(context, bubbles.filter((bubble) => bubble.count > 0));
  }

  function drawClusters(context) {
    const squares = new Map();
    for (const pilot of shownPilots()) {
      const at = map.latLngToContainerPoint([pilot.lat, pilot.lng]);
      const key = `${Math.floor(at.x / CLUSTER_PX)}:${Math.floor(at.y / CLUSTER_PX)}`;
      let square = squares.get(key);
      if (!square) {
        square = { x: 0, y: 0, count: 0, available: 0 };
        squares.set(key, square);
      }
      square.x += at.x;
      square.y += at.y;
      square.count += 1;
      if (pilot.status === "available" && !pilot.stale) square.available += 1;
    }
    const bubbles = [...squares.values()].map((square) => ({
      x: square.x / square.count,
      y: square.y / square.count,
      count: square.count,
      available: square.available,
    }));
    drawBubbles(context, bubbles);
  }

  /** Counts drawn as circles, green where some pilot could take an order now. */
  function drawBubbles(context, bubbles) {
    context.font = "600 11px system-ui, sans-serif";
    context.textAlign = "center";
    context.textBaseline = "middle";
    for (const { x, y, count, available } of bubbles) {
      const radius = 8 + Math.min(14, Math.log2(count) * 2.5);
      context.beginPath();
      context.arc(x, y, radius, 0, 2 * Math.PI);
      context.fillStyle = available > 0 ? "rgba(47,179,94,.85)" : "rgba(43,95,217,.85)";
      context.fill();
      context.fillStyle = "#fff";
      context.fillText(String(count), x, y);
    }
  }

  // Supply hexagons and order markers are kept by id and restyled in place: a supply frame
  // every half second must not rebuild the map's layers.
  const hexagons = new Map();
  const markers = new Map();

  function drawSupply(cells) {
    supplyCells = cells;
    queueRender();
    if (capped()) pilotLayer.redraw();
    const shown = $("show-supply").checked;
    const counts = cells.map(cellCounts);
    const most = Math.max(1, ...counts.map((count) => count.online));
    const live = new Set();
    cells.forEach((cell, index) => {
      const { online, available } = counts[index];
      if (!shown || online === 0) return;
      live.add(cell.cell);
      const share = available / online;
      const style = {
        stroke: false,
        fillColor: share > 0.5 ? "#2fb35e" : share > 0 ? "#e0a526" : "#c23030",
        fillOpacity: 0.1 + 0.35 * (online / most),
        interactive: false,
      };
      const held = hexagons.get(cell.cell);
      if (!held) hexagons.set(cell.cell, { layer: L.polygon(cell.boundary, style).addTo(supplyLayer), style });
      else if (held.style.fillColor !== style.fillColor || held.style.fillOpacity !== style.fillOpacity) {
        held.layer.setStyle(style);
        held.style = style;
      }
    });
    for (const [id, held] of hexagons) {
      if (!live.has(id)) {
        held.layer.remove();
        hexagons.delete(id);
      }
    }
  }

  // ---- the board --------------------------------------------------------------------------

  function queueRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  function waited(row) {
    return Math.max(0, Math.round((Date.now() - Date.parse(row.status_since)) / 1000));
  }

  function duration(seconds) {
    if (seconds < 60) return `${seconds}s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${String(seconds % 60).padStart(2, "0")}s`;
    return `${Math.floor(seconds / 3600)}h ${String(Math.floor(seconds / 60) % 60).padStart(2, "0")}m`;
  }

  function short(id) {
    return id ? id.slice(-6) : "–";
  }

  function render() {
    const status = $("filter-status").value;
    const vehicle = $("filter-vehicle").value;
    const sorted = [...orders.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    const body = $("board");
    // Rows move only when the order of the board changed.
    const order = sorted.map((row) => row.id).join();
    const reorder = order !== boardOrder;
    boardOrder = order;
    let shown = 0;
    for (const row of sorted) {
      let tr = rows.get(row.id);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.testid = "order-row";
        tr.dataset.orderId = row.id;
        tr.addEventListener("click", () => showDetail(row.id));
        rows.set(row.id, tr);
      }
      fillRow(tr, row);
      tr.hidden = (status && row.status !== status) || (vehicle && row.vehicle_type !== vehicle);
      if (!tr.hidden) shown += 1;
      if (reorder || !tr.isConnected) body.appendChild(tr);
    }
    $("board-empty").hidden = shown > 0;
    drawOrders(sorted.filter((row) => !rows.get(row.id)?.hidden));
    figures();
    alerts();
  }

  function fillRow(tr, row) {
    tr.dataset.status = row.status;
    tr.classList.toggle("open", row.id === openOrder);
    const searching = row.status === "searching_driver";
    const wait = waited(row);
    const cells = [
      [short(row.id), "id"],
      [row.status.replace("_driver", "").replace("_", " "), `status ${row.status}`],
      [row.vehicle_type.replace("_", " "), ""],
      [searching || row.status === "pending" ? duration(wait) : "", searching && wait > config.alert_search_secs ? "late" : ""],
      [row.offers_refused ? String(row.offers_refused) : "", ""],
    ];
    if (tr.children.length === 0) {
      for (let index = 0; index <= cells.length; index += 1) tr.appendChild(document.createElement("td"));
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.testid = "assign-button";
      button.textContent = "Assign";
      button.addEventListener("click", (event) => {
        event.stopPropagation();
        showDetail(row.id);
      });
      tr.lastChild.appendChild(button);
    }
    cells.forEach(([text, className], index) => {
      const td = tr.children[index];
      if (index === 1) {
        let badge = td.firstChild;
        if (!badge) badge = td.appendChild(document.createElement("span"));
        badge.className = className;
        badge.textContent = text;
      } else {
        td.textContent = text;
        td.className = className;
      }
    });
    tr.lastChild.firstChild.hidden = !searching;
  }

  function drawOrders(list) {
    const live = new Set();
    for (const row of list) {
      live.add(row.id);
      const colour = ORDER_COLOURS[row.status] ?? "#667085";
      const held = markers.get(row.id);
      if (!held) {
        const layer = L.circleMarker([row.pickup.lat, row.pickup.lng], {
          radius: 5,
          color: "#1d2330",
          weight: 1,
          fillColor: colour,
          fillOpacity: 0.9,
        })
          .on("click", () => showDetail(row.id))
          .addTo(orderMarkers);
        markers.set(row.id, { layer, colour });
      } else if (held.colour !== colour) {
        held.layer.setStyle({ fillColor: colour });
        held.colour = colour;
      }
    }
    for (const [id, held] of markers) {
      if (!live.has(id)) {
        held.layer.remove();
        markers.delete(id);
      }
    }
  }

  function figures() {
    let onDuty = 0;
    let available = 0;
    if (capped()) {
      for (const cell of supplyCells) {
        const counts = cellCounts(cell);
        onDuty += counts.online;
        available += counts.available;
      }
    } else {
      for (const pilot of shownPilots()) {
        onDuty += 1;
        if (pilot.status === "available" && !pilot.stale) available += 1;
      }
    }
    $("pilots-online").textContent = String(onDuty);
    $("pilots-available").textContent = String(available);
    let searching = 0;
    for (const row of orders.values()) if (row.status === "searching_driver") searching += 1;
    $("orders-searching").textContent = String(searching);
  }

  // An assignment moves the median: read it again, at once unless it was read in the last 5 s.
  let statsTimer = null;
  let statsAt = 0;
  function statsSoon() {
    if (statsTimer) return;
    statsTimer = setTimeout(
      () => {
        statsTimer = null;
        stats();
      },
      Math.max(0, statsAt + 5_000 - Date.now()),
    );
  }

  async function stats() {
    if (!session) return;
    statsAt = Date.now();
    try {
      const figures = await api("GET", "/dispatch/stats");
      const median = figures.median_wait_to_assign_secs;
      $("median-wait").textContent = median == null ? "–" : duration(Math.round(median));
      $("median-wait").title = `${figures.assigned_last_hour} orders assigned in the last hour`;
    } catch {
      // Shown again at the next try.
    }
  }

  // ---- alerts -----------------------------------------------------------------------------

  function alerts() {
    const list = [];
    for (const row of orders.values()) {
      if (row.status !== "searching_driver") continue;
      const wait = waited(row);
      if (wait > config.alert_search_secs) {
        list.push({ bad: true, text: `Order …${short(row.id)} searching for ${duration(wait)}`, order: row.id });
      }
      if (row.offers_refused >= config.alert_refused_offers) {
        list.push({ bad: false, text: `Order …${short(row.id)} turned down by ${row.offers_refused} pilots`, order: row.id });
      }
    }
    for (const pilot of pilots.values()) {
      if (pilot.status === "busy" && pilot.stale) {
        list.push({ bad: true, text: `Pilot …${short(pilot.id)} carrying an order has gone quiet`, pilot });
      }
    }
    const element = $("alerts");
    element.replaceChildren(
      ...list.map((alert) => {
        const li = document.createElement("li");
        li.dataset.testid = "alert";
        li.className = alert.bad ? "bad" : "";
        li.textContent = alert.text;
        li.addEventListener("click", () => {
          if (alert.order) showDetail(alert.order);
          else map.setView([alert.pilot.lat, alert.pilot.lng], Math.max(map.getZoom(), 15));
        });
        return li;
      }),
    );
  }

  // ---- one order --------------------------------------------------------------------------

  async function showDetail(id) {
    openOrder = id;
    for (const [rowId, tr] of rows) tr.classList.toggle("open", rowId === id);
    const panel = $("detail");
    panel.hidden = false;
    let order;
    let events;
    let trace;
    try {
      [order, events, trace] = await Promise.all([
        api("GET", `/orders/${id}`),
        api("GET", `/orders/${id}/events`),
        api("GET", `/orders/${id}/trace`),
      ]);
    } catch (err) {
      panel.replaceChildren(text("p", `${err.code}: ${err.message}`, "error"));
      return;
    }
    if (openOrder !== id) return;
    const money = (paise) => `₹${(paise / 100).toFixed(2)}`;
    const facts = document.createElement("dl");
    const fact = (term, value) => facts.append(text("dt", term), text("dd", value ?? "–"));
    fact("Status", order.status.replace(/_/g, " "));
    fact("Vehicle", order.vehicle_type.replace("_", " "));
    fact("Pickup", order.pickup.address);
    fact("Drop", order.drop.address);
    fact("Fare", `${money(order.fare.total_paise)} · ${order.payment_method}`);
    fact("Pilot", order.pilot ? `${order.pilot.name} · ${order.pilot.phone} · ${order.pilot.vehicle_plate ?? ""}` : short(order.pilot_id));
    fact("Customer", order.customer ? `${order.customer.name} · ${order.customer.phone}` : short(order.customer_id));
    fact("Placed", new Date(order.created_at).toLocaleString());
    fact("Driven", trace.points.length ? `${(trace.distance_m / 1000).toFixed(2)} km` : "–");

    const actions = document.createElement("div");
    actions.className = "actions";
    const nearest = document.createElement("ul");
    nearest.className = "nearest";
    if (order.status === "searching_driver" || order.status === "assigned") {
      loadNearest(order, nearest);
    }
    if (order.status === "assigned") {
      actions.append(button("Back to searching", "quiet", () => step(`/dispatch/orders/${id}/reassign`, {})));
    }
    if (!FINAL.has(order.status)) {
      const stop = ["picked_up", "in_transit"].includes(order.status) ? "Send back" : "Cancel order";
      const why = document.createElement("input");
      why.placeholder = "why (kept with the order)";
      why.maxLength = 200;
      why.hidden = true;
      why.dataset.testid = "cancel-reason";
      // The first click asks why; the second confirms.
      const cancel = button(stop, "danger", () => {
        if (cancel.dataset.armed) step(`/orders/${id}/cancel`, why.value.trim() ? { reason: why.value.trim() } : {});
        else {
          cancel.dataset.armed = "1";
          cancel.textContent = `${stop}: confirm`;
          why.hidden = false;
          why.focus();
        }
      });
      cancel.dataset.testid = "cancel-button";
      actions.append(why, cancel);
    }
    if (order.delivery_otp_failures >= 5) {
      actions.append(button("Unlock delivery", "quiet", () => step(`/dispatch/orders/${id}/unlock-delivery`, {})));
    }
    const close = button("Close", "quiet", () => {
      openOrder = null;
      panel.hidden = true;
      detailLayer.clearLayers();
      queueRender();
    });
    actions.append(close);

    const timeline = document.createElement("ol");
    for (const event of events) {
      const when = new Date(event.created_at).toLocaleTimeString();
      timeline.append(text("li", `${when} · ${event.type.replace(/_/g, " ")} · ${event.actor_role ?? "system"}`));
    }
    panel.replaceChildren(text("h3", `Order …${short(id)}`), facts, actions, nearest, text("h2", "Timeline"), timeline);
    panel.dataset.orderId = id;
    panel.dataset.status = order.status;

    detailLayer.clearLayers();
    const pickup = [order.pickup.lat, order.pickup.lng];
    const drop = [order.drop.lat, order.drop.lng];
    L.circleMarker(pickup, { radius: 8, color: "#2fb35e", weight: 3, fill: false }).addTo(detailLayer);
    L.circleMarker(drop, { radius: 8, color: "#c23030", weight: 3, fill: false }).addTo(detailLayer);
    L.polyline([pickup, drop], { color: "#667085", weight: 1, dashArray: "4 6" }).addTo(detailLayer);
    if (trace.points.length > 1) {
      L.polyline(trace.points.map((point) => [point.lat, point.lng]), { color: "#2b5fd9", weight: 3 }).addTo(detailLayer);
    }
  }

  async function loadNearest(order, list) {
    const query = new URLSearchParams({
      lat: order.pickup.lat,
      lng: order.pickup.lng,
      vehicle_type: order.vehicle_type,
      k: 5,
      radius_m: 10000,
    });
    try {
      const found = await api("GET", `/dispatch/pilots/nearest?${query}`);
      const verb = order.status === "assigned" ? "Give to" : "Assign";
      const path = order.status === "assigned" ? "reassign" : "assign";
      list.replaceChildren(
        ...found.items.map((candidate) => {
          const li = document.createElement("li");
          const what = `…${short(candidate.pilot.id)} · ${(candidate.distance_m / 1000).toFixed(1)} km · ${duration(candidate.eta_s)}`;
          const assign = button(verb, "", () =>
            step(`/dispatch/orders/${order.id}/${path}`, { pilot_id: candidate.pilot.id }),
          );
          assign.dataset.testid = "assign-pilot";
          assign.dataset.pilotId = candidate.pilot.id;
          li.append(text("span", what), assign);
          return li;
        }),
      );
      if (found.items.length === 0) list.replaceChildren(text("li", "No available pilot within 10 km."));
    } catch (err) {
      list.replaceChildren(text("li", `${err.code}: ${err.message}`, "error"));
    }
  }

  async function step(path, body) {
    try {
      await api("POST", path, body);
      toast("Done.");
    } catch (err) {
      toast(`${err.code}: ${err.message}`, true);
    }
    if (openOrder) showDetail(openOrder);
  }

  // ---- small helpers ----------------------------------------------------------------------

  function text(tag, content, className) {
    const element = document.createElement(tag);
    element.textContent = content;
    if (className) element.className = className;
    return element;
  }

  function button(label, className, onClick) {
    const element = document.createElement("button");
    element.type = "button";
    element.textContent = label;
    if (className) element.className = className;
    element.addEventListener("click", onClick);
    return element;
  }

  let toastTimer = null;
  function toast(message, bad = false) {
    const element = $("toast");
    element.textContent = message;
    element.className = bad ? "toast bad" : "toast";
    element.dataset.testid = bad ? "error" : "notice";
    element.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      element.hidden = true;
    }, 6_000);
  }

  // ---- start ------------------------------------------------------------------------------

  function start() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("who").textContent = `${session.user.name} (${session.user.role})`;
    if (!map) {
      map = L.map("map", { preferCanvas: true, zoomControl: true }).setView(config.center, config.zoom);
      if (config.tile_url) {
        L.tileLayer(config.tile_url, { attribution: config.tile_attribution, maxZoom: 19 }).addTo(map);
      }
      supplyLayer = L.layerGroup().addTo(map);
      orderMarkers = L.layerGroup().addTo(map);
      detailLayer = L.layerGroup().addTo(map);
      pilotLayer = new PilotLayer().addTo(map);
      map.on("moveend", sendViewport);
    }
    scheduleRefresh();
    connect();
    stats();
  }

  async function boot() {
    config = await (await fetch("/console/config.json")).json();
    $("login-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("filter-status").addEventListener("change", queueRender);
    $("filter-vehicle").addEventListener("change", () => {
      queueRender();
      pilotLayer?.redraw();
      sendViewport();
    });
    $("show-supply").addEventListener("change", sendViewport);
    // Waiting times and alerts move with the clock; the median with the hour.
    setInterval(() => session && queueRender(), 1_000);
    setInterval(stats, 30_000);
    session = restore();
    if (session) start();
    else $("login").hidden = false;
  }

  document.addEventListener("DOMContentLoaded", boot);
})();
