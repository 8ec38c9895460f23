//! `flood`: one abusive client beside normal ones. Normal pilots report their position and
//! normal customers watch an order (a database read) once a second each, and call the REST
//! API; meanwhile one customer floods `order:watch` without reading a single reply, then
//! another floods while reading. Reports the normal clients' round trips (socket and REST)
//! before, during each flood and after, how long each flooder stayed connected, and the
//! server's resident memory: under the normal load alone (the baseline), at each phase's
//! peak, and under the same load some seconds after the floods.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::proc::ProcSample;
use crate::report::Table;
use crate::scenarios::{connect_all, ms, wall_ms};
use crate::sio::Socket;
use crate::stats::Summary;
use crate::target::Target;

#[derive(Debug, Clone)]
pub struct FloodArgs {
    /// Normal clients: half pilots, half customers.
    pub normal: usize,
    /// Seconds of each phase (before, each flood, after).
    pub phase_s: u64,
    /// Frames the no-read flooder sends.
    pub frames: usize,
    /// Frames the reading flooder sends.
    pub read_frames: usize,
    /// Seconds after the floods (at least a phase) before memory is read again, the normal
    /// load still running.
    pub settle_s: u64,
    pub pid: Option<u32>,
}

/// One phase's figures.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub socket: Option<Summary>,
    pub rest: Option<Summary>,
    /// Round trips that failed or took over 10 s.
    pub failed: u64,
    /// How long the flooder of this phase stayed connected (`None`: still at the end).
    pub flooder_cut_after: Option<Option<Duration>>,
    pub rss_peak_kib: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct FloodReport {
    pub normal: usize,
    pub phases: Vec<Phase>,
    pub rss_baseline_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
}

impl FloodReport {
    pub fn table(&self) -> Table {
        let mut table =
            Table::new(&["phase", "socket p50", "p99", "REST p50", "p99", "failed", "flooder cut after", "RSS peak"]);
        for phase in &self.phases {
            let cut = match phase.flooder_cut_after {
                None => "-".to_owned(),
                Some(None) => "not cut".to_owned(),
                Some(Some(after)) => format!("{:.2} s", after.as_secs_f64()),
            };
            table.row(vec![
                phase.name.to_owned(),
                ms(phase.socket.map(|s| s.p50_us)),
                ms(phase.socket.map(|s| s.p99_us)),
                ms(phase.rest.map(|s| s.p50_us)),
                ms(phase.rest.map(|s| s.p99_us)),
                phase.failed.to_string(),
                cut,
                phase.rss_peak_kib.map_or("-".into(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0)),
            ]);
        }
        table
    }

    /// RSS after the floods as a ratio of the baseline.
    pub fn rss_ratio(&self) -> Option<f64> {
        Some(self.rss_after_kib? as f64 / self.rss_baseline_kib?.max(1) as f64)
    }

    pub fn json(&self) -> Value {
        let phases: Vec<Value> = self
            .phases
            .iter()
            .map(|phase| {
                let mut value = json!({
                    "phase": phase.name, "socket": phase.socket.map(|s| s.json()), "rest": phase.rest.map(|s| s.json()),
                    "failed": phase.failed, "rss_peak_kib": phase.rss_peak_kib,
                });
                // Flood phases only; `"not cut"` when the flooder outlasted the phase.
                if let Some(cut) = phase.flooder_cut_after {
                    value["flooder_cut_after_s"] = cut.map_or(json!("not cut"), |after| json!(after.as_secs_f64()));
                }
                value
            })
            .collect();
        json!({
            "scenario": "flood", "normal": self.normal, "phases": phases,
            "rss_baseline_kib": self.rss_baseline_kib, "rss_after_kib": self.rss_after_kib, "rss_ratio": self.rss_ratio(),
        })
    }
}

/// Round-trip samples of the normal clients, by the phase they fell in.
#[derive(Default)]
struct Samples {
    socket: Vec<Duration>,
    rest: Vec<Duration>,
    failed: u64,
}

type Shared = Arc<Mutex<Samples>>;

