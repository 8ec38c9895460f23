//! The Redis mirror of the pilot grid against real Redis: the documented layout, catching up
//! after Redis is killed and restarted empty, and warm start of a restarted node.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::redis_server::OwnRedis;
use common::{Database, Options, RedisOption, Session, TestApp, eventually};
use redis::AsyncCommands as _;
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(10);

fn fast_mirror(options: Options) -> Options {
    options.set("redis.positions.flush_interval_ms", 50).set("redis.health_interval_ms", 50)
}

/// Reports one point taken `ago_secs` seconds ago.
async fn pilot_reports(app: &TestApp, pilot: &Session, lat: f64, lng: f64, ago_secs: i64) {
    let ts = app.clock.now().timestamp_millis() - ago_secs * 1000;
    let body = json!({ "points": [{ "lat": lat, "lng": lng, "ts": ts, "accuracy": 5 }] });
    let reply = app.post("/api/v1/pilot/location", body, Some(&pilot.access)).await;
    assert_eq!(reply.data()["accepted"], 1, "{:?}", reply.body);
}

async fn set_status(app: &TestApp, pilot: &Session, status: &str) {
    let reply = app.post("/api/v1/pilot/status", json!({ "status": status }), Some(&pilot.access)).await;
    assert_eq!(reply.data()["pilot"]["status"], status);
}

async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn pilot_hash(url: &str, prefix: &str, pilot: &Session) -> HashMap<String, String> {
    connection(url).await.hgetall(format!("{prefix}pilot:{}", pilot.user_id)).await.unwrap_or_default()
}

#[tokio::test]
async fn positions_are_mirrored_in_the_documented_layout() {
    let app = TestApp::spawn_with(fast_mirror(Options::default().with_redis())).await;
    let prefix = app.state.redis.as_ref().unwrap().key("");
    let url = common::redis_url();
    let pilot = app.register("pilot").await;
    pilot_reports(&app, &pilot, 12.9716, 77.5946, 0).await;
    set_status(&app, &pilot, "available").await;

    eventually(WITHIN, "the pilot's hash", || async {
        pilot_hash(&url, &prefix, &pilot).await.get("status").map(String::as_str) == Some("available")
    })
    .await;
    let hash = pilot_hash(&url, &prefix, &pilot).await;
    assert_eq!(
        (hash["lat"].as_str(), hash["lng"].as_str(), hash["vehicle_type"].as_str()),
        ("12.9716", "77.5946", "bike")
    );
    let mut redis = connection(&url).await;
    let ttl: i64 = redis.pttl(format!("{prefix}pilot:{}", pilot.user_id)).await.unwrap();
    assert!(ttl > 3_500_000, "expires forget_after after its last write: {ttl}");
    let nearby: Vec<String> = redis::cmd("GEOSEARCH")
        .arg(format!("{prefix}pilots:geo:bike"))
        .arg("FROMLONLAT")
        .arg(77.5946)
        .arg(12.9716)
        .arg("BYRADIUS")
        .arg(100)
        .arg("m")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(nearby, vec![pilot.user_id.clone()]);
    let seen: Option<f64> = redis.zscore(format!("{prefix}pilots:seen"), &pilot.user_id).await.unwrap();
    assert!(seen.is_some());

    set_status(&app, &pilot, "offline").await;
    eventually(WITHIN, "offline pilots leave the geo set", || async {
        let mut redis = connection(&url).await;
        let score: Option<f64> = redis.zscore(format!("{prefix}pilots:geo:bike"), &pilot.user_id).await.unwrap();
        score.is_none()
    })
    .await;
    assert_eq!(pilot_hash(&url, &prefix, &pilot).await["status"], "offline");
}

#[tokio::test]
async fn the_mirror_catches_up_after_redis_restarts_empty() {
    let port = common::closed_port().await.port();
    let mut own = OwnRedis::start(port).await;
    let prefix = common::fresh_redis_prefix();
    let redis = RedisOption { url: own.url(), prefix: prefix.clone() };
    let app = TestApp::spawn_with(fast_mirror(Options { redis: Some(redis), ..Options::default() })).await;
    let moving = app.register("pilot").await;
    let parked = app.register("pilot").await;
    pilot_reports(&app, &moving, 12.9716, 77.5946, 60).await;
    pilot_reports(&app, &parked, 12.9800, 77.6000, 0).await;
    eventually(WITHIN, "both mirrored", || async {
        !pilot_hash(&own.url(), &prefix, &moving).await.is_empty()
            && !pilot_hash(&own.url(), &prefix, &parked).await.is_empty()
    })
    .await;

    own.kill();
    pilot_reports(&app, &moving, 12.9730, 77.5946, 0).await;
    let handle = app.state.redis.clone().unwrap();
    eventually(WITHIN, "redis seen down", || async { !handle.is_up() }).await;
    assert_eq!(app.state.grid.pending_mirror().0, 1, "the move waits for redis, once");
    assert_eq!(
        app.state.grid.get(moving.user_id.parse().unwrap()).unwrap().position.lat(),
        12.9730,
        "the index keeps serving"
    );

    let own = OwnRedis::start(port).await;
    eventually(WITHIN, "state converges after the restart", || async {
        pilot_hash(&own.url(), &prefix, &moving).await.get("lat").map(String::as_str) == Some("12.973")
            && !pilot_hash(&own.url(), &prefix, &parked).await.is_empty()
    })
    .await;
    assert_eq!(app.state.grid.pending_mirror(), (0, None));
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("grid_mirror_lag_seconds"), "{metrics}");
}

/// Stops `first` and starts a node on its database and its Redis keys.
async fn restart(mut first: TestApp, prefix: String) -> TestApp {
    first.begin_shutdown().await.unwrap().unwrap();
    let options = Options {
        database: Database::Postgres(first.database_url.clone().unwrap()),
        redis: Some(RedisOption { url: common::redis_url(), prefix }),
        ..Options::default()
    };
    TestApp::spawn_with(options).await
}

