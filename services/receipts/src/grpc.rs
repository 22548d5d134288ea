//! The gRPC face of receipts: parses requests into domain types, makes sure the caller is
//! a member (asking messaging when the projection lags), calls the store, publishes what
//! moved.

use chrono::Utc;
use parley_kit::{
    domain::{UserId, parse_uuid},
    propagation::caller,
};
use parley_proto::receipts::v1::{self as pb, receipts_service_server::ReceiptsService};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    Error,
    authority::Messaging,
    changes::{Change, Changes},
    store::{self, Mark, ReceiptRow},
};

pub struct Receipts {
    pool: PgPool,
    messaging: Messaging,
    changes: Changes,
}

impl Receipts {
    pub fn new(pool: PgPool, messaging: Messaging, changes: Changes) -> Self {
        Self {
            pool,
            messaging,
            changes,
        }
    }

    /// Makes sure `user` is a member of `channel` and, for a mark at `seq`, that the
    /// projected last_seq is not behind it. When the projection does not know the
    /// membership or lags the seq, messaging is asked (as the caller) and its answer is
    /// applied before anything is clamped: a mark for a message the user has just received
    /// is never cut short by a projection that has not seen that message yet.
    async fn ensure_member(
        &self,
        channel: Uuid,
        user: &UserId,
        seq: Option<i64>,
    ) -> Result<(), Error> {
        let pos = store::position(&self.pool, channel, user).await?;
        let behind = match (pos.last_seq, seq) {
            (Some(last), Some(seq)) => seq > last,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if pos.member && !behind {
            return Ok(());
        }
        let asked_at = Utc::now();
        let last_seq = self.messaging.last_seq(channel, user).await?;
        store::confirm(&self.pool, channel, user, last_seq, asked_at).await
    }

    async fn mark(
        &self,
        user: UserId,
        channel_id: &str,
        seq: u64,
        kind: Mark,
    ) -> Result<(pb::Receipt, bool), Status> {
        let channel = parse_channel(channel_id)?;
        let seq = i64::try_from(seq).map_err(|_| invalid("seq out of range"))?;
        self.ensure_member(channel, &user, Some(seq)).await?;
        let (row, changed) = store::mark(&self.pool, channel, &user, seq, kind)
            .await?
            .ok_or_else(|| not_member(channel))?;
        let label = if kind == Mark::Read {
            "read"
        } else {
            "delivered"
        };
        metrics::counter!("receipts_marks_total", "kind" => label, "changed" => if changed { "true" } else { "false" }).increment(1);
        if changed {
            self.changes.offer(Change::from_row(
                &row,
                parley_kit::propagation::inject_map(),
            ));
        }
        Ok((row.into(), changed))
    }
}

fn invalid(message: impl Into<String>) -> Status {
    parley_kit::ErrorCode::InvalidArgument.status(message)
}

fn not_member(channel: Uuid) -> Error {
    Error::PermissionDenied(format!("not a member of channel {channel}"))
}

fn user<T>(req: &Request<T>) -> Result<UserId, Status> {
    Ok(UserId::parse(&caller(req)?)?)
}

fn parse_channel(s: &str) -> Result<Uuid, Status> {
    Ok(parse_uuid("channel_id", s)?)
}

fn ts(t: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

impl From<ReceiptRow> for pb::Receipt {
    fn from(r: ReceiptRow) -> Self {
        let ReceiptRow {
            channel_id,
            user_id,
            delivered_seq,
            read_seq,
            updated_at,
        } = r;
        pb::Receipt {
            channel_id: channel_id.to_string(),
            user_id,
            delivered_seq: delivered_seq.max(0) as u64,
            read_seq: read_seq.max(0) as u64,
            updated_at: updated_at.map(ts),
        }
    }
}

#[tonic::async_trait]
impl ReceiptsService for Receipts {
    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id, seq = req.get_ref().seq, user))]
    async fn mark_delivered(
        &self,
        req: Request<pb::MarkDeliveredRequest>,
    ) -> Result<Response<pb::MarkDeliveredResponse>, Status> {
        let caller = user(&req)?;
        tracing::Span::current().record("user", caller.as_str());
        let pb::MarkDeliveredRequest { channel_id, seq } = req.into_inner();
        let (receipt, changed) = self.mark(caller, &channel_id, seq, Mark::Delivered).await?;
        Ok(Response::new(pb::MarkDeliveredResponse {
            receipt: Some(receipt),
            changed,
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id, seq = req.get_ref().seq, user))]
    async fn mark_read(
        &self,
        req: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let caller = user(&req)?;
        tracing::Span::current().record("user", caller.as_str());
        let pb::MarkReadRequest { channel_id, seq } = req.into_inner();
        let (receipt, changed) = self.mark(caller, &channel_id, seq, Mark::Read).await?;
        Ok(Response::new(pb::MarkReadResponse {
            receipt: Some(receipt),
            changed,
        }))
    }

    #[tracing::instrument(skip_all, fields(channel = %req.get_ref().channel_id, user))]
    async fn get_receipts(
        &self,
        req: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        let caller = user(&req)?;
        tracing::Span::current().record("user", caller.as_str());
        let pb::GetReceiptsRequest { channel_id } = req.into_inner();
        let channel = parse_channel(&channel_id)?;
        self.ensure_member(channel, &caller, None).await?;
        let rows = store::receipts(&self.pool, channel).await?;
        Ok(Response::new(pb::GetReceiptsResponse {
            receipts: rows.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(user))]
    async fn get_unread(
        &self,
        req: Request<pb::GetUnreadRequest>,
    ) -> Result<Response<pb::GetUnreadResponse>, Status> {
        let caller = user(&req)?;
        tracing::Span::current().record("user", caller.as_str());
        let pb::GetUnreadRequest {} = req.into_inner();
        let rows = store::unread(&self.pool, &caller).await?;
        let channels: Vec<pb::ChannelUnread> = rows
            .into_iter()
            .map(|(id, n)| pb::ChannelUnread {
                channel_id: id.to_string(),
                unread: n.max(0) as u64,
            })
            .collect();
        let total = channels.iter().map(|c| c.unread).sum();
        Ok(Response::new(pb::GetUnreadResponse { total, channels }))
    }
}
