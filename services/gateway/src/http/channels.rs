//! Channel routes: create, list, get, members.

use axum::{Json, extract::State, http::StatusCode, response::Response};
use parley_kit::domain::UserId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    ApiError,
    api::channels::{self, NewChannel, Sanction},
    view,
};

use super::AppState;
use crate::extract::*;

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
    let c = NewChannel {
        kind: b.kind,
        name: b.name,
        members: b.members,
    };
    let resp = channels::create(&app, &user, c).await?;
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
    let page = channels::list(&app, &user, limit, q.cursor.unwrap_or_default()).await?;
    let channels: Vec<Value> = page
        .channels
        .iter()
        .map(|(c, unread)| {
            let mut v = view::channel(c);
            // `unread` on every entry when receipts answered; omitted (not guessed) when not.
            if let Some(n) = unread {
                v["unread"] = json!(n);
            }
            v
        })
        .collect();
    Ok(Json(
        json!({"channels": channels, "next_cursor": page.next_cursor}),
    ))
}

#[derive(Deserialize)]
pub(super) struct PublicQuery {
    #[serde(default)]
    query: String,
    limit: Option<String>,
    cursor: Option<String>,
}

pub(super) async fn list_public(
    State(app): AppState,
    Caller(user): Caller,
    Q(q): Q<PublicQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = parse_limit(&app, q.limit.as_deref())?;
    let (channels, next) =
        channels::public(&app, &user, q.query, limit, q.cursor.unwrap_or_default()).await?;
    let channels: Vec<Value> = channels.iter().map(view::channel).collect();
    Ok(Json(json!({"channels": channels, "next_cursor": next})))
}