pub async fn run(target: &Target, args: &FloodArgs) -> anyhow::Result<FloodReport> {
    eprintln!(
        "flood: {} normal clients, {} s phases, {} frames unread then {} read",
        args.normal, args.phase_s, args.frames, args.read_frames
    );
    let pilots = target.accounts("pilot", "bike", args.normal.div_ceil(2)).await?;
    let customers = target.accounts("customer", "bike", args.normal / 2).await?;
    let flooders = target.accounts("customer", "bike", 2).await?;
    let pilot_tokens: Vec<String> = pilots.iter().map(|account| account.token.clone()).collect();
    let customer_tokens: Vec<String> = customers.iter().map(|account| account.token.clone()).collect();
    let pilot_sockets = connect_all(target, "/pilot", &pilot_tokens).await?;
    let customer_sockets = connect_all(target, "/customer", &customer_tokens).await?;

    let samples: Shared = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for (n, socket) in pilot_sockets.into_iter().enumerate() {
        load.push(tokio::spawn(pilot_loop(socket, n, samples.clone(), stop.clone())));
    }
    for (socket, account) in customer_sockets.into_iter().zip(&customers) {
        let rest = (target.clone(), account.token.clone());
        load.push(tokio::spawn(customer_loop(socket, rest, samples.clone(), stop.clone())));
    }

    let phase = Duration::from_secs(args.phase_s);
    let mut phases = Vec::new();
    let pause = |length: Duration| async move {
        tokio::time::sleep(length).await;
        None
    };
    phases.push(measure("before", &samples, args.pid, false, pause(phase)).await);
    // The baseline: the server under the normal load alone, settled.
    let baseline = args.pid.map(|pid| ProcSample::read(pid).rss_kib);
    let no_read = no_read_flood(target, &flooders[0].token, args.frames, phase);
    phases.push(measure("no-read flood", &samples, args.pid, true, no_read).await);
    let reading = reading_flood(target, &flooders[1].token, args.read_frames, phase);
    phases.push(measure("reading flood", &samples, args.pid, true, reading).await);
    let settle = phase.max(Duration::from_secs(args.settle_s));
    phases.push(measure("after", &samples, args.pid, false, pause(settle)).await);
    // The same normal load, the floods `settle` seconds gone.
    let after = args.pid.map(|pid| ProcSample::read(pid).rss_kib);
    stop.cancel();
    for task in load {
        let _ = task.await;
    }
    Ok(FloodReport { normal: args.normal, phases, rss_baseline_kib: baseline, rss_after_kib: after })
}

