//! The send calls' request handling: one send validated, its uploads checked, and queued
//! on its lane (`send_one`, for SendMessage), and SendMessages, whose items are each such a
//! send under its own span and trace.

use std::collections::{HashMap, HashSet};

use futures::FutureExt as _;
use parley_kit::domain::{ClientMsgId, MessageBody, UserId};
use parley_proto::messaging::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use uuid::Uuid;

use super::{Messaging, channel_id, invalid};
use crate::store::attachments::Meta;

/// A send, validated.
struct Parsed {
    caller: UserId,
    channel: Uuid,
    cid: ClientMsgId,
    body: MessageBody,
    attachments: Vec<Uuid>,
}

type Answer = Result<pb::SendMessageResponse, Status>;

/// A channel's sends of one SendMessages call that wait for their uploads to be checked:
/// their item indices, and the sends with their spans.
type Group = (Vec<usize>, Vec<(Parsed, tracing::Span)>);

impl Messaging {
    fn parse_send(&self, caller: UserId, req: pb::SendMessageRequest) -> Result<Parsed, Status> {
        let pb::SendMessageRequest {
            channel_id: ch,
            client_msg_id,
            body,
            attachment_ids,
        } = req;
        let channel = channel_id(&ch)?;
        let cid = ClientMsgId::parse(&client_msg_id)?;
        let attachments = self.attachment_ids(&attachment_ids)?;
        let limit = self.config.limits.max_body_bytes;
        // With files, a message may have no text.
        let body = if attachments.is_empty() {
            MessageBody::parse(&body, limit)?
        } else {
            MessageBody::parse_or_empty(&body, limit)?
        };
        Ok(Parsed {
            caller,
            channel,
            cid,
            body,
            attachments,
        })
    }

    /// Queues a validated send whose uploads were checked (`metas`) on its lane at once
    /// (so sends queued one after another to one channel are written in that order); the
    /// future is its answer.
    fn queue(
        &self,
        p: Parsed,
        metas: Vec<Meta>,
    ) -> Result<impl Future<Output = Answer> + use<>, Status> {
        let answer = self
            .batcher
            .submit(p.caller, p.channel, p.cid, p.body, metas)?;
        Ok(async move {
            let (m, created) = answer.await?;
            Ok(pb::SendMessageResponse {
                message: Some(m.into()),
                created,
            })
        })
    }

    /// Checks a send's uploads (none: nothing to check).
    async fn uploads_of(&self, p: &Parsed) -> Result<Vec<Meta>, Status> {
        if p.attachments.is_empty() {
            return Ok(Vec::new());
        }
        self.verify_uploads(&p.caller, p.channel, &p.attachments)
            .await
    }

    /// One SendMessage: validated, its uploads checked, then queued and answered.
    pub(super) async fn send_one(&self, caller: UserId, req: pb::SendMessageRequest) -> Answer {
        let p = self.parse_send(caller, req)?;
        let metas = self.uploads_of(&p).await?;
        self.queue(p, metas)?.await
    }

    /// The sends of one channel in a SendMessages call, some with attachments: every
    /// upload is checked first (storage is asked), then the sends are queued in item order
    /// (a send whose uploads failed is answered with that). Sends to other channels of the
    /// call do not wait for this.
    async fn send_group(&self, group: Vec<(Parsed, tracing::Span)>) -> Vec<Answer> {
        let checks = group
            .iter()
            .map(|(p, span)| self.uploads_of(p).instrument(span.clone()));
        let checked = futures::future::join_all(checks).await;
        let queued: Vec<_> = group
            .into_iter()
            .zip(checked)
            .map(|((p, span), metas)| span.in_scope(|| metas.and_then(|m| self.queue(p, m))))
            .collect();
        let mut answers = Vec::with_capacity(queued.len());
        for q in queued {
            answers.push(match q {
                Ok(answer) => answer.await,
                Err(s) => Err(s),
            });
        }
        answers
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
        // channel (a connection's pipelined sends) get increasing seqs in that order. In a
        // channel where an item carries attachments, the channel's items are queued (still
        // in order) once storage confirmed the uploads; other channels do not wait.
        let parsed: Vec<(Result<Parsed, Status>, tracing::Span)> = items
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
                let parsed =
                    span.in_scope(|| match UserId::parse(&item.user_id) {
                        Err(_) => Err(parley_kit::ErrorCode::Unauthenticated
                            .status("missing caller identity")),
                        Ok(caller) => {
                            let send = item.send.unwrap_or_default();
                            span.record("channel", send.channel_id.as_str());
                            self.parse_send(caller, send)
                        }
                    });
                (parsed, span)
            })
            .collect();
        let held: HashSet<Uuid> = parsed
            .iter()
            .filter_map(|(p, _)| p.as_ref().ok())
            .filter(|p| !p.attachments.is_empty())
            .map(|p| p.channel)
            .collect();
        let mut spans = Vec::with_capacity(parsed.len());
        let mut now = Vec::new();
        let mut groups: HashMap<Uuid, Group> = HashMap::new();
        for (i, (p, span)) in parsed.into_iter().enumerate() {
            spans.push(span.clone());
            match p {
                Ok(p) if held.contains(&p.channel) => {
                    let g = groups.entry(p.channel).or_default();
                    g.0.push(i);
                    g.1.push((p, span));
                }
                Ok(p) => {
                    let queued = span.in_scope(|| self.queue(p, Vec::new()));
                    now.push(
                        async move {
                            match queued {
                                Ok(answer) => (i, answer.await),
                                Err(s) => (i, Err(s)),
                            }
                        }
                        .instrument(span)
                        .boxed(),
                    );
                }
                Err(s) => now.push(async move { (i, Err(s)) }.instrument(span).boxed()),
            }
        }
        let grouped = groups.into_values().map(|(indices, group)| async move {
            indices
                .into_iter()
                .zip(self.send_group(group).await)
                .collect::<Vec<_>>()
        });
        let (now, grouped) = futures::future::join(
            futures::future::join_all(now),
            futures::future::join_all(grouped),
        )
        .await;
        let mut answers: Vec<Option<Answer>> = spans.iter().map(|_| None).collect();
        for (i, a) in now.into_iter().chain(grouped.into_iter().flatten()) {
            answers[i] = Some(a);
        }
        let results = answers
            .into_iter()
            .zip(spans)
            .map(|(outcome, span)| {
                let outcome = outcome.unwrap_or_else(|| {
                    Err(parley_kit::ErrorCode::Internal.status("send not answered"))
                });
                let code = outcome
                    .as_ref()
                    .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
                span.record("rpc.grpc.status_code", code as i32);
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
            })
            .collect();
        Ok(Response::new(pb::SendMessagesResponse { results }))
    }
}
