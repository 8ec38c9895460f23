//! Clients that stop reading, over long-polling (where a client that does not poll leaves
//! everything in its socket's buffer): a flood that never reads its acks is still cut off, a
//! slow customer's positions never crowd out its order events, and a connection that goes
//! while it is being admitted leaves nothing counted behind.

mod common;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use common::field::{assign, connect, create_order, fix, north, pilot_on_duty};
use common::{Options, PICKUP, Session, TestApp};
use dispatchd::domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(3);
const SEPARATOR: char = '\u{1e}';

/// An engine.io session over long-polling, driven by hand. A GET is only sent when
/// something is waiting for it: an unanswered GET left behind would lose what comes next.
struct Polling<'a> {
    app: &'a TestApp,
    url: String,
}

impl<'a> Polling<'a> {
    async fn open(app: &'a TestApp) -> Self {
        let body = app.client.get(app.url("/socket.io/?EIO=4&transport=polling")).send().await.unwrap().text().await;
        let open: Value = serde_json::from_str(body.unwrap().strip_prefix('0').expect("an open packet")).unwrap();
        let url = app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={}", open["sid"].as_str().unwrap()));
        Self { app, url }
    }

    async fn post(&self, packets: &[String]) {
        let body = packets.join(&SEPARATOR.to_string());
        let reply = self.app.client.post(&self.url).body(body).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
    }

    /// What is waiting (pings answered); `None` when the session is gone.
    async fn get(&self) -> Option<Vec<String>> {
        let reply = self.app.client.get(&self.url).timeout(SOON).send().await.unwrap();
        if reply.status() != StatusCode::OK {
            return None;
        }
        let packets: Vec<String> = reply.text().await.unwrap().split(SEPARATOR).map(str::to_owned).collect();
        if packets.iter().any(|packet| packet == "2") {
            self.post(&["3".to_owned()]).await;
        }
        Some(packets.into_iter().filter(|packet| packet != "2").collect())
    }

    /// Polls until a packet starting with `prefix` has come; everything that came.
    async fn until(&self, prefix: &str) -> Vec<String> {
        let mut seen = Vec::new();
        while !seen.iter().any(|packet: &String| packet.starts_with(prefix)) {
            seen.extend(self.get().await.expect("the session is open"));
        }
        seen
    }

    /// Connects to `namespace` as `who`.
    async fn connect(&self, namespace: &str, who: &Session) {
        self.post(&[format!("40{namespace},{}", json!({ "token": who.access }))]).await;
        self.until(&format!("40{namespace},")).await;
    }
}

/// The value of one series in `/metrics` (0 when absent).
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|line| line.split_once(' ').is_some_and(|(name, _)| name == series));
    line.and_then(|line| line.rsplit_once(' ')?.1.parse().ok()).unwrap_or(0.0)
}

/// The metrics recorder is the process's, shared by every test here: each runs alone, its
/// runtime (and whatever its sockets left counted) gone before the next starts, and reads
/// only its own changes, from [`Changes`].
fn alone(test: impl Future<Output = ()>) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(test);
}

/// Series of `/metrics` as they changed since [`Changes::since_now`].
struct Changes<'a> {
    app: &'a TestApp,
    before: Vec<(&'static str, f64)>,
}

impl<'a> Changes<'a> {
    async fn since_now(app: &'a TestApp, series: &[&'static str]) -> Self {
        let mut before = Vec::new();
        for &name in series {
            before.push((name, metric(app, name).await));
        }
        Self { app, before }
    }

    async fn of(&self, series: &str) -> f64 {
        let (_, before) = self.before.iter().find(|(name, _)| *name == series).expect("a series read at the start");
        metric(self.app, series).await - before
    }
}

const PILOTS_CONNECTED: &str = r#"socket_connected{namespace="/pilot"}"#;
const PILOTS_ADMITTED: &str = r#"socket_connects_total{namespace="/pilot",outcome="accepted"}"#;
const SLOW_DISCONNECTS: &str = r#"socket_disconnects_total{namespace="/pilot",reason="SLOW_CLIENT"}"#;
const LOCATIONS: &str = r#"socket_events_in_total{namespace="/pilot",event="location"}"#;
const CUSTOMERS_CONNECTED: &str = r#"socket_connected{namespace="/customer"}"#;
const POSITIONS_DROPPED: &str = r#"socket_dropped_total{namespace="/customer",event="pilot:location"}"#;

