//! Running a channel: archive and delete, bans and mutes (recorded in the channel's history
//! as system messages and in `audit_log`), and blocks between users.

use super::members::{drop_member, find_member, group_role, member_row};
use super::*;

/// A ban as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BanRow {
    pub channel_id: Uuid,
    pub user_id: String,
    pub banned_by: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<BanRow> for pb::Ban {
    fn from(r: BanRow) -> Self {
        pb::Ban {
            channel_id: r.channel_id.to_string(),
            user_id: r.user_id,
            banned_by: r.banned_by,
            reason: r.reason,
            created_at: Some(ts(r.created_at)),
            expires_at: r.expires_at.map(ts),
        }
    }
}

/// A mute as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MuteRow {
    pub channel_id: Uuid,
    pub user_id: String,
    pub muted_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<MuteRow> for pb::Mute {
    fn from(r: MuteRow) -> Self {
        pb::Mute {
            channel_id: r.channel_id.to_string(),
            user_id: r.user_id,
            muted_by: r.muted_by,
            created_at: Some(ts(r.created_at)),
            expires_at: r.expires_at.map(ts),
        }
    }
}

const BAN_COLS: &str = "channel_id, user_id, banned_by, reason, created_at, expires_at";
const MUTE_COLS: &str = "channel_id, user_id, muted_by, created_at, expires_at";
/// A ban or mute in force.
const IN_FORCE: &str = "(expires_at IS NULL OR expires_at > now())";

/// Whether `user` is banned from `channel` now.
pub(super) async fn banned(tx: &mut Tx, channel: Uuid, user: &str) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM bans WHERE channel_id = $1 AND user_id = $2 AND {IN_FORCE})"
    )))
    .bind(channel)
    .bind(user)
    .fetch_one(&mut **tx)
    .await?)
}

/// Refuses writing (sending, editing) in `channel` for `user` when the channel is archived,
/// they are muted there, or it is a direct channel whose other member blocked them — the
/// same rules the send path applies.
pub(super) async fn check_may_write(
    conn: &mut PgConnection,
    channel: Uuid,
    user: &str,
) -> Result<(), Error> {
    let (archived, muted, blocked): (bool, bool, bool) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT c.archived_at IS NOT NULL,
                EXISTS (SELECT 1 FROM mutes WHERE channel_id = c.id AND user_id = $2 AND {IN_FORCE}),
                c.kind = 'direct' AND EXISTS (
                    SELECT 1 FROM blocks b
                    JOIN members o ON o.channel_id = c.id AND o.user_id = b.blocker
                    WHERE b.blocked = $2)
         FROM channels c WHERE c.id = $1"
        )))
        .bind(channel)
        .bind(user)
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or_default();
    write_refusal(channel, archived, muted, blocked).map_or(Ok(()), Err)
}

/// Why a member may not write (send, edit) in `channel` now, if they may not: the channel
/// is archived, they are muted, or the other member of a direct channel blocked them (in
/// that order). The one answer of the send path and of edits.
pub fn write_refusal(channel: Uuid, archived: bool, muted: bool, blocked: bool) -> Option<Error> {
    if archived {
        Some(Error::Archived(format!(
            "channel {channel} is archived (read-only)"
        )))
    } else if muted {
        Some(Error::Muted(format!("you are muted in channel {channel}")))
    } else if blocked {
        Some(Error::Blocked(
            "the other member of this direct channel blocked you".into(),
        ))
    } else {
        None
    }
}

/// Records an action in `audit_log`.
async fn audit(
    tx: &mut Tx,
    channel: Uuid,
    actor: &str,
    action: &str,
    target: &str,
    details: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO audit_log (channel_id, actor_id, action, target_id, details)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(channel)
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(details)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes a system message (the channel is locked by the caller): the next seq, sender the
/// moderator, a readable body and the event; it reaches members as any message does. Also
/// records the action in `audit_log`.
async fn system_message(
    tx: &mut Tx,
    channel: Uuid,
    actor: &str,
    event: SystemRow,
) -> Result<Pending, Error> {
    let until = event
        .expires_at
        .map(|t| {
            format!(
                " until {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
        .unwrap_or_default();
    let because = if event.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", event.reason)
    };
    let body = format!(
        "{actor} {} {}{until}{because}",
        event.action, event.target_user_id
    );
    let json = serde_json::to_string(&event).map_err(|e| Error::BadArgument(e.to_string()))?;
    audit(
        tx,
        channel,
        actor,
        &event.action,
        &event.target_user_id,
        &json,
    )
    .await?;
    let row = sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
        "WITH c AS (
             UPDATE channels SET last_seq = last_seq + 1, last_activity_at = now()
             WHERE id = $1 RETURNING last_seq
         )
         INSERT INTO messages (channel_id, seq, id, sender_id, client_msg_id, body, system)
         SELECT $1, c.last_seq, $2, $3, $4, $5, $6 FROM c
         RETURNING {MESSAGE_COLS}"
    )))
    .bind(channel)
    .bind(Uuid::now_v7())
    .bind(actor)
    .bind(format!("system-{}", Uuid::now_v7().simple()))
    .bind(body)
    .bind(json)
    .fetch_one(&mut **tx)
    .await?;
    let version: i64 = sqlx::query_scalar("SELECT members_version FROM channels WHERE id = $1")
        .bind(channel)
        .fetch_one(&mut **tx)
        .await?;
    let payload = ev::event::Payload::MessageCreated(ev::MessageCreated {
        message: Some(row.into()),
        members_version: version,
    });
    enqueue(tx, channel, payload, vec![channel_topic(channel)]).await
}

