//! Connections are bounded: a request whose headers never finish and a keep-alive connection
//! left idle are closed, one address holds a bounded number of connections, and an EIO3
//! connection that never joins a namespace with its token is closed.

mod common;

use std::time::{Duration, Instant};

use common::{Options, TestApp};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (within `within`); what it sent.
async fn until_closed(tcp: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&got).into_owned())
}

fn with_short_header_timeout() -> Options {
    Options::default().set("server.header_read_timeout_secs", 1)
}

#[tokio::test]
async fn requests_whose_headers_never_finish_are_closed() {
    let app = TestApp::spawn_with(with_short_header_timeout()).await;
    let started = Instant::now();
    let mut half_open = Vec::new();
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: dispatchd\r\nX-Slow: ").await.unwrap();
        half_open.push(tcp);
    }
    for tcp in &mut half_open {
        until_closed(tcp, Duration::from_secs(5)).await.expect("closed by the server");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The server is fine.
    assert_eq!(app.get("/healthz", None).await.status, reqwest::StatusCode::OK);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let app = TestApp::spawn_with(with_short_header_timeout()).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: dispatchd\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "answered first");
    // Then nothing: the server closes the idle connection.
    until_closed(&mut tcp, Duration::from_secs(5)).await.expect("the idle connection is closed");
}

#[tokio::test]
async fn one_address_holds_a_bounded_number_of_connections() {
    let app = TestApp::spawn_with(Options::default().set("server.max_connections_per_ip", 3)).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: dispatchd\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        open.push(tcp);
    }
    let mut fourth = TcpStream::connect(app.addr).await.unwrap();
    let refused = until_closed(&mut fourth, Duration::from_secs(3)).await.expect("refused and closed");
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    let body: Value = serde_json::from_str(refused.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "TOO_MANY_CONNECTIONS", "{body}");

    // One closes: room for another.
    drop(open.pop());
    common::eventually(Duration::from_secs(3), "a connection is admitted again", || async {
        let Ok(mut tcp) = TcpStream::connect(app.addr).await else { return false };
        let _ = tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: dispatchd\r\nConnection: close\r\n\r\n").await;
        until_closed(&mut tcp, Duration::from_secs(2)).await.is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
    })
    .await;
}

#[tokio::test]
async fn an_eio3_connection_that_joins_no_namespace_is_closed() {
    let app = TestApp::spawn_with(Options::default().set("realtime.connect_timeout_ms", 300)).await;
    let open = app.client.get(app.url("/socket.io/?EIO=3&transport=polling")).send().await.unwrap();
    let body = open.text().await.unwrap();
    let start = body.find('{').expect("an open packet");
    let handshake: Value = serde_json::Deserializer::from_str(&body[start..]).into_iter().next().unwrap().unwrap();
    let sid = handshake["sid"].as_str().unwrap();
    let url = app.url(&format!("/socket.io/?EIO=3&transport=polling&sid={sid}"));
    // It stays open while it could still connect, then is closed.
    common::eventually(Duration::from_secs(3), "the session closed", || async {
        let reply = app.client.get(&url).timeout(Duration::from_secs(2)).send().await;
        match reply {
            Ok(reply) if reply.status().is_success() => reply.text().await.unwrap_or_default().contains(":1"),
            Ok(_) => true,
            Err(_) => false,
        }
    })
    .await;
}

/// Behind a proxy every connection comes from the proxy: the bound applies to sockets, by
/// the client address the proxy forwards (`rate_limit.client_ip_header`).
#[tokio::test]
async fn behind_a_proxy_sockets_are_bounded_per_forwarded_address() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("rate_limit.client_ip_header", "x-forwarded-for")
            .set("server.max_connections_per_ip", 2),
    )
    .await;
    let from = async |address: &str| {
        let customer = app.register("customer").await;
        let auth = Some(serde_json::json!({ "token": customer.access }));
        let forwarded = format!("10.0.0.1, {address}");
        common::sio::SioClient::connect_with_headers(
            app.addr,
            "/customer",
            auth,
            "",
            &[("x-forwarded-for", &forwarded)],
        )
        .await
    };
    let first = from("203.0.113.7").await.expect("first");
    let _second = from("203.0.113.7").await.expect("second");
    match from("203.0.113.7").await {
        Err(common::sio::Refused::ConnectError(message)) => {
            assert!(message.starts_with("TOO_MANY_CONNECTIONS: "), "{message}")
        }
        other => panic!("a third socket from the address is refused: {:?}", other.map(|_| ())),
    }
    // Another address is not affected (all of them through the one proxy connection source).
    let _other = from("198.51.100.4").await.expect("another address");
    // One closes: room again.
    drop(first);
    common::eventually(Duration::from_secs(3), "room again", || async { from("203.0.113.7").await.is_ok() }).await;
}
