//! Membership: who is in a channel, adding and removing members, how many channels a user
//! is in, and who shares a channel with whom.

use super::*;

/// Refuses (CONFLICT) when one of `users` is already in `max` channels. Takes a
/// transaction-level lock per user first (in id order), so concurrent joins of one user
/// are counted one after another and never pass the limit together.
pub(super) async fn check_channels_of(tx: &mut Tx, users: &[&str], max: u32) -> Result<(), Error> {
    let mut users = users.to_vec();
    users.sort_unstable();
    users.dedup();
    for u in &users {
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('parley:channels-of:' || $1, 0))",
        )
        .bind(*u)
        .execute(&mut **tx)
        .await?;
    }
    let full: Option<String> = sqlx::query_scalar(
        "SELECT user_id FROM members WHERE user_id = ANY($1)
         GROUP BY user_id HAVING count(*) >= $2 ORDER BY user_id LIMIT 1",
    )
    .bind(&users)
    .bind(i64::from(max))
    .fetch_optional(&mut **tx)
    .await?;
    match full {
        Some(u) => Err(Error::Conflict(format!(
            "{u} is already in {max} channels, the most one user may be in"
        ))),
        None => Ok(()),
    }
}

/// The ids of `users` who share at least one channel with `caller` (and `caller` itself).
pub async fn contacts(
    conn: &mut PgConnection,
    caller: &UserId,
    users: &[UserId],
) -> Result<Vec<String>, Error> {
    let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    Ok(sqlx::query_scalar(
        "SELECT theirs.user_id FROM members theirs
         JOIN members mine ON mine.channel_id = theirs.channel_id AND mine.user_id = $1
         WHERE theirs.user_id = ANY($2)
         UNION
         SELECT $1 WHERE $1 = ANY($2)",
    )
    .bind(caller.as_str())
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// A member with its channel's membership version (one row of [`list_members`]).
#[derive(sqlx::FromRow)]
struct VersionedMember {
    #[sqlx(flatten)]
    member: MemberRow,
    members_version: i64,
}

/// The members of `channel` and its membership version, read in one snapshot (one
/// statement).
pub async fn list_members(
    conn: &mut PgConnection,
    caller: &UserId,
    channel: Uuid,
) -> Result<(Vec<MemberRow>, i64), Error> {
    require_member(conn, channel, caller).await?;
    let rows: Vec<VersionedMember> = sqlx::query_as(
        "SELECT m.channel_id, m.user_id, m.role, m.joined_at, c.members_version
         FROM members m JOIN channels c ON c.id = m.channel_id
         WHERE m.channel_id = $1 ORDER BY m.joined_at, m.user_id",
    )
    .bind(channel)
    .fetch_all(&mut *conn)
    .await?;
    let version = rows.first().map_or(0, |r| r.members_version);
    let members = rows.into_iter().map(|r| r.member).collect();
    Ok((members, version))
}

/// Adds `user` to `channel`. Owners/admins only; idempotent for an existing member.
pub async fn add_member(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
    max_members: u32,
    max_channels: u32,
) -> Result<Created<MemberRow>, Error> {
    let role = require_member(&mut tx, channel, caller).await?;
    // Lock the channel row: serialises with sends (consistent channel_last_seq in the
    // event) and with other adds (member limit).
    let ch = channel_row(&mut tx, channel, true).await?;
    if ch.kind == "direct" {
        return Err(Error::Conflict(
            "a direct channel has exactly two members".into(),
        ));
    }
    if !role.manages() {
        return Err(Error::PermissionDenied(
            "only owners and admins add members".into(),
        ));
    }
    if let Some(m) = find_member(&mut tx, channel, user.as_str()).await? {
        return unchanged(tx, m).await;
    }
    admit(
        tx,
        &ch,
        user.as_str(),
        caller.as_str(),
        max_members,
        max_channels,
    )
    .await
}

/// Makes `user` a member of `ch` (locked) within the member and channel-count limits, and
/// commits.
pub(super) async fn admit(
    mut tx: Tx,
    ch: &ChannelRow,
    user: &str,
    added_by: &str,
    max_members: u32,
    max_channels: u32,
) -> Result<Created<MemberRow>, Error> {
    if super::moderation::banned(&mut tx, ch.id, user).await? {
        return Err(Error::Banned(format!(
            "{user} is banned from channel {}",
            ch.id
        )));
    }
    if ch.member_count as u32 >= max_members {
        return Err(Error::Conflict(format!(
            "channel is full ({max_members} members)"
        )));
    }
    check_channels_of(&mut tx, &[user], max_channels).await?;
    let (row, pending) = insert_member(&mut tx, ch, user, Role::Member, added_by).await?;
    count_members(&mut tx, ch.id, 1).await?;
    tx.commit().await?;
    Ok(Created {
        row,
        created: true,
        pending: vec![pending],
    })
}

/// A member came (`1`) or went (`-1`): the count and the membership version move.
pub(super) async fn count_members(tx: &mut Tx, channel: Uuid, delta: i32) -> Result<(), Error> {
    sqlx::query(
        "UPDATE channels SET member_count = member_count + $2, \
         members_version = members_version + 1 WHERE id = $1",
    )
    .bind(channel)
    .bind(delta)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An invite as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InviteRow {
    pub code: String,
    pub channel_id: Uuid,
    pub created_by: String,
    pub expires_at: DateTime<Utc>,
    pub max_uses: i32,
    pub uses: i32,
}

impl From<InviteRow> for pb::Invite {
    fn from(r: InviteRow) -> Self {
        let InviteRow {
            code,
            channel_id,
            created_by,
            expires_at,
            max_uses,
            uses,
        } = r;
        pb::Invite {
            code,
            channel_id: channel_id.to_string(),
            created_by,
            expires_at: Some(ts(expires_at)),
            max_uses: max_uses.max(0) as u32,
            uses: uses.max(0) as u32,
        }
    }
}

const INVITE_COLS: &str = "code, channel_id, created_by, expires_at, max_uses, uses";

/// An invite to a group or public channel (owners and admins), valid for `ttl`, admitting
/// at most `max_uses` users.
pub async fn create_invite(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    ttl: std::time::Duration,
    max_uses: u32,
) -> Result<InviteRow, Error> {
    let (role, _) = group_role(&mut tx, caller, channel).await?;
    if !role.manages() {
        return Err(Error::PermissionDenied(
            "only owners and admins invite".into(),
        ));
    }
    let row = sqlx::query_as::<_, InviteRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO invites (code, channel_id, created_by, expires_at, max_uses)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)
         RETURNING {INVITE_COLS}"
    )))
    .bind(Uuid::new_v4().simple().to_string())
    .bind(channel)
    .bind(caller.as_str())
    .bind(ttl.as_secs_f64())
    .bind(i32::try_from(max_uses).unwrap_or(i32::MAX))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// The caller joins the channel of invite `code`, using it once; already a member:
