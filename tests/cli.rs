//! The `dispatchd` binary as an operator uses it: start with the embedded defaults, stop on
//! SIGTERM, refuse a bad configuration in one line, migrate, create staff accounts.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;
use std::time::Duration;

use common::{Database, Options, PASSWORD, TestApp, unique_phone};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

fn dispatchd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dispatchd"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("DISPATCHD")) {
        command.env_remove(name);
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    command
}

/// The binary on the Postgres database `url`.
fn dispatchd_on(url: &str) -> Command {
    let mut command = dispatchd();
    command.env("DISPATCHD__DATABASE__URL", url).env("DISPATCHD__AUTH__JWT_SECRET", common::TEST_JWT_SECRET);
    command
}

/// Starts the server and returns it with the address from its "listening" log line.
async fn start_server(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = dispatchd()
        .env("DISPATCHD__SERVER__ADDR", "127.0.0.1:0")
        .env("DISPATCHD__DATABASE__SQLITE_PATH", data_dir.join("dispatchd.db"))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let log: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("log lines are JSON: {line}"));
            if log["message"] == "dispatchd listening" {
                return log["addr"].as_str().unwrap().to_owned();
            }
        }
        panic!("the server exited before listening");
    })
    .await
    .expect("the server prints its address");
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits after SIGTERM").unwrap()
}

