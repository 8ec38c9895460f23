//! Wiring: [`AppState`] (cheap clonable handles to everything a request may need), built
//! once by [`App::build`], served by [`App::serve`] on an already-bound listener until a
//! shutdown future resolves.
//!
//! Shutdown: stop accepting, let in-flight requests finish for at most
//! `server.shutdown_timeout_secs`, stop background tasks and close the database pool (at most
//! 5 s more), return.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::{ExposeSecret, SecretString};
use socketioxide::layer::SocketIoLayer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::auth::password::PasswordHasher;
use crate::auth::revocation::Revocations;
use crate::auth::token::Tokens;
use crate::clock::Clock;
use crate::cluster::{Cluster, Feed};
use crate::config::{Config, redact_url};
use crate::fleet::Fleet;
use crate::grid::PilotIndex;
use crate::http::ratelimit::RateLimiter;
use crate::jobs::Worker;
use crate::matchmaker::{Matchmaker, SearchLease};
use crate::money::Money;
use crate::orders::service_area::ServiceArea;
use crate::orders::traces::TraceRecorder;
use crate::orders::tracking::Tracking;
use crate::orders::{OrderJobs, Orders};
use crate::payments::{Payments, RefundJobs};
use crate::realtime::Realtime;
use crate::store::positions::{self, PositionMirror};
use crate::store::redis::RedisHandle;
use crate::store::{self, Store};

/// After the grace period for requests, how long stopping background work and closing the
/// database may take before the server exits anyway.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything handlers share, behind one `Arc`: every request clones it (once per extractor
/// and middleware), so a clone is one reference count, not one per service.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub redis: Option<RedisHandle>,
    pub auth: Arc<Auth>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub metrics: PrometheusHandle,
    pub clock: Clock,
    /// The live pilot index.
    pub grid: Arc<PilotIndex>,
    pub fleet: Arc<Fleet>,
    pub orders: Arc<Orders>,
    pub money: Arc<Money>,
    pub payments: Arc<Payments>,
    /// Pilots' payouts.
    pub payouts: Arc<crate::payouts::Payouts>,
    /// Runs durable jobs; tests call `run_due` on it to run what the clock made due.
    pub jobs: Arc<Worker>,
    /// Turns searching orders into offers.
    pub matchmaker: Arc<Matchmaker>,
    /// Which pilot carries which order.
    pub tracking: Arc<Tracking>,
    /// Buffers the trip traces of pilots on orders.
    pub traces: Arc<TraceRecorder>,
    /// This node's part in a cluster (`[cluster] enabled`).
    pub cluster: Option<Arc<Cluster>>,
}

/// A built application, ready to serve.
pub struct App {
    state: AppState,
    mirror: Option<PositionMirror>,
    sockets: SocketIoLayer,
    realtime: Option<Realtime>,
}

