//! SQL of the `notification` schema: devices, preferences and the delivery log.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row as _};
use uuid::Uuid;

use crate::Error;

/// Platform number of webhook devices (see the proto's `Platform`).
pub const WEBHOOK: i16 = 4;

/// A registered device.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Device {
    pub id: Uuid,
    pub user_id: String,
    pub platform: i16,
    pub created_at: DateTime<Utc>,
    /// Webhook devices: the payload signing secret (hex), shown to the owner.
    pub secret: Option<String>,
}

/// Registers `(platform, token)` for `user`; returns the device and whether it is new.
///
/// Push tokens have one owner: another user's registration of the same token is removed
/// (its pending deliveries become `gone` when a worker meets them). Webhook URLs are per
/// user. Concurrent registrations of the same token are settled by the unique indexes:
/// the loser of an insert race reads the winner's row on the next round.
#[tracing::instrument(skip(pool, token), fields(user = %user, platform))]
pub async fn register_device(
    pool: &PgPool,
    user: &str,
    platform: i16,
    token: &str,
) -> Result<(Device, bool), Error> {
    for _ in 0..3 {
        let mut tx = pool.begin().await?;
        let existing: Option<Device> = if platform == WEBHOOK {
            sqlx::query_as(
                "SELECT id, user_id, platform, token, created_at, secret FROM devices
                 WHERE platform = $1 AND token = $2 AND user_id = $3 FOR UPDATE",
            )
            .bind(platform)
            .bind(token)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?
        } else {
            sqlx::query_as(
                "SELECT id, user_id, platform, token, created_at, secret FROM devices
                 WHERE platform = $1 AND token = $2 AND platform <> 4 FOR UPDATE",
            )
            .bind(platform)
            .bind(token)
            .fetch_optional(&mut *tx)
            .await?
        };
        if let Some(d) = existing {
            if d.user_id == user {
                tx.commit().await?;
                return Ok((d, false));
            }
            // The install changed hands: the old owner must not get this user's pushes.
            sqlx::query("DELETE FROM devices WHERE id = $1")
                .bind(d.id)
                .execute(&mut *tx)
                .await?;
        }
        let inserted: Option<Device> = sqlx::query_as(
            "INSERT INTO devices (id, user_id, platform, token, secret) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING
             RETURNING id, user_id, platform, token, created_at, secret",
        )
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(platform)
        .bind(token)
        .bind((platform == WEBHOOK).then(new_secret))
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(d) = inserted {
            return Ok((d, true));
        }
    }
    Err(Error::Unavailable(
        "device registration raced too often; retry".into(),
    ))
}

/// 32 random bytes (the thread's CSPRNG, seeded by the operating system), hex.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    hex::encode(bytes)
}

/// Removes one of `user`'s devices; false when there is no such device of theirs.
pub async fn unregister_device(pool: &PgPool, user: &str, id: Uuid) -> Result<bool, Error> {
    let r = sqlx::query("DELETE FROM devices WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Removes a device whose provider said its token is gone.
pub async fn remove_device(conn: &mut PgConnection, id: Uuid) -> Result<(), Error> {
    sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `user`'s devices, oldest first.
pub async fn list_devices(pool: &PgPool, user: &str) -> Result<Vec<Device>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, user_id, platform, token, created_at, secret FROM devices
         WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user)
    .fetch_all(pool)
    .await?)
}

/// Devices of any of `users`.
pub async fn devices_of(pool: &PgPool, users: &[String]) -> Result<Vec<Device>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, user_id, platform, token, created_at, secret FROM devices
         WHERE user_id = ANY($1) ORDER BY user_id, created_at, id",
    )
    .bind(users)
    .fetch_all(pool)
    .await?)
}

/// Sets a preference; returns its updated_at.
pub async fn set_preference(
    pool: &PgPool,
    channel: Uuid,
    user: &str,
    level: i16,
) -> Result<DateTime<Utc>, Error> {
    Ok(sqlx::query_scalar(
        "INSERT INTO preferences (channel_id, user_id, level) VALUES ($1, $2, $3)
         ON CONFLICT (channel_id, user_id)
         DO UPDATE SET level = EXCLUDED.level, updated_at = now()
         RETURNING updated_at",
    )
    .bind(channel)
    .bind(user)
    .bind(level)
    .fetch_one(pool)
    .await?)
}

/// A preference, if ever set.
pub async fn preference(
    pool: &PgPool,
    channel: Uuid,
    user: &str,
) -> Result<Option<(i16, DateTime<Utc>)>, Error> {
    let row = sqlx::query(
        "SELECT level, updated_at FROM preferences WHERE channel_id = $1 AND user_id = $2",
    )
    .bind(channel)
    .bind(user)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.get("level"), r.get("updated_at"))))
}

