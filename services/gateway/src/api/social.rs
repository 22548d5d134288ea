//! Presence (with its privacy rule), typing, and receipts: read marks, receipts, unread.

use std::collections::{HashMap, HashSet};

use parley_kit::domain::{ChannelId, UserId};
use parley_proto::receipts::v1 as receipts_pb;
use parley_proto::{messaging::v1::FilterContactsRequest, presence::v1 as presence_pb};

use crate::{
    ApiError, App,
    ratelimit::Kind,
    upstream::{presence::Presence, receipts::Receipts, request},
};

/// Most users one presence query may ask about (the presence batch limit).
pub const MAX_PRESENCE_QUERY: usize = 500;

fn presence(app: &App) -> Result<&Presence, ApiError> {
    app.presence
        .as_deref()
        .ok_or_else(|| ApiError::not_configured("presence"))
}

fn receipts(app: &App) -> Result<&Receipts, ApiError> {
    app.receipts
        .as_ref()
        .ok_or_else(|| ApiError::not_configured("receipts"))
}

/// The presence of `ids` as `user` may see it, in the order asked (duplicates once).
/// Counts against `rate.presence_queries`.
pub async fn query(
    app: &App,
    user: &UserId,
    ids: Vec<UserId>,
) -> Result<Vec<presence_pb::UserPresence>, ApiError> {
    app.limiter
        .check(Kind::PresenceQueries, user.as_str())
        .await?;
    if ids.is_empty() || ids.len() > MAX_PRESENCE_QUERY {
        return Err(ApiError::invalid(format!(
            "user_ids must list 1-{MAX_PRESENCE_QUERY} comma-separated user ids"
        )));
    }
    let ids: Vec<String> = ids.into_iter().map(|u| u.to_string()).collect();
    let service = presence(app)?;
    let (shown, hidden_ids) = visible(app, user, ids.clone()).await?;
    let mut found: HashMap<String, presence_pb::UserPresence> = if shown.is_empty() {
        Vec::new()
    } else {
        service.get(shown).await?
    }
    .into_iter()
    .chain(hidden_ids.into_iter().map(hidden))
    .map(|p| (p.user_id.clone(), p))
    .collect();
    Ok(ids.iter().filter_map(|u| found.remove(u)).collect())
}

/// Presence privacy: splits `ids` into those `user` may see (they share a channel, or it
/// is the user themselves; messaging decides) and the others, who read as never seen.
pub async fn visible(
    app: &App,
    user: &UserId,
    ids: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let req = request(
        user,
        FilterContactsRequest {
            user_ids: ids.clone(),
        },
    )?;
    let contacts: HashSet<String> = app
        .messaging
        .clone()
        .filter_contacts(req)
        .await?
        .into_inner()
        .user_ids
        .into_iter()
        .collect();
    Ok(ids.into_iter().partition(|u| contacts.contains(u)))
}

/// How a user whose presence the caller may not see reads: offline and never seen, exactly
/// like a user who never connected, so the answer tells nothing about them.
pub fn hidden(user_id: String) -> presence_pb::UserPresence {
    presence_pb::UserPresence {
        user_id,
        status: presence_pb::Status::Offline as i32,
        last_seen_at: None,
        version: 0,
    }
}

/// The caller is typing in `channel` (membership already checked by the caller). Over
/// the user's `rate.typing` it is dropped, not refused (typing is fire-and-forget).
pub async fn typing(app: &App, user: &UserId, channel: &str) -> Result<(), ApiError> {
    let service = presence(app)?;
    if app.limiter.check(Kind::Typing, user.as_str()).await.is_ok() {
        service.typing(user.as_str(), channel).await?;
    }
    Ok(())
}

/// Which watermark a mark moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Delivered,
    Read,
}

/// Moves the caller's delivered or read watermark in `channel` (forward only). Counts
/// against `rate.read_marks`.
pub async fn mark(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    seq: u64,
    mark: Mark,
) -> Result<(), ApiError> {
    app.limiter.check(Kind::ReadMarks, user.as_str()).await?;
    let receipts = receipts(app)?;
    let channel = channel.to_string();
    match mark {
        Mark::Read => receipts.read(user, channel, seq).await,
        Mark::Delivered => receipts.delivered(user, channel, seq).await,
    }
}

/// Every member's watermarks in a channel of the caller's.
pub async fn channel_receipts(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
) -> Result<Vec<receipts_pb::Receipt>, ApiError> {
    receipts(app)?.receipts(user, channel.to_string()).await
}

/// The caller's unread counts (channels with none omitted).
pub async fn unread(app: &App, user: &UserId) -> Result<receipts_pb::GetUnreadResponse, ApiError> {
    receipts(app)?.unread(user).await
}

/// The caller blocks `target` (or lifts the block, `blocked` false). Counts against
/// `rate.edits`. Returns whether anything changed.
pub async fn set_block(
    app: &App,
    user: &UserId,
    target: &UserId,
    blocked: bool,
) -> Result<bool, ApiError> {
    use parley_proto::messaging::v1 as pb;
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let mut messaging = app.messaging.clone();
    Ok(if blocked {
        let req = pb::BlockUserRequest {
            user_id: target.to_string(),
        };
        messaging
            .block_user(request(user, req)?)
            .await?
            .into_inner()
            .created
    } else {
        let req = pb::UnblockUserRequest {
            user_id: target.to_string(),
        };
        messaging
            .unblock_user(request(user, req)?)
            .await?
            .into_inner()
            .changed
    })
}

/// The users the caller blocked.
pub async fn blocks(
    app: &App,
    user: &UserId,
) -> Result<Vec<parley_proto::messaging::v1::Block>, ApiError> {
    let req = parley_proto::messaging::v1::ListBlocksRequest {};
    Ok(app
        .messaging
        .clone()
        .list_blocks(request(user, req)?)
        .await?
        .into_inner()
        .blocks)
}
