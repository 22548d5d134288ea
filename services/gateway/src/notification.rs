//! The gateway's side of notification: device registration and per-channel levels.
//! Push fan-out itself happens in the notification service, from the event stream.

use axum::{extract::State, http::StatusCode, response::Response};
use parley_kit::{domain::parse_uuid, propagation::Outbound};
use parley_proto::notification::v1::{
    self as pb, notification_service_client::NotificationServiceClient,
};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{
    ApiError, App,
    http::{Caller, JsonBody, P, created_or_existing, grpc},
};

pub type Client = NotificationServiceClient<InterceptedService<Channel, Outbound>>;

pub fn client(channel: Channel) -> Client {
    NotificationServiceClient::with_interceptor(channel, Outbound)
}

fn service(app: &App) -> Result<Client, ApiError> {
    app.notification
        .clone()
        .map(|(c, _)| c)
        .ok_or_else(|| ApiError::not_configured("notification"))
}

fn count_error(op: &'static str, e: tonic::Status) -> ApiError {
    metrics::counter!("gateway_notification_errors_total", "op" => op).increment(1);
    if matches!(
        e.code(),
        tonic::Code::Unavailable | tonic::Code::Internal | tonic::Code::Unknown
    ) {
        tracing::warn!(op, code = ?e.code(), error = %e.message(), "notification call failed");
    }
    e.into()
}

fn platform_name(p: i32) -> &'static str {
    match pb::Platform::try_from(p) {
        Ok(pb::Platform::Fcm) => "fcm",
        Ok(pb::Platform::Apns) => "apns",
        Ok(pb::Platform::Webpush) => "webpush",
        Ok(pb::Platform::Webhook) => "webhook",
        _ => "unknown",
    }
}

#[derive(Deserialize)]
pub struct DeviceBody {
    platform: String,
    token: String,
}

/// `POST /v1/devices` → `201` (new) or `200` (already registered) `{"id","platform","created_at"}`.
pub async fn register(
    State(app): State<Arc<App>>,
    Caller(user): Caller,
    JsonBody(b): JsonBody<DeviceBody>,
) -> Result<Response, ApiError> {
    let platform = match b.platform.as_str() {
        "fcm" => pb::Platform::Fcm,
        "apns" => pb::Platform::Apns,
        "webpush" => pb::Platform::Webpush,
        "webhook" => pb::Platform::Webhook,
        _ => {
            return Err(ApiError::invalid(
                "platform must be one of fcm, apns, webpush, webhook",
            ));
        }
    };
    if b.token.is_empty() || b.token.len() > 4096 {
        return Err(ApiError::invalid("token must be 1-4096 bytes"));
    }
    app.limiter
        .check(crate::ratelimit::Kind::DeviceRegistrations, user.as_str())
        .await?;
    let req = grpc(
        &user,
        pb::RegisterDeviceRequest {
            platform: platform as i32,
            token: b.token,
        },
    )?;
    let resp = service(&app)?
        .register_device(req)
        .await
        .map_err(|e| count_error("register", e))?
        .into_inner();
    let d = resp.device.unwrap_or_default();
    let mut body = json!({"id": d.id, "platform": platform_name(d.platform), "created_at": crate::view::time(d.created_at.as_ref())});
    if !resp.webhook_secret.is_empty() {
        // Only to the owner, on registration: how to check this device's payloads.
        body["secret"] = json!(resp.webhook_secret);
    }
    Ok(created_or_existing(resp.created, body))
}

/// `DELETE /v1/devices/{id}` → `204`.
pub async fn unregister(
    State(app): State<Arc<App>>,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<StatusCode, ApiError> {
    let device_id = parse_uuid("device id", &id)?.to_string();
    let req = grpc(&user, pb::UnregisterDeviceRequest { device_id })?;
    service(&app)?
        .unregister_device(req)
        .await
        .map_err(|e| count_error("unregister", e))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct LevelBody {
    level: String,
}

/// `PUT /v1/channels/{id}/notifications` `{"level"}` → `204`.
pub async fn set_level(
    State(app): State<Arc<App>>,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<LevelBody>,
) -> Result<StatusCode, ApiError> {
    let channel_id = parse_uuid("channel id", &id)?.to_string();
    let level = match b.level.as_str() {
        "all" => pb::NotificationLevel::All,
        "mentions" => pb::NotificationLevel::Mentions,
        "none" => pb::NotificationLevel::None,
        _ => {
            return Err(ApiError::invalid(
                "level must be one of all, mentions, none",
            ));
        }
    };
    let req = grpc(
        &user,
        pb::SetChannelPreferenceRequest {
            channel_id,
            level: level as i32,
        },
    )?;
    service(&app)?
        .set_channel_preference(req)
        .await
        .map_err(|e| count_error("preference", e))?;
    Ok(StatusCode::NO_CONTENT)
}
