//! Messages once sent: history pages, edits and deletions (sends are `send`'s).

use super::moderation::check_may_write;
use super::*;

/// Direction of a history page.
#[derive(Debug, Clone, Copy)]
pub enum Page {
    Latest,
    Before(i64),
    After(i64),
}

#[tracing::instrument(
    name = "SELECT messaging.messages",
    skip_all,
    fields(
        otel.kind = "client",
        db.system.name = "postgresql",
        db.namespace = "messaging",
        db.operation.name = "SELECT",
        db.collection.name = "messages",
        channel = %channel,
    )
)]
pub async fn list_messages(
    conn: &mut PgConnection,
    caller: &UserId,
    channel: Uuid,
    page: Page,
    limit: u32,
) -> Result<(Vec<MessageRow>, bool), Error> {
    require_member(conn, channel, caller).await?;
    let n = i64::from(limit) + 1;
    let q = match page {
        Page::Latest => sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 ORDER BY seq DESC LIMIT $2"
        )))
        .bind(channel)
        .bind(n),
        Page::Before(s) => sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 AND seq < $3 ORDER BY seq DESC LIMIT $2"
        )))
        .bind(channel)
        .bind(n)
        .bind(s),
        Page::After(s) => sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 AND seq > $3 ORDER BY seq ASC LIMIT $2"
        )))
        .bind(channel)
        .bind(n)
        .bind(s),
    };
    let mut rows = q.fetch_all(&mut *conn).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

async fn message_for_update(tx: &mut Tx, channel: Uuid, seq: i64) -> Result<MessageRow, Error> {
    sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 AND seq = $2 FOR UPDATE"
    )))
    .bind(channel)
    .bind(seq)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| Error::NotFound(format!("message {seq} not found in channel {channel}")))
}

/// Edits a message (sender only; not a deleted one).
pub async fn edit(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    seq: i64,
    body: &MessageBody,
) -> Result<(MessageRow, Pending), Error> {
    require_member(&mut tx, channel, caller).await?;
    check_may_write(&mut tx, channel, caller.as_str()).await?;
    let m = message_for_update(&mut tx, channel, seq).await?;
    if m.sender_id != caller.as_str() {
        return Err(Error::PermissionDenied(
            "only the sender edits a message".into(),
        ));
    }
    if m.deleted {
        return Err(Error::NotFound(format!("message {seq} was deleted")));
    }
    if m.system.is_some() {
        return Err(Error::PermissionDenied(
            "a system message cannot be edited".into(),
        ));
    }
    let row = sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET body = $3, edited_at = now() WHERE channel_id = $1 AND seq = $2 RETURNING {MESSAGE_COLS}"
    )))
    .bind(channel)
    .bind(seq)
    .bind(body.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let payload = ev::event::Payload::MessageUpdated(ev::MessageUpdated {
        message: Some(row.clone().into()),
    });
    let p = enqueue(&mut tx, channel, payload, vec![channel_topic(channel)]).await?;
    tx.commit().await?;
    Ok((row, p))
}

/// Deletes a message, leaving a tombstone (sender, or owner/admin). Idempotent.
pub async fn delete(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    seq: i64,
) -> Result<(MessageRow, Option<Pending>), Error> {
    let role = require_member(&mut tx, channel, caller).await?;
    let m = message_for_update(&mut tx, channel, seq).await?;
    if m.sender_id != caller.as_str() && !role.manages() {
        return Err(Error::PermissionDenied(
            "only the sender or an owner/admin deletes a message".into(),
        ));
    }
    if m.deleted {
        tx.commit().await?;
        return Ok((m, None));
    }
    let row = sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET body = '', deleted = true, attachments = NULL WHERE channel_id = $1 AND seq = $2 RETURNING {MESSAGE_COLS}"
    )))
    .bind(channel)
    .bind(seq)
    .fetch_one(&mut *tx)
    .await?;
    // Its files go too (the clean-up job deletes the objects).
    super::attachments::doom_of_message(&mut tx, row.id).await?;
    let payload = ev::event::Payload::MessageDeleted(ev::MessageDeleted {
        message: Some(row.clone().into()),
        deleted_by: caller.to_string(),
    });
    let p = enqueue(&mut tx, channel, payload, vec![channel_topic(channel)]).await?;
    tx.commit().await?;
    Ok((row, Some(p)))
}
