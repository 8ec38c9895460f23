//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, socket::Queued, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (mut parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);
    // dispatchd patch: the session keeps these parts for its whole life; the upgrade is taken
    // from `req`, and a copy of it kept here would keep its channel alive for nothing.
    parts.extensions.remove::<hyper::upgrade::OnUpgrade>();

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    // dispatchd patch: the task lives as long as the connection, so it keeps only what the
    // connection needs. The upgrade and the handshake run in a box of their own, freed once done
    // (inline, their state made every idle connection's task about 4 KiB).
    let setup_engine = engine.clone();
    let setup = Box::pin(async move {
        match hyper::upgrade::on(req).await {
            Ok(conn) => {
                let conn = hyper_util::rt::TokioIo::new(conn);
                connect(&setup_engine, conn, protocol, sid, parts)
                    .await
                    .map(Some)
            }
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                Ok(None)
            }
        }
    });
    tokio::spawn(run(engine, sid, setup));

    Ok(ws_response(&ws_key))
}

/// Sets up a websocket connection and serves it until it closes (dispatchd patch: see
/// [`run`] for the path that keeps an idle connection small).
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (socket, ws) = connect(&engine, conn, protocol, sid, req_data).await?;
    serve(&engine, socket, ws).await;
    Ok(())
}

/// A websocket connection once set up: its session and its stream.
type Connected<D, S> = (Arc<Socket<D>>, WebSocketStream<S>);

/// Runs a websocket connection (dispatchd patch): awaits its boxed setup, then serves it. The
/// future holds little more than the engine, the sid and, while serving, the stream.
async fn run<H: EngineIoHandler, S, F>(
    engine: Arc<EngineIo<H>>,
    sid: Option<Sid>,
    setup: Pin<Box<F>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = Result<Option<Connected<H::Data, S>>, Error>>,
{
    // Bound in the match, the stream would keep room in this future beside the one `serve`
    // keeps for it.
    let serving = match setup.await {
        Ok(Some((socket, ws))) => serve(&engine, socket, ws),
        Ok(None) | Err(Error::MultipleWebsocketRequests) => return,
        Err(_e) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(?sid, "ws closed with error: {_e}");
            if let Some(sid) = sid {
                engine.close_session(sid, DisconnectReason::TransportError);
            }
            return;
        }
    };
    serving.await;
    #[cfg(feature = "tracing")]
    tracing::debug!(?sid, "ws closed")
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
async fn connect<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<Connected<H::Data, S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() || !socket.try_start_upgrade() => {
                return Err(Error::MultipleWebsocketRequests);
            }
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                (socket, ws)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        if let Err(e) = init_handshake(socket.id, &mut ws, &engine.config).await {
            // dispatchd patch: the session has no heartbeat yet, nothing else would close it.
            engine.close_session(socket.id, DisconnectReason::TransportError);
            return Err(e);
        }
        engine.start_heartbeat(&socket);
        (socket, ws)
    };
    Ok((socket, ws))
}

/// Why a connection's loop stopped.
enum Stop {
    /// The client closed the stream or sent a close packet.
    Closed,
    /// The session was closed on the server's side.
    Cancelled,
    /// The stream failed or the client sent what it must not.
    Failed(Error),
}

