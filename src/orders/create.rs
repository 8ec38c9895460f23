//! Quoting and creating orders.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::clock::seconds;
use crate::domain::money::Coupon;
use crate::domain::orders::{Fare, Order, OrderStatus, PaymentMethod, PaymentStatus, Place};
use crate::domain::{LatLng, Role, VehicleType};
use crate::error::{Error, Result};
use crate::ids::OrderId;
use crate::orders::pricing::{Pricing as _, Trip};
use crate::orders::quotes::QuoteClaims;
use crate::orders::view::OrderView;
use crate::orders::{Orders, event, push_event};
use crate::store::{IdempotentReplay, KeyClaim, NewJob, NewOrder};

/// Job kinds the orders service enqueues and handles.
pub const START_SEARCH_JOB: &str = "order.start_search";
pub const PAYMENT_TIMEOUT_JOB: &str = "order.payment_timeout";

#[derive(Debug, Clone)]
pub struct QuoteRequest {
    pub pickup: LatLng,
    pub drop: LatLng,
    pub vehicle: VehicleType,
    pub coupon_code: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuoteResponse {
    pub quote_id: String,
    pub expires_at: DateTime<Utc>,
    pub vehicle_type: VehicleType,
    pub fare: Fare,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coupon_code: Option<String>,
}

/// A new order as the customer asks for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    pub pickup: Place,
    pub drop: Place,
    pub vehicle_type: VehicleType,
    pub payment_method: PaymentMethod,
    #[serde(default)]
    pub scheduled_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub coupon_code: Option<String>,
    #[serde(default)]
    pub quote_id: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
}

impl CreateOrder {
    /// What identifies this request under an idempotency key: its parsed content, so
    /// whitespace and key order do not matter.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(serde_json::to_vec(self).expect("orders serialize")).into()
    }
}

/// An order priced and checked, not yet written ([`Orders::create`]).
struct Draft {
    order: Order,
    events: Vec<crate::domain::orders::OrderEvent>,
    coupon: Option<Coupon>,
    /// Whether the wallet holds its fare (paid when its search starts).
    hold: bool,
}

/// What creating an order did.
#[derive(Debug, Clone, PartialEq)]
pub enum Creation {
    Created(Box<Order>),
    /// The idempotency key was used before with the same request: its stored answer.
    Replayed {
        status: u16,
        body: Value,
    },
}

impl Orders {
    /// Prices a trip now and signs the price for `quote_ttl`.
    pub async fn quote(&self, caller: &Caller, request: QuoteRequest) -> Result<QuoteResponse> {
        caller.require(&[Role::Customer])?;
        let trip = Trip { pickup: request.pickup, drop: request.drop, vehicle: request.vehicle };
        self.check_places(&trip)?;
        let mut fare = self.price(&trip).await?;
        fare.fees_owed_paise = self.fees_owed(caller.user_id).await?;
        let now = self.now();
        let claims = QuoteClaims {
            id: uuid::Uuid::now_v7(),
            user: caller.user_id,
            vehicle: request.vehicle,
            pickup: [request.pickup.lat(), request.pickup.lng()],
            drop: [request.drop.lat(), request.drop.lng()],
            fare: fare.clone(),
            exp: (now + self.quote_ttl).timestamp(),
        };
        let coupon = self.coupon(request.coupon_code.as_deref()).await?;
        let fare = self.discounted(fare, coupon.as_ref(), now)?;
        Ok(QuoteResponse {
            quote_id: self.quotes.sign(&claims),
            expires_at: now + self.quote_ttl,
            vehicle_type: request.vehicle,
            fare,
            coupon_code: coupon.map(|coupon| coupon.code),
        })
    }

