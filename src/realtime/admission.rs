//! What the gateway lets each socket and each event in for, and how it ends a socket.
//!
//! * [`opened`] / [`closed`]: a socket admitted and gone, counted per namespace and per user
//!   (the oldest of a user's sockets over `realtime.max_sockets_per_user` is closed).
//! * [`spend`]: every event a client sends spends from its user's budget ([`super::budget`]);
//!   over it, `RATE_LIMITED`, and a flood closes the socket. [`unknown`]: the events no
//!   handler takes; [`root_event`]: every event on `/`, budgeted per connection.
//! * [`close_with`]: the server's reasons to close a socket, told to it (`closing` or
//!   `session:ended` `{code, message}`) and counted in `socket_disconnects_total`.

use std::sync::atomic::Ordering::Relaxed;

use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Extension, SocketRef, State};
use socketioxide::socket::DisconnectReason;
use tracing::Span;
use tracing::field::Empty;

use super::budget::{self, Budgets, Class, Verdict};
use super::{CUSTOMER_NS, DISPATCH_NS, Gateway, PILOT_NS, ack, connected, count_in, count_out};
use crate::auth::Caller;
use crate::error::Error;

/// Counts an event received and spends it from the caller's budget ([`budget`](super::budget)).
/// `Some((ack, span))` when its handler may go on, in `span` (the event's, for traces: see
/// [`event_span`]); otherwise the event has been answered `RATE_LIMITED` (and, for a flood,
/// the socket closed).
pub(super) fn spend(
    socket: &SocketRef,
    gateway: &Gateway,
    caller: &Caller,
    namespace: &'static str,
    event: &'static str,
    class: Class,
    ack: AckSender,
) -> Option<(AckSender, Span)> {
    count_in(namespace, event);
    match gateway.budgets.spend(caller.user_id, class) {
        Verdict::Admit => Some((ack, event_span(namespace, event, caller))),
        verdict => {
            metrics::counter!("socket_events_refused_total", "namespace" => namespace, "event" => event).increment(1);
            ack::send(ack, namespace, event, &Err::<(), _>(Error::RateLimited { retry_after_secs: 1 }));
            if verdict == Verdict::Flood {
                flooding(socket, namespace, caller);
            }
            None
        }
    }
}

/// The span of an event a client sent, for traces only (`[telemetry]`; disabled, and free,
/// while they are off). Handlers record the `order_id` or `offer_id` it concerns.
pub fn event_span(namespace: &'static str, event: &'static str, caller: &Caller) -> Span {
    let span = tracing::info_span!(
        target: crate::traces::TRACE_TARGET,
        "socket event",
        otel.name = event,
        otel.kind = "server",
        socket.namespace = namespace,
        user.id = %caller.user_id,
        pilot_id = Empty,
        order_id = Empty,
        offer_id = Empty,
    );
    if namespace == PILOT_NS {
        span.record("pilot_id", tracing::field::display(caller.user_id));
    }
    span
}

/// An event no handler takes: answered `UNKNOWN_EVENT`, and counted as a refusal.
pub(super) async fn unknown(
    socket: SocketRef,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let namespace = namespace_of(&socket);
    count_in(namespace, "unknown");
    let refused = Error::BadRequest { code: "UNKNOWN_EVENT", message: "no such event on this namespace".into() };
    ack::send(ack, namespace, "unknown", &Err::<(), _>(refused));
    if gateway.budgets.refuse(caller.user_id) == Verdict::Flood {
        flooding(&socket, namespace, &caller);
    }
}

/// Events a connection may send on `/` before it is closed as a flood.
const ROOT_REFUSALS: u32 = 20;

/// The events a connection sent on `/`, counted on its socket there.
#[derive(Debug, Clone, Default)]
pub(super) struct RootEvents(std::sync::Arc<std::sync::atomic::AtomicU32>);

