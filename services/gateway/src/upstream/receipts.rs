//! The receipts service's client: watermarks, receipts and unread counts. Receipts is
//! optional for chat: failures are logged and counted (`gateway_receipts_errors_total`)
//! and never break sending or history.

use parley_kit::{domain::UserId, propagation::Outbound};
use parley_proto::receipts::v1::{self as pb, receipts_service_client::ReceiptsServiceClient};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use super::request as grpc;
use crate::ApiError;

type Client = ReceiptsServiceClient<InterceptedService<Channel, Outbound>>;

pub struct Receipts {
    client: Client,
    channel: Channel,
}

fn count_error(op: &'static str, e: &tonic::Status) {
    metrics::counter!("gateway_receipts_errors_total", "op" => op).increment(1);
    tracing::warn!(op, code = ?e.code(), error = %e.message(), "receipts call failed");
}

impl Receipts {
    pub fn new(channel: Channel) -> Self {
        Self {
            client: ReceiptsServiceClient::with_interceptor(channel.clone(), Outbound),
            channel,
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `ack`: the delivered watermark.
    pub async fn delivered(
        &self,
        user: &UserId,
        channel_id: String,
        seq: u64,
    ) -> Result<(), ApiError> {
        let req = grpc(user, pb::MarkDeliveredRequest { channel_id, seq })?;
        self.client
            .clone()
            .mark_delivered(req)
            .await
            .map(|_| ())
            .map_err(|e| {
                count_error("delivered", &e);
                e.into()
            })
    }

    /// `read` / `POST /v1/channels/{id}/read`: the read watermark.
    pub async fn read(&self, user: &UserId, channel_id: String, seq: u64) -> Result<(), ApiError> {
        let req = grpc(user, pb::MarkReadRequest { channel_id, seq })?;
        self.client
            .clone()
            .mark_read(req)
            .await
            .map(|_| ())
            .map_err(|e| {
                count_error("read", &e);
                e.into()
            })
    }

    /// Every member's watermarks in a channel, ordered by user id.
    pub async fn receipts(
        &self,
        user: &UserId,
        channel_id: String,
    ) -> Result<Vec<pb::Receipt>, ApiError> {
        let req = grpc(user, pb::GetReceiptsRequest { channel_id })?;
        let resp = self.client.clone().get_receipts(req).await.map_err(|e| {
            count_error("receipts", &e);
            ApiError::from(e)
        })?;
        Ok(resp.into_inner().receipts)
    }

    /// The caller's unread counts (zero omitted).
    pub async fn unread(&self, user: &UserId) -> Result<pb::GetUnreadResponse, ApiError> {
        let req = grpc(user, pb::GetUnreadRequest {})?;
        self.client
            .clone()
            .get_unread(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| {
                count_error("unread", &e);
                e.into()
            })
    }
}
