//! Devices for push and per-channel notification levels (notification service).

use parley_kit::domain::{ChannelId, UserId, parse_uuid};
use parley_proto::notification::v1 as pb;

use crate::{
    ApiError, App,
    ratelimit::Kind,
    upstream::{
        notification::{count_error, service},
        request,
    },
};

/// Longest device token (push providers' tokens and web push subscriptions fit).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The platform of a device: `fcm`, `apns`, `webpush` or `webhook`.
pub fn parse_platform(s: &str) -> Result<pb::Platform, ApiError> {
    match s {
        "fcm" => Ok(pb::Platform::Fcm),
        "apns" => Ok(pb::Platform::Apns),
        "webpush" => Ok(pb::Platform::Webpush),
        "webhook" => Ok(pb::Platform::Webhook),
        _ => Err(ApiError::invalid(
            "platform must be one of fcm, apns, webpush, webhook",
        )),
    }
}

pub fn platform_name(p: i32) -> &'static str {
    match pb::Platform::try_from(p) {
        Ok(pb::Platform::Fcm) => "fcm",
        Ok(pb::Platform::Apns) => "apns",
        Ok(pb::Platform::Webpush) => "webpush",
        Ok(pb::Platform::Webhook) => "webhook",
        _ => "unknown",
    }
}

/// Registers a device of the caller's (idempotent: the same token again answers the
/// existing device, `created` false). Counts against `rate.device_registrations`.
pub async fn register(
    app: &App,
    user: &UserId,
    platform: pb::Platform,
    token: String,
) -> Result<pb::RegisterDeviceResponse, ApiError> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(ApiError::invalid(format!(
            "token must be 1-{MAX_TOKEN_BYTES} bytes"
        )));
    }
    app.limiter
        .check(Kind::DeviceRegistrations, user.as_str())
        .await?;
    let req = request(
        user,
        pb::RegisterDeviceRequest {
            platform: platform as i32,
            token,
        },
    )?;
    Ok(service(app)?
        .register_device(req)
        .await
        .map_err(|e| count_error("register", e))?
        .into_inner())
}

/// Removes a device of the caller's.
pub async fn unregister(app: &App, user: &UserId, device_id: &str) -> Result<(), ApiError> {
    let device_id = parse_uuid("device id", device_id)?.to_string();
    let req = request(user, pb::UnregisterDeviceRequest { device_id })?;
    service(app)?
        .unregister_device(req)
        .await
        .map_err(|e| count_error("unregister", e))?;
    Ok(())
}

/// The level of a channel's notifications: `all`, `mentions` or `none`.
pub fn parse_level(s: &str) -> Result<pb::NotificationLevel, ApiError> {
    match s {
        "all" => Ok(pb::NotificationLevel::All),
        "mentions" => Ok(pb::NotificationLevel::Mentions),
        "none" => Ok(pb::NotificationLevel::None),
        _ => Err(ApiError::invalid(
            "level must be one of all, mentions, none",
        )),
    }
}

/// Sets the caller's notification level for a channel.
pub async fn set_level(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    level: pb::NotificationLevel,
) -> Result<(), ApiError> {
    let req = request(
        user,
        pb::SetChannelPreferenceRequest {
            channel_id: channel.to_string(),
            level: level as i32,
        },
    )?;
    service(app)?
        .set_channel_preference(req)
        .await
        .map_err(|e| count_error("preference", e))?;
    Ok(())
}
