//! Optional traces and error reports for the operator (`[telemetry]`), both off by default.
//!
//! * **Traces**: OpenTelemetry spans exported over OTLP/HTTP (protobuf or JSON) to a collector:
//!   one per HTTP request (the `request` span the logs already carry, joined to the caller's
//!   `traceparent`), one per Socket.io event a client sends, and one per job run, whose
//!   parent is the span that queued the job, however much later and on whichever node it
//!   runs (the job row keeps the `traceparent`). Spans carry the order, offer and pilot ids
//!   they concern.
//! * **Error reports**: Sentry events for panics and for every error the server logs (an
//!   answer `500 INTERNAL_ERROR` among them), with the warnings before them as breadcrumbs.
//!
//! While off, nothing of either is installed: the spans of socket events and jobs
//! ([`TRACE_TARGET`]) are disabled at their call sites, which costs a load and a branch.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Target of the spans made for traces only (socket events, jobs): the logs never show them.
pub const TRACE_TARGET: &str = "dispatchd::trace";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector; spans go to `{otlp_endpoint}/v1/traces`. Empty: no
    /// traces.
    pub otlp_endpoint: String,
    pub otlp_protocol: OtlpProtocol,
    /// Sent with every export (a vendor's API key, say).
    pub otlp_headers: HashMap<String, SecretString>,
    pub otlp_timeout_ms: u64,
    pub service_name: String,
    /// Share of traces kept, decided where a trace starts (0.0–1.0); a caller's sampled
    /// `traceparent` is followed.
    pub sample_ratio: f64,
    pub sentry: SentryConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentryConfig {
    /// A Sentry project's DSN (`https://key@host/project`). Empty: no error reports.
    pub dsn: SecretString,
    pub environment: String,
    /// Share of error events sent (0.0–1.0).
    pub sample_rate: f32,
}

impl TelemetryConfig {
    /// The first setting that is wrong, as (key, what is wrong).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.otlp_endpoint.is_empty() {
            let url = reqwest::Url::parse(&self.otlp_endpoint)
                .map_err(|err| ("telemetry.otlp_endpoint", format!("is not a URL ({err})")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(("telemetry.otlp_endpoint", "must be an http:// or https:// URL".into()));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(("telemetry.sample_ratio", "must be between 0.0 and 1.0".into()));
        }
        if !(0.0..=1.0).contains(&self.sentry.sample_rate) {
            return Err(("telemetry.sentry.sample_rate", "must be between 0.0 and 1.0".into()));
        }
        let dsn = self.sentry.dsn.expose_secret();
        if !dsn.is_empty() && dsn.parse::<sentry::types::Dsn>().is_err() {
            return Err(("telemetry.sentry.dsn", "is not a Sentry DSN (https://key@host/project)".into()));
        }
        Ok(())
    }
}

/// What was started, to be flushed and stopped as the process ends ([`Exporters::shutdown`]).
#[derive(Default)]
pub struct Exporters {
    traces: Option<SdkTracerProvider>,
    sentry: Option<sentry::ClientInitGuard>,
}

static TRACING_ON: OnceLock<()> = OnceLock::new();

/// Whether spans are exported (so worth a `traceparent` in a job, say).
pub fn tracing_on() -> bool {
    TRACING_ON.get().is_some()
}

impl Exporters {
    /// Starts what the configuration asks for. Call before any async runtime starts: the
    /// exporters run on threads of their own.
    pub fn start(config: &TelemetryConfig) -> anyhow::Result<Self> {
        let mut started = Self::default();
        if !config.otlp_endpoint.is_empty() {
            started.traces = Some(tracer_provider(config)?);
            let _ = TRACING_ON.set(());
        }
        let dsn = config.sentry.dsn.expose_secret();
        if !dsn.is_empty() {
            let environment = config.sentry.environment.clone();
            started.sentry = Some(sentry::init((
                dsn,
                sentry::ClientOptions {
                    release: sentry::release_name!(),
                    environment: (!environment.is_empty()).then(|| environment.into()),
                    sample_rate: config.sentry.sample_rate,
                    ..Default::default()
                },
            )));
        }
        Ok(started)
    }