    /// Creates an order: fare (the quote's, or priced now), coupon, payment, first events and
    /// jobs, all in one transaction. With an idempotency key, a repeat of the same request
    /// returns the first answer and a different request under the same key is refused.
    pub async fn create(
        &self,
        caller: &Caller,
        request: CreateOrder,
        idempotency_key: Option<&str>,
    ) -> Result<Creation> {
        caller.require(&[Role::Customer])?;
        let now = self.now();
        let draft = match self.draft(caller, &request, now).await {
            Ok(draft) => draft,
            // A retry of a request that already succeeded gets its answer even if the request
            // would no longer pass (its quote expired, its coupon ran out): the order exists.
            // A request that passes finds its key in the transaction below, without this read.
            Err(err) => {
                if let Some(key) = idempotency_key
                    && let Some(replay) = self.replay(caller, key, &request).await?
                {
                    return Ok(replay);
                }
                return Err(err);
            }
        };
        let Draft { order, events, coupon, hold } = draft;
        let pickup = request.pickup.point();

        let mut tx = self.store.begin().await?;
        // The customer's row first (with the key's claim): a second order of the same
        // customer waits here, and counts this one.
        let claimed = match idempotency_key {
            Some(key) => {
                let answer = OrderView::new_for_customer(order.clone());
                Some((key, request.fingerprint(), serde_json::to_value(answer).map_err(anyhow::Error::from)?))
            }
            None => None,
        };
        let claim =
            claimed.as_ref().map(|(key, hash, body)| KeyClaim { key, request_hash: hash, answer: (201, body), now });
        if let Some(replay) = tx.lock_customer(caller.user_id, claim).await? {
            return same_request(replay, &request);
        }
        let cell = self.demand_cell(pickup);
        let mut jobs = super::outbox_jobs(&order, &events, self.notify);
        jobs.extend(self.jobs_for(&order, now));
        let new =
            NewOrder { order: &order, pickup_cell: cell, coupon: coupon.as_ref(), events: &events, jobs: &jobs, now };
        let written = tx.insert_new_order(&new).await?;
        if written.open_before >= i64::from(self.config.max_open_per_customer) {
            let most = self.config.max_open_per_customer;
            return Err(Error::Conflict {
                code: "TOO_MANY_OPEN_ORDERS",
                message: format!("at most {most} open orders at a time; wait for one to finish or cancel one"),
            });
        }
        // The fees owed it was priced with, now carried by this order (the customer's row is
        // locked: no other order of its takes them meanwhile).
        if written.dues_charged_paise != order.fare.fees_owed_paise {
            return Err(Error::conflict(
                "FEES_OWED_CHANGED",
                "the cancellation fees you owe changed since this price; ask for a new quote",
            ));
        }
        if let Some(coupon) = &coupon {
            tx.redeem_coupon(coupon, caller.user_id, order.id, now).await?;
        }
        if hold {
            tx.hold_wallet(caller.user_id, order.fare.total_paise, order.id, now).await?;
        } else if order.payment_method == PaymentMethod::Wallet && order.fare.total_paise > 0 {
            tx.debit_wallet(caller.user_id, order.fare.total_paise, order.id, now).await?;
        }
        tx.commit().await?;
        if order.status == OrderStatus::SearchingDriver {
            self.demand.write().entry((cell, order.vehicle_type)).or_default().insert(caller.user_id);
        }
        metrics::counter!("orders_created_total", "payment_method" => order.payment_method.as_str()).increment(1);
        self.publish(&order, &events);
        Ok(Creation::Created(Box::new(order)))
    }

    /// The order this request makes, priced and checked, before anything is written.
    async fn draft(&self, caller: &Caller, request: &CreateOrder, now: DateTime<Utc>) -> Result<Draft> {
        let (pickup, drop) = (request.pickup.point(), request.drop.point());
        self.check_trip(request, pickup, drop, now)?;
        let trip = Trip { pickup, drop, vehicle: request.vehicle_type };
        let (fare, quote_id) = match &request.quote_id {
            Some(token) => self.quoted_fare(caller, token, &trip, now).map(|(fare, id)| (fare, Some(id)))?,
            None => {
                let mut fare = self.price(&trip).await?;
                fare.fees_owed_paise = self.fees_owed(caller.user_id).await?;
                (fare, None)
            }
        };
        let coupon = self.coupon(request.coupon_code.as_deref()).await?;
        let fare = self.discounted(fare, coupon.as_ref(), now)?;
        let (mut order, events) = self.new_order(caller, request, fare, coupon.as_ref(), now)?;
        order.quote_id = quote_id;
        // A wallet order scheduled for later holds its fare; the hold is captured when its
        // search starts, released if it is cancelled first.
        let hold = order.payment_method == PaymentMethod::Wallet
            && order.status == OrderStatus::Pending
            && order.fare.total_paise > 0;
        if hold {
            order.payment_status = PaymentStatus::Unpaid;
        }
        Ok(Draft { order, events, coupon, hold })
    }

