//! ## A [`Socket`] represents a client connection to the server
//!
//! It can be used to :
//! * Emit binary or string data
//! * Get a reference to the request made to connect to the socket.io server
//! * Close the connection
//!
//! #### Example :
//! ```rust
//! # use bytes::Bytes;
//! # use engineioxide::service::EngineIoService;
//! # use engineioxide::handler::EngineIoHandler;
//! # use engineioxide::{Socket, DisconnectReason, Str};
//! # use std::sync::{Mutex, Arc};
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! // Global state
//! #[derive(Debug, Default)]
//! struct MyHandler {
//!     user_cnt: AtomicUsize,
//! }
//!
//! // Socket state
//! #[derive(Debug, Default)]
//! struct SocketState {
//!     id: Mutex<String>,
//! }
//!
//! impl EngineIoHandler for MyHandler {
//!     type Data = SocketState;
//!
//!     fn on_connect(self: Arc<Self>, socket: Arc<Socket<SocketState>>) {
//!         // Get the request made to initialize the connection
//!         // and check that the authorization header is correct
//!         let connected = socket.req_parts.headers.get("Authorization")
//!             .map(|a| a == "mysuperpassword!").unwrap_or_default();
//!         // Close the socket if the authentication is invalid
//!         if !connected {
//!             socket.close(DisconnectReason::TransportError);
//!             return;
//!         }
//!
//!         let cnt = self.user_cnt.fetch_add(1, Ordering::Relaxed) + 1;
//!         // Emit string data to the client
//!         socket.emit(cnt.to_string()).ok();
//!     }
//!     fn on_disconnect(&self, socket: Arc<Socket<SocketState>>, reason: DisconnectReason) {
//!         let cnt = self.user_cnt.fetch_sub(1, Ordering::Relaxed) - 1;
//!     }
//!     fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<SocketState>>) {
//!         *socket.data.id.lock().unwrap() = msg.into(); // bind a provided user id to a socket
//!     }
//!     fn on_binary(self: &Arc<Self>, data: Bytes, socket: Arc<Socket<SocketState>>) { }
//! }
//!
//! let svc = EngineIoService::new(Arc::new(MyHandler::default()));
//! ```
use std::{
    collections::VecDeque,
    fmt::Debug,
    sync::{
        PoisonError,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
};

use crate::{config::EngineIoConfig, errors::Error};
use bytes::Bytes;
use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Str, TransportType};
use http::request::Parts;
use smallvec::{SmallVec, smallvec};
use tokio::sync::{Mutex, Notify, mpsc::error::TrySendError};

pub use engineioxide_core::Sid;
#[cfg(any(test, feature = "__test_harness"))]
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A [`DisconnectReason`] represents the reason why a [`Socket`] was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client gracefully closed the connection
    TransportClose,
    /// The client sent multiple polling requests at the same time (it is forbidden according to the engine.io protocol)
    MultipleHttpPollingError,
    /// The client sent a bad request / the packet could not be parsed correctly
    PacketParsingError,
    /// An error occured in the transport layer
    /// (e.g. the client closed the connection without sending a close packet)
    TransportError,
    /// The client did not respond to the heartbeat
    HeartbeatTimeout,
    /// The server is being closed
    ClosingServer,
    /// dispatchd patch: the client stopped reading what it asked for (the reader waited for
    /// room in its outbox for the whole stall timeout)
    SlowClient,
}

/// Convert an [`Error`] to a [`DisconnectReason`] if possible
/// This is used to notify the [`Handler`](crate::handler::EngineIoHandler) of the reason why a [`Socket`] was closed
/// If the error cannot be converted to a [`DisconnectReason`] it means that the error was not fatal and the [`Socket`] can be kept alive
impl From<&Error> for Option<DisconnectReason> {
    fn from(err: &Error) -> Self {
        use Error::*;
        match err {
            WsTransport(_) => Some(DisconnectReason::TransportError),
            BadPacket(_) | PacketParse(_) => Some(DisconnectReason::PacketParsingError),
            HeartbeatTimeout => Some(DisconnectReason::HeartbeatTimeout),
            _ => None,
        }
    }
}

/// What the outbox carries: packets behind one pointer (dispatchd patch), so that a socket's
/// queue is a ring of pointers, 8 bytes a slot, where a `PacketBuf` inline is 168 bytes.
pub(crate) type Queued = Box<PacketBuf>;

/// A permit to emit a message to the client.
/// A permit holds a place in the socket's outbox to send one packet to the client.
pub struct Permit<'a> {
    outbox: &'a Outbox,
}
impl Permit<'_> {
    fn send(self, packets: PacketBuf) {
        let outbox = self.outbox;
        std::mem::forget(self);
        outbox.send_reserved(Box::new(packets));
    }
    /// Consume the permit and emit a message to the client.
    #[inline]
    pub fn emit(self, msg: Str) {
        self.send(smallvec![Packet::Message(msg)]);
    }
    /// Consume the permit and emit a binary message to the client.
    #[inline]
    pub fn emit_binary(self, data: Bytes) {
        self.send(smallvec![Packet::Binary(data)]);
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many(self, msg: Str, data: VecDeque<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Message(msg));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        self.send(packets);
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many_binary(self, bin: Bytes, data: Vec<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Binary(bin));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        self.send(packets);
    }
}
impl Drop for Permit<'_> {
    /// An unused permit gives its place back.
    fn drop(&mut self) {
        self.outbox.release();
    }
}