/// nothing changes and no use is taken. An unknown, expired or used-up code is NOT_FOUND.
pub async fn accept_invite(
    mut tx: Tx,
    caller: &UserId,
    code: &str,
    max_members: u32,
    max_channels: u32,
) -> Result<Created<MemberRow>, Error> {
    let gone = || Error::NotFound("no such invite, or it expired or was used up".into());
    let (channel, inviter): (Uuid, String) =
        sqlx::query_as("SELECT channel_id, created_by FROM invites WHERE code = $1")
            .bind(code)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(gone)?;
    let ch = channel_row(&mut tx, channel, true).await?;
    if let Some(m) = find_member(&mut tx, channel, caller.as_str()).await? {
        return unchanged(tx, m).await;
    }
    let used = sqlx::query(
        "UPDATE invites SET uses = uses + 1
         WHERE code = $1 AND expires_at > now() AND uses < max_uses",
    )
    .bind(code)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if used == 0 {
        return Err(gone());
    }
    admit(
        tx,
        &ch,
        caller.as_str(),
        &inviter,
        max_members,
        max_channels,
    )
    .await
}

/// The caller joins a public channel as a member; idempotent (`created` false when already
/// a member). The member and channel-count limits apply.
pub async fn join(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    max_members: u32,
    max_channels: u32,
) -> Result<Created<MemberRow>, Error> {
    let ch = channel_row(&mut tx, channel, true).await?;
    if let Some(m) = find_member(&mut tx, channel, caller.as_str()).await? {
        return unchanged(tx, m).await;
    }
    if ch.kind != "public" {
        return Err(Error::PermissionDenied(
            "only public channels can be joined; ask a member to add you".into(),
        ));
    }
    admit(
        tx,
        &ch,
        caller.as_str(),
        caller.as_str(),
        max_members,
        max_channels,
    )
    .await
}

