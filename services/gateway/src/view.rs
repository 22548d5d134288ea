//! JSON shapes of the public API (docs/api.md), converted from the services' protobuf.

use parley_proto::messaging::v1 as pb;
use serde_json::{Value, json};

pub fn time(t: Option<&prost_types::Timestamp>) -> Value {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map_or(Value::Null, |d| {
            Value::String(d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        })
}

pub fn channel(c: &pb::Channel) -> Value {
    let pb::Channel {
        id,
        kind,
        name,
        created_by,
        created_at,
        member_count,
        last_seq,
        last_activity_at,
    } = c;
    let kind = match pb::ChannelKind::try_from(*kind) {
        Ok(pb::ChannelKind::Direct) => "direct",
        _ => "group",
    };
    json!({
        "id": id, "kind": kind, "name": name, "created_by": created_by,
        "created_at": time(created_at.as_ref()), "member_count": member_count,
        "last_seq": last_seq, "last_activity_at": time(last_activity_at.as_ref()),
    })
}

pub fn role(r: i32) -> &'static str {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Owner) => "owner",
        Ok(pb::Role::Admin) => "admin",
        _ => "member",
    }
}

pub fn member(m: &pb::Member) -> Value {
    let pb::Member {
        channel_id,
        user_id,
        role: r,
        joined_at,
    } = m;
    json!({"channel_id": channel_id, "user_id": user_id, "role": role(*r), "joined_at": time(joined_at.as_ref())})
}

pub fn message(m: &pb::Message) -> Value {
    let pb::Message {
        id,
        channel_id,
        seq,
        sender_id,
        client_msg_id,
        body,
        created_at,
        edited_at,
        deleted,
    } = m;
    json!({
        "id": id, "channel_id": channel_id, "seq": seq, "sender_id": sender_id,
        "client_msg_id": client_msg_id, "body": body, "created_at": time(created_at.as_ref()),
        "edited_at": time(edited_at.as_ref()), "deleted": deleted,
    })
}
