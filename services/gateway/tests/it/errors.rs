//! Every error row of the API contract through REST (and the WebSocket `error` frame): the
//! status, and a body that is exactly `{"error": {"code", "message"}}`. Bad input changes
//! nothing.

use parley_testkit::{Client, SECRET, Stack, Ws, token, token_with};
use serde_json::{Value, json};

use crate::{T, assert_error, assert_error_body, assert_error_frame, ping};

#[tokio::test]
async fn missing_token_is_unauthenticated() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let c = Client::new(&stack.url(0), "alice");
    let (s, b, _) = c.raw("GET", "/v1/channels", None, None).await?;
    assert_eq!(s, 401);
    assert_eq!(b["error"]["code"], "unauthenticated");
    Ok(())
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    let now = chrono::Utc::now().timestamp();
    let other_secret = "some-other-secret-0123456789";

    let bad_tokens = [
        // malformed
        "not-a-jwt".to_owned(),
        "a.b.c".to_owned(),
        // forged: right claims, another secret
        token_with(&json!({"sub": "alice", "exp": now + 3600}), other_secret),
        // expired (well past the leeway)
        token("alice", -600),
        // required claims missing
        token_with(&json!({"sub": "alice"}), SECRET),
        token_with(&json!({"exp": now + 3600}), SECRET),
        // a subject that is not a valid user id
        token_with(&json!({"sub": "not a user!", "exp": now + 3600}), SECRET),
        // `alg: none`
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, now + 3600))
        ),
    ];
    for t in &bad_tokens {
        let c = alice.with_token(t);
        assert_error(
            &c.req("GET", "/v1/channels", None).await?,
            401,
            "unauthenticated",
        );
        assert_error(
            &c.post_message(&ch, "x", "forged").await?,
            401,
            "unauthenticated",
        );
        // The WebSocket upgrade is refused the same way.
        assert_ws_refused(&stack, t).await?;
    }
    // No token at all, and a non-Bearer scheme.
    assert_error(
        &alice.raw("GET", "/v1/channels", None, None).await?,
        401,
        "unauthenticated",
    );
    let basic = reqwest::Client::new()
        .get(format!("{}/v1/channels", stack.url(0)))
        .header("authorization", "Basic YWxpY2U6cHc=")
        .send()
        .await?;
    assert_eq!(basic.status().as_u16(), 401);
    assert_error_body(&basic.json::<Value>().await?, "unauthenticated");
    assert_ws_refused(&stack, "").await?;
    // Nothing was sent, and a good token still works.
    assert_eq!(alice.channel(&ch).await?["last_seq"], 0);
    Ok(())
}

