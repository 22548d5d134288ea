//! Messages: send (alone, or prepared for a connection's ordered group), history, edit,
//! delete.

use parley_kit::domain::{ChannelId, ClientMsgId, MessageBody, UserId};
use parley_proto::messaging::v1 as pb;

use crate::{ApiError, App, ratelimit::Kind, upstream::request};

/// What a message says: its text and the uploads sent with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    /// May be empty when `attachment_ids` are given.
    pub body: String,
    pub attachment_ids: Vec<String>,
}

impl Content {
    /// Checks the body against the gateway's byte limit (messaging checks the rest).
    pub fn check(&self, limit: usize) -> Result<(), ApiError> {
        if self.attachment_ids.is_empty() {
            MessageBody::parse(&self.body, limit)?;
        } else {
            MessageBody::parse_or_empty(&self.body, limit)?;
        }
        Ok(())
    }
}

/// Validates, rate-limits and sends one message.
pub async fn send(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    client_msg_id: &ClientMsgId,
    content: &Content,
) -> Result<pb::SendMessageResponse, ApiError> {
    let req = prepare_send(app, user, channel, client_msg_id, content).await?;
    app.sender.send(user, req).await
}

/// A send validated (the body against `limits.max_message_bytes`) and counted against the
/// sender's rate limit, ready for messaging: alone ([`send`]) or in a connection's ordered
/// group (`App::sender::send_group`).
pub async fn prepare_send(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    client_msg_id: &ClientMsgId,
    content: &Content,
) -> Result<pb::SendMessageRequest, ApiError> {
    content.check(app.config.limits.max_message_bytes)?;
    app.limiter.check(Kind::Messages, user.as_str()).await?;
    Ok(pb::SendMessageRequest {
        channel_id: channel.to_string(),
        client_msg_id: client_msg_id.as_str().to_owned(),
        body: content.body.clone(),
        attachment_ids: content.attachment_ids.clone(),
    })
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, Default)]
pub enum Page {
    /// The newest messages, newest first.
    #[default]
    Newest,
    /// Strictly below this seq, newest first.
    Before(u64),
    /// Strictly above this seq, oldest first.
    After(u64),
}

/// One history page of `channel` for `user` (REST pages, the WebSocket's gap fills and
/// replays): the messages and whether there are more.
pub async fn history(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    page: Page,
    limit: u32,
) -> Result<(Vec<pb::Message>, bool), ApiError> {
    let (before, after) = match page {
        Page::Newest => (None, None),
        Page::Before(s) => (Some(s), None),
        Page::After(s) => (None, Some(s)),
    };
    let req = pb::ListMessagesRequest {
        channel_id: channel.to_string(),
        before,
        after,
        limit,
    };
    let resp = app
        .messaging
        .clone()
        .list_messages(request(user, req)?)
        .await?
        .into_inner();
    Ok((resp.messages, resp.has_more))
}

/// Edits the body of the caller's message; returns it as it is now.
pub async fn edit(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    seq: u64,
    body: &str,
) -> Result<Option<pb::Message>, ApiError> {
    let body = MessageBody::parse(body, app.config.limits.max_message_bytes)?;
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::EditMessageRequest {
        channel_id: channel.to_string(),
        seq,
        body: body.as_str().to_owned(),
    };
    let resp = app
        .messaging
        .clone()
        .edit_message(request(user, req)?)
        .await?
        .into_inner();
    Ok(resp.message)
}

/// Deletes a message (its sender, or an owner/admin of the channel): it becomes a
/// tombstone.
pub async fn delete(
    app: &App,
    user: &UserId,
    channel: &ChannelId,
    seq: u64,
) -> Result<(), ApiError> {
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::DeleteMessageRequest {
        channel_id: channel.to_string(),
        seq,
    };
    app.messaging
        .clone()
        .delete_message(request(user, req)?)
        .await?;
    Ok(())
}

/// Announces an upload to `channel`; returns how to upload it (a presigned PUT).
pub async fn create_attachment(
    app: &App,
    user: &UserId,
    req: pb::CreateAttachmentRequest,
) -> Result<pb::CreateAttachmentResponse, ApiError> {
    Ok(app
        .messaging
        .clone()
        .create_attachment(request(user, req)?)
        .await?
        .into_inner())
}

/// Where `user` downloads an attachment.
pub async fn attachment(
    app: &App,
    user: &UserId,
    id: &str,
) -> Result<pb::GetAttachmentResponse, ApiError> {
    let req = pb::GetAttachmentRequest {
        attachment_id: id.to_owned(),
    };
    Ok(app
        .messaging
        .clone()
        .get_attachment(request(user, req)?)
        .await?
        .into_inner())
}

/// Searches the messages of `user`'s channels (rate-limited: `rate.searches`).
pub async fn search(
    app: &App,
    user: &UserId,
    req: pb::SearchMessagesRequest,
) -> Result<pb::SearchMessagesResponse, ApiError> {
    app.limiter.check(Kind::Searches, user.as_str()).await?;
    Ok(app
        .messaging
        .clone()
        .search_messages(request(user, req)?)
        .await?
        .into_inner())
}
