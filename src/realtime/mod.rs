//! The realtime gateway: Socket.io (socketioxide) on the same server and port as the REST
//! API, path `/socket.io/`, protocol v5 (EIO4) and v4 (EIO3), WebSocket and long-polling.
//!
//! | namespace | who | file |
//! |---|---|---|
//! | `/pilot` | pilots | [`pilot`]: location batches into the grid, status, offers, trip steps |
//! | `/customer` | customers | [`customer`]: watch an order (snapshot + replay by `seq`), live pilot position |
//! | `/dispatch` | dispatchers, admins | [`dispatch`]: a viewport of pilots and open orders, coalesced deltas, supply; [`board`]: the live order board |
//!
//! On every namespace, [`sessions`] ends a socket when its session does (revoked, or its
//! token expired without `auth:refresh`), telling it why with `session:ended`; every event
//! spends from its user's [`budget`], and `admission` bounds each user's sockets and closes
//! floods, telling them why with `closing`.
//!
//! The event contract is `docs/events.md`. Every ack is `{ok: true, data}` or
//! `{ok: false, error: {code, message}}` ([`ack`]); a connection refused at connect gets a
//! `connect_error` whose `message` is `"CODE: human text"` ([`auth`]).
//!
//! Invariants:
//! * a slow client never slows the server: every emit is to one socket's bounded buffer, never
//!   waited on; positions are volatile (the newest replaces one not yet sent, counted), a
//!   socket too full for an order event is disconnected (its app replays by `seq`), viewport
//!   deltas are recomputed from state;
//! * an event reaches its sockets on the task that made it (the `location` handler, the
//!   order's request, the matchmaker): the relay emits there, with no queue or task between;
//! * the relay's hold on the `SocketIo` (whose handlers hold the app's state) ends when
//!   [`Realtime::run`] stops or the gateway is dropped, so no cycle outlives the server.

pub mod ack;
mod admission;
pub use admission::event_span;
mod auth;
mod board;
pub mod budget;
mod customer;
mod dispatch;
mod pilot;
mod relay;
mod sessions;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde::Deserialize;
use socketioxide::handler::ConnectHandler as _;
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::SharedHandlers;
use socketioxide::{ParserConfig, SocketIo};
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::orders::tracking::Tracking;
use admission::{close_with, closed, opened, spend, unknown};
use board::Board;
use budget::Budgets;
use dispatch::Viewports;
use relay::Relay;

pub const PILOT_NS: &str = "/pilot";
pub const CUSTOMER_NS: &str = "/customer";
pub const DISPATCH_NS: &str = "/dispatch";

/// `[realtime]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeConfig {
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub max_payload_bytes: u64,
    pub max_polling_body_bytes: u64,
    pub max_binary_attachments: usize,
    pub max_buffer_size: usize,
    pub max_buffer_bytes: usize,
    pub stall_timeout_ms: u64,
    pub ws_read_buffer_bytes: usize,
    pub max_sockets_per_user: usize,
    pub budgets: budget::BudgetsConfig,
    pub viewport_interval_ms: u64,
    pub viewport_max_pilots: usize,
    pub board_max_rows: u32,
    pub session_check_ms: u64,
}

/// What socket handlers reach through socketioxide's state.
#[derive(Clone)]
pub struct Gateway {
    pub app: AppState,
    viewports: Arc<Viewports>,
    board: Arc<Board>,
    tracking: Arc<Tracking>,
    handlers: Arc<Handlers>,
    budgets: Arc<Budgets>,
}

/// Each namespace's message handlers, made once and shared by all its sockets.
struct Handlers {
    /// `/`: only the fallback, for EIO3 clients' events there.
    root: Arc<SharedHandlers>,
    pilot: Arc<SharedHandlers>,
    customer: Arc<SharedHandlers>,
    dispatch: Arc<SharedHandlers>,
}

/// The running gateway: the `SocketIo` handle, the relay and the dispatchers' viewports.
pub struct Realtime {
    io: SocketIo,
    gateway: Gateway,
    grid: Arc<crate::grid::PilotIndex>,
    viewports: Arc<Viewports>,
    relay: Arc<Relay>,
    interval: Duration,
    /// Most pilots one viewport frame lists.
    limit: usize,
    budgets: Arc<Budgets>,
}

