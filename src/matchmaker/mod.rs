//! The matchmaker: turns every order that searches for a pilot into offers, one pilot at a
//! time, until one accepts, the order stops searching, or its time runs out (the
//! `order.no_pilot_found` job, written when the search began, cancels it).
//!
//! One task ([`Matchmaker::run`]) owns the searches of this node. It hears of orders that
//! start or stop searching from the orders service (it is an [`OrderListener`]) and of
//! rejections from [`Matchmaker::reject`]; every `tick_ms` it expires offers whose time is up
//! (by the injected [`Clock`], so tests move time instead of sleeping) and retries searches
//! that found nobody.
//!
//! * *Immediate* mode: an order is offered to its best candidate ([`matching::score`]) at
//!   once, and to the next one at once after a rejection or an expiry, widening the radius
//!   step by step when nobody (left) is in reach.
//! * *Batched* mode: every `batch_window_ms`, the waiting orders and their candidates
//!   (`batch_candidates` each, from the widest radius unless `batch_widen_in_steps`) are
//!   assigned together ([`matching::batch::assign`]), then offered the same way.
//!
//! The database decides every race (see `orders::offers`); this task's memory only says what
//! to try next. After a restart, [`Matchmaker::run`] first rebuilds it from the store:
//! searching orders resume, live offers whose time is up expire, the others stay live (and
//! reach their pilot again when its app reconnects).
//!
//! In a cluster ([`SearchLease`]) each search is followed by one node: the one that began it
//! leases it in the database at its next tick and renews the lease; a node resumes only the
//! searches it holds, and takes over those whose node stopped renewing ([`leases`]).
//! Whatever happens to searches, nodes and leases, every live offer expires at its deadline
//! and no pilot stays held for an offer that is over ([`recovery`]).
//!
//! The task stops when the server's drain begins, releasing its leases, so that the other
//! nodes take its searches at once instead of after the drain.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::clock::Clock;
use crate::domain::PilotStatus;
use crate::domain::offers::{Offer, OfferStatus, UNREACHABLE};
use crate::domain::orders::{Order, OrderEvent, OrderStatus};
use crate::error::{Error, Result};
use crate::grid::PilotIndex;
use crate::grid::geometry::distance_m;
use crate::ids::{OfferId, OrderId, UserId};
use crate::matching::{self, MatchingConfig, Mode, Search, batch};
use crate::orders::tracking::Tracking;
use crate::orders::{OrderListener, Orders};
use crate::store::Store;

mod leases;
mod recovery;

/// Told of offers to deliver to pilots. Called on the matchmaker's task: hand the work on.
pub trait OfferListener: Send + Sync {
    /// A new offer for `offer.pilot_id`: the `offer` event's payload.
    fn offered(&self, offer: &Offer, payload: &Value);

    /// An offer ended without the order going to its pilot (`expired`, `cancelled`, `taken`,
    /// `assigned_elsewhere`): the app should stop showing it.
    fn withdrawn(&self, offer: &Offer, reason: &'static str);

    /// The pilot turned `offer` down (on this node).
    fn rejected(&self, _offer: &Offer) {}
}

/// What the matchmaker's task hears.
#[derive(Debug)]
enum Command {
    /// An order began searching (again: without the pilot that dropped it, if any).
    Search(Box<Order>, Before),
    /// An order stopped searching (assigned, cancelled): its search ends.
    Stopped(Box<Order>),
    /// A pilot rejected an offer.
    Rejected(Box<Offer>),
}

/// Most events read to learn who dropped a resumed order (an order has a few dozen).
const MAX_EVENTS_READ: u32 = 1_000;

/// What a search that begins knows of the order's past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Before {
    /// It was created in the same commit: it has never been offered.
    Nothing,
    /// This pilot had it and gave it back (others may have declined it too).
    DroppedBy(UserId),
    /// Its offers, if any, are in the store.
    Unknown,
}

/// In a cluster, a node follows only the searches it holds a lease on (in the database):
/// those it began, and those whose node stopped renewing theirs.
#[derive(Debug, Clone)]
pub struct SearchLease {
    /// This node's name.
    pub node: Arc<str>,
    /// How long a lease lasts; it is renewed every third of that.
    pub duration: StdDuration,
}

