//! Logs and traces of the binary: one JSON object per line (or human text), and
//! OpenTelemetry spans exported over OTLP/HTTP when an endpoint is configured (off by
//! default).
//!
//! Every JSON line carries `timestamp`, `level`, `message`, `target`, `service`, `version`
//! and, when the line was logged inside a request, projection or job span, that span's
//! `correlation_id` and `trace_id` (see `ficus_runtime::telemetry`), so a grep for one id
//! finds everything a request caused.

use std::fmt;

use opentelemetry::trace::TracerProvider as _;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer;

/// The `service` field of every line and the OpenTelemetry service name.
pub const SERVICE_NAME: &str = "ficus";

/// How the binary logs and traces.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// One JSON object per line (true) or human text.
    pub json: bool,
    /// The filter when `FICUS_LOG` is not set (an `EnvFilter` directive).
    pub default_filter: String,
    /// OTLP/HTTP base URL (`http://collector:4318`); spans go to `{it}/v1/traces`.
    pub otlp_endpoint: Option<String>,
}

/// Keeps the span exporter alive; dropping it flushes the spans still buffered.
pub struct LogGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("flushing spans to the OTLP endpoint failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber. Fails only when the OTLP exporter cannot be built.
pub fn init(config: &LogConfig) -> anyhow::Result<LogGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FICUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.default_filter));
    let provider = match &config.otlp_endpoint {
        Some(endpoint) if !endpoint.trim().is_empty() => Some(otlp_provider(endpoint)?),
        _ => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SERVICE_NAME))
            .with_tracked_inactivity(false)
    });
    let json = config.json.then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(JsonLine)
            .with_writer(std::io::stderr)
    });
    let text =
        (!config.json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    // A second init (tests starting several servers in one process) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(SpanIdsLayer)
        .with(json)
        .with(text)
        .with(otel)
        .try_init();
    Ok(LogGuard { provider })
}

fn otlp_provider(endpoint: &str) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    // The batch processor exports from its own thread, in batches of bounded size from a
    // bounded queue (the SDK's defaults: 2048 spans queued, 512 per export); past that,
    // spans are dropped rather than slowing requests.
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The ids a span was opened with, kept in its extensions for [`JsonLine`].
#[derive(Default)]
struct SpanIds {
    correlation_id: Option<String>,
    trace_id: Option<String>,
}

impl Visit for SpanIds {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "correlation_id" => self.correlation_id = Some(value.to_owned()),
            "trace_id" => self.trace_id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here; strings arrive in `record_str`.
        if matches!(field.name(), "correlation_id" | "trace_id") {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

struct SpanIdsLayer;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanIdsLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut ids = SpanIds::default();
        attrs.record(&mut ids);
        if ids.correlation_id.is_some() || ids.trace_id.is_some() {
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(ids);
            }
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(ids) = ext.get_mut::<SpanIds>() {
                values.record(ids);
            } else {
                let mut ids = SpanIds::default();
                values.record(&mut ids);
                ext.insert(ids);
            }
        }
    }
}

/// An event's fields as JSON values.
struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

/// One JSON object per line; see the module doc for its fields.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::from(ficus_core::time::format_rfc3339_ms(ficus_store::now_ms())),
        );
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert(
            "message".into(),
            fields.0.remove("message").unwrap_or(Value::from("")),
        );
        line.insert("target".into(), Value::from(meta.target()));
        line.insert("service".into(), Value::from(SERVICE_NAME));
        line.insert("version".into(), Value::from(env!("CARGO_PKG_VERSION")));
        // The innermost span that knows an id wins (a job span inside a request span).
        let (mut correlation_id, mut trace_id) = (None, None);
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                line.entry("span").or_insert(Value::from(span.name()));
                if let Some(ids) = span.extensions().get::<SpanIds>() {
                    correlation_id = correlation_id.or_else(|| ids.correlation_id.clone());
                    trace_id = trace_id.or_else(|| ids.trace_id.clone());
                }
            }
        }
        if let Some(c) = correlation_id {
            line.insert("correlation_id".into(), Value::from(c));
        }
        if let Some(t) = trace_id {
            line.insert("trace_id".into(), Value::from(t));
        }
        for (k, v) in fields.0 {
            line.entry(k).or_insert(v);
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}