    /// Checks places, times and notes before anything is priced.
    fn check_trip(&self, request: &CreateOrder, pickup: LatLng, drop: LatLng, now: DateTime<Utc>) -> Result<()> {
        self.check_places(&Trip { pickup, drop, vehicle: request.vehicle_type })?;
        if request.payment_method.uses_gateway() && !self.accepts_cards {
            return Err(Error::Unprocessable {
                code: "PAYMENT_METHOD_UNAVAILABLE",
                message: "card and UPI payments are not set up on this server; pay by wallet or cash".into(),
            });
        }
        if let Some(at) = request.scheduled_at {
            let earliest = now + seconds(self.config.min_schedule_lead_secs);
            let latest = now + seconds(self.config.max_schedule_ahead_secs);
            if at < earliest || at > latest {
                return Err(Error::validation(
                    "scheduled_at",
                    format!("must be between {earliest} and {latest} (or absent, for now)"),
                ));
            }
        }
        if request.notes.as_ref().is_some_and(|notes| notes.chars().count() > 500) {
            return Err(Error::validation("notes", "must be at most 500 characters"));
        }
        Ok(())
    }

    /// The same for quotes and orders: inside the area, two different places, a trip the
    /// vehicle type takes.
    fn check_places(&self, trip: &Trip) -> Result<()> {
        self.check_area(trip.pickup, trip.drop)?;
        if trip.pickup == trip.drop {
            return Err(Error::validation("drop", "must differ from the pickup"));
        }
        if let Some((km, most)) = self.pricing.too_long(trip) {
            return Err(Error::Unprocessable {
                code: "TRIP_TOO_LONG",
                message: format!("{km:.0} km by road; a {} takes trips of at most {most:.0} km", trip.vehicle),
            });
        }
        Ok(())
    }

    pub(super) fn check_area(&self, pickup: LatLng, drop: LatLng) -> Result<()> {
        for (field, point) in [("pickup", pickup), ("drop", drop)] {
            if !self.area.contains(point) {
                return Err(Error::Unprocessable {
                    code: "OUTSIDE_SERVICE_AREA",
                    message: format!("the {field} is outside the area we serve"),
                });
            }
        }
        Ok(())
    }

    /// The fare now: tariff and current surge around the pickup.
    async fn price(&self, trip: &Trip) -> Result<Fare> {
        let demand = self.demand_at(self.demand_cell(trip.pickup), trip.vehicle);
        let supply = self.grid.supply_at(trip.pickup).of(trip.vehicle).available;
        let surge = self.surge.multiplier_milli(demand, i64::from(supply));
        Ok(self.pricing.price(trip, surge))
    }

    fn quoted_fare(&self, caller: &Caller, token: &str, trip: &Trip, now: DateTime<Utc>) -> Result<(Fare, uuid::Uuid)> {
        let quote = self.quotes.verify(token, now)?;
        if !quote.covers(caller.user_id, trip.vehicle, trip.pickup, trip.drop) {
            return Err(Error::Unprocessable {
                code: "QUOTE_MISMATCH",
                message: "the quote was for another trip, vehicle or customer".into(),
            });
        }
        Ok((quote.fare, quote.id))
    }

    /// The coupon for a code the customer typed (codes are case-insensitive).
    async fn coupon(&self, code: Option<&str>) -> Result<Option<Coupon>> {
        let Some(code) = code.map(str::trim).filter(|code| !code.is_empty()) else {
            return Ok(None);
        };
        match self.store.coupon_by_code(&code.to_uppercase()).await? {
            Some(coupon) => Ok(Some(coupon)),
            None => Err(Error::Unprocessable { code: "COUPON_NOT_FOUND", message: format!("no coupon {code:?}") }),
        }
    }

