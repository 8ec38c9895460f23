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

/// Longest push token taken (FCM's are about 160 characters; Web Push subscriptions longer).
const MAX_TOKEN_CHARS: usize = 4096;

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
    if token.is_empty() || token.chars().count() > MAX_TOKEN_CHARS || token.chars().any(char::is_whitespace) {
        return Err(Error::validation("token", format!("1 to {MAX_TOKEN_CHARS} characters, no spaces")));
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