/// The matchmaker. Share it behind an `Arc`.
pub struct Matchmaker {
    orders: Arc<Orders>,
    store: Arc<dyn Store>,
    grid: Arc<PilotIndex>,
    /// Which pilot carries which order, as this node last heard.
    tracking: Arc<Tracking>,
    clock: Clock,
    config: MatchingConfig,
    lease: Option<SearchLease>,
    commands: mpsc::UnboundedSender<Command>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    listeners: RwLock<Vec<Arc<dyn OfferListener>>>,
}

impl Matchmaker {
    pub fn new(
        orders: Arc<Orders>,
        store: Arc<dyn Store>,
        grid: Arc<PilotIndex>,
        tracking: Arc<Tracking>,
        clock: Clock,
        config: MatchingConfig,
        lease: Option<SearchLease>,
    ) -> Arc<Self> {
        let (commands, inbox) = mpsc::unbounded_channel();
        let matchmaker = Arc::new(Self {
            orders: orders.clone(),
            store,
            grid,
            tracking,
            clock,
            config,
            lease,
            commands,
            inbox: Mutex::new(Some(inbox)),
            listeners: RwLock::default(),
        });
        orders.subscribe(Arc::new(Hears(matchmaker.commands.clone())));
        matchmaker
    }

    /// Adds a listener for offers.
    pub fn subscribe(&self, listener: Arc<dyn OfferListener>) {
        self.listeners.write().push(listener);
    }

    /// The pilot accepts its offer (see [`Orders::accept_offer`]).
    pub async fn accept(&self, caller: &Caller, id: OfferId) -> Result<Order> {
        self.orders.accept_offer(caller, id).await
    }

    /// The pilot rejects its offer; the order moves on to the next candidate at once.
    pub async fn reject(&self, caller: &Caller, id: OfferId, reason: Option<&str>) -> Result<Offer> {
        let offer = self.orders.reject_offer(caller, id, reason).await?;
        let _ = self.commands.send(Command::Rejected(Box::new(offer.clone())));
        self.tell(|listener| listener.rejected(&offer));
        Ok(offer)
    }

    /// A pilot rejected, on another node, an offer a search here may have made: it moves on
    /// at once instead of waiting for the offer to run out.
    pub fn rejected_elsewhere(&self, offer: Offer) {
        let _ = self.commands.send(Command::Rejected(Box::new(offer)));
    }

    /// The `offer` payload of the pilot's live offer, if it has one that has not run out:
    /// what its app gets again when it reconnects.
    pub async fn live_offer(&self, pilot: UserId) -> Result<Option<Value>> {
        let Some(offer) = self.store.live_offer_for_pilot(pilot).await? else { return Ok(None) };
        if offer.expires_at <= self.clock.now() {
            return Ok(None);
        }
        let Some(order) = self.store.order(offer.order_id).await? else { return Ok(None) };
        Ok(Some(offer_payload(&offer, &order, self.orders.pilot_earning(&order).0, self.clock.now())))
    }