    fn discounted(&self, fare: Fare, coupon: Option<&Coupon>, now: DateTime<Utc>) -> Result<Fare> {
        let discount = match coupon {
            Some(coupon) => coupon
                .discount(fare.fare_paise, now)
                .map_err(|(code, message)| Error::Unprocessable { code, message })?,
            None => 0,
        };
        Ok(self.pricing.with_discount(fare, discount))
    }

    /// The stored answer for `key`, if a request under it already completed: one read. A
    /// duplicate still in flight is not seen here; the transaction that creates the order
    /// claims the key, waiting for that duplicate, and answers what it answered.
    async fn replay(&self, caller: &Caller, key: &str, request: &CreateOrder) -> Result<Option<Creation>> {
        let Some(replay) = self.store.idempotent_response(caller.user_id, key).await? else { return Ok(None) };
        same_request(replay, request).map(Some)
    }

    /// The order as it will be stored, with its first events.
    fn new_order(
        &self,
        caller: &Caller,
        request: &CreateOrder,
        fare: Fare,
        coupon: Option<&Coupon>,
        now: DateTime<Utc>,
    ) -> Result<(Order, Vec<crate::domain::orders::OrderEvent>)> {
        let payment_status = match request.payment_method {
            PaymentMethod::Wallet => PaymentStatus::Paid,
            PaymentMethod::Cash => PaymentStatus::Unpaid,
            // Nothing to collect (a coupon covered it all): no gateway is involved.
            PaymentMethod::Card | PaymentMethod::Upi if fare.total_paise == 0 => PaymentStatus::Paid,
            PaymentMethod::Card | PaymentMethod::Upi => PaymentStatus::Pending,
        };
        let mut order = Order {
            id: OrderId::new(),
            customer_id: caller.user_id,
            pilot_id: None,
            vehicle_type: request.vehicle_type,
            status: OrderStatus::Pending,
            cancel_reason: None,
            pickup: request.pickup.clone(),
            drop: request.drop.clone(),
            payment_method: request.payment_method,
            payment_status,
            fare,
            refunded_paise: 0,
            coupon_code: coupon.map(|coupon| coupon.code.clone()),
            quote_id: None,
            scheduled_at: request.scheduled_at,
            notes: request.notes.clone().filter(|notes| !notes.trim().is_empty()),
            last_event_seq: 0,
            created_at: now,
            updated_at: now,
            delivery_otp: self.config.delivery_otp.then(new_delivery_otp),
            delivery_otp_failures: 0,
        };
        let created = json!({
            "total_paise": order.fare.total_paise,
            "payment_method": order.payment_method,
            "scheduled_at": order.scheduled_at,
        });
        let mut events = vec![push_event(&mut order, event("created", Some(caller), created), now)];
        if self.ready_to_search(&order, now) {
            events.push(self.begin_search(&mut order, now)?);
        }
        Ok((order, events))
    }

    /// Whether a pending order may look for a pilot now: paid (or cash) and due.
    pub(super) fn ready_to_search(&self, order: &Order, now: DateTime<Utc>) -> bool {
        let settled = matches!(order.payment_status, PaymentStatus::Paid)
            || (order.payment_method == PaymentMethod::Cash && order.payment_status == PaymentStatus::Unpaid);
        let due = order.scheduled_at.is_none_or(|at| at - seconds(self.config.search_lead_secs) <= now);
        order.status == OrderStatus::Pending && settled && due
    }

    /// The durable follow-ups a new order needs.
    fn jobs_for(&self, order: &Order, now: DateTime<Utc>) -> Vec<NewJob> {
        let mut jobs = Vec::new();
        let payload = json!({ "order_id": order.id });
        if let Some(at) = order.scheduled_at {
            let run_at = (at - seconds(self.config.search_lead_secs)).max(now);
            jobs.push(
                NewJob::new(START_SEARCH_JOB, payload.clone(), run_at).dedupe(format!("start_search:{}", order.id)),
            );
            // A reminder a while before the search starts (none for an order placed later than that).
            if let Some(remind_at) = self.notify.reminder_before.map(|before| run_at - before).filter(|at| *at > now) {
                jobs.push(crate::notify::reminder_job(order, remind_at, at));
            }
        }
        if order.status == OrderStatus::SearchingDriver {
            jobs.push(self.give_up_job(order));
        }
        if order.payment_status == PaymentStatus::Pending {
            let run_at = now + seconds(self.config.payment_timeout_secs);
            jobs.push(
                NewJob::new(PAYMENT_TIMEOUT_JOB, payload, run_at).dedupe(format!("payment_timeout:{}", order.id)),
            );
        }
        jobs
    }
}

