//! Redis pub/sub topics of live fan-out, named once for the service that publishes and the
//! gateway that subscribes. Each is used after the deployment's `redis.prefix`.

use std::fmt::Display;

/// A channel's message and membership events (messaging).
pub fn messaging_channel(channel: impl Display) -> String {
    format!("messaging:channel:{channel}")
}

/// Membership events about one user (messaging).
pub fn messaging_user(user: &str) -> String {
    format!("messaging:user:{user}")
}

/// Every online/offline transition (presence): one node-wide topic.
pub const PRESENCE_EVENTS: &str = "presence:events";

/// A channel's typing events (presence).
pub fn presence_channel(channel: impl Display) -> String {
    format!("presence:channel:{channel}")
}

/// A channel's watermark changes (receipts).
pub fn receipts_channel(channel: impl Display) -> String {
    format!("receipts:channel:{channel}")
}

/// Which service publishes on `topic` (prefix removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Messaging; `user`: a user's topic (not a channel's).
    Messaging {
        user: bool,
    },
    Presence,
    Receipts,
}

impl Source {
    pub fn of(topic: &str) -> Option<Self> {
        if topic.starts_with("messaging:") {
            Some(Self::Messaging {
                user: topic.starts_with("messaging:user:"),
            })
        } else if topic.starts_with("presence:") {
            Some(Self::Presence)
        } else if topic.starts_with("receipts:") {
            Some(Self::Receipts)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_names_its_source() {
        let ch = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(
            Source::of(&messaging_channel(ch)),
            Some(Source::Messaging { user: false })
        );
        assert_eq!(
            Source::of(&messaging_user("amy")),
            Some(Source::Messaging { user: true })
        );
        assert_eq!(Source::of(PRESENCE_EVENTS), Some(Source::Presence));
        assert_eq!(Source::of(&presence_channel(ch)), Some(Source::Presence));
        assert_eq!(Source::of(&receipts_channel(ch)), Some(Source::Receipts));
        assert_eq!(Source::of("other:x"), None);
    }
}