    /// Runs the searches until `stop`, after rebuilding them from the store.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut inbox) = self.inbox.lock().take() else { return };
        let mut searches = Searches::default();
        let mut pause = StdDuration::from_millis(self.config.retry_interval_ms);
        while let Err(err) = self.recover(&mut searches).await {
            // Without it the searches in progress would be followed by nobody: keep trying.
            tracing::error!(error = %err, retry_in_ms = pause.as_millis() as u64, "could not resume the searches in progress");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(StdDuration::from_secs(60));
            searches = Searches::default();
        }
        let mut ticks = tokio::time::interval(StdDuration::from_millis(self.config.tick_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batches = tokio::time::interval(StdDuration::from_millis(self.config.batch_window_ms));
        batches.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let renew_every = self.renew_every();
        // The first renewal is one period on: recovering renewed already.
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checks = tokio::time::interval(BUSY_CHECK_EVERY);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut overdue = tokio::time::interval(OFFERS_CHECK_EVERY);
        overdue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(command) = inbox.recv() => self.handle(&mut searches, command).await,
                _ = ticks.tick() => self.tick(&mut searches).await,
                _ = batches.tick(), if self.config.mode == Mode::Batched => self.batch(&mut searches).await,
                _ = renewals.tick(), if self.lease.is_some() => self.renew(&mut searches).await,
                _ = overdue.tick() => {
                    self.expire_overdue(&mut searches).await;
                    if let Err(err) = self.free_held_without_offer(self.held_too_long_before_ms()).await {
                        tracing::warn!(error = %err, "could not check held pilots against their offers");
                    }
                }
                _ = checks.tick() => {
                    let settled = self.clock.now() - Duration::from_std(BUSY_CHECK_EVERY).unwrap_or_default();
                    if let Err(err) = self.free_busy_without_order(settled.timestamp_millis()).await {
                        tracing::warn!(error = %err, "could not check busy pilots against their orders");
                    }
                }
            }
            metrics::gauge!("matching_searches").set(searches.map.len() as f64);
        }
        self.release_leases().await;
    }

    async fn handle(&self, searches: &mut Searches, command: Command) {
        match command {
            Command::Search(order, before) => {
                let id = order.id;
                self.start(searches, *order, before).await;
                if self.config.mode == Mode::Immediate {
                    self.offer_next(searches, id).await;
                }
            }
            Command::Stopped(order) => self.stopped(searches, &order).await,
            Command::Rejected(offer) => {
                let Some(search) = searches.map.get_mut(&offer.order_id) else { return };
                search.declined.insert(offer.pilot_id);
                // Only that offer: a later one to the same pilot (it cannot happen: declined
                // pilots are never asked again) would stay.
                if search.live_id() == Some(offer.id) {
                    search.live = None;
                    search.retry_at = self.clock.now();
                }
                if self.config.mode == Mode::Immediate {
                    self.offer_next(searches, offer.order_id).await;
                }
            }
        }
    }

    /// An order stopped searching: its search ends, and the offers the same transaction
    /// withdrew end too. That is the order's own live offer (unless its pilot took it), and,
    /// when a pilot was given the order by hand, the offer that pilot held for another order,
    /// whose search moves on at once.
    async fn stopped(&self, searches: &mut Searches, order: &Order) {
        if let Some(search) = searches.map.remove(&order.id)
            && let Some(offer) = search.live.filter(|offer| order.pilot_id != Some(offer.pilot_id))
        {
            self.orders.free_from_offer(offer.pilot_id);
            let reason = if order.status == OrderStatus::Cancelled { "cancelled" } else { "taken" };
            self.tell(|listener| listener.withdrawn(&offer, reason));
        }
        // Only an assignment (or a reassignment) can leave its pilot an offer for another
        // order; the trip's later steps cannot.
        let Some(pilot) = order.pilot_id.filter(|_| order.status == OrderStatus::Assigned) else { return };
        let now = self.clock.now();
        let mut moved_on = Vec::new();
        for (id, search) in &mut searches.map {
            if let Some(offer) = search.live.take_if(|offer| offer.pilot_id == pilot) {
                search.retry_at = now;
                moved_on.push((*id, offer));
            }
        }
        for (id, offer) in moved_on {
            // Usually withdrawn already, by the assignment's transaction; one made while that
            // transaction was open is ended here (it would block its order's next offer).
            if let Err(err) = self.orders.withdraw_offer(offer.id).await {
                tracing::warn!(offer_id = %offer.id, error = %err, "could not withdraw an offer; it expires instead");
            }
            self.tell(|listener| listener.withdrawn(&offer, "assigned_elsewhere"));
            if self.config.mode == Mode::Immediate {
                self.offer_next(searches, id).await;
            }
        }
    }

    /// An offer this node meant to expire was decided first: accepted, rejected, or withdrawn
    /// by the change that ended its order's search. Reads how, so that the search neither
    /// asks a pilot who declined again nor leaves a pilot held for an offer that is over.
    async fn decided_elsewhere(&self, searches: &mut Searches, id: OfferId) {
        let Some(search) = searches.map.values_mut().find(|search| search.live_id() == Some(id)) else { return };
        let Some(offer) = search.live.take() else { return };
        search.retry_at = self.clock.now();
        let decided = match self.store.offer(id).await {
            Ok(Some(decided)) => decided,
            other => {
                // Unknown: do not ask that pilot again rather than risk asking twice.
                if let Err(err) = other {
                    tracing::warn!(offer_id = %id, error = %err, "could not read how an offer was decided");
                }
                search.declined.insert(offer.pilot_id);
                return;
            }
        };
        match decided.status {
            OfferStatus::Rejected | OfferStatus::Expired => {
                search.declined.insert(decided.pilot_id);
                self.orders.free_from_offer(decided.pilot_id);
            }
            OfferStatus::Withdrawn => {
                self.orders.free_from_offer(decided.pilot_id);
                let status = self.store.order(decided.order_id).await.ok().flatten().map(|order| order.status);
                let reason = match status {
                    Some(OrderStatus::Cancelled) => "cancelled",
                    // Still searching: the offer ended because its pilot was given another order.
                    Some(OrderStatus::SearchingDriver) => "assigned_elsewhere",
                    _ => "taken",
                };
                self.tell(|listener| listener.withdrawn(&decided, reason));
            }
            // Its deadline has not passed by the database's clock: still this search's offer.
            OfferStatus::Live => {
                if let Some(search) = searches.map.get_mut(&decided.order_id) {
                    search.live = Some(decided);
                }
            }
            OfferStatus::Accepted => {}
        }
    }

    /// Begins following a searching order (once), with the pilots who already declined it
    /// and those who had it and gave it back. A new order has no past, so nothing to read;
    /// for another, if the store cannot say who declined, the search goes on without that (a
    /// pilot may see the order again) rather than not at all.
    async fn start(&self, searches: &mut Searches, order: Order, before: Before) {
        if searches.map.contains_key(&order.id) {
            return;
        }
        let now = self.clock.now();
        let mut started = now;
        let mut declined = HashSet::new();
        let mut live = None;
        if let Before::DroppedBy(pilot) = before {
            declined.insert(pilot);
        }
        if before != Before::Nothing {
            // Every pilot that ever gave it back (this search may follow several), from its
            // events, and every one that turned it down, from its offers. A search resumed
            // after a restart or taken over from another node began when its order last
            // began searching, not now: its wait counts in batched mode.
            match self.store.order_events(order.id, 0, MAX_EVENTS_READ).await {
                Ok(events) => {
                    declined.extend(events.iter().filter_map(dropped_by));
                    let began = events.iter().rev().find(|event| event.kind == "searching_driver");
                    started = began.map_or(now, |event| event.created_at.min(now));
                }
                Err(err) => tracing::warn!(order_id = %order.id, error = %err, "could not read who dropped the order"),
            }
            match self.store.offers_for_order(order.id).await {
                Ok(offers) => {
                    let refused = offers.iter().filter(|offer| offer.status.declined());
                    declined.extend(refused.map(|offer| offer.pilot_id));
                    // A search resumed or taken over waits on (and expires) the offer its
                    // order already has, like one it made itself.
                    live = offers.into_iter().find(|offer| offer.status == OfferStatus::Live);
                }
                Err(err) => tracing::warn!(order_id = %order.id, error = %err, "could not read who declined the order"),
            }
        }
        if let Some(offer) = &live {
            self.hold(offer.pilot_id);
        }
        searches.map.insert(
            order.id,
            Searching {
                order,
                search: Search::starting(now.timestamp_millis()),
                declined,
                live,
                retry_at: now,
                started,
                leased: false,
            },
        );
    }

    /// Leases new searches, expires offers whose time is up (or whose pilot's app has been
    /// gone past the grace), and retries searches that are due.
    async fn tick(&self, searches: &mut Searches) {
        self.lease_new(searches).await;
        let now = self.clock.now();
        let due = self.due_offers(searches, now);
        for (id, reason) in due {
            match self.orders.expire_offer(id, reason).await {
                Ok(Some(offer)) => {
                    if let Some(search) = searches.map.get_mut(&offer.order_id) {
                        search.declined.insert(offer.pilot_id);
                        search.live = None;
                        search.retry_at = now;
                    }
                    self.tell(|listener| listener.withdrawn(&offer, "expired"));
                }
                Ok(None) => self.decided_elsewhere(searches, id).await,
                Err(err) => tracing::warn!(offer_id = %id, error = %err, "could not expire an offer; retrying"),
            }
        }
        if self.config.mode == Mode::Immediate {
            let waiting: Vec<OrderId> = searches.waiting(now).collect();
            for id in waiting {
                self.offer_next(searches, id).await;
            }
        }
    }

    /// The live offers to expire now, with the reason: their time is up (`None`), or their
    /// pilot has been unreachable (no socket open, or silent) for the grace. The grace counts
    /// from when this node first saw the pilot gone during the offer, so an app that drops late
    /// in an offer's window gets the same time to come back as one that drops at once.
    fn due_offers(&self, searches: &mut Searches, now: DateTime<Utc>) -> Vec<(OfferId, Option<&'static str>)> {
        let grace = millis(self.config.offer_unreachable_grace_ms);
        let seen_gone = std::mem::take(&mut searches.unreachable_since);
        let mut due = Vec::new();
        for offer in searches.map.values().filter_map(|search| search.live.as_ref()) {
            if offer.expires_at <= now {
                due.push((offer.id, None));
                continue;
            }
            if !self.grid.get(offer.pilot_id).is_some_and(|pilot| pilot.stale) {
                continue;
            }
            let since = seen_gone.get(&offer.id).copied().unwrap_or(now);
            searches.unreachable_since.insert(offer.id, since);
            if since + grace <= now {
                due.push((offer.id, Some(UNREACHABLE)));
            }
        }
        due
    }

    /// Immediate mode: offers the order to its best candidate, widening the radius while
    /// nobody is in reach; nobody even at the widest radius: try again later.
    async fn offer_next(&self, searches: &mut Searches, id: OrderId) {
        loop {
            let Some(search) = searches.map.get(&id) else { return };
            if search.live.is_some() {
                return;
            }
            for candidate in self.candidates(search) {
                match self.offer(searches, id, candidate).await {
                    Attempt::Made | Attempt::Gone | Attempt::Failed => return,
                    Attempt::Busy => continue,
                }
            }
            let now = self.clock.now();
            let Some(search) = searches.map.get_mut(&id) else { return };
            if !search.search.widen(&self.config) {
                search.retry_at = now + millis(self.config.retry_interval_ms);
                return;
            }
        }
    }

    /// Batched mode: assigns every waiting order a pilot at the least total cost, then
    /// offers. An order left without one widens its radius for the next window if nobody was
    /// in reach, or once it has waited long enough at this radius.
    async fn batch(&self, searches: &mut Searches) {
        let now = self.clock.now();
        let waiting: Vec<OrderId> = searches.waiting(now).collect();
        if waiting.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let mut batch = batch::Batch::new(&self.config);
        let mut positions = HashMap::new();
        for id in &waiting {
            let search = &searches.map[id];
            let candidates = self.candidates(search);
            positions.extend(candidates.iter().map(|candidate| (candidate.pilot, candidate.position)));
            let waited_ms = (now - search.started).num_milliseconds();
            batch.add_waiting_order(
                candidates.iter().map(|candidate| (candidate.pilot, candidate.distance_m)),
                waited_ms,
            );
        }
        // A spike's batch can take tens of milliseconds to solve: off the runtime's workers.
        let (batch, chosen) = match tokio::task::spawn_blocking(move || {
            let chosen = batch.solve();
            (batch, chosen)
        })
        .await
        {
            Ok(solved) => solved,
            Err(err) => {
                tracing::error!(error = %err, "the batch assignment failed; the orders wait for the next window");
                return;
            }
        };
        metrics::histogram!("matching_batch_seconds").record(started.elapsed().as_secs_f64());
        for (index, (id, pilot)) in waiting.into_iter().zip(chosen).enumerate() {
            let attempt = match pilot {
                Some((pilot, distance_m)) => {
                    let candidate = Candidate { pilot, position: positions[&pilot], distance_m };
                    self.offer(searches, id, candidate).await
                }
                None => Attempt::Busy,
            };
            if attempt == Attempt::Busy
                && let Some(search) = searches.map.get_mut(&id)
                && !search.search.after_window(&self.config, batch.had_candidates(index), now.timestamp_millis())
                && !batch.had_candidates(index)
            {
                // Nobody even at the widest radius.
                search.retry_at = now + millis(self.config.retry_interval_ms);
            }
        }
    }

    /// The order's candidates at its current radius, best first.
    fn candidates(&self, search: &Searching) -> Vec<Candidate> {
        let now_ms = self.clock.now().timestamp_millis();
        let filter = self.grid.available_filter(Some(search.order.vehicle_type), now_ms);
        let declined: Vec<UserId> = search.declined.iter().copied().collect();
        let pickup = search.order.pickup.point();
        let (count, radius) = match self.config.mode {
            Mode::Immediate => (self.config.candidates, search.search.radius_m(&self.config)),
            Mode::Batched => (self.config.batch_candidates, search.search.batch_radius_m(&self.config)),
        };
        let mut candidates: Vec<Candidate> = self
            .grid
            .nearest_excluding(count, pickup, radius, &filter, &declined)
            .into_iter()
            .map(|found| Candidate {
                pilot: found.pilot.id,
                position: found.pilot.position,
                distance_m: found.distance_m,
            })
            .collect();
        let score = |candidate: &Candidate| matching::score(&self.config, candidate.distance_m);
        candidates.sort_by(|a, b| score(a).total_cmp(&score(b)));
        candidates
    }

    /// Offers order `id` to `candidate`.
    async fn offer(&self, searches: &mut Searches, id: OrderId, candidate: Candidate) -> Attempt {
        let expires_at = self.clock.now() + Duration::seconds(self.config.offer_timeout_secs as i64);
        // What the offer shows of the order (places, fare, notes) does not change while it
        // searches: the copy the search holds will do.
        let Some(order) = searches.map.get(&id).map(|search| search.order.clone()) else { return Attempt::Gone };
        match self.orders.make_offer(&order, candidate.pilot, candidate.distance_m, expires_at).await {
            Ok(Some(offer)) => {
                self.hold(candidate.pilot);
                let payload = offer_payload(&offer, &order, self.orders.pilot_earning(&order).0, self.clock.now());
                if let Some(search) = searches.map.get_mut(&id) {
                    metrics::histogram!("matching_order_to_offer_seconds")
                        .record((offer.created_at - search.started).as_seconds_f64());
                    search.live = Some(offer.clone());
                }
                tracing::info!(order_id = %id, pilot = %candidate.pilot, offer_id = %offer.id,
                    pickup_distance_m = offer.pickup_distance_m, "offer made");
                self.tell(|listener| listener.offered(&offer, &payload));
                Attempt::Made
            }
            Ok(None) => {
                searches.map.remove(&id);
                Attempt::Gone
            }
            Err(Error::Conflict { code: "OFFER_CONFLICT", .. }) => self.offered_elsewhere(searches, id).await,
            Err(err) => {
                tracing::warn!(order_id = %id, error = %err, "could not make an offer; retrying shortly");
                if let Some(search) = searches.map.get_mut(&id) {
                    search.retry_at = self.clock.now() + millis(self.config.retry_interval_ms);
                }
                Attempt::Failed
            }
        }
    }

    /// An offer for order `id` could not be made: the pilot holds one made elsewhere, or the
    /// order has one. The latter happens when another node follows the same search too (in
    /// a cluster, for the moment a lease changes hands: a node too slow to renew its lease
    /// follows on until its next renewal tells it otherwise): that offer is then this
    /// search's live offer as well, waited for (and expired, or moved on from after a
    /// rejection) like one made here, instead of trying every other candidate in vain.
    async fn offered_elsewhere(&self, searches: &mut Searches, id: OrderId) -> Attempt {
        let live = match self.store.offers_for_order(id).await {
            Ok(offers) => offers.into_iter().find(|offer| offer.status == OfferStatus::Live),
            Err(err) => {
                tracing::warn!(order_id = %id, error = %err, "could not read the order's offers");
                None
            }
        };
        match (live, searches.map.get_mut(&id)) {
            (Some(live), Some(search)) => {
                tracing::debug!(order_id = %id, offer_id = %live.id, "the order's offer was made elsewhere");
                search.live = Some(live);
                Attempt::Made
            }
            // The pilot is not free: try the next.
            _ => Attempt::Busy,
        }
    }

    /// Marks a pilot as holding an offer, so no other search picks it.
    fn hold(&self, pilot: UserId) {
        self.grid.change_status(
            pilot,
            PilotStatus::Available,
            PilotStatus::OnOffer,
            self.clock.now().timestamp_millis(),
        );
    }

    fn tell(&self, call: impl Fn(&dyn OfferListener)) {
        let listeners = self.listeners.read().clone();
        for listener in listeners {
            call(listener.as_ref());
        }
    }
}

