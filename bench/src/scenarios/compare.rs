//! `compare`: dispatchd and the Node socket.io baseline (`bench/baselines/node-relay`),
//! started here one after the other on loopback ports, each driven by the same scenario with
//! the same sizes; then the ratio table. For `ingest` the baseline also writes every report
//! to Redis GEO (`--redis-url`), as a Node + Redis GEO dispatch stack does.
//!
//! dispatchd runs from `--server-bin` with an empty SQLite store in a scratch directory, the
//! rate limit off, cheap password hashing (the run signs up thousands of accounts; hashing
//! is not what is measured) and a dispatcher account for `track`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::report::Table;
use crate::scenarios::{connections, ingest, track};
use crate::target::{Kind, STAFF_PASSWORD, STAFF_PHONE, Target};

#[derive(Debug, Clone)]
pub struct CompareArgs {
    pub scenarios: Vec<String>,
    pub server_bin: PathBuf,
    pub node_dir: PathBuf,
    pub redis_url: Option<String>,
    pub ingest: ingest::IngestArgs,
    pub track: track::TrackArgs,
    pub connections: connections::ConnectionsArgs,
}

/// A server started for a comparison; stopped (and its scratch state removed) when dropped.
struct Server {
    child: Child,
    addr: String,
    scratch: Option<PathBuf>,
    /// The baseline's Redis GEO key, with the Redis URL.
    geo: Option<(String, String)>,
}

impl Server {
    fn dispatchd(bin: &Path) -> anyhow::Result<Self> {
        let scratch = std::env::temp_dir().join(format!("dispatchd-compare-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&scratch)?;
        let envs = [
            ("DISPATCHD__SERVER__ADDR", "127.0.0.1:0".to_owned()),
            ("DISPATCHD__DATABASE__SQLITE_PATH", scratch.join("dispatchd.db").display().to_string()),
            ("DISPATCHD__RATE_LIMIT__ENABLED", "false".into()),
            // Every simulated client comes from a few loopback addresses.
            ("DISPATCHD__SERVER__MAX_CONNECTIONS_PER_IP", "1000000".into()),
            // A few customers place every order of a run.
            ("DISPATCHD__ORDERS__MAX_OPEN_PER_CUSTOMER", "1000000".into()),
            ("DISPATCHD__AUTH__ARGON2_MEMORY_KIB", "64".into()),
            ("DISPATCHD__AUTH__ARGON2_ITERATIONS", "1".into()),
            ("DISPATCHD__LOG__LEVEL", "warn,dispatchd::app=info".into()),
        ];
        let admin = Command::new(bin)
            .args(["admin", "create-user", "--role", "admin", "--phone", STAFF_PHONE, "--name", "Bench"])
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env("DISPATCHD_ADMIN_PASSWORD", STAFF_PASSWORD)
            .output()
            .with_context(|| format!("running {} (build it: cargo build --release)", bin.display()))?;
        if !admin.status.success() {
            bail!("creating the admin: {}", String::from_utf8_lossy(&admin.stderr));
        }
        let child = Command::new(bin)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Owned before it is waited for: an early exit or a timeout still stops and cleans up.
        let mut server = Self { child, addr: String::new(), scratch: Some(scratch), geo: None };
        server.addr = read_until(&mut server.child, |line| {
            let value: Value = serde_json::from_str(line).ok()?;
            value["fields"]["addr"].as_str().or(value["addr"].as_str()).map(str::to_owned)
        })?;
        Ok(server)
    }

    fn node(dir: &Path, redis_url: Option<&str>) -> anyhow::Result<Self> {
        if !dir.join("node_modules").is_dir() {
            let installed = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(dir)
                .status()
                .context("npm (install Node.js: apt-get install nodejs npm)")?;
            anyhow::ensure!(installed.success(), "npm ci in {} failed", dir.display());
        }
        let mut command = Command::new("node");
        command.arg("server.js").current_dir(dir).env("PORT", "0").stdout(Stdio::piped()).stderr(Stdio::piped());
        let geo = redis_url.map(|url| (format!("bench:compare:{}", uuid::Uuid::now_v7()), url.to_owned()));
        if let Some((key, url)) = &geo {
            command.env("REDIS_URL", url).env("GEO_KEY", key);
        }
        let child = command.spawn().context("node (install Node.js: apt-get install nodejs npm)")?;
        let mut server = Self { child, addr: String::new(), scratch: None, geo };
        let port = read_until(&mut server.child, |line| {
            let value: Value = serde_json::from_str(line).ok()?;
            value["listening"].as_u64()
        })?;
        server.addr = format!("127.0.0.1:{port}");
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, so dispatchd shuts down the way it does in production.
        // SAFETY: kill only sends a signal to the child this struct owns.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(scratch) = &self.scratch {
            let _ = std::fs::remove_dir_all(scratch);
        }
        if let Some((key, url)) = &self.geo
            && let Ok(mut redis) = redis::Client::open(url.as_str()).and_then(|client| client.get_connection())
        {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(key).arg(format!("{key}:seen")).query(&mut redis);
        }
    }
}

/// Reads the child's stdout (and stderr) lines until `found` says what it was waiting for.
fn read_until<T>(child: &mut Child, found: impl Fn(&str) -> Option<T>) -> anyhow::Result<T> {
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    for stream in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
        let lines_tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    // Nobody listens any more: keep draining so the child never blocks.
                    continue;
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(value) = found(&line) {
                    return Ok(value);
                }
                seen.push(line);
            }
            Err(_) => break,
        }
    }
    bail!("the server did not say where it listens within 30 s; it printed:\n{}", seen.join("\n"))
}

