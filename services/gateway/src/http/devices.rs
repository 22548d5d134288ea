//! Device and notification-level routes.

use axum::{extract::State, http::StatusCode, response::Response};
use serde::Deserialize;
use serde_json::json;

use crate::{ApiError, api::devices, view};

use super::AppState;
use crate::extract::*;

#[derive(Deserialize)]
pub(super) struct DeviceBody {
    platform: String,
    token: String,
}

/// `POST /v1/devices` → `201` (new) or `200` (already registered) `{"id","platform","created_at"}`.
pub(super) async fn register(
    State(app): AppState,
    Caller(user): Caller,
    JsonBody(b): JsonBody<DeviceBody>,
) -> Result<Response, ApiError> {
    let platform = devices::parse_platform(&b.platform)?;
    let resp = devices::register(&app, &user, platform, b.token).await?;
    let d = resp.device.unwrap_or_default();
    let mut body = json!({"id": d.id, "platform": devices::platform_name(d.platform), "created_at": view::time(d.created_at.as_ref())});
    if !resp.webhook_secret.is_empty() {
        // Only to the owner, on registration: how to check this device's payloads.
        body["secret"] = json!(resp.webhook_secret);
    }
    Ok(created_or_existing(resp.created, body))
}

/// `DELETE /v1/devices/{id}` → `204`.
pub(super) async fn unregister(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<StatusCode, ApiError> {
    devices::unregister(&app, &user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct LevelBody {
    level: String,
}

/// `PUT /v1/channels/{id}/notifications` `{"level"}` → `204`.
pub(super) async fn set_level(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<LevelBody>,
) -> Result<StatusCode, ApiError> {
    let channel = channel_path(&id)?;
    let level = devices::parse_level(&b.level)?;
    devices::set_level(&app, &user, &channel, level).await?;
    Ok(StatusCode::NO_CONTENT)
}
