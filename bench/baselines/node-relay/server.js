// Baseline for dispatchd's realtime benchmarks: the same relay semantics on Node socket.io.
//
//   /pilot     `location {points}` (acked {ok, data: {accepted}}): the last point is relayed
//              as `pilot:location {order_id, lat, lng, ts}` to the room `order:<pilot id>`.
//   /customer  `order:watch {order_id}` (acked): joins `order:<order_id>`.
//
// It does less than dispatchd, in its favour: the token is taken as the user id (no JWT
// check, no revocation lookup), points are not checked, there is no index, no database.
// Usage: PORT=0 node server.js  (prints {"listening": port} on stdout)
const http = require("node:http");
const { Server } = require("socket.io");

const server = http.createServer();
const io = new Server(server, { maxHttpBufferSize: 65536, pingInterval: 25000, pingTimeout: 20000 });

function authenticate(socket, next) {
  const token = socket.handshake.auth?.token ?? socket.handshake.query?.token;
  if (!token) return next(new Error("MISSING_TOKEN: no token"));
  socket.data.user = String(token);
  next();
}

io.of("/pilot").use(authenticate).on("connection", (socket) => {
  socket.on("location", (payload, ack) => {
    const points = Array.isArray(payload?.points) ? payload.points : [];
    const last = points[points.length - 1];
    if (last) {
      io.of("/customer")
        .to(`order:${socket.data.user}`)
        .volatile.emit("pilot:location", { order_id: socket.data.user, lat: last.lat, lng: last.lng, ts: last.ts });
    }
    if (typeof ack === "function") ack({ ok: true, data: { accepted: points.length } });
  });
});

io.of("/customer").use(authenticate).on("connection", (socket) => {
  socket.on("order:watch", (payload, ack) => {
    socket.join(`order:${payload?.order_id}`);
    if (typeof ack === "function") ack({ ok: true, data: { order_id: payload?.order_id } });
  });
});

server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  console.log(JSON.stringify({ listening: server.address().port, pid: process.pid }));
});
process.on("SIGTERM", () => process.exit(0));
