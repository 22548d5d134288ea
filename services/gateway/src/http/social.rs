//! Presence and receipts routes: presence queries, read marks, receipts, unread counts.

use axum::{Json, extract::State, http::StatusCode};
use parley_kit::domain::UserId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, App, ratelimit::Kind};

use super::{AppState, extract::*};

#[derive(Deserialize)]
pub(super) struct PresenceQuery {
    user_ids: Option<String>,
}

/// Most users one `GET /v1/presence` may ask about (the presence batch limit).
pub(super) const MAX_PRESENCE_QUERY: usize = 500;

pub(super) async fn get_presence(
    State(app): AppState,
    Caller(user): Caller,
    Q(q): Q<PresenceQuery>,
) -> Result<Json<Value>, ApiError> {
    app.limiter
        .check(Kind::PresenceQueries, user.as_str())
        .await?;
    let raw = q.user_ids.unwrap_or_default();
    let mut ids = Vec::new();
    for part in raw.split(',').filter(|p| !p.is_empty()) {
        ids.push(UserId::parse(part)?.to_string());
    }
    if ids.is_empty() || ids.len() > MAX_PRESENCE_QUERY {
        return Err(ApiError::invalid(format!(
            "user_ids must list 1-{MAX_PRESENCE_QUERY} comma-separated user ids"
        )));
    }
    let presence = app
        .presence
        .as_ref()
        .ok_or_else(|| ApiError::not_configured("presence"))?;
    let (visible, hidden) = crate::presence::visible(&app, &user, ids.clone()).await?;
    let mut found: std::collections::HashMap<String, Value> = if visible.is_empty() {
        Default::default()
    } else {
        presence.get(visible).await?
    }
    .iter()
    .chain(
        hidden
            .into_iter()
            .map(crate::presence::hidden)
            .collect::<Vec<_>>()
            .iter(),
    )
    .map(|p| (p.user_id.clone(), crate::presence::view(p)))
    .collect();
    let list: Vec<Value> = ids.iter().filter_map(|u| found.remove(u)).collect();
    Ok(Json(json!({"presence": list})))
}

pub(super) fn receipts(app: &App) -> Result<&crate::receipts::Receipts, ApiError> {
    app.receipts
        .as_ref()
        .ok_or_else(|| ApiError::not_configured("receipts"))
}

#[derive(Deserialize)]
pub(super) struct ReadBody {
    seq: u64,
}

pub(super) async fn mark_read(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<ReadBody>,
) -> Result<StatusCode, ApiError> {
    let channel_id = channel_path(&id)?;
    app.limiter.check(Kind::ReadMarks, user.as_str()).await?;
    receipts(&app)?.read(&user, channel_id, b.seq).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get_receipts(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    let channel_id = channel_path(&id)?;
    Ok(Json(receipts(&app)?.receipts(&user, channel_id).await?))
}

pub(super) async fn get_unread(
    State(app): AppState,
    Caller(user): Caller,
) -> Result<Json<Value>, ApiError> {
    let u = receipts(&app)?.unread(&user).await?;
    Ok(Json(crate::receipts::unread_view(&u)))
}
