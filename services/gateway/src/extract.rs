//! Extractors that turn raw requests into validated input (or an API error), and the
//! small helpers every route shares.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use parley_kit::{
    ErrorCode,
    domain::{ChannelId, UserId},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{ApiError, App};

/// The authenticated caller.
pub struct Caller(pub UserId);

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let token = crate::auth::bearer(&parts.headers, None)?;
        Ok(Self(app.auth.verify(&token)?))
    }
}

/// A JSON body read within the configured size limit, with API errors for empty,
/// oversized and malformed bodies.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let body = read_body(req, app).await?;
        parse_json(&body).map(Self)
    }
}

/// Like [`JsonBody`], but an empty body reads as `T::default()` (for requests whose every
/// field is optional).
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<Arc<App>> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let body = read_body(req, app).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        parse_json(&body).map(Self)
    }
}

/// The request body, at most `http.max_body_bytes` (beyond: `413 too_large`).
async fn read_body(req: Request, app: &App) -> Result<Bytes, ApiError> {
    let limit = app.config.http.max_body_bytes;
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("request body over {limit} bytes"),
            )
        })
}

pub(crate) fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))
}

/// Query strings whose malformed values are API errors, not axum's plain-text rejections.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<App>> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, app)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e| ApiError::invalid(format!("bad query: {}", e.body_text())))
    }
}

/// Path parameters whose malformed values (e.g. invalid UTF-8) are API errors, not axum's
/// plain-text rejections.
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<App>> for P<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, app)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))
    }
}

/// A channel id in a path.
pub(crate) fn channel_path(id: &str) -> Result<ChannelId, ApiError> {
    Ok(ChannelId::parse("channel id", id)?)
}

/// `201` with `body` when the request created something, `200` when it found it existing
/// (idempotent creates: retried sends, direct channels, members, devices).
pub(crate) fn created_or_existing(created: bool, body: Value) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    pub(crate) limit: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) before: Option<String>,
    pub(crate) after: Option<String>,
}

pub(crate) fn parse_limit(app: &App, raw: Option<&str>) -> Result<u32, ApiError> {
    let max = app.config.limits.max_page;
    match raw {
        None => Ok(app.config.limits.default_page),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::invalid(format!("limit must be an integer from 1 to {max}"))),
    }
}
