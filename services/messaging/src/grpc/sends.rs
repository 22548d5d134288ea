//! The send calls' request handling: one send validated and queued on its lane
//! (`submit_one`, for SendMessage), and SendMessages, whose items are each such a send under
//! its own span and trace.

use parley_kit::domain::{ClientMsgId, MessageBody, UserId};
use parley_proto::messaging::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::{Messaging, channel_id, invalid};

impl Messaging {
    /// One send (SendMessage, or one item of SendMessages) for `caller`: validated and
    /// queued on its lane at once (so a call's items to one channel are written in item
    /// order); the future is its answer.
    pub(super) fn submit_one(
        &self,
        caller: UserId,
        req: pb::SendMessageRequest,
    ) -> Result<impl Future<Output = Result<pb::SendMessageResponse, Status>> + use<>, Status> {
        let pb::SendMessageRequest {
            channel_id: ch,
            client_msg_id,
            body,
        } = req;
        let id = channel_id(&ch)?;
        let cid = ClientMsgId::parse(&client_msg_id)?;
        let body = MessageBody::parse(&body, self.config.limits.max_body_bytes)?;
        let answer = self.batcher.submit(caller, id, cid, body)?;
        Ok(async move {
            let (m, created) = answer.await?;
            Ok(pb::SendMessageResponse {
                message: Some(m.into()),
                created,
            })
        })
    }

    pub(super) async fn do_send_messages(
        &self,
        req: Request<pb::SendMessagesRequest>,
    ) -> Result<Response<pb::SendMessagesResponse>, Status> {
        let items = req.into_inner().items;
        let max = self.config.limits.max_send_items;
        if items.len() > max {
            return Err(invalid(format!(
                "{} items; at most {max} per SendMessages",
                items.len()
            )));
        }
        metrics::histogram!("messaging_send_call_batch_size").record(items.len() as f64);
        // Each item is its own SendMessage, under its own span in its own trace; they go
        // to the batcher together, so they can share one transaction. Every item is queued
        // on its lane before any answer is awaited, in item order: a call's items to one
        // channel (a connection's pipelined sends) get increasing seqs in that order.
        let pending: Vec<_> = items
            .into_iter()
            .map(|item| {
                // Named like the SendMessage server span, so traces and searches by operation
                // look the same whichever call carried the send.
                let span = tracing::info_span!(
                    "SendMessage",
                    otel.name = "parley.messaging.v1.MessagingService/SendMessage",
                    otel.kind = "server",
                    rpc.system = "grpc",
                    rpc.service = "parley.messaging.v1.MessagingService",
                    rpc.method = "SendMessage",
                    rpc.grpc.status_code = tracing::field::Empty,
                    channel = tracing::field::Empty,
                    seq = tracing::field::Empty,
                );
                parley_kit::propagation::set_parent_from_map(&span, &item.trace_context);
                let submitted =
                    span.in_scope(|| match UserId::parse(&item.user_id) {
                        Err(_) => Err(parley_kit::ErrorCode::Unauthenticated
                            .status("missing caller identity")),
                        Ok(caller) => {
                            let send = item.send.unwrap_or_default();
                            span.record("channel", send.channel_id.as_str());
                            self.submit_one(caller, send)
                        }
                    });
                async move {
                    let outcome = match submitted {
                        Ok(answer) => answer.await,
                        Err(s) => Err(s),
                    };
                    let code = outcome
                        .as_ref()
                        .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
                    tracing::Span::current().record("rpc.grpc.status_code", code as i32);
                    metrics::counter!("messaging_send_items_total", "code" => format!("{code:?}"))
                        .increment(1);
                    let code = code as i32;
                    pb::SendMessagesResult {
                        outcome: Some(match outcome {
                            Ok(sent) => pb::send_messages_result::Outcome::Sent(sent),
                            Err(s) => pb::send_messages_result::Outcome::Error(pb::SendError {
                                code,
                                message: s.message().to_owned(),
                                error_code: s
                                    .metadata()
                                    .get(parley_kit::error::ERROR_CODE_KEY)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned(),
                            }),
                        }),
                    }
                }
                .instrument(span)
            })
            .collect();
        let results = futures::future::join_all(pending).await;
        Ok(Response::new(pb::SendMessagesResponse { results }))
    }
}
