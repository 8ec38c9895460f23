//! Traces and error reports (`[telemetry]`) against sinks the test starts on loopback: an
//! OTLP/HTTP receiver that decodes what a real `dispatchd` process exports (protobuf, the
//! default), and a Sentry endpoint that takes its envelopes.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use common::PICKUP;
use common::node::{Logs, Node};
use common::sio::SioClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message as _;
use serde_json::json;

/// What a sink received: (path, content type, body).
type Received = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// An HTTP server on loopback that keeps every POST and answers 200 `{}`.
async fn sink() -> (SocketAddr, Received) {
    let received = Received::default();
    async fn keep(State(received): State<Received>, uri: Uri, headers: HeaderMap, body: Bytes) -> &'static str {
        let kind = headers.get("content-type").and_then(|value| value.to_str().ok()).unwrap_or("").to_owned();
        received.lock().push((uri.path().to_owned(), kind, body));
        "{}"
    }
    let app = axum::Router::new().fallback(axum::routing::post(keep)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

/// Every span exported so far.
fn spans(received: &Received) -> Vec<Span> {
    let mut spans = Vec::new();
    for (path, kind, body) in received.lock().iter() {
        assert_eq!(path, "/v1/traces");
        assert_eq!(kind, "application/x-protobuf");
        let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("an OTLP protobuf export");
        for resource in request.resource_spans {
            let resource_attributes = resource.resource.map(|resource| resource.attributes).unwrap_or_default();
            assert!(
                resource_attributes.iter().any(|kv| kv.key == "service.name"
                    && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Any::StringValue(name)) if name == "dispatchd-under-test")),
                "the service is named as configured"
            );
            spans.extend(resource.scope_spans.into_iter().flat_map(|scope| scope.spans));
        }
    }
    spans
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Any::StringValue(text) => Some(text.clone()),
        Any::IntValue(number) => Some(number.to_string()),
        other => Some(format!("{other:?}")),
    })
}

