//! `connections`: N idle sockets on `/pilot`, spread over several 127.0.0.x source addresses
//! (one address has about 28,000 ephemeral ports), the file limit raised to what the system
//! allows. Reports the connect rate and the server's memory per connection; then a reconnect
//! storm: every socket drops at once and comes back the way socket.io-client does (then
//! retrying after 1 s, doubling, ±50% jitter, at most 5 s), counting how many are back within the
//! deadline and how long half, 99% and all took (the first attempt at once, as a client
//! whose connection dropped does). Every socket signs in as the same pilot: the server keeps
//! one pilot room with N members rather than N rooms (a few dozen bytes a socket less).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rand::Rng as _;
use serde_json::{Value, json};

use crate::proc::Usage;
use crate::progress::{Counters, Progress};
use crate::report::Table;
use crate::sio::Socket;
use crate::target::{Kind, Target};

#[derive(Debug, Clone)]
pub struct ConnectionsArgs {
    pub connections: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.<sources>.
    pub sources: u8,
    /// Seconds the storm's sockets have to come back.
    pub storm_deadline_s: u64,
    /// Seconds the sockets stay idle before the server's memory is read (pings go on: a
    /// socket's buffers may grow after its first minutes).
    pub settle_s: u64,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ConnectionsReport {
    pub target: Kind,
    pub asked: usize,
    pub opened: usize,
    pub failed: usize,
    pub connect_per_sec: f64,
    pub rss_kib: Option<(u64, u64)>,
    pub storm_back: usize,
    /// Seconds until 50%, 99% and 100% of the sockets were back (when they were).
    pub storm_times: [Option<f64>; 3],
    pub fd_limit: u64,
}

impl ConnectionsReport {
    /// Server memory per open connection (bytes), when the pid was given.
    pub fn bytes_per_connection(&self) -> Option<f64> {
        let (before, after) = self.rss_kib?;
        Some(after.saturating_sub(before) as f64 * 1024.0 / self.opened.max(1) as f64)
    }

    pub fn table(&self) -> Table {
        let secs = |t: Option<f64>| t.map_or("-".into(), |t| format!("{t:.1} s"));
        let mut table = Table::new(&[
            "target",
            "connections",
            "failed",
            "connect rate",
            "RSS before",
            "RSS after",
            "per connection",
            "storm: back",
            "50% back",
            "99% back",
            "all back",
        ]);
        table.row(vec![
            format!("{:?}", self.target).to_lowercase(),
            self.opened.to_string(),
            self.failed.to_string(),
            format!("{:.0}/s", self.connect_per_sec),
            self.rss_kib.map_or("-".into(), |(a, _)| format!("{:.0} MiB", a as f64 / 1024.0)),
            self.rss_kib.map_or("-".into(), |(_, b)| format!("{:.0} MiB", b as f64 / 1024.0)),
            self.bytes_per_connection().map_or("-".into(), |b| format!("{:.1} KiB", b / 1024.0)),
            format!("{}/{}", self.storm_back, self.opened),
            secs(self.storm_times[0]),
            secs(self.storm_times[1]),
            secs(self.storm_times[2]),
        ]);
        table
    }

