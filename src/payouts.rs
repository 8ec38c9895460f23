//! Payouts: a pilot asks to be paid out of its earnings balance, an admin approves (the
//! money leaves the balance, in the ledger) or rejects, and the [`PayoutGateway`] pays. The
//! default gateway is the operator: it transfers the money by hand and marks the payout paid
//! with the transfer's reference.
//!
//! No race takes a balance below what the rules allow: a request is checked against the
//! balance less the payouts still waiting, with the pilot's account locked (two requests at
//! once see each other), and an approval takes the money with a conditional update (a cash
//! order's collection in between can leave too little, and the approval is refused).

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::auth::Caller;
use crate::clock::Clock;
use crate::domain::Role;
use crate::domain::money::{Payout, PayoutDecision, PayoutStatus};
use crate::error::{Error, Result};
use crate::ids::PayoutId;
use crate::store::{PageRequest, Store};

/// Pays an approved payout.
#[async_trait]
pub trait PayoutGateway: Send + Sync {
    /// Starts the transfer. `Some(reference)`: paid now; `None`: it will be marked paid later
    /// (by the operator, or by the gateway's own confirmation).
    async fn pay(&self, payout: &Payout) -> Result<Option<String>>;
}

/// The operator pays by hand (bank transfer, UPI) and marks the payout paid.
pub struct ManualPayouts;

#[async_trait]
impl PayoutGateway for ManualPayouts {
    async fn pay(&self, _payout: &Payout) -> Result<Option<String>> {
        Ok(None)
    }
}

/// Smallest payout asked for, in paise (transfers cost money).
const MIN_PAYOUT_PAISE: i64 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutRequest {
    pub amount_paise: i64,
}

pub struct Payouts {
    store: Arc<dyn Store>,
    clock: Clock,
    gateway: Arc<dyn PayoutGateway>,
}

impl Payouts {
    pub fn new(store: Arc<dyn Store>, clock: Clock, gateway: Arc<dyn PayoutGateway>) -> Self {
        Self { store, clock, gateway }
    }

    /// A pilot asks to be paid `amount_paise` of its available balance.
    pub async fn request(&self, caller: &Caller, request: PayoutRequest) -> Result<Payout> {
        caller.require(&[Role::Pilot])?;
        if request.amount_paise < MIN_PAYOUT_PAISE {
            return Err(Error::validation("amount_paise", format!("must be at least {MIN_PAYOUT_PAISE}")));
        }
        let payout = self.store.request_payout(caller.user_id, request.amount_paise, self.clock.now()).await?;
        metrics::counter!("payouts_total", "status" => "requested").increment(1);
        Ok(payout)
    }

    /// An admin decides; an approved payout goes to the gateway at once.
    pub async fn decide(&self, caller: &Caller, id: PayoutId, decision: PayoutDecision) -> Result<Payout> {
        caller.require(&[Role::Admin])?;
        let payout = self.apply(id, &decision, Some(caller)).await?;
        if decision != PayoutDecision::Approve {
            return Ok(payout);
        }
        match self.gateway.pay(&payout).await {
            Ok(Some(reference)) => self.apply(id, &PayoutDecision::Paid { reference }, None).await,
            Ok(None) => Ok(payout),
            Err(err) => {
                // Approved and out of the balance: the operator pays it by hand instead.
                tracing::warn!(payout_id = %id, error = %err, "the payout gateway failed; pay it by hand");
                metrics::counter!("payout_gateway_errors_total").increment(1);
                Ok(payout)
            }
        }
    }

    async fn apply(&self, id: PayoutId, decision: &PayoutDecision, by: Option<&Caller>) -> Result<Payout> {
        let by = by.map(|caller| caller.user_id);
        let payout = self
            .store
            .decide_payout(id, decision, by, self.clock.now())
            .await?
            .ok_or_else(|| Error::not_found("PAYOUT_NOT_FOUND", "no such payout"))?;
        metrics::counter!("payouts_total", "status" => payout.status.as_str()).increment(1);
        Ok(payout)
    }

    /// The caller's payouts (a pilot), or everyone's (an admin), newest first.
    pub async fn list(
        &self,
        caller: &Caller,
        status: Option<PayoutStatus>,
        page: PageRequest<PayoutId>,
    ) -> Result<Vec<Payout>> {
        caller.require(&[Role::Pilot, Role::Admin])?;
        let pilot = (caller.role == Role::Pilot).then_some(caller.user_id);
        self.store.payouts(pilot, status, page).await
    }
}
