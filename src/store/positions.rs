//! The Redis mirror of the live pilot index: written behind in pipelined batches, read back
//! at start so a restarted node knows where its pilots are.
//!
//! Layout, under `redis.key_prefix` (default `dispatchd:`), readable by other services:
//!
//! | key | type | content |
//! |---|---|---|
//! | `pilot:{id}` | hash | `lat`, `lng`, `vehicle_type`, `status`, `stale` (0/1), `heading`, `speed` (m/s), `accuracy` (m), `fix_ms` (phone time of the fix), `seen_ms` (server time of the last report), `status_ms` (server time of the last status change); `heading`/`speed` empty when unknown. Expires `grid.forget_after_secs` after its last write. |
//! | `pilots:geo:{vehicle_type}` | geo set | ids of the in-service, reachable pilots of that vehicle type heard within `grid.stale_after_secs`, at their last position, for `GEOSEARCH` (latitudes beyond ±85.05° are not representable and left out) |
//! | `pilots:seen` | sorted set | every pilot id, scored by `seen_ms` |
//!
//! Only state converges, not every intermediate point: a pilot that moved five times between
//! two flushes is written once, at its latest position. While Redis is down, changes keep
//! accumulating in the index (one mark per pilot, so memory stays bounded) and are written
//! when it returns; on every recovery every pilot is rewritten, since a restarted Redis may
//! have lost everything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::cluster::Feed;
use crate::domain::{LatLng, PilotStatus, VehicleType};
use crate::grid::{MirrorRecord, PilotIndex, PilotSnapshot};
use crate::ids::UserId;
use crate::store::redis::RedisHandle;

/// Latitudes Redis GEO commands accept.
const GEO_MAX_LAT: f64 = 85.051_128_78;
/// How often pilots forgotten by every node are pruned from the shared sets.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often pilots nobody has written for `grid.stale_after_secs` leave the geo sets.
const SILENT_EVERY: Duration = Duration::from_secs(1);
/// How far back each look for silent pilots reaches, past `stale_after` (looks overlap, so
/// one that failed or came late misses nobody).
const SILENT_WINDOW_MS: i64 = 10_000;
/// Removes from the geo sets (KEYS[2..]) the pilots whose `pilots:seen` score (KEYS[1]) lies
/// in [ARGV[1], ARGV[2]], in one step: a pilot written meanwhile is not removed after.
const REMOVE_SILENT: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])
for _, id in ipairs(ids) do
  for i = 2, #KEYS do redis.call('ZREM', KEYS[i], id) end
end
return #ids";
/// Pilots read per pipeline during warm start.
const WARM_START_CHUNK: usize = 1000;

/// `[redis.positions]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub flush_interval_ms: u64,
    pub batch_size: usize,
}

/// Writes the index's changes to Redis.
pub struct PositionMirror {
    index: Arc<PilotIndex>,
    redis: RedisHandle,
    clock: Clock,
    config: MirrorConfig,
    /// How long a pilot's hash outlives its last write, ms.
    ttl_ms: u64,
    /// A pilot silent this long is not offered work: it leaves the geo sets, ms.
    stale_after_ms: i64,
    /// In a cluster, each write is also told to the other nodes, in the same pipeline.
    feed: Option<Feed>,
}

