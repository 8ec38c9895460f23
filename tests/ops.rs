//! Operations: health, readiness (with Postgres and Redis going away), metrics, request ids,
//! security headers, CORS and rate limiting.

mod common;

use std::time::Duration;

use common::{Database, Options, Proxy, RedisOption, TestApp, closed_port, eventually, host_port, via};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn healthz_needs_nothing_and_readyz_checks_everything() {
    let app = TestApp::spawn_with(Options::default().with_redis()).await;
    let health = app.get("/healthz", None).await;
    assert_eq!(health.data()["status"], "ok");
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.data(), &json!({ "database": "ok", "redis": "ok", "backend": "postgres", "degraded": [] }));
}

#[tokio::test]
async fn readyz_stays_200_naming_redis_degraded_when_redis_is_unreachable() {
    let redis = RedisOption { url: format!("redis://{}", closed_port().await), prefix: common::fresh_redis_prefix() };
    let app = TestApp::spawn_with(Options { redis: Some(redis), ..Options::default() }).await;
    let ready = app.get("/readyz", None).await;
    // A load balancer keeps the node: it serves.
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    assert_eq!(ready.data()["redis"], "down");
    assert_eq!(ready.data()["degraded"], json!(["redis"]));
    assert_eq!(ready.data()["database"], "ok");

    // Degraded, not dead: the API still works without Redis.
    let session = app.register("customer").await;
    assert_eq!(app.get("/api/v1/me", Some(&session.access)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_follows_postgres_going_away_and_coming_back() {
    let database = common::fresh_postgres_database().await;
    let proxy = Proxy::start(&host_port(&database)).await;
    let options = Options { database: Database::Postgres(via(&database, proxy.addr)), ..Options::default() };
    let app = TestApp::spawn_with(options.set("database.acquire_timeout_secs", 1)).await;
    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);

    proxy.cut();
    let ready = app.get("/readyz", None).await;
    assert_eq!((ready.status, ready.error_code()), (StatusCode::SERVICE_UNAVAILABLE, "NOT_READY"));
    assert_eq!(ready.body["error"]["details"]["database"], "down");
    assert_eq!(ready.body["error"]["details"]["redis"], "not_configured");
    let register = app
        .post(
            "/api/v1/auth/register",
            json!({ "name": "A", "phone": common::unique_phone(), "password": common::PASSWORD, "role": "customer" }),
            None,
        )
        .await;
    assert_eq!(register.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", register.body);
    assert_eq!(register.body["error"]["details"]["unavailable"], "database");

    proxy.restore().await;
    eventually(Duration::from_secs(10), "readyz back to 200", || async {
        app.get("/readyz", None).await.status == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::spawn().await;
    app.register("customer").await;
    app.get("/api/v1/me", None).await;
    let metrics = app.send(app.client.get(app.url("/metrics"))).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for expected in [
        r#"http_requests_total{method="POST",route="/api/v1/auth/register",status="201"}"#,
        r#"http_requests_total{method="GET",route="/api/v1/me",status="401"}"#,
        r#"http_request_duration_seconds_bucket{method="POST",route="/api/v1/auth/register",status="201",le="0.5"}"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
}

#[tokio::test]
async fn metrics_show_the_job_queue_by_kind() {
    // The test runs the workers itself.
    let app = TestApp::spawn_with(Options::default().set("jobs.poll_interval_ms", 3_600_000)).await;
    let customer = app.register("customer").await;
    // A searching order has its no_pilot_found job queued for later.
    let order = app.post("/api/v1/orders", common::order_body("cash"), Some(&customer.access)).await;
    assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
    app.state.jobs.run_due().await.unwrap();
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for expected in [
        r#"jobs{kind="order.no_pilot_found",status="queued"} 1"#,
        r#"jobs{kind="payment.refund",status="failed"} 0"#,
        "jobs_queued 1",
        "jobs_oldest_due_seconds 0",
        r#"jobs_queue_age_seconds{kind="order.no_pilot_found"} 0"#,
    ] {
        assert!(text.lines().any(|line| line == expected), "missing {expected} in\n{text}");
    }
    // A job due a minute ago: its kind's queue is a minute old (read before the workers run it).
    let now = app.clock.now();
    let late = dispatchd::store::NewJob::new("test.backlog", json!({}), now - chrono::Duration::seconds(60));
    app.state.store.enqueue(&late, now).await.unwrap();
    app.state.jobs.run_due().await.unwrap();
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let age = text
        .lines()
        .find_map(|line| line.strip_prefix(r#"jobs_queue_age_seconds{kind="test.backlog"} "#))
        .and_then(|value| value.parse::<f64>().ok());
    assert!(age.is_some_and(|age| (60.0..70.0).contains(&age)), "{age:?} in\n{text}");
}

#[tokio::test]
async fn request_ids_are_made_or_echoed() {
    let app = TestApp::spawn().await;
    let made = app.get("/healthz", None).await;
    let id = made.header("x-request-id").expect("a request id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let echoed = app.send(app.client.get(app.url("/api/v1/me")).header("x-request-id", "trace-me-42")).await;
    assert_eq!(echoed.header("x-request-id"), Some("trace-me-42"));
}

#[tokio::test]
async fn security_headers_and_cors_follow_config() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("http.cors.allowed_origins", json!(["https://console.example.com"]))
            .set("http.headers.hsts_max_age_secs", 31_536_000),
    )
    .await;
    let reply = app.get("/healthz", None).await;
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
        ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ] {
        assert_eq!(reply.header(name), Some(value), "{name}");
    }
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,authorization")
    };
    let allowed = app.send(preflight("https://console.example.com")).await;
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://console.example.com"));
    let other = app.send(preflight("https://evil.example.com")).await;
    assert_eq!(other.header("access-control-allow-origin"), None);

    // Socket.io's long-polling handshake from a console on another origin: its preflight and
    // its answers carry CORS, and the same security headers as REST.
    let handshake = "/socket.io/?EIO=4&transport=polling";
    let sio_preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url(handshake))
        .header("origin", "https://console.example.com")
        .header("access-control-request-method", "GET");
    let sio_preflight = app.send(sio_preflight).await;
    assert!(sio_preflight.status.is_success(), "{:?}", sio_preflight.status);
    assert_eq!(sio_preflight.header("access-control-allow-origin"), Some("https://console.example.com"));
    let open = app.send(app.client.get(app.url(handshake)).header("origin", "https://console.example.com")).await;
    assert_eq!(open.status, StatusCode::OK);
    assert_eq!(open.header("access-control-allow-origin"), Some("https://console.example.com"));
    assert_eq!(open.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(open.header("strict-transport-security"), Some("max-age=31536000; includeSubDomains"));

    let default = TestApp::spawn().await;
    let reply = default.send(default.client.get(default.url("/healthz")).header("origin", "https://x.example")).await;
    assert_eq!(reply.header("access-control-allow-origin"), None, "no CORS unless configured");
    assert_eq!(reply.header("strict-transport-security"), None);
}

#[tokio::test]
async fn the_api_is_rate_limited_per_client() {
    let app = TestApp::spawn_with(
        Options::default()
            .set("rate_limit.requests_per_minute", 3)
            .set("rate_limit.client_ip_header", "x-forwarded-for"),
    )
    .await;
    let from = |ip: &'static str| {
        app.client.get(app.url("/api/v1/me")).header("x-forwarded-for", format!("203.0.113.9, {ip}"))
    };
    for remaining in ["2", "1", "0"] {
        let reply = app.send(from("198.51.100.1")).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(reply.header("x-ratelimit-remaining"), Some(remaining));
    }
    let limited = app.send(from("198.51.100.1")).await;
    assert_eq!((limited.status, limited.error_code()), (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"));
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.body["error"]["details"]["retry_after_secs"], retry_after);

    assert_eq!(app.send(from("198.51.100.2")).await.status, StatusCode::UNAUTHORIZED, "another client is not limited");
    for _ in 0..5 {
        assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK, "probes are not limited");
    }
}

/// Issue 21: the dispatcher console is served by the server itself, its scripts compiled in,
/// under a policy that lets in this origin and the configured tile server only.
#[tokio::test]
async fn the_console_is_served_with_its_own_policy() {
    let tiles = "https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png";
    let app = TestApp::spawn_with(Options::default().set("console.tile_url", tiles)).await;
    let root = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(root.url().path(), "/console", "/ redirects to the console");
    let policy = root.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("script-src 'self';"), "{policy}");
    assert!(policy.contains("img-src 'self' data: https://*.tile.openstreetmap.org;"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    let page = root.text().await.unwrap();
    assert!(page.contains("data-testid=\"login-submit\""));
    assert!(!page.contains("<script>"), "no inline script");
    for asset in
        ["/console/console.js", "/console/vendor/leaflet/leaflet.js", "/console/vendor/socket.io/socket.io.min.js"]
    {
        let reply = app.client.get(app.url(asset)).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "{asset}");
        assert!(reply.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
        let etag = reply.headers()["etag"].clone();
        let again = app.client.get(app.url(asset)).header("if-none-match", etag).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{asset} is revalidated by its hash");
    }
    let missing = app.client.get(app.url("/console/../Cargo.toml")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let settings: serde_json::Value =
        app.client.get(app.url("/console/config.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!((settings["tile_url"].as_str(), settings["alert_search_secs"].as_u64()), (Some(tiles), Some(120)));
}

/// Issue 24: every family in /metrics explains itself (`# HELP` and `# TYPE`).
#[tokio::test]
async fn every_metric_family_has_help_and_type() {
    let app = TestApp::spawn().await;
    let customer = app.register("customer").await;
    app.post("/api/v1/orders", common::order_body("cash"), Some(&customer.access)).await;
    app.get("/api/v1/orders", Some(&customer.access)).await;
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let described: std::collections::HashMap<&str, dispatchd::telemetry::MetricKind> =
        dispatchd::telemetry::METRICS.iter().map(|(name, kind, _)| (*name, *kind)).collect();
    let mut families = 0;
    for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
        let mut parts = line["# TYPE ".len()..].split(' ');
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        families += 1;
        assert!(text.lines().any(|help| help.starts_with(&format!("# HELP {name} "))), "no HELP for {name}");
        use dispatchd::telemetry::MetricKind::*;
        let expected = match described.get(name) {
            Some(Counter) => "counter",
            Some(Gauge) => "gauge",
            Some(Histogram) => "histogram",
            None => panic!("{name} is exported but not in telemetry::METRICS"),
        };
        assert_eq!(kind, expected, "{name}");
    }
    assert!(families >= 3, "{text}");
}

/// A made-up HTTP method is counted as `other`: each name was a series of its own, kept for
/// good, so a loop of them grew the server's memory and `/metrics` without bound.
#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let app = TestApp::spawn().await;
    for name in ["ZZMADEUP1", "ZZMADEUP2", "ZZMADEUP3"] {
        let method = reqwest::Method::from_bytes(name.as_bytes()).unwrap();
        let answer = app.client.request(method, app.url("/healthz")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("ZZMADEUP"), "a made-up method became a label");
    assert!(
        text.lines().any(|line| line.starts_with("http_requests_total{") && line.contains(r#"method="other""#)),
        "made-up methods are counted as other"
    );
}

/// A node started while Redis is down says so in `/metrics` (`redis_up 0`, which the
/// DispatchdRedisDown alert reads). The gauge was set before the metrics recorder existed,
/// and the series was missing until Redis had once been up.
#[tokio::test]
async fn a_node_started_without_redis_exports_redis_up_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = common::node::alone_in(&dir);
    env.push(("DISPATCHD__REDIS__URL", format!("redis://{}", closed_port().await)));
    let node = common::node::Node::start(&env, common::node::Logs::Drained).await;
    let text = node.client.get(node.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|line| line == "redis_up 0"), "{text}");
}

/// The counters the alert rules read are exported at 0 from the start. Appearing only at
/// their first increment, already at 1, they hid that increment from `increase`: the first
/// order event dropped after a restart never raised DispatchdOrderEventsDropped.
#[tokio::test]
async fn the_counters_the_alerts_read_start_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node::Node::start(&common::node::alone_in(&dir), common::node::Logs::Drained).await;
    let text = node.client.get(node.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |series: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    assert_eq!(value("readiness_failures_total"), "0");
    assert_eq!(value(r#"orders_cancelled_total{reason="no_pilot_found"}"#), "0");
    assert_eq!(value(r#"orders_created_total{payment_method="cash"}"#), "0");
    for namespace in ["/customer", "/pilot", "/dispatch"] {
        assert_eq!(value(&format!(r#"socket_dropped_total{{namespace="{namespace}",event="order:event"}}"#)), "0");
    }
}

/// Every metric the code records is in `telemetry::METRICS` (so it gets its HELP line, and
/// dashboards and alerts can rely on the list).
#[test]
fn every_metric_the_code_records_is_described() {
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    sources(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    let described: Vec<&str> = dispatchd::telemetry::METRICS.iter().map(|(name, _, _)| *name).collect();
    let mut recorded = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for macro_call in ["metrics::counter!(", "metrics::gauge!(", "metrics::histogram!("] {
            for (at, _) in text.match_indices(macro_call) {
                let rest = text[at + macro_call.len()..].trim_start();
                let Some(literal) = rest.strip_prefix('"') else {
                    // The one family named at run time: jobs_{status}.
                    assert!(rest.starts_with("format!(\"jobs_{status}\")"), "{}: {rest:.60}", file.display());
                    continue;
                };
                let name = &literal[..literal.find('"').unwrap()];
                recorded += 1;
                assert!(described.contains(&name), "{name} ({}) is not in telemetry::METRICS", file.display());
            }
        }
    }
    assert!(recorded > 60, "found only {recorded} metric calls");
    for status in ["queued", "running", "failed"] {
        assert!(described.contains(&format!("jobs_{status}").as_str()));
    }
}

/// Issue 24: every metric the alerting and recording rules and the Grafana dashboards read
/// is one the server exports (`up` is Prometheus's own), and every recorded series they read
/// is one the rules record.
#[test]
fn the_rules_and_dashboards_read_only_metrics_the_server_exports() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/rules.yml")).unwrap();
    let mut sources = vec![("deploy/prometheus/rules.yml".to_owned(), rules.clone())];
    for entry in std::fs::read_dir(format!("{root}/deploy/grafana")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "json") {
            continue; // provisioning/: how Grafana finds them
        }
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut exprs = String::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                exprs.push_str(target["expr"].as_str().unwrap());
                exprs.push('\n');
            }
        }
        sources.push((path.display().to_string(), exprs));
    }
    let described: Vec<&str> = dispatchd::telemetry::METRICS.iter().map(|(name, _, _)| *name).collect();
    let recorded: Vec<&str> =
        rules.lines().filter_map(|line| line.trim().strip_prefix("- record: ")).map(str::trim).collect();
    let identifier = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (source, text) in &sources {
        let mut read = 0;
        for (at, _) in text.match_indices("{job=\"dispatchd\"") {
            let before = &text[..at];
            let name = &before[before.rfind(|c: char| !identifier(c)).map_or(0, |i| i + 1)..];
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                family == "up" || described.contains(&family),
                "{source} reads {name}, which the server does not export"
            );
            read += 1;
        }
        for (at, _) in text.match_indices("dispatchd:") {
            let name: String = text[at..].chars().take_while(|c| identifier(*c)).collect();
            assert!(recorded.contains(&name.as_str()), "{source} reads {name}, which no rule records");
        }
        assert!(read >= 10, "{source} reads only {read} metrics");
    }
    assert!(sources.len() >= 2, "no dashboard in deploy/grafana");
}