/// `user`'s membership of `channel`, if any.
pub(super) async fn find_member(
    tx: &mut Tx,
    channel: Uuid,
    user: &str,
) -> Result<Option<MemberRow>, Error> {
    Ok(sqlx::query_as::<_, MemberRow>(
        "SELECT channel_id, user_id, role, joined_at FROM members WHERE channel_id = $1 AND user_id = $2",
    )
    .bind(channel)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await?)
}

/// `user`'s membership of `channel`, or `NotFound` when they are not a member.
pub(super) async fn member_row(tx: &mut Tx, channel: Uuid, user: &str) -> Result<MemberRow, Error> {
    find_member(tx, channel, user)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{user} is not a member of channel {channel}")))
}

/// Nothing to do: `row` as it is (an idempotent repeat), committed.
pub(super) async fn unchanged(tx: Tx, row: MemberRow) -> Result<Created<MemberRow>, Error> {
    tx.commit().await?;
    Ok(Created {
        row,
        created: false,
        pending: Vec::new(),
    })
}

/// Sets `role` on `user`, publishing `MemberRoleChanged` on the channel's and the user's
/// topics.
async fn write_role(
    tx: &mut Tx,
    channel: Uuid,
    user: &str,
    role: Role,
    changed_by: &str,
) -> Result<(MemberRow, Pending), Error> {
    let row = sqlx::query_as::<_, MemberRow>(
        "UPDATE members SET role = $3 WHERE channel_id = $1 AND user_id = $2
         RETURNING channel_id, user_id, role, joined_at",
    )
    .bind(channel)
    .bind(user)
    .bind(role)
    .fetch_one(&mut **tx)
    .await?;
    let payload = ev::event::Payload::MemberRoleChanged(ev::MemberRoleChanged {
        member: Some(row.clone().into()),
        changed_by: changed_by.to_owned(),
    });
    let p = enqueue(
        tx,
        channel,
        payload,
        vec![channel_topic(channel), user_topic(user)],
    )
    .await?;
    Ok((row, p))
}

/// The caller's role in a group channel, and the channel (locked): roles do not exist in
/// direct channels.
pub(super) async fn group_role(
    tx: &mut Tx,
    caller: &UserId,
    channel: Uuid,
) -> Result<(Role, ChannelRow), Error> {
    let role = require_member(tx, channel, caller).await?;
    let ch = channel_row(tx, channel, true).await?;
    if ch.kind == "direct" {
        return Err(Error::Conflict(
            "a direct channel has no roles: both members are equal".into(),
        ));
    }
    Ok((role, ch))
}

/// Makes `user` an admin or a plain member (see [`Role::may_set`]). Setting the role they
/// have changes nothing (`created` false, no event).
pub async fn set_role(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
    role: Role,
) -> Result<Created<MemberRow>, Error> {
    let (actor, _) = group_role(&mut tx, caller, channel).await?;
    let target = member_row(&mut tx, channel, user.as_str()).await?;
    if !actor.may_set(target.role, role) {
        return Err(Error::PermissionDenied(format!(
            "a {} cannot make a {} {}: owners name and demote admins, nobody changes \
             someone at or above their own rank",
            actor.as_str(),
            target.role.as_str(),
            if role == Role::Admin {
                "an admin"
            } else {
                "a member"
            },
        )));
    }
    if target.role == role {
        return unchanged(tx, target).await;
    }
    let (row, p) = write_role(&mut tx, channel, user.as_str(), role, caller.as_str()).await?;
    tx.commit().await?;
    Ok(Created {
        row,
        created: true,
        pending: vec![p],
    })
}

