//! A lean Socket.io v5 client for load generation: one WebSocket, one reader task and one
//! writer task per connection; acks resolve oneshots, server events go to a callback. It
//! speaks to dispatchd and to the Node baseline alike (both are plain Socket.io).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Called with (event, payload) for every event the server emits to this socket.
pub type OnEvent = Arc<dyn Fn(&str, Value) + Send + Sync>;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Socket {
    namespace: String,
    out: mpsc::UnboundedSender<Message>,
    waiters: Waiters,
    next_id: std::sync::atomic::AtomicU64,
}

impl Socket {
    /// Connects to `namespace` at `host:port` with `{token}` as auth.
    pub async fn connect(addr: &str, namespace: &str, token: &str, on_event: OnEvent) -> Result<Self, String> {
        Self::connect_from(None, addr, namespace, token, on_event).await
    }

    /// As [`Socket::connect`], from the local address `source` (say 127.0.0.3) when given, so
    /// that many connections do not exhaust one address's ephemeral ports.
    pub async fn connect_from(
        source: Option<std::net::IpAddr>,
        addr: &str,
        namespace: &str,
        token: &str,
        on_event: OnEvent,
    ) -> Result<Self, String> {
        tokio::time::timeout(Duration::from_secs(10), Self::open(source, addr, namespace, token, on_event))
            .await
            .map_err(|_| format!("no CONNECT answer from {namespace} within 10 s"))?
    }

    async fn open(
        source: Option<std::net::IpAddr>,
        addr: &str,
        namespace: &str,
        token: &str,
        on_event: OnEvent,
    ) -> Result<Self, String> {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let stream = tcp(source, addr).await.map_err(|err| format!("connect {addr}: {err}"))?;
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await.map_err(|err| err.to_string())?;
        let (mut sink, mut stream) = ws.split();
        let open = read_text(&mut stream).await.ok_or("no open packet")?;
        if !open.starts_with('0') {
            return Err(format!("unexpected open packet {open}"));
        }
        let auth = serde_json::json!({ "token": token });
        sink.send(Message::text(format!("40{namespace},{auth}"))).await.map_err(|err| err.to_string())?;
        loop {
            let reply = read_text(&mut stream).await.ok_or("closed before CONNECT answer")?;
            match reply.as_str() {
                "2" => sink.send(Message::text("3")).await.map_err(|err| err.to_string())?,
                _ if reply.starts_with("40") => break,
                _ => return Err(format!("refused: {reply}")),
            }
        }
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                let closing = matches!(message, Message::Close(_));
                if sink.send(message).await.is_err() || closing {
                    let _ = sink.close().await;
                    return;
                }
            }
        });
        let waiters: Waiters = Arc::default();
        let (pong, reader_waiters) = (out.clone(), waiters.clone());
        tokio::spawn(async move {
            while let Some(text) = read_text(&mut stream).await {
                dispatch(&text, &pong, &reader_waiters, &on_event);
            }
        });
        Ok(Self { namespace: namespace.to_owned(), out, waiters, next_id: 0.into() })
    }

    /// Closes the connection (the server sees the client leave).
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }

    /// Emits `event` and waits at most 10 s for its ack.
    pub async fn ask(&self, event: &str, data: &Value) -> Result<Value, String> {
        match tokio::time::timeout(Duration::from_secs(10), self.call(event, data)).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(format!("no ack for {event} within 10 s")),
        }
    }

    /// Emits `event` with `data`; resolves with the ack's first argument.
    pub fn call(&self, event: &str, data: &Value) -> oneshot::Receiver<Value> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(id, tx);
        let arguments = serde_json::json!([event, data]);
        let _ = self.out.send(Message::text(format!("42{},{id}{arguments}", self.namespace)));
        rx
    }
}

/// A TCP connection to `addr`, from `source` when given, without Nagle's delay.
async fn tcp(source: Option<std::net::IpAddr>, addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let remote = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let socket = if remote.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if let Some(source) = source.filter(|source| source.is_ipv4() == remote.is_ipv4()) {
        socket.bind(std::net::SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(remote).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Drop for Socket {
    /// The reader task keeps a sender for its pongs, so the connection would outlive the
    /// socket: close it.
    fn drop(&mut self) {
        self.close();
    }
}

fn dispatch(text: &str, pong: &mpsc::UnboundedSender<Message>, waiters: &Waiters, on_event: &OnEvent) {
    if text == "2" {
        let _ = pong.send(Message::text("3"));
        return;
    }
    let Some(body) = text.strip_prefix('4') else { return };
    let kind = body.as_bytes().first().copied();
    let rest = body.get(1..).unwrap_or("");
    let rest = match rest.strip_prefix('/') {
        Some(after) => after.split_once(',').map_or("", |(_, data)| data),
        None => rest,
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let data: Value = serde_json::from_str(&rest[digits..]).unwrap_or(Value::Null);
    match kind {
        Some(b'2') => {
            if let Some([name, payload]) = data.as_array().map(Vec::as_slice) {
                on_event(name.as_str().unwrap_or_default(), payload.clone());
            }
        }
        Some(b'3') => {
            let waiter = rest[..digits].parse().ok().and_then(|id: u64| waiters.lock().unwrap().remove(&id));
            if let Some(waiter) = waiter {
                let _ = waiter.send(data.get(0).cloned().unwrap_or_default());
            }
        }
        _ => {}
    }
}

async fn read_text(
    stream: &mut (impl futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Option<String> {
    loop {
        match stream.next().await? {
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}
