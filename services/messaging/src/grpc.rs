//! The gRPC face of messaging: parses requests into domain types, calls the store,
//! publishes committed events, converts rows back to protobuf.

use std::sync::Arc;

use parley_kit::domain::{MessageBody, UserId};
use parley_proto::messaging::v1::{self as pb, messaging_service_server::MessagingService};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{Config, Error, batch::Batcher, outbox, store};

mod attachments;
mod input;
mod moderation;
mod search;
mod sends;

use input::{
    channel_id, decode_cursor, decode_name_cursor, encode_cursor, encode_name_cursor, invalid, seq,
    user,
};

pub struct Messaging {
    pool: PgPool,
    publisher: outbox::Publisher,
    batcher: Batcher,
    config: Arc<Config>,
    /// Object storage for attachments; `None` when not configured.
    storage: Option<crate::storage::Storage>,
}

impl Messaging {
    pub fn new(
        pool: PgPool,
        publisher: outbox::Publisher,
        batcher: Batcher,
        config: Arc<Config>,
        storage: Option<crate::storage::Storage>,
    ) -> Self {
        Self {
            pool,
            publisher,
            batcher,
            config,
            storage,
        }
    }

    async fn publish(&self, entries: Vec<store::Pending>) {
        if self.config.outbox.publish_inline {
            outbox::publish_committed(&self.pool, &self.publisher, entries).await;
        }
    }

