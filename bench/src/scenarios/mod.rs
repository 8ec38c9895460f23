//! The scenarios `dispatchd-bench` runs, one module each, and what they share.

pub mod compare;
pub mod connections;
pub mod dispatch;
pub mod dispatch_in_process;
pub mod ingest;
pub mod matching;
pub mod simulate;
pub mod track;

use std::sync::Arc;

use futures::future::join_all;

use crate::sio::{OnEvent, Socket};
use crate::target::Target;

/// Connects one socket per token to `namespace`, 200 at a time (events are ignored).
pub async fn connect_all(target: &Target, namespace: &str, tokens: &[String]) -> anyhow::Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(tokens.len());
    for chunk in tokens.chunks(200) {
        let ignore: OnEvent = Arc::new(|_: &str, _| {});
        let opened =
            join_all(chunk.iter().map(|token| Socket::connect(&target.addr, namespace, token, ignore.clone()))).await;
        for socket in opened {
            sockets.push(socket.map_err(anyhow::Error::msg)?);
        }
    }
    Ok(sockets)
}

/// Wall-clock time, ms since the epoch (what apps put in `ts`).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A latency in µs as a short human string.
pub fn ms(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1000.0 => format!("{us:.0} µs"),
        Some(us) if us < 1e6 => format!("{:.2} ms", us / 1000.0),
        Some(us) => format!("{:.2} s", us / 1e6),
    }
}
