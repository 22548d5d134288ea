//! Channels and members: create, list (with unread counts), get, positions, members.

use std::collections::HashMap;

use parley_kit::domain::{ChannelId, UserId};
use parley_proto::messaging::v1 as pb;

use crate::{ApiError, App, ratelimit::Kind, upstream::request};

/// A channel to create: `kind` is `"group"` or `"direct"`.
pub struct NewChannel {
    pub kind: String,
    pub name: String,
    pub members: Vec<String>,
}

/// Creates a channel (a direct channel between two users is created once; asking again
/// answers the existing one, `created` false). Counts against `rate.channel_creations`
/// and, for a group, `rate.joins` for each member added.
pub async fn create(
    app: &App,
    user: &UserId,
    c: NewChannel,
) -> Result<pb::CreateChannelResponse, ApiError> {
    let kind = match c.kind.as_str() {
        "group" => pb::ChannelKind::Group,
        "direct" => pb::ChannelKind::Direct,
        "public" => pb::ChannelKind::Public,
        _ => {
            return Err(ApiError::invalid(
                "kind must be \"group\", \"public\" or \"direct\"",
            ));
        }
    };
    let mut added: Vec<&str> = Vec::with_capacity(c.members.len());
    for m in &c.members {
        UserId::parse(m)?;
        if m != user.as_str() && !added.contains(&m.as_str()) {
            added.push(m);
        }
    }
    // Members of a new group count as members added by its creator (`rate.joins`).
    let joins = match kind {
        pb::ChannelKind::Group | pb::ChannelKind::Public => added.len() as u32,
        _ => 0,
    };
    let req = pb::CreateChannelRequest {
        kind: kind as i32,
        name: c.name,
        members: c.members,
    };
    let req = request(user, req)?;
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
    Ok(resp)
}

