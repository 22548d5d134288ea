//! Channel routes: create, list, get, members.

use axum::{Json, extract::State, http::StatusCode, response::Response};
use parley_kit::domain::UserId;
use parley_proto::messaging::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, ratelimit::Kind, view};

use super::{AppState, extract::*};

#[derive(Deserialize)]
pub(super) struct CreateChannelBody {
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

pub(super) async fn create_channel(
    State(app): AppState,
    Caller(user): Caller,
    JsonBody(b): JsonBody<CreateChannelBody>,
) -> Result<Response, ApiError> {
    let kind = match b.kind.as_str() {
        "group" => pb::ChannelKind::Group,
        "direct" => pb::ChannelKind::Direct,
        _ => return Err(ApiError::invalid("kind must be \"group\" or \"direct\"")),
    };
    let mut added: Vec<&str> = Vec::with_capacity(b.members.len());
    for m in &b.members {
        UserId::parse(m)?;
        if m != user.as_str() && !added.contains(&m.as_str()) {
            added.push(m);
        }
    }
    // Members of a new group count as members added by its creator (`rate.joins`).
    let joins = match kind {
        pb::ChannelKind::Group => added.len() as u32,
        _ => 0,
    };
    let req = pb::CreateChannelRequest {
        kind: kind as i32,
        name: b.name,
        members: b.members,
    };
    let req = grpc(&user, req)?;
    let create = async {
        let resp = app
            .messaging
            .clone()
            .create_channel(req)
            .await?
            .into_inner();
        let created = resp.created;
        Ok((resp, created))
    };
    let create = app
        .limiter
        .counted(Kind::Joins, user.as_str(), joins, create);
    let (resp, _) = app
        .limiter
        .counted(Kind::ChannelCreations, user.as_str(), 1, create)
        .await?;
    let channel = resp
        .channel
        .as_ref()
        .map(view::channel)
        .unwrap_or(Value::Null);
    Ok(created_or_existing(resp.created, channel))
}

pub(super) async fn list_channels(
    State(app): AppState,
    Caller(user): Caller,
    Q(q): Q<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = parse_limit(&app, q.limit.as_deref())?;
    let req = pb::ListChannelsRequest {
        limit,
        cursor: q.cursor.unwrap_or_default(),
    };
    let resp = app
        .messaging
        .clone()
        .list_channels(grpc(&user, req)?)
        .await?
        .into_inner();
    let next = (!resp.next_cursor.is_empty()).then_some(resp.next_cursor);
    let mut channels: Vec<Value> = resp.channels.iter().map(view::channel).collect();
    // `unread` on every entry when receipts answers; omitted (not guessed) when it is down.
    if let Some(receipts) = &app.receipts
        && let Ok(u) = receipts.unread(&user).await
    {
        let counts: std::collections::HashMap<&str, u64> = u
            .channels
            .iter()
            .map(|c| (c.channel_id.as_str(), c.unread))
            .collect();
        for c in &mut channels {
            let n = c["id"]
                .as_str()
                .and_then(|id| counts.get(id))
                .copied()
                .unwrap_or(0);
            c["unread"] = json!(n);
        }
    }
    Ok(Json(json!({"channels": channels, "next_cursor": next})))
}

pub(super) async fn get_channel(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    let req = pb::GetChannelRequest {
        channel_id: channel_path(&id)?,
    };
    let resp = app
        .messaging
        .clone()
        .get_channel(grpc(&user, req)?)
        .await?
        .into_inner();
    Ok(Json(
        resp.channel
            .as_ref()
            .map(view::channel)
            .unwrap_or(Value::Null),
    ))
}

pub(super) async fn list_members(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    let req = pb::ListMembersRequest {
        channel_id: channel_path(&id)?,
    };
    let resp = app
        .messaging
        .clone()
        .list_members(grpc(&user, req)?)
        .await?
        .into_inner();
    let members: Vec<Value> = resp
        .members
        .iter()
        .map(|m| json!({"user_id": m.user_id, "role": view::role(m.role), "joined_at": view::time(m.joined_at.as_ref())}))
        .collect();
    Ok(Json(json!({"members": members})))
}

#[derive(Deserialize)]
pub(super) struct AddMemberBody {
    user_id: String,
}

pub(super) async fn add_member(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<AddMemberBody>,
) -> Result<Response, ApiError> {
    let target = UserId::parse(&b.user_id)?;
    let req = pb::AddMemberRequest {
        channel_id: channel_path(&id)?,
        user_id: target.to_string(),
    };
    let req = grpc(&user, req)?;
    let add = async {
        let resp = app.messaging.clone().add_member(req).await?.into_inner();
        let created = resp.created;
        Ok((resp, created))
    };
    let (resp, _) = app
        .limiter
        .counted(Kind::Joins, user.as_str(), 1, add)
        .await?;
    let body = resp
        .member
        .as_ref()
        .map(view::member)
        .unwrap_or(Value::Null);
    Ok(created_or_existing(resp.created, body))
}

pub(super) async fn remove_member(
    State(app): AppState,
    Caller(user): Caller,
    P((id, target)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let target = UserId::parse(&target)?;
    let req = pb::RemoveMemberRequest {
        channel_id: channel_path(&id)?,
        user_id: target.to_string(),
    };
    app.messaging
        .clone()
        .remove_member(grpc(&user, req)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
