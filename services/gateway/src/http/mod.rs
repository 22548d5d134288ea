//! HTTP routes of the public API: the router, the request span/metrics middleware and the
//! dev-token route here; by concern: `ready`
//! (`/readyz`), and the route groups `channels`, `messages`, `social` (presence and
//! receipts), `devices`. Handlers read the request, call the API core (`crate::api`) and
//! render its result; the extractors are in `crate::extract` (shared with the WebSocket
//! upgrade).

mod channels;
mod devices;
mod messages;
mod ready;
mod social;

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::HeaderValue,
    middleware::{self, Next},
    response::Response,
    routing::{get, patch, post},
};
use parley_kit::{ErrorCode, domain::UserId};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument as _;

use crate::{ApiError, App, extract::JsonBody};

use self::{channels::*, messages::*, ready::*, social::*};

type AppState = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(parley_kit::metrics::render))
        .route("/v1/auth/dev-token", post(dev_token))
        .route("/v1/channels", post(create_channel).get(list_channels))
        .route("/v1/channels/public", get(list_public))
        .route(
            "/v1/channels/{id}",
            get(get_channel)
                .patch(update_channel)
                .delete(delete_channel),
        )
        .route("/v1/channels/{id}/archive", post(archive))
        .route("/v1/channels/{id}/unarchive", post(unarchive))
        .route("/v1/channels/{id}/bans", get(list_bans))
        .route(
            "/v1/channels/{id}/bans/{user_id}",
            axum::routing::put(put_ban).delete(delete_ban),
        )
        .route(
            "/v1/channels/{id}/mutes/{user_id}",
            axum::routing::put(put_mute).delete(delete_mute),
        )
        .route("/v1/blocks", get(list_blocks))
        .route(
            "/v1/blocks/{user_id}",
            axum::routing::put(put_block).delete(delete_block),
        )
        .route("/v1/channels/{id}/join", post(join_channel))
        .route("/v1/channels/{id}/invites", post(create_invite))
        .route("/v1/invites/{code}/accept", post(accept_invite))
        .route(
            "/v1/channels/{id}/members",
            get(list_members).post(add_member),
        )
        .route(
            "/v1/channels/{id}/members/{user_id}",
            axum::routing::delete(remove_member).put(set_member_role),
        )
        .route("/v1/channels/{id}/owner", post(transfer_ownership))
        .route(
            "/v1/channels/{id}/messages",
            post(send_message).get(list_messages),
        )
        .route(
            "/v1/channels/{id}/messages/{seq}",
            patch(edit_message).delete(delete_message),
        )
        .route("/v1/channels/{id}/read", post(mark_read))
        .route("/v1/channels/{id}/receipts", get(get_receipts))
        .route("/v1/unread", get(get_unread))
        .route("/v1/presence", get(get_presence))
        .route("/v1/devices", post(devices::register))
        .route(
            "/v1/devices/{id}",
            axum::routing::delete(devices::unregister),
        )
        .route(
            "/v1/channels/{id}/notifications",
            axum::routing::put(devices::set_level),
        )
        .route("/v1/channels/{id}/attachments", post(create_attachment))
        .route("/v1/attachments/{id}", get(get_attachment))
        .route("/v1/search", get(search))
        .route("/v1/ws", get(crate::ws::upgrade))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::not_found("no such endpoint for this method")
        })
        .layer(middleware::from_fn(observe))
        .with_state(app)
}

/// Request span (continuing a client's `traceparent`), RED metrics per route, and the
/// `x-trace-id` response header so a bug report leads to the trace.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    parley_kit::propagation::set_parent_from_headers(&span, req.headers());
    let trace_id = span.in_scope(parley_kit::telemetry::current_trace_id);
    if let Some(id) = &trace_id {
        span.record("trace_id", id.as_str());
    }
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    let labels = [
        ("method", method),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_server_requests_total", &labels).increment(1);
    metrics::histogram!("http_server_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    if let Some(id) = trace_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        resp.headers_mut().insert("x-trace-id", id);
    }
    resp
}

#[derive(Deserialize)]
struct DevTokenBody {
    user_id: String,
}

async fn dev_token(
    State(app): AppState,
    JsonBody(b): JsonBody<DevTokenBody>,
) -> Result<Json<Value>, ApiError> {
    if !app.auth.dev_enabled() {
        return Err(ApiError::not_found("dev tokens are disabled"));
    }
    let user = UserId::parse(&b.user_id)?;
    let (token, exp) = app
        .auth
        .issue_dev(&user)
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "cannot issue token"))?;
    let expires_at = chrono::DateTime::from_timestamp(exp as i64, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Ok(Json(json!({"token": token, "expires_at": expires_at})))
}
