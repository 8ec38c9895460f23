//! Acks and payloads: every acked event answers `{ok: true, data}` or
//! `{ok: false, error: {code, message}}` with the same stable codes as REST, and every
//! payload is parsed with the offending field named, never with a panic or silence.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use socketioxide::extract::AckSender;
use socketioxide::{SendError, SocketError};

use crate::error::{Error, Result};
use crate::http::extract::{field_name, strip_position};

/// Parses an event's payload into `T`; a wrong shape, or text holding a control character, is
/// `VALIDATION_ERROR` naming the field.
pub fn parse<T: DeserializeOwned>(payload: Value) -> Result<T> {
    crate::domain::text::control_character_in(&payload)?;
    serde_path_to_error::deserialize(payload).map_err(|err| {
        let path = err.path().to_string();
        let message = strip_position(&err.into_inner().to_string());
        Error::validation(field_name(&path, &message), message)
    })
}

/// The ack body for a result, serialised straight from it: `{data, ok: true}`, or
/// [`failure`]'s. No `Value` tree is built for it first (a location ack carries the pilot's
/// whole snapshot, for every batch of every pilot).
struct Reply<'a, T>(&'a Result<T>);

impl<T: Serialize> Serialize for Reply<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match self.0 {
            Ok(data) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("data", data)?;
                map.serialize_entry("ok", &true)?;
                map.end()
            }
            Err(err) => failure(err).serialize(serializer),
        }
    }
}

/// `{ok: false, error}`; internal errors are logged and say nothing of their cause.
pub fn failure(err: &Error) -> Value {
    if let Error::Internal(cause) = err {
        tracing::error!(error = format!("{cause:#}"), "internal error in a socket handler");
    }
    let body = err.body();
    json!({ "ok": false, "error": { "code": body.code, "message": body.message } })
}

/// Sends the ack for `result` (if the client asked for one) and counts failures.
pub fn send<T: Serialize>(ack: AckSender, namespace: &'static str, event: &'static str, result: &Result<T>) {
    if let Err(err) = result {
        metrics::counter!("socket_ack_errors_total", "namespace" => namespace, "event" => event, "code" => err.code())
            .increment(1);
    }
    let sent = ack.send(&Reply(result));
    if let Err(SendError::Serialize(err)) = &sent {
        // Our own types; a bug if it ever happens.
        tracing::error!(namespace, event, error = %err, "an ack could not be serialised");
    }
    super::count_out(namespace, "ack", sent.is_ok());
    if let Err(SendError::Socket(SocketError::InternalChannelFull)) = sent {
        // The socket's buffer had no room for it: its connection has been closed (an ack is
        // delivered or the connection ends, never dropped while the socket stays up).
        metrics::counter!("socket_disconnects_total", "namespace" => namespace, "reason" => "SLOW_CLIENT").increment(1);
    }
}

/// The payload an event must carry: the one JSON argument, or `BAD_PAYLOAD`.
pub fn payload(data: std::result::Result<Value, impl std::fmt::Display>) -> Result<Value> {
    data.map_err(|err| Error::BadRequest {
        code: "BAD_PAYLOAD",
        message: format!("the event needs one JSON object as its argument ({err})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Watch {
        order_id: uuid::Uuid,
        last_seq: Option<i32>,
    }

    #[test]
    fn shape_errors_name_the_field() {
        let err = parse::<Watch>(json!({ "order_id": "nope" })).unwrap_err();
        assert_eq!(err.body().details, Some(json!({ "field": "order_id" })));
        let err = parse::<Watch>(json!({})).unwrap_err();
        assert_eq!(err.body().details, Some(json!({ "field": "order_id" })));
        let err = parse::<Watch>(json!([1, 2])).unwrap_err();
        assert_eq!(err.code(), "VALIDATION_ERROR");
    }

    #[test]
    fn failures_carry_code_and_message() {
        let value = failure(&Error::not_found("ORDER_NOT_FOUND", "no such order"));
        assert_eq!(value, json!({ "ok": false, "error": { "code": "ORDER_NOT_FOUND", "message": "no such order" } }));
        assert_eq!(serde_json::to_value(Reply(&Ok::<_, Error>(1))).unwrap(), json!({ "ok": true, "data": 1 }));
    }
}