#[tokio::test]
async fn a_restarted_node_warm_starts_from_redis() {
    let first = TestApp::spawn_with(fast_mirror(Options::default().with_redis())).await;
    let prefix = first.state.redis.as_ref().unwrap().key("");
    let pilot = first.register("pilot").await;
    pilot_reports(&first, &pilot, 12.9716, 77.5946, 0).await;
    set_status(&first, &pilot, "available").await;
    let url = common::redis_url();
    eventually(WITHIN, "mirrored", || async {
        pilot_hash(&url, &prefix, &pilot).await.get("status").map(String::as_str) == Some("available")
    })
    .await;
    let second = restart(first, prefix).await;
    let restored = second.state.grid.get(pilot.user_id.parse().unwrap()).expect("known before it reports again");
    assert_eq!((restored.position.lat(), restored.position.lng()), (12.9716, 77.5946));
    assert_eq!(restored.status, dispatchd::domain::PilotStatus::Available);
    assert!(restored.stale, "its socket died with the old server: not offered work until it is back");
    // It reports again: available at once, where it was.
    pilot_reports(&second, &pilot, 12.9716, 77.5946, 0).await;
    let dispatcher = second.staff(dispatchd::domain::Role::Dispatcher).await;
    let nearest = second.get("/api/v1/dispatch/pilots/nearest?lat=12.9716&lng=77.5946", Some(&dispatcher.access)).await;
    assert_eq!(nearest.data()["items"][0]["pilot"]["id"], pilot.user_id.as_str());
}

#[tokio::test]
async fn a_pilot_the_mirror_remembers_busy_with_no_order_takes_work_after_a_restart() {
    use dispatchd::domain::PilotStatus;
    let first = TestApp::spawn_with(fast_mirror(Options::default().with_redis())).await;
    let prefix = first.state.redis.as_ref().unwrap().key("");
    let (carrying, idle) = (first.register("pilot").await, first.register("pilot").await);
    for pilot in [&carrying, &idle] {
        pilot_reports(&first, pilot, 12.9716, 77.5946, 0).await;
        set_status(&first, pilot, "available").await;
    }
    // One carries an order; the other is busy in the index only, as when a node stops
    // between a trip's end (committed) and the index's update.
    let customer = first.register("customer").await;
    let order = common::field::create_order(&first, &customer).await;
    let dispatcher = first.staff(dispatchd::domain::Role::Dispatcher).await;
    assert_eq!(common::field::assign(&first, &dispatcher, &order, &carrying).await.status, reqwest::StatusCode::OK);
    let idle_id = idle.user_id.parse().unwrap();
    first.state.grid.set_status(idle_id, PilotStatus::Busy, first.clock.now().timestamp_millis()).unwrap();
    let url = common::redis_url();
    eventually(WITHIN, "both mirrored busy", || async {
        let busy = |hash: HashMap<String, String>| hash.get("status").map(String::as_str) == Some("busy");
        busy(pilot_hash(&url, &prefix, &carrying).await) && busy(pilot_hash(&url, &prefix, &idle).await)
    })
    .await;
    let second = restart(first, prefix).await;
    let status = |id| second.state.grid.get(id).map(|pilot| pilot.status);
    eventually(WITHIN, "the idle pilot available", || async { status(idle_id) == Some(PilotStatus::Available) }).await;
    assert_eq!(status(carrying.user_id.parse().unwrap()), Some(PilotStatus::Busy), "its order holds it");
}

#[tokio::test]
async fn pilots_no_node_remembers_are_pruned_from_the_shared_sets() {
    let app = TestApp::spawn_with(fast_mirror(Options::default().with_redis())).await;
    let handle = app.state.redis.clone().unwrap();
    let prefix = handle.key("");
    let live = app.register("pilot").await;
    pilot_reports(&app, &live, 12.9716, 77.5946, 0).await;
    set_status(&app, &live, "available").await;
    let url = common::redis_url();
    // In the shared set (the hash alone is written before the pilot goes on duty).
    let geo = format!("{prefix}pilots:geo:bike");
    eventually(WITHIN, "mirrored", || async {
        let members: Vec<String> = connection(&url).await.zrange(&geo, 0, -1).await.unwrap_or_default();
        members.contains(&live.user_id)
    })
    .await;

    // What a node that died leaves behind: a pilot in the geo set and `pilots:seen`, last
    // seen long ago, whose hash has expired.
    let mut redis = connection(&url).await;
    let long_ago = app.clock.now().timestamp_millis() - 10 * 3600 * 1000;
    let _: () = redis::cmd("GEOADD")
        .arg(format!("{prefix}pilots:geo:bike"))
        .arg(77.59)
        .arg(12.97)
        .arg("ghost")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis.zadd(format!("{prefix}pilots:seen"), "ghost", long_ago).await.unwrap();

    let config = app.state.config.redis.positions.clone();
    let mirror = dispatchd::store::positions::PositionMirror::new(
        app.state.grid.clone(),
        handle,
        app.clock.clone(),
        config,
        &app.state.config.grid,
        None,
    );
    assert_eq!(mirror.prune_forgotten().await.unwrap(), 1);
    let members: Vec<String> = redis.zrange(format!("{prefix}pilots:geo:bike"), 0, -1).await.unwrap();
    assert_eq!(members, vec![live.user_id.clone()], "the ghost is gone, the live pilot stays");
    let seen: Vec<String> = redis.zrange(format!("{prefix}pilots:seen"), 0, -1).await.unwrap();
    assert_eq!(seen, vec![live.user_id.clone()]);
}
