//! Message routes: send, history, edit, delete.

use axum::{Json, extract::State, http::StatusCode, response::Response};
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
    body: String,
}

pub(super) async fn send_message(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<SendBody>,
) -> Result<Response, ApiError> {
    let channel = channel_path(&id)?;
    let cid = ClientMsgId::parse(&b.client_msg_id)?;
    let resp = messages::send(&app, &user, &channel, &cid, &b.body).await?;
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