impl App {
    /// Connects the store (applying migrations) and prepares Redis and auth.
    pub async fn build(config: Config, clock: Clock) -> anyhow::Result<Self> {
        // The recorder first: what is recorded before it is installed is lost (Redis found
        // down at start left no `redis_up` series, and its alert could never fire).
        let metrics = crate::telemetry::metrics();
        let store = store::open(&config.database, config.database_url()).await?;
        tracing::info!(backend = %store.backend(), "store ready");
        let redis = match config.redis_url() {
            Some(url) => {
                tracing::info!(redis = %redact_url(url), "using redis");
                Some(RedisHandle::new(url, &config.redis)?)
            }
            None => None,
        };
        let secret = jwt_secret(&config)?;
        let tokens = Tokens::new(secret.expose_secret().as_bytes(), &config.auth);
        let revocations = Revocations::new(store.clone(), redis.clone(), tokens.access_ttl(), clock.clone());
        let passwords = PasswordHasher::new(&config.auth)?;
        let mut auth = Auth::new(store.clone(), tokens, passwords, revocations, clock.clone());
        let push = &config.notifications;
        let push_ttl = push.push_enabled().then(|| push.ttl());
        if let Some(ttl) = push_ttl {
            auth = auth.push_ended_sessions(ttl);
        }
        let grid = Arc::new(PilotIndex::new(&config.grid));
        let feed = match &redis {
            Some(redis) if config.cluster.enabled => {
                let node = match config.cluster.node_id.as_str() {
                    "" => default_node_id(config.server.addr.port()),
                    node => node.to_owned(),
                };
                tracing::info!(node = %node, "cluster node id");
                Some(Feed::new(redis, &node))
            }
            _ => None,
        };
        let mirror = match &redis {
            Some(redis) => {
                let now = clock.now().timestamp_millis();
                // A lone node owns what it restores; in a cluster, whichever node hears a pilot.
                let owned = feed.is_none();
                positions::warm_start(&grid, redis, now, config.grid.forget_after_secs, owned).await;
                let mirror_config = config.redis.positions.clone();
                Some(PositionMirror::new(
                    grid.clone(),
                    redis.clone(),
                    clock.clone(),
                    mirror_config,
                    &config.grid,
                    feed.clone(),
                ))
            }
            None => None,
        };
        let fleet =
            Fleet::new(grid.clone(), store.clone(), clock.clone(), config.grid.max_points_per_report, &config.pilots);
        let area =
            ServiceArea::from_config(&config.service_area).map_err(|err| anyhow::anyhow!("service_area: {err}"))?;
        let orders = Arc::new(Orders::new(
            store.clone(),
            grid.clone(),
            clock.clone(),
            &config.pricing,
            area,
            config.orders.clone(),
            secret.expose_secret().as_bytes(),
            !config.payments.gateway.is_empty(),
            crate::orders::Outbox {
                webhooks: config.webhooks.enabled(),
                push_ttl,
                email: push.email.enabled,
                reminder_before: push_ttl
                    .filter(|_| push.reminder_before_search_secs > 0)
                    .map(|_| crate::clock::seconds(push.reminder_before_search_secs)),
            },
            config.pilots.cash_debt_limit_paise,
        ));
        // Surge prices with the demand of the orders already searching from the first quote.
        orders.refresh_demand().await.context("reading the orders searching")?;
        orders.refresh_dues().await.context("reading the fees customers owe")?;
        let tracking = Arc::new(Tracking::default());
        let now_ms = clock.now().timestamp_millis();
        for order in store.active_orders().await? {
            tracking.follow(&order);
            // The database is the truth: a pilot carrying an order is busy, whatever the mirror
            // remembered (an accept committed just before a crash left it on an offer there).
            if let Some(pilot) = order.pilot_id {
                let _ = grid.set_status(pilot, crate::domain::PilotStatus::Busy, now_ms);
            }
        }
        orders.subscribe(tracking.clone());
        let traces = Arc::new(TraceRecorder::new(tracking.clone(), store.clone()));
        fleet.subscribe(traces.clone());
        let lease = feed.as_ref().map(|feed| SearchLease {
            node: feed.node().into(),
            duration: Duration::from_secs(config.cluster.search_lease_secs),
        });
        let matchmaker = Matchmaker::new(
            orders.clone(),
            store.clone(),
            grid.clone(),
            tracking.clone(),
            clock.clone(),
            config.matching.clone(),
            lease,
        );
        let payments = Arc::new(Payments::new(&config.payments, store.clone(), clock.clone(), orders.clone())?);
        let mut jobs = Worker::new(store.clone(), clock.clone(), config.jobs.clone());
        let order_jobs = Arc::new(OrderJobs(orders.clone()));
        jobs.register(crate::orders::START_SEARCH_JOB, order_jobs.clone());
        jobs.register(crate::orders::PAYMENT_TIMEOUT_JOB, order_jobs.clone());
        jobs.register(crate::orders::NO_PILOT_JOB, order_jobs);
        jobs.register(crate::orders::GATEWAY_REFUND_JOB, Arc::new(RefundJobs(payments.clone())));
        if config.webhooks.enabled() {
            let deliveries = crate::webhooks::Deliveries::new(config.webhooks.clone(), clock.clone())?;
            jobs.register(crate::webhooks::ORDER_EVENT_JOB, Arc::new(deliveries));
        }
        if config.notifications.push_enabled() {
            let fcm = Arc::new(crate::notify::fcm::Fcm::new(&config.notifications.fcm)?);
            let notifications = &config.notifications;
            let push = crate::notify::PushJobs::new(store.clone(), fcm, notifications, clock.clone(), jobs.waker());
            let push = Arc::new(push);
            jobs.register(crate::notify::PUSH_JOB, push.clone());
            jobs.register(crate::notify::DEVICE_JOB, push);
        }
        if config.notifications.email.enabled {
            let email =
                crate::notify::email::EmailJobs::new(&config.notifications.email, store.clone(), orders.clone())?;
            jobs.register(crate::notify::email::EMAIL_JOB, Arc::new(email));
        }
        let money = Arc::new(Money::new(store.clone(), clock.clone()));
        let manual = Arc::new(crate::payouts::ManualPayouts);
        let payouts = Arc::new(crate::payouts::Payouts::new(store.clone(), clock.clone(), manual));
        let cluster = match (feed, &redis) {
            (Some(feed), Some(redis)) => Some(Cluster::join(
                feed,
                redis.clone(),
                config.cluster.clone(),
                orders.clone(),
                matchmaker.clone(),
                &fleet,
                tracking.clone(),
            )),
            _ => None,
        };
        let fleet = Arc::new(fleet);
        if config.notifications.push_enabled() {
            let arrival =
                crate::notify::ArrivalPush::new(store.clone(), tracking.clone(), clock.clone(), &config.notifications);
            let arrival = Arc::new(arrival);
            fleet.subscribe(arrival.clone());
            if let Some(cluster) = &cluster {
                cluster.subscribe_moves(arrival);
            }
            let wake = jobs.waker();
            let push = crate::notify::OfferPush::new(store.clone(), grid.clone(), fleet.clone(), clock.clone(), wake);
            let push = Arc::new(push);
            matchmaker.subscribe(push.clone());
            if let Some(cluster) = &cluster {
                cluster.subscribe_offers(push);
            }
        }
        let state = AppState(Arc::new(Services {
            money,
            payouts,
            rate_limiter: RateLimiter::new(&config.rate_limit),
            config: Arc::new(config),
            store,
            redis,
            auth: Arc::new(auth),
            metrics,
            clock,
            grid,
            fleet,
            orders,
            payments,
            jobs: Arc::new(jobs),
            matchmaker,
            tracking,
            traces,
            cluster,
        }));
        let (sockets, realtime) = Realtime::attach(&state).await?;
        Ok(Self { state, mirror, sockets, realtime: Some(realtime) })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains as described in the module docs.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr().context("reading the listener's address")?;
        tracing::info!(%addr, url = %format!("http://{addr}"), "dispatchd listening");
        let stop = CancellationToken::new();
        let draining = CancellationToken::new();
        let realtime = self.realtime.take().expect("served once");
        let io = realtime.io();
        let mut background = self.spawn_background(stop.clone());
        background.push(tokio::spawn(realtime.run(stop.clone())));
        // Matching stops as the drain begins, releasing its search leases: in a cluster the
        // other nodes take the searches at once, not after the drain (this node's sockets
        // close now anyway, so its offers could reach nobody).
        background.push(tokio::spawn(self.state.matchmaker.clone().run(draining.clone())));
        let Self { state, sockets, .. } = self;

        let on_signal = draining.clone();
        tokio::spawn(async move {
            shutdown.await;
            on_signal.cancel();
            // Open sockets would hold the drain for the whole grace period: close them (the
            // apps reconnect to another node, or to this one once it is back).
            io.close().await;
        });
        // Socket.io sits outside the HTTP layers: long-polling requests outlive the request
        // timeout by design, and sockets have their own limits and metrics.
        let app = crate::http::router(state.clone())
            .layer(sockets)
            .layer(axum::middleware::map_request(crate::realtime::compact_request));
        let app = crate::http::edge(app, &state.config);
        let config = &state.config;
        let limits = crate::http::server::Limits {
            header_read_timeout: Duration::from_secs(config.server.header_read_timeout_secs),
            // Behind a proxy every connection comes from the proxy (see http::server).
            max_connections_per_ip: Some(config.server.max_connections_per_ip)
                .filter(|_| config.rate_limit.client_ip_header.is_empty()),
        };
        let mut server = tokio::spawn(crate::http::server::serve(listener, app, limits, draining.clone()));
        let grace = Duration::from_secs(state.config.server.shutdown_timeout_secs);
        tokio::select! {
            result = &mut server => result.context("server task failed")?,
            () = async { draining.cancelled().await; tokio::time::sleep(grace).await } => {
                // The connections still open end with the process (or the runtime).
                tracing::warn!(grace_secs = grace.as_secs(), "shutdown grace period over; abandoning open requests");
                server.abort();
            }
        }
        stop.cancel();
        // Background work stops at its next await; a request abandoned above may still hold a
        // database connection, so closing the pool is bounded too: the exit is promised.
        let cleanup = async {
            for task in background {
                let _ = task.await;
            }
            state.store.close().await;
        };
        if tokio::time::timeout(CLEANUP_TIMEOUT, cleanup).await.is_err() {
            tracing::warn!(secs = CLEANUP_TIMEOUT.as_secs(), "background work did not stop in time; exiting anyway");
        }
        tracing::info!("dispatchd stopped");
        Ok(())
    }

