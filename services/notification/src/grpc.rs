//! The NotificationService gRPC API: a user's devices and channel preferences.

use std::sync::Arc;

use parley_kit::propagation::caller;
use parley_proto::notification::v1::{
    self as pb, notification_service_server::NotificationService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{Config, Error, allowlist::Allowlist, provider, store, upstream::Messaging};

/// Longest accepted device token.
const MAX_TOKEN: usize = 4096;

pub struct Notification {
    pool: PgPool,
    messaging: Messaging,
    allow: Arc<Allowlist>,
    config: Arc<Config>,
}

impl Notification {
    pub fn new(
        pool: PgPool,
        messaging: Messaging,
        allow: Arc<Allowlist>,
        config: Arc<Config>,
    ) -> Self {
        Self {
            pool,
            messaging,
            allow,
            config,
        }
    }

    /// The caller, proven to be a member of `channel` by messaging (as the caller).
    async fn member(&self, caller: &str, channel: &str) -> Result<Uuid, Status> {
        let id = parse_channel(channel)?;
        self.messaging.channel(id, caller).await?;
        Ok(id)
    }
}

fn parse_channel(s: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(s).map_err(|_| Error::BadArgument("channel_id must be a UUID".into()).into())
}

fn user(req: &Request<impl Sized>) -> Result<String, Status> {
    let u = caller(req)?;
    parley_kit::domain::UserId::parse(&u)?;
    Ok(u)
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn device(d: &store::Device) -> pb::Device {
    pb::Device {
        id: d.id.to_string(),
        platform: i32::from(d.platform),
        created_at: Some(ts(d.created_at)),
    }
}

fn level(raw: i32) -> Result<i16, Status> {
    match pb::NotificationLevel::try_from(raw) {
        Ok(pb::NotificationLevel::All) => Ok(1),
        Ok(pb::NotificationLevel::Mentions) => Ok(2),
        Ok(pb::NotificationLevel::None) => Ok(3),
        _ => Err(Error::BadArgument("level is required".into()).into()),
    }
}

#[tonic::async_trait]
impl NotificationService for Notification {
    #[tracing::instrument(skip_all, fields(platform = req.get_ref().platform))]
    async fn register_device(
        &self,
        req: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        let caller = user(&req)?;
        let pb::RegisterDeviceRequest { platform, token } = req.into_inner();
        let platform = match pb::Platform::try_from(platform) {
            Ok(p) if p != pb::Platform::Unspecified => p,
            _ => return Err(Error::BadArgument("platform is required".into()).into()),
        };
        if token.is_empty() || token.len() > MAX_TOKEN {
            return Err(Error::BadArgument(format!("token must be 1-{MAX_TOKEN} bytes")).into());
        }
        parley_kit::domain::check_text("token", &token)
            .map_err(|e| Error::BadArgument(e.message))?;
        match platform {
            pb::Platform::Webhook => {
                self.allow.check(&token).await.map_err(Error::BadArgument)?;
            }
            pb::Platform::Webpush => {
                provider::WebPush::parse_subscription(&token, &self.config.webpush)
                    .map_err(Error::BadArgument)?;
            }
            _ => {}
        }
        let (d, created) =
            store::register_device(&self.pool, &caller, platform as i16, &token).await?;
        Ok(Response::new(pb::RegisterDeviceResponse {
            device: Some(device(&d)),
            created,
            webhook_secret: d.secret.clone().unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn unregister_device(
        &self,
        req: Request<pb::UnregisterDeviceRequest>,
    ) -> Result<Response<pb::UnregisterDeviceResponse>, Status> {
        let caller = user(&req)?;
        let id = Uuid::parse_str(&req.get_ref().device_id)
            .map_err(|_| Error::BadArgument("device_id must be a UUID".into()))?;
        if !store::unregister_device(&self.pool, &caller, id).await? {
            return Err(Error::NotFound("no such device".into()).into());
        }
        Ok(Response::new(pb::UnregisterDeviceResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let caller = user(&req)?;
        let devices = store::list_devices(&self.pool, &caller).await?;
        Ok(Response::new(pb::ListDevicesResponse {
            devices: devices.iter().map(device).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn set_channel_preference(
        &self,
        req: Request<pb::SetChannelPreferenceRequest>,
    ) -> Result<Response<pb::SetChannelPreferenceResponse>, Status> {
        let caller = user(&req)?;
        let pb::SetChannelPreferenceRequest {
            channel_id,
            level: raw,
        } = req.into_inner();
        let lvl = level(raw)?;
        let channel = self.member(&caller, &channel_id).await?;
        let at = store::set_preference(&self.pool, channel, &caller, lvl).await?;
        Ok(Response::new(pb::SetChannelPreferenceResponse {
            preference: Some(pb::ChannelPreference {
                channel_id: channel.to_string(),
                level: raw,
                updated_at: Some(ts(at)),
            }),
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn get_channel_preference(
        &self,
        req: Request<pb::GetChannelPreferenceRequest>,
    ) -> Result<Response<pb::GetChannelPreferenceResponse>, Status> {
        let caller = user(&req)?;
        let channel = self.member(&caller, &req.get_ref().channel_id).await?;
        let pref = store::preference(&self.pool, channel, &caller).await?;
        let (level, updated_at) = match pref {
            Some((l, at)) => (i32::from(l), Some(ts(at))),
            None => (pb::NotificationLevel::All as i32, None),
        };
        Ok(Response::new(pb::GetChannelPreferenceResponse {
            preference: Some(pb::ChannelPreference {
                channel_id: channel.to_string(),
                level,
                updated_at,
            }),
        }))
    }
}
