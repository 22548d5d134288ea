//! Bearer-token verification (HS256 shared secret, or RS256 public key) and dev tokens.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parley_kit::domain::UserId;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};

use crate::{ApiError, AuthConfig};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Verifies tokens; issues dev tokens when enabled.
pub struct Verifier {
    decoding: DecodingKey,
    validation: Validation,
    /// Present only when HS256 is used and dev tokens are enabled.
    dev: Option<(EncodingKey, u64)>,
}

impl Verifier {
    pub fn new(cfg: &AuthConfig) -> anyhow::Result<Self> {
        let (decoding, alg) = if cfg.rs256_public_key_pem.trim().is_empty() {
            let secret = cfg.hs256_secret.expose_secret();
            anyhow::ensure!(
                secret.len() >= 16,
                "auth.hs256_secret must be at least 16 bytes"
            );
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )
        } else {
            (
                DecodingKey::from_rsa_pem(cfg.rs256_public_key_pem.as_bytes())?,
                Algorithm::RS256,
            )
        };
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let dev = (cfg.dev_tokens && alg == Algorithm::HS256).then(|| {
            (
                EncodingKey::from_secret(cfg.hs256_secret.expose_secret().as_bytes()),
                cfg.dev_token_ttl_secs,
            )
        });
        Ok(Self {
            decoding,
            validation,
            dev,
        })
    }

    /// The user a token was issued to, or `unauthenticated`.
    pub fn verify(&self, token: &str) -> Result<UserId, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::InvalidSignature => "bad token signature",
                    ErrorKind::InvalidAlgorithm => "token algorithm not accepted",
                    ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (sub, exp)",
                    _ => "malformed token",
                };
                ApiError::unauthenticated(why)
            })?;
        UserId::parse(&data.claims.sub)
            .map_err(|_| ApiError::unauthenticated("token subject is not a valid user id"))
    }

    /// Whether `POST /v1/auth/dev-token` is enabled.
    pub fn dev_enabled(&self) -> bool {
        self.dev.is_some()
    }

    /// Issues a token for `user` (dev only); returns the token and its expiry (unix secs).
    pub fn issue_dev(&self, user: &UserId) -> Option<(String, u64)> {
        let (key, ttl) = self.dev.as_ref()?;
        let exp = (chrono::Utc::now().timestamp().max(0) as u64) + ttl;
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: user.to_string(),
                exp,
            },
            key,
        )
        .ok()?;
        Some((token, exp))
    }
}

/// The token of a request: `Authorization: Bearer …`, or `?token=` (browsers' WebSocket).
pub fn bearer(
    headers: &axum::http::HeaderMap,
    query_token: Option<&str>,
) -> Result<String, ApiError> {
    if let Some(h) = headers.get(axum::http::header::AUTHORIZATION) {
        let h = h
            .to_str()
            .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthenticated("Authorization must be `Bearer <token>`"))?;
        return Ok(token.trim().to_owned());
    }
    query_token
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::unauthenticated("missing bearer token"))
}