/// What an attempt to offer came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Made,
    /// The order no longer searches.
    Gone,
    /// This pilot cannot take it: try another.
    Busy,
    /// The store failed: try later.
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    pilot: UserId,
    position: crate::domain::LatLng,
    distance_m: f64,
}

/// One searching order as the matchmaker follows it.
#[derive(Debug)]
struct Searching {
    order: Order,
    search: Search,
    /// Pilots who rejected it or let its offer expire.
    declined: HashSet<UserId>,
    live: Option<Offer>,
    /// Not before this (nobody was found).
    retry_at: DateTime<Utc>,
    /// When the order began searching (this time: after a pilot dropped it, since then).
    started: DateTime<Utc>,
    /// In a cluster: this node holds its lease.
    leased: bool,
}

impl Searching {
    fn live_id(&self) -> Option<OfferId> {
        self.live.as_ref().map(|offer| offer.id)
    }
}

/// How often pilots busy without an order are looked for, and how long one must have been
/// busy to be looked at.
const BUSY_CHECK_EVERY: StdDuration = StdDuration::from_secs(30);
/// How often overdue offers, whichever node made them, and pilots held for no offer are
/// looked for.
const OFFERS_CHECK_EVERY: StdDuration = StdDuration::from_secs(1);

#[derive(Debug, Default)]
struct Searches {
    map: HashMap<OrderId, Searching>,
    /// Live offers whose pilot was unreachable at the last tick, and since when.
    unreachable_since: HashMap<OfferId, DateTime<Utc>>,
}

