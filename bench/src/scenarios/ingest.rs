//! `ingest`: N pilots connected to `/pilot`, each sending a batch of B fixes every T seconds
//! along a plausible path (a walker at bike speed), as phone apps do. Reports accepted fixes
//! per second, ack latency, refusals by reason, and the server's CPU and memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};

use crate::path::Walker;
use crate::proc::Usage;
use crate::progress::{Counters, Progress};
use crate::report::Table;
use crate::scenarios::{connect_all, ms, wall_ms};
use crate::sio::Socket;
use crate::stats::Summary;
use crate::target::{Kind, Target};

#[derive(Debug, Clone)]
pub struct IngestArgs {
    pub pilots: usize,
    /// Seconds between a pilot's reports.
    pub interval_s: f64,
    /// Fixes per report.
    pub batch: usize,
    pub duration_s: u64,
    pub pid: Option<u32>,
    pub seed: u64,
}

/// What an ingest run measured.
#[derive(Debug, Clone)]
pub struct IngestReport {
    pub target: Kind,
    pub pilots: usize,
    pub seconds: f64,
    pub reports: u64,
    pub fixes_sent: u64,
    pub fixes_accepted: u64,
    pub failed_acks: u64,
    pub refused: BTreeMap<String, u64>,
    pub ack: Option<Summary>,
    pub usage: Option<Usage>,
}

impl IngestReport {
    pub fn accepted_per_sec(&self) -> f64 {
        self.fixes_accepted as f64 / self.seconds.max(1e-9)
    }

    /// Server CPU (µs) per accepted fix, when the pid was given.
    pub fn cpu_us_per_fix(&self) -> Option<f64> {
        Some(self.usage?.cpu_us_per(self.fixes_accepted, self.seconds))
    }

    pub fn table(&self) -> Table {
        let [cpu, rss] = Usage::cells(self.usage);
        let mut table = Table::new(&[
            "target",
            "pilots",
            "s",
            "reports",
            "fixes",
            "accepted",
            "accepted/s",
            "failed acks",
            "ack p50",
            "p99",
            "p99.9",
            "server CPU",
            "µs CPU/fix",
            "server RSS",
        ]);
        table.row(vec![
            format!("{:?}", self.target).to_lowercase(),
            self.pilots.to_string(),
            format!("{:.0}", self.seconds),
            self.reports.to_string(),
            self.fixes_sent.to_string(),
            self.fixes_accepted.to_string(),
            format!("{:.0}", self.accepted_per_sec()),
            self.failed_acks.to_string(),
            ms(self.ack.map(|s| s.p50_us)),
            ms(self.ack.map(|s| s.p99_us)),
            ms(self.ack.map(|s| s.p999_us)),
            cpu,
            self.cpu_us_per_fix().map_or("-".into(), |us| format!("{us:.1}")),
            rss,
        ]);
        table
    }

    pub fn json(&self) -> Value {
        json!({
            "scenario": "ingest", "target": format!("{:?}", self.target).to_lowercase(), "pilots": self.pilots,
            "seconds": self.seconds, "reports": self.reports, "fixes_sent": self.fixes_sent,
            "fixes_accepted": self.fixes_accepted, "accepted_per_sec": self.accepted_per_sec(),
            "failed_acks": self.failed_acks, "refused": self.refused, "ack": self.ack.map(|s| s.json()),
            "server_cpu_percent": self.usage.map(|u| u.cpu_percent), "server_cpu_us_per_fix": self.cpu_us_per_fix(),
            "server_rss_kib": self.usage.map(|u| u.rss_kib),
        })
    }
}

