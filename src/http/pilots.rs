//! `/api/v1/pilot/*`: a pilot reporting where it is and whether it takes work (the same
//! operations are offered over Socket.io; REST serves apps that poll and tools), and
//! `/api/v1/admin/pilots`: admins approving pilots before they may take work.

use axum::extract::State;
use axum::response::IntoResponse;
use chrono::{Datelike as _, Days, NaiveDate, NaiveTime};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::money::{PayoutDecision, PayoutStatus, PilotEntry, PilotEntryKind};
use crate::domain::{PilotApproval, Role, VehicleModel, VehiclePlate};
use crate::error::{Error, Result};
use crate::fleet::{LocationReport, ReportAnswer};
use crate::http::extract::{Json, Path, Query};
use crate::http::response::{Page, created, ok};
use crate::http::users::page_limit;
use crate::ids::{PayoutId, UserId};
use crate::payouts::PayoutRequest;
use crate::store::{ApprovalChange, PageRequest};

pub async fn location(
    State(state): State<AppState>,
    caller: Caller,
    Json(report): Json<LocationReport>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Pilot])?;
    let outcome = state.fleet.report(caller.user_id, &report.points()).await?;
    Ok(ok(ReportAnswer::from(outcome)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    status: crate::fleet::DutyStatus,
}

pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<StatusRequest>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Pilot])?;
    let status = request.status.chosen();
    let pilot = state.fleet.set_status(caller.user_id, status).await?;
    Ok(ok(json!({ "status": status, "pilot": pilot })))
}

/// `GET /admin/pilots?approval=pending`: pilots by approval (default pending), newest
/// first. For dispatchers and admins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListPilots {
    approval: Option<PilotApproval>,
    cursor: Option<UserId>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListPilots>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Dispatcher, Role::Admin])?;
    let limit = page_limit(query.limit)?;
    let page = PageRequest { before: query.cursor, limit: limit + 1 };
    let pilots = state.store.pilots_by_approval(query.approval.unwrap_or(PilotApproval::Pending), page).await?;
    let pilots = pilots.into_iter().map(|user| state.fleet.with_live_status(user)).collect();
    Ok(ok(Page::from_overfetch(pilots, limit, |user| user.id.to_string())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    vehicle_plate: VehiclePlate,
    vehicle_model: Option<VehicleModel>,
}

/// `POST /admin/pilots/{id}/approve`: the pilot may go on duty, driving this vehicle.
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<UserId>,
    Json(request): Json<ApproveRequest>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Admin])?;
    let change = ApprovalChange::Approve { plate: request.vehicle_plate, model: request.vehicle_model };
    Ok(ok(state.fleet.decide_approval(id, &change, Some(caller.user_id)).await?))
}

/// `POST /admin/pilots/{id}/suspend`: off the map at once, and no work until approved again.
pub async fn suspend(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<UserId>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Admin])?;
    Ok(ok(state.fleet.decide_approval(id, &ApprovalChange::Suspend, Some(caller.user_id)).await?))
}

/// Longest range `GET /pilot/earnings` sums, in days.
const MAX_EARNINGS_DAYS: i64 = 92;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarningsQuery {
    /// First day (UTC), inclusive; default six days before `to`.
    from: Option<NaiveDate>,
    /// Last day (UTC), inclusive; default today.
    to: Option<NaiveDate>,
}

/// One day's (or the range's) money of a pilot.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct EarningsDay {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<NaiveDate>,
    /// Orders delivered.
    pub trips: u32,
    /// Their fares (before discounts and tax).
    pub fares_paise: i64,
    /// The platform's share of the fares and fees.
    pub commission_paise: i64,
    /// Fees of orders cancelled after the pilot set out, less commission.
    pub cancellation_fees_paise: i64,
    /// What the pilot earned: fares and fees less commission.
    pub earned_paise: i64,
    /// Cash the pilot took from customers (it holds it).
    pub cash_collected_paise: i64,
    /// Paid out to the pilot (approved payouts).
    pub payouts_paise: i64,
    /// Cash the pilot handed back to the platform.
    pub settled_paise: i64,
    /// Earned and settled less cash collected and payouts: how the day moved the balance.
    pub net_paise: i64,
}

impl EarningsDay {
    fn add(&mut self, entry: &PilotEntry) {
        match entry.kind {
            PilotEntryKind::TripEarning => {
                self.trips += 1;
                self.fares_paise += entry.amount_paise + entry.commission_paise;
                self.earned_paise += entry.amount_paise;
            }
            PilotEntryKind::CancellationFee => {
                self.cancellation_fees_paise += entry.amount_paise;
                self.earned_paise += entry.amount_paise;
            }
            PilotEntryKind::CashCollected => self.cash_collected_paise -= entry.amount_paise,
            PilotEntryKind::Payout => self.payouts_paise -= entry.amount_paise,
            PilotEntryKind::Settlement => self.settled_paise += entry.amount_paise,
        }
        self.commission_paise += entry.commission_paise;
        self.net_paise += entry.amount_paise;
    }
}

/// Sums entries per day (UTC), days without any left out, and over the whole range.
pub fn earnings_by_day(entries: &[PilotEntry]) -> (Vec<EarningsDay>, EarningsDay) {
    let mut days: Vec<EarningsDay> = Vec::new();
    let mut total = EarningsDay::default();
    for entry in entries {
        let date = entry.created_at.date_naive();
        if days.last().is_none_or(|day| day.date != Some(date)) {
            days.push(EarningsDay { date: Some(date), ..EarningsDay::default() });
        }
        if let Some(day) = days.last_mut() {
            day.add(entry);
        }
        total.add(entry);
    }
    (days, total)
}