impl PositionMirror {
    pub fn new(
        index: Arc<PilotIndex>,
        redis: RedisHandle,
        clock: Clock,
        config: MirrorConfig,
        grid: &crate::grid::GridConfig,
        feed: Option<Feed>,
    ) -> Self {
        let ttl_ms = grid.forget_after_secs.saturating_mul(1000).max(1000);
        let stale_after_ms = i64::try_from(grid.stale_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
        let mirror = Self { index, redis, clock, config, ttl_ms, stale_after_ms, feed };
        let (index, clock) = (mirror.index.clone(), mirror.clock.clone());
        mirror.redis.on_recovery(move |_| {
            index.mark_all_dirty(clock.now().timestamp_millis());
            async { Ok(()) }
        });
        mirror
    }

    /// Flushes every `flush_interval_ms` until `stop`, then makes one last attempt. Once a
    /// minute it also prunes pilots nobody has written for `forget_after_secs`.
    pub async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(Duration::from_millis(self.config.flush_interval_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prunes = tokio::time::interval(PRUNE_EVERY);
        prunes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut silent = tokio::time::interval(SILENT_EVERY);
        silent.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => { self.flush().await; }
                _ = prunes.tick() => {
                    if let Err(err) = self.prune_forgotten().await {
                        tracing::debug!(error = format!("{err:#}"), "pruning forgotten pilots failed; next time");
                    }
                }
                _ = silent.tick(), if self.redis.is_up() => {
                    if let Err(err) = self.remove_silent().await {
                        tracing::debug!(error = format!("{err:#}"), "removing silent pilots failed; next time");
                    }
                }
            }
        }
        let written = self.flush().await;
        tracing::info!(written, "position mirror flushed at shutdown");
    }

    /// Writes everything pending (if Redis is up) and returns how many records were written.
    pub async fn flush(&self) -> usize {
        let mut written = 0;
        while self.redis.is_up() {
            let records = self.index.take_dirty(self.config.batch_size);
            if records.is_empty() {
                break;
            }
            let count = records.len();
            if let Err(err) = self.redis.query_pipeline::<()>(&self.pipeline(&records)).await {
                tracing::warn!(error = format!("{err:#}"), "position mirror write failed; will retry");
                metrics::counter!("grid_mirror_failures_total").increment(1);
                self.index.requeue(records, self.clock.now().timestamp_millis());
                break;
            }
            written += count;
            metrics::counter!("grid_mirror_written_total").increment(count as u64);
        }
        self.record_lag();
        written
    }

    /// Removes from the geo sets and `pilots:seen` the pilots whose hash expired: ones a node
    /// that died (or lost them) never forgot explicitly. Without this, `GEOSEARCH` readers
    /// would find them for ever. A pilot that reports again is written again.
    pub async fn prune_forgotten(&self) -> anyhow::Result<usize> {
        let cutoff = self.clock.now().timestamp_millis() - i64::try_from(self.ttl_ms).unwrap_or(i64::MAX);
        let seen = self.redis.key("pilots:seen");
        let mut pruned = 0;
        loop {
            let page =
                redis::cmd("ZRANGEBYSCORE").arg(&seen).arg("-inf").arg(cutoff).arg("LIMIT").arg(0).arg(500).clone();
            let ids: Vec<String> = self.redis.query(&page).await?;
            if ids.is_empty() {
                return Ok(pruned);
            }
            let mut pipeline = redis::pipe();
            for vehicle in VehicleType::ALL {
                pipeline.cmd("ZREM").arg(geo_key(&self.redis, *vehicle)).arg(&ids).ignore();
            }
            // Only if still old: a pilot that reported since keeps its place.
            pipeline.cmd("ZREMRANGEBYSCORE").arg(&seen).arg("-inf").arg(cutoff).ignore();
            self.redis.query_pipeline::<()>(&pipeline).await?;
            pruned += ids.len();
            metrics::counter!("grid_mirror_pruned_total").increment(ids.len() as u64);
        }
    }

    /// Takes out of the geo sets the pilots nobody has written for `stale_after_secs`:
    /// their node marks its own stale (and writes that), but the pilots of a node that died
    /// are nobody's to write; they leave `GEOSEARCH` answers within `stale_after_secs` (and a
    /// second) of their last write, whoever notices. Their hashes stay until they expire.
    pub async fn remove_silent(&self) -> anyhow::Result<usize> {
        let newest = self.clock.now().timestamp_millis() - self.stale_after_ms;
        let mut script = redis::cmd("EVAL");
        script.arg(REMOVE_SILENT).arg(1 + VehicleType::ALL.len()).arg(self.redis.key("pilots:seen"));
        for vehicle in VehicleType::ALL {
            script.arg(geo_key(&self.redis, *vehicle));
        }
        script.arg(newest - SILENT_WINDOW_MS).arg(newest);
        let removed: usize = self.redis.query(&script).await?;
        Ok(removed)
    }

