//! Reading requests: ids, seqs, opaque page cursors, channel names and metadata, each
//! validated into what the store takes (INVALID_ARGUMENT naming the field otherwise).

use base64::Engine as _;
use chrono::{DateTime, Utc};
use parley_kit::{
    domain::{Invalid, UserId, parse_uuid},
    propagation::caller,
};
use parley_proto::messaging::v1 as pb;
use tonic::{Request, Status};
use uuid::Uuid;

use super::Messaging;
use crate::store;

pub(super) fn invalid(message: impl Into<String>) -> Status {
    parley_kit::ErrorCode::InvalidArgument.status(message)
}

pub(super) fn user<T>(req: &Request<T>) -> Result<UserId, Status> {
    Ok(UserId::parse(&caller(req)?)?)
}

impl Messaging {
    /// A group channel's name: trimmed, 1 to `limits.max_name_chars` characters, no control
    /// characters.
    pub(super) fn group_name(&self, name: &str) -> Result<String, Status> {
        let name = name.trim();
        parley_kit::domain::check_text("name", name)?;
        let chars = name.chars().count();
        let max = self.config.limits.max_name_chars;
        if chars == 0 || chars > max {
            return Err(invalid(format!(
                "a group channel needs a name of 1-{max} characters"
            )));
        }
        Ok(name.to_owned())
    }

    /// What an UpdateChannel sets, validated: the name as at creation, a topic of one line
    /// and a description within their limits (empty clears them).
    pub(super) fn channel_changes(
        &self,
        req: &pb::UpdateChannelRequest,
    ) -> Result<store::ChannelChanges, Status> {
        let limits = &self.config.limits;
        let text = |field: &str,
                    v: &Option<String>,
                    max: usize,
                    one_line: bool|
         -> Result<Option<String>, Status> {
            let Some(v) = v else { return Ok(None) };
            let v = v.trim();
            parley_kit::domain::check_text(field, v)?;
            if one_line && v.contains(['\n', '\r']) {
                return Err(invalid(format!("{field} must be one line")));
            }
            if v.chars().count() > max {
                return Err(invalid(format!("{field} is longer than {max} characters")));
            }
            Ok(Some(v.to_owned()))
        };
        let changes = store::ChannelChanges {
            name: req
                .name
                .as_deref()
                .map(|n| self.group_name(n))
                .transpose()?,
            topic: text("topic", &req.topic, limits.max_topic_chars, true)?,
            description: text(
                "description",
                &req.description,
                limits.max_description_chars,
                false,
            )?,
        };
        if changes.name.is_none() && changes.topic.is_none() && changes.description.is_none() {
            return Err(invalid(
                "nothing to change: give a name, topic or description",
            ));
        }
        Ok(changes)
    }
}

pub(super) fn channel_id(s: &str) -> Result<Uuid, Status> {
    Ok(parse_uuid("channel_id", s)?)
}

pub(super) fn seq(s: u64) -> Result<i64, Status> {
    i64::try_from(s)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| invalid("seq must be a positive integer"))
}

/// Opaque channel-list cursor: base64url("<last_activity micros>:<channel id>").
pub(super) fn encode_cursor(c: &store::ChannelRow) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        c.last_activity_at.timestamp_micros(),
        c.id
    ))
}

/// Where a page of public channels ends: the name and id of its last channel.
pub(super) fn encode_name_cursor(c: &store::ChannelRow) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", c.id, c.name))
}

pub(super) fn decode_name_cursor(s: &str) -> Result<(String, Uuid), Invalid> {
    let (id, name) = cursor_parts(s)?;
    let id = Uuid::parse_str(&id).map_err(|_| bad_cursor())?;
    Ok((name, id))
}

pub(super) fn bad_cursor() -> Invalid {
    Invalid {
        code: parley_kit::ErrorCode::InvalidArgument,
        message: "bad cursor".into(),
    }
}

/// The two parts of an opaque cursor (base64 of `a:b`).
pub(super) fn cursor_parts(s: &str) -> Result<(String, String), Invalid> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad_cursor())?;
    let raw = String::from_utf8(raw).map_err(|_| bad_cursor())?;
    let (a, b) = raw.split_once(':').ok_or_else(bad_cursor)?;
    Ok((a.to_owned(), b.to_owned()))
}

pub(super) fn decode_cursor(s: &str) -> Result<(DateTime<Utc>, Uuid), Invalid> {
    let (micros, id) = cursor_parts(s)?;
    let micros: i64 = micros.parse().map_err(|_| bad_cursor())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad_cursor)?;
    let id = Uuid::parse_str(&id).map_err(|_| bad_cursor())?;
    Ok((at, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("valid time");
        let row = store::ChannelRow {
            id: Uuid::now_v7(),
            kind: "group".into(),
            name: "n".into(),
            created_by: "a".into(),
            created_at: at,
            member_count: 1,
            last_seq: 0,
            last_activity_at: at,
            topic: String::new(),
            description: String::new(),
            archived_at: None,
        };
        assert_eq!(
            decode_cursor(&encode_cursor(&row)).expect("decodes"),
            (at, row.id)
        );
        assert!(decode_cursor("not-a-cursor").is_err());
        assert!(decode_cursor("").is_err());
        assert_eq!(
            decode_name_cursor(&encode_name_cursor(&row)).expect("decodes"),
            ("n".to_owned(), row.id)
        );
        assert!(
            decode_name_cursor(&encode_cursor(&row)).is_err(),
            "not a name cursor"
        );
    }
}
