//! The data the receipts modules pass between them: a batch of events folded into writes
//! (`projection` builds it, `store` applies it) and a member's stored watermarks (`store`
//! reads them, `changes` publishes them). Plain data, no behaviour, so the modules that
//! use it do not depend on each other.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One member's watermarks in a channel.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReceiptRow {
    pub channel_id: Uuid,
    pub user_id: String,
    pub delivered_seq: i64,
    pub read_seq: i64,
    pub updated_at: Option<DateTime<Utc>>,
}

/// A membership event reduced to what receipts keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub active: bool,
    /// The channel's last_seq at the join (unused for a leave).
    pub joined_seq: i64,
    /// Order key: the event's occurred_at, then its event_id.
    pub at: DateTime<Utc>,
    pub event_id: Uuid,
}

/// The highest own message of a sender in a batch, with the trace it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub seq: i64,
    pub trace: HashMap<String, String>,
}

/// A batch of events folded into the writes they imply. Keys are sorted (BTreeMap) so
/// that rows are locked in one global order.
#[derive(Debug, Default)]
pub struct Delta {
    /// channel → highest seq seen (a join contributes the channel's last_seq at the join).
    pub channels: BTreeMap<Uuid, i64>,
    /// (channel, user) → the newest membership event of the batch.
    pub memberships: BTreeMap<(Uuid, String), Membership>,
    /// (channel, sender) → their highest own message.
    pub senders: BTreeMap<(Uuid, String), Sent>,
}
