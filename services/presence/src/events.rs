//! The events presence publishes on Redis pub/sub: `PresenceEvent` (binary protobuf) on
//! `<prefix>presence:events` for ONLINE/OFFLINE transitions and on
//! `<prefix>presence:channel:<channel_id>` for typing. Delivery is at-most-once: a failed
//! publish is logged and counted, never retried (readers resync with GetPresence).

use std::collections::HashMap;

use parley_proto::presence::v1::{self as pb, presence_event::Payload};
use prost::Message as _;
use redis::aio::ConnectionManager;

use crate::store::Transition;

/// Topic of every ONLINE/OFFLINE transition (after the deployment's `redis.prefix`).
pub use parley_kit::topics::PRESENCE_EVENTS as EVENTS_TOPIC;
/// Topic of the typing events of one channel (after the deployment's `redis.prefix`).
pub use parley_kit::topics::presence_channel as channel_topic;

/// Milliseconds since the epoch as a protobuf timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The presence of a user after a transition.
pub fn presence(t: &Transition, online: bool) -> pb::UserPresence {
    let status = if online {
        pb::Status::Online
    } else {
        pb::Status::Offline
    };
    pb::UserPresence {
        user_id: t.user.clone(),
        status: status.into(),
        last_seen_at: Some(timestamp(t.seen_ms)),
        version: t.version,
    }
}

fn envelope(
    occurred_ms: i64,
    trace_context: HashMap<String, String>,
    payload: Payload,
) -> pb::PresenceEvent {
    pb::PresenceEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(timestamp(occurred_ms)),
        trace_context,
        payload: Some(payload),
    }
}

/// Encoded UserTyping event (published by the typing script, which also throttles it).
pub fn typing(
    channel_id: &str,
    user_id: &str,
    occurred_ms: i64,
    trace_context: HashMap<String, String>,
) -> Vec<u8> {
    let payload = Payload::UserTyping(pb::UserTyping {
        channel_id: channel_id.to_owned(),
        user_id: user_id.to_owned(),
    });
    envelope(occurred_ms, trace_context, payload).encode_to_vec()
}

/// Publishes presence transitions.
#[derive(Clone)]
pub struct Publisher {
    redis: ConnectionManager,
    topic: String,
}

impl Publisher {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self {
            redis,
            topic: format!("{prefix}{EVENTS_TOPIC}"),
        }
    }

    /// Publishes one PresenceChanged per transition, in one round trip. `trace_context` is
    /// that of the call that caused them (empty for the sweeper).
    pub async fn transitions(
        &self,
        transitions: &[Transition],
        online: bool,
        occurred_ms: i64,
        trace_context: &HashMap<String, String>,
    ) {
        if transitions.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for t in transitions {
            let payload = Payload::PresenceChanged(pb::PresenceChanged {
                presence: Some(presence(t, online)),
            });
            let event = envelope(occurred_ms, trace_context.clone(), payload);
            pipe.cmd("PUBLISH")
                .arg(&self.topic)
                .arg(event.encode_to_vec())
                .ignore();
        }
        let kind = if online { "online" } else { "offline" };
        let mut conn = self.redis.clone();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => {
                metrics::counter!("presence_events_published_total", "kind" => kind)
                    .increment(transitions.len() as u64);
            }
            Err(e) => {
                metrics::counter!("presence_event_publish_failures_total", "kind" => kind)
                    .increment(transitions.len() as u64);
                tracing::warn!(error = %e, count = transitions.len(), kind, "publishing presence events failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_from_millis() {
        assert_eq!(
            timestamp(1_700_000_000_123),
            prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000
            }
        );
        assert_eq!(
            timestamp(-1),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
    }

    #[test]
    fn typing_event_round_trips() {
        let bytes = typing(
            "c",
            "alice",
            1_000,
            HashMap::from([("traceparent".into(), "x".into())]),
        );
        let e = pb::PresenceEvent::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(
            e.trace_context.get("traceparent").map(String::as_str),
            Some("x")
        );
        assert_eq!(
            e.payload,
            Some(Payload::UserTyping(pb::UserTyping {
                channel_id: "c".into(),
                user_id: "alice".into()
            }))
        );
    }
}