impl Realtime {
    /// Builds the Socket.io layer for `state`, registers the namespaces, and subscribes to
    /// order changes and pilot moves.
    pub async fn attach(state: &AppState) -> anyhow::Result<(SocketIoLayer, Self)> {
        let config = &state.config.realtime;
        let viewports = Arc::new(Viewports::default());
        let tracking = state.tracking.clone();
        let handlers = Arc::new(Handlers {
            root: Arc::new(SharedHandlers::new().fallback(admission::root_event)),
            pilot: Arc::new(pilot::handlers()),
            customer: Arc::new(customer::handlers()),
            dispatch: Arc::new(dispatch::handlers()),
        });
        // Behind a proxy, TCP connections all come from the proxy: the bound on connections
        // per client address applies to sockets, by the address the proxy forwards.
        let per_address = (!state.config.rate_limit.client_ip_header.is_empty())
            .then_some(state.config.server.max_connections_per_ip);
        let budgets = Arc::new(Budgets::new(&config.budgets, config.max_sockets_per_user, per_address));
        let board = Arc::new(Board::default());
        let gateway = Gateway {
            app: state.clone(),
            viewports: viewports.clone(),
            board: board.clone(),
            tracking: tracking.clone(),
            handlers,
            budgets: budgets.clone(),
        };
        // Events are JSON; an event with binary attachments is answered BAD_PAYLOAD. Up to
        // max_binary_attachments of them, together no larger than one message, are read for
        // that; more close the connection.
        let parser = ParserConfig::common()
            .max_incoming_binaries(config.max_binary_attachments)
            .max_incoming_binary_buf_size(usize::try_from(config.max_payload_bytes).unwrap_or(usize::MAX))
            .packet_completion_timeout(Duration::from_millis(config.connect_timeout_ms));
        let (layer, io) = SocketIo::builder()
            .ping_interval(Duration::from_millis(config.ping_interval_ms))
            .ping_timeout(Duration::from_millis(config.ping_timeout_ms))
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            // A long-polling body may carry a client's whole offline buffer; a WebSocket
            // message is one event.
            .max_payload(config.max_polling_body_bytes)
            .ws_max_message_size(usize::try_from(config.max_payload_bytes).unwrap_or(usize::MAX))
            .ws_max_frame_size(usize::try_from(config.max_payload_bytes).unwrap_or(usize::MAX))
            .ws_read_buffer_size(config.ws_read_buffer_bytes)
            .max_buffer_size(config.max_buffer_size)
            .max_buffer_bytes(config.max_buffer_bytes)
            .stall_timeout(Duration::from_millis(config.stall_timeout_ms))
            .with_parser(parser)
            .with_state(gateway.clone())
            .build_layer();
        // EIO3 clients join the main namespace implicitly, before any other: without it their
        // connection is closed at once. Nothing happens there, and v5 clients are refused.
        io.ns("/", (async || {}).with(auth::only_eio3));
        // Each namespace's "middleware" admits the socket and registers its handlers. That
        // must happen there, before socketioxide sends the CONNECT answer: a connect handler
        // runs as a task after it, and an event the client sends at once could find no handler.
        io.ns(PILOT_NS, pilot::connected.with(auth::pilot));
        io.ns(CUSTOMER_NS, (async || {}).with(auth::customer));
        io.ns(DISPATCH_NS, (async || {}).with(auth::dispatcher));

        let pricing = crate::orders::pricing::TariffPricing::new(&state.config.pricing);
        let relay = Arc::new(Relay::new(tracking, pricing, io.clone()));
        state.orders.subscribe(relay.clone());
        state.matchmaker.subscribe(relay.clone());
        state.fleet.subscribe(relay.clone());
        state.orders.subscribe(board.clone());
        state.matchmaker.subscribe(board.clone());
        if let Some(cluster) = &state.cluster {
            cluster.subscribe_offers(relay.clone());
            cluster.subscribe_moves(relay.clone());
            cluster.subscribe_offers(board);
        }
        let interval = Duration::from_millis(config.viewport_interval_ms);
        let grid = state.grid.clone();
        let limit = config.viewport_max_pilots;
        Ok((layer, Self { io, gateway, grid, viewports, relay, interval, limit, budgets }))
    }

    /// The Socket.io handle (to close every socket at shutdown).
    pub fn io(&self) -> SocketIo {
        self.io.clone()
    }

    /// Ticks the dispatchers' viewports and order boards, ends the sockets of ended sessions
    /// and forgets idle users' budgets, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let budgets = self.budgets.clone();
        let forget = crate::app::every(BUDGETS_UPKEEP, stop.clone(), move || budgets.forget_idle());
        tokio::join!(self.viewports(&stop), self.boards(&stop), self.sessions(&stop), forget);
    }

    async fn viewports(&self, stop: &CancellationToken) {
        crate::app::every_awaited(self.interval, stop, || async {
            dispatch::tick(&self.io, &self.grid, &self.viewports, self.limit);
        })
        .await;
    }

    /// The order boards' deltas, on their own clock: their database read never holds up the
    /// viewports' frames.
    async fn boards(&self, stop: &CancellationToken) {
        let store = self.gateway.app.store.as_ref();
        crate::app::every_awaited(self.interval, stop, || self.gateway.board.tick(&self.io, store)).await;
    }

    async fn sessions(&self, stop: &CancellationToken) {
        let app = &self.gateway.app;
        let mut checks = tokio::time::interval(Duration::from_millis(app.config.realtime.session_check_ms));
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checks.tick().await; // the first tick is now: no socket is open yet
        let mut since = app.clock.now();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = app.auth.revocations().revoked_here() => {}
                _ = checks.tick() => {}
            }
            sessions::check(&self.io, &self.gateway, &mut since, app.clock.now()).await;
        }
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        self.relay.detach();
    }
}

