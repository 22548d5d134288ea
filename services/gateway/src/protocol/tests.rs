use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::view::SystemEvent;

fn text(v: Value) -> String {
    v.to_string()
}

fn refused(v: Value) -> (Option<Value>, String) {
    let e = parse(&text(v)).unwrap_err();
    (e.r, e.error.message)
}

const CH: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

#[test]
fn reads_every_client_frame() {
    let ch = ChannelId::parse("channel_id", CH).unwrap();
    let cases = [
        (json!({"type": "ping", "ref": 7}), ClientFrame::Ping),
        (
            json!({"type": "send", "channel_id": CH, "client_msg_id": "c1", "body": "hi"}),
            ClientFrame::Send {
                channel_id: ch.clone(),
                client_msg_id: ClientMsgId::parse("c1").unwrap(),
                body: "hi".into(),
                attachment_ids: Vec::new(),
            },
        ),
        (
            json!({"type": "send", "channel_id": CH, "client_msg_id": "c2", "attachment_ids": ["a", "b"]}),
            ClientFrame::Send {
                channel_id: ch.clone(),
                client_msg_id: ClientMsgId::parse("c2").unwrap(),
                body: String::new(),
                attachment_ids: vec!["a".into(), "b".into()],
            },
        ),
        (
            json!({"type": "resume", "positions": {CH.to_uppercase(): 4}}),
            ClientFrame::Resume {
                positions: [(ch.clone(), 4)].into(),
            },
        ),
        (
            json!({"type": "typing", "channel_id": CH}),
            ClientFrame::Typing {
                channel_id: ch.clone(),
            },
        ),
        (
            json!({"type": "ack", "channel_id": CH, "seq": 3}),
            ClientFrame::Ack {
                channel_id: ch.clone(),
                seq: 3,
            },
        ),
        (
            json!({"type": "read", "channel_id": CH, "seq": 0}),
            ClientFrame::Read {
                channel_id: ch.clone(),
                seq: 0,
            },
        ),
        (
            json!({"type": "watch_presence", "user_ids": ["bob"], "extra": true}),
            ClientFrame::WatchPresence {
                user_ids: vec![UserId::parse("bob").unwrap()],
            },
        ),
    ];
    for (v, want) in cases {
        let r = v.get("ref").cloned();
        let got = parse(&text(v)).unwrap();
        assert_eq!(got, Inbound { r, frame: want });
    }
}

#[test]
fn refuses_with_the_documented_messages() {
    assert!(
        parse("{")
            .unwrap_err()
            .error
            .message
            .starts_with("malformed JSON: ")
    );
    assert_eq!(refused(json!([1])).1, "a frame must be a JSON object");
    assert_eq!(
        refused(json!({"ref": "a"})),
        (Some(json!("a")), "a frame needs a string `type`".into())
    );
    assert_eq!(
        refused(json!({"type": "nope", "ref": null})),
        (Some(Value::Null), "unknown frame type `nope`".into())
    );
    assert_eq!(
        refused(json!({"type": "send", "channel_id": "x", "client_msg_id": "c"})).1,
        "`body` must be a string",
        "presence of every field comes before their validity"
    );
    assert_eq!(
        refused(json!({"type": "send", "channel_id": "x", "client_msg_id": "c", "body": "b"})).1,
        "channel_id must be a UUID"
    );
    assert_eq!(
        refused(json!({"type": "resume", "positions": []})).1,
        "`positions` must be an object of channel id → seq"
    );
    assert_eq!(
        refused(json!({"type": "resume", "positions": {CH: -1}})).1,
        "positions values must be non-negative integers"
    );
    assert_eq!(
        refused(json!({"type": "read", "channel_id": CH, "seq": 1.5})).1,
        "`seq` must be a non-negative integer"
    );
    assert_eq!(
        refused(json!({"type": "watch_presence", "user_ids": [1]})).1,
        "`user_ids` must be strings"
    );
    let e = parse(&text(json!({"type": "typing"}))).unwrap_err();
    assert_eq!(e.error.code, parley_kit::ErrorCode::InvalidArgument);
    assert_eq!(e.channel_id, None);
    let e = parse(&text(json!({"type": "ack", "channel_id": CH}))).unwrap_err();
    assert_eq!(e.kind.as_deref(), Some("ack"));
    assert_eq!(e.channel_id.map(|c| c.into_string()).as_deref(), Some(CH));
}