/// A page of the caller's channels.
pub struct ChannelPage {
    /// Each channel with its unread count, when receipts answered (`None`: not known).
    pub channels: Vec<(pb::Channel, Option<u64>)>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// The caller's channels, most recently active first.
pub async fn list(
    app: &App,
    user: &UserId,
    limit: u32,
    cursor: String,
) -> Result<ChannelPage, ApiError> {
    let req = pb::ListChannelsRequest { limit, cursor };
    let resp = app
        .messaging
        .clone()
        .list_channels(request(user, req)?)
        .await?
        .into_inner();
    let next_cursor = (!resp.next_cursor.is_empty()).then_some(resp.next_cursor);
    // Unread counts when receipts answers; not guessed when it does not.
    let counts: Option<HashMap<String, u64>> = match &app.receipts {
        Some(receipts) => receipts.unread(user).await.ok().map(|u| {
            u.channels
                .into_iter()
                .map(|c| (c.channel_id, c.unread))
                .collect()
        }),
        None => None,
    };
    let channels = resp
        .channels
        .into_iter()
        .map(|c| {
            let unread = counts.as_ref().map(|n| n.get(&c.id).copied().unwrap_or(0));
            (c, unread)
        })
        .collect();
    Ok(ChannelPage {
        channels,
        next_cursor,
    })
}

/// A page of public channels whose name contains `query` (case-insensitive), by name.
pub async fn public(
    app: &App,
    user: &UserId,
    query: String,
    limit: u32,
    cursor: String,
) -> Result<(Vec<pb::Channel>, Option<String>), ApiError> {
    let req = pb::ListPublicChannelsRequest {
        query,
        limit,
        cursor,
    };
    let resp = app
        .messaging
        .clone()
        .list_public_channels(request(user, req)?)
        .await?
        .into_inner();
    let next = (!resp.next_cursor.is_empty()).then_some(resp.next_cursor);
    Ok((resp.channels, next))
}

/// The caller joins a public channel (idempotent). A new membership counts against
/// `rate.joins`.
pub async fn join(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
) -> Result<pb::JoinChannelResponse, ApiError> {
    let req = request(
        user,
        pb::JoinChannelRequest {
            channel_id: channel.to_string(),
        },
    )?;
    let join = async {
        let resp = app.messaging.clone().join_channel(req).await?.into_inner();
        let created = resp.created;
        Ok((resp, created))
    };
    let (resp, _) = app
        .limiter
        .counted(Kind::Joins, user.as_str(), 1, join)
        .await?;
    Ok(resp)
}

/// An invite code to a channel (owners and admins): valid `expires_in_secs` (0: the
/// default), admitting `max_uses` users (0: one). Counts against `rate.edits`, like the
/// other management actions.
pub async fn create_invite(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    expires_in_secs: u64,
    max_uses: u32,
) -> Result<Option<pb::Invite>, ApiError> {
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::CreateInviteRequest {
        channel_id: channel.to_string(),
        expires_in_secs,
        max_uses,
    };
    let resp = app
        .messaging
        .clone()
        .create_invite(request(user, req)?)
        .await?
        .into_inner();
    Ok(resp.invite)
}

/// The caller joins the channel of invite `code` (idempotent). A new membership counts
/// against `rate.joins`.
pub async fn accept_invite(
    app: &App,
    user: &UserId,
    code: String,
) -> Result<pb::AcceptInviteResponse, ApiError> {
    let req = request(user, pb::AcceptInviteRequest { code })?;
    let accept = async {
        let resp = app.messaging.clone().accept_invite(req).await?.into_inner();
        let created = resp.created;
        Ok((resp, created))
    };
    let (resp, _) = app
        .limiter
        .counted(Kind::Joins, user.as_str(), 1, accept)
        .await?;
    Ok(resp)
}

/// One channel of the caller's (`not_found` / `permission_denied` otherwise).
pub async fn get(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
) -> Result<Option<pb::Channel>, ApiError> {
    let req = pb::GetChannelRequest {
        channel_id: channel.to_string(),
    };
    let resp = app
        .messaging
        .clone()
        .get_channel(request(user, req)?)
        .await?
        .into_inner();
    Ok(resp.channel)
}

/// What a channel update sets (`None`: unchanged).
#[derive(Debug, Default)]
pub struct ChannelChanges {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub description: Option<String>,
}

/// Changes a group channel's name, topic and/or description (owners and admins; messaging
/// decides). Counts against `rate.edits`. Members get a `channel_updated` event when
/// something changed.
pub async fn update(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    changes: ChannelChanges,
) -> Result<Option<pb::Channel>, ApiError> {
    let ChannelChanges {
        name,
        topic,
        description,
    } = changes;
    if name.is_none() && topic.is_none() && description.is_none() {
        return Err(ApiError::invalid(
            "nothing to change: give a name, topic or description",
        ));
    }
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::UpdateChannelRequest {
        channel_id: channel.to_string(),
        name,
        topic,
        description,
    };
    let resp = app
        .messaging
        .clone()
        .update_channel(request(user, req)?)
        .await?
        .into_inner();
    Ok(resp.channel)
}

/// Every channel of the caller with its last seq (where a connection starts).
pub async fn positions(app: &App, user: &UserId) -> Result<Vec<(String, u64)>, ApiError> {
    let req = request(user, pb::ListChannelPositionsRequest {})?;
    let resp = app
        .messaging
        .clone()
        .list_channel_positions(req)
        .await?
        .into_inner();
    Ok(resp
        .positions
        .into_iter()
        .map(|p| (p.channel_id, p.last_seq))
        .collect())
}

/// The members of a channel of the caller's.
pub async fn members(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
) -> Result<Vec<pb::Member>, ApiError> {
    let req = pb::ListMembersRequest {
        channel_id: channel.to_string(),
    };
    let resp = app
        .messaging
        .clone()
        .list_members(request(user, req)?)
        .await?
        .into_inner();
    Ok(resp.members)
}

/// Adds `target` (owner/admin of a group); counts against `rate.joins`.
pub async fn add_member(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    target: &UserId,
) -> Result<pb::AddMemberResponse, ApiError> {
    let req = pb::AddMemberRequest {
        channel_id: channel.to_string(),
        user_id: target.to_string(),
    };
    let req = request(user, req)?;
    let add = async {
        let resp = app.messaging.clone().add_member(req).await?.into_inner();
        let created = resp.created;
        Ok((resp, created))
    };
    let (resp, _) = app
        .limiter
        .counted(Kind::Joins, user.as_str(), 1, add)
        .await?;
    Ok(resp)
}

/// Makes `target` an admin or a plain member (`role`: `"admin"` or `"member"`); the rank
/// rules are messaging's. Counts against `rate.edits`.
pub async fn set_role(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    target: &UserId,
    role: &str,
) -> Result<Option<pb::Member>, ApiError> {
    let role = match role {
        "admin" => pb::Role::Admin,
        "member" => pb::Role::Member,
        _ => {
            return Err(ApiError::invalid(
                "role must be \"admin\" or \"member\" (ownership moves by POST …/owner)",
            ));
        }
    };
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::SetMemberRoleRequest {
        channel_id: channel.to_string(),
        user_id: target.to_string(),
        role: role as i32,
    };
    let resp = app
        .messaging
        .clone()
        .set_member_role(request(user, req)?)
        .await?
        .into_inner();
    Ok(resp.member)
}

/// The owner hands the channel to `target`; the caller becomes an admin. Counts against
/// `rate.edits`.
pub async fn transfer_ownership(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    target: &UserId,
) -> Result<pb::TransferOwnershipResponse, ApiError> {
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::TransferOwnershipRequest {
        channel_id: channel.to_string(),
        user_id: target.to_string(),
    };
    Ok(app
        .messaging
        .clone()
        .transfer_ownership(request(user, req)?)
        .await?
        .into_inner())
}

/// Removes `target` (or the caller leaves, when `target` is the caller).
pub async fn remove_member(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    target: &UserId,
) -> Result<(), ApiError> {
    let req = pb::RemoveMemberRequest {
        channel_id: channel.to_string(),
        user_id: target.to_string(),
    };
    app.messaging
        .clone()
        .remove_member(request(user, req)?)
        .await?;
    Ok(())
}

/// Archives (`true`) or unarchives a group channel (owners and admins). Counts against
/// `rate.edits`. `None` when messaging answered without a channel (never in practice).
pub async fn set_archived(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    archived: bool,
) -> Result<Option<pb::Channel>, ApiError> {
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::SetArchivedRequest {
        channel_id: channel.to_string(),
        archived,
    };
    Ok(app
        .messaging
        .clone()
        .set_archived(request(user, req)?)
        .await?
        .into_inner()
        .channel)
}

/// Deletes a group channel with its history (the owner). Counts against `rate.edits`.
pub async fn delete(app: &App, user: &UserId, channel: &ChannelId) -> Result<(), ApiError> {
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::DeleteChannelRequest {
        channel_id: channel.to_string(),
    };
    app.messaging
        .clone()
        .delete_channel(request(user, req)?)
        .await?;
    Ok(())
}

/// A ban's or mute's end as the API takes it: RFC 3339, or absent (until lifted).
pub fn parse_expiry(s: Option<&str>) -> Result<Option<prost_types::Timestamp>, ApiError> {
    let Some(s) = s else { return Ok(None) };
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|_| ApiError::invalid("expires_at must be an RFC 3339 time"))?;
    Ok(Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }))
}

