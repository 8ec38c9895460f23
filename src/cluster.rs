//! Several nodes, one fleet: what a node tells the others, and hears from them, through two
//! Redis streams under `redis.key_prefix`. There is no membership and no election: Redis
//! carries the news, Postgres still decides every race.
//!
//! | stream | entries | written by |
//! |---|---|---|
//! | `cluster:pilots` | the pilots a node's position mirror wrote, in the same pipeline: `{upserts: [snapshot], forgotten: [id]}` | [`Feed::add_pilots`], each mirror flush |
//! | `cluster:news` | one change each: an order change committed, an offer made, withdrawn or rejected, a move of a pilot on a trip | [`Cluster::run`], in batches gathered for `linger_ms`, on a connection of its own |
//!
//! Each entry carries its node's id; a node reads each stream (a reader and a connection for
//! each, so a large mirror write never holds up the news) from where it last read, skips its
//! own entries and applies the others':
//! * pilots go into its grid without being written back ([`PilotIndex::apply_remote`]), so
//!   every node matches, prices and draws the whole fleet;
//! * order changes reach its listeners as [`OrderListener::committed_elsewhere`]: its
//!   sockets get the order events, its tracking follows trips (so a pilot connected here
//!   carrying an order assigned on another node is tracked and traced here), and a search
//!   this node follows ends when the order is taken or cancelled elsewhere;
//! * offers reach the pilot's socket wherever the pilot is connected, and a rejection on
//!   another node moves this node's search on at once;
//! * a trip pilot's moves reach its customer wherever the customer watches.
//!
//! Order: each stream is in the order Redis appended it, so every node sees the same
//! sequence; a late order change is ignored by version ([`crate::orders::tracking`]).
//! Searches are not shared: each is followed by the one node that leases it
//! ([`crate::matchmaker::SearchLease`]).
//! Loss: a node that cannot reach Redis drops what it would have told (counted in
//! `cluster_dropped_total`); offers then time out and move on, order events are replayed by
//! `seq` when apps reconnect, and pilots are written again by the mirror when Redis is back.
//! A reader that lost its connection resumes where it stopped: the streams keep
//! `retention_secs` of history, trimmed by every reader.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::offers::Offer;
use crate::domain::orders::{Order, OrderEvent};
use crate::fleet::PositionListener;
use crate::grid::{MirrorRecord, PilotId, PilotIndex, PilotSnapshot};
use crate::matchmaker::{Matchmaker, OfferListener};
use crate::orders::tracking::Tracking;
use crate::orders::{OrderListener, Orders};
use crate::store::redis::RedisHandle;

/// News waiting to be written; beyond this a burst is dropped (and counted).
const OUTGOING_CAPACITY: usize = 65_536;
/// Most news entries written per pipeline.
const WRITE_BATCH: usize = 512;
/// How often a reader trims the streams to `retention_secs`.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// How long a reader waits before reconnecting after a failure.
const READ_RETRY: Duration = Duration::from_millis(500);

/// `[cluster]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// This node's name in the feed; empty: a random one at every start.
    pub node_id: String,
    pub retention_secs: u64,
    pub search_lease_secs: u64,
    pub linger_ms: u64,
    pub read_block_ms: u64,
    pub read_count: usize,
}

/// The writing side shared with the position mirror: which streams, and who is writing.
#[derive(Debug, Clone)]
pub struct Feed {
    node: Arc<str>,
    pilots_key: String,
    news_key: String,
}

impl Feed {
    pub fn new(redis: &RedisHandle, node: &str) -> Self {
        Self { node: node.into(), pilots_key: redis.key("cluster:pilots"), news_key: redis.key("cluster:news") }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Appends to `pipeline` the entry telling the other nodes what the mirror writes.
    pub fn add_pilots(&self, pipeline: &mut redis::Pipeline, records: &[MirrorRecord]) {
        let mut entry = PilotsEntry::default();
        for record in records {
            match record {
                MirrorRecord::Upsert(pilot) => entry.upserts.push(pilot.clone()),
                MirrorRecord::Forget { id, .. } => entry.forgotten.push(*id),
            }
        }
        self.add(pipeline, &self.pilots_key, &entry);
    }

    fn add(&self, pipeline: &mut redis::Pipeline, key: &str, entry: &impl Serialize) {
        let Ok(data) = serde_json::to_vec(entry) else { return };
        pipeline.cmd("XADD").arg(key).arg("*").arg("node").arg(&*self.node).arg("data").arg(data).ignore();
    }
}

/// An entry of `cluster:pilots`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PilotsEntry {
    upserts: Vec<PilotSnapshot>,
    forgotten: Vec<PilotId>,
}

