//! Message routes: send, history, edit, delete.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse as _, Response},
};
use parley_kit::domain::ClientMsgId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    ApiError,
    api::{
        messages::{self, Page},
        parse_seq,
    },
    view,
};

use super::AppState;
use crate::extract::*;

#[derive(Deserialize)]
pub(super) struct SendBody {
    client_msg_id: String,
    /// May be left out when `attachment_ids` are given.
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    attachment_ids: Vec<String>,
}

pub(super) async fn send_message(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<SendBody>,
) -> Result<Response, ApiError> {
    let channel = channel_path(&id)?;
    let cid = ClientMsgId::parse(&b.client_msg_id)?;
    if b.body.is_none() && b.attachment_ids.is_empty() {
        return Err(ApiError::invalid(
            "`body` is required (unless `attachment_ids` are given)",
        ));
    }
    let content = messages::Content {
        body: b.body.unwrap_or_default(),
        attachment_ids: b.attachment_ids,
    };
    let resp = messages::send(&app, &user, &channel, &cid, &content).await?;
    let body = resp
        .message
        .as_ref()
        .map(view::message)
        .unwrap_or(Value::Null);
    Ok(created_or_existing(resp.created, body))
}

pub(super) async fn list_messages(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    Q(q): Q<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let channel = channel_path(&id)?;
    let limit = parse_limit(&app, q.limit.as_deref())?;
    let cursor = |name: &str, v: Option<String>| -> Result<Option<u64>, ApiError> {
        v.map(|s| {
            s.parse::<u64>()
                .ok()
                .filter(|n| *n <= i64::MAX as u64)
                .ok_or_else(|| {
                    ApiError::invalid(format!("{name} must be a non-negative integer seq"))
                })
        })
        .transpose()
    };
    let page = match (cursor("before", q.before)?, cursor("after", q.after)?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("use either before or after, not both"));
        }
        (Some(b), None) => Page::Before(b),
        (None, Some(a)) => Page::After(a),
        (None, None) => Page::Newest,
    };
    let (messages, has_more) = messages::history(&app, &user, &channel, page, limit).await?;
    Ok(Json(
        json!({"messages": messages.iter().map(view::message).collect::<Vec<_>>(), "has_more": has_more}),
    ))
}

#[derive(Deserialize)]
pub(super) struct EditBody {
    body: String,
}

pub(super) async fn edit_message(
    State(app): AppState,
    Caller(user): Caller,
    P((id, seq)): P<(String, String)>,
    JsonBody(b): JsonBody<EditBody>,
) -> Result<Json<Value>, ApiError> {
    let channel = channel_path(&id)?;
    let seq = parse_seq(&seq)?;
    let message = messages::edit(&app, &user, &channel, seq, &b.body).await?;
    Ok(Json(
        message.as_ref().map(view::message).unwrap_or(Value::Null),
    ))
}

pub(super) async fn delete_message(
    State(app): AppState,
    Caller(user): Caller,
    P((id, seq)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let channel = channel_path(&id)?;
    messages::delete(&app, &user, &channel, parse_seq(&seq)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct UploadBody {
    filename: String,
    content_type: String,
    size: u64,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
    #[serde(default)]
    duration_ms: Option<u32>,
}

/// `POST /v1/channels/{id}/attachments` → 201 with the presigned upload.
pub(super) async fn create_attachment(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<UploadBody>,
) -> Result<Response, ApiError> {
    let channel = channel_path(&id)?;
    let req = parley_proto::messaging::v1::CreateAttachmentRequest {
        channel_id: channel.to_string(),
        filename: b.filename,
        content_type: b.content_type,
        size: b.size,
        width: b.width,
        height: b.height,
        duration_ms: b.duration_ms,
    };
    let resp = messages::create_attachment(&app, &user, req).await?;
    Ok((StatusCode::CREATED, Json(view::upload(&resp))).into_response())
}

/// `GET /v1/attachments/{id}` → 302 to the bytes (a presigned GET, or the public URL).
pub(super) async fn get_attachment(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Response, ApiError> {
    let resp = messages::attachment(&app, &user, &id).await?;
    let location = axum::http::HeaderValue::from_str(&resp.download_url)
        .map_err(|_| ApiError::new(parley_kit::ErrorCode::Internal, "bad download URL"))?;
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut()
        .insert(axum::http::header::LOCATION, location);
    // The redirect names a short-lived URL (or one for members only): nobody caches it.
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("private, no-store"),
    );
    Ok(r)
}

#[derive(Deserialize)]
pub(super) struct SearchQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

/// `GET /v1/search?q=&channel_id=&cursor=&limit=`.
pub(super) async fn search(
    State(app): AppState,
    Caller(user): Caller,
    Q(q): Q<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    let query = q.q.unwrap_or_default();
    if query.trim().is_empty() {
        return Err(ApiError::invalid("`q` must not be empty"));
    }
    let limit = match q.limit.as_deref() {
        None | Some("") => 0,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::invalid("limit must be a positive integer"))?,
    };
    let channel_id = match q.channel_id.as_deref() {
        None | Some("") => String::new(),
        Some(c) => channel_path(c)?.to_string(),
    };
    let req = parley_proto::messaging::v1::SearchMessagesRequest {
        query,
        channel_id,
        cursor: q.cursor.unwrap_or_default(),
        limit,
    };
    let resp = messages::search(&app, &user, req).await?;
    Ok(Json(view::search(&resp)))
}
