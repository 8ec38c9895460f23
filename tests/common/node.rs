//! A dispatchd process, for what only a real process shows: `kill -9`, SIGTERM under load, a
//! log pipe whose reader goes away. Configured by environment, as an operator does; its
//! address comes from its "listening" log line.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};

use super::{PASSWORD, Session, TEST_JWT_SECRET, unique_phone};

/// Where a node's logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// Read (and dropped) by the test, so the node never blocks on a full pipe.
    Drained,
    /// stdout and stderr on one pipe whose reader is closed once the node listens, as when
    /// `dispatchd 2>&1 | tee log` loses its `tee`.
    BrokenPipe,
}

pub struct Node {
    child: Child,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// What it was started with, for the operator's commands on its database.
    env: Vec<(String, String)>,
}

impl Node {
    /// Starts the binary with `env` (`DISPATCHD__…` pairs) on top of a JWT secret.
    pub async fn start(env: &[(&str, String)], logs: Logs) -> Self {
        let env: Vec<_> = env.iter().map(|(name, value)| (name.to_string(), value.clone())).collect();
        let mut command = dispatchd_command(&env);
        command
            .env("DISPATCHD__RATE_LIMIT__REQUESTS_PER_MINUTE", "100000")
            .env("DISPATCHD__LOG__LEVEL", "info")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let (child, addr) = match logs {
            Logs::Drained => Self::spawn_drained(command).await,
            Logs::BrokenPipe => Self::spawn_broken_pipe(command).await,
        };
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        Self { child, addr, client, env }
    }

    async fn spawn_drained(mut command: Command) -> (Child, SocketAddr) {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(addr) = listening(&line) {
                    return addr;
                }
            }
            panic!("the node exited before listening");
        })
        .await
        .expect("the node prints its address");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (child, addr)
    }

    async fn spawn_broken_pipe(mut command: Command) -> (Child, SocketAddr) {
        let (reader, writer) = std::io::pipe().unwrap();
        let child = command.stdout(writer.try_clone().unwrap()).stderr(writer).spawn().unwrap();
        // The read end is this test's only one (the child holds the write end): once it is
        // dropped, every write of the node's fails with a broken pipe.
        let addr = tokio::task::spawn_blocking(move || {
            for line in BufReader::new(reader).lines() {
                if let Some(addr) = listening(&line.unwrap()) {
                    return addr;
                }
            }
            panic!("the node exited before listening");
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), addr).await.expect("the node listens").unwrap();
        (child, addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// Whether the process has not exited yet.
    pub fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9`: no drain, no goodbye.
    pub async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM; resolves when the process has exited (or fails after `within`).
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.sigterm();
        tokio::time::timeout(within, self.child.wait()).await.expect("exits after SIGTERM").unwrap()
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid, with a valid signal number.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (reqwest::StatusCode, Value) {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply = request.send().await.unwrap();
        (reply.status(), reply.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> (reqwest::StatusCode, Value) {
        let mut request = self.client.post(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply = request.send().await.unwrap();
        (reply.status(), reply.json().await.unwrap_or(Value::Null))
    }

    /// Signs up a customer, or a pilot on a bike (approved with `dispatchd admin
    /// approve-pilot`, as an operator would).
    pub async fn register(&self, role: &str) -> Session {
        let phone = unique_phone();
        let mut body = json!({ "name": "Fault Drill", "phone": phone, "password": PASSWORD, "role": role });
        if role == "pilot" {
            body["vehicle_type"] = json!("bike");
        }
        let (status, reply) = self.post("/api/v1/auth/register", body, None).await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{reply}");
        if role == "pilot" {
            let approved = dispatchd_command(&self.env)
                .args(["admin", "approve-pilot", "--phone", &phone, "--plate", "KA01AB1234"])
                .stdout(Stdio::null())
                .status()
                .await
                .unwrap();
            assert!(approved.success(), "admin approve-pilot");
        }
        Session::from_grant(&reply["data"])
    }
}

/// A node's environment on a SQLite file of its own in `dir`, no Redis.
pub fn alone_in(dir: &tempfile::TempDir) -> Vec<(&'static str, String)> {
    vec![
        ("DISPATCHD__SERVER__ADDR", "127.0.0.1:0".to_owned()),
        ("DISPATCHD__DATABASE__SQLITE_PATH", dir.path().join("dispatchd.db").display().to_string()),
    ]
}

/// The binary with `env` (`DISPATCHD__…` pairs) on top of the test JWT secret, and none of
/// the environment's own `DISPATCHD…` variables.
fn dispatchd_command(env: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dispatchd"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("DISPATCHD")) {
        command.env_remove(name);
    }
    command.env("DISPATCHD__AUTH__JWT_SECRET", TEST_JWT_SECRET);
    command.envs(env.iter().map(|(name, value)| (name, value)));
    command
}

/// The address of a "dispatchd listening" log line.
fn listening(line: &str) -> Option<SocketAddr> {
    let log: Value = serde_json::from_str(line).ok()?;
    (log["message"] == "dispatchd listening").then(|| log["addr"].as_str()?.parse().ok())?
}

/// A staff account (dispatcher or admin) made with the admin command, as an operator makes
/// one, on the Postgres database `database`.
pub async fn staff(database: &str, role: &str) -> String {
    let phone = unique_phone();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .env("DISPATCHD__DATABASE__URL", database)
        .env("DISPATCHD__AUTH__JWT_SECRET", TEST_JWT_SECRET)
        .args(["admin", "create-user", "--role", role, "--phone", &phone, "--name", "Drill Desk"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, format!("{PASSWORD}\n").as_bytes()).await.unwrap();
    drop(stdin);
    assert!(child.wait().await.unwrap().success(), "admin create-user");
    phone
}

impl Node {
    /// Logs in `phone` (with the test password).
    pub async fn login(&self, phone: &str) -> Session {
        let (status, reply) =
            self.post("/api/v1/auth/login", json!({ "phone": phone, "password": PASSWORD }), None).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{reply}");
        Session::from_grant(&reply["data"])
    }
}