/// The WebSocket upgrade with `token` is refused with 401 and an API error body.
async fn assert_ws_refused(stack: &Stack, token: &str) -> anyhow::Result<()> {
    match Ws::try_connect(&stack.url(0), token).await? {
        Ok(_) => panic!("websocket accepted token {token:?}"),
        Err((status, _)) => assert_eq!(status, 401),
    }
    // The same upgrade request over plain HTTP, to read the whole error body.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/ws?token={token}", stack.url(0)))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 401);
    assert_error_body(&resp.json::<Value>().await?, "unauthenticated");
    Ok(())
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    let msgs = format!("/v1/channels/{ch}/messages");
    let raw = |method: &'static str, path: String, body: &'static [u8]| {
        let alice = alice.clone();
        async move {
            alice
                .raw(method, &path, Some(body.to_vec()), Some(&alice.token))
                .await
        }
    };

    // Bodies that are not the expected JSON.
    assert_error(
        &raw("POST", msgs.clone(), b"{not json").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &raw("POST", msgs.clone(), b"").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &raw("POST", msgs.clone(), b"   ").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &raw("POST", msgs.clone(), b"[1, 2]").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &raw(
            "POST",
            msgs.clone(),
            br#"{"client_msg_id": 5, "body": "x"}"#,
        )
        .await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &raw("POST", msgs.clone(), br#"{"body": "no key"}"#).await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &raw("POST", "/v1/channels".into(), b"{\"kind\": ").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice.raw("POST", &msgs, None, Some(&alice.token)).await?,
        400,
        "invalid_argument",
    );

    // Bad fields.
    assert_error(
        &alice.post_message(&ch, "c1", "").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice.post_message(&ch, "", "hi").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice.post_message(&ch, &"k".repeat(65), "hi").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice.post_message(&ch, "tab\there", "hi").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice.post_message(&ch, "ünïcode", "hi").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice.post_message("not-a-uuid", "c1", "hi").await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice.req("GET", "/v1/channels/not-a-uuid", None).await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice
            .req("GET", "/v1/channels/not-a-uuid/members", None)
            .await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice
            .req(
                "POST",
                "/v1/channels",
                Some(json!({"kind": "party", "name": "x", "members": []})),
            )
            .await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice
            .req(
                "POST",
                "/v1/channels",
                Some(json!({"kind": "group", "name": "", "members": []})),
            )
            .await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice
            .req(
                "POST",
                "/v1/channels",
                Some(json!({"kind": "group", "name": "x".repeat(101), "members": []})),
            )
            .await?,
        400,
        "invalid_argument",
    );

    // Bad user ids.
    let long = "x".repeat(65);
    for bad in ["", "a b", "bob!", "ü", long.as_str()] {
        assert_error(
            &alice
                .req(
                    "POST",
                    "/v1/channels",
                    Some(json!({"kind": "group", "name": "x", "members": ["bob", bad]})),
                )
                .await?,
            400,
            "invalid_argument",
        );
        assert_error(
            &alice
                .req(
                    "POST",
                    &format!("/v1/channels/{ch}/members"),
                    Some(json!({"user_id": bad})),
                )
                .await?,
            400,
            "invalid_argument",
        );
    }
    assert_error(
        &alice
            .req("DELETE", &format!("/v1/channels/{ch}/members/bob!"), None)
            .await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice
            .req(
                "POST",
                "/v1/auth/dev-token",
                Some(json!({"user_id": "a b"})),
            )
            .await?,
        400,
        "invalid_argument",
    );

    // Bad cursors and limits.
    for q in [
        "before=abc",
        "before=-1",
        "before=1.5",
        "after=abc",
        "after=-3",
        "after=99999999999999999999",
        "before=1&after=1",
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=ten",
    ] {
        assert_error(
            &alice.req("GET", &format!("{msgs}?{q}"), None).await?,
            400,
            "invalid_argument",
        );
    }
    for q in [
        "cursor=not-a-cursor",
        "cursor=MTIzOm5vdC1hLXV1aWQ",
        "limit=0",
        "limit=201",
    ] {
        assert_error(
            &alice.req("GET", &format!("/v1/channels?{q}"), None).await?,
            400,
            "invalid_argument",
        );
    }
    // The limits themselves are accepted.
    assert_eq!(
        alice.req("GET", &format!("{msgs}?limit=1"), None).await?.0,
        200
    );
    assert_eq!(
        alice
            .req("GET", &format!("{msgs}?limit=200"), None)
            .await?
            .0,
        200
    );
    assert_eq!(
        alice.req("GET", "/v1/channels?limit=200", None).await?.0,
        200
    );

    // Bad seq in the path.
    for seq in ["0", "-1", "abc"] {
        assert_error(
            &alice
                .req(
                    "PATCH",
                    &format!("{msgs}/{seq}"),
                    Some(json!({"body": "x"})),
                )
                .await?,
            400,
            "invalid_argument",
        );
        assert_error(
            &alice.req("DELETE", &format!("{msgs}/{seq}"), None).await?,
            400,
            "invalid_argument",
        );
    }

    // None of that changed anything.
    let channel = alice.channel(&ch).await?;
    assert_eq!(channel["last_seq"], 0);
    assert_eq!(channel["member_count"], 2);
    let (_, list, _) = alice.req("GET", "/v1/channels", None).await?;
    assert_eq!(list["channels"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test]
async fn channel_list_cursor_pages_and_round_trips() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(alice.group(&format!("c{i}"), &["bob"]).await?);
    }
    // Activity reorders: the oldest channel becomes the most recent.
    alice.send(&ids[0], "bump", "bump").await?;
    let mut seen = Vec::new();
    let mut query = "limit=2".to_owned();
    loop {
        let (s, page, _) = alice
            .req("GET", &format!("/v1/channels?{query}"), None)
            .await?;
        assert_eq!(s, 200, "{page}");
        for c in page["channels"].as_array().expect("channels") {
            seen.push(c["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("limit=2&cursor={c}"),
            None => break,
        }
    }
    let expected: Vec<String> = [0, 4, 3, 2, 1].iter().map(|i| ids[*i].clone()).collect();
    assert_eq!(seen, expected);
    Ok(())
}

#[tokio::test]
async fn oversized_bodies_are_too_large() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;

    // The request body over 16384 bytes.
    let huge = json!({"client_msg_id": "big", "body": "x".repeat(20_000)}).to_string();
    let reply = alice
        .raw(
            "POST",
            &format!("/v1/channels/{ch}/messages"),
            Some(huge.into_bytes()),
            Some(&alice.token),
        )
        .await?;
    assert_error(&reply, 413, "too_large");
    let huge_channel =
        json!({"kind": "group", "name": "x", "members": vec!["bob"; 3000]}).to_string();
    assert!(huge_channel.len() > 16384);
    assert_error(
        &alice
            .raw(
                "POST",
                "/v1/channels",
                Some(huge_channel.into_bytes()),
                Some(&alice.token),
            )
            .await?,
        413,
        "too_large",
    );

    // A message body over 2048 bytes (in a request within the limit); bytes, not characters.
    assert_error(
        &alice.post_message(&ch, "m1", &"x".repeat(2049)).await?,
        413,
        "too_large",
    );
    assert_error(
        &alice.post_message(&ch, "m2", &"é".repeat(1025)).await?,
        413,
        "too_large",
    );
    let (s, at_limit, _) = alice.post_message(&ch, "m3", &"é".repeat(1024)).await?;
    assert_eq!(s, 201, "exactly 2048 bytes is allowed");
    assert_eq!(at_limit["seq"], 1);
    let (s, _, _) = alice.post_message(&ch, "m4", &"x".repeat(2048)).await?;
    assert_eq!(s, 201);
    // Edits obey the same limit and leave the message unchanged.
    assert_error(
        &alice
            .req(
                "PATCH",
                &format!("/v1/channels/{ch}/messages/1"),
                Some(json!({"body": "y".repeat(2049)})),
            )
            .await?,
        413,
        "too_large",
    );
    assert_error(
        &alice
            .req(
                "PATCH",
                &format!("/v1/channels/{ch}/messages/1"),
                Some(json!({"body": ""})),
            )
            .await?,
        400,
        "invalid_argument",
    );
    let page = alice.history(&ch, "").await?;
    assert_eq!(page["messages"][1]["body"], "é".repeat(1024));
    assert_eq!(page["messages"][1]["edited_at"], Value::Null);
    assert_eq!(alice.channel(&ch).await?["last_seq"], 2);
    Ok(())
}

#[tokio::test]
async fn unknown_things_are_not_found() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    alice.send(&ch, "m1", "one").await?;
    assert_error(
        &alice
            .req(
                "PATCH",
                &format!("/v1/channels/{ch}/messages/2"),
                Some(json!({"body": "x"})),
            )
            .await?,
        404,
        "not_found",
    );
    assert_error(
        &alice
            .req("DELETE", &format!("/v1/channels/{ch}/messages/99"), None)
            .await?,
        404,
        "not_found",
    );
    assert_error(
        &alice.req("GET", "/v1/no-such-endpoint", None).await?,
        404,
        "not_found",
    );
    assert_error(
        &alice
            .req("DELETE", &format!("/v1/channels/{ch}/members/nobody"), None)
            .await?,
        404,
        "not_found",
    );
    Ok(())
}

#[tokio::test]
async fn full_channel_is_a_conflict() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack
        .add_messaging(&[("PARLEY__LIMITS__MAX_MEMBERS", "3")])
        .await?;
    stack.add_gateway(&[]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob", "carol"]).await?;
    assert_error(
        &alice
            .req(
                "POST",
                &format!("/v1/channels/{ch}/members"),
                Some(json!({"user_id": "dave"})),
            )
            .await?,
        409,
        "conflict",
    );
    assert_eq!(alice.channel(&ch).await?["member_count"], 3);
    Ok(())
}

#[tokio::test]
async fn sends_over_the_rate_limit_are_rate_limited() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[
            ("PARLEY__RATE__MESSAGES__N", "3"),
            ("PARLEY__RATE__MESSAGES__WINDOW_SECS", "3600"),
        ])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = alice.group("g", &["bob"]).await?;
    let mut ws = Ws::connect(&stack.url(0), "alice").await?;

    // Two sends over REST and one over WebSocket use up the bucket of 3...
    assert_eq!(alice.post_message(&ch, "m1", "one").await?.0, 201);
    assert_eq!(alice.post_message(&ch, "m2", "two").await?.0, 201);
    ws.send(json!({"type": "send", "ref": "w1", "channel_id": ch, "client_msg_id": "w1", "body": "three"})).await?;
    let sent = ws.expect("sent", T).await?;
    assert_eq!(sent["ref"], "w1");
    assert_eq!(sent["message"]["seq"], 3);

    // ...so the fourth is refused over REST, with Retry-After...
    let reply = alice.post_message(&ch, "m4", "four").await?;
    assert_error(&reply, 429, "rate_limited");
    let retry_after: u64 = reply
        .2
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After header");
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    // ...and over WebSocket, from the same bucket.
    ws.send(json!({"type": "send", "ref": "w2", "channel_id": ch, "client_msg_id": "w2", "body": "five"})).await?;
    let err = ws.expect("error", T).await?;
    assert_error_frame(&err, "rate_limited", Some(&json!("w2")));
    assert!(err["retry_after"].as_u64().is_some_and(|s| s >= 1), "{err}");

    // Refused sends changed nothing; other users have their own bucket.
    assert_eq!(alice.channel(&ch).await?["last_seq"], 3);
    let (s, m, _) = bob.post_message(&ch, "b1", "bob's own bucket").await?;
    assert_eq!(s, 201);
    assert_eq!(m["seq"], 4);
    // Reading is not rate limited.
    assert_eq!(
        alice
            .req("GET", &format!("/v1/channels/{ch}/messages"), None)
            .await?
            .0,
        200
    );
    Ok(())
}

