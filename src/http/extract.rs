//! Extractors whose rejections are [`Error`]s, so a bad request gets the same envelope as
//! every other failure, with the offending field named:
//!
//! * [`Json`]: 415 without a JSON content type, 413 over the body limit, 400 for bytes that
//!   are not JSON, 422 with `details.field` for JSON of the wrong shape (wrong type, unknown
//!   enum value, out-of-range coordinate, missing or unknown field);
//! * [`Query`] and [`Path`]: 400 naming the parameter;
//! * all of them: 422 naming the field or parameter for text holding a control character
//!   ([`crate::domain::text`]);
//! * [`Caller`]: the authenticated user, 401 when the bearer token is missing or refused.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::text;
use crate::error::{Error, Result};

/// A JSON body parsed into `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        if !has_json_content_type(&req) {
            return Err(not_json());
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// A JSON body parsed into `T`, or `T::default()` when the request has no body at all (an
/// endpoint whose body is optional).
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let json = has_json_content_type(&req);
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(not_json());
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// 415: a body that does not say it is JSON.
fn not_json() -> Error {
    Error::UnsupportedMediaType("send the body as JSON with Content-Type: application/json".into())
}

/// Parses a JSON document, naming the field of the first problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // A shape error in a document that is not JSON at all is a syntax error first.
        let syntax = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).err();
        match syntax {
            // Well-formed JSON of the wrong shape. serde_json reports a value of the wrong
            // JSON type for an enum (a number for `role`) as "expected value", a syntax error.
            None => {
                let message = match strip_position(&inner.to_string()) {
                    message if message == "expected value" => "invalid type: expected a string".to_owned(),
                    message => message,
                };
                Error::validation(field_name(&path, &message), message)
            }
            Some(syntax) => Error::MalformedJson(strip_position(&syntax.to_string())),
        }
    })?;
    deserializer.end().map_err(|err| Error::MalformedJson(strip_position(&err.to_string())))?;
    if text::may_hold_control_characters(bytes) {
        let document: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|err| Error::MalformedJson(strip_position(&err.to_string())))?;
        text::control_character_in(&document)?;
    }
    Ok(value)
}

/// The dotted path of the field an error is about. serde reports a missing field at its
/// parent's path, naming the field only in the message.
pub(crate) fn field_name(path: &str, message: &str) -> String {
    let missing = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(field)) => field.to_owned(),
        (parent, Some(field)) => format!("{parent}.{field}"),
        (".", None) => "body".to_owned(),
        (path, None) => path.to_owned(),
    }
}

/// serde_json ends messages with " at line L column C": noise for an API client.
pub(crate) fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

fn has_json_content_type(req: &Request) -> bool {
    let Some(content_type) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The request's body, at most the configured limit: 413 as the bytes pass it, or at once
/// when the request declares a longer one (it used to wait for bytes that never came, and
/// answered 408 after the request timeout).
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes> {
    let limit = body_limit(&req);
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if limit > 0 && declared.is_some_and(|length| length > limit as u64) {
        return Err(Error::PayloadTooLarge { limit });
    }
    Bytes::from_request(req, state).await.map_err(|rejection| body_error(rejection, limit))
}

/// The configured body limit, if the request passed through the limit layer.
fn body_limit(req: &Request) -> usize {
    req.extensions().get::<BodyLimit>().map_or(0, |limit| limit.0)
}

/// Set on each request by the router so 413 answers can say what the limit is.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

fn body_error(rejection: BytesRejection, limit: usize) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge { limit }
    } else {
        Error::BadRequest { code: "BAD_BODY", message: "the request body could not be read".into() }
    }
}

/// A query string parsed into `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let value = axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection| Error::BadRequest { code: "INVALID_QUERY", message: rejection.body_text() })?;
        // A control character can only come percent-encoded.
        if parts.uri.query().is_some_and(|query| query.contains('%')) {
            let axum::extract::Query(pairs) =
                axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
                    .map_err(|rejection| Error::BadRequest { code: "INVALID_QUERY", message: rejection.body_text() })?;
            for (name, value) in &pairs {
                text::check(name, value)?;
            }
        }
        Ok(value)
    }
}

/// Path parameters parsed into `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let value = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection| Error::BadRequest { code: "INVALID_PATH", message: rejection.body_text() })?;
        // A control character can only come percent-encoded.
        if parts.uri.path().contains('%') {
            let params = axum::extract::RawPathParams::from_request_parts(parts, state)
                .await
                .map_err(|rejection| Error::BadRequest { code: "INVALID_PATH", message: rejection.body_text() })?;
            for (name, value) in &params {
                text::check(name, value)?;
            }
        }
        Ok(value)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(*caller);
        }
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Error::unauthorized("MISSING_TOKEN", "send Authorization: Bearer <access token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Error::unauthorized("INVALID_TOKEN", "the Authorization header must be Bearer <token>"))?;
        let caller = state.auth.authenticate(token).await?;
        parts.extensions.insert(caller);
        if crate::traces::tracing_on() {
            let span = tracing::Span::current();
            span.record("user.id", tracing::field::display(caller.user_id));
            if caller.role == crate::domain::Role::Pilot {
                span.record("pilot_id", tracing::field::display(caller.user_id));
            }
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LatLng, VehicleType};

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Trip {
        pickup: LatLng,
        vehicle_type: VehicleType,
        seats: u8,
    }

    fn field_of(body: &str) -> (String, String) {
        match parse_json::<Trip>(body.as_bytes()).unwrap_err() {
            Error::Validation { field, message } => (field, message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn names_the_field_of_each_kind_of_problem() {
        let ok = r#"{"pickup":{"lat":12.9,"lng":77.6},"vehicle_type":"bike","seats":1}"#;
        assert!(parse_json::<Trip>(ok.as_bytes()).is_ok());
        let cases = [
            (r#"{"pickup":{"lat":95,"lng":77.6},"vehicle_type":"bike","seats":1}"#, "pickup", "lat must be"),
            (r#"{"pickup":{"lat":12.9,"lng":77.6},"vehicle_type":"car","seats":1}"#, "vehicle_type", "unknown variant"),
            (r#"{"pickup":{"lat":12.9,"lng":77.6},"vehicle_type":"bike","seats":"one"}"#, "seats", "invalid type"),
            (r#"{"pickup":{"lat":12.9,"lng":77.6},"vehicle_type":"bike","seats":300}"#, "seats", "invalid value"),
            (r#"{"pickup":{"lat":12.9,"lng":77.6},"vehicle_type":"bike"}"#, "seats", "missing field"),
            (r#"{"pickup":{"lat":12.9},"vehicle_type":"bike","seats":1}"#, "pickup.lng", "missing field"),
            (r#"{"pickup":{"lat":12.9,"lng":77.6},"vehicle_type":"bike","seats":1,"x":1}"#, "x", "unknown field"),
        ];
        for (body, field, message) in cases {
            let (got_field, got_message) = field_of(body);
            assert_eq!(got_field, field, "{body}");
            assert!(got_message.starts_with(message), "{body}: {got_message}");
            assert!(!got_message.contains("line 1"), "{got_message}");
        }
    }

    #[test]
    fn syntax_errors_are_malformed_json() {
        for body in ["{", "not json", r#"{"a":1} trailing"#, "", r#"{"pickup": 1} {}"#] {
            assert!(matches!(parse_json::<serde_json::Value>(body.as_bytes()), Err(Error::MalformedJson(_))), "{body}");
        }
    }
}
