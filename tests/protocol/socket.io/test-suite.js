const isNodejs = typeof window === "undefined";

if (isNodejs) {
  // make the tests runnable in both the browser and Node.js
  await import("./node-imports.js");
}

const { expect } = chai;

// Adapted to dispatchd: see ../README.md for every change and why. In short, dispatchd has no
// "/" namespace for Socket.IO v5 clients and no "/custom": /customer stands for the main
// namespace and /pilot for the custom one, each with an access token in the CONNECT auth
// payload; there is no "auth" echo and no "message-back" echo: events are answered with
// acks ({ok: false, error: {code}} here). Changed lines are marked "dispatchd:".

// dispatchd: the runner starts the server on a random port and passes its URL.
const URL = globalThis.process?.env?.DISPATCHD_URL ?? "http://localhost:3000";
const WS_URL = URL.replace("http", "ws");

const PING_INTERVAL = 300;
const PING_TIMEOUT = 200;

function sleep(delay) {
  return new Promise((resolve) => setTimeout(resolve, delay));
}

function waitFor(socket, eventType) {
  return new Promise((resolve) => {
    socket.addEventListener(
      eventType,
      (event) => {
        resolve(event);
      },
      { once: true }
    );
  });
}

function waitForPackets(socket, count) {
  const packets = [];

  return new Promise((resolve) => {
    const handler = (event) => {
      if (event.data === "2") {
        // ignore PING packets
        return;
      }
      packets.push(event.data);
      if (packets.length === count) {
        socket.removeEventListener("message", handler);
        resolve(packets);
      }
    };
    socket.addEventListener("message", handler);
  });
}

async function initLongPollingSession() {
  const response = await fetch(`${URL}/socket.io/?EIO=4&transport=polling`);
  const content = await response.text();
  return JSON.parse(content.substring(1)).sid;
}

// dispatchd: connects to /customer (the main namespace's stand-in) with a customer's token;
// there is no "auth" packet after the Socket.IO handshake.
async function initSocketIOConnection(token) {
  token = token ?? (await accessToken("customer"));

  const socket = new WebSocket(
    `${WS_URL}/socket.io/?EIO=4&transport=websocket`
  );
  socket.binaryType = "arraybuffer";

  await waitFor(socket, "message"); // Engine.IO handshake

  socket.send(connectPacket("/customer", token));

  const { data } = await waitFor(socket, "message"); // Socket.IO handshake

  expectConnected(data, "/customer");

  return socket;
}

// dispatchd: helpers for the adapted tests.

// dispatchd checks heartbeats on a tick of an eighth of the shorter of pingInterval and
// pingTimeout (vendor/engineioxide/PATCHED.md, "One heartbeat sweeper"): a ping may go out
// one tick late, and its timeout fire one tick after that.
const HEARTBEAT_TICK = Math.min(PING_INTERVAL, PING_TIMEOUT) / 8;
// Timer and scheduling slack, for a loaded machine.
const SLACK = 50;

// An order that does not exist: order:watch answers ORDER_NOT_FOUND.
const NO_SUCH_ORDER = crypto.randomUUID();

let phones = 0;