impl Orders {
    /// The coarse cell open orders are counted in for surge: the grid's supply cell.
    fn demand_cell(&self, point: LatLng) -> i64 {
        let cell = h3o::LatLng::new(point.lat(), point.lng()).expect("valid").to_cell(self.grid.supply_resolution());
        i64::try_from(u64::from(cell)).expect("H3 indexes fit in 63 bits")
    }
}

impl Orders {
    /// Customers searching for `vehicle` from coarse cell `cell`, as last read or added.
    fn demand_at(&self, cell: i64, vehicle: VehicleType) -> i64 {
        self.demand.read().get(&(cell, vehicle)).map_or(0, |customers| customers.len() as i64)
    }

    /// The cancellation fees `customer` owes: from memory, or from the database when a change
    /// may have moved them since the last read.
    async fn fees_owed(&self, customer: crate::ids::UserId) -> Result<i64> {
        match self.dues.get(customer) {
            Some(owed) => Ok(owed),
            None => self.store.fees_owed(customer).await,
        }
    }

    /// Reads every customer's dues from the database (see [`super::dues`]).
    pub async fn refresh_dues(&self) -> Result<()> {
        let generation = self.dues.begin_read();
        let owed = self.store.all_fees_owed().await?;
        self.dues.replace(generation, owed);
        Ok(())
    }

    /// Reads surge's demand from the database: every customer searching, by cell and
    /// vehicle. Orders that stopped searching leave it here (within a refresh period of it
    /// happening, on any node); a node's own new orders are in it at once.
    pub async fn refresh_demand(&self) -> Result<()> {
        let rows = self.store.searching_demand().await?;
        let mut demand: HashMap<(i64, VehicleType), HashSet<crate::ids::UserId>> = HashMap::new();
        for row in rows {
            demand.entry((row.cell, row.vehicle)).or_default().insert(row.customer);
        }
        *self.demand.write() = demand;
        Ok(())
    }

    /// [`Orders::refresh_demand`] and [`Orders::refresh_dues`] every
    /// `pricing.surge.demand_refresh_ms` until `stop`.
    pub async fn run_demand(self: std::sync::Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let period = std::time::Duration::from_millis(self.surge.demand_refresh_ms);
        crate::app::every_awaited(period, &stop, || async {
            if let Err(err) = self.refresh_demand().await {
                tracing::warn!(error = %err, "could not read surge demand; pricing with the last one read");
            }
            if let Err(err) = self.refresh_dues().await {
                tracing::warn!(error = %err, "could not read the fees customers owe; quoting with the last ones read");
            }
        })
        .await;
    }

    /// Forgets idempotency keys older than `orders.idempotency_key_ttl_secs`, every hour
    /// until `stop` (and once at the start).
    pub async fn run_key_purge(self: std::sync::Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {
                    let before = self.now() - seconds(self.config.idempotency_key_ttl_secs);
                    match self.store.purge_idempotency_keys(before).await {
                        Ok(purged) => metrics::counter!("idempotency_keys_purged_total").increment(purged),
                        Err(err) => tracing::warn!(error = %err, "could not purge old idempotency keys"),
                    }
                }
            }
        }
    }
}

/// The stored answer, if it was for this very request.
fn same_request(replay: IdempotentReplay, request: &CreateOrder) -> Result<Creation> {
    if replay.request_hash != request.fingerprint() {
        return Err(Error::Unprocessable {
            code: "IDEMPOTENCY_KEY_REUSED",
            message: "this Idempotency-Key was used for a different request".into(),
        });
    }
    Ok(Creation::Replayed { status: replay.status, body: replay.body })
}

/// Four random digits from a cryptographically secure generator: a code the pilot cannot
/// guess in the five tries it has (1 in 2,000).
fn new_delivery_otp() -> String {
    format!("{:04}", rand::random_range(0..10_000u32))
}
