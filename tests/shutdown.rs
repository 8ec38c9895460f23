//! Graceful shutdown: once signalled, the server stops accepting, lets in-flight requests
//! finish, and returns; a request that will not finish is dropped after the grace period.

mod common;

use std::time::{Duration, Instant};

use common::{Options, PASSWORD, TestApp, eventually, unique_phone};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Opens a connection and starts a register request: the head, with `Expect: 100-continue`,
/// and nothing of the body. Returns once the server answered `100 Continue`, which it does
/// when the handler starts reading the body: from then on the request is in flight.
async fn request_in_flight(app: &TestApp) -> (TcpStream, Vec<u8>) {
    let body = json!({ "name": "Late", "phone": unique_phone(), "password": PASSWORD, "role": "customer" }).to_string();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/auth/register HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        app.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    (stream, body.into_bytes())
}

async fn refuses_new_connections(app: &TestApp) -> bool {
    TcpStream::connect(app.addr).await.is_err()
}

#[tokio::test]
async fn in_flight_requests_finish_after_the_signal() {
    let mut app = TestApp::spawn().await;
    let (mut stream, body) = request_in_flight(&app).await;

    let stopped = app.begin_shutdown();
    eventually(Duration::from_secs(5), "listener closed", || refuses_new_connections(&app)).await;
    assert!(!stopped.is_finished(), "the server waits for the open request");

    stream.write_all(&body).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(response.contains("\"access_token\""));

    let result = tokio::time::timeout(Duration::from_secs(5), stopped).await.expect("stops once drained");
    result.unwrap().expect("a clean stop");
}

#[tokio::test]
async fn a_stuck_request_is_dropped_after_the_grace_period() {
    let mut app = TestApp::spawn_with(Options::default().set("server.shutdown_timeout_secs", 1)).await;
    let (_stream, _never_sent) = request_in_flight(&app).await;
    let started = Instant::now();
    let stopped = app.begin_shutdown();
    let result = tokio::time::timeout(Duration::from_secs(10), stopped).await.expect("stops after the grace period");
    result.unwrap().expect("still a clean stop");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "waited the grace period, took {took:?}");
}

#[tokio::test]
async fn an_idle_server_stops_at_once() {
    let mut app = TestApp::spawn().await;
    app.register("customer").await; // leaves an idle keep-alive connection in the client pool
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), app.begin_shutdown()).await.expect("stops");
    result.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "idle connections do not hold shutdown");
}