/// An event on `/` (where EIO3 clients are before they join a namespace, and where nothing
/// happens): answered `UNKNOWN_EVENT`. No user is known there, so the connection has a budget
/// of its own: past [`ROOT_REFUSALS`] it is closed as a flood. Unhandled, such events were
/// dropped unanswered and unbudgeted: one client sent 95,000 a second, and others felt it.
pub(super) async fn root_event(socket: SocketRef, ack: AckSender) {
    count_in("/", "unknown");
    metrics::counter!("socket_events_refused_total", "namespace" => "/", "event" => "unknown").increment(1);
    let refused =
        Error::BadRequest { code: "UNKNOWN_EVENT", message: "events go to /pilot, /customer or /dispatch".into() };
    ack::send(ack, "/", "unknown", &Err::<(), _>(refused));
    let sent = socket.extensions.get::<RootEvents>().map_or(u32::MAX, |events| events.0.fetch_add(1, Relaxed) + 1);
    if sent > ROOT_REFUSALS {
        tracing::warn!(sid = %socket.id, "event flood on /; closing the connection");
        metrics::counter!("socket_disconnects_total", "namespace" => "/", "reason" => "FLOODING").increment(1);
        let why = serde_json::json!({ "code": "FLOODING", "message": "too many events refused; slow down and connect again" });
        count_out("/", "closing", socket.emit("closing", &why).is_ok());
        socket.close_connection();
    }
}

fn flooding(socket: &SocketRef, namespace: &'static str, caller: &Caller) {
    tracing::warn!(user_id = %caller.user_id, namespace, "event flood; disconnecting the socket");
    close_with(socket, namespace, "closing", "FLOODING", "too many events refused; slow down and connect again");
}

/// The namespace constant a socket is on.
fn namespace_of(socket: &SocketRef) -> &'static str {
    [PILOT_NS, CUSTOMER_NS, DISPATCH_NS].into_iter().find(|ns| *ns == socket.ns()).unwrap_or("/")
}

/// Tells a socket why the server closes it (`event` `{code, message}`, when its buffer has
/// room for it) and disconnects it; counted in `socket_disconnects_total` by `code`.
pub(super) fn close_with(
    socket: &SocketRef,
    namespace: &'static str,
    event: &'static str,
    code: &'static str,
    message: &str,
) {
    metrics::counter!("socket_disconnects_total", "namespace" => namespace, "reason" => code).increment(1);
    // Past the buffer's bound: a client that stopped reading finds why once it reads.
    let sent = socket.clone().disconnect_with(event, &serde_json::json!({ "code": code, "message": message }));
    count_out(namespace, event, sent.is_ok());
}

/// A socket admitted on `namespace`: counted, and the user's oldest socket there closed when
/// it has too many ([`budget`](super::budget)).
pub(super) fn opened(io: &SocketIo, socket: &SocketRef, gateway: &Gateway, caller: &Caller, namespace: &'static str) {
    connected(namespace, 1.0);
    let Some(oldest) = gateway.budgets.opened(caller.user_id, namespace, socket.id) else { return };
    let Some(oldest) = io.of(namespace).and_then(|sockets| sockets.get_socket(oldest)) else { return };
    tracing::info!(user_id = %caller.user_id, namespace, "too many sockets; closing the oldest");
    let most = gateway.app.config.realtime.max_sockets_per_user;
    let message = format!("at most {most} sockets per user on a namespace; a newer one took this one's place");
    close_with(&oldest, namespace, "closing", "TOO_MANY_SOCKETS", &message);
}

/// A socket closed, for `reason`. (Its disconnect handler holds `budgets` only: whatever a
/// handler captures, every idle socket keeps.)
pub(super) fn closed(socket: &SocketRef, budgets: &Budgets, namespace: &'static str, reason: DisconnectReason) {
    if let Some(budget::Forwarded(ip)) = socket.extensions.get::<budget::Forwarded>() {
        budgets.address_closed(ip);
    }
    connected(namespace, -1.0);
    if reason == DisconnectReason::SlowClient {
        // The engine closed it: it stopped reading what it asked for.
        metrics::counter!("socket_disconnects_total", "namespace" => namespace, "reason" => "SLOW_CLIENT").increment(1);
    }
    if let Some(caller) = socket.extensions.get::<Caller>() {
        budgets.closed(caller.user_id, namespace, socket.id);
    }
}