/// The caller's role in a group channel, which must let them manage it, and the channel
/// (locked).
async fn manager(
    tx: &mut Tx,
    caller: &UserId,
    channel: Uuid,
    what: &str,
) -> Result<(Role, ChannelRow), Error> {
    let (role, ch) = group_role(tx, caller, channel).await?;
    if !role.manages() {
        return Err(Error::PermissionDenied(format!(
            "only owners and admins {what}"
        )));
    }
    Ok((role, ch))
}

/// Archives (`true`) or unarchives a group channel (owners and admins); no change, no
/// event.
pub async fn set_archived(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    archived: bool,
) -> Result<Created<ChannelRow>, Error> {
    let (_, before) = manager(&mut tx, caller, channel, "archive or unarchive a channel").await?;
    if before.archived_at.is_some() == archived {
        tx.commit().await?;
        return Ok(Created {
            row: before,
            created: false,
            pending: Vec::new(),
        });
    }
    let row = sqlx::query_as::<_, ChannelRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE channels SET archived_at = CASE WHEN $2 THEN now() END WHERE id = $1
         RETURNING {CHANNEL_COLS}"
    )))
    .bind(channel)
    .bind(archived)
    .fetch_one(&mut *tx)
    .await?;
    let action = if archived { "archived" } else { "unarchived" };
    audit(&mut tx, channel, caller.as_str(), action, "", "").await?;
    let p = channel_updated(&mut tx, &row, caller).await?;
    tx.commit().await?;
    Ok(Created {
        row,
        created: true,
        pending: vec![p],
    })
}

/// Deletes a group channel with its members, messages, invites, bans and mutes (the owner
/// only). `ChannelDeleted` goes to the channel's topic and every member's.
pub async fn delete_channel(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
) -> Result<Vec<Pending>, Error> {
    if group_role(&mut tx, caller, channel).await?.0 != Role::Owner {
        return Err(Error::PermissionDenied(
            "only the owner deletes a channel".into(),
        ));
    }
    let members: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM members WHERE channel_id = $1 ORDER BY user_id")
            .bind(channel)
            .fetch_all(&mut *tx)
            .await?;
    sqlx::query("DELETE FROM channels WHERE id = $1")
        .bind(channel)
        .execute(&mut *tx)
        .await?;
    // Its files go too (the clean-up job deletes the objects).
    super::attachments::doom_of_channel(&mut tx, channel).await?;
    audit(
        &mut tx,
        channel,
        caller.as_str(),
        "deleted",
        "",
        &members.join(","),
    )
    .await?;
    let mut topics = vec![channel_topic(channel)];
    topics.extend(members.iter().map(|m| user_topic(m)));
    let payload = ev::event::Payload::ChannelDeleted(ev::ChannelDeleted {
        channel_id: channel.to_string(),
        deleted_by: caller.to_string(),
        members,
    });
    let p = enqueue(&mut tx, channel, payload, topics).await?;
    tx.commit().await?;
    Ok(vec![p])
}

/// What a ban or mute request asks.
#[derive(Debug, Clone, Default)]
pub struct Sanction {
    /// `None`: until lifted.
    pub expires_at: Option<DateTime<Utc>>,
    /// Bans only.
    pub reason: String,
}