#[tokio::test]
async fn runs_with_embedded_defaults_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let (server, addr) = start_server(data.path()).await;
    let client = reqwest::Client::new();
    let phone = unique_phone();
    let registered: Value = client
        .post(format!("http://{addr}/api/v1/auth/register"))
        .json(&json!({ "name": "First", "phone": phone, "password": PASSWORD, "role": "customer" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = registered["data"]["access_token"].as_str().unwrap().to_owned();
    let ready: Value = client.get(format!("http://{addr}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["data"]["backend"], "sqlite");
    assert!(terminate(server).await.success(), "exit status 0");

    let secret = data.path().join("jwt.secret");
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);

    // After a restart the same data and the same signing key are there.
    let (server, addr) = start_server(data.path()).await;
    let me = client.get(format!("http://{addr}/api/v1/me")).bearer_auth(&access).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    assert!(terminate(server).await.success());
}

async fn refused_config(command: &mut Command) -> String {
    let output = command.output().await.unwrap();
    assert_eq!(output.status.code(), Some(2), "configuration errors exit with 2");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[tokio::test]
async fn a_bad_configuration_stops_the_server_with_one_line_naming_the_key() {
    let bad_addr = refused_config(dispatchd().env("DISPATCHD__SERVER__ADDR", "nowhere")).await;
    assert!(bad_addr.contains("server.addr") && bad_addr.contains("DISPATCHD__SERVER__ADDR"), "{bad_addr}");
    let typo = refused_config(dispatchd().env("DISPATCHD__SERVER__ADRESS", "127.0.0.1:1")).await;
    assert!(typo.contains("adress"), "{typo}");
    let zero = refused_config(dispatchd().env("DISPATCHD__RATE_LIMIT__REQUESTS_PER_MINUTE", "0")).await;
    assert!(zero.contains("rate_limit.requests_per_minute"), "{zero}");
    let postgres_without_secret =
        refused_config(dispatchd().env("DISPATCHD__DATABASE__URL", "postgres://app:hunter2@db/x")).await;
    assert!(postgres_without_secret.contains("auth.jwt_secret"), "{postgres_without_secret}");
    assert!(!postgres_without_secret.contains("hunter2"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dispatchd.toml");
    std::fs::write(&file, "[server]\nshutdown_timeout_secs = \"soon\"\n").unwrap();
    let in_file = refused_config(dispatchd().arg("--config").arg(&file)).await;
    assert!(in_file.contains("server.shutdown_timeout_secs") && in_file.contains("dispatchd.toml"), "{in_file}");
    let missing = refused_config(dispatchd().args(["--config", "/nonexistent/dispatchd.toml"])).await;
    assert!(missing.contains("does not exist"), "{missing}");
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let url = common::fresh_postgres_database().await;
    let output = dispatchd_on(&url).arg("migrate").output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    for table in ["users", "pilots", "orders", "order_events", "wallet_ledger", "coupons", "idempotency_keys", "jobs"] {
        assert!(tables.iter().any(|name| name == table), "{table} missing from {tables:?}");
    }
    // Again, logging as a person reads it, into a pipe: nothing to apply, nothing to say
    // (Postgres's notice that the migrations table exists came at info), and no colour codes.
    let again = dispatchd_on(&url).arg("migrate").env("DISPATCHD__LOG__FORMAT", "human").output().await.unwrap();
    assert!(again.status.success());
    let logs = [again.stdout, again.stderr].concat();
    let logs = String::from_utf8_lossy(&logs);
    assert!(!logs.contains("already exists, skipping"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "{logs:?}");
}

async fn create_user(url: &str, args: &[&str], password: &str) -> std::process::Output {
    let mut child = dispatchd_on(url).args(["admin", "create-user"]).args(args).stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{password}\n").as_bytes()).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

#[tokio::test]
async fn staff_accounts_come_from_the_admin_command() {
    let url = common::fresh_postgres_database().await;
    let phone = unique_phone();
    let created = create_user(&url, &["--role", "dispatcher", "--phone", &phone, "--name", "Desk One"], PASSWORD).await;
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let user: Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!((user["role"].as_str(), user["name"].as_str()), (Some("dispatcher"), Some("Desk One")));
    assert!(!String::from_utf8_lossy(&created.stdout).contains(PASSWORD));

    let app = TestApp::spawn_with(Options { database: Database::Postgres(url.clone()), ..Options::default() }).await;
    let session = app.login(&phone).await;
    let me = app.get("/api/v1/me", Some(&session.access)).await;
    assert_eq!(me.data()["role"], "dispatcher");

    let taken = create_user(&url, &["--role", "admin", "--phone", &phone, "--name", "Again"], PASSWORD).await;
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already exists"));
    let weak = create_user(&url, &["--role", "admin", "--phone", &unique_phone(), "--name", "Weak"], "short").await;
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 8 characters"));
    let customer =
        create_user(&url, &["--role", "customer", "--phone", &unique_phone(), "--name", "C"], PASSWORD).await;
    assert!(!customer.status.success(), "only staff roles");
}

#[tokio::test]
async fn failed_jobs_of_a_kind_are_run_again_by_the_admin_command() {
    let url = common::fresh_postgres_database().await;
    let store = dispatchd::store::open(&dispatchd::config::Config::defaults().database, Some(&url)).await.unwrap();
    let now = chrono::Utc::now();
    store.enqueue(&dispatchd::store::NewJob::new("payment.refund", json!({}), now), now).await.unwrap();
    let run =
        store.claim_jobs(now, 10, chrono::Duration::seconds(30), &["payment.refund"]).await.unwrap().pop().unwrap();
    let failed = dispatchd::store::JobOutcome::Failed { error: "gateway down".into() };
    assert!(store.finish_job(&run, &failed, now).await.unwrap());

    let output = dispatchd_on(&url).args(["admin", "retry-jobs", "--kind", "payment.refund"]).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1 failed payment.refund jobs queued again");
    let stats = store.job_stats().await.unwrap();
    assert_eq!((stats.queued, stats.failed), (1, 0));
}

#[tokio::test]
async fn the_operator_approves_pilots_from_the_command_line() {
    let url = common::fresh_postgres_database().await;
    let app = TestApp::spawn_with(Options { database: Database::Postgres(url.clone()), ..Options::default() }).await;
    let pilot = app.sign_up("pilot").await;
    let approve = |args: &[&str]| {
        let mut command = dispatchd_on(&url);
        command.args(["admin", "approve-pilot"]).args(args).stdin(Stdio::null());
        async move { command.output().await.unwrap() }
    };
    let approved = approve(&["--phone", &pilot.phone, "--plate", "KA 05 MN 4321", "--model", "TVS XL100"]).await;
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
    let user: Value = serde_json::from_slice(&approved.stdout).unwrap();
    assert_eq!(user["pilot"]["approval"], "approved");
    assert_eq!(user["pilot"]["vehicle_plate"], "KA05MN4321");
    let ts = app.clock.now().timestamp_millis();
    let here = json!({ "points": [{ "lat": 12.9716, "lng": 77.5946, "ts": ts, "accuracy": 5 }] });
    assert_eq!(app.post("/api/v1/pilot/location", here, Some(&pilot.access)).await.status, StatusCode::OK);
    let on_duty = app.post("/api/v1/pilot/status", json!({ "status": "available" }), Some(&pilot.access)).await;
    assert_eq!(on_duty.status, StatusCode::OK, "{:?}", on_duty.body);
    let me = app.get("/api/v1/me", Some(&pilot.access)).await;
    assert_eq!(me.data()["pilot"]["vehicle_model"], "TVS XL100");

    let customer = app.register("customer").await;
    let not_a_pilot = approve(&["--phone", &customer.phone, "--plate", "KA05MN4321"]).await;
    assert!(!not_a_pilot.status.success());
    assert!(String::from_utf8_lossy(&not_a_pilot.stderr).contains("no pilot"));
    let bad_plate = approve(&["--phone", &pilot.phone, "--plate", "?"]).await;
    assert!(!bad_plate.status.success());
    assert!(String::from_utf8_lossy(&bad_plate.stderr).contains("--plate"));
}

/// `dispatchd healthcheck` (a container's HEALTHCHECK): 0 while the server it is configured
/// for answers `/healthz`, 1 when nothing answers or its configuration is wrong (never 2,
/// which container runtimes reserve).
#[tokio::test]
async fn healthcheck_tells_a_healthy_server_from_a_gone_one() {
    let data = tempfile::tempdir().unwrap();
    let (server, addr) = start_server(data.path()).await;
    let check = |addr: String| async move {
        dispatchd().env("DISPATCHD__SERVER__ADDR", addr).arg("healthcheck").output().await.unwrap().status.code()
    };
    let port = addr.rsplit(':').next().unwrap();
    assert_eq!(check(format!("0.0.0.0:{port}")).await, Some(0), "an unspecified address means this host");
    assert!(terminate(server).await.success());
    assert_eq!(check(addr.clone()).await, Some(1), "nothing listens any more");
    let broken = dispatchd().env("DISPATCHD__SERVER__ADDR", "nowhere").arg("healthcheck").output().await.unwrap();
    assert_eq!(broken.status.code(), Some(1), "a configuration error is unhealthy too");
}