    fn record_lag(&self) {
        let (pending, since) = self.index.pending_mirror();
        let lag_ms = since.map_or(0, |since| (self.clock.now().timestamp_millis() - since).max(0));
        metrics::gauge!("grid_mirror_pending").set(pending as f64);
        metrics::gauge!("grid_mirror_lag_seconds").set(lag_ms as f64 / 1000.0);
    }

    fn pipeline(&self, records: &[MirrorRecord]) -> redis::Pipeline {
        let mut pipeline = redis::pipe();
        let seen = self.redis.key("pilots:seen");
        for record in records {
            match record {
                MirrorRecord::Upsert(pilot) => self.write_pilot(&mut pipeline, pilot, &seen),
                MirrorRecord::Forget { id, vehicle } => {
                    pipeline.cmd("DEL").arg(pilot_key(&self.redis, *id)).ignore();
                    pipeline.cmd("ZREM").arg(geo_key(&self.redis, *vehicle)).arg(id.to_string()).ignore();
                    pipeline.cmd("ZREM").arg(&seen).arg(id.to_string()).ignore();
                }
            }
        }
        if let Some(feed) = &self.feed {
            feed.add_pilots(&mut pipeline, records);
        }
        pipeline
    }

    fn write_pilot(&self, pipeline: &mut redis::Pipeline, pilot: &PilotSnapshot, seen: &str) {
        let key = pilot_key(&self.redis, pilot.id);
        let optional = |value: Option<f64>| value.map(|v| v.to_string()).unwrap_or_default();
        pipeline
            .cmd("HSET")
            .arg(&key)
            .arg("lat")
            .arg(pilot.position.lat().to_string())
            .arg("lng")
            .arg(pilot.position.lng().to_string())
            .arg("vehicle_type")
            .arg(pilot.vehicle.as_str())
            .arg("status")
            .arg(pilot.status.as_str())
            .arg("stale")
            .arg(u8::from(pilot.stale))
            .arg("heading")
            .arg(optional(pilot.heading_deg))
            .arg("speed")
            .arg(optional(pilot.speed_mps))
            .arg("accuracy")
            .arg(pilot.accuracy_m.to_string())
            .arg("fix_ms")
            .arg(pilot.fix_ms)
            .arg("seen_ms")
            .arg(pilot.seen_ms)
            .arg("status_ms")
            .arg(pilot.status_ms)
            .ignore();
        pipeline.cmd("PEXPIRE").arg(&key).arg(self.ttl_ms).ignore();
        let id = pilot.id.to_string();
        let geo = geo_key(&self.redis, pilot.vehicle);
        // The geo sets hold the pilots that could be offered work: in service and heard.
        if pilot.status != PilotStatus::Offline && !pilot.stale && pilot.position.lat().abs() <= GEO_MAX_LAT {
            pipeline.cmd("GEOADD").arg(geo).arg(pilot.position.lng()).arg(pilot.position.lat()).arg(&id).ignore();
        } else {
            pipeline.cmd("ZREM").arg(geo).arg(&id).ignore();
        }
        pipeline.cmd("ZADD").arg(seen).arg(pilot.seen_ms).arg(&id).ignore();
    }
}

fn pilot_key(redis: &RedisHandle, id: UserId) -> String {
    redis.key(format_args!("pilot:{id}"))
}

fn geo_key(redis: &RedisHandle, vehicle: VehicleType) -> String {
    redis.key(format_args!("pilots:geo:{vehicle}"))
}