pub async fn run(target: &Target, args: &IngestArgs) -> anyhow::Result<IngestReport> {
    eprintln!(
        "ingest: {} pilots, a batch of {} fixes every {} s, {} s",
        args.pilots, args.batch, args.interval_s, args.duration_s
    );
    let accounts = target.accounts("pilot", "bike", args.pilots).await?;
    let tokens: Vec<String> = accounts.into_iter().map(|account| account.token).collect();
    let sockets = connect_all(target, "/pilot", &tokens).await?;
    let mut walkers: Vec<Walker> =
        (0..sockets.len()).map(|n| Walker::new(args.seed.wrapping_add(n as u64), 30_000.0, 12.0)).collect();
    if target.kind == Kind::Dispatchd {
        go_online(&sockets, &mut walkers).await?;
    }
    let counters = Counters::new(&["reports", "fixes", "accepted", "failed"]);
    let acks = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let start = Usage::start(args.pid);
    let started = Instant::now();
    let run_for = Duration::from_secs(args.duration_s);
    let progress = Progress::start(counters.clone(), &["accepted"]);
    let tasks = sockets.into_iter().zip(walkers).enumerate().map(|(n, (socket, walker))| {
        let (counters, acks, refused) = (counters.clone(), acks.clone(), refused.clone());
        let (interval, batch, count) = (args.interval_s, args.batch, tokens.len());
        async move {
            let stream = Stream { socket, walker, interval_s: interval, batch };
            stream.run(n, count, started + run_for, &counters, &acks, &refused).await;
        }
    });
    join_all(tasks).await;
    drop(progress);
    let seconds = started.elapsed().as_secs_f64();
    let usage = Usage::until_now(start);
    let mut samples = acks.lock().unwrap();
    Ok(IngestReport {
        target: target.kind,
        pilots: tokens.len(),
        seconds,
        reports: counters.get("reports"),
        fixes_sent: counters.get("fixes"),
        fixes_accepted: counters.get("accepted"),
        failed_acks: counters.get("failed"),
        refused: refused.lock().unwrap().clone(),
        ack: (!samples.is_empty()).then(|| Summary::of(&mut samples)),
        usage,
    })
}

/// dispatchd pilots report where they are and go on duty, as an app does at the start of a
/// shift (not measured).
async fn go_online(sockets: &[Socket], walkers: &mut [Walker]) -> anyhow::Result<()> {
    for chunk in sockets.iter().zip(walkers.iter_mut()).collect::<Vec<_>>().chunks(200) {
        let replies = join_all(chunk.iter().map(|(socket, walker)| async {
            let (lat, lng) = walker.at;
            let first = json!({ "points": [{ "lat": lat, "lng": lng, "ts": wall_ms() - 10_000, "accuracy": 5 }] });
            socket.ask("location", &first).await?;
            socket.ask("status:set", &json!({ "status": "online" })).await
        }))
        .await;
        for reply in replies {
            let reply = reply.map_err(anyhow::Error::msg)?;
            anyhow::ensure!(reply["ok"] == true, "going online: {reply}");
        }
    }
    Ok(())
}

/// One pilot's stream of reports.
struct Stream {
    socket: Socket,
    walker: Walker,
    interval_s: f64,
    batch: usize,
}

impl Stream {
    async fn run(
        mut self,
        index: usize,
        count: usize,
        until: Instant,
        counters: &Counters,
        acks: &Mutex<Vec<Duration>>,
        refused: &Mutex<BTreeMap<String, u64>>,
    ) {
        // Spread the pilots over the first interval so that they do not all send at once.
        let period = Duration::from_secs_f64(self.interval_s);
        tokio::time::sleep(period.mul_f64(index as f64 / count.max(1) as f64)).await;
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if Instant::now() >= until {
                return;
            }
            let report = self.next_report();
            counters.add("reports", 1);
            counters.add("fixes", self.batch as u64);
            let sent = Instant::now();
            match self.socket.ask("location", &report).await {
                Ok(answer) if answer["ok"] == true => {
                    acks.lock().unwrap().push(sent.elapsed());
                    counters.add("accepted", answer["data"]["accepted"].as_u64().unwrap_or(0));
                    let mut refused = refused.lock().unwrap();
                    for point in answer["data"]["rejected"].as_array().into_iter().flatten() {
                        *refused.entry(point["reason"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
                    }
                }
                _ => counters.add("failed", 1),
            }
        }
    }

    /// `batch` fixes spread over the last interval, oldest first, ending now.
    fn next_report(&mut self) -> Value {
        let step_s = self.interval_s / self.batch as f64;
        let now = wall_ms();
        let points: Vec<Value> = (0..self.batch)
            .map(|n| {
                let (lat, lng) = self.walker.advance(step_s, true);
                let ts = now - ((self.batch - 1 - n) as f64 * step_s * 1000.0) as i64;
                json!({ "lat": lat, "lng": lng, "ts": ts, "accuracy": 6, "speed": 12.0 })
            })
            .collect();
        json!({ "points": points })
    }
}