// Registers a new user and returns its access token. Every test has its own users: the event
// budgets and the socket cap are per user.
async function accessToken(role) {
  phones += 1;
  const phone = `+91${String(Date.now() % 1e6).padStart(6, "0")}${String(phones).padStart(4, "0")}`;
  const body = { name: "Proto Test", phone, password: "correct horse battery", role };
  if (role === "pilot") {
    body.vehicle_type = "bike";
  }
  const response = await fetch(`${URL}/api/v1/auth/register`, {
    method: "post",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  expect(response.status).to.eql(201);
  const { data } = JSON.parse(await response.text());
  return data.access_token;
}

// A Socket.IO CONNECT packet to `nsp` with `token` in the auth payload.
function connectPacket(nsp, token) {
  return `40${nsp},${JSON.stringify({ token })}`;
}

// Expects a Socket.IO CONNECT answer on `nsp`.
function expectConnected(packet, nsp) {
  expect(packet).to.startsWith(`40${nsp},`);
  const handshake = JSON.parse(packet.substring(`40${nsp},`.length));
  expect(handshake).to.have.all.keys("sid");
  expect(handshake.sid).to.be.a("string");
}

// Expects a Socket.IO CONNECT_ERROR on `nsp` (`""` for "/") whose message is "CODE: ...".
function expectConnectError(packet, nsp, code) {
  const prefix = nsp ? `44${nsp},` : "44";
  expect(packet).to.startsWith(prefix);
  const error = JSON.parse(packet.substring(prefix.length));
  expect(error).to.have.all.keys("message");
  expect(error.message).to.startsWith(`${code}: `);
}

// Expects a Socket.IO ACK on /customer, of the event with ack id `id`: an error `code`.
function expectAckError(packet, id, code) {
  const prefix = `43/customer,${id}[`;
  expect(packet).to.be.a("string");
  expect(packet).to.startsWith(prefix);
  const args = JSON.parse(packet.substring(prefix.length - 1));
  expect(args).to.have.lengthOf(1);
  expect(args[0]).to.have.all.keys("ok", "error");
  expect(args[0].ok).to.eql(false);
  expect(args[0].error.code).to.eql(code);
  expect(args[0].error.message).to.be.a("string");
}

// Answers the server's pings, as every client does, so that a test waiting for the server to
// close the connection can only see the close it is about, not a ping timeout. Such a socket
// would stay open for ever: it is closed after its test.
const answering = new Set();

function answerPings(socket) {
  answering.add(socket);
  socket.addEventListener("message", (event) => {
    if (event.data === "2") {
      socket.send("3");
    }
  });
}

afterEach(() => {
  for (const socket of answering) {
    socket.close();
  }
  answering.clear();
});

describe("Engine.IO protocol", () => {
  describe("handshake", () => {
    describe("HTTP long-polling", () => {
      it("should successfully open a session", async () => {
        const response = await fetch(
          `${URL}/socket.io/?EIO=4&transport=polling`
        );

        expect(response.status).to.eql(200);

        const content = await response.text();

        expect(content).to.startsWith("0");

        const value = JSON.parse(content.substring(1));

        expect(value).to.have.all.keys(
          "sid",
          "upgrades",
          "pingInterval",
          "pingTimeout",
          "maxPayload"
        );
        expect(value.sid).to.be.a("string");
        expect(value.upgrades).to.eql(["websocket"]);
        expect(value.pingInterval).to.eql(PING_INTERVAL);
        expect(value.pingTimeout).to.eql(PING_TIMEOUT);
        expect(value.maxPayload).to.eql(1000000);
      });

      it("should fail with an invalid 'EIO' query parameter", async () => {
        const response = await fetch(`${URL}/socket.io/?transport=polling`);

        expect(response.status).to.eql(400);

        const response2 = await fetch(
          `${URL}/socket.io/?EIO=abc&transport=polling`
        );

        expect(response2.status).to.eql(400);
      });

      it("should fail with an invalid 'transport' query parameter", async () => {
        const response = await fetch(`${URL}/socket.io/?EIO=4`);

        expect(response.status).to.eql(400);

        const response2 = await fetch(`${URL}/socket.io/?EIO=4&transport=abc`);

        expect(response2.status).to.eql(400);
      });

      it("should fail with an invalid request method", async () => {
        const response = await fetch(
          `${URL}/socket.io/?EIO=4&transport=polling`,
          {
            method: "post",
          }
        );

        expect(response.status).to.eql(400);

        const response2 = await fetch(
          `${URL}/socket.io/?EIO=4&transport=polling`,
          {
            method: "put",
          }
        );

        expect(response2.status).to.eql(400);
      });
    });

    describe("WebSocket", () => {
      it("should successfully open a session", async () => {
        const socket = new WebSocket(
          `${WS_URL}/socket.io/?EIO=4&transport=websocket`
        );

        const { data } = await waitFor(socket, "message");

        expect(data).to.startsWith("0");

        const value = JSON.parse(data.substring(1));

        expect(value).to.have.all.keys(
          "sid",
          "upgrades",
          "pingInterval",
          "pingTimeout",
          "maxPayload"
        );
        expect(value.sid).to.be.a("string");
        expect(value.upgrades).to.eql([]);
        expect(value.pingInterval).to.eql(PING_INTERVAL);
        expect(value.pingTimeout).to.eql(PING_TIMEOUT);
        expect(value.maxPayload).to.eql(1000000);

        socket.close();
      });

      it("should fail with an invalid 'EIO' query parameter", async () => {
        const socket = new WebSocket(
          `${WS_URL}/socket.io/?transport=websocket`
        );

        if (isNodejs) {
          socket.on("error", () => {});
        }

        waitFor(socket, "close");

        const socket2 = new WebSocket(
          `${WS_URL}/socket.io/?EIO=abc&transport=websocket`
        );

        if (isNodejs) {
          socket2.on("error", () => {});
        }

        waitFor(socket2, "close");
      });

      it("should fail with an invalid 'transport' query parameter", async () => {
        const socket = new WebSocket(`${WS_URL}/socket.io/?EIO=4`);

        if (isNodejs) {
          socket.on("error", () => {});
        }

        waitFor(socket, "close");

        const socket2 = new WebSocket(
          `${WS_URL}/socket.io/?EIO=4&transport=abc`
        );

        if (isNodejs) {
          socket2.on("error", () => {});
        }

        waitFor(socket2, "close");
      });
    });
  });

  describe("heartbeat", function () {
    this.timeout(5000);

    describe("HTTP long-polling", () => {
      it("should send ping/pong packets", async () => {
        const sid = await initLongPollingSession();

        for (let i = 0; i < 3; i++) {
          const pollResponse = await fetch(
            `${URL}/socket.io/?EIO=4&transport=polling&sid=${sid}`
          );

          expect(pollResponse.status).to.eql(200);

          const pollContent = await pollResponse.text();

          expect(pollContent).to.eql("2");

          const pushResponse = await fetch(
            `${URL}/socket.io/?EIO=4&transport=polling&sid=${sid}`,
            {
              method: "post",
              body: "3",
            }
          );

          expect(pushResponse.status).to.eql(200);
        }
      });

      it("should close the session upon ping timeout", async () => {
        const sid = await initLongPollingSession();

        // dispatchd: the ping and then its timeout may each be one heartbeat tick late.
        await sleep(PING_INTERVAL + PING_TIMEOUT + 2 * HEARTBEAT_TICK + SLACK);

        const pollResponse = await fetch(
          `${URL}/socket.io/?EIO=4&transport=polling&sid=${sid}`
        );

        expect(pollResponse.status).to.eql(400);
      });
    });

    describe("WebSocket", () => {
      it("should send ping/pong packets", async () => {
        const socket = new WebSocket(
          `${WS_URL}/socket.io/?EIO=4&transport=websocket`
        );

        await waitFor(socket, "message"); // handshake

        for (let i = 0; i < 3; i++) {
          const { data } = await waitFor(socket, "message");

          expect(data).to.eql("2");

          socket.send("3");
        }

        socket.close();
      });

      it("should close the session upon ping timeout", async () => {
        const socket = new WebSocket(
          `${WS_URL}/socket.io/?EIO=4&transport=websocket`
        );

        await waitFor(socket, "close"); // handshake
      });
    });
  });

  describe("close", () => {
    describe("HTTP long-polling", () => {
      it("should forcefully close the session", async () => {
        const sid = await initLongPollingSession();

        const [pollResponse] = await Promise.all([
          fetch(`${URL}/socket.io/?EIO=4&transport=polling&sid=${sid}`),
          // dispatchd: the close 5 ms after the poll, as upstream does for the duplicate poll
          // (engine.io-protocol 5dc01f7): on a multi-threaded server two requests sent at
          // once on two connections are not handled in the order they were sent.
          sleep(5).then(() =>
            fetch(`${URL}/socket.io/?EIO=4&transport=polling&sid=${sid}`, {
              method: "post",
              body: "1",
            })
          ),
        ]);

        expect(pollResponse.status).to.eql(200);

        const pullContent = await pollResponse.text();

        expect(pullContent).to.eql("6");

        const pollResponse2 = await fetch(
          `${URL}/socket.io/?EIO=4&transport=polling&sid=${sid}`
        );

        expect(pollResponse2.status).to.eql(400);
      });
    });

    describe("WebSocket", () => {
      it("should forcefully close the session", async () => {
        const socket = new WebSocket(
          `${WS_URL}/socket.io/?EIO=4&transport=websocket`
        );

        await waitFor(socket, "message"); // handshake

        socket.send("1");

        await waitFor(socket, "close");
      });
    });
  });

  describe("upgrade", () => {
    it("should successfully upgrade from HTTP long-polling to WebSocket", async () => {
      const sid = await initLongPollingSession();

      const socket = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket&sid=${sid}`
      );

      await waitFor(socket, "open");

      // send probe
      socket.send("2probe");

      const probeResponse = await waitFor(socket, "message");

      expect(probeResponse.data).to.eql("3probe");

      // complete upgrade
      socket.send("5");
    });

    it("should ignore HTTP requests with same sid after upgrade", async () => {
      const sid = await initLongPollingSession();

      const socket = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket&sid=${sid}`
      );

      await waitFor(socket, "open");
      socket.send("2probe");
      socket.send("5");
      // dispatchd: the upgrade's packets are read on the WebSocket's own connection; the poll
      // below, on another, may be handled first on a multi-threaded server (then it gets the
      // NOOP a poll gets during an upgrade). Wait for the probe's answer and a little more.
      await waitFor(socket, "message");
      await sleep(20);

      const pollResponse = await fetch(
        `${URL}/socket.io/?EIO=4&transport=polling&sid=${sid}`
      );

      expect(pollResponse.status).to.eql(400);
    });

    it("should ignore WebSocket connection with same sid after upgrade", async () => {
      const sid = await initLongPollingSession();

      const socket = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket&sid=${sid}`
      );

      await waitFor(socket, "open");
      socket.send("2probe");
      socket.send("5");

      const socket2 = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket&sid=${sid}`
      );

      await waitFor(socket2, "close");
    });
  });
});

