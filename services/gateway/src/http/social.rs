//! Presence and receipts routes: presence queries, read marks, receipts, unread counts.

use axum::{Json, extract::State, http::StatusCode};
use parley_kit::domain::UserId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    ApiError,
    api::social::{self, Mark},
    view,
};

use super::AppState;
use crate::extract::*;

#[derive(Deserialize)]
pub(super) struct PresenceQuery {
    user_ids: Option<String>,
}

pub(super) async fn get_presence(
    State(app): AppState,
    Caller(user): Caller,
    Q(q): Q<PresenceQuery>,
) -> Result<Json<Value>, ApiError> {
    let raw = q.user_ids.unwrap_or_default();
    let ids = raw
        .split(',')
        .filter(|p| !p.is_empty())
        .map(UserId::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let list: Vec<Value> = social::query(&app, &user, ids)
        .await?
        .iter()
        .map(view::presence)
        .collect();
    Ok(Json(json!({"presence": list})))
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
    let channel = channel_path(&id)?;
    social::mark(&app, &user, &channel, b.seq, Mark::Read).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get_receipts(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    let channel = channel_path(&id)?;
    let list = social::channel_receipts(&app, &user, &channel).await?;
    Ok(Json(view::receipts(&list)))
}

pub(super) async fn get_unread(
    State(app): AppState,
    Caller(user): Caller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view::unread(&social::unread(&app, &user).await?)))
}

pub(super) async fn put_block(
    State(app): AppState,
    Caller(user): Caller,
    P(target): P<String>,
) -> Result<StatusCode, ApiError> {
    let target = UserId::parse(&target)?;
    let created = social::set_block(&app, &user, &target, true).await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}

pub(super) async fn delete_block(
    State(app): AppState,
    Caller(user): Caller,
    P(target): P<String>,
) -> Result<StatusCode, ApiError> {
    let target = UserId::parse(&target)?;
    social::set_block(&app, &user, &target, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_blocks(
    State(app): AppState,
    Caller(user): Caller,
) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = social::blocks(&app, &user)
        .await?
        .iter()
        .map(view::block)
        .collect();
    Ok(Json(json!({"blocks": list})))
}
