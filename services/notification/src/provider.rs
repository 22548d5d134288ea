//! Push providers behind one trait: webhook (signed JSON POST), FCM HTTP v1, APNs over
//! HTTP/2 and Web Push (RFC 8030 + RFC 8291 aes128gcm + VAPID). Each turns a [`Push`] into
//! one HTTP request and the answer into an [`Outcome`]; retries, coalescing and the
//! delivery log are the worker's business (see `delivery`).

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use hmac::{Hmac, Mac as _};
use reqwest::{StatusCode, redirect::Policy};
use secrecy::ExposeSecret as _;
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use crate::{Config, WebPushConfig, allowlist::Allowlist};

/// Header carrying the webhook body's HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "x-parley-signature";
/// Unix seconds when a webhook payload was signed.
pub const TIMESTAMP_HEADER: &str = "x-parley-timestamp";
/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under the device's secret>`.
pub const DEVICE_SIGNATURE_HEADER: &str = "x-parley-device-signature";
/// Header carrying the stable delivery id (same on every retry).
pub const DELIVERY_ID_HEADER: &str = "x-parley-delivery-id";

/// One push: a single message, or several of one channel coalesced.
#[derive(Debug, Clone)]
pub struct Push {
    /// Stable id: the row's delivery_id, or (coalesced) a digest of the rows' ids.
    pub delivery_id: Uuid,
    pub user_id: String,
    pub channel_id: Uuid,
    pub channel_name: String,
    /// The newest message of the push.
    pub message_id: Uuid,
    pub seq: i64,
    pub sender_id: String,
    pub preview: String,
    /// Messages in this push (1 unless coalesced), oldest first.
    pub message_ids: Vec<Uuid>,
    /// Device token (or URL / subscription JSON).
    pub token: String,
    /// Webhook devices: the device's signing secret.
    pub secret: Option<String>,
}

impl Push {
    pub fn count(&self) -> usize {
        self.message_ids.len()
    }

    /// The notification's title.
    pub fn title(&self) -> String {
        format!("#{}", self.channel_name)
    }

    /// The notification's text: the preview, or "N new messages in #channel".
    pub fn text(&self) -> String {
        if self.count() > 1 {
            format!("{} new messages in #{}", self.count(), self.channel_name)
        } else {
            self.preview.clone()
        }
    }

    /// The JSON every provider carries (webhook body, FCM data, APNs custom keys).
    pub fn body(&self) -> serde_json::Value {
        json!({
            "delivery_id": self.delivery_id,
            "user_id": self.user_id,
            "channel_id": self.channel_id,
            "channel_name": self.channel_name,
            "message_id": self.message_id,
            "seq": self.seq,
            "sender_id": self.sender_id,
            "preview": self.preview,
            "count": self.count(),
            "message_ids": self.message_ids,
            "title": self.title(),
            "text": self.text(),
        })
    }
}

/// What a provider said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: done, never again.
    Delivered,
    /// 404/410: the token is gone; the device is removed.
    Gone(String),
    /// Anything else that may pass later (5xx, 429, network, timeouts, 4xx).
    Retry(String),
    /// Can never succeed as configured (malformed token, URL not allowed): dead at once.
    Refused(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Gone(_) => "gone",
            Self::Retry(_) => "retry",
            Self::Refused(_) => "refused",
        }
    }
}

fn classify(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
        Outcome::Gone(format!("HTTP {status}"))
    } else {
        Outcome::Retry(format!("HTTP {status}"))
    }
}

async fn answer(r: Result<reqwest::Response, reqwest::Error>) -> Outcome {
    match r {
        Ok(resp) => classify(resp.status()),
        Err(e) => Outcome::Retry(format!("request failed: {e}")),
    }
}

/// A push provider.
pub trait Provider: Send + Sync {
    /// Sends `push` once.
    fn send<'a>(&'a self, push: &'a Push) -> BoxFuture<'a, Outcome>;
}

/// The lowercase hex HMAC-SHA256 of `body` keyed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Webhook: POST of the JSON body, signed, to an allow-listed URL, no redirects.
pub struct Webhook {
    secret: secrecy::SecretString,
    allow: Arc<Allowlist>,
    timeout: Duration,
}

