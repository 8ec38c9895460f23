//! Sockets outlive the check at connect, so the gateway ends them when their session does:
//! when the session is revoked (logout, a reused refresh token, a disabled account) on any
//! node, and when the access token they connected with expires without the app sending a
//! fresher one (`auth:refresh`). The socket is told why (`session:ended {code, message}`,
//! the codes a refused connect uses) and disconnected; Socket.io clients do not reconnect by
//! themselves after that, so the app logs in or refreshes first.
//!
//! Revocations made on this node end their sockets at once; the others, and expiries, at
//! the next check (`realtime.session_check_ms`), which reads the revocations since the last
//! one from the database (where every node writes them).

use std::collections::HashSet;
use tracing::Instrument as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::socket::SharedHandlers;

use crate::auth::Caller;
use crate::error::Error;
use crate::ids::SessionId;
use crate::realtime::budget::Class;
use crate::realtime::{CUSTOMER_NS, DISPATCH_NS, Gateway, PILOT_NS, ack, close_with, spend};

/// How far back each check reads revocations before the previous one: other nodes' clocks
/// may be behind this one's.
const CLOCK_SKEW_SECS: i64 = 60;

/// Adds `auth:refresh` to a namespace's handlers.
pub fn handlers(namespace: &'static str, handlers: SharedHandlers) -> SharedHandlers {
    handlers.on(
        "auth:refresh",
        move |socket: SocketRef,
              data: TryData<Value>,
              ack: AckSender,
              state: State<Gateway>,
              caller: Extension<Caller>| refresh(namespace, socket, data, ack, state, caller),
    )
}

#[derive(Debug, Serialize)]
struct Refreshed {
    expires_at: DateTime<Utc>,
}

/// `auth:refresh {token}`: a fresher access token of the same user and role keeps the
/// socket open past the old one's expiry.
async fn refresh(
    namespace: &'static str,
    socket: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(gateway): State<Gateway>,
    Extension(caller): Extension<Caller>,
) {
    let Some((ack, span)) = spend(&socket, &gateway, &caller, namespace, "auth:refresh", Class::Session, ack) else {
        return;
    };
    let result = async {
        let data = data.map_err(|_| Error::validation("token", "send {token}: a fresh access token"))?;
        let token = data.get("token").and_then(Value::as_str).filter(|token| !token.is_empty());
        let token = token.ok_or_else(|| Error::validation("token", "send {token}: a fresh access token"))?;
        let fresh = gateway.app.auth.authenticate(token).await?;
        if fresh.user_id != caller.user_id || fresh.role != caller.role {
            return Err(Error::forbidden("TOKEN_MISMATCH", "the token is another user's; connect again with it"));
        }
        socket.extensions.insert(fresh);
        let expires_at = DateTime::from_timestamp(fresh.expires_at, 0).unwrap_or_default();
        Ok(Refreshed { expires_at })
    }
    .instrument(span)
    .await;
    ack::send(ack, namespace, "auth:refresh", &result);
}

/// Ends the sockets whose session was revoked since `since` (on any node) or whose token
/// has expired by `now`. On success `since` moves to `now`; when the database cannot be
/// read, only expiries are checked, and the next check reads from the same point.
pub async fn check(io: &SocketIo, gateway: &Gateway, since: &mut DateTime<Utc>, now: DateTime<Utc>) {
    let from = *since - chrono::Duration::seconds(CLOCK_SKEW_SECS);
    let revoked: HashSet<SessionId> = match gateway.app.auth.revocations().since(from).await {
        Ok(sessions) => {
            *since = now;
            sessions.into_iter().collect()
        }
        Err(err) => {
            tracing::warn!(error = %err, "could not read revoked sessions; checking expiries only");
            HashSet::new()
        }
    };
    for namespace in [PILOT_NS, CUSTOMER_NS, DISPATCH_NS] {
        let Some(operators) = io.of(namespace) else { continue };
        for socket in operators.sockets() {
            let Some(caller) = socket.extensions.get::<Caller>() else { continue };
            let (code, message) = if revoked.contains(&caller.session) {
                ("TOKEN_REVOKED", "the session has ended; log in again")
            } else if caller.expires_at <= now.timestamp() {
                ("TOKEN_EXPIRED", "the access token has expired; refresh it and connect again")
            } else {
                continue;
            };
            tracing::info!(socket = %socket.id, namespace, user_id = %caller.user_id, code, "session ended; disconnecting");
            close_with(&socket, namespace, "session:ended", code, message);
        }
    }
}