#[test]
fn a_flood_that_never_reads_its_acks_is_held_back_then_cut_off() {
    alone(async {
        let app = TestApp::spawn_with(
            Options::default().set("realtime.max_buffer_size", 4).set("realtime.stall_timeout_ms", 300),
        )
        .await;
        let pilot = app.register("pilot").await;
        let changes = Changes::since_now(&app, &[PILOTS_CONNECTED, SLOW_DISCONNECTS, LOCATIONS]).await;
        let polling = Polling::open(&app).await;
        polling.connect("/pilot", &pilot).await;
        assert_eq!(changes.of(PILOTS_CONNECTED).await, 1.0);

        // Eight reports in one go, and no poll for their acks: the server reads three, as
        // many as its buffer keeps places for answers, and waits for the client to read
        // them; the client never does, so the session ends after the stall timeout.
        let report = json!(["location", { "points": [fix(&app, PICKUP, 0)] }]);
        let flood: Vec<String> = (1..=8).map(|n| format!("42/pilot,{n}{report}")).collect();
        polling.post(&flood).await;
        common::eventually(SOON, "the flood cut off", || async { changes.of(PILOTS_CONNECTED).await == 0.0 }).await;
        assert_eq!(changes.of(SLOW_DISCONNECTS).await, 1.0);
        assert_eq!(changes.of(LOCATIONS).await, 3.0, "what was not read was not done");
        // Its whole connection went: the app reconnects, as after a network drop.
        let rest = polling.get().await;
        assert!(rest.is_none_or(|packets| packets.iter().any(|packet| packet == "1")), "the session is over");
    });
}