/// How often users whose budgets are full again are forgotten.
const BUDGETS_UPKEEP: Duration = Duration::from_secs(60);

/// Counts an event received on `namespace`.
fn count_in(namespace: &'static str, event: &'static str) {
    static IN: EventCounters = EventCounters::new(
        |namespace, event| metrics::counter!("socket_events_in_total", "namespace" => namespace, "event" => event),
    );
    IN.get(namespace, event).increment(1);
}

/// Counts an event sent, or a packet dropped because the socket's buffer was full.
pub(crate) fn count_out(namespace: &'static str, event: &'static str, sent: bool) {
    static OUT: EventCounters = EventCounters::new(
        |namespace, event| metrics::counter!("socket_events_out_total", "namespace" => namespace, "event" => event),
    );
    static DROPPED: EventCounters = EventCounters::new(
        |namespace, event| metrics::counter!("socket_dropped_total", "namespace" => namespace, "event" => event),
    );
    let family = if sent { &OUT } else { &DROPPED };
    family.get(namespace, event).increment(1);
}

/// The handles of one counter family by namespace and event, each registered once (by
/// `register`). `metrics::counter!` with labels known only at run time builds its key anew
/// on every call (allocations and a hash of every label), and these count every position
/// relayed and every ack.
struct EventCounters {
    register: fn(&'static str, &'static str) -> metrics::Counter,
    handles: LazyLock<parking_lot::RwLock<HashMap<(&'static str, &'static str), metrics::Counter>>>,
}

impl EventCounters {
    const fn new(register: fn(&'static str, &'static str) -> metrics::Counter) -> Self {
        Self { register, handles: LazyLock::new(Default::default) }
    }

    fn get(&self, namespace: &'static str, event: &'static str) -> metrics::Counter {
        if let Some(counter) = self.handles.read().get(&(namespace, event)) {
            return counter.clone();
        }
        // The process's recorder first: a handle taken before it is installed would count
        // nothing, for ever.
        crate::telemetry::metrics();
        self.handles.write().entry((namespace, event)).or_insert_with(|| (self.register)(namespace, event)).clone()
    }
}

/// Tracks connected sockets per namespace.
fn connected(namespace: &'static str, delta: f64) {
    metrics::gauge!("socket_connected", "namespace" => namespace).increment(delta);
}

/// The headers a Socket.io request keeps: the engine reads the WebSocket key to accept an
/// upgrade, and the content type and length of a long-polling post (a body announced over
/// the limit is refused before it is read); behind a proxy, admission reads the client's
/// address from the header `rate_limit.client_ip_header` names (one of the last two). Nothing
/// else reads them (the token comes in the CONNECT payload, or the query for EIO3 clients).
const SOCKET_IO_HEADERS: [axum::http::HeaderName; 5] = [
    axum::http::header::SEC_WEBSOCKET_KEY,
    axum::http::header::CONTENT_TYPE,
    axum::http::header::CONTENT_LENGTH,
    axum::http::HeaderName::from_static("x-forwarded-for"),
    axum::http::HeaderName::from_static("x-real-ip"),
];

/// A Socket.io request with its URI copied into an allocation of its own and only the headers
/// the engine reads, copied too. The engine keeps a connection's request for the
/// connection's whole life, and hyper's parsed headers are slices of the connection's 8 KiB
/// read buffer: kept, they pin that buffer to every idle socket, and a copy of all of them
/// costs about 0.7 KiB a socket. Other requests pass untouched.
pub async fn compact_request(request: axum::extract::Request) -> axum::extract::Request {
    if !request.uri().path().starts_with("/socket.io") {
        return request;
    }
    let (mut parts, body) = request.into_parts();
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    let mut headers = axum::http::HeaderMap::with_capacity(SOCKET_IO_HEADERS.len());
    for name in SOCKET_IO_HEADERS {
        if let Some(value) =
            parts.headers.get(&name).and_then(|v| axum::http::HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            headers.insert(name, value);
        }
    }
    parts.headers = headers;
    axum::extract::Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, header};

    use super::compact_request;

    fn request(uri: &str) -> Request<Body> {
        Request::builder()
            .uri(uri)
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::CONTENT_LENGTH, "0")
            .header(header::USER_AGENT, "pilot-app/1.0")
            .header(header::COOKIE, "a=b")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn socket_io_requests_keep_only_the_headers_the_engine_reads() {
        let kept = compact_request(request("/socket.io/?EIO=3&transport=websocket&token=t")).await;
        assert_eq!(kept.uri(), "/socket.io/?EIO=3&transport=websocket&token=t");
        let names: Vec<_> = kept.headers().keys().map(|name| name.as_str()).collect();
        assert_eq!(names, ["sec-websocket-key", "content-type", "content-length"]);
        assert_eq!(kept.headers()[header::SEC_WEBSOCKET_KEY], "dGhlIHNhbXBsZSBub25jZQ==");

        let other = compact_request(request("/api/v1/orders")).await;
        assert_eq!(other.headers().len(), 5, "other requests pass untouched");
    }
}
