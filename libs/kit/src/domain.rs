//! Validated identifiers and values of the public API (docs/api.md). Input is parsed into
//! these at every edge (gateway HTTP/WS and each gRPC service); past the edge, code takes
//! the validated types.

use crate::ErrorCode;

/// An error that says which field was wrong and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// API error code (`invalid_argument` or `too_large`).
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

impl Invalid {
    fn arg(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidArgument,
            message: message.into(),
        }
    }
}

impl From<Invalid> for tonic::Status {
    fn from(e: Invalid) -> Self {
        e.code.status(e.message)
    }
}

/// A user id: 1-64 characters of `[A-Za-z0-9_.@-]`, chosen by the app's user system.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Validates a user id.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Invalid::arg(format!(
                "invalid user id {:?}: 1-64 characters of [A-Za-z0-9_.@-]",
                truncate(s)
            )))
        }
    }
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-chosen idempotency key: 1-64 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    /// Validates a client message id.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if (1..=64).contains(&s.len()) && s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(Invalid::arg(
                "client_msg_id must be 1-64 printable ASCII characters",
            ))
        }
    }
    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message body: non-empty UTF-8 of at most `limit` bytes, without control characters
/// other than tab, line feed and carriage return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody(String);

impl MessageBody {
    /// Validates a body against the configured byte limit.
    pub fn parse(s: &str, limit: usize) -> Result<Self, Invalid> {
        if s.is_empty() {
            return Err(Invalid::arg("body must not be empty"));
        }
        if s.len() > limit {
            return Err(Invalid {
                code: ErrorCode::TooLarge,
                message: format!("body is {} bytes; the limit is {limit}", s.len()),
            });
        }
        check_text("body", s)?;
        Ok(Self(s.to_owned()))
    }
    /// Like [`parse`](Self::parse), but an empty body is allowed (a message with files).
    pub fn parse_or_empty(s: &str, limit: usize) -> Result<Self, Invalid> {
        if s.is_empty() {
            return Ok(Self(String::new()));
        }
        Self::parse(s, limit)
    }

    /// The body text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Refuses text a client may not store: control characters — C0 (U+0000-U+001F, NUL
/// included, which Postgres cannot store in `text` at all), DEL (U+007F) and C1
/// (U+0080-U+009F, where U+009B is a one-character ESC `[`) — except tab, line feed and
/// carriage return. `field` names the field in the error.
pub fn check_text(field: &str, s: &str) -> Result<(), Invalid> {
    match s
        .char_indices()
        .find(|&(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        None => Ok(()),
        Some((at, c)) => Err(Invalid::arg(format!(
            "{field} contains the control character U+{:04X} at byte {at}; \
             only tab, line feed and carriage return are allowed",
            c as u32
        ))),
    }
}

/// A channel id: a UUID, kept in its canonical lower-case hyphenated form (so two
/// spellings of one id are one key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(String);

impl ChannelId {
    /// Validates a channel id; `field` names the field in the error.
    pub fn parse(field: &str, s: &str) -> Result<Self, Invalid> {
        Ok(Self(parse_uuid(field, s)?.to_string()))
    }
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The validated ids travel in JSON as their strings; reading one validates it.
macro_rules! serde_as_str {
    ($t:ty, $parse:expr) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                $parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_str!(UserId, UserId::parse);
serde_as_str!(ClientMsgId, ClientMsgId::parse);
serde_as_str!(ChannelId, |s: &str| ChannelId::parse("channel_id", s));

/// Parses a channel or message id (a UUID).
pub fn parse_uuid(field: &str, s: &str) -> Result<uuid::Uuid, Invalid> {
    uuid::Uuid::parse_str(s).map_err(|_| Invalid::arg(format!("{field} must be a UUID")))
}

fn truncate(s: &str) -> String {
    s.chars().take(70).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_ids_are_canonical_and_travel_as_strings() {
        let upper = ChannelId::parse("channel_id", "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B").unwrap();
        let lower = ChannelId::parse("channel_id", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(upper, lower);
        assert_eq!(
            ChannelId::parse("positions key", "x").unwrap_err().message,
            "positions key must be a UUID"
        );
        let json = serde_json::to_string(&lower).unwrap();
        assert_eq!(json, "\"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\"");
        assert_eq!(serde_json::from_str::<ChannelId>(&json).unwrap(), lower);
        assert!(serde_json::from_str::<ChannelId>("\"nope\"").is_err());
        assert!(serde_json::from_str::<UserId>("\"bad id\"").is_err());
        assert_eq!(
            serde_json::from_str::<ClientMsgId>("\"c-1\"")
                .unwrap()
                .as_str(),
            "c-1"
        );
    }

    #[test]
    fn user_ids() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("a.b-c_d@e").is_ok());
        assert!(UserId::parse(&"x".repeat(64)).is_ok());
        assert!(UserId::parse(&"x".repeat(65)).is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse("é").is_err());
    }

    #[test]
    fn client_msg_ids() {
        assert!(ClientMsgId::parse("c-123 x").is_ok());
        assert!(ClientMsgId::parse("").is_err());
        assert!(ClientMsgId::parse("tab\t").is_err());
        assert!(ClientMsgId::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn bodies() {
        assert_eq!(
            MessageBody::parse("", 10).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            MessageBody::parse("hello world", 5).unwrap_err().code,
            ErrorCode::TooLarge
        );
        assert!(MessageBody::parse("héllo", 6).is_ok());
        assert!(MessageBody::parse("héllo", 5).is_err());
        assert!(MessageBody::parse("tab\tline\ncr\r", 20).is_ok());
        for bad in [
            "a\u{0}b",
            "bell\u{7}",
            "esc\u{1b}[31m",
            "\u{1f}",
            "del\u{7f}",
            "csi\u{9b}31m",
        ] {
            let e = MessageBody::parse(bad, 20).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad:?}");
            assert!(e.message.contains("control character"), "{}", e.message);
        }
        assert!(
            MessageBody::parse("a\u{0}b", 20)
                .unwrap_err()
                .message
                .contains("U+0000 at byte 1")
        );
    }
}
