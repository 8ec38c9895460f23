//! Typed configuration, loaded once at start.
//!
//! Layers, later wins: the annotated `config.toml` compiled into the binary (it holds every
//! key and its default), an optional file named with `--config`, then environment variables
//! `DISPATCHD__SECTION__KEY`. Unknown keys are errors. [`Config::load`] either returns a
//! configuration that passed [`Config::validate`] or a [`ConfigError`] naming the key.
//! Secrets are [`SecretString`]s: `Debug` prints them redacted and nothing logs them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The default configuration, which is also the documentation of every key.
pub const DEFAULT_CONFIG: &str = include_str!("../config.toml");

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "DISPATCHD__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub rate_limit: RateLimitConfig,
    pub grid: crate::grid::GridConfig,
    pub pricing: crate::orders::pricing::PricingConfig,
    pub orders: crate::orders::OrdersConfig,
    pub service_area: crate::orders::service_area::ServiceAreaConfig,
    pub payments: crate::payments::PaymentsConfig,
    pub realtime: crate::realtime::RealtimeConfig,
    pub webhooks: crate::webhooks::WebhooksConfig,
    pub jobs: crate::jobs::JobsConfig,
    pub matching: crate::matching::MatchingConfig,
    pub cluster: crate::cluster::ClusterConfig,
    pub pilots: crate::fleet::PilotsConfig,
    pub console: crate::http::console::ConsoleConfig,
    pub notifications: crate::notify::NotificationsConfig,
    pub telemetry: crate::traces::TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub shutdown_timeout_secs: u64,
    pub request_timeout_secs: u64,
    pub body_limit_bytes: usize,
    pub header_read_timeout_secs: u64,
    pub max_connections_per_ip: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Human,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Postgres URL; empty selects the embedded SQLite store. May hold a password.
    pub url: SecretString,
    pub sqlite_path: PathBuf,
    pub max_connections: u32,
    pub connect_timeout_secs: u64,
    pub acquire_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Redis URL; empty means no Redis. May hold a password.
    pub url: SecretString,
    pub key_prefix: String,
    pub command_timeout_ms: u64,
    pub health_interval_ms: u64,
    /// The pilot position mirror (see `store::positions`).
    pub positions: crate::store::positions::MirrorConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt_secret: SecretString,
    pub issuer: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub max_concurrent_hashes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub cors: CorsConfig,
    pub headers: HeadersConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    pub allowed_origins: Vec<String>,
    pub max_age_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    pub content_security_policy: String,
    pub hsts_max_age_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub requests_per_minute: u32,
    pub client_ip_header: String,
}

/// A configuration problem, always tied to the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `server.addr`; empty when the problem is not about one key.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.key, self.message) }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
        Self { key: key.to_owned(), message: message.into() }
    }

    /// Turns figment's error into one line naming the key and where the value came from.
    fn from_figment(err: figment::Error) -> Self {
        let key = err.path.join(".");
        let origin = err.metadata.as_ref().map_or_else(String::new, |meta| match &meta.source {
            Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
            _ if meta.name.contains("environment") => {
                format!(" (from {ENV_PREFIX}{})", err.path.join("__").to_uppercase())
            }
            _ => String::new(),
        });
        // A value of the wrong type is quoted by figment: not for settings that hold secrets.
        let secret = err.path.last().is_some_and(|last| ["secret", "password", "url"].iter().any(|w| last.contains(w)));
        let what = if secret {
            "invalid value (not shown: this setting may hold a secret)".to_owned()
        } else {
            err.kind.to_string()
        };
        Self { key, message: format!("{what}{origin}") }
    }
}