impl Provider for Webhook {
    fn send<'a>(&'a self, push: &'a Push) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if let Err(e) = self.allow.check_syntax(&push.token) {
                return Outcome::Refused(e);
            }
            // Resolve and check again now (DNS may have changed since registration), then
            // connect to exactly the checked addresses.
            let checked = match self.allow.check(&push.token).await {
                Ok(c) => c,
                Err(e) => return Outcome::Retry(e),
            };
            // No proxy from the environment: the connection goes to the checked addresses.
            let mut builder = reqwest::Client::builder()
                .redirect(Policy::none())
                .no_proxy()
                .timeout(self.timeout);
            if checked.host.parse::<std::net::IpAddr>().is_err() && !checked.host.starts_with('[') {
                builder = builder.resolve_to_addrs(&checked.host, &checked.addrs);
            }
            let client = match builder.build() {
                Ok(c) => c,
                Err(e) => return Outcome::Retry(format!("client: {e}")),
            };
            let body = match serde_json::to_vec(&push.body()) {
                Ok(b) => b,
                Err(e) => return Outcome::Refused(format!("body: {e}")),
            };
            let sig = sign(self.secret.expose_secret().as_bytes(), &body);
            let mut request = client
                .post(checked.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, format!("sha256={sig}"));
            // The device's own signature over the time and the body: a receiver that checks
            // it (and refuses old timestamps) cannot be fed a replayed or forged payload.
            if let Some(secret) = &push.secret {
                let t = chrono::Utc::now().timestamp().to_string();
                let mut signed = Vec::with_capacity(t.len() + 1 + body.len());
                signed.extend_from_slice(t.as_bytes());
                signed.push(b'.');
                signed.extend_from_slice(&body);
                request = request.header(TIMESTAMP_HEADER, &t).header(
                    DEVICE_SIGNATURE_HEADER,
                    format!("sha256={}", sign(secret.as_bytes(), &signed)),
                );
            }
            let mut request = request.header(DELIVERY_ID_HEADER, push.delivery_id.to_string());
            // W3C trace context of the push span (part of the message's trace), so a
            // receiver that traces can join it.
            for (name, value) in parley_kit::propagation::inject_map() {
                request = request.header(name, value);
            }
            answer(request.body(body).send().await).await
        })
    }
}

/// Firebase Cloud Messaging HTTP v1.
pub struct Fcm {
    client: reqwest::Client,
    url: String,
    token: secrecy::SecretString,
}

impl Provider for Fcm {
    fn send<'a>(&'a self, push: &'a Push) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if self.token.expose_secret().is_empty() {
                return Outcome::Retry("fcm.access_token is not configured".into());
            }
            // FCM data values must be strings.
            let data: serde_json::Map<String, serde_json::Value> = push
                .body()
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let s = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), serde_json::Value::String(s))
                })
                .collect();
            let body = json!({
                "message": {
                    "token": push.token,
                    "notification": { "title": push.title(), "body": push.text() },
                    "data": data,
                }
            });
            answer(
                self.client
                    .post(&self.url)
                    .bearer_auth(self.token.expose_secret())
                    .header(DELIVERY_ID_HEADER, push.delivery_id.to_string())
                    .json(&body)
                    .send()
                    .await,
            )
            .await
        })
    }
}

/// Apple Push Notification service (HTTP/2).
pub struct Apns {
    client: reqwest::Client,
    endpoint: String,
    topic: String,
    token: secrecy::SecretString,
}

impl Provider for Apns {
    fn send<'a>(&'a self, push: &'a Push) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if !push.token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Outcome::Refused("APNs device token must be hex".into());
            }
            let mut body = push.body();
            body["aps"] = json!({
                "alert": { "title": push.title(), "body": push.text() },
                "thread-id": push.channel_id,
                "badge": push.count(),
            });
            answer(
                self.client
                    .post(format!("{}/3/device/{}", self.endpoint, push.token))
                    .header("apns-topic", &self.topic)
                    .header("apns-push-type", "alert")
                    .header("apns-id", push.delivery_id.to_string())
                    .header("apns-collapse-id", push.channel_id.to_string())
                    .header(
                        reqwest::header::AUTHORIZATION,
                        format!("bearer {}", self.token.expose_secret()),
                    )
                    .json(&body)
                    .send()
                    .await,
            )
            .await
        })
    }
}

/// Web Push: RFC 8291 (aes128gcm) encryption and VAPID by the `web-push` crate, sent here.
pub struct WebPush {
    client: reqwest::Client,
    cfg: WebPushConfig,
}

impl WebPush {
    /// Parses a PushSubscription JSON and checks its endpoint's host.
    pub fn parse_subscription(
        token: &str,
        cfg: &WebPushConfig,
    ) -> Result<web_push::SubscriptionInfo, String> {
        let info: web_push::SubscriptionInfo = serde_json::from_str(token).map_err(|_| {
            "webpush token must be a PushSubscription JSON {endpoint, keys: {p256dh, auth}}"
                .to_owned()
        })?;
        let url = reqwest::Url::parse(&info.endpoint)
            .map_err(|_| "webpush endpoint must be a URL".to_owned())?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let allowed = cfg.allowed_host_suffixes.iter().any(|s| {
            let s = s.to_ascii_lowercase();
            host == s || host.ends_with(&format!(".{s}"))
        });
        if !matches!(url.scheme(), "https" | "http") || !allowed {
            return Err(format!("webpush endpoint host {host:?} is not allowed"));
        }
        if info.keys.p256dh.is_empty() || info.keys.auth.is_empty() {
            return Err("webpush keys p256dh and auth are required".into());
        }
        Ok(info)
    }