describe("Socket.IO protocol", () => {
  describe("connect", () => {
    it("should allow connection to the main namespace", async () => {
      // dispatchd: /customer with a customer's token stands for "/"; no "auth" packet follows.
      const token = await accessToken("customer");

      const socket = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket`
      );

      await waitFor(socket, "message"); // Engine.IO handshake

      socket.send(connectPacket("/customer", token));

      const { data } = await waitFor(socket, "message");

      expect(data).to.startsWith("40/customer,");

      const handshake = JSON.parse(data.substring(12));

      expect(handshake).to.have.all.keys("sid");
      expect(handshake.sid).to.be.a("string");
    });

    it("should allow connection to the main namespace with a payload", async () => {
      // dispatchd: the payload is the credential, checked, not echoed: a token that is not
      // one is refused INVALID_TOKEN, no payload MISSING_TOKEN; the connection stays.
      const socket = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket`
      );

      await waitFor(socket, "message"); // Engine.IO handshake

      socket.send('40/customer,{"token":"123"}');

      const { data } = await waitFor(socket, "message");

      expectConnectError(data, "/customer", "INVALID_TOKEN");

      socket.send("40/customer,");

      const { data: data2 } = await waitFor(socket, "message");

      expectConnectError(data2, "/customer", "MISSING_TOKEN");
    });

    it("should refuse the main namespace to a v5 client (dispatchd)", async () => {
      // dispatchd: "/" is there for Socket.IO v2 clients (EIO3) only.
      const socket = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket`
      );

      await waitFor(socket, "message"); // Engine.IO handshake

      socket.send("40");

      const { data } = await waitFor(socket, "message");

      expectConnectError(data, "", "NO_SUCH_NAMESPACE");

      socket.send('40{"token":"123"}');

      const { data: data2 } = await waitFor(socket, "message");

      expectConnectError(data2, "", "NO_SUCH_NAMESPACE");
    });

    it("should allow connection to a custom namespace", async () => {
      // dispatchd: /pilot with a pilot's token stands for "/custom"; no "auth" packet follows.
      const token = await accessToken("pilot");

      const socket = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket`
      );

      await waitFor(socket, "message"); // Engine.IO handshake

      socket.send(connectPacket("/pilot", token));

      const { data } = await waitFor(socket, "message");

      expect(data).to.startsWith("40/pilot,");

      const handshake = JSON.parse(data.substring(9));

      expect(handshake).to.have.all.keys("sid");
      expect(handshake.sid).to.be.a("string");
    });

    it("should allow connection to a custom namespace with a payload", async () => {
      // dispatchd: the payload is checked, not echoed: a token that is not one is refused
      // INVALID_TOKEN, a customer's token on /pilot FORBIDDEN_ROLE; the connection stays.
      const customer = await accessToken("customer");

      const socket = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket`
      );

      await waitFor(socket, "message"); // Engine.IO handshake

      socket.send('40/pilot,{"token":"abc"}');

      const { data } = await waitFor(socket, "message");

      expectConnectError(data, "/pilot", "INVALID_TOKEN");

      socket.send(connectPacket("/pilot", customer));

      const { data: data2 } = await waitFor(socket, "message");

      expectConnectError(data2, "/pilot", "FORBIDDEN_ROLE");
    });

    it("should disallow connection to an unknown namespace", async () => {
      const socket = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket`
      );

      await waitFor(socket, "message"); // Engine.IO handshake

      socket.send("40/random");

      const { data } = await waitFor(socket, "message");

      expect(data).to.eql('44/random,{"message":"Invalid namespace"}');
    });

    it("should disallow connection with an invalid handshake", async () => {
      const socket = new WebSocket(
        `${WS_URL}/socket.io/?EIO=4&transport=websocket`
      );

      await waitFor(socket, "message"); // Engine.IO handshake

      socket.send("4abc");

      await waitFor(socket, "close");
    });

    
    it("should close the connection if no handshake is received", async () => {
      const socket = new WebSocket(
          `${WS_URL}/socket.io/?EIO=4&transport=websocket`
      );

      answerPings(socket); // dispatchd: so that the close is the connect timeout's

      await waitFor(socket, "close");
    });
  });

  describe("disconnect", () => {
    it("should disconnect from the main namespace", async () => {
      const socket = await initSocketIOConnection();

      socket.send("41/customer,"); // dispatchd: /customer stands for "/"

      const { data } = await waitFor(socket, "message");

      expect(data).to.eql("2");
    });

    it("should connect then disconnect from a custom namespace", async () => {
      // dispatchd: /customer and /pilot stand for "/" and "/custom"; the event to the main
      // namespace is one with an ack (ORDER_NOT_FOUND) instead of the echo.
      const [customer, pilot] = await Promise.all([accessToken("customer"), accessToken("pilot")]);

      const socket = await initSocketIOConnection(customer);

      answerPings(socket); // dispatchd: the steps below need not race the ping timeout

      await waitFor(socket, "message"); // ping

      socket.send(connectPacket("/pilot", pilot));

      const { data: handshake } = await waitFor(socket, "message"); // Socket.IO handshake

      expectConnected(handshake, "/pilot");

      socket.send("41/pilot,");
      socket.send(`42/customer,1["order:watch",{"order_id":"${NO_SUCH_ORDER}"}]`);

      const { data } = await waitFor(socket, "message");

      expectAckError(data, 1, "ORDER_NOT_FOUND");
    });
  });

  describe("message", () => {
    it("should send a plain-text packet", async () => {
      // dispatchd: no echo, and an event without an ack id gets no answer; an event with one
      // follows it, and its ack is the only answer.
      const socket = await initSocketIOConnection();

      socket.send('42/customer,["message",1,"2",{"3":[true]}]');
      socket.send(`42/customer,1["order:watch",{"order_id":"${NO_SUCH_ORDER}"}]`);

      const { data } = await waitFor(socket, "message");

      expectAckError(data, 1, "ORDER_NOT_FOUND");
    });

    it("should send a packet with binary attachments", async () => {
      // dispatchd: no echo, and an event without an ack id gets no answer; an event with one
      // follows the attachments, and its ack is the only answer.
      const socket = await initSocketIOConnection();

      socket.send(
        '452-/customer,["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
      );
      socket.send(Uint8Array.from([1, 2, 3]));
      socket.send(Uint8Array.from([4, 5, 6]));
      socket.send(`42/customer,1["order:watch",{"order_id":"${NO_SUCH_ORDER}"}]`);

      const packets = await waitForPackets(socket, 1);

      expectAckError(packets[0], 1, "ORDER_NOT_FOUND");

      socket.close();
    });

    it("should send a plain-text packet with an ack", async () => {
      const socket = await initSocketIOConnection();

      // dispatchd: no such event: the ack is UNKNOWN_EVENT.
      socket.send('42/customer,456["message-with-ack",1,"2",{"3":[false]}]');

      const { data } = await waitFor(socket, "message");

      expectAckError(data, 456, "UNKNOWN_EVENT");
    });

    it("should send a packet with binary attachments and an ack", async () => {
      const socket = await initSocketIOConnection();

      // dispatchd: events are JSON only: an event dispatchd knows, with attachments, is
      // answered BAD_PAYLOAD (a plain-text ack: dispatchd never sends binary).
      socket.send(
        '452-/customer,789["order:watch",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]'
      );
      socket.send(Uint8Array.from([1, 2, 3]));
      socket.send(Uint8Array.from([4, 5, 6]));

      const packets = await waitForPackets(socket, 1);

      expectAckError(packets[0], 789, "BAD_PAYLOAD");

      socket.close();
    });

    it("should close the connection upon invalid format (unknown packet type)", async () => {
      const socket = await initSocketIOConnection();

      answerPings(socket); // dispatchd: so that the close is the packet's

      socket.send("4abc");

      await waitFor(socket, "close");
    });

    it("should close the connection upon invalid format (invalid payload format)", async () => {
      const socket = await initSocketIOConnection();

      answerPings(socket); // dispatchd: so that the close is the packet's

      socket.send("42/customer,{}"); // dispatchd: /customer stands for "/"

      await waitFor(socket, "close");
    });

    it("should close the connection upon invalid format (invalid ack id)", async () => {
      const socket = await initSocketIOConnection();

      answerPings(socket); // dispatchd: so that the close is the packet's

      socket.send('42/customer,abc["message-with-ack",1,"2",{"3":[false]}]'); // dispatchd: /customer stands for "/"

      await waitFor(socket, "close");
    });
  });
});