/// dispatchd patch: the packets waiting for the transport, inline in the socket. It replaces
/// a bounded tokio channel for the buffered packets and a `watch` channel for the volatile
/// one: together about 1.3 KiB for every socket (the channel's cache padding and its first
/// block of 32 slots, the watch's shared state), and the watch kept the last volatile packet
/// for the socket's life. Buffered packets go out in order, and before the volatile one;
/// a newer volatile packet replaces one not yet taken. One transport takes packets at a
/// time: it holds the socket's `rx_lock` while it does.
pub(crate) struct Outbox {
    state: std::sync::Mutex<OutboxState>,
    capacity: usize,
    /// The most bytes the queue holds: beyond them, as beyond `capacity` packets, it is
    /// full (dispatchd patch). A packet larger than this still goes into an empty queue.
    max_bytes: usize,
    /// Wakes whoever waits in [`Socket::closed`].
    closed: Notify,
}

#[derive(Default)]
struct OutboxState {
    queue: VecDeque<Queued>,
    /// Places held by permits not yet used.
    reserved: usize,
    /// The bytes of the packets in `queue`.
    bytes: usize,
    volatile: Option<Queued>,
    closed: bool,
    /// The transport waiting for a packet.
    waker: Option<Waker>,
    /// The reader waiting for room (see [`Outbox::poll_room`]).
    room_waker: Option<Waker>,
}

/// What a queued entry weighs: the bytes of its packets' data.
fn weight(packets: &PacketBuf) -> usize {
    packets
        .iter()
        .map(|packet| match packet {
            Packet::Message(msg) => msg.len(),
            Packet::Binary(data) | Packet::BinaryV3(data) => data.len(),
            _ => 1,
        })
        .sum()
}

impl OutboxState {
    /// Buffered packets first, then the volatile one.
    fn next(&mut self) -> Option<Queued> {
        match self.queue.pop_front() {
            Some(packets) => {
                self.bytes -= weight(&packets);
                Some(packets)
            }
            None => self.volatile.take(),
        }
    }

    fn push_back(&mut self, packets: Queued) {
        self.bytes += weight(&packets);
        self.queue.push_back(packets);
    }
}