/// Serves a websocket connection until it closes (dispatchd patch: on one task, where upstream
/// ran a reader and a writer task around the two halves of a split stream, each half an
/// allocation of its own). One loop reads what the client sends and writes what the
/// session's outbox holds, whichever is ready: a write waiting for a slow client does not
/// hold up reading, nor a read writing.
///
/// An async block rather than an async fn: an async fn moves its arguments into locals, and the
/// future kept room for the stream twice.
fn serve<'a, H: EngineIoHandler, S>(
    engine: &'a Arc<EngineIo<H>>,
    socket: Arc<Socket<H::Data>>,
    mut ws: WebSocketStream<S>,
) -> impl Future<Output = ()> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        // A polling request that was in progress during the upgrade may still hold the lock.
        let lock = Box::pin(
            socket
                .rx_lock
                .lock()
                .with_cancellation_token(&socket.cancellation_token),
        );
        let Some(_rx_lock) = lock.await else {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "session closed before the ws connection started");
            return;
        };

        let mut sending: Option<Queued> = None;
        let mut unflushed = false;
        let stop = {
            let cancelled = socket.cancellation_token.cancelled();
            tokio::pin!(cancelled);
            poll_fn(|cx| {
                let mut read = false;
                // dispatchd patch: what the client sends is read only while its outbox has
                // room for the answers; a client that does not read them is held back by
                // TCP, not queued for in memory (see `Outbox::poll_room`). Writing below makes
                // room, and wakes this task to read again.
                while socket.poll_room(cx, || engine.heartbeat_now()).is_ready() {
                    match ws.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(msg))) => {
                            // dispatchd patch: the handlers run on this task, and the answers
                            // they queue are written below, in this same poll: they need not
                            // wake this task again (a wake-up of a running task polls it once
                            // more, from the back of the run queue).
                            if !read {
                                socket.outbox.forget_waker();
                                read = true;
                            }
                            if let Err(stop) = on_ws_message(engine, &socket, msg) {
                                return Poll::Ready(stop);
                            }
                            // dispatchd patch: a message that closed the session is the last
                            // one read (each one after it would only close it again).
                            if socket.cancellation_token.is_cancelled() {
                                break;
                            }
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Stop::Failed(e.into())),
                        Poll::Ready(None) => return Poll::Ready(Stop::Closed),
                        Poll::Pending => break,
                    }
                }
                if cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Stop::Cancelled);
                }
                match poll_write(&mut ws, &socket, &mut sending, &mut unflushed, cx) {
                    Poll::Ready(true) => return Poll::Ready(Stop::Cancelled),
                    Poll::Ready(false) => {}
                    Poll::Pending => return Poll::Pending,
                }
                // The stream is flushed once the outbox is empty.
                if unflushed && ws.poll_flush_unpin(cx).is_ready() {
                    unflushed = false;
                }
                Poll::Pending
            })
            .await
        };

        match stop {
            Stop::Failed(e) => {
                let reason = Option::<DisconnectReason>::from(&e)
                    .unwrap_or(DisconnectReason::TransportError);
                #[cfg(feature = "tracing")]
                tracing::debug!("error when handling packet: {:?}", e);
                engine.close_session(socket.id, reason);
            }
            Stop::Closed => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "ws transport was closed");
                engine.close_session(socket.id, DisconnectReason::TransportClose);
            }
            Stop::Cancelled => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "socket is closing");
            }
        }

        // What is already queued (a close packet, say) still goes out, then the stream is closed;
        // no longer than the ping timeout, for a client that stopped reading.
        let closing = Box::pin(tokio::time::timeout(engine.config.ping_timeout, async {
            poll_fn(|cx| {
                poll_write(&mut ws, &socket, &mut sending, &mut unflushed, cx).map(|_| ())
            })
            .await;
            #[cfg(feature = "tracing")]
            tracing::trace!(sid = %socket.id, "ws closing flush");
            ws.flush().await.ok();
            ws.close(None).await.ok();
            // dispatchd patch: what the client still sends is read and dropped until it
            // answers the close (for `CLOSE_LINGER` at most). Closed with unread data, the TCP
            // connection is reset, and a reset loses what the client has not read yet: a
            // client cut off while it kept sending (a flood) lost why, and its last acks.
            // Nothing it sends meanwhile is handled.
            let _ = tokio::time::timeout(CLOSE_LINGER, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }));
        closing.await.ok();
    }
}

/// dispatchd patch: how long a closed connection still reads what its client sends, waiting
/// for it to answer the close.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Hands what a client sent to the handler; `Err` stops the connection.
fn on_ws_message<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    msg: Message,
) -> Result<(), Stop> {
    match msg {
        Message::Text(msg) => {
            match Packet::parse(socket.protocol, ws_bytes_to_str(msg))
                .map_err(|e| Stop::Failed(e.into()))?
            {
                Packet::Close => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("[sid={}] closing session", socket.id);
                    engine.close_session(socket.id, DisconnectReason::TransportClose);
                    Err(Stop::Closed)
                }
                Packet::Pong | Packet::Ping => {
                    socket.heard(engine.heartbeat_now());
                    Ok(())
                }
                Packet::Message(msg) => {
                    engine.handler.on_message(msg, socket.clone());
                    Ok(())
                }
                p => Err(Stop::Failed(Error::BadPacket(p))),
            }
        }
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
            Ok(())
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
            Err(Stop::Closed)
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
            Ok(())
        }
    }
}