/// Runs `work` (a flood, or a pause) while sampling the server's memory; the normal
/// clients' round trips that completed meanwhile are the phase's.
async fn measure(
    name: &'static str,
    samples: &Shared,
    pid: Option<u32>,
    flood: bool,
    work: impl std::future::Future<Output = Option<Duration>>,
) -> Phase {
    *samples.lock().unwrap() = Samples::default();
    let peak = Arc::new(Mutex::new(None::<u64>));
    let sampler = pid.map(|pid| {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let rss = ProcSample::read(pid).rss_kib;
                {
                    let mut peak = peak.lock().unwrap();
                    *peak = Some(peak.map_or(rss, |old: u64| old.max(rss)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let cut = work.await;
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let taken = std::mem::take(&mut *samples.lock().unwrap());
    let summary = |mut v: Vec<Duration>| (!v.is_empty()).then(|| Summary::of(&mut v));
    let rss_peak_kib = *peak.lock().unwrap();
    Phase {
        name,
        socket: summary(taken.socket),
        rest: summary(taken.rest),
        failed: taken.failed,
        flooder_cut_after: flood.then_some(cut),
        rss_peak_kib,
    }
}

/// A normal pilot: on duty, then a position a second.
async fn pilot_loop(socket: Socket, n: usize, samples: Shared, stop: tokio_util::sync::CancellationToken) {
    let at = (12.90 + (n % 100) as f64 * 0.001, 77.55 + (n / 100) as f64 * 0.001);
    let point = |ts: i64| json!({ "points": [{ "lat": at.0, "lng": at.1, "ts": ts, "accuracy": 5 }] });
    let _ = socket.ask("location", &point(wall_ms())).await;
    let _ = socket.ask("status:set", &json!({ "status": "online" })).await;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    while !stop.is_cancelled() {
        ticks.tick().await;
        let started = Instant::now();
        let answer = socket.ask("location", &point(wall_ms())).await;
        record(&samples, started, answer.is_ok_and(|ack| ack["ok"] == true), false);
    }
}

/// A normal customer: an `order:watch` a second (a database read; the order is none of its,
/// so the answer is `ORDER_NOT_FOUND`) and a `GET /api/v1/me` a second.
async fn customer_loop(
    socket: Socket,
    (target, token): (Target, String),
    samples: Shared,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let watch = json!({ "order_id": "00000000-0000-7000-8000-000000000000" });
    while !stop.is_cancelled() {
        ticks.tick().await;
        let started = Instant::now();
        let answer = socket.ask("order:watch", &watch).await;
        record(&samples, started, answer.is_ok_and(|ack| ack["error"]["code"] == "ORDER_NOT_FOUND"), false);
        let started = Instant::now();
        let me = target.get("/api/v1/me", Some(&token)).await;
        record(&samples, started, me.is_ok(), true);
    }
}

fn record(samples: &Shared, started: Instant, ok: bool, rest: bool) {
    let took = started.elapsed();
    let mut samples = samples.lock().unwrap();
    match (ok, rest) {
        (false, _) => samples.failed += 1,
        (true, false) => samples.socket.push(took),
        (true, true) => samples.rest.push(took),
    }
}

/// A customer socket, raw, connected to `/customer`.
async fn raw_customer(
    target: &Target,
    token: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>> {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", target.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.next().await.ok_or_else(|| anyhow::anyhow!("no open packet"))??;
    ws.send(Message::text(format!("40/customer,{}", json!({ "token": token })))).await?;
    let answer = ws.next().await.ok_or_else(|| anyhow::anyhow!("no CONNECT answer"))??;
    anyhow::ensure!(answer.to_text().unwrap_or_default().starts_with("40/customer,"), "refused: {answer:?}");
    Ok(ws)
}

fn watch_frame(n: usize) -> Message {
    let watch = json!(["order:watch", { "order_id": "00000000-0000-7000-8000-000000000000" }]);
    Message::text(format!("42/customer,{n}{watch}"))
}

/// Sends `frames` `order:watch` without reading anything; how long until the server cut the
/// connection (a write fails), or `None` if it had not within `limit`.
async fn no_read_flood(target: &Target, token: &str, frames: usize, limit: Duration) -> Option<Duration> {
    let mut ws = raw_customer(target, token).await.ok()?;
    let started = Instant::now();
    let flooding = async {
        for n in 0..frames {
            if ws.feed(watch_frame(n)).await.is_err() {
                return Some(started.elapsed());
            }
        }
        if ws.flush().await.is_err() {
            return Some(started.elapsed());
        }
        // Everything is written: keep writing pings until a write fails.
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if ws.send(Message::text("3")).await.is_err() {
                return Some(started.elapsed());
            }
        }
    };
    let cut = tokio::time::timeout(limit, flooding).await.ok().flatten();
    // Let the phase run its length either way, for the normal clients' figures.
    tokio::time::sleep(limit.saturating_sub(started.elapsed())).await;
    cut
}

/// Sends `frames` `order:watch` as fast as it can while reading every reply; how long
/// until the server closed the connection, or `None` if it had not within `limit`.
async fn reading_flood(target: &Target, token: &str, frames: usize, limit: Duration) -> Option<Duration> {
    let ws = raw_customer(target, token).await.ok()?;
    let (mut sink, mut stream) = ws.split();
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
        started.elapsed()
    });
    tokio::spawn(async move {
        for n in 0..frames {
            if sink.send(watch_frame(n)).await.is_err() {
                return;
            }
        }
    });
    let cut = tokio::time::timeout(limit, reader).await.ok().and_then(Result::ok);
    tokio::time::sleep(limit.saturating_sub(started.elapsed())).await;
    cut
}