impl Outbox {
    fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            state: std::sync::Mutex::default(),
            capacity,
            max_bytes,
            closed: Notify::new(),
        }
    }

    fn full(&self, state: &OutboxState) -> bool {
        state.queue.len() + state.reserved >= self.capacity || state.bytes >= self.max_bytes
    }

    /// Whether the reader may take in another event (dispatchd patch): a quarter of the
    /// places and bytes stay for what the server sends of its own accord (order events,
    /// offers), the rest is for answers to what the client sent, reserved as events come in.
    fn room_for_reads(&self, state: &OutboxState) -> bool {
        let places = self.capacity - self.capacity / 4;
        let bytes = self.max_bytes - self.max_bytes / 4;
        state.closed || (state.queue.len() + state.reserved < places.max(1) && state.bytes < bytes)
    }

    /// Ready when the reader may take in another event; otherwise the reader is woken when
    /// a packet leaves the queue or a reserved place is given back (dispatchd patch: a client
    /// sending faster than it reads its answers is read no faster than it reads them).
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if self.room_for_reads(&state) {
            return Poll::Ready(());
        }
        match &mut state.room_waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Wakes the reader waiting for room, if there is room now.
    fn wake_reader(&self, mut state: std::sync::MutexGuard<'_, OutboxState>) {
        let waker = if self.room_for_reads(&state) {
            state.room_waker.take()
        } else {
            None
        };
        drop(state);
        Self::wake(waker);
    }

    /// Queues `packets` past the bounds (dispatchd patch): a socket's last words before it
    /// is closed (why, and the close itself) must not be lost because its client stopped
    /// reading. Only for a socket about to close: nothing bounds how much this adds.
    fn push_last(&self, packets: Queued) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        state.push_back(packets);
        let waker = state.waker.take();
        drop(state);
        Self::wake(waker);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the transport, once the state's lock is released.
    fn wake(waker: Option<Waker>) {
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn try_reserve(&self) -> Result<Permit<'_>, TrySendError<()>> {
        let mut state = self.lock();
        if state.closed {
            return Err(TrySendError::Closed(()));
        }
        if self.full(&state) {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(Permit { outbox: self })
    }

    fn send_reserved(&self, packets: Queued) {
        let mut state = self.lock();
        state.reserved -= 1;
        if state.closed {
            return;
        }
        state.push_back(packets);
        let waker = state.waker.take();
        drop(state);
        Self::wake(waker);
    }

    /// A reserved place given back unused.
    fn release(&self) {
        let mut state = self.lock();
        state.reserved -= 1;
        self.wake_reader(state);
    }

    fn try_send(&self, packets: Queued) -> Result<(), TrySendError<Queued>> {
        let mut state = self.lock();
        if state.closed {
            return Err(TrySendError::Closed(packets));
        }
        if self.full(&state) {
            return Err(TrySendError::Full(packets));
        }
        state.push_back(packets);
        let waker = state.waker.take();
        drop(state);
        Self::wake(waker);
        Ok(())
    }

    /// `None` if closed; else whether it replaced a volatile packet not yet taken.
    fn send_volatile(&self, packets: Queued) -> Option<bool> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let replaced = state.volatile.replace(packets).is_some();
        let waker = state.waker.take();
        drop(state);
        Self::wake(waker);
        Some(replaced)
    }

    /// Puts back, first in line, packets a polling response had no room for.
    pub(crate) fn put_back(&self, packets: PacketBuf) {
        let mut state = self.lock();
        state.bytes += weight(&packets);
        state.queue.push_front(Box::new(packets));
    }

    /// Forgets the transport's waker (dispatchd patch): the transport is awake and will look
    /// at the outbox before it waits again (its next `poll_recv` registers a waker anew), so
    /// what it queues meanwhile, an event's answer queued by a handler run on its own task,
    /// need not wake it a second time.
    pub(crate) fn forget_waker(&self) {
        self.lock().waker = None;
    }

    /// The next packets to send: `None` once the outbox is closed and empty.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Queued>> {
        let mut state = self.lock();
        if let Some(packets) = state.next() {
            self.wake_reader(state);
            return Poll::Ready(Some(packets));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    #[cfg(any(test, feature = "__test_harness"))]
    pub(crate) async fn recv(&self) -> Option<Queued> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Packets ready to send now, if any.
    #[cfg(test)]
    fn try_recv(&self) -> Option<Queued> {
        let mut state = self.lock();
        let next = state.next();
        self.wake_reader(state);
        next
    }

    /// No packet is taken in from now on; the transport still gets those already queued.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.volatile = None;
        let waker = state.waker.take();
        let room_waker = state.room_waker.take();
        drop(state);
        Self::wake(waker);
        Self::wake(room_waker);
        self.closed.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    async fn closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

impl Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Outbox")
            .field("queued", &state.queue.len())
            .field("reserved", &state.reserved)
            .field("volatile", &state.volatile.is_some())
            .field("closed", &state.closed)
            .finish()
    }
}

/// The heartbeat's "not started yet".
const NOT_STARTED: u64 = u64::MAX;
/// The reader's "not waiting for room".
const NOT_PAUSED: u64 = u64::MAX;

/// dispatchd patch: a socket's heartbeat, as two numbers that the engine's one sweeper task
/// reads and updates (`EngineIo::sweep_heartbeats`), where upstream ran a task with its timers
/// for every socket (about 0.6 KiB each). Times are milliseconds on the engine's heartbeat
/// clock.
#[derive(Debug)]
struct Heartbeat {
    /// v4: when the next ping is due. v3: when the client's last ping was heard.
    /// [`NOT_STARTED`] until the session is set up.
    at: AtomicU64,
    /// v4: by when the pong for the ping sent must come; 0 when none is awaited.
    deadline: AtomicU64,
}

impl Heartbeat {
    fn new() -> Self {
        Self {
            at: AtomicU64::new(NOT_STARTED),
            deadline: AtomicU64::new(0),
        }
    }
}

/// A [`Socket`] represents a client connection to the server.
/// It is agnostic to the [`TransportType`].
///
/// It handles :
/// * the packet communication between with the `Engine`
///   and the user defined [`Handler`](crate::handler::EngineIoHandler).
/// * the user defined [`Data`](crate::handler::EngineIoHandler::Data) bound to the socket.
/// * the heartbeat state that the engine's sweeper uses to verify that the connection is still up.
pub struct Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// The socket id
    pub id: Sid,

    /// The protocol version used by the socket
    pub protocol: ProtocolVersion,

    /// The transport type represented as a bitfield
    /// It is represented as a bitfield to allow the use of an [`AtomicU8`] so it can be shared between threads
    /// without any mutex
    transport: AtomicU8,

    /// Whether the socket is currently upgrading to a new transport.
    upgrading: AtomicBool,

    /// Held by the transport that takes packets from the [`Outbox`]:
    /// * In case of polling transport it will be locked and released for each request
    /// * In case of websocket transport it will always be locked until the connection is closed
    ///
    /// Closing behavior is driven by the [`Socket::cancellation_token`].
    pub(crate) rx_lock: Mutex<()>,

    /// The packets waiting for the transport. Each entry is a [`SmallVec`] of [`Packet`]s so
    /// that adjacent packets can be sent atomically.
    pub(crate) outbox: Outbox,

    /// The heartbeat's state, kept by the engine's sweeper (dispatchd patch).
    heartbeat: Heartbeat,

    /// Since when (on the heartbeat clock) the reader has waited for room in the outbox;
    /// [`NOT_PAUSED`] while it reads (dispatchd patch). The sweeper closes a socket whose
    /// reader waited longer than the stall timeout.
    reads_paused_since: AtomicU64,

    /// A cancellation token that will be triggered when the socket is being closed.
    pub(crate) cancellation_token: CancellationToken,

    /// Function to call when the socket is closed
    close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    /// User data bound to the socket
    pub data: D,

    /// Http Request data used to create a socket
    pub req_parts: Parts,

    /// If the client supports binary packets (via polling XHR2)
    pub(crate) supports_binary: bool,
}

impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    pub(crate) fn new(
        protocol: ProtocolVersion,
        transport: TransportType,
        config: &EngineIoConfig,
        req_parts: Parts,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        supports_binary: bool,
    ) -> Self {
        Self {
            id: Sid::new(),
            protocol,
            transport: AtomicU8::new(transport as u8),
            upgrading: AtomicBool::new(false),

            rx_lock: Mutex::new(()),
            outbox: Outbox::new(config.max_buffer_size, config.max_buffer_bytes),
            reads_paused_since: AtomicU64::new(NOT_PAUSED),

            heartbeat: Heartbeat::new(),
            cancellation_token: CancellationToken::new(),

            close_fn,

            data: D::default(),
            req_parts,

            supports_binary,
        }
    }

    /// Sends a packet to the connection.
    pub(crate) fn send(&self, packet: Packet) -> Result<(), TrySendError<Packet>> {
        #[cfg(feature = "tracing")]
        tracing::debug!(?packet, "sending packet");

        self.outbox
            .try_send(Box::new(smallvec![packet]))
            .map_err(|p| match p {
                TrySendError::Full(mut p) => TrySendError::Full(p.pop().unwrap()),
                TrySendError::Closed(mut p) => TrySendError::Closed(p.pop().unwrap()),
            })?;
        Ok(())
    }
    /// The client answered a ping (v4) or pinged (v3), at `now` on the engine's heartbeat
    /// clock. A v3 client's ping is answered at once.
    pub(crate) fn heard(&self, now: u64) {
        match self.protocol {
            ProtocolVersion::V4 => self.heartbeat.deadline.store(0, Ordering::Release),
            ProtocolVersion::V3 => {
                self.heartbeat.at.store(now, Ordering::Release);
                #[cfg(feature = "tracing")]
                tracing::trace!(sid = ?self.id, "ping received, sending pong");
                if self.send(Packet::Pong).is_err() {
                    self.close(DisconnectReason::HeartbeatTimeout);
                }
            }
        }
    }

    /// Starts the heartbeat, at `now` on the engine's heartbeat clock: a v4 socket is first
    /// pinged one `interval` from now, as the protocol and the reference server do; a v3
    /// socket's client has a ping interval and timeout to ping.
    pub(crate) fn start_heartbeat(&self, now: u64, interval: u64) {
        let first = match self.protocol {
            ProtocolVersion::V4 => now.saturating_add(interval),
            ProtocolVersion::V3 => now,
        };
        self.heartbeat.at.store(first, Ordering::Release);
    }

    /// Ready when the reader may take in another event from the client (dispatchd patch; see
    /// [`Outbox::poll_room`]); keeps since when it has waited, at `now` on the heartbeat clock.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>, now: impl FnOnce() -> u64) -> Poll<()> {
        let room = self.outbox.poll_room(cx);
        let paused = self.reads_paused_since.load(Ordering::Relaxed) != NOT_PAUSED;
        match room {
            Poll::Ready(()) if paused => {
                self.reads_paused_since.store(NOT_PAUSED, Ordering::Relaxed)
            }
            Poll::Pending if !paused => self.reads_paused_since.store(now(), Ordering::Relaxed),
            _ => {}
        }
        room
    }

    /// Whether the reader has waited for room for `stall` or longer at `now`: the client
    /// has stopped reading what it asked for (dispatchd patch).
    pub(crate) fn stalled(&self, now: u64, stall: u64) -> bool {
        let since = self.reads_paused_since.load(Ordering::Relaxed);
        since != NOT_PAUSED && now.saturating_sub(since) >= stall
    }

    /// One sweep of the heartbeat for this socket at `now` (milliseconds, like `interval` and
    /// `timeout`): sends the ping that is due, if any. True when the client has been silent
    /// for too long and the socket must be closed.
    pub(crate) fn heartbeat_due(&self, now: u64, interval: u64, timeout: u64) -> bool {
        let at = self.heartbeat.at.load(Ordering::Acquire);
        if at == NOT_STARTED {
            return false;
        }
        match self.protocol {
            ProtocolVersion::V3 => now >= at.saturating_add(interval + timeout),
            ProtocolVersion::V4 => {
                let deadline = self.heartbeat.deadline.load(Ordering::Acquire);
                if deadline != 0 {
                    return now >= deadline;
                }
                if now < at {
                    return false;
                }
                // Pings keep to the interval's schedule, and pause while upgrading.
                self.heartbeat
                    .at
                    .store((at + interval).max(now), Ordering::Release);
                if self.is_upgrading() {
                    return false;
                }
                // Before the ping goes out: its pong may come at once.
                self.heartbeat
                    .deadline
                    .store((now + timeout).max(1), Ordering::Release);
                #[cfg(feature = "tracing")]
                tracing::trace!(sid = ?self.id, "emitting ping");
                self.send(Packet::Ping).is_err()
            }
        }
    }

    pub(crate) fn is_upgrading(&self) -> bool {
        self.upgrading.load(Ordering::Relaxed)
    }
    pub(crate) fn start_upgrade(&self) {
        self.upgrading.store(true, Ordering::Relaxed);
    }
    /// dispatchd patch: claims the upgrade for one WebSocket; false when another already
    /// claimed it (a second WebSocket during an upgrade is refused, as by the reference
    /// server: it would otherwise race the first for the session's outbox and freeze it).
    pub(crate) fn try_start_upgrade(&self) -> bool {
        self.upgrading
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Returns true if the [`Socket`] has a websocket [`TransportType`]
    pub(crate) fn is_ws(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Websocket as u8
    }
    /// returns true if the [`Socket`] has an HTTP [`TransportType`]
    pub(crate) fn is_http(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Polling as u8
    }

    /// Sets the [`TransportType`] to WebSocket
    /// Used when the client upgrade the connection from HTTP to WebSocket
    pub(crate) fn upgrade_to_websocket(&self) {
        self.upgrading.store(false, Ordering::Relaxed);
        self.transport
            .store(TransportType::Websocket as u8, Ordering::Relaxed);
    }

    /// Returns the current [`TransportType`] of the [`Socket`]
    pub fn transport_type(&self) -> TransportType {
        TransportType::from(self.transport.load(Ordering::Relaxed))
    }

    /// Reserve `n` permits to emit multiple messages and ensure that there is enough
    /// space in the internal chan.
    ///
    /// If the internal chan is full, the function will return a [`TrySendError::Full`] error.
    /// If the socket is closed, the function will return a [`TrySendError::Closed`] error.
    #[inline]
    pub fn reserve(&self) -> Result<Permit<'_>, TrySendError<()>> {
        self.outbox.try_reserve()
    }

    /// dispatchd patch: reserves a place in the outbox for a packet to be sent later, by
    /// another task (the answer to an event, reserved when the event comes in). False when
    /// the outbox is full or closed. Each place reserved must be used with
    /// [`Self::reserved_permit`] or given back with [`Self::release_reserved`].
    pub fn reserve_place(&self) -> bool {
        self.outbox.try_reserve().map(std::mem::forget).is_ok()
    }

    /// dispatchd patch: the permit for a place reserved with [`Self::reserve_place`].
    pub fn reserved_permit(&self) -> Permit<'_> {
        Permit {
            outbox: &self.outbox,
        }
    }

    /// dispatchd patch: gives back a place reserved with [`Self::reserve_place`].
    pub fn release_reserved(&self) {
        self.outbox.release();
    }

    /// dispatchd patch: queues a message past the outbox's bounds, for a socket about to be
    /// closed: why it is closed must reach a client that stopped reading, once it reads.
    /// False when the socket is closed already.
    pub fn emit_last(&self, msg: impl Into<Str>) -> bool {
        self.outbox
            .push_last(Box::new(smallvec![Packet::Message(msg.into())]))
    }

    /// Emits a message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a text frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit(&self, msg: impl Into<Str>) -> Result<(), TrySendError<Str>> {
        self.send(Packet::Message(msg.into())).map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_message()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_message()),
        })
    }

    /// Immediately closes the socket and the underlying connection.
    /// The socket will be removed from the `Engine` and the [`Handler`](crate::handler::EngineIoHandler) will be notified.
    #[cfg_attr(feature = "tracing", tracing::instrument(skip(self)))]
    pub fn close(&self, reason: DisconnectReason) {
        // Try to send a close packet is the connection is still operational.
        self.send(Packet::Close).ok();

        (self.close_fn)(self.id, reason);
    }

    /// Returns true if the socket is closed
    /// It means that no more packets can be sent to the client
    pub fn is_closed(&self) -> bool {
        self.outbox.is_closed()
    }

    /// Wait for the socket to be fully closed
    pub async fn closed(&self) {
        self.outbox.closed().await
    }

    /// Emits a binary message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a binary frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame **encoded in base64** to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit_binary<B: Into<Bytes>>(&self, data: B) -> Result<(), TrySendError<Bytes>> {
        if self.protocol == ProtocolVersion::V3 {
            self.send(Packet::BinaryV3(data.into()))
        } else {
            self.send(Packet::Binary(data.into()))
        }
        .map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_binary()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_binary()),
        })
    }

    /// Try to send a volatile message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Because volatile messages bypass the buffer queue, they may arrive out
    /// of order relative to regular messages: they go out once the queue is
    /// empty, and a newer one replaces one not yet sent.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped (the socket is closed).
    #[inline]
    pub fn emit_volatile(&self, msg: impl Into<Str>) -> bool {
        self.send_volatile(smallvec![Packet::Message(msg.into())])
    }

    /// Try to send a volatile binary message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_binary_volatile<B: Into<Bytes>>(&self, data: B) -> bool {
        if self.protocol == ProtocolVersion::V3 {
            self.send_volatile(smallvec![Packet::BinaryV3(data.into())])
        } else {
            self.send_volatile(smallvec![Packet::Binary(data.into())])
        }
    }

    /// Try to send a volatile message with multiple adjacent binary payloads.
    /// The message and all binary payloads are sent atomically as a single
    /// volatile write.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_many_volatile(&self, msg: Str, data: VecDeque<Bytes>) -> bool {
        let mut packets = SmallVec::with_capacity(1 + data.len());
        packets.push(Packet::Message(msg));
        for bin in data {
            packets.push(Packet::Binary(bin));
        }
        self.send_volatile(packets)
    }

    /// dispatchd patch: [`Self::emit_volatile`], telling what became of the message: `None`
    /// if the socket is closed, `Some(true)` if it replaced a volatile message not yet sent (one
    /// dropped: the caller can count it), `Some(false)` if none was waiting.
    #[inline]
    pub fn emit_volatile_replacing(&self, msg: impl Into<Str>) -> Option<bool> {
        self.outbox
            .send_volatile(Box::new(smallvec![Packet::Message(msg.into())]))
    }

    pub(crate) fn send_volatile(&self, packets: PacketBuf) -> bool {
        self.outbox.send_volatile(Box::new(packets)).is_some()
    }
}

