//! A small Socket.io v5 (EIO4) client over WebSocket, enough to drive the gateway from Rust
//! tests: connect to a namespace with an auth payload, emit with acks, receive events,
//! answer pings. The official JavaScript client is exercised in `tests/js/`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Acks = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One socket connected to one namespace.
pub struct SioClient {
    namespace: String,
    out: mpsc::UnboundedSender<Message>,
    events: mpsc::UnboundedReceiver<(String, Value)>,
    acks: Acks,
    next_ack: u64,
    /// Events received while waiting for another one.
    backlog: Vec<(String, Value)>,
    closed: Arc<Mutex<bool>>,
}

/// Dropping the client closes its connection, as an app that is gone.
impl Drop for SioClient {
    fn drop(&mut self) {
        let _ = self.out.send(Message::Close(None));
    }
}

/// How a connection attempt ended.
#[derive(Debug)]
pub enum Refused {
    /// `connect_error`: its message.
    ConnectError(String),
    /// The transport failed or closed first.
    Transport(String),
}

impl SioClient {
    /// Connects to `namespace` with `auth` as the CONNECT payload (and `query` appended to
    /// the handshake URL).
    pub async fn connect(addr: SocketAddr, namespace: &str, auth: Option<Value>, query: &str) -> Result<Self, Refused> {
        Self::connect_with_headers(addr, namespace, auth, query, &[]).await
    }

    /// [`Self::connect`], with `headers` on the handshake request (what a proxy adds).
    pub async fn connect_with_headers(
        addr: SocketAddr,
        namespace: &str,
        auth: Option<Value>,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Refused> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket{query}");
        let mut request = url.into_client_request().map_err(|err| Refused::Transport(err.to_string()))?;
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = name.parse().unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        let (ws, _) =
            tokio_tungstenite::connect_async(request).await.map_err(|err| Refused::Transport(err.to_string()))?;
        let (mut sink, mut stream) = ws.split();
        let open = next_text(&mut stream).await.ok_or_else(|| Refused::Transport("no open packet".into()))?;
        assert!(open.starts_with('0'), "engine.io open packet, got {open}");
        let connect = match &auth {
            Some(auth) => format!("40{namespace},{auth}"),
            None => format!("40{namespace},"),
        };
        sink.send(Message::text(connect)).await.map_err(|err| Refused::Transport(err.to_string()))?;
        loop {
            let packet = next_text(&mut stream).await.ok_or_else(|| Refused::Transport("closed".into()))?;
            if packet == "2" {
                sink.send(Message::text("3")).await.map_err(|err| Refused::Transport(err.to_string()))?;
                continue;
            }
            let parsed = Packet::parse(&packet).ok_or_else(|| Refused::Transport(format!("bad packet {packet}")))?;
            match parsed.kind {
                '0' => break,
                '4' => {
                    let message = parsed.data["message"].as_str().unwrap_or_default().to_owned();
                    return Err(Refused::ConnectError(message));
                }
                _ => return Err(Refused::Transport(format!("unexpected packet {packet}"))),
            }
        }
        Ok(Self::run(namespace, sink, stream))
    }

