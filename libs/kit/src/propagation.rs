//! Carries W3C trace context and the caller's identity across gRPC hops and events.
//!
//! * Clients wrap their channel with [`Outbound`] (a tonic interceptor): it injects the
//!   current span's `traceparent`/`tracestate` into the request metadata.
//! * Servers wrap their routes with [`GrpcServerLayer`]: it extracts the context, opens the
//!   `rpc.server` span (OpenTelemetry RPC semantic conventions) as its child, records RED
//!   metrics, and logs the outcome.
//! * The caller identity travels as `x-parley-user-id`, set by the gateway only after it
//!   verified the user's token ([`with_user`]); services read it with [`caller`].
//! * Events carry the context as a string map ([`inject_map`] / [`extract_map`]).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::Instant,
};

use opentelemetry::propagation::{Extractor, Injector};
use tonic::{Request, Status, metadata::MetadataMap};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Metadata key holding the verified end-user id.
pub const USER_ID_KEY: &str = "x-parley-user-id";

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Tonic client interceptor injecting the current trace context.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outbound;

impl tonic::service::Interceptor for Outbound {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut MetadataInjector(req.metadata_mut()));
        });
        Ok(req)
    }
}

/// Marks `req` as made on behalf of `user_id` (gateway only).
pub fn with_user<T>(mut req: Request<T>, user_id: &str) -> Result<Request<T>, Status> {
    let v = tonic::metadata::MetadataValue::try_from(user_id)
        .map_err(|_| crate::ErrorCode::InvalidArgument.status("bad user id"))?;
    req.metadata_mut().insert(USER_ID_KEY, v);
    Ok(req)
}

/// The end user a request was made for, or UNAUTHENTICATED.
pub fn caller<T>(req: &Request<T>) -> Result<String, Status> {
    req.metadata()
        .get(USER_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| crate::ErrorCode::Unauthenticated.status("missing caller identity"))
}

/// Writes the current span's trace context into a string map (for events).
pub fn inject_map() -> HashMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut map = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    map
}

/// Makes `span` a child of the context carried in `map` (from an event).
pub fn set_parent_from_map(span: &tracing::Span, map: &HashMap<String, String>) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(map));
    let _ = span.set_parent(cx);
}

/// Makes `span` a child of the context carried in HTTP headers (`traceparent`).
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
}

/// Tower layer for gRPC servers: trace context extraction, `rpc.server` span, RED metrics.
#[derive(Debug, Clone, Copy)]
pub struct GrpcServerLayer {
    service: &'static str,
}

impl GrpcServerLayer {
    /// `service` is the `service.name` of the server (used as a metric label).
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl<S> tower::Layer<S> for GrpcServerLayer {
    type Service = GrpcServer<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcServer {
            inner,
            service: self.service,
        }
    }
}

/// See [`GrpcServerLayer`].
#[derive(Debug, Clone)]
pub struct GrpcServer<S> {
    inner: S,
    service: &'static str,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcServer<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path().to_owned();
        let (rpc_service, rpc_method) = path
            .trim_start_matches('/')
            .split_once('/')
            .map_or(("", path.as_str()), |(s, m)| (s, m));
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !is_grpc {
            return Box::pin(inner.call(req));
        }
        let span = tracing::info_span!(
            "rpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %rpc_service,
            rpc.method = %rpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        set_parent_from_headers(&span, req.headers());
        if let Some(id) = span.in_scope(crate::telemetry::current_trace_id) {
            span.record("trace_id", id.as_str());
        }
        let service = self.service;
        let method = path.clone();
        let started = Instant::now();
        Box::pin(
            async move {
                let result = inner.call(req).await;
                let code = match &result {
                    // Errors of unary calls are "trailers-only" responses: the status is in
                    // the headers. Successful responses carry grpc-status 0 in trailers.
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0),
                    Err(_) => 2,
                };
                let code_name = format!("{:?}", tonic::Code::from_i32(code));
                tracing::Span::current().record("rpc.grpc.status_code", code);
                let elapsed = started.elapsed().as_secs_f64();
                let labels = [
                    ("service", service.to_owned()),
                    ("method", method),
                    ("code", code_name.clone()),
                ];
                metrics::counter!("rpc_server_requests_total", &labels).increment(1);
                metrics::histogram!("rpc_server_duration_seconds", &labels).record(elapsed);
                match code {
                    0 | 1 | 3 | 5 | 7 | 9 | 16 => {
                        tracing::debug!(code = %code_name, elapsed_ms = elapsed * 1e3, "rpc done");
                    }
                    _ => {
                        tracing::warn!(code = %code_name, elapsed_ms = elapsed * 1e3, "rpc failed")
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}