#[tokio::test]
async fn messaging_down_is_unavailable() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    stack.messaging.remove(0).stop().await?;

    for reply in [
        alice.req("GET", "/v1/channels", None).await?,
        alice
            .req("GET", &format!("/v1/channels/{ch}"), None)
            .await?,
        alice.post_message(&ch, "m1", "anyone?").await?,
        alice
            .req(
                "POST",
                "/v1/channels",
                Some(json!({"kind": "group", "name": "x", "members": []})),
            )
            .await?,
    ] {
        assert_error(&reply, 503, "unavailable");
        // No transport details leak to clients.
        let message = reply.1["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            !message.contains("tcp")
                && !message.contains("127.0.0.1")
                && !message.contains("transport"),
            "{message}"
        );
    }
    let (s, _, _) = alice.raw("GET", "/readyz", None, None).await?;
    assert_eq!(s, 503);
    let (s, _, _) = alice.raw("GET", "/healthz", None, None).await?;
    assert_eq!(s, 200);
    Ok(())
}

#[tokio::test]
async fn dev_tokens_only_when_enabled() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack
        .add_gateway(&[("PARLEY__AUTH__DEV_TOKENS", "false")])
        .await?;
    let anon = Client::new(&stack.url(0), "nobody");

    // Enabled (gateway 0): a token that works.
    let (s, b, _) = anon
        .raw(
            "POST",
            "/v1/auth/dev-token",
            Some(json!({"user_id": "dana"}).to_string().into_bytes()),
            None,
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    let t = b["token"].as_str().expect("token");
    let expires =
        chrono::DateTime::parse_from_rfc3339(b["expires_at"].as_str().expect("expires_at"))?;
    assert!(expires > chrono::Utc::now());
    let dana = Client::new(&stack.url(0), "dana").with_token(t);
    let ch = dana.group("dana's", &["erin"]).await?;
    let c = dana.channel(&ch).await?;
    assert_eq!(c["created_by"], "dana");
    let mut ws = match Ws::try_connect(&stack.url(0), t).await? {
        Ok(ws) => ws,
        Err(e) => panic!("dev token rejected over WebSocket: {e:?}"),
    };
    assert_eq!(ws.hello["user_id"], "dana");
    assert!(ping(&mut ws, "p").await?.is_empty());

    // Disabled (gateway 1): not found.
    let off = anon.on(&stack.url(1));
    let reply = off
        .raw(
            "POST",
            "/v1/auth/dev-token",
            Some(json!({"user_id": "dana"}).to_string().into_bytes()),
            None,
        )
        .await?;
    assert_error(&reply, 404, "not_found");
    Ok(())
}

