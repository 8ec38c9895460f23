//! The server a scenario drives: dispatchd, or the Node baseline that speaks the same
//! Socket.io relay. Loopback addresses only. Accounts are made over the real REST API
//! (dispatchd) or are just names (the baseline takes any token as the user).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde_json::{Value, json};

/// Which server is on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Dispatchd,
    Node,
}

/// A server under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: Kind,
    /// `host:port`.
    pub addr: String,
    pub http: reqwest::Client,
    /// The admin who approves the pilots this target signs up (phone, password).
    staff: (String, String),
    admin_token: Arc<tokio::sync::OnceCell<String>>,
}

/// A pilot or customer account: its token and id (the same name on the baseline).
#[derive(Debug, Clone)]
pub struct Account {
    pub token: String,
    pub id: String,
}

/// The staff account (an admin) `compare` creates on the servers it starts.
pub const STAFF_PHONE: &str = "+919999900001";
pub const STAFF_PASSWORD: &str = "bench password 1";

impl Target {
    /// `url` is `http://host:port` (or just `host:port`); the host must be a loopback address.
    pub fn new(kind: Kind, url: &str) -> anyhow::Result<Self> {
        let addr = loopback_addr(url)?;
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
        let staff = (STAFF_PHONE.to_owned(), STAFF_PASSWORD.to_owned());
        Ok(Self { kind, addr, http, staff, admin_token: Arc::default() })
    }

    /// Pilots are approved by this admin (`dispatchd admin create-user --role admin`)
    /// instead of the default `STAFF_PHONE`.
    pub fn with_staff(mut self, phone: &str, password: &str) -> Self {
        self.staff = (phone.to_owned(), password.to_owned());
        self.admin_token = Arc::default();
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `n` accounts of `role` ("pilot" with a `vehicle`, approved by the staff admin, or
    /// "customer"), made 32 at a time.
    pub async fn accounts(&self, role: &str, vehicle: &str, n: usize) -> anyhow::Result<Vec<Account>> {
        if self.kind == Kind::Node {
            return Ok((0..n).map(|i| Account { token: format!("{role}{i}"), id: format!("{role}{i}") }).collect());
        }
        let admin = match role {
            "pilot" => Some(self.admin_token().await?),
            _ => None,
        };
        let made: Vec<anyhow::Result<Account>> = futures::stream::iter(0..n)
            .map(|index| async move {
                let account = self.register(role, vehicle).await?;
                if let Some(admin) = admin {
                    let plate = json!({ "vehicle_plate": format!("BENCH{index:07}") });
                    self.post(&format!("/api/v1/admin/pilots/{}/approve", account.id), Some(admin), &plate).await?;
                }
                Ok(account)
            })
            .buffer_unordered(32)
            .collect()
            .await;
        made.into_iter().collect()
    }

    /// The staff admin's access token, logged in once.
    async fn admin_token(&self) -> anyhow::Result<&str> {
        let token = self
            .admin_token
            .get_or_try_init(|| async {
                let admin = self.login(&self.staff.0, &self.staff.1).await;
                admin.map(|admin| admin.token).context("pilots are approved by an admin")
            })
            .await?;
        Ok(token)
    }

    /// Signs one account up with a random phone number, waiting out rate limits (`429` with
    /// `Retry-After`) and drawing another number when one is taken (thousands of draws do
    /// collide now and then).
    async fn register(&self, role: &str, vehicle: &str) -> anyhow::Result<Account> {
        let mut tries = 0;
        loop {
            let phone = format!("+91{:010}", rand::random::<u64>() % 10_000_000_000);
            let mut body = json!({ "name": "Bench", "phone": phone, "password": STAFF_PASSWORD, "role": role });
            if role == "pilot" {
                body["vehicle_type"] = json!(vehicle);
            }
            match self.post("/api/v1/auth/register", None, &body).await {
                Err(err) if tries < 5 && err.to_string().contains("PHONE_TAKEN") => tries += 1,
                reply => return account(&reply?),
            }
        }
    }

    /// Logs a staff member in (`dispatchd admin create-user` made it).
    pub async fn login(&self, phone: &str, password: &str) -> anyhow::Result<Account> {
        let reply = self.post("/api/v1/auth/login", None, &json!({ "phone": phone, "password": password })).await?;
        account(&reply).context("log in with --staff-phone / --staff-password of an admin")
    }

    /// GETs `path` and returns the `data` of a successful answer.
    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<Value> {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply: Value = request.send().await.with_context(|| format!("GET {path}"))?.json().await?;
        if reply["success"] != true {
            bail!("GET {path}: {reply}");
        }
        Ok(reply["data"].clone())
    }

    /// POSTs `body` and returns the `data` of a successful answer; waits out `429`s.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> anyhow::Result<Value> {
        for _ in 0..20 {
            let mut request = self.http.post(self.url(path)).json(body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.with_context(|| format!("POST {path}"))?;
            if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let wait = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
                tokio::time::sleep(Duration::from_secs(wait.unwrap_or(1).min(60))).await;
                continue;
            }
            let reply: Value = response.json().await.with_context(|| format!("POST {path}: not JSON"))?;
            if reply["success"] != true {
                bail!("POST {path}: {reply}");
            }
            return Ok(reply["data"].clone());
        }
        bail!("POST {path}: still rate limited; start the server with DISPATCHD__RATE_LIMIT__ENABLED=false")
    }
}

fn account(data: &Value) -> anyhow::Result<Account> {
    let token = data["access_token"].as_str().context("no access token")?.to_owned();
    let id = data["user"]["id"].as_str().context("no user id")?.to_owned();
    Ok(Account { token, id })
}

/// `host:port` of `url`, refused unless the host is a loopback address: the benchmarks
/// open thousands of connections and must never aim them at someone else's server.
pub fn loopback_addr(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("ws://")).unwrap_or(url);
    let addr = rest.split('/').next().unwrap_or_default();
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host.trim_start_matches('[').trim_end_matches(']'),
        _ => bail!("{url}: give host:port, e.g. http://127.0.0.1:8080"),
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{url}: the benchmarks target loopback addresses only (127.0.0.0/8, ::1, localhost)");
    }
    Ok(addr.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert_eq!(loopback_addr("http://127.0.0.1:8080").unwrap(), "127.0.0.1:8080");
        assert_eq!(loopback_addr("127.0.0.7:9/x").unwrap(), "127.0.0.7:9");
        assert_eq!(loopback_addr("http://localhost:1").unwrap(), "localhost:1");
        assert_eq!(loopback_addr("http://[::1]:8080").unwrap(), "[::1]:8080");
        for bad in ["http://10.0.0.1:8080", "http://example.com:80", "http://127.0.0.1", "192.168.1.1:80"] {
            assert!(loopback_addr(bad).is_err(), "{bad}");
        }
    }
}