/// An entry of `cluster:news`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum News {
    Committed { order: Box<Order>, events: Vec<OrderEvent> },
    Offered { offer: Offer, payload: Value },
    Withdrawn { offer: Offer, reason: String },
    Rejected { offer: Offer },
    Moved { pilot: PilotSnapshot },
}

impl News {
    fn kind(&self) -> &'static str {
        match self {
            News::Committed { .. } => "committed",
            News::Offered { .. } => "offered",
            News::Withdrawn { .. } => "withdrawn",
            News::Rejected { .. } => "rejected",
            News::Moved { .. } => "moved",
        }
    }
}

/// This node's part in the cluster. Share it behind an `Arc`.
pub struct Cluster {
    feed: Feed,
    redis: RedisHandle,
    config: ClusterConfig,
    grid: Arc<PilotIndex>,
    orders: Arc<Orders>,
    matchmaker: Arc<Matchmaker>,
    tracking: Arc<Tracking>,
    outgoing: mpsc::Sender<News>,
    unsent: Mutex<Option<mpsc::Receiver<News>>>,
    offer_listeners: RwLock<Vec<Arc<dyn OfferListener>>>,
    move_listeners: RwLock<Vec<Arc<dyn PositionListener>>>,
}

impl Cluster {
    /// Joins the feed, and subscribes to what this node must tell: its order changes, its
    /// offers and the moves of its pilots on trips.
    pub fn join(
        feed: Feed,
        redis: RedisHandle,
        config: ClusterConfig,
        orders: Arc<Orders>,
        matchmaker: Arc<Matchmaker>,
        fleet: &crate::fleet::Fleet,
        tracking: Arc<Tracking>,
    ) -> Arc<Self> {
        let (outgoing, unsent) = mpsc::channel(OUTGOING_CAPACITY);
        let cluster = Arc::new(Self {
            feed,
            redis,
            config,
            grid: fleet.index().clone(),
            orders: orders.clone(),
            matchmaker: matchmaker.clone(),
            tracking,
            outgoing,
            unsent: Mutex::new(Some(unsent)),
            offer_listeners: RwLock::default(),
            move_listeners: RwLock::default(),
        });
        orders.subscribe(cluster.clone());
        matchmaker.subscribe(cluster.clone());
        fleet.subscribe(cluster.clone());
        tracing::info!(node = cluster.node(), "joined the cluster feed");
        cluster
    }

    pub fn node(&self) -> &str {
        self.feed.node()
    }

    /// Adds a listener for offers made and withdrawn on other nodes.
    pub fn subscribe_offers(&self, listener: Arc<dyn OfferListener>) {
        self.offer_listeners.write().push(listener);
    }

    /// Adds a listener for the moves of pilots on trips connected to other nodes.
    pub fn subscribe_moves(&self, listener: Arc<dyn PositionListener>) {
        self.move_listeners.write().push(listener);
    }