    /// The layer that turns spans into OpenTelemetry spans, when traces are on.
    pub fn trace_layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        use tracing_subscriber::Layer as _;
        let tracer = self.traces.as_ref()?.tracer("dispatchd");
        let ours = tracing_subscriber::filter::Targets::new().with_target("dispatchd", tracing::Level::INFO);
        Some(tracing_opentelemetry::layer().with_tracer(tracer).with_tracked_inactivity(false).with_filter(ours))
    }

    /// The layers that send logged errors to Sentry (warnings as breadcrumbs), when on. An
    /// event logged while serving a request is tagged with its `request_id`, the id its answer
    /// carries in `x-request-id`.
    pub fn error_layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        use sentry::integrations::tracing::{EventMapping, breadcrumb_from_event, event_from_event};
        use tracing_subscriber::Layer as _;
        self.sentry.as_ref()?;
        let reports = sentry::integrations::tracing::layer().span_filter(|_| false).event_mapper(|event, context| {
            match *event.metadata().level() {
                // Ours only: a library's own error line about the same failure (tower-http's
                // "response failed" for each 5xx) would report it twice.
                tracing::Level::ERROR if event.metadata().target().starts_with("dispatchd") => {
                    let mut report = event_from_event(event, &context);
                    let request = context.event_scope(event).and_then(|mut spans| {
                        spans.find_map(|span| span.extensions().get::<RequestId>().map(|id| id.0.clone()))
                    });
                    if let Some(request) = request {
                        report.tags.insert("request_id".to_owned(), request);
                    }
                    EventMapping::Event(report)
                }
                tracing::Level::ERROR | tracing::Level::WARN => {
                    EventMapping::Breadcrumb(breadcrumb_from_event(event, &context))
                }
                _ => EventMapping::Ignore,
            }
        });
        let wanted = |metadata: &tracing::Metadata<'_>| {
            is_request(metadata) || (metadata.is_event() && *metadata.level() <= tracing::Level::WARN)
        };
        let requests = RequestIds.with_filter(tracing_subscriber::filter::filter_fn(is_request));
        Some(requests.and_then(reports).with_filter(tracing_subscriber::filter::filter_fn(wanted)))
    }

    /// Sends what is still buffered (at most a few seconds) and stops.
    pub fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(err) = provider.shutdown()
        {
            crate::telemetry::tell_operator(format_args!("dispatchd: flushing traces: {err}"));
        }
        if let Some(guard) = self.sentry {
            guard.flush(Some(Duration::from_secs(2)));
        }
    }
}

/// The HTTP request span (`crate::http`).
fn is_request(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.name() == "request" && metadata.target().starts_with("dispatchd")
}

/// The `request_id` of a request span, kept in its extensions for the error reports.
struct RequestId(String);

/// Keeps each request span's `request_id` ([`RequestId`]).
struct RequestIds;

impl<S> tracing_subscriber::Layer<S> for RequestIds
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    fn on_new_span(
        &self,
        attributes: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Find(Option<String>);
        impl tracing::field::Visit for Find {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "request_id" {
                    self.0 = Some(value.to_owned());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut find = Find(None);
        attributes.record(&mut find);
        if let (Some(request), Some(span)) = (find.0, context.span(id)) {
            span.extensions_mut().insert(RequestId(request));
        }
    }
}

fn tracer_provider(config: &TelemetryConfig) -> anyhow::Result<SdkTracerProvider> {
    let endpoint = format!("{}/v1/traces", config.otlp_endpoint.trim_end_matches('/'));
    let headers = config.otlp_headers.iter().map(|(name, value)| (name.clone(), value.expose_secret().to_owned()));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_protocol(match config.otlp_protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        })
        .with_timeout(Duration::from_millis(config.otlp_timeout_ms))
        .with_headers(headers.collect())
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
        .build())
}

/// The W3C `traceparent` of the current span, when traces are on and it is sampled: what a
/// job keeps to continue the trace that queued it.
pub fn current_traceparent() -> Option<String> {
    if !tracing_on() {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Names `span`'s trace span (once started, `otel.name` no longer renames it).
pub fn rename(span: &tracing::Span, name: String) {
    span.context().span().update_name(name);
}

/// Makes `span` a child of the trace a `traceparent` names (an incoming request's header, a
/// job's stored one); nothing when traces are off or the value is not one.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| tracing_on()) else { return };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}