impl Searches {
    /// Orders without a live offer whose next attempt is due, oldest first.
    fn waiting(&self, now: DateTime<Utc>) -> impl Iterator<Item = OrderId> + use<> {
        let mut ids: Vec<OrderId> = self
            .map
            .iter()
            .filter(|(_, search)| search.live.is_none() && search.retry_at <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids.into_iter()
    }
}

/// Hears orders start and stop searching.
struct Hears(mpsc::UnboundedSender<Command>);

impl OrderListener for Hears {
    /// A search that began on another node is that node's to follow; one that ended there
    /// ends here too (this node may have made its offer).
    fn committed_elsewhere(&self, order: &Order, _events: &[OrderEvent]) {
        if order.status != OrderStatus::SearchingDriver && order.status != OrderStatus::Pending {
            let _ = self.0.send(Command::Stopped(Box::new(order.clone())));
        }
    }

    fn committed(&self, order: &Order, events: &[OrderEvent]) {
        let began = events.iter().any(|event| event.kind == OrderStatus::SearchingDriver.as_str());
        let command = if order.status == OrderStatus::SearchingDriver && began {
            let dropped_by = events.iter().find_map(dropped_by);
            let before = match dropped_by {
                Some(pilot) => Before::DroppedBy(pilot),
                None if events.iter().any(|event| event.kind == "created") => Before::Nothing,
                None => Before::Unknown,
            };
            Command::Search(Box::new(order.clone()), before)
        } else if order.status != OrderStatus::SearchingDriver && order.status != OrderStatus::Pending {
            Command::Stopped(Box::new(order.clone()))
        } else {
            return;
        };
        let _ = self.0.send(command);
    }
}

/// The pilot an `unassigned` event took the order from (one who dropped it).
fn dropped_by(event: &OrderEvent) -> Option<UserId> {
    (event.kind == "unassigned").then(|| event.previous_pilot())?
}

/// The `offer` event's payload.
pub fn offer_payload(offer: &Offer, order: &Order, earning_paise: i64, now: DateTime<Utc>) -> Value {
    json!({
        "offer_id": offer.id,
        "order_id": order.id,
        "expires_at": offer.expires_at,
        "expires_in_ms": (offer.expires_at - now).num_milliseconds().max(0),
        "pickup_distance_m": offer.pickup_distance_m,
        "order": {
            "id": order.id,
            "vehicle_type": order.vehicle_type,
            "pickup": order.pickup,
            "drop": order.drop,
            "fare_paise": order.fare.total_paise,
            // What the pilot will earn for it: the fare less the platform's commission.
            "earning_paise": earning_paise,
            "payment_method": order.payment_method,
            "trip_distance_m": distance_m(order.pickup.point(), order.drop.point()).round(),
            "notes": order.notes,
        },
    })
}

fn millis(ms: u64) -> Duration {
    Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX / 2))
}
