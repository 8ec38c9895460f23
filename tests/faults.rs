//! Fault drills against real processes: what an operator does to a running cluster (kill -9,
//! SIGTERM under load, Redis stopped, a log pipe that breaks) must never strand pilots or
//! stop the serving. Each drill starts its own nodes (the `dispatchd` binary), and where it
//! stops Redis, a redis-server of its own; timers are shortened by configuration.

mod common;

use std::time::Duration;

use common::node::{Logs, Node};

/// A node's environment on a SQLite file of its own, no Redis.
fn alone_in(dir: &tempfile::TempDir) -> Vec<(&'static str, String)> {
    vec![
        ("DISPATCHD__SERVER__ADDR", "127.0.0.1:0".to_owned()),
        ("DISPATCHD__DATABASE__SQLITE_PATH", dir.path().join("dispatchd.db").display().to_string()),
    ]
}

/// `dispatchd 2>&1 | tee log`, and tee dies: logging must fail quietly, serving and
/// shutting down go on.
#[tokio::test]
async fn a_broken_log_pipe_neither_stops_serving_nor_shutting_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&alone_in(&dir), Logs::BrokenPipe).await;
    // Every request logs a line; each one now fails to write.
    for _ in 0..20 {
        let (status, _) = node.get("/healthz", None).await;
        assert_eq!(status, reqwest::StatusCode::OK);
    }
    let customer = node.register("customer").await;
    let (status, me) = node.get("/api/v1/me", Some(&customer.access)).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{me}");
    let exit = node.terminate(Duration::from_secs(15)).await;
    assert!(exit.success(), "SIGTERM still stops it, cleanly: {exit:?}");
}