impl Config {
    /// Loads the layered configuration, reading environment variables from the process.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file)?.merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    /// The built-in defaults alone (tests, tools, benchmarks).
    pub fn defaults() -> Self {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_CONFIG))).expect("the built-in defaults are valid")
    }

    /// The built-in defaults, overridden by `file` when given. Environment not included.
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_CONFIG));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::new("", format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(figment)
    }

    /// Extracts and validates a configuration from any figment (tests add their own layers).
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|errors| {
            // Report the first problem only: the promise is one clear line.
            let first = errors.into_iter().next();
            first.map_or_else(|| ConfigError::new("", "invalid configuration"), ConfigError::from_figment)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("server.shutdown_timeout_secs", self.server.shutdown_timeout_secs),
            ("server.request_timeout_secs", self.server.request_timeout_secs),
            ("server.body_limit_bytes", self.server.body_limit_bytes as u64),
            ("server.header_read_timeout_secs", self.server.header_read_timeout_secs),
            ("server.max_connections_per_ip", self.server.max_connections_per_ip as u64),
            ("database.max_connections", self.database.max_connections.into()),
            ("database.connect_timeout_secs", self.database.connect_timeout_secs),
            ("database.acquire_timeout_secs", self.database.acquire_timeout_secs),
            ("redis.command_timeout_ms", self.redis.command_timeout_ms),
            ("redis.health_interval_ms", self.redis.health_interval_ms),
            ("redis.positions.flush_interval_ms", self.redis.positions.flush_interval_ms),
            ("redis.positions.batch_size", self.redis.positions.batch_size as u64),
            ("grid.sweep_interval_ms", self.grid.sweep_interval_ms),
            ("webhooks.timeout_secs", self.webhooks.timeout_secs),
            ("realtime.ping_interval_ms", self.realtime.ping_interval_ms),
            ("realtime.ping_timeout_ms", self.realtime.ping_timeout_ms),
            ("realtime.connect_timeout_ms", self.realtime.connect_timeout_ms),
            ("realtime.max_payload_bytes", self.realtime.max_payload_bytes),
            ("realtime.max_polling_body_bytes", self.realtime.max_polling_body_bytes),
            ("realtime.max_buffer_size", self.realtime.max_buffer_size as u64),
            ("realtime.max_buffer_bytes", self.realtime.max_buffer_bytes as u64),
            ("realtime.stall_timeout_ms", self.realtime.stall_timeout_ms),
            ("realtime.ws_read_buffer_bytes", self.realtime.ws_read_buffer_bytes as u64),
            ("realtime.max_sockets_per_user", self.realtime.max_sockets_per_user as u64),
            ("realtime.viewport_interval_ms", self.realtime.viewport_interval_ms),
            ("realtime.viewport_max_pilots", self.realtime.viewport_max_pilots as u64),
            ("realtime.board_max_rows", self.realtime.board_max_rows.into()),
            ("realtime.session_check_ms", self.realtime.session_check_ms),
            ("auth.access_ttl_secs", self.auth.access_ttl_secs),
            ("auth.refresh_ttl_secs", self.auth.refresh_ttl_secs),
            ("auth.argon2_iterations", self.auth.argon2_iterations.into()),
            ("auth.argon2_parallelism", self.auth.argon2_parallelism.into()),
            ("auth.max_concurrent_hashes", self.auth.max_concurrent_hashes as u64),
            ("rate_limit.requests_per_minute", self.rate_limit.requests_per_minute.into()),
            ("grid.stale_after_secs", self.grid.stale_after_secs),
            ("grid.offline_after_secs", self.grid.offline_after_secs),
            ("grid.forget_after_secs", self.grid.forget_after_secs),
            ("grid.max_points_per_report", self.grid.max_points_per_report as u64),
            ("pricing.quote_ttl_secs", self.pricing.quote_ttl_secs),
            ("orders.search_lead_secs", self.orders.search_lead_secs),
            ("orders.payment_timeout_secs", self.orders.payment_timeout_secs),
            ("orders.max_search_secs", self.orders.max_search_secs),
            ("orders.idempotency_key_ttl_secs", self.orders.idempotency_key_ttl_secs),
            ("orders.max_open_per_customer", self.orders.max_open_per_customer.into()),
            ("jobs.poll_interval_ms", self.jobs.poll_interval_ms),
            ("pricing.surge.demand_refresh_ms", self.pricing.surge.demand_refresh_ms),
            ("jobs.batch_size", self.jobs.batch_size.into()),
            ("jobs.concurrency", self.jobs.concurrency.into()),
            ("jobs.per_kind", self.jobs.per_kind.into()),
            ("jobs.lease_secs", self.jobs.lease_secs),
            ("jobs.backoff_secs", self.jobs.backoff_secs),
            ("cluster.retention_secs", self.cluster.retention_secs),
            ("cluster.search_lease_secs", self.cluster.search_lease_secs),
            ("cluster.read_block_ms", self.cluster.read_block_ms),
            ("cluster.read_count", self.cluster.read_count as u64),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::new(key, "must be greater than 0"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::new("log.level", "is not a valid filter directive"));
        }
        self.validate_database()?;
        self.validate_redis()?;
        self.validate_auth()?;
        self.validate_grid()?;
        self.validate_orders()?;
        self.matching.check().map_err(|(key, message)| ConfigError::new(key, message))?;
        self.realtime.budgets.check().map_err(|(key, message)| ConfigError::new(key, message))?;
        self.telemetry.check().map_err(|(key, message)| ConfigError::new(key, message))?;
        self.validate_http()
    }

    fn validate_orders(&self) -> Result<(), ConfigError> {
        let pricing = &self.pricing;
        if !pricing.road_factor.is_finite() || pricing.road_factor < 1.0 {
            return Err(ConfigError::new("pricing.road_factor", "must be a number >= 1"));
        }
        if !(0..=10_000).contains(&pricing.tax_bp) {
            return Err(ConfigError::new("pricing.tax_bp", "must be between 0 and 10000"));
        }
        let surge = &pricing.surge;
        if [surge.cap - 1.0, surge.slope, surge.threshold].iter().any(|value| value.is_nan() || *value < 0.0) {
            return Err(ConfigError::new("pricing.surge", "needs cap >= 1, slope >= 0 and threshold >= 0"));
        }
        let tariffs = [
            ("bike", &pricing.tariffs.bike),
            ("auto", &pricing.tariffs.auto),
            ("mini_truck", &pricing.tariffs.mini_truck),
            ("ev_cycle", &pricing.tariffs.ev_cycle),
        ];
        for (vehicle, tariff) in tariffs {
            let amounts = [tariff.base_paise, tariff.per_km_paise, tariff.per_min_paise, tariff.minimum_paise];
            let positive = |value: f64| value.is_finite() && value > 0.0;
            if amounts.iter().any(|amount| *amount < 0)
                || !positive(tariff.avg_speed_kmh)
                || !positive(tariff.max_trip_km)
                || !(0..=10_000).contains(&tariff.commission_bp)
            {
                return Err(ConfigError::new(
                    &format!("pricing.tariffs.{vehicle}"),
                    "needs amounts >= 0, avg_speed_kmh > 0, max_trip_km > 0 and commission_bp from 0 to 10000",
                ));
            }
        }
        if self.orders.min_schedule_lead_secs > self.orders.max_schedule_ahead_secs {
            return Err(ConfigError::new("orders.min_schedule_lead_secs", "must not exceed max_schedule_ahead_secs"));
        }
        if self.pilots.cash_debt_limit_paise < 0 {
            return Err(ConfigError::new("pilots.cash_debt_limit_paise", "must be >= 0"));
        }
        if self.orders.cancellation_fee_paise < 0 {
            return Err(ConfigError::new("orders.cancellation_fee_paise", "must be >= 0"));
        }
        self.console.check()?;
        self.notifications.check()?;
        if self.orders.return_fee_percent > 100 {
            return Err(ConfigError::new("orders.return_fee_percent", "must be 0 to 100"));
        }
        crate::orders::service_area::ServiceArea::from_config(&self.service_area)
            .map(|_| ())
            .map_err(|message| ConfigError::new("service_area", message))?;
        self.validate_payments()?;
        if self.webhooks.enabled() && self.webhooks.secret.expose_secret().len() < 16 {
            return Err(ConfigError::new("webhooks.secret", "must be at least 16 characters when webhooks.url is set"));
        }
        Ok(())
    }

    fn validate_payments(&self) -> Result<(), ConfigError> {
        let payments = &self.payments;
        match payments.gateway.as_str() {
            "" => {}
            "razorpay"
                if payments.razorpay.key_id.is_empty() || payments.razorpay.key_secret.expose_secret().is_empty() =>
            {
                return Err(ConfigError::new("payments.razorpay.key_secret", "key_id and key_secret are required"));
            }
            "stripe" if payments.stripe.secret_key.expose_secret().is_empty() => {
                return Err(ConfigError::new(
                    "payments.stripe.secret_key",
                    "is required when payments.gateway is stripe",
                ));
            }
            "razorpay" | "stripe" => {}
            _ => return Err(ConfigError::new("payments.gateway", "must be \"razorpay\", \"stripe\" or \"\"")),
        }
        // A gateway whose webhooks cannot be verified must not be half set up: its payments
        // would never be confirmed, and an empty secret would sign anyone's forgery.
        let razorpay = &payments.razorpay;
        if (!razorpay.key_id.is_empty() || !razorpay.key_secret.expose_secret().is_empty())
            && razorpay.webhook_secret.expose_secret().is_empty()
        {
            return Err(ConfigError::new("payments.razorpay.webhook_secret", "is required when Razorpay keys are set"));
        }
        if !payments.stripe.secret_key.expose_secret().is_empty()
            && payments.stripe.webhook_secret.expose_secret().is_empty()
        {
            return Err(ConfigError::new("payments.stripe.webhook_secret", "is required when a Stripe key is set"));
        }
        if payments.currency.len() != 3 || !payments.currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ConfigError::new("payments.currency", "must be a three-letter ISO 4217 code"));
        }
        if payments.timeout_secs == 0 {
            return Err(ConfigError::new("payments.timeout_secs", "must be greater than 0"));
        }
        Ok(())
    }

    fn validate_grid(&self) -> Result<(), ConfigError> {
        let grid = &self.grid;
        if grid.resolution > 15 {
            return Err(ConfigError::new("grid.resolution", "must be an H3 resolution, 0 to 15"));
        }
        if grid.supply_resolution > grid.resolution {
            return Err(ConfigError::new("grid.supply_resolution", "must be coarser than (at most) grid.resolution"));
        }
        if grid.offline_after_secs < grid.stale_after_secs {
            return Err(ConfigError::new("grid.offline_after_secs", "must be at least grid.stale_after_secs"));
        }
        let speeds = &grid.gps.max_speed_kmh;
        let numbers = [
            ("grid.gps.max_accuracy_m", grid.gps.max_accuracy_m),
            ("grid.gps.min_move_m", grid.gps.min_move_m),
            ("grid.gps.max_speed_kmh.bike", speeds.bike),
            ("grid.gps.max_speed_kmh.auto", speeds.auto),
            ("grid.gps.max_speed_kmh.mini_truck", speeds.mini_truck),
            ("grid.gps.max_speed_kmh.ev_cycle", speeds.ev_cycle),
        ];
        match numbers.iter().find(|(_, value)| !(value.is_finite() && *value >= 0.0)) {
            Some((key, _)) => Err(ConfigError::new(key, "must be a number >= 0 (0 switches the rule off)")),
            None => Ok(()),
        }
    }

    fn validate_database(&self) -> Result<(), ConfigError> {
        match self.database_url() {
            Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
                Err(ConfigError::new("database.url", "must start with postgres:// (or be empty for SQLite)"))
            }
            None if self.database.sqlite_path.as_os_str().is_empty() => {
                Err(ConfigError::new("database.sqlite_path", "must not be empty when database.url is empty"))
            }
            _ => Ok(()),
        }
    }

    fn validate_redis(&self) -> Result<(), ConfigError> {
        match self.redis_url() {
            Some(url) if ::redis::Client::open(url).is_err() => {
                return Err(ConfigError::new("redis.url", "is not a valid redis:// URL"));
            }
            None if self.cluster.enabled => {
                return Err(ConfigError::new("cluster.enabled", "needs redis.url: the nodes share news through Redis"));
            }
            _ => {}
        }
        if self.cluster.enabled && self.database_url().is_none() {
            return Err(ConfigError::new(
                "cluster.enabled",
                "needs database.url: nodes share one Postgres database (SQLite is one node's file)",
            ));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let secret = self.auth.jwt_secret.expose_secret();
        if !secret.is_empty() && secret.len() < 32 {
            return Err(ConfigError::new("auth.jwt_secret", "must be at least 32 bytes"));
        }
        if secret.is_empty() && self.database_url().is_some() {
            return Err(ConfigError::new(
                "auth.jwt_secret",
                "is required when database.url is set (every node must share it)",
            ));
        }
        if self.auth.argon2_memory_kib < 8 * self.auth.argon2_parallelism {
            return Err(ConfigError::new("auth.argon2_memory_kib", "must be at least 8 × argon2_parallelism"));
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        for origin in &self.http.cors.allowed_origins {
            if origin != "*" && axum::http::HeaderValue::from_str(origin).is_err() {
                return Err(ConfigError::new("http.cors.allowed_origins", format!("{origin:?} is not a valid origin")));
            }
        }
        if axum::http::HeaderValue::from_str(&self.http.headers.content_security_policy).is_err() {
            return Err(ConfigError::new("http.headers.content_security_policy", "is not a valid header value"));
        }
        match self.rate_limit.client_ip_header.as_str() {
            "" | "x-forwarded-for" | "x-real-ip" => Ok(()),
            _ => Err(ConfigError::new(
                "rate_limit.client_ip_header",
                "must be \"\", \"x-forwarded-for\" or \"x-real-ip\"",
            )),
        }
    }

    /// The Postgres URL, or `None` for the embedded SQLite store.
    pub fn database_url(&self) -> Option<&str> {
        non_empty(&self.database.url)
    }

    /// The Redis URL, or `None` when Redis is not used.
    pub fn redis_url(&self) -> Option<&str> {
        non_empty(&self.redis.url)
    }
}

fn non_empty(secret: &SecretString) -> Option<&str> {
    Some(secret.expose_secret().trim()).filter(|s| !s.is_empty())
}

/// A URL with its password replaced, safe to log.
pub fn redact_url(url: &str) -> String {
    // Query parameters may carry a password too (`?password=`): never shown.
    let (url, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?***"),
        None => (url, ""),
    };
    let redacted = match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((credentials, host)) => {
                let user = credentials.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_owned(),
        },
        None => return "***".to_owned(),
    };
    format!("{redacted}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;
    use std::collections::HashMap;

    fn with(key: &str, value: impl serde::Serialize) -> Result<Config, ConfigError> {
        Config::from_figment(Config::figment(None).unwrap().merge(Serialized::global(key, value)))
    }

    #[test]
    fn defaults_are_valid_and_embedded() {
        let config = with("log.level", "info").unwrap();
        assert_eq!(config.server.addr.port(), 8080);
        assert!(config.database_url().is_none());
        assert!(config.redis_url().is_none());
        assert_eq!(config.rate_limit.requests_per_minute, 100);
        assert_eq!(config.auth.access_ttl_secs, 24 * 3600);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = with("server.addr", "nowhere").unwrap_err();
        assert_eq!(err.key, "server.addr");
        let err = with("rate_limit.requests_per_minute", 0).unwrap_err();
        assert_eq!(err.to_string(), "rate_limit.requests_per_minute: must be greater than 0");
        let err = with("database.url", "mysql://x").unwrap_err();
        assert_eq!(err.key, "database.url");
        let err = with("log.format", "xml").unwrap_err();
        assert_eq!(err.key, "log.format");
    }

    #[test]
    fn postgres_needs_a_shared_jwt_secret() {
        let err = with("database.url", "postgres://u:p@localhost/db").unwrap_err();
        assert_eq!(err.key, "auth.jwt_secret");
        let short = with("auth.jwt_secret", "short").unwrap_err();
        assert_eq!(short.key, "auth.jwt_secret");
    }

    #[test]
    fn errors_never_quote_secret_values() {
        let err = with("auth.jwt_secret", 123_456_789_012_u64).unwrap_err();
        assert_eq!(err.key, "auth.jwt_secret");
        assert!(!err.to_string().contains("123456789012"), "{err}");
        assert_eq!(redact_url("postgres://db/app?user=u&password=hunter2"), "postgres://db/app?***");
        assert_eq!(redact_url("redis://:pw@cache:6379"), "redis://:***@cache:6379");
    }

    #[test]
    fn the_console_takes_only_a_tile_url_it_can_put_in_its_policy() {
        let err = with("console.tile_url", "https://tiles.example.org; script-src *").unwrap_err();
        assert_eq!(err.key, "console.tile_url");
        assert_eq!(with("console.zoom", 0).unwrap_err().key, "console.zoom");
        assert!(with("console.tile_url", "https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png").is_ok());
        assert_eq!(with("orders.return_fee_percent", 101).unwrap_err().key, "orders.return_fee_percent");
    }

    #[test]
    fn gateway_keys_need_a_webhook_secret() {
        let err = with("payments.stripe.secret_key", "sk_test_1").unwrap_err();
        assert_eq!(err.key, "payments.stripe.webhook_secret");
        let err = with("payments.razorpay.key_id", "rzp_test_1").unwrap_err();
        assert_eq!(err.key, "payments.razorpay.webhook_secret");
    }

    #[test]
    fn webhooks_need_a_real_secret() {
        let figment =
            Config::figment(None).unwrap().merge(Serialized::global("webhooks.url", "http://127.0.0.1:9/hooks"));
        let err = Config::from_figment(figment.clone()).unwrap_err();
        assert_eq!(err.key, "webhooks.secret");
        let ok = figment.merge(Serialized::global("webhooks.secret", "sixteen-chars-ok"));
        assert!(Config::from_figment(ok).unwrap().webhooks.enabled());
    }

    #[test]
    fn a_cluster_needs_redis_and_postgres() {
        let err = with("cluster.enabled", true).unwrap_err();
        assert_eq!(err.key, "cluster.enabled");
        assert!(err.message.contains("redis.url"), "{err}");
        let figment = Config::figment(None)
            .unwrap()
            .merge(Serialized::global("cluster.enabled", true))
            .merge(Serialized::global("redis.url", "redis://127.0.0.1:6379"));
        let err = Config::from_figment(figment.clone()).unwrap_err();
        assert!(err.message.contains("database.url"), "{err}");
        let postgres = figment
            .merge(Serialized::global("database.url", "postgres://u:p@localhost/db"))
            .merge(Serialized::global("auth.jwt_secret", "a-secret-of-at-least-thirty-two-bytes"));
        assert!(Config::from_figment(postgres).unwrap().cluster.enabled);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = with("server.adr", "127.0.0.1:1").unwrap_err();
        assert!(err.to_string().contains("adr"), "{err}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let figment = Config::figment(None)
            .unwrap()
            .merge(Serialized::global("auth.jwt_secret", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"))
            .merge(Serialized::global("database.url", "postgres://app:hunter2@db/x"))
            .merge(Serialized::global("redis.url", "redis://:redispw@cache:6379"))
            .merge(Serialized::global("notifications.email.password", "smtp-pw-xyz"))
            .merge(Serialized::global("telemetry.sentry.dsn", "https://sentrykey@sentry.example/42"))
            .merge(Serialized::global("telemetry.otlp_headers", HashMap::from([("x-api-key", "otlp-key-xyz")])));
        let shown = format!("{:?}", Config::from_figment(figment).unwrap());
        for secret in ["s3cr3t", "hunter2", "redispw", "smtp-pw-xyz", "sentrykey", "otlp-key-xyz"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(redact_url("postgres://app:hunter2@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