#[test]
fn a_slow_customer_gets_every_order_event_and_the_latest_position() {
    alone(async {
        let app = TestApp::spawn_with(Options::default().set("realtime.max_buffer_size", 2)).await;
        let dispatcher = app.staff(Role::Dispatcher).await;
        let customer = app.register("customer").await;
        let order = create_order(&app, &customer).await;
        let (pilot, mut pilot_socket) = pilot_on_duty(&app, north(PICKUP, 1.0)).await;
        let changes = Changes::since_now(&app, &[CUSTOMERS_CONNECTED, POSITIONS_DROPPED]).await;
        let watcher = Polling::open(&app).await;
        watcher.connect("/customer", &customer).await;
        watcher.post(&[format!("42/customer,1{}", json!(["order:watch", { "order_id": order }]))]).await;
        watcher.until("43/customer,1").await;

        // The customer stops polling (a phone in a tunnel) while its pilot drives to the pickup,
        // reporting five times, and arrives. Its buffer holds two packets.
        assert_eq!(assign(&app, &dispatcher, &order, &pilot).await.status, StatusCode::OK);
        for (n, km) in [0.8, 0.6, 0.4, 0.2, 0.05].into_iter().enumerate() {
            let at_secs = 60 * (n as i64 + 1);
            let ack = pilot_socket.call("location", json!({ "points": [fix(&app, north(PICKUP, km), at_secs)] })).await;
            assert_eq!(ack["data"]["accepted"], 1, "{ack}");
        }
        let arrived = pilot_socket.call("order:arrived", json!({ "order_id": order })).await;
        assert_eq!(arrived["ok"], true, "{arrived}");

        // Back: both order events, then only the newest position; four were superseded.
        let packets = watcher.until(r#"42/customer,["pilot:location""#).await;
        let events: Vec<(String, Value)> = packets
            .iter()
            .filter_map(|packet| serde_json::from_str::<Value>(packet.strip_prefix("42/customer,")?).ok())
            .map(|event| (event[0].as_str().unwrap().to_owned(), event[1].clone()))
            .collect();
        let kinds: Vec<String> = events.iter().map(|(name, data)| format!("{name} {}", data["type"])).collect();
        assert_eq!(
            kinds,
            [r#"order:event "assigned""#, r#"order:event "arrived""#, "pilot:location null"],
            "{packets:?}"
        );
        assert_eq!(events[2].1["lat"].as_f64(), Some(north(PICKUP, 0.05).0));
        assert_eq!(changes.of(POSITIONS_DROPPED).await, 4.0);
        assert_eq!(changes.of(CUSTOMERS_CONNECTED).await, 1.0, "still connected");
    });
}

#[test]
fn a_connection_gone_while_it_is_admitted_leaves_no_socket_counted() {
    alone(async {
        let app = TestApp::spawn().await;
        let changes = Changes::since_now(&app, &[PILOTS_CONNECTED, PILOTS_ADMITTED]).await;
        let (pilot, socket) = pilot_on_duty(&app, PICKUP).await;
        let id = pilot.user_id.parse().unwrap();

        // CONNECT and close in one request: the connection is gone before it is admitted.
        let polling = Polling::open(&app).await;
        polling.post(&[format!("40/pilot,{}", json!({ "token": pilot.access })), "1".to_owned()]).await;
        common::eventually(SOON, "admitted", || async { changes.of(PILOTS_ADMITTED).await == 2.0 }).await;
        common::eventually(SOON, "its disconnect handled", || async { changes.of(PILOTS_CONNECTED).await == 1.0 })
            .await;

        // So when its one real socket closes, the pilot is unreachable at once.
        drop(socket);
        common::eventually(SOON, "the pilot unreachable", || async { app.state.grid.get(id).unwrap().stale }).await;
        let mut back = connect(&app, "/pilot", &pilot).await;
        assert_eq!(back.call("location", json!({ "points": [fix(&app, PICKUP, 30)] })).await["ok"], true);
    });
}

/// Lifts the `location` budget, so that bursts reach the handler.
fn unlimited() -> Options {
    Options::default()
        .set("realtime.budgets.location.per_sec", 1_000_000)
        .set("realtime.budgets.location.burst", 1_000_000)
}

/// The ack ids among `packets` (`43/pilot,<id>[…]`).
fn ack_ids(packets: &[String]) -> impl Iterator<Item = u64> + '_ {
    packets.iter().filter_map(|packet| {
        let rest = packet.strip_prefix("43/pilot,")?;
        rest[..rest.find('[')?].parse().ok()
    })
}

/// A socket.io client sends its whole offline buffer in one long-polling POST: every event
/// is answered, however many there are, while the client polls for the answers.
#[test]
fn every_ack_of_a_long_polling_burst_arrives() {
    alone(async {
        let app = TestApp::spawn_with(unlimited()).await;
        let pilot = app.register("pilot").await;
        let polling = Polling::open(&app).await;
        polling.connect("/pilot", &pilot).await;
        let report = json!(["location", { "points": [] }]);
        let events: Vec<String> = (1..=200).map(|n| format!("42/pilot,{n}{report}")).collect();
        let mut acked = std::collections::HashSet::new();
        let poll = async {
            while acked.len() < 200 {
                let packets = polling.get().await.expect("the session stays open");
                acked.extend(ack_ids(&packets));
            }
        };
        tokio::join!(polling.post(&events), poll);
        assert_eq!(acked, (1..=200).collect(), "one ack for each event");
    });
}

/// The same over WebSocket, 10,000 events sent without waiting for any answer.
#[test]
fn every_ack_of_a_websocket_burst_arrives() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    alone(async {
        let app = TestApp::spawn_with(unlimited()).await;
        let pilot = app.register("pilot").await;
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        stream.next().await.unwrap().unwrap(); // the open packet
        sink.send(Message::text(format!("40/pilot,{}", json!({ "token": pilot.access })))).await.unwrap();
        let connected = stream.next().await.unwrap().unwrap();
        assert!(connected.to_text().unwrap().starts_with("40/pilot,"), "{connected:?}");

        const BURST: u64 = 10_000;
        let report = json!(["location", { "points": [] }]);
        let send = async move {
            for n in 1..=BURST {
                sink.feed(Message::text(format!("42/pilot,{n}{report}"))).await.unwrap();
            }
            sink.flush().await.unwrap();
            sink
        };
        let read = async {
            let mut acked = std::collections::HashSet::new();
            while acked.len() < BURST as usize {
                let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
                let Ok(Some(Ok(Message::Text(text)))) = next else { panic!("{} acks, then {next:?}", acked.len()) };
                acked.extend(ack_ids(&[text.to_string()]));
            }
            acked
        };
        let (_sink, acked) = tokio::join!(send, read);
        assert_eq!(acked, (1..=BURST).collect(), "one ack for each event");
    });
}
