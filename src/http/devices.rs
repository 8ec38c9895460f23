//! Push tokens: an app registers the token its platform gave it, to be told of its orders
//! when it holds no socket (see `notify`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::http::extract::{Json, Path};
use crate::http::response::ok;
use crate::store::{Device, Platform};

/// Longest push token taken, in bytes (FCM's are about 160 characters; Web Push
/// subscriptions longer). The token is the devices table's key: a Postgres index entry holds
/// at most about 2,700 bytes, and a longer token answered 500.
const MAX_TOKEN_BYTES: usize = 2048;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    platform: Platform,
    token: String,
}

/// `POST /devices {platform, token}`: registers the caller's device (again: it is its newest).
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<DeviceBody>,
) -> Result<impl IntoResponse> {
    let token = body.token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || token.chars().any(char::is_whitespace) {
        return Err(Error::validation("token", format!("1 to {MAX_TOKEN_BYTES} bytes, no spaces")));
    }
    let device = Device { token: token.to_owned(), platform: body.platform, user_id: caller.user_id };
    let keep = state.config.notifications.max_devices;
    state.store.register_device(&device, caller.session, keep, state.clock.now()).await?;
    Ok((StatusCode::CREATED, ok(json!({ "token": device.token, "platform": device.platform }))))
}

/// `DELETE /devices/{token}`: the caller's device is forgotten.
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<impl IntoResponse> {
    if !state.store.remove_device(&token, Some(caller.user_id)).await? {
        return Err(Error::not_found("DEVICE_NOT_FOUND", "no such device of yours"));
    }
    Ok(ok(json!({ "removed": true })))
}

/// The kinds a user may turn off: the customer's order notifications, and its emails.
fn kinds() -> impl Iterator<Item = &'static str> {
    crate::notify::push_kinds().chain([crate::notify::RECEIPT_EMAIL, crate::notify::REFUND_EMAIL])
}

/// `{email, kinds: {kind: on}}`, as `GET /me/notifications` shows the settings.
fn settings_view(settings: &crate::store::NotificationSettings) -> serde_json::Value {
    let kinds: serde_json::Map<String, serde_json::Value> =
        kinds().map(|kind| (kind.to_owned(), json!(!settings.off.iter().any(|off| off == kind)))).collect();
    json!({ "email": settings.email, "kinds": kinds })
}

/// `GET /me/notifications`.
pub async fn settings(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse> {
    Ok(ok(settings_view(&state.store.notification_settings(caller.user_id).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// Absent: unchanged; `null`: no email.
    #[serde(default, deserialize_with = "present")]
    email: Option<Option<String>>,
    #[serde(default)]
    kinds: std::collections::BTreeMap<String, bool>,
}

/// `PUT /me/notifications {email?, kinds?: {kind: on}}`: what the caller is told, and where
/// its receipts go. Kinds left out keep their setting.
pub async fn set_settings(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<SettingsBody>,
) -> Result<impl IntoResponse> {
    let mut settings = state.store.notification_settings(caller.user_id).await?;
    for (kind, on) in &body.kinds {
        if !kinds().any(|known| known == kind) {
            let known: Vec<&str> = kinds().collect();
            return Err(Error::validation(format!("kinds.{kind}"), format!("not a kind: one of {}", known.join(", "))));
        }
        settings.off.retain(|off| off != kind);
        if !on {
            settings.off.push(kind.clone());
        }
    }
    settings.off.sort();
    if let Some(email) = body.email {
        settings.email = match email.map(|email| email.trim().to_owned()).filter(|email| !email.is_empty()) {
            Some(email) if crate::notify::email_looks_valid(&email) => Some(email),
            Some(_) => return Err(Error::validation("email", "not an email address")),
            None => None,
        };
    }
    state.store.set_notification_settings(caller.user_id, &settings, state.clock.now()).await?;
    Ok(ok(settings_view(&settings)))
}

/// A field that is there (`null` included): `Some`; left out: `None` (by `default`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}