impl<D: Default + Send + Sync + 'static> std::fmt::Debug for Socket<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("sid", &self.id)
            .field("protocol", &self.protocol)
            .field("conn", &self.transport)
            .field("outbox", &self.outbox)
            .field("heartbeat", &self.heartbeat)
            .field("cancellation_token", &self.cancellation_token)
            .field("req_data", &self.req_parts)
            .finish()
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Drop for Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        tracing::debug!("[sid={}] dropping socket", self.id);
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// Create a dummy socket for testing purpose
    pub fn new_dummy(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    ) -> Arc<Socket<D>> {
        let (s, mut rx) = Socket::new_dummy_piped(sid, close_fn, 1024);
        tokio::spawn(async move {
            while let Some(_el) = rx.recv().await {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, ?_el, "emitting eio msg");
            }
        });
        s
    }

    /// Create a dummy socket for testing purpose with a
    /// receiver to get the packets sent to the client
    pub fn new_dummy_piped(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        buffer_size: usize,
    ) -> (Arc<Socket<D>>, tokio::sync::mpsc::Receiver<Packet>) {
        let sock = Self {
            id: sid,
            protocol: ProtocolVersion::V4,
            transport: AtomicU8::new(TransportType::Websocket as u8),
            upgrading: AtomicBool::new(false),

            rx_lock: Mutex::new(()),
            outbox: Outbox::new(buffer_size, usize::MAX),
            reads_paused_since: AtomicU64::new(NOT_PAUSED),

            heartbeat: Heartbeat::new(),
            cancellation_token: CancellationToken::new(),
            close_fn,

            data: D::default(),
            req_parts: http::Request::<()>::default().into_parts().0,

            supports_binary: true,
        };
        let sock = Arc::new(sock);

        let (tx, rx) = tokio::sync::mpsc::channel(buffer_size);
        let sock_clone = sock.clone();
        tokio::spawn(async move {
            let _rx_lock = sock_clone.rx_lock.try_lock().unwrap();
            while let Some(packets) = sock_clone.outbox.recv().await {
                for packet in *packets {
                    tx.send(packet).await.unwrap();
                }
            }
        });

        (sock, rx)
    }
}