pub(super) async fn join_channel(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Response, ApiError> {
    let resp = channels::join(&app, &user, &channel_path(&id)?).await?;
    let body = resp
        .member
        .as_ref()
        .map(view::member)
        .unwrap_or(Value::Null);
    Ok(created_or_existing(resp.created, body))
}

#[derive(Deserialize, Default)]
pub(super) struct InviteBody {
    #[serde(default)]
    expires_in_secs: u64,
    #[serde(default)]
    max_uses: u32,
}

pub(super) async fn create_invite(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<InviteBody>,
) -> Result<Response, ApiError> {
    let channel = channel_path(&id)?;
    let invite =
        channels::create_invite(&app, &user, &channel, b.expires_in_secs, b.max_uses).await?;
    let body = invite.as_ref().map(view::invite).unwrap_or(Value::Null);
    Ok(created_or_existing(true, body))
}

pub(super) async fn accept_invite(
    State(app): AppState,
    Caller(user): Caller,
    P(code): P<String>,
) -> Result<Response, ApiError> {
    let resp = channels::accept_invite(&app, &user, code).await?;
    let body = resp
        .member
        .as_ref()
        .map(view::member)
        .unwrap_or(Value::Null);
    Ok(created_or_existing(resp.created, body))
}

pub(super) async fn get_channel(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    let channel = channels::get(&app, &user, &channel_path(&id)?).await?;
    Ok(Json(
        channel.as_ref().map(view::channel).unwrap_or(Value::Null),
    ))
}

pub(super) async fn list_members(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    let members = channels::members(&app, &user, &channel_path(&id)?).await?;
    let members: Vec<Value> = members
        .iter()
        .map(|m| json!({"user_id": m.user_id, "role": view::role(m.role), "joined_at": view::time(m.joined_at.as_ref())}))
        .collect();
    Ok(Json(json!({"members": members})))
}

#[derive(Deserialize)]
pub(super) struct UpdateChannelBody {
    name: Option<String>,
    topic: Option<String>,
    description: Option<String>,
}

pub(super) async fn update_channel(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<UpdateChannelBody>,
) -> Result<Json<Value>, ApiError> {
    let channel = channel_path(&id)?;
    let changes = channels::ChannelChanges {
        name: b.name,
        topic: b.topic,
        description: b.description,
    };
    let channel = channels::update(&app, &user, &channel, changes).await?;
    Ok(Json(
        channel.as_ref().map(view::channel).unwrap_or(Value::Null),
    ))
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
    let resp = channels::add_member(&app, &user, &channel_path(&id)?, &target).await?;
    let body = resp
        .member
        .as_ref()
        .map(view::member)
        .unwrap_or(Value::Null);
    Ok(created_or_existing(resp.created, body))
}

#[derive(Deserialize)]
pub(super) struct RoleBody {
    role: String,
}

pub(super) async fn set_member_role(
    State(app): AppState,
    Caller(user): Caller,
    P((id, target)): P<(String, String)>,
    JsonBody(b): JsonBody<RoleBody>,
) -> Result<Json<Value>, ApiError> {
    let target = UserId::parse(&target)?;
    let member = channels::set_role(&app, &user, &channel_path(&id)?, &target, &b.role).await?;
    Ok(Json(
        member.as_ref().map(view::member).unwrap_or(Value::Null),
    ))
}

pub(super) async fn transfer_ownership(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<AddMemberBody>,
) -> Result<Json<Value>, ApiError> {
    let target = UserId::parse(&b.user_id)?;
    let resp = channels::transfer_ownership(&app, &user, &channel_path(&id)?, &target).await?;
    let member = |m: &Option<parley_proto::messaging::v1::Member>| {
        m.as_ref().map(view::member).unwrap_or(Value::Null)
    };
    Ok(Json(
        json!({"owner": member(&resp.owner), "previous": member(&resp.previous)}),
    ))
}

pub(super) async fn remove_member(
    State(app): AppState,
    Caller(user): Caller,
    P((id, target)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let target = UserId::parse(&target)?;
    channels::remove_member(&app, &user, &channel_path(&id)?, &target).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn archive(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    archived(app, user, id, true).await
}

pub(super) async fn unarchive(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    archived(app, user, id, false).await
}

async fn archived(
    app: std::sync::Arc<crate::App>,
    user: UserId,
    id: String,
    archived: bool,
) -> Result<Json<Value>, ApiError> {
    let channel = channels::set_archived(&app, &user, &channel_path(&id)?, archived).await?;
    Ok(Json(
        channel.as_ref().map(view::channel).unwrap_or(Value::Null),
    ))
}

pub(super) async fn delete_channel(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<StatusCode, ApiError> {
    channels::delete(&app, &user, &channel_path(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct BanBody {
    expires_at: Option<String>,
    #[serde(default)]
    reason: String,
}

pub(super) async fn put_ban(
    State(app): AppState,
    Caller(user): Caller,
    P((id, target)): P<(String, String)>,
    OptionalJson(b): OptionalJson<BanBody>,
) -> Result<Json<Value>, ApiError> {
    let target = UserId::parse(&target)?;
    let until = channels::parse_expiry(b.expires_at.as_deref())?;
    let resp = channels::ban(&app, &user, &channel_path(&id)?, &target, until, b.reason).await?;
    let mut ban = resp.ban.as_ref().map(view::ban).unwrap_or(Value::Null);
    if let Some(o) = ban.as_object_mut() {
        o.insert("removed".into(), Value::Bool(resp.removed));
    }
    Ok(Json(ban))
}

pub(super) async fn delete_ban(
    State(app): AppState,
    Caller(user): Caller,
    P((id, target)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let target = UserId::parse(&target)?;
    channels::lift(&app, &user, &channel_path(&id)?, &target, Sanction::Ban).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_bans(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = channels::bans(&app, &user, &channel_path(&id)?)
        .await?
        .iter()
        .map(view::ban)
        .collect();
    Ok(Json(json!({"bans": list})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct MuteBody {
    expires_at: Option<String>,
}

pub(super) async fn put_mute(
    State(app): AppState,
    Caller(user): Caller,
    P((id, target)): P<(String, String)>,
    OptionalJson(b): OptionalJson<MuteBody>,
) -> Result<Json<Value>, ApiError> {
    let target = UserId::parse(&target)?;
    let until = channels::parse_expiry(b.expires_at.as_deref())?;
    let mute = channels::mute(&app, &user, &channel_path(&id)?, &target, until).await?;
    Ok(Json(mute.as_ref().map(view::mute).unwrap_or(Value::Null)))
}

pub(super) async fn delete_mute(
    State(app): AppState,
    Caller(user): Caller,
    P((id, target)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let target = UserId::parse(&target)?;
    channels::lift(&app, &user, &channel_path(&id)?, &target, Sanction::Mute).await?;
    Ok(StatusCode::NO_CONTENT)
}
