//! Message routes: send (REST; the WebSocket shares `prepare_send`), history, edit, delete.

use axum::{Json, extract::State, http::StatusCode, response::Response};
use parley_kit::domain::{ClientMsgId, MessageBody, UserId};
use parley_proto::messaging::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, App, ratelimit::Kind, view};

use super::{AppState, extract::*};

#[derive(Deserialize)]
pub(super) struct SendBody {
    client_msg_id: String,
    body: String,
}

/// Validates, rate-limits and sends one message; shared by REST and WebSocket.
pub(crate) async fn send(
    app: &App,
    user: &UserId,
    channel_id: &str,
    client_msg_id: &str,
    body: &str,
) -> Result<pb::SendMessageResponse, ApiError> {
    let req = prepare_send(app, user, channel_id, client_msg_id, body).await?;
    app.sender.send(user, req).await
}

/// A send validated and counted against the sender's rate limit, ready for messaging.
pub(crate) async fn prepare_send(
    app: &App,
    user: &UserId,
    channel_id: &str,
    client_msg_id: &str,
    body: &str,
) -> Result<pb::SendMessageRequest, ApiError> {
    let channel_id = channel_path(channel_id)?;
    let cid = ClientMsgId::parse(client_msg_id)?;
    let body = MessageBody::parse(body, app.config.limits.max_message_bytes)?;
    app.limiter.check(Kind::Messages, user.as_str()).await?;
    Ok(pb::SendMessageRequest {
        channel_id,
        client_msg_id: cid.as_str().to_owned(),
        body: body.as_str().to_owned(),
    })
}

pub(super) async fn send_message(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<SendBody>,
) -> Result<Response, ApiError> {
    let resp = send(&app, &user, &id, &b.client_msg_id, &b.body).await?;
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
    let channel_id = channel_path(&id)?;
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
    let before = cursor("before", q.before)?;
    let after = cursor("after", q.after)?;
    if before.is_some() && after.is_some() {
        return Err(ApiError::invalid("use either before or after, not both"));
    }
    let (messages, has_more) = history(&app, &user, channel_id, before, after, limit).await?;
    Ok(Json(
        json!({"messages": messages.iter().map(view::message).collect::<Vec<_>>(), "has_more": has_more}),
    ))
}

/// One history page of `channel` for `user` (REST pages and the WebSocket's gap fills and
/// replays): strictly below `before` newest first, or strictly above `after` oldest first.
pub(crate) async fn history(
    app: &App,
    user: &UserId,
    channel_id: String,
    before: Option<u64>,
    after: Option<u64>,
    limit: u32,
) -> Result<(Vec<pb::Message>, bool), ApiError> {
    let req = pb::ListMessagesRequest {
        channel_id,
        before,
        after,
        limit,
    };
    let resp = app
        .messaging
        .clone()
        .list_messages(grpc(user, req)?)
        .await?
        .into_inner();
    Ok((resp.messages, resp.has_more))
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
    let channel_id = channel_path(&id)?;
    let seq = seq_path(&seq)?;
    let body = MessageBody::parse(&b.body, app.config.limits.max_message_bytes)?;
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::EditMessageRequest {
        channel_id,
        seq,
        body: body.as_str().to_owned(),
    };
    let resp = app
        .messaging
        .clone()
        .edit_message(grpc(&user, req)?)
        .await?
        .into_inner();
    Ok(Json(
        resp.message
            .as_ref()
            .map(view::message)
            .unwrap_or(Value::Null),
    ))
}

pub(super) async fn delete_message(
    State(app): AppState,
    Caller(user): Caller,
    P((id, seq)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let req = pb::DeleteMessageRequest {
        channel_id: channel_path(&id)?,
        seq: seq_path(&seq)?,
    };
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    app.messaging
        .clone()
        .delete_message(grpc(&user, req)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