#[cfg(test)]
mod outbox_tests {
    use std::time::Duration;

    use super::*;

    fn text(packets: Option<Queued>) -> Vec<String> {
        packets
            .expect("packets")
            .into_iter()
            .map(|p| String::try_from(p).unwrap())
            .collect()
    }

    fn msg(s: &'static str) -> Queued {
        Box::new(smallvec![Packet::Message(Str::from(s))])
    }

    #[test]
    fn buffered_packets_go_first_in_order_and_a_newer_volatile_one_replaces_the_older() {
        let outbox = Outbox::new(8, usize::MAX);
        assert_eq!(outbox.send_volatile(msg("v1")), Some(false));
        outbox.try_send(msg("a")).unwrap();
        assert_eq!(
            outbox.send_volatile(msg("v2")),
            Some(true),
            "v1 was replaced"
        );
        outbox.try_send(msg("b")).unwrap();
        assert_eq!(text(outbox.try_recv()), ["4a"]);
        assert_eq!(text(outbox.try_recv()), ["4b"]);
        assert_eq!(text(outbox.try_recv()), ["4v2"]);
        assert!(outbox.try_recv().is_none());
        assert_eq!(outbox.send_volatile(msg("v3")), Some(false), "v2 went out");
        outbox.close();
        assert_eq!(outbox.send_volatile(msg("v4")), None);
    }