/// Loads into `index` every pilot Redis has seen within `forget_after_secs`. Returns how
/// many were restored. Redis being down is not an error: the index starts empty and fills
/// as pilots report.
pub async fn warm_start(
    index: &PilotIndex,
    redis: &RedisHandle,
    now_ms: i64,
    forget_after_secs: u64,
    owned: bool,
) -> usize {
    match load(index, redis, now_ms, forget_after_secs, owned).await {
        Ok(restored) => {
            tracing::info!(restored, "pilot index warm-started from redis");
            restored
        }
        Err(err) => {
            tracing::warn!(error = format!("{err:#}"), "no warm start: redis unavailable; the index starts empty");
            0
        }
    }
}

async fn load(
    index: &PilotIndex,
    redis: &RedisHandle,
    now_ms: i64,
    forget_after_secs: u64,
    owned: bool,
) -> anyhow::Result<usize> {
    redis.ping().await?;
    let since = now_ms - i64::try_from(forget_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let mut ranged = redis::pipe();
    ranged.cmd("ZRANGEBYSCORE").arg(redis.key("pilots:seen")).arg(since).arg("+inf");
    let (ids,): (Vec<String>,) = redis.pipeline_unchecked(&ranged).await?;
    let mut restored = 0;
    for chunk in ids.chunks(WARM_START_CHUNK) {
        let mut pipeline = redis::pipe();
        for id in chunk {
            pipeline.cmd("HGETALL").arg(redis.key(format_args!("pilot:{id}")));
        }
        let hashes: Vec<HashMap<String, String>> = redis.pipeline_unchecked(&pipeline).await?;
        for (id, fields) in chunk.iter().zip(hashes) {
            if let Some(pilot) = parse_pilot(id, &fields) {
                index.restore(&pilot, owned);
                restored += 1;
            }
        }
    }
    Ok(restored)
}

/// A pilot from its hash; `None` when the hash expired or does not parse.
fn parse_pilot(id: &str, fields: &HashMap<String, String>) -> Option<PilotSnapshot> {
    let number = |name: &str| fields.get(name).and_then(|value| value.parse::<f64>().ok());
    let integer = |name: &str| fields.get(name).and_then(|value| value.parse::<i64>().ok());
    Some(PilotSnapshot {
        id: id.parse().ok()?,
        position: LatLng::new(number("lat")?, number("lng")?).ok()?,
        vehicle: fields.get("vehicle_type")?.parse().ok()?,
        status: fields.get("status")?.parse().ok()?,
        stale: fields.get("stale").is_some_and(|stale| stale == "1"),
        heading_deg: number("heading"),
        speed_mps: number("speed"),
        accuracy_m: number("accuracy").unwrap_or(0.0),
        fix_ms: integer("fix_ms")?,
        seen_ms: integer("seen_ms")?,
        status_ms: integer("status_ms").or(integer("seen_ms"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_parse_back_into_snapshots() {
        let id = UserId::new();
        let fields: HashMap<String, String> = [
            ("lat", "12.97"),
            ("lng", "77.59"),
            ("vehicle_type", "mini_truck"),
            ("status", "busy"),
            ("stale", "0"),
            ("heading", ""),
            ("speed", "7.5"),
            ("accuracy", "4"),
            ("fix_ms", "1700000000000"),
            ("seen_ms", "1700000000500"),
            ("status_ms", "1700000000200"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let pilot = parse_pilot(&id.to_string(), &fields).unwrap();
        assert_eq!(
            (pilot.vehicle, pilot.status, pilot.heading_deg, pilot.speed_mps, pilot.status_ms),
            (VehicleType::MiniTruck, PilotStatus::Busy, None, Some(7.5), 1_700_000_000_200)
        );
        assert!(parse_pilot(&id.to_string(), &HashMap::new()).is_none(), "expired hash");
        assert!(parse_pilot("not-a-uuid", &fields).is_none());
    }
}
