//! Attachments' metadata (`messaging.attachments`, migration 0011): announcing an upload
//! (membership, rate and quota), what a send checks, downloads, and what the clean-up job
//! deletes. The bytes live in object storage (`crate::storage`).

use super::moderation::check_may_write;
use super::*;

/// An attachment as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttachmentRow {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub uploader_id: String,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub duration_ms: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
    pub message_id: Option<Uuid>,
    pub doomed_at: Option<DateTime<Utc>>,
}

const COLS: &str = "id, channel_id, uploader_id, filename, content_type, size, width, height, \
     duration_ms, created_at, verified_at, message_id, doomed_at";

/// What a message carries of each attachment (`messages.attachments` is a JSON array of
/// them): the metadata, fixed when the message is sent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub id: Uuid,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u32>,
}

impl From<&AttachmentRow> for Meta {
    fn from(r: &AttachmentRow) -> Self {
        let dim = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
        Meta {
            id: r.id,
            filename: r.filename.clone(),
            content_type: r.content_type.clone(),
            size: r.size.max(0) as u64,
            width: dim(r.width),
            height: dim(r.height),
            duration_ms: dim(r.duration_ms),
        }
    }
}

impl From<Meta> for pb::Attachment {
    fn from(m: Meta) -> Self {
        pb::Attachment {
            id: m.id.to_string(),
            filename: m.filename,
            content_type: m.content_type,
            size: m.size,
            width: m.width,
            height: m.height,
            duration_ms: m.duration_ms,
        }
    }
}

/// An upload being announced (validated by the caller).
#[derive(Debug, Clone)]
pub struct NewAttachment {
    pub channel: Uuid,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_ms: Option<u32>,
}

/// A user's limits on announcing uploads.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    pub per_minute: u32,
    pub quota_bytes: u64,
}

/// Records an upload the caller announces: they must be a member who may write in the
/// channel (not archived, muted or blocked), under their upload rate (uploads announced in
/// the last minute) and their storage quota (bytes of their uploads not yet deleted, this
/// one included). Checked and inserted under a per-user lock, so concurrent announcements
/// cannot together pass a limit.
pub async fn create(
    mut tx: Tx,
    caller: &UserId,
    new: NewAttachment,
    limits: UploadLimits,
) -> Result<AttachmentRow, Error> {
    require_member(&mut tx, new.channel, caller).await?;
    check_may_write(&mut tx, new.channel, caller.as_str()).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7150017, hashtext($1))")
        .bind(caller.as_str())
        .execute(&mut *tx)
        .await?;
    let (recent, held): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE created_at > now() - interval '1 minute'),
                coalesce(sum(size) FILTER (WHERE doomed_at IS NULL), 0)::int8
         FROM attachments WHERE uploader_id = $1",
    )
    .bind(caller.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if recent >= i64::from(limits.per_minute) {
        return Err(Error::RateLimited(format!(
            "at most {} uploads per minute; retry later",
            limits.per_minute
        )));
    }
    let held = held.max(0) as u64;
    if held.saturating_add(new.size) > limits.quota_bytes {
        return Err(Error::QuotaExceeded(format!(
            "storage quota of {} bytes exceeded ({held} held, {} announced); delete messages with files or wait for unsent uploads to expire",
            limits.quota_bytes, new.size
        )));
    }
    let dim = |v: Option<u32>| v.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
    let row = sqlx::query_as::<_, AttachmentRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO attachments (id, channel_id, uploader_id, filename, content_type, size,
                                  width, height, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLS}"
    )))
    .bind(Uuid::new_v4())
    .bind(new.channel)
    .bind(caller.as_str())
    .bind(&new.filename)
    .bind(&new.content_type)
    .bind(i64::try_from(new.size).unwrap_or(i64::MAX))
    .bind(dim(new.width))
    .bind(dim(new.height))
    .bind(dim(new.duration_ms))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// The attachments with these ids (missing ones are left out), not locked.
pub async fn load(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<AttachmentRow>, Error> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM attachments WHERE id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// The same, locked for the send's transaction (the clean-up job cannot doom them
/// meanwhile, nor another send take them).
pub async fn lock(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<AttachmentRow>, Error> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM attachments WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// Records that storage holds these uploads as announced (checked once).
pub async fn mark_verified(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), Error> {
    sqlx::query(
        "UPDATE attachments SET verified_at = now() WHERE id = ANY($1) AND verified_at IS NULL",
    )
    .bind(ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An attachment the caller may download: a current member of its channel, once it was
/// sent (before that, only its uploader). Anything else reads as not found.
pub async fn for_download(
    conn: &mut PgConnection,
    caller: &UserId,
    id: Uuid,
) -> Result<AttachmentRow, Error> {
    let row: Option<AttachmentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM attachments a
         WHERE id = $1 AND doomed_at IS NULL
           AND EXISTS (SELECT 1 FROM members m WHERE m.channel_id = a.channel_id AND m.user_id = $2)
           AND (message_id IS NOT NULL OR uploader_id = $2)"
    )))
    .bind(id)
    .bind(caller.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    row.ok_or_else(|| Error::NotFound(format!("attachment {id} not found")))
}

/// Dooms a deleted message's attachments.
pub(super) async fn doom_of_message(tx: &mut Tx, message: Uuid) -> Result<(), Error> {
    sqlx::query(
        "UPDATE attachments SET doomed_at = now() WHERE message_id = $1 AND doomed_at IS NULL",
    )
    .bind(message)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Dooms a deleted channel's attachments.
pub(super) async fn doom_of_channel(tx: &mut Tx, channel: Uuid) -> Result<(), Error> {
    sqlx::query(
        "UPDATE attachments SET doomed_at = now() WHERE channel_id = $1 AND doomed_at IS NULL",
    )
    .bind(channel)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Dooms uploads no message took within `ttl` (at most `limit` a call); returns how many.
/// Rows a send holds locked are skipped (that send decides them).
pub async fn doom_orphans(
    pool: &sqlx::PgPool,
    ttl: std::time::Duration,
    limit: i64,
) -> Result<u64, Error> {
    let done = sqlx::query(
        "UPDATE attachments SET doomed_at = now()
         WHERE id IN (SELECT id FROM attachments
                      WHERE message_id IS NULL AND doomed_at IS NULL
                        AND created_at < now() - make_interval(secs => $1)
                      ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(ttl.as_secs_f64())
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Doomed attachments whose objects are to be deleted: (id, channel), oldest first.
pub async fn doomed(pool: &sqlx::PgPool, limit: i64) -> Result<Vec<(Uuid, Uuid)>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, channel_id FROM attachments WHERE doomed_at IS NOT NULL
         ORDER BY doomed_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Forgets doomed attachments whose objects were deleted.
pub async fn forget(pool: &sqlx::PgPool, ids: &[Uuid]) -> Result<(), Error> {
    sqlx::query("DELETE FROM attachments WHERE id = ANY($1) AND doomed_at IS NOT NULL")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}