/// The owner hands the channel to `user`, a member, who becomes owner; the caller becomes
/// an admin. Returns (new owner, previous owner).
pub async fn transfer_ownership(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
) -> Result<(MemberRow, MemberRow, Vec<Pending>), Error> {
    let (actor, _) = group_role(&mut tx, caller, channel).await?;
    if actor != Role::Owner {
        return Err(Error::PermissionDenied(
            "only the owner transfers ownership".into(),
        ));
    }
    if user == caller {
        return Err(Error::BadArgument(
            "the caller already owns the channel".into(),
        ));
    }
    member_row(&mut tx, channel, user.as_str()).await?;
    let (owner, p1) = write_role(
        &mut tx,
        channel,
        user.as_str(),
        Role::Owner,
        caller.as_str(),
    )
    .await?;
    let (previous, p2) = write_role(
        &mut tx,
        channel,
        caller.as_str(),
        Role::Admin,
        caller.as_str(),
    )
    .await?;
    tx.commit().await?;
    Ok((owner, previous, vec![p1, p2]))
}

/// Deletes `user`'s membership of `channel` (the count and version move) and publishes
/// `MemberLeft` on the channel's and the user's topics.
pub(super) async fn drop_member(
    tx: &mut Tx,
    channel: Uuid,
    user: &UserId,
    removed_by: &UserId,
) -> Result<Pending, Error> {
    sqlx::query("DELETE FROM members WHERE channel_id = $1 AND user_id = $2")
        .bind(channel)
        .bind(user.as_str())
        .execute(&mut **tx)
        .await?;
    count_members(tx, channel, -1).await?;
    let payload = ev::event::Payload::MemberLeft(ev::MemberLeft {
        channel_id: channel.to_string(),
        user_id: user.to_string(),
        removed_by: removed_by.to_string(),
    });
    enqueue(
        tx,
        channel,
        payload,
        vec![channel_topic(channel), user_topic(user.as_str())],
    )
    .await
}

/// Removes `user` from `channel`: themselves, or others by an owner/admin.
pub async fn remove_member(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
) -> Result<Vec<Pending>, Error> {
    let role = require_member(&mut tx, channel, caller).await?;
    let ch = channel_row(&mut tx, channel, true).await?;
    let target_role: Option<Role> =
        sqlx::query_scalar("SELECT role FROM members WHERE channel_id = $1 AND user_id = $2")
            .bind(channel)
            .bind(user.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(target_role) = target_role else {
        return Err(Error::NotFound(format!(
            "{user} is not a member of channel {channel}"
        )));
    };
    if caller != user {
        if !role.manages() {
            return Err(Error::PermissionDenied(
                "only owners and admins remove others".into(),
            ));
        }
        if !target_role.removable_by_others() {
            return Err(Error::PermissionDenied(
                "the owner cannot be removed by others".into(),
            ));
        }
    }
    let p = drop_member(&mut tx, ch.id, user, caller).await?;
    let mut pending = vec![p];
    if target_role == Role::Owner {
        // The owner left: the admin who joined first becomes owner, else the member who
        // joined first; a channel nobody is left in keeps no owner.
        let successor: Option<String> = sqlx::query_scalar(
            "SELECT user_id FROM members WHERE channel_id = $1
             ORDER BY role = 'admin' DESC, joined_at, user_id LIMIT 1",
        )
        .bind(channel)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(next) = successor {
            let (_, p) = write_role(&mut tx, channel, &next, Role::Owner, caller.as_str()).await?;
            pending.push(p);
        }
    }
    tx.commit().await?;
    Ok(pending)
}