#[test]
fn server_frames_have_the_documented_shape() {
    let e = ApiError::rate_limited("slow down", 3);
    assert_eq!(
        serde_json::from_str::<Value>(&ServerFrame::error(Some(json!(1)), &e).to_text()).unwrap(),
        json!({"type": "error", "ref": 1, "code": "rate_limited", "message": "slow down", "retry_after": 3})
    );
    assert_eq!(
        serde_json::to_value(ServerFrame::Pong { r: None }).unwrap(),
        json!({"type": "pong"})
    );
    assert_eq!(
        serde_json::to_value(ServerFrame::MemberJoined {
            channel_id: CH.into(),
            user_id: "bob".into(),
            role: Role::Admin,
            added_by: "amy".into()
        })
        .unwrap(),
        json!({"type": "member_joined", "channel_id": CH, "user_id": "bob", "role": "admin", "added_by": "amy"})
    );
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn channel() -> impl Strategy<Value = Channel> {
    (
        (
            ".{0,8}",
            prop_oneof![Just("group"), Just("direct")],
            ".{0,8}",
            ".{0,8}",
        ),
        (proptest::option::of(".{0,8}"), any::<u32>(), any::<u64>()),
        (
            proptest::option::of(".{0,8}"),
            ".{0,8}",
            ".{0,8}",
            proptest::option::of(".{0,8}"),
        ),
    )
        .prop_map(
            |(
                (id, kind, name, created_by),
                (created_at, member_count, last_seq),
                (last_activity_at, topic, description, archived_at),
            )| {
                Channel {
                    id,
                    kind: kind.to_owned(),
                    name,
                    created_by,
                    created_at,
                    member_count,
                    last_seq,
                    last_activity_at,
                    topic,
                    description,
                    archived_at,
                }
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    (
        (
            ".{0,8}",
            ".{0,8}",
            any::<u64>(),
            ".{0,8}",
            ".{0,8}",
            ".{0,16}",
        ),
        (
            proptest::option::of(".{0,8}"),
            proptest::option::of(".{0,8}"),
            any::<bool>(),
            proptest::option::of((".{0,8}", ".{0,8}", ".{0,8}", proptest::option::of(".{0,8}"))),
        ),
    )
        .prop_map(
            |((id, channel_id, seq, sender_id, client_msg_id, body), (c, e, deleted, system))| {
                Message {
                    id,
                    channel_id,
                    seq,
                    sender_id,
                    client_msg_id,
                    body,
                    created_at: c,
                    edited_at: e,
                    deleted,
                    attachments: Vec::new(),
                    system: system.map(|(action, target_user_id, reason, expires_at)| {
                        SystemEvent {
                            action,
                            target_user_id,
                            reason,
                            expires_at,
                        }
                    }),
                }
            },
        )
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let s = || ".{0,10}";
    let r = || proptest::option::of(json_value());
    let role = prop_oneof![Just(Role::Owner), Just(Role::Admin), Just(Role::Member)];
    let status = prop_oneof![Just(Status::Online), Just(Status::Offline)];
    let resumed =
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(from, to, recovered)| Resumed {
            from,
            to,
            recovered,
        });
    prop_oneof![
        (s(), s(), any::<u64>()).prop_map(|(user_id, session_id, heartbeat_ms)| {
            ServerFrame::Hello {
                user_id,
                session_id,
                heartbeat_ms,
            }
        }),
        message().prop_map(|message| ServerFrame::Message { message }),
        message().prop_map(|message| ServerFrame::MessageUpdated { message }),
        message().prop_map(|message| ServerFrame::MessageDeleted { message }),
        (s(), s(), role, s()).prop_map(|(channel_id, user_id, role, added_by)| {
            ServerFrame::MemberJoined {
                channel_id,
                user_id,
                role,
                added_by,
            }
        }),
        (s(), s(), s()).prop_map(|(channel_id, user_id, removed_by)| {
            ServerFrame::MemberLeft {
                channel_id,
                user_id,
                removed_by,
            }
        }),
        (
            s(),
            s(),
            prop_oneof![Just(Role::Owner), Just(Role::Admin), Just(Role::Member)],
            s()
        )
            .prop_map(|(channel_id, user_id, role, updated_by)| {
                ServerFrame::MemberUpdated {
                    channel_id,
                    user_id,
                    role,
                    updated_by,
                }
            }),
        (channel(), s()).prop_map(|(channel, updated_by)| ServerFrame::ChannelUpdated {
            channel,
            updated_by
        }),
        (s(), s()).prop_map(|(channel_id, deleted_by)| ServerFrame::ChannelDeleted {
            channel_id,
            deleted_by
        }),
        (r(), proptest::option::of(message()))
            .prop_map(|(r, message)| ServerFrame::Sent { r, message }),
        (r(), s(), s(), proptest::option::of(any::<u64>())).prop_map(
            |(r, code, message, retry_after)| ServerFrame::Error {
                r,
                code,
                message,
                retry_after
            }
        ),
        r().prop_map(|r| ServerFrame::Pong { r }),
        s().prop_map(|reason| ServerFrame::Reconnect { reason }),
        prop::collection::btree_map(s(), resumed, 0..4)
            .prop_map(|channels| ServerFrame::Resumed { channels }),
        (s(), s()).prop_map(|(channel_id, user_id)| ServerFrame::Typing {
            channel_id,
            user_id
        }),
        (s(), status, proptest::option::of(s())).prop_map(|(user_id, status, last_seen_at)| {
            ServerFrame::Presence {
                user_id,
                status,
                last_seen_at,
            }
        }),
        (s(), s(), any::<u64>(), any::<u64>()).prop_map(
            |(channel_id, user_id, delivered_seq, read_seq)| ServerFrame::Receipt {
                channel_id,
                user_id,
                delivered_seq,
                read_seq
            }
        ),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let ch = || {
        any::<u128>()
            .prop_map(|n| ChannelId::parse("c", &uuid::Uuid::from_u128(n).to_string()).unwrap())
    };
    let cid = || "[ -~]{1,64}".prop_map(|s| ClientMsgId::parse(&s).unwrap());
    let user = || "[A-Za-z0-9_.@-]{1,64}".prop_map(|s| UserId::parse(&s).unwrap());
    prop_oneof![
        Just(ClientFrame::Ping),
        (ch(), cid(), ".{0,20}").prop_map(|(channel_id, client_msg_id, body)| {
            ClientFrame::Send {
                channel_id,
                client_msg_id,
                body,
                attachment_ids: Vec::new(),
            }
        }),
        prop::collection::btree_map(ch(), any::<u64>(), 0..4)
            .prop_map(|positions| ClientFrame::Resume { positions }),
        ch().prop_map(|channel_id| ClientFrame::Typing { channel_id }),
        (ch(), any::<u64>()).prop_map(|(channel_id, seq)| ClientFrame::Ack { channel_id, seq }),
        (ch(), any::<u64>()).prop_map(|(channel_id, seq)| ClientFrame::Read { channel_id, seq }),
        prop::collection::vec(user(), 0..4)
            .prop_map(|user_ids| ClientFrame::WatchPresence { user_ids }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_server_frame_round_trips_through_json(f in server_frame()) {
        let text = f.to_text();
        let back: ServerFrame = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, f);
    }

    #[test]
    fn the_reader_agrees_with_the_frame_types(f in client_frame(), r in proptest::option::of(json_value())) {
        let mut v = serde_json::to_value(&f).unwrap();
        prop_assert_eq!(serde_json::from_value::<ClientFrame>(v.clone()).unwrap(), f.clone());
        if let Some(r) = &r {
            v["ref"] = r.clone();
        }
        let got = parse(&v.to_string()).unwrap();
        prop_assert_eq!(got, Inbound { r, frame: f });
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value(), kind in prop_oneof![
        Just("send"), Just("resume"), Just("typing"), Just("ack"), Just("read"),
        Just("watch_presence"), Just("ping"), Just("other")
    ], fields in prop::collection::btree_map(prop_oneof![
        Just("channel_id".to_owned()), Just("client_msg_id".to_owned()), Just("body".to_owned()),
        Just("positions".to_owned()), Just("seq".to_owned()), Just("user_ids".to_owned()),
        Just("ref".to_owned())
    ], json_value(), 0..6)) {
        let _ = parse(&v.to_string());
        let mut obj: Map<String, Value> = fields.into_iter().collect();
        obj.insert("type".into(), Value::from(kind));
        let _ = parse(&Value::Object(obj).to_string());
    }
}
