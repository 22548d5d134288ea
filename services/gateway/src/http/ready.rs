//! `/readyz`: whether this gateway can serve (dependencies reachable, not draining).

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::AppState;

pub(super) async fn readyz(State(app): AppState) -> Response {
    if app.stopping.is_cancelled() || app.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let two_secs = std::time::Duration::from_secs(2);
    let optional = |c: Option<tonic::transport::Channel>| async move {
        match c {
            Some(c) => Some(serving(c, two_secs).await),
            None => None,
        }
    };
    let (messaging_ok, presence_ok, receipts_ok, notification_ok) = tokio::join!(
        serving(app.messaging_channel.clone(), two_secs),
        optional(app.presence.as_ref().map(|p| p.channel())),
        optional(app.receipts.as_ref().map(|r| r.channel())),
        optional(app.notification.as_ref().map(|(_, ch)| ch.clone())),
    );
    let mut redis = app.redis.clone();
    let redis_ok = tokio::time::timeout(
        two_secs,
        redis::cmd("PING").query_async::<String>(&mut redis),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    // Presence, receipts and notification are reported but do not gate readiness: chat must keep
    // working through their outage (a gateway taken out of rotation would stop it).
    let body = Json(json!({
        "messaging": messaging_ok, "redis": redis_ok, "pubsub": app.hub.connected(),
        "presence": presence_ok, "receipts": receipts_ok, "notification": notification_ok,
    }));
    if messaging_ok && redis_ok && app.hub.connected() {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// Whether the gRPC service behind `channel` reports SERVING within `within`.
pub(super) async fn serving(
    channel: tonic::transport::Channel,
    within: std::time::Duration,
) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let probe = health.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    tokio::time::timeout(within, probe).await.is_ok_and(|r| {
        r.is_ok_and(|r| {
            r.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
    })
}