    /// Writes this node's news and reads the other nodes' until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tokio::join!(self.write_news(&stop), self.read(Stream::Pilots, &stop), self.read(Stream::News, &stop));
    }

    fn linger(&self) -> Duration {
        Duration::from_millis(self.config.linger_ms)
    }

    fn tell(&self, news: News) {
        if self.outgoing.try_send(news).is_err() {
            metrics::counter!("cluster_dropped_total").increment(1);
        }
    }

    /// Writes the news in batches, on a connection of its own: behind the mirror's large
    /// pipelines on the shared one, it would wait for each of them.
    async fn write_news(&self, stop: &CancellationToken) {
        let Some(mut unsent) = self.unsent.lock().take() else { return };
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let mut connection = None;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                count = unsent.recv_many(&mut batch, WRITE_BATCH) => {
                    if count == 0 {
                        return;
                    }
                    // What comes in the next moment goes in the same round trip: a write per
                    // move would cost every node a wake-up per move.
                    tokio::time::sleep(self.linger()).await;
                    while batch.len() < WRITE_BATCH && let Ok(news) = unsent.try_recv() {
                        batch.push(news);
                    }
                    if let Err(err) = self.write_batch(&mut connection, &batch).await {
                        // Dropped: see the module docs for what that costs and how it heals.
                        tracing::debug!(error = format!("{err:#}"), dropped = batch.len(), "cluster news not written");
                        metrics::counter!("cluster_dropped_total").increment(batch.len() as u64);
                        connection = None;
                    }
                    batch.clear();
                }
            }
        }
    }

    async fn write_batch(
        &self,
        connection: &mut Option<redis::aio::MultiplexedConnection>,
        batch: &[News],
    ) -> anyhow::Result<()> {
        // While the health check counts Redis down, fail at once rather than wait on it.
        anyhow::ensure!(self.redis.is_up(), "redis is down");
        let connection = match connection {
            Some(connection) => connection,
            None => connection.insert(self.redis.dedicated(Duration::ZERO).await?),
        };
        let mut pipeline = redis::pipe();
        for news in batch {
            self.feed.add(&mut pipeline, &self.feed.news_key, news);
        }
        pipeline.query_async::<()>(connection).await?;
        metrics::counter!("cluster_news_written_total").increment(batch.len() as u64);
        Ok(())
    }

    /// Reads `stream` from where it stopped, on a connection of its own (a blocking read
    /// would hold up the shared one), reconnecting after a failure. Each stream has its
    /// reader, so that a large mirror write never holds up the news behind it.
    async fn read(&self, stream: Stream, stop: &CancellationToken) {
        // Unset until the first connection pins it to the stream's end: what came before is
        // in the mirror, which this node read at start.
        let mut cursor = None;
        loop {
            let failed = tokio::select! {
                _ = stop.cancelled() => return,
                read = self.read_until_failure(stream, &mut cursor) => read,
            };
            if let Err(err) = failed {
                tracing::warn!(error = format!("{err:#}"), "cluster feed read failed; reconnecting");
                metrics::counter!("cluster_read_failures_total").increment(1);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(READ_RETRY) => {}
            }
        }
    }

    async fn read_until_failure(&self, stream: Stream, cursor: &mut Option<String>) -> anyhow::Result<()> {
        let key = match stream {
            Stream::Pilots => &self.feed.pilots_key,
            Stream::News => &self.feed.news_key,
        };
        let mut connection = self.redis.dedicated(Duration::from_millis(self.config.read_block_ms)).await?;
        let cursor = match cursor {
            Some(cursor) => cursor,
            None => {
                // The id of the stream's latest entry ("0-0" before the first).
                let last: Vec<StreamEntry> = redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut connection)
                    .await?;
                cursor.insert(last.into_iter().next().map_or_else(|| "0-0".into(), |entry| entry.0))
            }
        };
        let mut trimmed = tokio::time::Instant::now();
        loop {
            let read = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(self.config.read_count)
                .arg("BLOCK")
                .arg(self.config.read_block_ms)
                .arg("STREAMS")
                .arg(key)
                .arg(&*cursor)
                .clone();
            let streams: Option<Vec<StreamReply>> = read.query_async(&mut connection).await?;
            for (_, entries) in streams.unwrap_or_default() {
                for (id, fields) in entries {
                    self.apply_entry(stream, &fields);
                    *cursor = id;
                }
            }
            if trimmed.elapsed() >= TRIM_EVERY {
                trimmed = tokio::time::Instant::now();
                self.trim(key, cursor).await;
            }
        }
    }

    /// Drops what is older than `retention_secs` before the newest entry read.
    async fn trim(&self, key: &str, cursor: &str) {
        let retention_ms = self.config.retention_secs.saturating_mul(1000);
        let Some(ms) = cursor.split('-').next().and_then(|ms| ms.parse::<u64>().ok()) else { return };
        if ms <= retention_ms {
            return;
        }
        let trim = redis::cmd("XTRIM").arg(key).arg("MINID").arg("~").arg(ms - retention_ms).clone();
        if let Err(err) = self.redis.query::<()>(&trim).await {
            tracing::debug!(error = format!("{err:#}"), "cluster feed trim failed; next time");
        }
    }

    fn apply_entry(&self, stream: Stream, fields: &HashMap<String, Vec<u8>>) {
        let node = fields.get("node").map(Vec::as_slice);
        if node == Some(self.node().as_bytes()) {
            return;
        }
        let Some(data) = fields.get("data") else { return };
        let applied = match stream {
            Stream::Pilots => serde_json::from_slice(data).map(|entry| self.apply_pilots(entry)).map(|()| "pilots"),
            Stream::News => serde_json::from_slice(data).map(|news| self.apply_news(news)),
        };
        match applied {
            Ok(kind) => metrics::counter!("cluster_applied_total", "kind" => kind).increment(1),
            Err(err) => {
                tracing::warn!(error = %err, "cluster feed: an entry does not parse; skipped");
                metrics::counter!("cluster_unreadable_total").increment(1);
            }
        }
    }

    fn apply_pilots(&self, entry: PilotsEntry) {
        for pilot in &entry.upserts {
            self.grid.apply_remote(pilot);
        }
        for id in entry.forgotten {
            self.grid.forget_remote(id);
        }
    }

    fn apply_news(&self, news: News) -> &'static str {
        let kind = news.kind();
        match news {
            News::Committed { order, events } => self.orders.committed_elsewhere(&order, &events, &self.tracking),
            News::Offered { offer, payload } => {
                for listener in self.offer_listeners.read().iter() {
                    listener.offered(&offer, &payload);
                }
            }
            News::Withdrawn { offer, reason } => {
                let reason = withdrawal_reason(&reason);
                for listener in self.offer_listeners.read().iter() {
                    listener.withdrawn(&offer, reason);
                }
            }
            News::Rejected { offer } => self.matchmaker.rejected_elsewhere(offer),
            News::Moved { pilot } => {
                self.grid.apply_remote(&pilot);
                for listener in self.move_listeners.read().iter() {
                    listener.pilot_moved(&pilot);
                }
            }
        }
        kind
    }
}