/// The websocket message for a packet; a Noop packet has none.
fn to_message<D: Default + Send + Sync + 'static>(
    socket: &Socket<D>,
    packet: Packet,
) -> Option<Message> {
    match packet {
        Packet::Binary(bin) | Packet::BinaryV3(bin) => {
            if socket.protocol == ProtocolVersion::V3 {
                // v3 protocol requires packet type as the first byte.
                // This requires a new buffer. This is OK as it is only for the V3 protocol.
                let mut buff = Vec::with_capacity(bin.len() + 1);
                buff.push(0x04);
                buff.extend(bin);
                Some(Message::Binary(buff.into()))
            } else {
                Some(Message::Binary(bin))
            }
        }
        // A Noop Packet maybe sent by the server to upgrade from a polling connection
        // In the case that the packet was not poll in time it will remain in the buffer and therefore
        // it should be discarded here
        Packet::Noop => None,
        item => {
            let packet: String = item.try_into().unwrap();
            Some(Message::Text(packet.into()))
        }
    }
}

/// Writes what the session's outbox holds, buffered packets before the volatile one, as far
/// as the stream takes it, without flushing. `Pending` while the stream is full; `Ready` once
/// the outbox has nothing more ready, with `true` if it is closed.
fn poll_write<D: Default + Send + Sync + 'static, S>(
    ws: &mut WebSocketStream<S>,
    socket: &Socket<D>,
    sending: &mut Option<Queued>,
    unflushed: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        if let Some(packets) = sending.as_mut() {
            while !packets.is_empty() {
                match ws.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {
                        if let Some(msg) = to_message(socket, packets.remove(0)) {
                            if let Err(_e) = ws.start_send_unpin(msg) {
                                #[cfg(feature = "tracing")]
                                tracing::debug!(sid = %socket.id, "error sending packet: {_e}");
                            }
                            *unflushed = true;
                        }
                    }
                    Poll::Ready(Err(_e)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(sid = %socket.id, "error sending packet: {_e}");
                        packets.clear();
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            *sending = None;
        }
        match socket.outbox.poll_recv(cx) {
            Poll::Ready(Some(packets)) => *sending = Some(packets),
            Poll::Ready(None) => return Poll::Ready(true),
            Poll::Pending => return Poll::Ready(false),
        }
    }
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    // A full outbox already wakes that request.
    match socket.send(Packet::Noop) {
        Ok(()) | Err(TrySendError::Full(_)) => {}
        Err(TrySendError::Closed(_)) => return Err(Error::Upgrade),
    }

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.rx_lock.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    #[derive(Debug, Default)]
    struct Recorder {
        messages: std::sync::Mutex<Vec<String>>,
    }
    impl EngineIoHandler for Recorder {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, msg: Str, _: Arc<Socket<()>>) {
            self.messages.lock().unwrap().push(msg.to_string());
        }
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn engine<H: EngineIoHandler + Default>(ping_timeout: Duration) -> Arc<EngineIo<H>> {
        let config = EngineIoConfig::builder().ping_timeout(ping_timeout).build();
        Arc::new(EngineIo::new(Arc::new(H::default()), config))
    }

    impl Default for StubHandler {
        fn default() -> Self {
            StubHandler
        }
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn a_connection_waits_for_the_lock_of_a_polling_request() {
        let engine = engine::<StubHandler>(TIMEOUT);
        let socket = socket();
        let (server, mut client) = ws_pair().await;

        let polling = socket.rx_lock.lock().await;
        let conn = tokio::spawn({
            let socket = socket.clone();
            async move { serve(&engine, socket, server).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !conn.is_finished(),
            "the connection should wait for the lock"
        );

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the connection should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn a_connection_waiting_for_the_lock_stops_with_the_session() {
        let engine = engine::<StubHandler>(TIMEOUT);
        let socket = socket();
        let (server, _client) = ws_pair().await;

        let _polling = socket.rx_lock.lock().await;
        let conn = tokio::spawn({
            let socket = socket.clone();
            async move { serve(&engine, socket, server).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, conn)
            .await
            .expect("the connection should stop")
            .unwrap();
    }

    /// Fills the server's side of a stream whose client reads nothing: 512 KiB of packets
    /// for a duplex pipe of 1 KiB (and still room in the outbox for the client's events).
    fn flood(socket: &Socket<()>) {
        let big = "x".repeat(64 * 1024);
        for _ in 0..8 {
            socket.emit(Str::from(big.clone())).unwrap();
        }
    }

    #[tokio::test]
    async fn reading_waits_while_the_outbox_has_no_room_for_answers() {
        let engine = engine::<Recorder>(TIMEOUT);
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        // 1 MiB queued, the most (the default): what the stream can take leaves more than
        // three quarters of it, so no room for the answers to more events.
        let big = "x".repeat(128 * 1024);
        for _ in 0..8 {
            socket.emit(Str::from(big.clone())).unwrap();
        }
        let conn = tokio::spawn({
            let (engine, socket) = (engine.clone(), socket.clone());
            async move { serve(&engine, socket, server).await }
        });
        client
            .send(Message::text("4from the client"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            engine.handler.messages.lock().unwrap().is_empty(),
            "nothing is read while the client has not read its answers"
        );
        let mut drained = 0;
        while engine.handler.messages.lock().unwrap().is_empty() {
            let msg = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
            assert!(matches!(msg, Some(Ok(Message::Text(_)))), "{msg:?}");
            drained += 1;
        }
        assert!(drained >= 1, "read once the client took its packets");
        assert_eq!(
            *engine.handler.messages.lock().unwrap(),
            ["from the client"]
        );
        assert!(!conn.is_finished());
    }

    #[tokio::test]
    async fn reading_goes_on_while_a_write_waits_for_a_client_that_does_not_read() {
        let engine = engine::<Recorder>(TIMEOUT);
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        flood(&socket);
        let conn = tokio::spawn({
            let (engine, socket) = (engine.clone(), socket.clone());
            async move { serve(&engine, socket, server).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;

        client
            .send(Message::text("4from the client"))
            .await
            .unwrap();
        let heard = async {
            while engine.handler.messages.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(TIMEOUT, heard)
            .await
            .expect("the message should be read while the writes wait");
        assert_eq!(
            *engine.handler.messages.lock().unwrap(),
            ["from the client"]
        );
        assert!(!conn.is_finished());
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_cannot_hold_a_closed_session_open() {
        let engine = engine::<StubHandler>(Duration::from_millis(100));
        let socket = socket();
        let (server, _client) = ws_pair().await;
        flood(&socket);
        let conn = tokio::spawn({
            let socket = socket.clone();
            async move { serve(&engine, socket, server).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!conn.is_finished());

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, conn)
            .await
            .expect("the connection should give up on its closing writes")
            .unwrap();
        assert!(
            socket.rx_lock.try_lock().is_ok(),
            "the lock should be released"
        );
    }

    #[tokio::test]
    async fn a_closed_session_sends_what_was_queued_then_closes_the_stream() {
        let engine = engine::<StubHandler>(TIMEOUT);
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let conn = tokio::spawn({
            let socket = socket.clone();
            async move { serve(&engine, socket, server).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.emit(Str::from("last")).unwrap();
        socket.cancellation_token.cancel();
        let mut got = Vec::new();
        while let Some(msg) = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap() {
            match msg {
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(msg) => got.push(msg),
            }
        }
        assert_eq!(got, [Message::text("4last")]);
        // The client answers the close, as WebSocket clients do (dispatchd patch: the server
        // reads until then, `CLOSE_LINGER` at most).
        while let Ok(Some(Ok(_))) = tokio::time::timeout(TIMEOUT, client.next()).await {}
        tokio::time::timeout(TIMEOUT, conn).await.unwrap().unwrap();
    }
}