    fn run(
        namespace: &str,
        mut sink: impl futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin + Send + 'static,
        mut stream: impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin
        + Send
        + 'static,
    ) -> Self {
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let (events_tx, events) = mpsc::unbounded_channel();
        let acks: Acks = Arc::default();
        let closed = Arc::new(Mutex::new(false));
        tokio::spawn(async move {
            // What is queued at once goes out in one write, as an app's socket does with
            // several emits in a row: the server reads them in one go.
            'writing: while let Some(message) = outgoing.recv().await {
                let mut next = Some(message);
                while let Some(message) = next.take() {
                    let closing = message.is_close();
                    if sink.feed(message).await.is_err() || closing {
                        break 'writing;
                    }
                    next = outgoing.try_recv().ok();
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let (pong, reader_acks, reader_closed) = (out.clone(), acks.clone(), closed.clone());
        tokio::spawn(async move {
            while let Some(text) = next_text(&mut stream).await {
                if text == "2" {
                    let _ = pong.send(Message::text("3"));
                    continue;
                }
                let Some(packet) = Packet::parse(&text) else { continue };
                match packet.kind {
                    '2' => {
                        let mut items = packet.data.as_array().cloned().unwrap_or_default().into_iter();
                        let name = items.next().and_then(|name| name.as_str().map(str::to_owned)).unwrap_or_default();
                        let _ = events_tx.send((name, items.next().unwrap_or(Value::Null)));
                    }
                    '3' => {
                        let waiter = packet.ack.and_then(|id| reader_acks.lock().unwrap().remove(&id));
                        if let Some(waiter) = waiter {
                            let _ = waiter
                                .send(packet.data.as_array().and_then(|a| a.first().cloned()).unwrap_or_default());
                        }
                    }
                    '1' => break,
                    _ => {}
                }
            }
            *reader_closed.lock().unwrap() = true;
        });
        Self { namespace: namespace.to_owned(), out, events, acks, next_ack: 0, backlog: Vec::new(), closed }
    }

    /// Emits `event` with `data` and waits (at most 5 s) for the ack.
    pub async fn call(&mut self, event: &str, data: Value) -> Value {
        self.call_raw(&serde_json::json!([event, data]).to_string())
            .await
            .unwrap_or_else(|| panic!("no ack for {event}"))
    }

    /// Emits a raw argument list (`["event", ...]`) and waits for its ack, if any comes.
    pub async fn call_raw(&mut self, arguments: &str) -> Option<Value> {
        ack_within_5s(self.emit_with_ack(arguments)).await
    }

    /// Emits every `(event, data)` at once (one write), then waits (at most 5 s) for their
    /// acks, in the order of the calls.
    pub async fn call_all(&mut self, calls: &[(&str, Value)]) -> Vec<Option<Value>> {
        let waiting: Vec<_> = calls
            .iter()
            .map(|(event, data)| self.emit_with_ack(&serde_json::json!([event, data]).to_string()))
            .collect();
        let mut acks = Vec::new();
        for rx in waiting {
            acks.push(ack_within_5s(rx).await);
        }
        acks
    }

    /// Emits a raw argument list with a fresh ack id; its ack arrives on the receiver.
    fn emit_with_ack(&mut self, arguments: &str) -> oneshot::Receiver<Value> {
        self.next_ack += 1;
        let id = self.next_ack;
        let (tx, rx) = oneshot::channel();
        self.acks.lock().unwrap().insert(id, tx);
        let _ = self.out.send(Message::text(format!("42{},{id}{arguments}", self.namespace)));
        rx
    }

    /// Sends raw text as it is (a malformed packet, say).
    pub fn send_raw(&self, text: &str) {
        let _ = self.out.send(Message::text(text.to_owned()));
    }

    /// The next `name` event within `within`; other events are kept for later calls.
    pub async fn event(&mut self, name: &str, within: Duration) -> Option<Value> {
        if let Some(at) = self.backlog.iter().position(|(event, _)| event == name) {
            return Some(self.backlog.remove(at).1);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (event, data) = tokio::time::timeout_at(deadline, self.events.recv()).await.ok()??;
            if event == name {
                return Some(data);
            }
            self.backlog.push((event, data));
        }
    }

    /// Every `name` event that arrives within `within`.
    pub async fn events(&mut self, name: &str, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut found = Vec::new();
        while let Some(data) = self.event(name, deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            found.push(data);
        }
        found
    }

    /// Whether the server closed the connection.
    pub fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap()
    }
}

async fn next_text(
    stream: &mut (impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Option<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await.ok()?? {
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// A Socket.io packet inside an engine.io message (`4…`).
struct Packet {
    kind: char,
    ack: Option<u64>,
    data: Value,
}

impl Packet {
    fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix('4')?;
        let kind = rest.chars().next()?;
        let mut rest = &rest[1..];
        if rest.starts_with('/') {
            let comma = rest.find(',').unwrap_or(rest.len());
            rest = rest.get(comma + 1..).unwrap_or("");
        }
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let ack = rest[..digits].parse().ok();
        let data = serde_json::from_str(&rest[digits..]).unwrap_or(Value::Null);
        Some(Self { kind, ack, data })
    }
}

/// The ack `rx` receives within 5 s, if any.
async fn ack_within_5s(rx: oneshot::Receiver<Value>) -> Option<Value> {
    tokio::time::timeout(Duration::from_secs(5), rx).await.ok().and_then(Result::ok)
}