/// The two streams.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Pilots,
    News,
}

/// One stream of an `XREAD` answer: its key, and its entries' ids and fields.
type StreamReply = (String, Vec<StreamEntry>);
/// A stream entry: its id and fields.
type StreamEntry = (String, HashMap<String, Vec<u8>>);

/// The reason an offer was withdrawn, as the listeners take it.
fn withdrawal_reason(reason: &str) -> &'static str {
    ["expired", "cancelled", "taken", "assigned_elsewhere"]
        .into_iter()
        .find(|known| *known == reason)
        .unwrap_or("withdrawn")
}

impl OrderListener for Cluster {
    fn committed(&self, order: &Order, events: &[OrderEvent]) {
        self.tell(News::Committed { order: Box::new(order.clone()), events: events.to_vec() });
    }

    /// Another node's change: that node told it.
    fn committed_elsewhere(&self, _order: &Order, _events: &[OrderEvent]) {}
}

impl OfferListener for Cluster {
    fn offered(&self, offer: &Offer, payload: &Value) {
        self.tell(News::Offered { offer: offer.clone(), payload: payload.clone() });
    }

    fn withdrawn(&self, offer: &Offer, reason: &'static str) {
        self.tell(News::Withdrawn { offer: offer.clone(), reason: reason.to_owned() });
    }

    fn rejected(&self, offer: &Offer) {
        self.tell(News::Rejected { offer: offer.clone() });
    }
}

impl PositionListener for Cluster {
    /// Only the moves someone watches: a pilot on a trip. The others reach the other nodes
    /// with the mirror's next write.
    fn pilot_moved(&self, pilot: &PilotSnapshot) {
        if self.tracking.trip_of(pilot.id).is_some() {
            self.tell(News::Moved { pilot: pilot.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawal_reasons_keep_their_names() {
        for reason in ["expired", "cancelled", "taken", "assigned_elsewhere"] {
            assert_eq!(withdrawal_reason(reason), reason);
        }
        assert_eq!(withdrawal_reason("something new"), "withdrawn");
    }
}