    #[test]
    fn the_capacity_counts_queued_packets_and_unused_permits() {
        let outbox = Outbox::new(2, usize::MAX);
        outbox.try_send(msg("a")).unwrap();
        let permit = outbox.try_reserve().unwrap();
        assert!(matches!(
            outbox.try_send(msg("b")),
            Err(TrySendError::Full(_))
        ));
        assert!(matches!(outbox.try_reserve(), Err(TrySendError::Full(()))));
        // A volatile packet needs no place: it replaces the previous one.
        assert!(outbox.send_volatile(msg("v")).is_some());
        drop(permit);
        let permit = outbox.try_reserve().unwrap();
        permit.emit(Str::from("c"));
        assert!(matches!(outbox.try_reserve(), Err(TrySendError::Full(()))));
        assert_eq!(text(outbox.try_recv()), ["4a"]);
        outbox.try_reserve().unwrap().emit(Str::from("d"));
        assert_eq!(text(outbox.try_recv()), ["4c"]);
        assert_eq!(text(outbox.try_recv()), ["4d"]);
        assert_eq!(text(outbox.try_recv()), ["4v"]);
    }

    #[test]
    fn bytes_bound_the_queue_too() {
        let outbox = Outbox::new(8, 6);
        outbox.try_send(msg("abcd")).unwrap();
        outbox.try_send(msg("ef")).unwrap();
        assert!(
            matches!(outbox.try_send(msg("g")), Err(TrySendError::Full(_))),
            "6 bytes queued"
        );
        assert!(matches!(outbox.try_reserve(), Err(TrySendError::Full(()))));
        assert_eq!(text(outbox.try_recv()), ["4abcd"]);
        outbox.try_send(msg("much longer than six")).unwrap();
        assert!(
            outbox.push_last(msg("why")),
            "last words go past the bounds"
        );
        assert_eq!(text(outbox.try_recv()), ["4ef"]);
        assert_eq!(text(outbox.try_recv()), ["4much longer than six"]);
        assert_eq!(text(outbox.try_recv()), ["4why"]);
        outbox
            .try_send(msg("a packet larger than the bound, alone"))
            .unwrap();
    }

    #[tokio::test]
    async fn the_reader_waits_for_room_and_is_woken_when_there_is() {
        // Capacity 4: reads go on while fewer than 3 places are taken.
        let outbox = Arc::new(Outbox::new(4, usize::MAX));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(outbox.poll_room(&mut cx).is_ready());
        let permit = outbox.try_reserve().unwrap();
        outbox.try_send(msg("a")).unwrap();
        assert!(outbox.poll_room(&mut cx).is_ready());
        outbox.try_send(msg("b")).unwrap();
        assert!(
            outbox.poll_room(&mut cx).is_pending(),
            "a quarter stays for the server"
        );
        outbox.try_send(msg("c")).unwrap();

        let reader = {
            let outbox = outbox.clone();
            tokio::spawn(async move { std::future::poll_fn(|cx| outbox.poll_room(cx)).await })
        };
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        drop(permit);
        tokio::task::yield_now().await;
        assert!(!reader.is_finished(), "still 3 queued");
        assert_eq!(text(outbox.try_recv()), ["4a"]);
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_packet_put_back_goes_out_first() {
        let outbox = Outbox::new(2, usize::MAX);
        outbox.try_send(msg("b")).unwrap();
        outbox.put_back(smallvec![Packet::Message(Str::from("a"))]);
        assert_eq!(text(outbox.try_recv()), ["4a"]);
        assert_eq!(text(outbox.try_recv()), ["4b"]);
    }

    #[tokio::test]
    async fn a_waiting_transport_is_woken() {
        let outbox = Arc::new(Outbox::new(4, usize::MAX));
        let rx = {
            let outbox = outbox.clone();
            tokio::spawn(async move { text(outbox.recv().await) })
        };
        tokio::task::yield_now().await;
        assert!(!rx.is_finished());
        outbox.try_send(msg("a")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, ["4a"]);
    }

    #[tokio::test]
    async fn a_closed_outbox_takes_nothing_more_and_still_hands_over_what_it_holds() {
        let outbox = Arc::new(Outbox::new(4, usize::MAX));
        outbox.try_send(msg("a")).unwrap();
        outbox.try_send(msg("b")).unwrap();
        assert!(outbox.send_volatile(msg("v")).is_some());
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.closed().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(!outbox.is_closed());
        outbox.close();
        assert!(outbox.is_closed());
        assert!(matches!(
            outbox.try_send(msg("c")),
            Err(TrySendError::Closed(_))
        ));
        assert!(matches!(
            outbox.try_reserve(),
            Err(TrySendError::Closed(()))
        ));
        assert!(outbox.send_volatile(msg("w")).is_none());
        // What was buffered before the close still goes out; the volatile packet does not.
        assert_eq!(text(outbox.recv().await), ["4a"]);
        assert_eq!(text(outbox.recv().await), ["4b"]);
        assert!(outbox.recv().await.is_none());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), outbox.closed())
            .await
            .unwrap();
    }
}

