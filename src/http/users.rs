//! `/api/v1/admin/users`: staff look up accounts (dispatchers and admins) and disable them
//! (admins only). Creating staff accounts is not here on purpose: that is
//! `dispatchd admin create-user`, run by the operator.

use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::Role;
use crate::error::{Error, Result};
use crate::http::extract::{Path, Query};
use crate::http::response::{Page, ok};
use crate::ids::UserId;
use crate::store::PageRequest;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListUsers {
    role: Option<Role>,
    cursor: Option<UserId>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListUsers>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Dispatcher, Role::Admin])?;
    let limit = page_limit(query.limit)?;
    let page = PageRequest { before: query.cursor, limit: limit + 1 };
    let users = state.store.list_users(query.role, page).await?;
    let users = users.into_iter().map(|user| state.fleet.with_live_status(user)).collect();
    Ok(ok(Page::from_overfetch(users, limit, |user| user.id.to_string())))
}

/// A staff listing's page size: `limit`, 1 to 200, default 50.
pub fn page_limit(limit: Option<u32>) -> Result<u32> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::validation("limit", format!("must be between 1 and {MAX_LIMIT}")));
    }
    Ok(limit)
}

pub async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<UserId>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Admin])?;
    if id == caller.user_id {
        return Err(Error::conflict("CANNOT_DISABLE_SELF", "an admin cannot disable their own account"));
    }
    Ok(ok(state.auth.disable_user(id).await?))
}