    fn limit(&self, requested: u32) -> Result<u32, Status> {
        let l = &self.config.limits;
        match requested {
            0 => Ok(l.default_page),
            n if n <= l.max_page => Ok(n),
            n => Err(invalid(format!("limit {n} out of range 1-{}", l.max_page))),
        }
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Status> {
        Ok(self.pool.acquire().await.map_err(Error::from)?)
    }

    async fn tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Status> {
        Ok(self.pool.begin().await.map_err(Error::from)?)
    }
}

/// Most user ids one FilterContacts call may ask about.
const MAX_CONTACT_QUERY: usize = 500;

#[tonic::async_trait]
impl MessagingService for Messaging {
    #[tracing::instrument(skip_all, fields(user))]
    async fn create_channel(
        &self,
        req: Request<pb::CreateChannelRequest>,
    ) -> Result<Response<pb::CreateChannelResponse>, Status> {
        let caller = user(&req)?;
        tracing::Span::current().record("user", caller.as_str());
        let pb::CreateChannelRequest {
            kind,
            name,
            members,
        } = req.into_inner();
        let members = members
            .iter()
            .map(|m| UserId::parse(m))
            .collect::<Result<Vec<_>, _>>()?;
        let change = match pb::ChannelKind::try_from(kind) {
            Ok(kind @ (pb::ChannelKind::Group | pb::ChannelKind::Public)) => {
                let name = self.group_name(&name)?;
                store::create_group(
                    self.tx().await?,
                    &caller,
                    kind == pb::ChannelKind::Public,
                    &name,
                    &members,
                    self.config.limits.max_members,
                    self.config.limits.max_channels_per_user,
                )
                .await?
            }
            Ok(pb::ChannelKind::Direct) => {
                let [other] = members.as_slice() else {
                    return Err(invalid("a direct channel has exactly one other member"));
                };
                if *other == caller {
                    return Err(invalid("a direct channel needs another user"));
                }
                store::create_direct(
                    self.tx().await?,
                    &caller,
                    other,
                    self.config.limits.max_channels_per_user,
                )
                .await?
            }
            _ => return Err(invalid("kind must be group or direct")),
        };
        self.publish(change.pending).await;
        Ok(Response::new(pb::CreateChannelResponse {
            channel: Some(change.row.into()),
            created: change.created,
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn get_channel(
        &self,
        req: Request<pb::GetChannelRequest>,
    ) -> Result<Response<pb::GetChannelResponse>, Status> {
        let caller = user(&req)?;
        let id = channel_id(&req.get_ref().channel_id)?;
        let c = store::get_channel(&mut *self.conn().await?, &caller, id).await?;
        Ok(Response::new(pb::GetChannelResponse {
            channel: Some(c.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn update_channel(
        &self,
        req: Request<pb::UpdateChannelRequest>,
    ) -> Result<Response<pb::UpdateChannelResponse>, Status> {
        let caller = user(&req)?;
        let id = channel_id(&req.get_ref().channel_id)?;
        let changes = self.channel_changes(req.get_ref())?;
        let done = store::update_channel(self.tx().await?, &caller, id, changes).await?;
        self.publish(done.pending).await;
        Ok(Response::new(pb::UpdateChannelResponse {
            channel: Some(done.row.into()),
            changed: done.created,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_channels(
        &self,
        req: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, Status> {
        let caller = user(&req)?;
        let pb::ListChannelsRequest { limit, cursor } = req.into_inner();
        let limit = self.limit(limit)?;
        let after = if cursor.is_empty() {
            None
        } else {
            Some(decode_cursor(&cursor)?)
        };
        let (rows, more) =
            store::list_channels(&mut *self.conn().await?, &caller, after, limit).await?;
        let next_cursor = if more {
            rows.last().map(encode_cursor).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListChannelsResponse {
            channels: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_public_channels(
        &self,
        req: Request<pb::ListPublicChannelsRequest>,
    ) -> Result<Response<pb::ListPublicChannelsResponse>, Status> {
        user(&req)?;
        let pb::ListPublicChannelsRequest {
            query,
            limit,
            cursor,
        } = req.into_inner();
        let limit = self.limit(limit)?;
        let query = query.trim();
        parley_kit::domain::check_text("query", query)?;
        if query.chars().count() > self.config.limits.max_name_chars {
            return Err(invalid(format!(
                "query is longer than {} characters",
                self.config.limits.max_name_chars
            )));
        }
        let after = if cursor.is_empty() {
            None
        } else {
            Some(decode_name_cursor(&cursor)?)
        };
        let (rows, more) =
            store::public_channels(&mut *self.conn().await?, query, after, limit).await?;
        let next_cursor = match rows.last() {
            Some(last) if more => encode_name_cursor(last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListPublicChannelsResponse {
            channels: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn create_invite(
        &self,
        req: Request<pb::CreateInviteRequest>,
    ) -> Result<Response<pb::CreateInviteResponse>, Status> {
        let caller = user(&req)?;
        let pb::CreateInviteRequest {
            channel_id: ch,
            expires_in_secs,
            max_uses,
        } = req.into_inner();
        let id = channel_id(&ch)?;
        let limits = &self.config.limits;
        let ttl = match expires_in_secs {
            0 => limits.invite_default_ttl_secs,
            s if s <= limits.invite_max_ttl_secs => s,
            _ => {
                return Err(invalid(format!(
                    "an invite lasts at most {} s",
                    limits.invite_max_ttl_secs
                )));
            }
        };
        let max_uses = match max_uses {
            0 => 1,
            n if n <= limits.invite_max_uses => n,
            _ => {
                return Err(invalid(format!(
                    "an invite admits at most {} users",
                    limits.invite_max_uses
                )));
            }
        };
        let ttl = std::time::Duration::from_secs(ttl);
        let invite = store::create_invite(self.tx().await?, &caller, id, ttl, max_uses).await?;
        Ok(Response::new(pb::CreateInviteResponse {
            invite: Some(invite.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn accept_invite(
        &self,
        req: Request<pb::AcceptInviteRequest>,
    ) -> Result<Response<pb::AcceptInviteResponse>, Status> {
        let caller = user(&req)?;
        let code = req.into_inner().code;
        if code.is_empty() || code.len() > 64 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(parley_kit::ErrorCode::NotFound
                .status("no such invite, or it expired or was used up"));
        }
        let limits = &self.config.limits;
        let done = store::accept_invite(
            self.tx().await?,
            &caller,
            &code,
            limits.max_members,
            limits.max_channels_per_user,
        )
        .await?;
        self.publish(done.pending).await;
        Ok(Response::new(pb::AcceptInviteResponse {
            member: Some(done.row.into()),
            created: done.created,
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn join_channel(
        &self,
        req: Request<pb::JoinChannelRequest>,
    ) -> Result<Response<pb::JoinChannelResponse>, Status> {
        let caller = user(&req)?;
        let id = channel_id(&req.get_ref().channel_id)?;
        let limits = &self.config.limits;
        let done = store::join(
            self.tx().await?,
            &caller,
            id,
            limits.max_members,
            limits.max_channels_per_user,
        )
        .await?;
        self.publish(done.pending).await;
        Ok(Response::new(pb::JoinChannelResponse {
            member: Some(done.row.into()),
            created: done.created,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_channel_positions(
        &self,
        req: Request<pb::ListChannelPositionsRequest>,
    ) -> Result<Response<pb::ListChannelPositionsResponse>, Status> {
        let caller = user(&req)?;
        let rows = store::channel_positions(&mut *self.conn().await?, &caller).await?;
        Ok(Response::new(pb::ListChannelPositionsResponse {
            positions: rows
                .into_iter()
                .map(|(id, last)| pb::ChannelPosition {
                    channel_id: id.to_string(),
                    last_seq: last.max(0) as u64,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(n = req.get_ref().user_ids.len()))]
    async fn filter_contacts(
        &self,
        req: Request<pb::FilterContactsRequest>,
    ) -> Result<Response<pb::FilterContactsResponse>, Status> {
        let caller = user(&req)?;
        let ids = &req.get_ref().user_ids;
        if ids.len() > MAX_CONTACT_QUERY {
            return Err(invalid(format!(
                "at most {MAX_CONTACT_QUERY} user ids a call"
            )));
        }
        let ids = ids
            .iter()
            .map(|u| UserId::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let user_ids = store::contacts(&mut *self.conn().await?, &caller, &ids).await?;
        Ok(Response::new(pb::FilterContactsResponse { user_ids }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = user(&req)?;
        let id = channel_id(&req.get_ref().channel_id)?;
        let (rows, members_version) =
            store::list_members(&mut *self.conn().await?, &caller, id).await?;
        Ok(Response::new(pb::ListMembersResponse {
            members: rows.into_iter().map(Into::into).collect(),
            members_version,
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let caller = user(&req)?;
        let pb::AddMemberRequest {
            channel_id: ch,
            user_id,
        } = req.into_inner();
        let id = channel_id(&ch)?;
        let target = UserId::parse(&user_id)?;
        let change = store::add_member(
            self.tx().await?,
            &caller,
            id,
            &target,
            self.config.limits.max_members,
            self.config.limits.max_channels_per_user,
        )
        .await?;
        self.publish(change.pending).await;
        Ok(Response::new(pb::AddMemberResponse {
            member: Some(change.row.into()),
            created: change.created,
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let caller = user(&req)?;
        let pb::RemoveMemberRequest {
            channel_id: ch,
            user_id,
        } = req.into_inner();
        let id = channel_id(&ch)?;
        let target = UserId::parse(&user_id)?;
        let pending = store::remove_member(self.tx().await?, &caller, id, &target).await?;
        self.publish(pending).await;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn set_member_role(
        &self,
        req: Request<pb::SetMemberRoleRequest>,
    ) -> Result<Response<pb::SetMemberRoleResponse>, Status> {
        let caller = user(&req)?;
        let pb::SetMemberRoleRequest {
            channel_id: ch,
            user_id,
            role,
        } = req.into_inner();
        let id = channel_id(&ch)?;
        let target = UserId::parse(&user_id)?;
        let role = match pb::Role::try_from(role) {
            Ok(pb::Role::Admin) => store::Role::Admin,
            Ok(pb::Role::Member) => store::Role::Member,
            _ => {
                return Err(invalid(
                    "role must be admin or member (ownership moves by a transfer)",
                ));
            }
        };
        let done = store::set_role(self.tx().await?, &caller, id, &target, role).await?;
        self.publish(done.pending).await;
        Ok(Response::new(pb::SetMemberRoleResponse {
            member: Some(done.row.into()),
            changed: done.created,
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn transfer_ownership(
        &self,
        req: Request<pb::TransferOwnershipRequest>,
    ) -> Result<Response<pb::TransferOwnershipResponse>, Status> {
        let caller = user(&req)?;
        let pb::TransferOwnershipRequest {
            channel_id: ch,
            user_id,
        } = req.into_inner();
        let id = channel_id(&ch)?;
        let target = UserId::parse(&user_id)?;
        let (owner, previous, pending) =
            store::transfer_ownership(self.tx().await?, &caller, id, &target).await?;
        self.publish(pending).await;
        Ok(Response::new(pb::TransferOwnershipResponse {
            owner: Some(owner.into()),
            previous: Some(previous.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id, seq))]
    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = user(&req)?;
        Ok(Response::new(
            self.send_one(caller, req.into_inner()).await?,
        ))
    }

    async fn send_messages(
        &self,
        req: Request<pb::SendMessagesRequest>,
    ) -> Result<Response<pb::SendMessagesResponse>, Status> {
        self.do_send_messages(req).await
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let caller = user(&req)?;
        let pb::ListMessagesRequest {
            channel_id: ch,
            before,
            after,
            limit,
        } = req.into_inner();
        let id = channel_id(&ch)?;
        let limit = self.limit(limit)?;
        let to_i64 = |v: u64| i64::try_from(v).map_err(|_| invalid("cursor out of range"));
        let page = match (before, after) {
            (Some(_), Some(_)) => return Err(invalid("use either before or after, not both")),
            (Some(b), None) => store::Page::Before(to_i64(b)?),
            (None, Some(a)) => store::Page::After(to_i64(a)?),
            (None, None) => store::Page::Latest,
        };
        let (rows, has_more) =
            store::list_messages(&mut *self.conn().await?, &caller, id, page, limit).await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: rows.into_iter().map(Into::into).collect(),
            has_more,
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id, seq = req.get_ref().seq))]
    async fn edit_message(
        &self,
        req: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::EditMessageResponse>, Status> {
        let caller = user(&req)?;
        let pb::EditMessageRequest {
            channel_id: ch,
            seq: s,
            body,
        } = req.into_inner();
        let id = channel_id(&ch)?;
        let s = seq(s)?;
        let body = MessageBody::parse(&body, self.config.limits.max_body_bytes)?;
        let (m, p) = store::edit(self.tx().await?, &caller, id, s, &body).await?;
        self.publish(vec![p]).await;
        Ok(Response::new(pb::EditMessageResponse {
            message: Some(m.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id, seq = req.get_ref().seq))]
    async fn delete_message(
        &self,
        req: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        let caller = user(&req)?;
        let pb::DeleteMessageRequest {
            channel_id: ch,
            seq: s,
        } = req.into_inner();
        let id = channel_id(&ch)?;
        let s = seq(s)?;
        let (m, p) = store::delete(self.tx().await?, &caller, id, s).await?;
        self.publish(p.into_iter().collect()).await;
        Ok(Response::new(pb::DeleteMessageResponse {
            message: Some(m.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn set_archived(
        &self,
        req: Request<pb::SetArchivedRequest>,
    ) -> Result<Response<pb::SetArchivedResponse>, Status> {
        self.do_set_archived(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn delete_channel(
        &self,
        req: Request<pb::DeleteChannelRequest>,
    ) -> Result<Response<pb::DeleteChannelResponse>, Status> {
        self.do_delete_channel(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn ban_member(
        &self,
        req: Request<pb::BanMemberRequest>,
    ) -> Result<Response<pb::BanMemberResponse>, Status> {
        self.do_ban(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn unban_member(
        &self,
        req: Request<pb::UnbanMemberRequest>,
    ) -> Result<Response<pb::UnbanMemberResponse>, Status> {
        self.do_unban(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn list_bans(
        &self,
        req: Request<pb::ListBansRequest>,
    ) -> Result<Response<pb::ListBansResponse>, Status> {
        self.do_list_bans(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn mute_member(
        &self,
        req: Request<pb::MuteMemberRequest>,
    ) -> Result<Response<pb::MuteMemberResponse>, Status> {
        self.do_mute(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn unmute_member(
        &self,
        req: Request<pb::UnmuteMemberRequest>,
    ) -> Result<Response<pb::UnmuteMemberResponse>, Status> {
        self.do_unmute(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn block_user(
        &self,
        req: Request<pb::BlockUserRequest>,
    ) -> Result<Response<pb::BlockUserResponse>, Status> {
        self.do_block(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn unblock_user(
        &self,
        req: Request<pb::UnblockUserRequest>,
    ) -> Result<Response<pb::UnblockUserResponse>, Status> {
        self.do_unblock(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn list_blocks(
        &self,
        req: Request<pb::ListBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksResponse>, Status> {
        self.do_list_blocks(req).await
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id))]
    async fn create_attachment(
        &self,
        req: Request<pb::CreateAttachmentRequest>,
    ) -> Result<Response<pb::CreateAttachmentResponse>, Status> {
        self.do_create_attachment(req).await
    }

    #[tracing::instrument(skip_all, fields(attachment = %req.get_ref().attachment_id))]
    async fn get_attachment(
        &self,
        req: Request<pb::GetAttachmentRequest>,
    ) -> Result<Response<pb::GetAttachmentResponse>, Status> {
        self.do_get_attachment(req).await
    }

    #[tracing::instrument(skip_all)]
    async fn search_messages(
        &self,
        req: Request<pb::SearchMessagesRequest>,
    ) -> Result<Response<pb::SearchMessagesResponse>, Status> {
        self.do_search(req).await
    }
}
