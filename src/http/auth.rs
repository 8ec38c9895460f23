//! `/api/v1/auth/*` and `/api/v1/me`.

use axum::extract::State;
use axum::response::IntoResponse;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth::password::NewPassword;
use crate::auth::{Caller, Registration};
use crate::domain::{Invalid, PersonName, Phone, Role, VehicleType};
use crate::error::{Error, Result};
use crate::http::extract::Json;
use crate::http::response::{created, ok};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    name: PersonName,
    phone: Phone,
    password: NewPassword,
    role: Role,
    #[serde(default)]
    vehicle_type: Option<VehicleType>,
}

/// A password presented at login: any length a new password may have, and nothing longer
/// (hashing megabytes would be an easy way to burn our CPU).
#[derive(Deserialize)]
#[serde(try_from = "String")]
pub struct LoginPassword(SecretString);

impl TryFrom<String> for LoginPassword {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        match value.chars().count() {
            0 => Err(Invalid("must not be empty".into())),
            129.. => Err(Invalid("must be at most 128 characters".into())),
            _ => Ok(Self(SecretString::from(value))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    phone: Phone,
    password: LoginPassword,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

pub async fn register(State(state): State<AppState>, Json(req): Json<RegisterRequest>) -> Result<impl IntoResponse> {
    let registration = Registration {
        name: req.name,
        phone: req.phone,
        password: req.password,
        role: req.role,
        vehicle_type: req.vehicle_type,
    };
    let mut grant = state.auth.register(registration).await?;
    grant.user = state.fleet.with_live_status(grant.user);
    Ok(created(grant))
}

pub async fn login(State(state): State<AppState>, Json(req): Json<LoginRequest>) -> Result<impl IntoResponse> {
    let mut grant = state.auth.login(&req.phone, req.password.0).await?;
    grant.user = state.fleet.with_live_status(grant.user);
    Ok(ok(grant))
}

pub async fn refresh(State(state): State<AppState>, Json(req): Json<RefreshRequest>) -> Result<impl IntoResponse> {
    if req.refresh_token.is_empty() || req.refresh_token.len() > 256 {
        return Err(Error::validation("refresh_token", "must be a refresh token from login or refresh"));
    }
    let mut grant = state.auth.refresh(&req.refresh_token).await?;
    grant.user = state.fleet.with_live_status(grant.user);
    Ok(ok(grant))
}

pub async fn logout(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse> {
    state.auth.logout(&caller).await?;
    // The session's device is told nothing more.
    state.store.remove_session_devices(caller.session).await?;
    Ok(ok(json!({ "logged_out": true })))
}

pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse> {
    let user = state
        .store
        .user_by_id(caller.user_id)
        .await?
        .ok_or_else(|| Error::unauthorized("TOKEN_REVOKED", "the account no longer exists"))?;
    Ok(ok(state.fleet.with_live_status(user)))
}