/// Bans `user` from a group channel: removes them if a member and refuses their return
/// until it ends. Banning again with the same expiry and reason changes nothing (no second
/// system message); otherwise the ban is replaced. Returns the ban, whether the user was
/// removed, and the events.
pub async fn ban(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
    s: Sanction,
) -> Result<(BanRow, bool, Vec<Pending>), Error> {
    let (actor, _) = manager(&mut tx, caller, channel, "ban").await?;
    if user == caller {
        return Err(Error::BadArgument("you cannot ban yourself".into()));
    }
    let target = find_member(&mut tx, channel, user.as_str()).await?;
    if !actor.may_moderate(target.as_ref().map(|m| m.role)) {
        return Err(Error::PermissionDenied(format!(
            "a {} cannot ban someone at or above their own rank",
            actor.as_str()
        )));
    }
    let current = sqlx::query_as::<_, BanRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {BAN_COLS} FROM bans WHERE channel_id = $1 AND user_id = $2 AND {IN_FORCE}"
    )))
    .bind(channel)
    .bind(user.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(b) = current
        && target.is_none()
        && b.expires_at == s.expires_at
        && b.reason == s.reason
    {
        tx.commit().await?;
        return Ok((b, false, Vec::new()));
    }
    let row = sqlx::query_as::<_, BanRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO bans (channel_id, user_id, banned_by, reason, expires_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (channel_id, user_id) DO UPDATE
         SET banned_by = EXCLUDED.banned_by, reason = EXCLUDED.reason,
             expires_at = EXCLUDED.expires_at, created_at = now()
         RETURNING {BAN_COLS}"
    )))
    .bind(channel)
    .bind(user.as_str())
    .bind(caller.as_str())
    .bind(&s.reason)
    .bind(s.expires_at)
    .fetch_one(&mut *tx)
    .await?;
    let mut pending = Vec::new();
    let removed = target.is_some();
    if removed {
        pending.push(drop_member(&mut tx, channel, user, caller).await?);
    }
    let event = SystemRow {
        action: "banned".into(),
        target_user_id: user.to_string(),
        reason: s.reason,
        expires_at: s.expires_at,
    };
    pending.push(system_message(&mut tx, channel, caller.as_str(), event).await?);
    tx.commit().await?;
    Ok((row, removed, pending))
}

/// Lifts a ban (owners and admins); `false` when none was in force.
pub async fn unban(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
) -> Result<(bool, Vec<Pending>), Error> {
    manager(&mut tx, caller, channel, "lift bans").await?;
    lift(tx, caller, channel, user, "bans", "unbanned").await
}

/// Deletes `user`'s row of `table` (`bans` or `mutes`) and, when it was in force, records
/// `action` in the history; commits.
async fn lift(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
    table: &'static str,
    action: &str,
) -> Result<(bool, Vec<Pending>), Error> {
    let lifted: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {table} WHERE channel_id = $1 AND user_id = $2 RETURNING {IN_FORCE}"
    )))
    .bind(channel)
    .bind(user.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if lifted != Some(true) {
        tx.commit().await?;
        return Ok((false, Vec::new()));
    }
    let event = SystemRow {
        action: action.into(),
        target_user_id: user.to_string(),
        reason: String::new(),
        expires_at: None,
    };
    let p = system_message(&mut tx, channel, caller.as_str(), event).await?;
    tx.commit().await?;
    Ok((true, vec![p]))
}

/// The bans in force in a group channel (owners and admins), oldest first. At most one per
/// user who was ever banned, so bounded by the moderators' rate of bans.
/// A read: it takes no lock on the channel (sends go on).
pub async fn list_bans(
    conn: &mut PgConnection,
    caller: &UserId,
    channel: Uuid,
) -> Result<Vec<BanRow>, Error> {
    let role = require_member(conn, channel, caller).await?;
    if channel_row(conn, channel, false).await?.kind == "direct" {
        return Err(Error::Conflict(
            "a direct channel has no bans: use blocking".into(),
        ));
    }
    if !role.manages() {
        return Err(Error::PermissionDenied(
            "only owners and admins see bans".into(),
        ));
    }
    Ok(sqlx::query_as::<_, BanRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {BAN_COLS} FROM bans WHERE channel_id = $1 AND {IN_FORCE}
         ORDER BY created_at, user_id"
    )))
    .bind(channel)
    .fetch_all(&mut *conn)
    .await?)
}