/// Levels set for any of the `(channel, user)` pairs (absent: the default, all), in one
/// query over the primary key.
pub async fn preferences(
    pool: &PgPool,
    pairs: &[(Uuid, String)],
) -> Result<HashMap<(Uuid, String), i16>, Error> {
    let (channels, users): (Vec<Uuid>, Vec<&str>) =
        pairs.iter().map(|(c, u)| (*c, u.as_str())).unzip();
    let rows = sqlx::query(
        "SELECT p.channel_id, p.user_id, p.level
         FROM preferences p
         JOIN unnest($1::uuid[], $2::text[]) AS w(channel_id, user_id)
           ON p.channel_id = w.channel_id AND p.user_id = w.user_id",
    )
    .bind(&channels)
    .bind(&users)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.get("channel_id"), r.get("user_id")), r.get("level")))
        .collect())
}

/// A delivery the fan-out decided on.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub message_id: Uuid,
    pub device_id: Uuid,
    pub user_id: String,
    pub channel_id: Uuid,
    pub channel_name: String,
    pub seq: i64,
    pub sender_id: String,
    pub preview: String,
    pub trace_context: serde_json::Value,
}

/// Inserts the deliveries of a batch of events in one transaction; an existing
/// (message, device) row is left alone, whatever its status (the fan-out is idempotent).
/// Returns how many rows were new.
/// Inserts a batch's delivery rows and applies its block changes, in one transaction.
pub async fn insert_deliveries(
    pool: &PgPool,
    rows: &[NewDelivery],
    blocks: &[BlockChange],
    coalesce_window_ms: u64,
) -> Result<u64, Error> {
    let mut tx = pool.begin().await?;
    apply_blocks(&mut tx, blocks).await?;
    let mut inserted = 0;
    for r in rows {
        let res = sqlx::query(
            "INSERT INTO deliveries (message_id, device_id, delivery_id, user_id, channel_id,
                 channel_name, seq, sender_id, preview, next_attempt_at, trace_context)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                 now() + make_interval(secs => $10::float8 / 1000.0), $11)
             ON CONFLICT (message_id, device_id) DO NOTHING",
        )
        .bind(r.message_id)
        .bind(r.device_id)
        .bind(Uuid::new_v4())
        .bind(&r.user_id)
        .bind(r.channel_id)
        .bind(&r.channel_name)
        .bind(r.seq)
        .bind(&r.sender_id)
        .bind(&r.preview)
        .bind(coalesce_window_ms as f64)
        .bind(&r.trace_context)
        .execute(&mut *tx)
        .await?;
        inserted += res.rows_affected();
    }
    tx.commit().await?;
    Ok(inserted)
}

/// A block placed (`active`) or lifted, as a BlockChanged event said at `at`.
#[derive(Debug, Clone)]
pub struct BlockChange {
    pub blocker: String,
    pub blocked: String,
    pub active: bool,
    pub at: DateTime<Utc>,
}

/// Applies block changes, each only over an older state of its pair (events may arrive
/// out of order or twice).
async fn apply_blocks(conn: &mut PgConnection, changes: &[BlockChange]) -> Result<(), Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let blocker: Vec<&str> = changes.iter().map(|c| c.blocker.as_str()).collect();
    let blocked: Vec<&str> = changes.iter().map(|c| c.blocked.as_str()).collect();
    let active: Vec<bool> = changes.iter().map(|c| c.active).collect();
    let at: Vec<DateTime<Utc>> = changes.iter().map(|c| c.at).collect();
    // Newest change per pair first: one row per pair in the upsert.
    sqlx::query(
        "INSERT INTO blocks (blocker, blocked, active, at)
         SELECT DISTINCT ON (blocker, blocked) blocker, blocked, active, at
         FROM unnest($1::text[], $2::text[], $3::bool[], $4::timestamptz[])
              AS c(blocker, blocked, active, at)
         ORDER BY blocker, blocked, at DESC
         ON CONFLICT (blocker, blocked) DO UPDATE
         SET active = EXCLUDED.active, at = EXCLUDED.at
         WHERE blocks.at <= EXCLUDED.at",
    )
    .bind(&blocker)
    .bind(&blocked)
    .bind(&active)
    .bind(&at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The (blocker, blocked) pairs in force among `blockers` × `senders`.
pub async fn blocked_pairs(
    pool: &PgPool,
    senders: &[String],
    blockers: &[String],
) -> Result<std::collections::HashSet<(String, String)>, Error> {
    if senders.is_empty() || blockers.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT blocker, blocked FROM blocks
         WHERE active AND blocked = ANY($1) AND blocker = ANY($2)",
    )
    .bind(senders)
    .bind(blockers)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