/// Runs every scenario against both servers; prints each table and the ratios; returns JSON.
pub async fn run(args: &CompareArgs) -> anyhow::Result<Value> {
    let mut results = Vec::new();
    let mut ratios = Table::new(&["scenario", "measure", "dispatchd", "node", "dispatchd / node"]);
    for scenario in &args.scenarios {
        let ours = one(args, scenario, Kind::Dispatchd).await?;
        let theirs = one(args, scenario, Kind::Node).await?;
        println!("\n{scenario}");
        let mut both = ours.table.clone();
        both.append(&theirs.table);
        both.print();
        for (measure, a, b) in measures(scenario, &ours.json, &theirs.json) {
            let ratio = if b > 0.0 { format!("{:.2}", a / b) } else { "-".into() };
            ratios.row(vec![scenario.clone(), measure.into(), format!("{a:.1}"), format!("{b:.1}"), ratio]);
        }
        results.push(json!({ "scenario": scenario, "dispatchd": ours.json, "node": theirs.json }));
    }
    println!("\nratios");
    ratios.print();
    Ok(Value::Array(results))
}

struct Outcome {
    table: Table,
    json: Value,
}

async fn one(args: &CompareArgs, scenario: &str, kind: Kind) -> anyhow::Result<Outcome> {
    let redis = if scenario == "ingest" { args.redis_url.as_deref() } else { None };
    let server = match kind {
        Kind::Dispatchd => Server::dispatchd(&args.server_bin)?,
        Kind::Node => Server::node(&args.node_dir, redis)?,
    };
    let target = Target::new(kind, &server.addr)?;
    let pid = Some(server.pid());
    eprintln!("== {scenario} on {kind:?} ({})", server.addr);
    let outcome = match scenario {
        "ingest" => {
            let report = ingest::run(&target, &ingest::IngestArgs { pid, ..args.ingest.clone() }).await?;
            Outcome { table: report.table(), json: report.json() }
        }
        "track" => {
            let report = track::run(&target, &track::TrackArgs { pid, ..args.track.clone() }).await?;
            Outcome { table: report.table(), json: report.json() }
        }
        "connections" => {
            let report =
                connections::run(&target, &connections::ConnectionsArgs { pid, ..args.connections.clone() }).await?;
            Outcome { table: report.table(), json: report.json() }
        }
        other => bail!("compare runs ingest, track and connections, not {other}"),
    };
    drop(server);
    Ok(outcome)
}

/// The figures compared for `scenario`: (name, ours, theirs).
fn measures(scenario: &str, ours: &Value, theirs: &Value) -> Vec<(&'static str, f64, f64)> {
    let pick = |value: &Value, path: &[&str]| path.iter().fold(value, |v, key| &v[*key]).as_f64().unwrap_or(0.0);
    let both = |name, path: &[&str]| (name, pick(ours, path), pick(theirs, path));
    match scenario {
        "ingest" => vec![
            both("accepted fixes/s", &["accepted_per_sec"]),
            both("ack p50 (µs)", &["ack", "p50_us"]),
            both("ack p99 (µs)", &["ack", "p99_us"]),
            both("server CPU per fix (µs)", &["server_cpu_us_per_fix"]),
        ],
        "track" => vec![
            both("delivered/s", &["delivered_per_sec"]),
            both("lost", &["lost"]),
            both("delivery p50 (µs)", &["delivery", "p50_us"]),
            both("delivery p99 (µs)", &["delivery", "p99_us"]),
            both("server CPU per delivery (µs)", &["server_cpu_us_per_delivery"]),
        ],
        _ => vec![
            both("bytes per idle connection", &["server_bytes_per_connection"]),
            both("connects/s", &["connect_per_sec"]),
            both("storm: back", &["storm_back"]),
            both("storm: all back (s)", &["storm_all_s"]),
        ],
    }
}