/// Mutes a member of a group channel. Muting again with the same expiry changes nothing.
pub async fn mute(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(MuteRow, Vec<Pending>), Error> {
    let (actor, _) = manager(&mut tx, caller, channel, "mute").await?;
    if user == caller {
        return Err(Error::BadArgument("you cannot mute yourself".into()));
    }
    let target = member_row(&mut tx, channel, user.as_str()).await?;
    if !actor.may_moderate(Some(target.role)) {
        return Err(Error::PermissionDenied(format!(
            "a {} cannot mute someone at or above their own rank",
            actor.as_str()
        )));
    }
    let current = sqlx::query_as::<_, MuteRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {MUTE_COLS} FROM mutes WHERE channel_id = $1 AND user_id = $2 AND {IN_FORCE}"
    )))
    .bind(channel)
    .bind(user.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(m) = current
        && m.expires_at == expires_at
    {
        tx.commit().await?;
        return Ok((m, Vec::new()));
    }
    let row = sqlx::query_as::<_, MuteRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO mutes (channel_id, user_id, muted_by, expires_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (channel_id, user_id) DO UPDATE
         SET muted_by = EXCLUDED.muted_by, expires_at = EXCLUDED.expires_at, created_at = now()
         RETURNING {MUTE_COLS}"
    )))
    .bind(channel)
    .bind(user.as_str())
    .bind(caller.as_str())
    .bind(expires_at)
    .fetch_one(&mut *tx)
    .await?;
    let event = SystemRow {
        action: "muted".into(),
        target_user_id: user.to_string(),
        reason: String::new(),
        expires_at,
    };
    let p = system_message(&mut tx, channel, caller.as_str(), event).await?;
    tx.commit().await?;
    Ok((row, vec![p]))
}

/// Lifts a mute (owners and admins, over someone below them); `false` when none was in
/// force.
pub async fn unmute(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
) -> Result<(bool, Vec<Pending>), Error> {
    let (actor, _) = manager(&mut tx, caller, channel, "lift mutes").await?;
    let target = find_member(&mut tx, channel, user.as_str()).await?;
    if !actor.may_moderate(target.map(|m| m.role)) {
        return Err(Error::PermissionDenied(format!(
            "a {} cannot unmute someone at or above their own rank",
            actor.as_str()
        )));
    }
    lift(tx, caller, channel, user, "mutes", "unmuted").await
}

/// Whether `blocker` blocked `user`.
pub(super) async fn blocks(tx: &mut Tx, blocker: &str, user: &str) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2)",
    )
    .bind(blocker)
    .bind(user)
    .fetch_one(&mut **tx)
    .await?)
}

/// A `BlockChanged` event on the blocker's user topic (no channel).
async fn block_event(
    tx: &mut Tx,
    blocker: &UserId,
    blocked: &UserId,
    active: bool,
) -> Result<Pending, Error> {
    let payload = ev::event::Payload::BlockChanged(ev::BlockChanged {
        blocker: blocker.to_string(),
        blocked: blocked.to_string(),
        active,
    });
    enqueue_event(tx, None, payload, vec![user_topic(blocker.as_str())]).await
}

/// The caller blocks `user` (at most `max` blocks per user). Idempotent: `false` when the
/// block existed.
pub async fn block(
    mut tx: Tx,
    caller: &UserId,
    user: &UserId,
    max: u32,
) -> Result<(bool, Vec<Pending>), Error> {
    if user == caller {
        return Err(Error::BadArgument("you cannot block yourself".into()));
    }
    // One caller's blocks are counted one after another, so concurrent blocks never pass
    // the limit together.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('parley:blocks-of:' || $1, 0))")
        .bind(caller.as_str())
        .execute(&mut *tx)
        .await?;
    if blocks(&mut tx, caller.as_str(), user.as_str()).await? {
        tx.commit().await?;
        return Ok((false, Vec::new()));
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM blocks WHERE blocker = $1")
        .bind(caller.as_str())
        .fetch_one(&mut *tx)
        .await?;
    if count >= i64::from(max) {
        return Err(Error::Conflict(format!(
            "you already block {max} users, the most one user may block"
        )));
    }
    sqlx::query("INSERT INTO blocks (blocker, blocked) VALUES ($1, $2)")
        .bind(caller.as_str())
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?;
    let p = block_event(&mut tx, caller, user, true).await?;
    tx.commit().await?;
    Ok((true, vec![p]))
}

/// Lifts the caller's block of `user`; `false` when there was none.
pub async fn unblock(
    mut tx: Tx,
    caller: &UserId,
    user: &UserId,
) -> Result<(bool, Vec<Pending>), Error> {
    let gone = sqlx::query("DELETE FROM blocks WHERE blocker = $1 AND blocked = $2")
        .bind(caller.as_str())
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        tx.commit().await?;
        return Ok((false, Vec::new()));
    }
    let p = block_event(&mut tx, caller, user, false).await?;
    tx.commit().await?;
    Ok((true, vec![p]))
}

/// The users the caller blocked, by user id, with when.
pub async fn list_blocks(
    conn: &mut PgConnection,
    caller: &UserId,
) -> Result<Vec<(String, DateTime<Utc>)>, Error> {
    Ok(
        sqlx::query_as(
            "SELECT blocked, created_at FROM blocks WHERE blocker = $1 ORDER BY blocked",
        )
        .bind(caller.as_str())
        .fetch_all(&mut *conn)
        .await?,
    )
}