    pub fn json(&self) -> Value {
        json!({
            "scenario": "connections", "target": format!("{:?}", self.target).to_lowercase(),
            "asked": self.asked, "opened": self.opened, "failed": self.failed,
            "connect_per_sec": self.connect_per_sec, "server_rss_kib": self.rss_kib,
            "server_bytes_per_connection": self.bytes_per_connection(), "storm_back": self.storm_back,
            "storm_50_s": self.storm_times[0], "storm_99_s": self.storm_times[1], "storm_all_s": self.storm_times[2],
            "fd_limit": self.fd_limit,
        })
    }
}

pub async fn run(target: &Target, args: &ConnectionsArgs) -> anyhow::Result<ConnectionsReport> {
    let fd_limit = raise_fd_limit();
    let wanted = args.connections + 64;
    if (fd_limit as usize) < wanted {
        eprintln!(
            "connections: this process may open {fd_limit} files; {wanted} are needed, so some connects will fail"
        );
    }
    // One pilot per socket, as in a fleet: each socket has a room of its own on the server.
    eprintln!("connections: signing up {} pilots…", args.connections);
    let tokens: Vec<String> =
        target.accounts("pilot", "bike", args.connections).await?.into_iter().map(|account| account.token).collect();
    let sources: Vec<IpAddr> = (1..=args.sources.max(1)).map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))).collect();
    eprintln!("connections: {} idle sockets on /pilot from {} source addresses", args.connections, sources.len());
    let counters = Counters::new(&["open", "failed"]);
    let start = Usage::start(args.pid);
    let started = Instant::now();
    let progress = Progress::start(counters.clone(), &["open"]);
    let results: Vec<Option<Socket>> = futures::stream::iter(0..args.connections)
        .map(|n| {
            let (token, counters) = (&tokens[n], counters.clone());
            let source = sources[n % sources.len()];
            async move {
                let opened =
                    Socket::connect_from(Some(source), &target.addr, "/pilot", token, Arc::new(|_, _| {})).await;
                counters.add(if opened.is_ok() { "open" } else { "failed" }, 1);
                opened.ok()
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    drop(progress);
    let connect_s = started.elapsed().as_secs_f64();
    let sockets: Vec<Socket> = results.into_iter().flatten().collect();
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let usage = Usage::until_now(start);
    let opened = sockets.len();
    let (storm_back, storm_times) = storm(target, &tokens, sockets, &sources, args.storm_deadline_s).await;
    Ok(ConnectionsReport {
        target: target.kind,
        asked: args.connections,
        opened,
        failed: args.connections - opened,
        connect_per_sec: opened as f64 / connect_s.max(1e-9),
        rss_kib: usage.map(|usage| usage.rss_kib),
        storm_back,
        storm_times,
        fd_limit,
    })
}

/// Drops every socket at once, then brings each back with socket.io-client's backoff.
async fn storm(
    target: &Target,
    tokens: &[String],
    sockets: Vec<Socket>,
    sources: &[IpAddr],
    deadline_s: u64,
) -> (usize, [Option<f64>; 3]) {
    let count = sockets.len();
    eprintln!("storm: {count} sockets drop at once and reconnect (deadline {deadline_s} s)");
    for socket in &sockets {
        socket.close();
    }
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counters = Counters::new(&["back", "attempts"]);
    let progress = Progress::start(counters.clone(), &[]);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(deadline_s);
    let tasks = (0..count).map(|n| {
        let (counters, source, token) = (counters.clone(), sources[n % sources.len()], &tokens[n]);
        async move {
            let mut delay = Duration::from_secs(1);
            while Instant::now() < deadline {
                counters.add("attempts", 1);
                let attempt = Socket::connect_from(Some(source), &target.addr, "/pilot", token, Arc::new(|_, _| {}));
                let left = deadline.saturating_duration_since(Instant::now());
                if let Ok(Ok(socket)) = tokio::time::timeout(left, attempt).await {
                    counters.add("back", 1);
                    return Some((started.elapsed().as_secs_f64(), socket));
                }
                let jitter = rand::rng().random_range(0.5..1.5);
                tokio::time::sleep(delay.mul_f64(jitter).min(deadline.saturating_duration_since(Instant::now()))).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            None
        }
    });
    let back: Vec<(f64, Socket)> = futures::future::join_all(tasks).await.into_iter().flatten().collect();
    drop(progress);
    let mut times: Vec<f64> = back.iter().map(|(t, _)| *t).collect();
    times.sort_by(f64::total_cmp);
    let at = |share: f64| {
        let needed = (count as f64 * share).ceil() as usize;
        (needed >= 1 && needed <= times.len()).then(|| times[needed - 1])
    };
    for (_, socket) in &back {
        socket.close();
    }
    (back.len(), [at(0.5), at(0.99), at(1.0)])
}

/// Raises this process's open-file limit to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}
