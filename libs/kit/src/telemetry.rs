//! Telemetry: JSON logs on stdout (level from `RUST_LOG`, default `info`) and OpenTelemetry
//! traces. A tracer provider is always installed, so trace ids exist and propagate even
//! without a collector; spans are exported over OTLP/gRPC only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The standard `OTEL_*` variables apply
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_EXPORTER_OTLP_TIMEOUT`, ...).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// Flushes and shuts the tracer provider down when dropped: keep it alive in `main`.
#[must_use = "dropping the guard stops trace export"]
pub struct Guard {
    provider: SdkTracerProvider,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {e}");
        }
    }
}

/// Initialises logs and traces for `service` (the default `service.name`). Must be called
/// inside the Tokio runtime (the OTLP exporter needs it). Spans are exported when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(service: &'static str) -> anyhow::Result<Guard> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty());
    init_with(service, endpoint)
}

/// As [`init`], exporting to `endpoint` (OTLP/gRPC) when given — for tests, which must not
/// mutate the process environment.
pub fn init_with(service: &'static str, endpoint: Option<String>) -> anyhow::Result<Guard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let exporting = endpoint.is_some();
    if let Some(endpoint) = endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service);

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_target(true),
        )
        .try_init()?;
    tracing::info!(service, otlp_export = exporting, "telemetry initialised");
    Ok(Guard { provider })
}

impl Guard {
    /// Exports every finished span now (blocking: call it off the async worker threads,
    /// e.g. in `spawn_blocking`).
    pub fn flush(&self) -> anyhow::Result<()> {
        Ok(self.provider.force_flush()?)
    }
}

/// The trace id of the current span as 32 hex digits, if there is one.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