#[tokio::test]
async fn bad_websocket_frames_get_error_frames_and_the_socket_stays_open() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    let mut ws = Ws::connect(&stack.url(0), "alice").await?;
    let none = None;

    let cases: Vec<(String, &str, Option<Value>)> = vec![
        ("{not json".into(), "invalid_argument", none.clone()),
        ("[1, 2]".into(), "invalid_argument", none.clone()),
        ("\"send\"".into(), "invalid_argument", none.clone()),
        (json!({"ref": 1}).to_string(), "invalid_argument", Some(json!(1))),
        (json!({"type": 5, "ref": 2}).to_string(), "invalid_argument", Some(json!(2))),
        (json!({"type": "dance", "ref": "u"}).to_string(), "invalid_argument", Some(json!("u"))),
        (json!({"type": "send", "ref": 3}).to_string(), "invalid_argument", Some(json!(3))),
        (json!({"type": "send", "ref": 4, "channel_id": ch, "body": "no key"}).to_string(), "invalid_argument", Some(json!(4))),
        (json!({"type": "send", "ref": 5, "channel_id": ch, "client_msg_id": "k"}).to_string(), "invalid_argument", Some(json!(5))),
        (json!({"type": "send", "ref": 6, "channel_id": ch, "client_msg_id": 7, "body": "x"}).to_string(), "invalid_argument", Some(json!(6))),
        (json!({"type": "send", "ref": 7, "channel_id": "nope", "client_msg_id": "k", "body": "x"}).to_string(), "invalid_argument", Some(json!(7))),
        (json!({"type": "send", "ref": 8, "channel_id": ch, "client_msg_id": "", "body": "x"}).to_string(), "invalid_argument", Some(json!(8))),
        (json!({"type": "send", "ref": 9, "channel_id": ch, "client_msg_id": "k", "body": ""}).to_string(), "invalid_argument", Some(json!(9))),
        (json!({"type": "send", "ref": 10, "channel_id": ch, "client_msg_id": "k", "body": "x".repeat(2049)}).to_string(), "too_large", Some(json!(10))),
        (json!({"type": "resume", "ref": 11}).to_string(), "invalid_argument", Some(json!(11))),
        (json!({"type": "resume", "ref": 12, "positions": {"nope": 1}}).to_string(), "invalid_argument", Some(json!(12))),
        (json!({"type": "resume", "ref": 13, "positions": { &ch: -1 }}).to_string(), "invalid_argument", Some(json!(13))),
    ];
    for (i, (text, code, r)) in cases.iter().enumerate() {
        ws.send_text(text).await?;
        let err = ws
            .next_frame(T)
            .await?
            .unwrap_or_else(|| panic!("no answer to {text}"));
        assert_error_frame(&err, code, r.as_ref());
        // Still usable: a ping is answered, and nothing else came in between.
        let between = ping(&mut ws, &format!("p{i}")).await?;
        assert!(between.is_empty(), "after {text}: {between:?}");
    }
    ws.send_binary(b"{\"type\":\"ping\"}".to_vec()).await?;
    assert_error_frame(
        &ws.next_frame(T).await?.expect("error for binary"),
        "invalid_argument",
        None,
    );
    assert!(ping(&mut ws, "last").await?.is_empty());

    // Nothing was sent, and a good send still works on the same socket.
    assert_eq!(alice.channel(&ch).await?["last_seq"], 0);
    ws.send(json!({"type": "send", "ref": "ok", "channel_id": ch, "client_msg_id": "k", "body": "fine"})).await?;
    let sent = ws.expect("sent", T).await?;
    assert_eq!(sent["ref"], "ok");
    assert_eq!(sent["message"]["seq"], 1);
    Ok(())
}

#[tokio::test]
async fn every_error_has_the_json_error_body() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    // A path segment that is not valid UTF-8 once decoded.
    assert_error(
        &alice.req("GET", "/v1/channels/%FF", None).await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice
            .req("DELETE", &format!("/v1/channels/{ch}/messages/%FF"), None)
            .await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice
            .req("DELETE", &format!("/v1/channels/{ch}/members/%FF"), None)
            .await?,
        400,
        "invalid_argument",
    );
    // A method the endpoint does not have.
    assert_error(
        &alice.req("PUT", "/v1/channels", Some(json!({}))).await?,
        404,
        "not_found",
    );
    assert_error(
        &alice
            .req("POST", &format!("/v1/channels/{ch}"), Some(json!({})))
            .await?,
        404,
        "not_found",
    );
    // `GET /v1/ws` that is not a WebSocket upgrade: authenticated first, then refused.
    assert_error(
        &alice.raw("GET", "/v1/ws", None, None).await?,
        401,
        "unauthenticated",
    );
    assert_error(
        &alice.req("GET", "/v1/ws", None).await?,
        400,
        "invalid_argument",
    );
    Ok(())
}
