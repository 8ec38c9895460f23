//! Shared test harness: a real server on port 0 with a fresh, migrated Postgres database
//! per test (or a temporary SQLite file), real Redis under a key prefix of its own, and a
//! TCP proxy that tests cut to make a dependency "go down".
//!
//! Environment: `DISPATCHD_TEST_DATABASE_URL` (a Postgres URL whose user may create
//! databases; default postgres://postgres@127.0.0.1:5432/postgres) and
//! `DISPATCHD_TEST_REDIS_URL` (default redis://127.0.0.1:6379). `scripts/test.sh` sets both.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod field;
pub mod gateway;
pub mod node;
pub mod redis_server;
pub mod sio;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatchd::app::{App, AppState};
use dispatchd::clock::Clock;
use dispatchd::config::Config;
use dispatchd::domain::{PersonName, Phone, Role};
use figment::providers::Serialized;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TEST_JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const PASSWORD: &str = "correct horse battery";

pub fn postgres_admin_url() -> String {
    std::env::var("DISPATCHD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("DISPATCHD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Creates an empty database named `dispatchd_test_<uuid>` and returns its URL.
/// `scripts/test.sh` drops them all when the suite ends.
pub async fn fresh_postgres_database() -> String {
    let admin_url = postgres_admin_url();
    let name = format!("dispatchd_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|err| panic!("cannot reach the test Postgres (DISPATCHD_TEST_DATABASE_URL): {err}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
    admin.close().await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').expect("the test database URL ends with /<database>");
    format!("{base}/{name}")
}

/// A redis key prefix no other test uses.
pub fn fresh_redis_prefix() -> String {
    format!("dispatchd-test:{}:", uuid::Uuid::new_v4().simple())
}

/// Which database a test app uses.
#[derive(Debug, Clone)]
pub enum Database {
    /// A fresh Postgres database.
    FreshPostgres,
    /// This Postgres URL (e.g. one shared with another app, or behind a proxy).
    Postgres(String),
    /// A SQLite file in a fresh temporary directory.
    Sqlite,
}

/// How to start a test app. `Default` is Postgres, no Redis, generous rate limit.
#[derive(Debug, Clone)]
pub struct Options {
    pub database: Database,
    pub redis: Option<RedisOption>,
    pub clock: Clock,
    pub settings: Vec<(&'static str, Value)>,
}

#[derive(Debug, Clone)]
pub struct RedisOption {
    pub url: String,
    pub prefix: String,
}

impl Default for Options {
    fn default() -> Self {
        Self { database: Database::FreshPostgres, redis: None, clock: Clock::system(), settings: Vec::new() }
    }
}

impl Options {
    pub fn with_redis(mut self) -> Self {
        self.redis = Some(RedisOption { url: redis_url(), prefix: fresh_redis_prefix() });
        self
    }

    pub fn set(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.settings.push((key, value.into()));
        self
    }
}

/// A running server and a client for it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    pub clock: Clock,
    pub database_url: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    _sqlite_dir: Option<tempfile::TempDir>,
}

/// An answer, with the body parsed as JSON (or `Null` when it is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `error.code` of a failure envelope, checking the envelope's shape on the way.
    pub fn error_code(&self) -> &str {
        assert_eq!(self.body["success"], json!(false), "not a failure envelope: {:?}", self.body);
        assert!(self.body["error"]["message"].is_string(), "failure without message: {:?}", self.body);
        self.body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {:?}", self.body))
    }

    pub fn data(&self) -> &Value {
        assert_eq!(self.body["success"], json!(true), "not a success envelope: {:?}", self.body);
        &self.body["data"]
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// A logged-in user: what register or login gave back.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub phone: String,
    pub access: String,
    pub refresh: String,
}

impl Session {
    pub fn from_grant(grant: &Value) -> Self {
        Self {
            user_id: grant["user"]["id"].as_str().expect("user id").to_owned(),
            phone: grant["user"]["phone"].as_str().expect("phone").to_owned(),
            access: grant["access_token"].as_str().expect("access token").to_owned(),
            refresh: grant["refresh_token"].as_str().expect("refresh token").to_owned(),
        }
    }
}

/// The pickup and drop test orders use (Bengaluru, about 5 km apart, inside the default
/// service area).
pub const PICKUP: (f64, f64) = (12.9716, 77.5946);
pub const DROP: (f64, f64) = (13.0100, 77.6200);

/// A place as order requests give it.
pub fn place(point: (f64, f64), address: &str) -> Value {
    json!({ "lat": point.0, "lng": point.1, "address": address })
}

/// An order request from [`PICKUP`] to [`DROP`] for a bike, paid by `payment`.
pub fn order_body(payment: &str) -> Value {
    json!({
        "pickup": place(PICKUP, "MG Road metro"),
        "drop": place(DROP, "Hebbal flyover"),
        "vehicle_type": "bike",
        "payment_method": payment,
    })
}

/// A phone number no other test uses.
pub fn unique_phone() -> String {
    let digits: u64 = rand::random::<u64>() % 10_000_000_000;
    format!("+91{digits:010}")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        let (config, database_url, sqlite_dir) = test_config(&options).await;
        if std::env::var_os("DISPATCHD_TEST_LOG").is_some() {
            // Logs of the server under test, for debugging: DISPATCHD_TEST_LOG=1 cargo test ...
            let none = dispatchd::traces::Exporters::default();
            dispatchd::telemetry::init_tracing(&config.log, dispatchd::telemetry::LogTarget::Stderr, &none);
        }
        let app = App::build(config, options.clock.clone()).await.expect("the app builds");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = app.state().clone();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            client: reqwest::Client::new(),
            state,
            clock: options.clock,
            database_url,
            shutdown: Some(shutdown),
            server: Some(server),
            _sqlite_dir: sqlite_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body }
    }

    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> Reply {
        let mut request = self.client.post(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn put(&self, path: &str, body: Value, token: Option<&str>) -> Reply {
        let mut request = self.client.put(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.client.delete(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    /// Signs up a customer (or a pilot with a bike, approved by an admin as it would be
    /// before its first shift) and returns the session.
    pub async fn register(&self, role: &str) -> Session {
        let session = self.sign_up(role).await;
        if role == "pilot" {
            self.approve(&session).await;
        }
        session
    }

    /// Signs up a customer or a pilot (with a bike, waiting for approval).
    pub async fn sign_up(&self, role: &str) -> Session {
        let mut body = json!({ "name": "Test User", "phone": unique_phone(), "password": PASSWORD, "role": role });
        if role == "pilot" {
            body["vehicle_type"] = json!("bike");
        }
        let reply = self.post("/api/v1/auth/register", body, None).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        Session::from_grant(reply.data())
    }

    /// Approves a pilot as `dispatchd admin approve-pilot` does.
    pub async fn approve(&self, pilot: &Session) {
        let plate = dispatchd::domain::VehiclePlate::parse("KA01AB1234").unwrap();
        let change = dispatchd::store::ApprovalChange::Approve { plate, model: None };
        self.state.fleet.decide_approval(pilot.user_id.parse().unwrap(), &change, None).await.unwrap();
    }

    /// Creates a dispatcher or admin the way `dispatchd admin create-user` does, and logs in.
    pub async fn staff(&self, role: Role) -> Session {
        let phone = unique_phone();
        let password = dispatchd::auth::password::NewPassword::parse(PASSWORD.to_owned()).unwrap();
        self.state
            .auth
            .create_staff(PersonName::parse("Staff").unwrap(), Phone::parse(&phone).unwrap(), password, role)
            .await
            .unwrap();
        self.login(&phone).await
    }

    pub async fn login(&self, phone: &str) -> Session {
        let reply = self.post("/api/v1/auth/login", json!({ "phone": phone, "password": PASSWORD }), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        Session::from_grant(reply.data())
    }

    /// Signals shutdown; the returned handle resolves when the server has stopped.
    pub fn begin_shutdown(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.take().expect("shut down only once")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

async fn test_config(options: &Options) -> (Config, Option<String>, Option<tempfile::TempDir>) {
    let mut figment = Config::figment(None)
        .unwrap()
        .merge(Serialized::global("auth.jwt_secret", TEST_JWT_SECRET))
        .merge(Serialized::global("rate_limit.requests_per_minute", 100_000))
        .merge(Serialized::global("redis.health_interval_ms", 50))
        .merge(Serialized::global("server.shutdown_timeout_secs", 5))
        // What the test's listener is: an ephemeral port (so each node gets a name of its own).
        .merge(Serialized::global("server.addr", "127.0.0.1:0"))
        // Tests run due jobs themselves (`state.jobs.run_due()`), after moving their clock.
        .merge(Serialized::global("jobs.poll_interval_ms", 3_600_000));
    let (database_url, sqlite_dir) = match &options.database {
        Database::FreshPostgres => (Some(fresh_postgres_database().await), None),
        Database::Postgres(url) => (Some(url.clone()), None),
        Database::Sqlite => (None, Some(tempfile::tempdir().unwrap())),
    };
    if let Some(url) = &database_url {
        figment = figment.merge(Serialized::global("database.url", url));
    }
    if let Some(dir) = &sqlite_dir {
        figment = figment.merge(Serialized::global("database.sqlite_path", dir.path().join("dispatchd.db")));
    }
    if let Some(redis) = &options.redis {
        figment = figment
            .merge(Serialized::global("redis.url", &redis.url))
            .merge(Serialized::global("redis.key_prefix", &redis.prefix));
    }
    for (key, value) in &options.settings {
        figment = figment.merge(Serialized::global(key, value));
    }
    let config = Config::from_figment(figment).expect("test configuration is valid");
    (config, database_url, sqlite_dir)
}

/// Polls `check` every 20 ms until it holds, failing after `within`. For conditions that
/// become true in the background (a health loop noticing Redis), not for server start-up.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of a real service. [`Proxy::cut`] closes the port and every open
/// connection, as if the service went down; [`Proxy::restore`] listens on the same port again.
pub struct Proxy {
    pub addr: SocketAddr,
    target: String,
    state: Arc<Mutex<Option<JoinHandle<()>>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(target: &str) -> Self {
        let listener = bind_reusable("127.0.0.1:0".parse().unwrap());
        let addr = listener.local_addr().unwrap();
        let proxy = Self {
            addr,
            target: target.to_owned(),
            state: Arc::new(Mutex::new(None)),
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.run(listener);
        proxy
    }

    fn run(&self, listener: TcpListener) {
        let target = self.target.clone();
        let connections = self.connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(pipe);
            }
        });
        *self.state.lock().unwrap() = Some(accept);
    }

    /// The service "goes down": the port closes and open connections are reset.
    pub fn cut(&self) {
        if let Some(accept) = self.state.lock().unwrap().take() {
            accept.abort();
        }
        for pipe in self.connections.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    /// The service "comes back" on the same port.
    pub async fn restore(&self) {
        // The aborted accept task releases the port when it is dropped; retry briefly.
        for _ in 0..100 {
            let socket = TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            if socket.bind(self.addr).is_ok() {
                self.run(socket.listen(128).unwrap());
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("could not listen on {} again", self.addr);
    }
}

fn bind_reusable(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(128).unwrap()
}

/// `host:port` of a URL like scheme://user@host:port/db.
pub fn host_port(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let after_credentials = after_scheme.rsplit_once('@').map_or(after_scheme, |(_, rest)| rest);
    after_credentials.split('/').next().unwrap().to_owned()
}

/// A URL with its `host:port` replaced by `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    url.replacen(&host_port(url), &addr.to_string(), 1)
}

/// A port on which nothing listens.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}