    fn spawn_background(&mut self, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let sweep_every = Duration::from_millis(self.state.config.grid.sweep_interval_ms);
        tasks.push(tokio::spawn(self.state.fleet.clone().run_presence(sweep_every, stop.clone())));
        if let Some(mirror) = self.mirror.take() {
            tasks.push(tokio::spawn(mirror.run(stop.clone())));
        }
        tasks.push(tokio::spawn(self.state.jobs.clone().run(stop.clone())));
        tasks.push(tokio::spawn(self.state.traces.clone().run(stop.clone())));
        tasks.push(tokio::spawn(self.state.orders.clone().run_key_purge(stop.clone())));
        tasks.push(tokio::spawn(self.state.orders.clone().run_demand(stop.clone())));
        if let Some(redis) = self.state.redis.clone() {
            tasks.push(tokio::spawn(redis.run_health_loop(stop.clone())));
        }
        if let Some(cluster) = self.state.cluster.clone() {
            tasks.push(tokio::spawn(cluster.run(stop.clone())));
        }
        if let Some(limiter) = self.state.rate_limiter.clone() {
            tasks.push(tokio::spawn(every(Duration::from_secs(60), stop.clone(), move || {
                limiter.forget_idle_clients()
            })));
        }
        let metrics = self.state.metrics.clone();
        tasks.push(tokio::spawn(every(Duration::from_secs(5), stop, move || metrics.run_upkeep())));
        tasks
    }
}