/// Bans `target` from a group channel until `expires_at` (owners and admins). Counts
/// against `rate.edits`.
pub async fn ban(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    target: &UserId,
    expires_at: Option<prost_types::Timestamp>,
    reason: String,
) -> Result<pb::BanMemberResponse, ApiError> {
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::BanMemberRequest {
        channel_id: channel.to_string(),
        user_id: target.to_string(),
        expires_at,
        reason,
    };
    Ok(app
        .messaging
        .clone()
        .ban_member(request(user, req)?)
        .await?
        .into_inner())
}

/// What a moderator lifts.
#[derive(Debug, Clone, Copy)]
pub enum Sanction {
    Ban,
    Mute,
}

/// Lifts a ban or a mute of `target` (nothing to lift is no error). Counts against
/// `rate.edits`.
pub async fn lift(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    target: &UserId,
    what: Sanction,
) -> Result<(), ApiError> {
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let (channel_id, user_id) = (channel.to_string(), target.to_string());
    let mut messaging = app.messaging.clone();
    match what {
        Sanction::Ban => {
            let req = pb::UnbanMemberRequest {
                channel_id,
                user_id,
            };
            messaging.unban_member(request(user, req)?).await?;
        }
        Sanction::Mute => {
            let req = pb::UnmuteMemberRequest {
                channel_id,
                user_id,
            };
            messaging.unmute_member(request(user, req)?).await?;
        }
    }
    Ok(())
}

/// The bans in force (owners and admins).
pub async fn bans(app: &App, user: &UserId, channel: &ChannelId) -> Result<Vec<pb::Ban>, ApiError> {
    let req = pb::ListBansRequest {
        channel_id: channel.to_string(),
    };
    Ok(app
        .messaging
        .clone()
        .list_bans(request(user, req)?)
        .await?
        .into_inner()
        .bans)
}

/// Mutes a member until `expires_at` (owners and admins). Counts against `rate.edits`.
pub async fn mute(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    target: &UserId,
    expires_at: Option<prost_types::Timestamp>,
) -> Result<Option<pb::Mute>, ApiError> {
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::MuteMemberRequest {
        channel_id: channel.to_string(),
        user_id: target.to_string(),
        expires_at,
    };
    Ok(app
        .messaging
        .clone()
        .mute_member(request(user, req)?)
        .await?
        .into_inner()
        .mute)
}