/// What `found` finds, polled until `within` has passed.
async fn until<T>(within: Duration, what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = found() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A node on a SQLite file of its own, with `more` settings.
async fn node(dir: &tempfile::TempDir, more: &[(&'static str, String)]) -> Node {
    let mut env = common::node::alone_in(dir);
    env.extend(more.iter().cloned());
    Node::start(&env, Logs::Drained).await
}

/// A request that comes with a `traceparent` continues its trace; the search's end, a job
/// that runs two seconds later, continues it too; a pilot's socket event has a span of its
/// own with the pilot's id; spans carry the order's id.
#[tokio::test]
async fn requests_socket_events_and_the_jobs_they_queue_are_traced_over_otlp() {
    let (collector, received) = sink().await;
    let dir = tempfile::tempdir().unwrap();
    let node = node(
        &dir,
        &[
            ("DISPATCHD__TELEMETRY__OTLP_ENDPOINT", format!("http://{collector}")),
            ("DISPATCHD__TELEMETRY__SERVICE_NAME", "dispatchd-under-test".to_owned()),
            ("DISPATCHD__ORDERS__MAX_SEARCH_SECS", "2".to_owned()),
        ],
    )
    .await;
    let customer = node.register("customer").await;
    let pilot = node.register("pilot").await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let reply = node
        .client
        .post(node.url("/api/v1/orders"))
        .bearer_auth(&customer.access)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&common::order_body("cash"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), reqwest::StatusCode::CREATED);
    let order: serde_json::Value = reply.json().await.unwrap();
    let order = order["data"]["id"].as_str().unwrap().to_owned();
    let (status, _) = node.get(&format!("/api/v1/orders/{order}"), Some(&customer.access)).await;
    assert_eq!(status, reqwest::StatusCode::OK);

    let mut socket = SioClient::connect(node.addr, "/pilot", Some(json!({ "token": pilot.access })), "")
        .await
        .unwrap_or_else(|refused| panic!("/pilot refused: {refused:?}"));
    let fix = json!({ "lat": PICKUP.0, "lng": PICKUP.1, "ts": chrono::Utc::now().timestamp_millis(), "accuracy": 5 });
    let ack = socket.call("location", json!({ "points": [fix] })).await;
    assert_eq!(ack["data"]["accepted"], 1, "{ack}");

    // The batch exporter sends every few seconds; the job runs once the search gives up.
    let everything = until(Duration::from_secs(20), "the request, socket and job spans", || {
        let spans = spans(&received);
        let found = |name: &str| spans.iter().find(|span| span.name == name).cloned();
        let create = found("POST /api/v1/orders")?;
        let read = found("GET /api/v1/orders/{id}")?;
        let location = found("location")?;
        let job = found("order.no_pilot_found")?;
        Some((create, read, location, job))
    })
    .await;
    let (create, read, location, job) = everything;

    assert_eq!(hex(&create.trace_id), trace_id, "the request continues the caller's trace");
    assert_eq!(hex(&create.parent_span_id), caller_span);
    assert_eq!(attribute(&create, "http.route").as_deref(), Some("/api/v1/orders"));
    assert_eq!(attribute(&create, "http.response.status_code").as_deref(), Some("201"));
    assert_eq!(attribute(&create, "user.id").as_deref(), Some(customer.user_id.as_str()));

    assert_eq!(attribute(&read, "order_id").as_deref(), Some(order.as_str()), "the order's id, from its path");
    assert_ne!(hex(&read.trace_id), trace_id, "a request without traceparent starts its own trace");

    assert_eq!(attribute(&location, "pilot_id").as_deref(), Some(pilot.user_id.as_str()));
    assert_eq!(attribute(&location, "socket.namespace").as_deref(), Some("/pilot"));
    assert!(location.parent_span_id.is_empty(), "a socket event starts a trace");

    assert_eq!(hex(&job.trace_id), trace_id, "the job continues the trace of the request that queued it");
    assert_eq!(attribute(&job, "order_id").as_deref(), Some(order.as_str()));
    assert!(job.start_time_unix_nano >= create.end_time_unix_nano, "it ran after the request");
}

/// An error the server logs (here a 500: a table gone from under it) reaches Sentry as an
/// event, with the request it happened in; an ordinary 4xx sends nothing.
#[tokio::test]
async fn an_internal_error_is_reported_to_sentry() {
    let (sentry, received) = sink().await;
    let dir = tempfile::tempdir().unwrap();
    let node = node(
        &dir,
        &[
            ("DISPATCHD__TELEMETRY__SENTRY__DSN", format!("http://public@{sentry}/42")),
            ("DISPATCHD__TELEMETRY__SENTRY__ENVIRONMENT", "drill".to_owned()),
        ],
    )
    .await;
    let customer = node.register("customer").await;
    let (status, _) = node.get("/api/v1/orders/not-an-id", Some(&customer.access)).await;
    assert!(status.is_client_error());

    let database = format!("sqlite://{}", dir.path().join("dispatchd.db").display());
    let pool = sqlx::SqlitePool::connect(&database).await.unwrap();
    sqlx::query("DROP TABLE notification_settings").execute(&pool).await.unwrap();
    pool.close().await;
    let reply =
        node.client.get(node.url("/api/v1/me/notifications")).bearer_auth(&customer.access).send().await.unwrap();
    assert_eq!(reply.status(), reqwest::StatusCode::INTERNAL_SERVER_ERROR);
    let request_id = reply.headers()["x-request-id"].to_str().unwrap().to_owned();

    let envelope = until(Duration::from_secs(10), "the Sentry event", || {
        received.lock().iter().find(|(path, _, _)| path == "/api/42/envelope/").map(|(_, _, body)| body.clone())
    })
    .await;
    let text = String::from_utf8_lossy(&envelope);
    let event: serde_json::Value = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|item| item.get("message").is_some())
        .unwrap_or_else(|| panic!("an event item in {text}"));
    assert_eq!(event["message"], "internal error", "{event}");
    assert_eq!(event["environment"], "drill", "{event}");
    assert!(text.contains("no such table"), "the error itself: {text}");
    assert_eq!(event["tags"]["request_id"], request_id.as_str(), "the request it happened in: {event}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent: Vec<String> =
        received.lock().iter().map(|(_, _, body)| String::from_utf8_lossy(body).into_owned()).collect();
    assert_eq!(sent.len(), 1, "one event: the 4xx sent nothing: {sent:?}");
}

/// A panic anywhere (here a thread of the process) is reported, with its message.
#[tokio::test]
async fn a_panic_is_reported_to_sentry() {
    let (sentry, received) = sink().await;
    let mut config = dispatchd::config::Config::load(None).unwrap().telemetry;
    config.sentry.dsn = format!("http://public@{sentry}/7").into();
    let exporters = dispatchd::traces::Exporters::start(&config).unwrap();
    let panicked = std::thread::spawn(|| panic!("the drill's panic")).join();
    assert!(panicked.is_err());
    tokio::task::spawn_blocking(move || exporters.shutdown()).await.unwrap();
    let sent = received
        .lock()
        .iter()
        .map(|(path, _, body)| (path.clone(), String::from_utf8_lossy(body).into_owned()))
        .collect::<Vec<_>>();
    let report = sent.iter().find(|(path, _)| path == "/api/7/envelope/").map(|(_, body)| body.clone());
    let report = report.unwrap_or_else(|| panic!("no report in {sent:?}"));
    assert!(report.contains("the drill's panic"), "{report}");
    assert!(report.contains(r#""type":"panic""#), "reported as a panic: {report}");
}
