//! The gRPC calls that run a channel (archive, delete, bans, mutes) and blocks: request
//! reading and answers; the rules are the store's.

use chrono::{DateTime, Utc};
use parley_kit::domain::UserId;
use parley_proto::messaging::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Messaging, channel_id, invalid, user};
use crate::store;

/// A ban's or mute's end: unset (until lifted) or a time in the future.
fn expiry(t: Option<prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, Status> {
    let Some(t) = t else { return Ok(None) };
    let at = u32::try_from(t.nanos)
        .ok()
        .and_then(|n| DateTime::from_timestamp(t.seconds, n))
        .ok_or_else(|| invalid("expires_at is not a valid time"))?;
    if at <= Utc::now() {
        return Err(invalid("expires_at must be in the future"));
    }
    // The database keeps microseconds: answer what a later read returns.
    Ok(Some(chrono::SubsecRound::trunc_subsecs(at, 6)))
}

impl Messaging {
    pub(super) async fn do_set_archived(
        &self,
        req: Request<pb::SetArchivedRequest>,
    ) -> Result<Response<pb::SetArchivedResponse>, Status> {
        let caller = user(&req)?;
        let r = req.into_inner();
        let id = channel_id(&r.channel_id)?;
        let done = store::set_archived(self.tx().await?, &caller, id, r.archived).await?;
        self.publish(done.pending).await;
        Ok(Response::new(pb::SetArchivedResponse {
            channel: Some(done.row.into()),
            changed: done.created,
        }))
    }

    pub(super) async fn do_delete_channel(
        &self,
        req: Request<pb::DeleteChannelRequest>,
    ) -> Result<Response<pb::DeleteChannelResponse>, Status> {
        let caller = user(&req)?;
        let id = channel_id(&req.get_ref().channel_id)?;
        let pending = store::delete_channel(self.tx().await?, &caller, id).await?;
        self.publish(pending).await;
        Ok(Response::new(pb::DeleteChannelResponse {}))
    }

    pub(super) async fn do_ban(
        &self,
        req: Request<pb::BanMemberRequest>,
    ) -> Result<Response<pb::BanMemberResponse>, Status> {
        let caller = user(&req)?;
        let r = req.into_inner();
        let id = channel_id(&r.channel_id)?;
        let target = UserId::parse(&r.user_id)?;
        let max = self.config.limits.max_reason_chars;
        if r.reason.chars().count() > max {
            return Err(invalid(format!("reason is longer than {max} characters")));
        }
        if r.reason.chars().any(char::is_control) {
            return Err(invalid(
                "reason must be one line without control characters",
            ));
        }
        let sanction = store::Sanction {
            expires_at: expiry(r.expires_at)?,
            reason: r.reason,
        };
        let (ban, removed, pending) =
            store::ban(self.tx().await?, &caller, id, &target, sanction).await?;
        self.publish(pending).await;
        Ok(Response::new(pb::BanMemberResponse {
            ban: Some(ban.into()),
            removed,
        }))
    }

    pub(super) async fn do_unban(
        &self,
        req: Request<pb::UnbanMemberRequest>,
    ) -> Result<Response<pb::UnbanMemberResponse>, Status> {
        let caller = user(&req)?;
        let r = req.into_inner();
        let id = channel_id(&r.channel_id)?;
        let target = UserId::parse(&r.user_id)?;
        let (changed, pending) = store::unban(self.tx().await?, &caller, id, &target).await?;
        self.publish(pending).await;
        Ok(Response::new(pb::UnbanMemberResponse { changed }))
    }

    pub(super) async fn do_list_bans(
        &self,
        req: Request<pb::ListBansRequest>,
    ) -> Result<Response<pb::ListBansResponse>, Status> {
        let caller = user(&req)?;
        let id = channel_id(&req.get_ref().channel_id)?;
        let bans = store::list_bans(&mut *self.conn().await?, &caller, id).await?;
        Ok(Response::new(pb::ListBansResponse {
            bans: bans.into_iter().map(Into::into).collect(),
        }))
    }

    pub(super) async fn do_mute(
        &self,
        req: Request<pb::MuteMemberRequest>,
    ) -> Result<Response<pb::MuteMemberResponse>, Status> {
        let caller = user(&req)?;
        let r = req.into_inner();
        let id = channel_id(&r.channel_id)?;
        let target = UserId::parse(&r.user_id)?;
        let until = expiry(r.expires_at)?;
        let (mute, pending) = store::mute(self.tx().await?, &caller, id, &target, until).await?;
        self.publish(pending).await;
        Ok(Response::new(pb::MuteMemberResponse {
            mute: Some(mute.into()),
        }))
    }

    pub(super) async fn do_unmute(
        &self,
        req: Request<pb::UnmuteMemberRequest>,
    ) -> Result<Response<pb::UnmuteMemberResponse>, Status> {
        let caller = user(&req)?;
        let r = req.into_inner();
        let id = channel_id(&r.channel_id)?;
        let target = UserId::parse(&r.user_id)?;
        let (changed, pending) = store::unmute(self.tx().await?, &caller, id, &target).await?;
        self.publish(pending).await;
        Ok(Response::new(pb::UnmuteMemberResponse { changed }))
    }

    pub(super) async fn do_block(
        &self,
        req: Request<pb::BlockUserRequest>,
    ) -> Result<Response<pb::BlockUserResponse>, Status> {
        let caller = user(&req)?;
        let target = UserId::parse(&req.get_ref().user_id)?;
        let max = self.config.limits.max_blocks;
        let (created, pending) = store::block(self.tx().await?, &caller, &target, max).await?;
        self.publish(pending).await;
        Ok(Response::new(pb::BlockUserResponse { created }))
    }

    pub(super) async fn do_unblock(
        &self,
        req: Request<pb::UnblockUserRequest>,
    ) -> Result<Response<pb::UnblockUserResponse>, Status> {
        let caller = user(&req)?;
        let target = UserId::parse(&req.get_ref().user_id)?;
        let (changed, pending) = store::unblock(self.tx().await?, &caller, &target).await?;
        self.publish(pending).await;
        Ok(Response::new(pb::UnblockUserResponse { changed }))
    }

    pub(super) async fn do_list_blocks(
        &self,
        req: Request<pb::ListBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksResponse>, Status> {
        let caller = user(&req)?;
        let rows = store::list_blocks(&mut *self.conn().await?, &caller).await?;
        Ok(Response::new(pb::ListBlocksResponse {
            blocks: rows
                .into_iter()
                .map(|(user_id, at)| pb::Block {
                    user_id,
                    created_at: Some(store::ts(at)),
                })
                .collect(),
        }))
    }
}