#[cfg(test)]
mod heartbeat_tests {
    use super::*;

    const INTERVAL: u64 = 1_000;
    const TIMEOUT: u64 = 500;

    fn socket(protocol: ProtocolVersion) -> Socket<()> {
        Socket::new(
            protocol,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            http::Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        )
    }

    fn sent(socket: &Socket<()>) -> Vec<String> {
        std::iter::from_fn(|| socket.outbox.try_recv())
            .flat_map(|packets| packets.into_iter())
            .map(|p| String::try_from(p).unwrap())
            .collect()
    }

    #[test]
    fn a_socket_that_waits_for_room_too_long_is_stalled() {
        let socket = socket(ProtocolVersion::V4);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!socket.stalled(10_000, 100));
        while socket.reserve_place() {}
        assert!(socket.poll_room(&mut cx, || 1_000).is_pending());
        assert!(socket.poll_room(&mut cx, || 1_050).is_pending());
        assert!(!socket.stalled(1_099, 100));
        assert!(socket.stalled(1_100, 100), "paused since 1,000");
        // 128 places (the default): reads go on below 96.
        for _ in 0..32 {
            socket.release_reserved();
        }
        assert!(socket.poll_room(&mut cx, || 1_200).is_pending());
        socket.release_reserved();
        assert!(socket.poll_room(&mut cx, || 1_200).is_ready());
        assert!(!socket.stalled(5_000, 100));
    }

    #[test]
    fn v4_pings_on_schedule_and_closes_when_no_pong_comes_in_time() {
        let socket = socket(ProtocolVersion::V4);
        assert!(!socket.heartbeat_due(0, INTERVAL, TIMEOUT));
        assert!(
            sent(&socket).is_empty(),
            "nothing before the heartbeat starts"
        );

        socket.start_heartbeat(100, INTERVAL);
        assert!(!socket.heartbeat_due(100, INTERVAL, TIMEOUT));
        assert!(!socket.heartbeat_due(1_099, INTERVAL, TIMEOUT));
        assert!(
            sent(&socket).is_empty(),
            "the first ping one interval after the handshake"
        );
        assert!(!socket.heartbeat_due(1_100, INTERVAL, TIMEOUT));
        assert_eq!(sent(&socket), ["2"]);
        assert!(!socket.heartbeat_due(1_599, INTERVAL, TIMEOUT));
        assert!(sent(&socket).is_empty(), "one ping at a time");
        socket.heard(1_300);
        assert!(!socket.heartbeat_due(2_099, INTERVAL, TIMEOUT));
        assert!(
            sent(&socket).is_empty(),
            "the next ping waits for the interval"
        );
        assert!(!socket.heartbeat_due(2_100, INTERVAL, TIMEOUT));
        assert_eq!(sent(&socket), ["2"]);
        assert!(!socket.heartbeat_due(2_599, INTERVAL, TIMEOUT));
        assert!(
            socket.heartbeat_due(2_600, INTERVAL, TIMEOUT),
            "no pong within the timeout"
        );
    }

    #[test]
    fn v4_pauses_while_upgrading() {
        let socket = socket(ProtocolVersion::V4);
        socket.start_heartbeat(0, INTERVAL);
        socket.start_upgrade();
        assert!(!socket.heartbeat_due(INTERVAL, INTERVAL, TIMEOUT));
        assert!(!socket.heartbeat_due(5_000, INTERVAL, TIMEOUT));
        assert!(sent(&socket).is_empty());
        socket.upgrade_to_websocket();
        assert!(!socket.heartbeat_due(5_000, INTERVAL, TIMEOUT));
        assert_eq!(sent(&socket), ["2"]);
    }

    #[test]
    fn v4_a_pong_before_any_ping_changes_nothing() {
        let socket = socket(ProtocolVersion::V4);
        socket.start_heartbeat(0, INTERVAL);
        socket.heard(0);
        assert!(!socket.heartbeat_due(INTERVAL, INTERVAL, TIMEOUT));
        assert_eq!(sent(&socket), ["2"]);
        assert!(socket.heartbeat_due(INTERVAL + TIMEOUT, INTERVAL, TIMEOUT));
    }

    #[test]
    fn v3_answers_pings_and_closes_when_the_client_stops_pinging() {
        let socket = socket(ProtocolVersion::V3);
        socket.start_heartbeat(0, INTERVAL);
        assert!(!socket.heartbeat_due(1_499, INTERVAL, TIMEOUT));
        socket.heard(1_000);
        assert_eq!(sent(&socket), ["3"], "a pong for the client's ping");
        assert!(!socket.heartbeat_due(2_499, INTERVAL, TIMEOUT));
        assert!(socket.heartbeat_due(2_500, INTERVAL, TIMEOUT));
    }
}
