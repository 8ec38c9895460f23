//! Who may connect where. The access token comes in the CONNECT packet's auth payload
//! (`{token}`, Socket.io v3+ clients) or, for EIO3 clients that have no auth payload, as
//! `token` in the query string; it is verified exactly as REST verifies a bearer token
//! (signature, expiry, revocation). A refusal is a `connect_error` whose message is
//! `"CODE: human text"` (socketioxide sends `{message}` only, so the code leads the text).
//! The verified [`Caller`] is kept in the socket's extensions for its handlers, which are
//! registered here too, before the CONNECT answer goes out (see `realtime::Realtime::attach`).

use std::fmt;

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, State, TryData};

use crate::auth::Caller;
use crate::domain::Role;
use crate::error::Error;
use crate::realtime::{CUSTOMER_NS, DISPATCH_NS, Gateway, PILOT_NS};

/// Why a connection was refused, as the client reads it.
#[derive(Debug)]
pub struct Refusal {
    code: &'static str,
    message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<Error> for Refusal {
    fn from(err: Error) -> Self {
        let body = err.body();
        Self { code: body.code, message: body.message }
    }
}

pub async fn pilot(
    io: SocketIo,
    socket: SocketRef,
    State(gateway): State<Gateway>,
    auth: TryData<Value>,
) -> Result<(), Refusal> {
    let caller = admit(&socket, &gateway, auth, PILOT_NS, &[Role::Pilot]).await?;
    super::opened(&io, &socket, &gateway, &caller, PILOT_NS);
    super::pilot::setup(&socket, &gateway, &caller);
    Ok(())
}

pub async fn customer(
    io: SocketIo,
    socket: SocketRef,
    State(gateway): State<Gateway>,
    auth: TryData<Value>,
) -> Result<(), Refusal> {
    let caller = admit(&socket, &gateway, auth, CUSTOMER_NS, &[Role::Customer]).await?;
    super::opened(&io, &socket, &gateway, &caller, CUSTOMER_NS);
    super::customer::setup(&socket, &gateway);
    Ok(())
}

pub async fn dispatcher(
    io: SocketIo,
    socket: SocketRef,
    State(gateway): State<Gateway>,
    auth: TryData<Value>,
) -> Result<(), Refusal> {
    let caller = admit(&socket, &gateway, auth, DISPATCH_NS, &[Role::Dispatcher, Role::Admin]).await?;
    super::opened(&io, &socket, &gateway, &caller, DISPATCH_NS);
    super::dispatch::setup(&socket, &gateway);
    Ok(())
}

/// The main namespace `/` exists for EIO3 clients only (they must be in it to reach the
/// others); it offers nothing, and needs no token. So that a connection cannot stay on it
/// for ever without one, an EIO3 connection that has joined none of the namespaces within
/// `realtime.connect_timeout_ms` is closed, as an EIO4 connection that sends no CONNECT is.
pub async fn only_eio3(io: SocketIo, socket: SocketRef, State(gateway): State<Gateway>) -> Result<(), Refusal> {
    if socket.protocol() != socketioxide::ProtocolVersion::V4 {
        return Err(Refusal { code: "NO_SUCH_NAMESPACE", message: "connect to /pilot, /customer or /dispatch".into() });
    }
    socket.extensions.insert(super::admission::RootEvents::default());
    socket.on_shared(gateway.handlers.root.clone());
    let timeout = std::time::Duration::from_millis(gateway.app.config.realtime.connect_timeout_ms);
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let joined = [PILOT_NS, CUSTOMER_NS, DISPATCH_NS]
            .into_iter()
            .any(|namespace| io.of(namespace).is_some_and(|sockets| sockets.get_socket(socket.id).is_some()));
        if socket.connected() && !joined {
            metrics::counter!("socket_disconnects_total", "namespace" => "/", "reason" => "CONNECT_TIMEOUT")
                .increment(1);
            socket.close_connection();
        }
    });
    Ok(())
}

async fn admit(
    socket: &SocketRef,
    gateway: &Gateway,
    TryData(auth): TryData<Value>,
    namespace: &'static str,
    roles: &[Role],
) -> Result<Caller, Refusal> {
    let result = match authenticate(socket, gateway, auth.ok(), roles).await {
        Ok(caller) => count_address(socket, gateway).map(|()| caller),
        Err(refusal) => Err(refusal),
    };
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(refusal) => refusal.code,
    };
    metrics::counter!("socket_connects_total", "namespace" => namespace, "outcome" => outcome).increment(1);
    let caller = result?;
    socket.extensions.insert(caller);
    Ok(caller)
}

/// Behind a proxy, counts the socket under the client address the proxy forwards (its
/// connections all come from the proxy, so `server.max_connections_per_ip` bounds sockets
/// per forwarded address instead), refusing one over the bound.
fn count_address(socket: &SocketRef, gateway: &Gateway) -> Result<(), Refusal> {
    if !gateway.budgets.per_address() {
        return Ok(());
    }
    let header = &gateway.app.config.rate_limit.client_ip_header;
    let Some(address) = crate::http::ratelimit::forwarded_ip(&socket.req_parts().headers, header) else {
        return Ok(());
    };
    if !gateway.budgets.address_opened(address) {
        return Err(Refusal {
            code: "TOO_MANY_CONNECTIONS",
            message: "too many open connections from this address; close some and connect again".into(),
        });
    }
    socket.extensions.insert(super::budget::Forwarded(address));
    Ok(())
}

async fn authenticate(
    socket: &SocketRef,
    gateway: &Gateway,
    auth: Option<Value>,
    roles: &[Role],
) -> Result<Caller, Refusal> {
    let token = auth
        .as_ref()
        .and_then(|auth| auth.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| query_token(socket.req_parts().uri.query()))
        .filter(|token| !token.is_empty())
        .ok_or_else(|| Refusal {
            code: "MISSING_TOKEN",
            message: "send the access token as auth {token} (or ?token= for EIO3 clients)".into(),
        })?;
    let caller = gateway.app.auth.authenticate(&token).await?;
    caller.require(roles)?;
    Ok(caller)
}

/// `token` from a query string, percent-decoded.
fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').filter_map(|pair| pair.split_once('=')).find(|(key, _)| *key == "token").map(|(_, v)| decode(v))
}

/// Percent-decoding (and `+` as space) of one query component.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes.get(at + 1..at + 3).filter(|pair| pair.iter().all(u8::is_ascii_hexdigit));
        match (bytes[at], hex) {
            (b'%', Some(pair)) => {
                let digits = std::str::from_utf8(pair).unwrap_or("00");
                out.push(u8::from_str_radix(digits, 16).unwrap_or(0));
                at += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                at += 1;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_query_decoded() {
        assert_eq!(query_token(Some("EIO=3&transport=polling&token=a.b%2Dc")).as_deref(), Some("a.b-c"));
        assert_eq!(query_token(Some("EIO=4")), None);
        assert_eq!(query_token(None), None);
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%41"), "%zzA");
    }

    #[test]
    fn refusals_lead_with_their_code() {
        let refusal = Refusal::from(Error::forbidden("FORBIDDEN_ROLE", "pilots only"));
        assert_eq!(refusal.to_string(), "FORBIDDEN_ROLE: pilots only");
    }
}