/// `GET /pilot/earnings?from=&to=`: the caller's trips, commission, fees and cash per day,
/// the range's totals, and its balance now (owed to it, or, below zero, cash it holds).
pub async fn earnings(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<EarningsQuery>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Pilot])?;
    let to = query.to.unwrap_or_else(|| state.clock.now().date_naive());
    if !(2000..=9000).contains(&to.year()) {
        return Err(Error::validation("to", "must be a day between the years 2000 and 9000"));
    }
    let from = query.from.or_else(|| to.checked_sub_days(Days::new(6))).unwrap_or(to);
    let span = (to - from).num_days();
    if !(0..MAX_EARNINGS_DAYS).contains(&span) {
        return Err(Error::validation("from", format!("must be on or before `to`, at most {MAX_EARNINGS_DAYS} days")));
    }
    let start = |day: NaiveDate| day.and_time(NaiveTime::MIN).and_utc();
    let after = to.checked_add_days(Days::new(1)).unwrap_or(to);
    let entries = state.store.pilot_entries(caller.user_id, start(from), start(after)).await?;
    let (days, totals) = earnings_by_day(&entries);
    let balance_paise = state.store.pilot_balance(caller.user_id).await?;
    Ok(ok(json!({ "from": from, "to": to, "balance_paise": balance_paise, "days": days, "totals": totals })))
}

/// `POST /pilot/payouts {amount_paise}`: the caller asks to be paid out of its balance.
pub async fn request_payout(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PayoutRequest>,
) -> Result<impl IntoResponse> {
    Ok(created(state.payouts.request(&caller, body).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListPayouts {
    status: Option<PayoutStatus>,
    cursor: Option<PayoutId>,
    limit: Option<u32>,
}

/// `GET /admin/payouts?status=`: everyone's payouts, for admins.
pub async fn admin_payouts(
    state: State<AppState>,
    caller: Caller,
    query: Query<ListPayouts>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Admin])?;
    payouts(state, caller, query).await
}

/// `GET /pilot/payouts`: the caller's payouts (everyone's for an admin).
pub async fn payouts(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListPayouts>,
) -> Result<impl IntoResponse> {
    let limit = page_limit(query.limit)?;
    let page = PageRequest { before: query.cursor, limit: limit + 1 };
    let payouts = state.payouts.list(&caller, query.status, page).await?;
    Ok(ok(Page::from_overfetch(payouts, limit, |payout| payout.id.to_string())))
}

/// `POST /admin/payouts/{id}/approve`: the money leaves the pilot's balance and goes to the
/// payout gateway (by default the operator, who pays by hand and marks it paid).
pub async fn approve_payout(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<PayoutId>,
) -> Result<impl IntoResponse> {
    Ok(ok(state.payouts.decide(&caller, id, PayoutDecision::Approve).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectPayout {
    reason: Option<String>,
}

/// `POST /admin/payouts/{id}/reject {reason?}`.
pub async fn reject_payout(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<PayoutId>,
    Json(body): Json<RejectPayout>,
) -> Result<impl IntoResponse> {
    let reason = body.reason.map(|reason| reason.chars().take(500).collect::<String>());
    Ok(ok(state.payouts.decide(&caller, id, PayoutDecision::Reject { reason }).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaidPayout {
    reference: String,
}

/// `POST /admin/payouts/{id}/paid {reference}`: the operator made the transfer.
pub async fn payout_paid(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<PayoutId>,
    Json(body): Json<PaidPayout>,
) -> Result<impl IntoResponse> {
    let reference = body.reference.trim().to_owned();
    if reference.is_empty() || reference.chars().count() > 100 {
        return Err(Error::validation("reference", "must be 1 to 100 characters: the transfer's reference"));
    }
    Ok(ok(state.payouts.decide(&caller, id, PayoutDecision::Paid { reference }).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    amount_paise: i64,
    reference: String,
}

/// `POST /admin/pilots/{id}/settle {amount_paise, reference}`: the pilot handed back cash it
/// collected; recorded once per reference (the receipt the operator gave).
pub async fn settle(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<UserId>,
    Json(body): Json<SettleRequest>,
) -> Result<impl IntoResponse> {
    caller.require(&[Role::Admin])?;
    if !(1..=100_000_000).contains(&body.amount_paise) {
        return Err(Error::validation("amount_paise", "must be from 1 to 100000000"));
    }
    let reference = body.reference.trim();
    if reference.is_empty() || reference.chars().count() > 100 {
        return Err(Error::validation("reference", "must be 1 to 100 characters: the receipt's reference"));
    }
    let pilot = state.store.user_by_id(id).await?.filter(|user| user.pilot.is_some());
    if pilot.is_none() {
        return Err(Error::not_found("PILOT_NOT_FOUND", "no such pilot"));
    }
    let now = state.clock.now();
    let (recorded, balance_paise) = state.store.settle_cash(id, body.amount_paise, reference, now).await?;
    Ok(ok(json!({ "pilot_id": id, "recorded": recorded, "balance_paise": balance_paise })))
}
