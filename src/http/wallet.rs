//! `/api/v1/wallet/*` (the caller's wallet) and `/api/v1/admin/wallets/*` (operator credits).

use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::Role;
use crate::error::{Error, Result};
use crate::http::extract::{Json, Path, Query};
use crate::http::orders::page_limit;
use crate::http::response::{Page, ok};
use crate::ids::{LedgerId, UserId};
use crate::store::PageRequest;

pub async fn wallet(State(state): State<AppState>, caller: Caller) -> Result<impl IntoResponse> {
    Ok(ok(state.money.wallet(caller.user_id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    cursor: Option<LedgerId>,
    limit: Option<u32>,
}

pub async fn ledger(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<LedgerQuery>,
) -> Result<impl IntoResponse> {
    let limit = page_limit(query.limit)?;
    let entries = state.money.ledger(caller.user_id, PageRequest { before: query.cursor, limit: limit + 1 }).await?;
    Ok(ok(Page::from_overfetch(entries, limit, |entry| entry.id.to_string())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditBody {
    amount_paise: i64,
    /// Makes the credit idempotent: the same reference credits once.
    #[serde(default)]
    reference: Option<String>,
}

pub async fn credit(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<UserId>,
    Json(body): Json<CreditBody>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Admin])?;
    // As every reference an operator gives: it is a unique key (a longer one answered 500 on
    // Postgres, past what its index holds).
    if body.reference.as_deref().is_some_and(|reference| reference.is_empty() || reference.chars().count() > 100) {
        return Err(Error::validation("reference", "must be 1 to 100 characters: the credit's reference"));
    }
    let reference = body.reference.map(|reference| format!("admin:{reference}"));
    Ok(ok(state.money.credit(user, body.amount_paise, reference).await?))
}