    fn build(&self, push: &Push) -> Result<http::Request<Vec<u8>>, Outcome> {
        let info = Self::parse_subscription(&push.token, &self.cfg).map_err(Outcome::Refused)?;
        let key = self.cfg.vapid_private_key.expose_secret();
        if key.is_empty() {
            return Err(Outcome::Retry(
                "webpush.vapid_private_key is not configured".into(),
            ));
        }
        let payload =
            serde_json::to_vec(&push.body()).map_err(|e| Outcome::Refused(e.to_string()))?;
        let mut vapid = web_push::VapidSignatureBuilder::from_base64(key, &info)
            .map_err(|e| Outcome::Retry(format!("VAPID key: {e}")))?;
        vapid.add_claim("sub", self.cfg.vapid_subject.as_str());
        let signature = vapid
            .build()
            .map_err(|e| Outcome::Refused(format!("VAPID: {e}")))?;
        let mut builder = web_push::WebPushMessageBuilder::new(&info);
        builder.set_ttl(self.cfg.ttl_seconds);
        builder.set_payload(web_push::ContentEncoding::Aes128Gcm, &payload);
        builder.set_vapid_signature(signature);
        let message = builder
            .build()
            .map_err(|e| Outcome::Refused(format!("encryption: {e}")))?;
        let req = web_push::request_builder::build_request::<Vec<u8>>(message);
        // web-push speaks http 0.2; re-express the request in our http 1.
        let (parts, body) = req.into_parts();
        let mut out = http::Request::builder()
            .method(http::Method::POST)
            .uri(parts.uri.to_string());
        for (name, value) in &parts.headers {
            out = out.header(name.as_str(), value.as_bytes());
        }
        out.body(body).map_err(|e| Outcome::Refused(e.to_string()))
    }
}

impl Provider for WebPush {
    fn send<'a>(&'a self, push: &'a Push) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let req = match self.build(push) {
                Ok(r) => r,
                Err(o) => return o,
            };
            let (parts, body) = req.into_parts();
            let mut rb = self.client.post(parts.uri.to_string());
            for (name, value) in &parts.headers {
                if name != http::header::CONTENT_LENGTH {
                    rb = rb.header(name, value);
                }
            }
            answer(rb.body(body).send().await).await
        })
    }
}

/// The providers by platform number (the proto's `Platform`).
pub struct Providers {
    fcm: Fcm,
    apns: Apns,
    webpush: WebPush,
    webhook: Webhook,
}

impl Providers {
    pub fn new(config: &Config, allow: Arc<Allowlist>) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(config.delivery.request_timeout_ms);
        let plain = || {
            reqwest::Client::builder()
                .redirect(Policy::none())
                .timeout(timeout)
        };
        let mut apns = plain();
        if config.apns.http2_prior_knowledge {
            apns = apns.http2_prior_knowledge();
        }
        Ok(Self {
            fcm: Fcm {
                client: plain().build()?,
                url: format!(
                    "{}/v1/projects/{}/messages:send",
                    config.fcm.endpoint.trim_end_matches('/'),
                    config.fcm.project_id
                ),
                token: config.fcm.access_token.clone(),
            },
            apns: Apns {
                client: apns.build()?,
                endpoint: config.apns.endpoint.trim_end_matches('/').to_owned(),
                topic: config.apns.topic.clone(),
                token: config.apns.provider_token.clone(),
            },
            webpush: WebPush {
                client: plain().build()?,
                cfg: config.webpush.clone(),
            },
            webhook: Webhook {
                secret: config.webhook.secret.clone(),
                allow,
                timeout,
            },
        })
    }

    /// The provider of a platform, or None for an unknown number.
    pub fn get(&self, platform: i16) -> Option<&dyn Provider> {
        match platform {
            1 => Some(&self.fcm),
            2 => Some(&self.apns),
            3 => Some(&self.webpush),
            4 => Some(&self.webhook),
            _ => None,
        }
    }
}

/// Metric label of a platform number.
pub fn platform_label(platform: i16) -> &'static str {
    match platform {
        1 => "fcm",
        2 => "apns",
        3 => "webpush",
        4 => "webhook",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn status_classes() {
        assert_eq!(classify(StatusCode::OK), Outcome::Delivered);
        assert!(matches!(classify(StatusCode::GONE), Outcome::Gone(_)));
        assert!(matches!(classify(StatusCode::NOT_FOUND), Outcome::Gone(_)));
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS),
            Outcome::Retry(_)
        ));
    }
}