/// Builds and serves: what `dispatchd serve` runs.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    App::build(config, Clock::system()).await?.serve(listener, shutdown).await
}

/// Runs `work` every `period` until `stop`, each run awaited before the next tick; a tick
/// missed while it ran is not made up (the next one comes `period` after it).
pub(crate) async fn every_awaited<F: std::future::Future<Output = ()>>(
    period: Duration,
    stop: &CancellationToken,
    mut work: impl FnMut() -> F,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = ticks.tick() => work().await,
        }
    }
}

/// Runs `work` every `period` until `stop`.
pub(crate) async fn every(period: Duration, stop: CancellationToken, work: impl Fn() + Send + 'static) {
    let mut ticks = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => work(),
        }
    }
}

/// A node's name when none is configured: the host's name and the port it serves on, the
/// same after a restart (so a restarted node resumes its own searches at once), different
/// for two nodes on one host. On an ephemeral port (0), a random suffix instead of the port.
fn default_node_id(port: u16) -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer it is given.
    let written = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let end = name.iter().position(|byte| *byte == 0).unwrap_or(name.len());
    let host = String::from_utf8_lossy(&name[..end]).into_owned();
    let host = if written && !host.is_empty() { host } else { "dispatchd".to_owned() };
    match port {
        0 => format!("{host}:{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        port => format!("{host}:{port}"),
    }
}

/// The configured JWT secret or, for the embedded store only, one generated once and kept
/// beside the database file so tokens survive restarts.
fn jwt_secret(config: &Config) -> anyhow::Result<SecretString> {
    if !config.auth.jwt_secret.expose_secret().is_empty() {
        return Ok(config.auth.jwt_secret.clone());
    }
    let dir = config.database.sqlite_path.parent().filter(|dir| !dir.as_os_str().is_empty());
    let path = dir.unwrap_or(Path::new(".")).join("jwt.secret");
    load_or_create_secret(&path).with_context(|| format!("preparing the JWT secret in {}", path.display()))
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<SecretString> {
    use std::io::Write as _;

    if let Ok(existing) = std::fs::read_to_string(path) {
        let secret = existing.trim().to_owned();
        anyhow::ensure!(secret.len() >= 32, "{} holds fewer than 32 bytes", path.display());
        return Ok(SecretString::from(secret));
    }
    let mut bytes = [0u8; 48];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let secret = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(file) => file,
        // Another process created it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return load_or_create_secret(path),
        Err(err) => return Err(err.into()),
    };
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "generated a JWT secret for the embedded store");
    Ok(SecretString::from(secret))
}
