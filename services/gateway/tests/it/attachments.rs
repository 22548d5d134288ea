//! Attachments (issue 17): announce, upload the bytes straight to the S3-compatible server
//! through the presigned PUT, send, download through the redirect — against the real
//! services and the local S3 server `make test` starts (`PARLEY_TEST_S3_ENDPOINT`).

use parley_testkit::{Client, Stack, Ws, eventually};
use serde_json::{Value, json};

use crate::{T, assert_error};

/// One messaging (with object storage, plus `extra` settings) and one gateway without
/// per-user rate limits.
async fn stack(extra: &[(&str, &str)]) -> anyhow::Result<Stack> {
    anyhow::ensure!(
        std::env::var("PARLEY_TEST_S3_ENDPOINT").is_ok(),
        "PARLEY_TEST_S3_ENDPOINT is not set: run the tests with `make test` (it starts a local S3 server)"
    );
    let mut s = Stack::empty().await?;
    s.add_messaging(extra).await?;
    s.add_gateway(&[
        ("PARLEY__RATE__MESSAGES__N", "0"),
        ("PARLEY__RATE__EDITS__N", "0"),
        ("PARLEY__RATE__CHANNEL_CREATIONS__N", "0"),
        ("PARLEY__RATE__JOINS__N", "0"),
    ])
    .await?;
    Ok(s)
}

/// An HTTP client that does not follow redirects.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Announces an upload; the 201 body.
async fn announce(c: &Client, ch: &str, body: Value) -> anyhow::Result<Value> {
    let (s, b, _) = c
        .req(
            "POST",
            &format!("/v1/channels/{ch}/attachments"),
            Some(body),
        )
        .await?;
    anyhow::ensure!(s == 201, "announce: {s} {b}");
    Ok(b)
}

/// PUTs `bytes` to an announced upload's presigned URL with its headers; the status.
async fn upload(announced: &Value, bytes: &[u8]) -> anyhow::Result<u16> {
    let url = announced["upload_url"].as_str().unwrap_or_default();
    assert_eq!(announced["method"], "PUT");
    let mut req = reqwest::Client::new().put(url).body(bytes.to_vec());
    for (k, v) in announced["headers"].as_object().into_iter().flatten() {
        req = req.header(k.as_str(), v.as_str().unwrap_or_default());
    }
    Ok(req.send().await?.status().as_u16())
}

/// Announces and uploads `bytes` as `content_type`; the attachment id.
async fn uploaded(
    c: &Client,
    ch: &str,
    name: &str,
    ct: &str,
    bytes: &[u8],
) -> anyhow::Result<String> {
    let a = announce(
        c,
        ch,
        json!({"filename": name, "content_type": ct, "size": bytes.len()}),
    )
    .await?;
    let s = upload(&a, bytes).await?;
    anyhow::ensure!(s == 200, "upload answered {s}");
    Ok(a["attachment_id"].as_str().unwrap_or_default().to_owned())
}

/// Sends a message with attachments over REST; the reply.
async fn send_with(
    c: &Client,
    ch: &str,
    cid: &str,
    body: Option<&str>,
    ids: &[&str],
) -> anyhow::Result<parley_testkit::Reply> {
    let mut b = json!({"client_msg_id": cid, "attachment_ids": ids});
    if let Some(text) = body {
        b["body"] = json!(text);
    }
    c.req("POST", &format!("/v1/channels/{ch}/messages"), Some(b))
        .await
}

/// `GET /v1/attachments/{id}` as `user` without following: status and Location.
async fn locate(stack: &Stack, user: &str, id: &str) -> anyhow::Result<(u16, String)> {
    let resp = no_redirects()
        .get(format!("{}/v1/attachments/{id}", stack.url(0)))
        .bearer_auth(parley_testkit::token(user, 600))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((status, location))
}

/// Whether storage still holds an object, by a GET of the presigned download URL.
async fn fetch(url: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let resp = reqwest::get(url).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.bytes().await?.to_vec()))
}

fn image(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn a_photo_goes_up_to_storage_and_comes_back_to_members() -> anyhow::Result<()> {
    let stack = stack(&[]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let carol = Client::new(&stack.url(0), "carol");
    let ch = alice.group("photos", &["bob"]).await?;
    let mut bob_ws = Ws::connect(&stack.url(0), "bob").await?;

    let bytes = image(300 * 1024);
    let a = announce(
        &alice,
        &ch,
        json!({"filename": "beach.png", "content_type": "image/png", "size": bytes.len(),
               "width": 640, "height": 480}),
    )
    .await?;
    let id = a["attachment_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(a["attachment"]["id"], id.as_str());
    assert_eq!(a["attachment"]["size"], bytes.len());
    assert_eq!(a["headers"]["content-type"], "image/png");
    assert_eq!(a["headers"]["content-length"], bytes.len().to_string());
    assert!(a["expires_at"].is_string(), "{a}");
    let url = a["upload_url"].as_str().unwrap_or_default();
    assert!(url.contains("X-Amz-Signature="), "presigned: {url}");
    // Not uploaded yet: the send is refused and nothing is written.
    assert_error(
        &send_with(&alice, &ch, "p0", Some("too early"), &[&id]).await?,
        409,
        "conflict",
    );
    assert_eq!(upload(&a, &bytes).await?, 200);

    // A message with a file and no text.
    let (s, m, _) = send_with(&alice, &ch, "p1", None, &[&id]).await?;
    assert_eq!(s, 201, "{m}");
    assert_eq!(m["body"], "");
    assert_eq!(m["seq"], 1, "the refused send took no seq");
    let att = &m["attachments"][0];
    assert_eq!(att["id"], id.as_str());
    assert_eq!(att["filename"], "beach.png");
    assert_eq!(att["content_type"], "image/png");
    assert_eq!(att["size"], bytes.len());
    assert_eq!(att["width"], 640);
    assert_eq!(att["height"], 480);
    assert!(att.get("duration_ms").is_none(), "{att}");
    assert_eq!(att["url"], format!("/v1/attachments/{id}"));
    // The retry answers the original; members see it live and in history.
    let (s, again, _) = send_with(&alice, &ch, "p1", None, &[&id]).await?;
    assert_eq!((s, &again), (200, &m));
    let live = bob_ws.expect("message", T).await?;
    assert_eq!(live["message"]["attachments"], m["attachments"]);
    let page = bob.history(&ch, "").await?;
    assert_eq!(page["messages"][0]["attachments"], m["attachments"]);

    // Bob downloads it through the redirect; the bytes are the uploaded ones.
    let (s, location) = locate(&stack, "bob", &id).await?;
    assert_eq!(s, 302);
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let (s, got) = fetch(&location).await?;
    assert_eq!(s, 200);
    assert_eq!(got, bytes);
    // Not a member: not found (as for an unknown id).
    assert_eq!(locate(&stack, "carol", &id).await?.0, 404);
    assert_eq!(
        locate(&stack, "bob", &uuid::Uuid::new_v4().to_string())
            .await?
            .0,
        404
    );
    assert_error(
        &carol
            .req("GET", &format!("/v1/attachments/{id}"), None)
            .await?,
        404,
        "not_found",
    );
    // One upload, one message: sending it again in another message is refused.
    assert_error(
        &send_with(&alice, &ch, "p2", Some("again"), &[&id]).await?,
        409,
        "conflict",
    );
    Ok(())
}

#[tokio::test]
async fn websocket_sends_carry_attachments_in_order() -> anyhow::Result<()> {
    let stack = stack(&[]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("w", &["bob"]).await?;
    let doc = uploaded(&alice, &ch, "notes.txt", "text/plain", b"hello file").await?;
    let clip = uploaded(&alice, &ch, "clip.mp4", "video/mp4", &image(4096)).await?;
    let mut ws = Ws::connect(&stack.url(0), "alice").await?;
    // Pipelined: text, files, text — seqs in frame order.
    ws.send(
        json!({"type": "send", "ref": 1, "channel_id": ch, "client_msg_id": "w1", "body": "first"}),
    )
    .await?;
    ws.send(
        json!({"type": "send", "ref": 2, "channel_id": ch, "client_msg_id": "w2",
                   "body": "two files", "attachment_ids": [doc, clip]}),
    )
    .await?;
    ws.send(
        json!({"type": "send", "ref": 3, "channel_id": ch, "client_msg_id": "w3", "body": "last"}),
    )
    .await?;
    let mut acks = Vec::new();
    while acks.len() < 3 {
        let f = ws.expect("sent", T).await?;
        acks.push((
            f["ref"].as_u64().unwrap_or(0),
            f["message"]["seq"].as_u64().unwrap_or(0),
        ));
    }
    acks.sort_unstable();
    assert_eq!(acks, [(1, 1), (2, 2), (3, 3)]);
    let page = alice.history(&ch, "").await?;
    let files = &page["messages"][1]["attachments"];
    assert_eq!(files[0]["id"], doc.as_str());
    assert_eq!(files[1]["id"], clip.as_str());
    assert_eq!(files[1]["content_type"], "video/mp4");
    Ok(())
}

#[tokio::test]
async fn bad_uploads_are_refused_with_clear_codes() -> anyhow::Result<()> {
    let stack = stack(&[("PARLEY__ATTACHMENTS__MAX_BYTES", "1000")]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let carol = Client::new(&stack.url(0), "carol");
    let ch = alice.group("a", &["bob"]).await?;
    let other = alice.group("b", &[]).await?;
    let post = |c: &Client, ch: &str, b: Value| {
        let (c, path) = (c.clone(), format!("/v1/channels/{ch}/attachments"));
        async move { c.req("POST", &path, Some(b)).await }
    };
    let ok = json!({"filename": "a.png", "content_type": "image/png", "size": 10});
    // Too large, type not allowed, bad fields.
    assert_error(
        &post(
            &alice,
            &ch,
            json!({"filename": "a.png", "content_type": "image/png", "size": 1001}),
        )
        .await?,
        413,
        "too_large",
    );
    assert_error(
        &post(
            &alice,
            &ch,
            json!({"filename": "a.exe", "content_type": "application/x-msdownload", "size": 10}),
        )
        .await?,
        415,
        "unsupported_media_type",
    );
    for bad in [
        json!({"filename": "", "content_type": "image/png", "size": 10}),
        json!({"filename": "../etc/passwd", "content_type": "image/png", "size": 10}),
        json!({"filename": "a\u{7}.png", "content_type": "image/png", "size": 10}),
        json!({"filename": "a.png", "content_type": "image/png", "size": 0}),
        json!({"filename": "a.png", "content_type": "image/png"}),
        json!({"filename": "a.png", "content_type": "", "size": 10}),
    ] {
        assert_error(
            &post(&alice, &ch, bad.clone()).await?,
            400,
            "invalid_argument",
        );
    }
    // Not a member; unknown channel.
    assert_error(
        &post(&carol, &ch, ok.clone()).await?,
        403,
        "permission_denied",
    );
    assert_error(
        &post(&alice, &uuid::Uuid::new_v4().to_string(), ok.clone()).await?,
        404,
        "not_found",
    );
    // Another channel's upload → 403; another user's → 403; unknown → 404.
    let elsewhere = uploaded(&alice, &other, "x.png", "image/png", b"0123456789").await?;
    assert_error(
        &send_with(&alice, &ch, "c1", Some("x"), &[&elsewhere]).await?,
        403,
        "permission_denied",
    );
    let alices = uploaded(&alice, &ch, "y.png", "image/png", b"0123456789").await?;
    assert_error(
        &send_with(&bob, &ch, "c2", Some("x"), &[&alices]).await?,
        403,
        "permission_denied",
    );
    assert_error(
        &send_with(
            &alice,
            &ch,
            "c3",
            Some("x"),
            &[&uuid::Uuid::new_v4().to_string()],
        )
        .await?,
        404,
        "not_found",
    );
    assert_error(
        &send_with(&alice, &ch, "c4", Some("x"), &["not-a-uuid"]).await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &send_with(&alice, &ch, "c5", Some("x"), &[&alices, &alices]).await?,
        400,
        "invalid_argument",
    );
    // The upload must be what was announced: another size or type is refused.
    let a = announce(&alice, &ch, ok.clone()).await?;
    let id = a["attachment_id"].as_str().unwrap_or_default().to_owned();
    let put = reqwest::Client::new()
        .put(a["upload_url"].as_str().unwrap_or_default())
        .header("content-type", "image/png")
        .body(b"0123".to_vec())
        .send()
        .await?
        .status()
        .as_u16();
    // moto does not check the signed content-length; real S3 refuses the PUT itself.
    if put == 200 {
        assert_error(
            &send_with(&alice, &ch, "c6", Some("x"), &[&id]).await?,
            409,
            "conflict",
        );
    }
    // Neither text nor files.
    assert_error(
        &alice
            .req(
                "POST",
                &format!("/v1/channels/{ch}/messages"),
                Some(json!({"client_msg_id": "c7"})),
            )
            .await?,
        400,
        "invalid_argument",
    );
    // None of it wrote a message.
    assert_eq!(alice.history(&ch, "").await?["messages"], json!([]));
    Ok(())
}

#[tokio::test]
async fn upload_rate_and_quota_are_per_user() -> anyhow::Result<()> {
    let stack = stack(&[
        ("PARLEY__ATTACHMENTS__UPLOADS_PER_MINUTE", "3"),
        ("PARLEY__ATTACHMENTS__USER_QUOTA_BYTES", "250"),
    ])
    .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = alice.group("q", &["bob"]).await?;
    let file =
        |size: u64| json!({"filename": "f.pdf", "content_type": "application/pdf", "size": size});
    let path = format!("/v1/channels/{ch}/attachments");
    announce(&alice, &ch, file(100)).await?;
    announce(&alice, &ch, file(100)).await?;
    // 200 held + 100 > 250.
    assert_error(
        &alice.req("POST", &path, Some(file(100))).await?,
        403,
        "quota_exceeded",
    );
    announce(&alice, &ch, file(50)).await?;
    // Three announced this minute.
    assert_error(
        &alice.req("POST", &path, Some(file(1))).await?,
        429,
        "rate_limited",
    );
    // Bob has his own.
    announce(&bob, &ch, file(200)).await?;
    Ok(())
}

#[tokio::test]
async fn unsent_and_deleted_files_are_cleaned_up() -> anyhow::Result<()> {
    let stack = stack(&[
        ("PARLEY__ATTACHMENTS__UPLOAD_TTL_SECS", "1"),
        ("PARLEY__ATTACHMENTS__ORPHAN_TTL_SECS", "1"),
        ("PARLEY__ATTACHMENTS__CLEANUP_INTERVAL_MS", "200"),
    ])
    .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("c", &[]).await?;
    let sent = uploaded(&alice, &ch, "keep.png", "image/png", b"kept bytes").await?;
    let (s, m, _) = send_with(&alice, &ch, "k1", Some("kept"), &[&sent]).await?;
    assert_eq!(s, 201, "{m}");
    let orphan = uploaded(&alice, &ch, "orphan.png", "image/png", b"never sent").await?;
    // The uploader can still fetch an unsent upload until it expires.
    let (s, orphan_url) = locate(&stack, "alice", &orphan).await?;
    assert_eq!(s, 302);
    let (s, sent_url) = locate(&stack, "alice", &sent).await?;
    assert_eq!(s, 302);

    // The orphan's object and row go; the sent one stays.
    eventually(T, "the orphan's object and row deleted", || async {
        let (s, _) = fetch(&orphan_url).await?;
        let rows = stack
            .query_i64(&format!(
                "SELECT count(*) FROM messaging.attachments WHERE id = '{orphan}'"
            ))
            .await?;
        Ok((s == 404 && rows == 0).then_some(()))
    })
    .await?;
    assert_eq!(fetch(&sent_url).await?, (200, b"kept bytes".to_vec()));
    // Too late to send it.
    assert_error(
        &send_with(&alice, &ch, "k2", Some("late"), &[&orphan]).await?,
        404,
        "not_found",
    );

    // Deleting the message deletes its files.
    let seq = m["seq"].as_u64().unwrap_or(0);
    let (s, d, _) = alice
        .req("DELETE", &format!("/v1/channels/{ch}/messages/{seq}"), None)
        .await?;
    assert_eq!(s, 204, "{d}");
    let tombstone = &alice.history(&ch, "").await?["messages"][0];
    assert_eq!(tombstone["deleted"], true);
    assert!(
        tombstone.get("attachments").is_none(),
        "a tombstone has no files: {tombstone}"
    );
    assert_eq!(locate(&stack, "alice", &sent).await?.0, 404);
    eventually(T, "the deleted message's object deleted", || async {
        let (s, _) = fetch(&sent_url).await?;
        Ok((s == 404).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn text_keeps_flowing_when_storage_is_down() -> anyhow::Result<()> {
    // Storage on a port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let endpoint = format!("http://{dead}");
    let stack = stack(&[
        ("PARLEY__STORAGE__ENDPOINT", &endpoint),
        ("PARLEY__STORAGE__TIMEOUT_MS", "300"),
    ])
    .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("down", &[]).await?;
    // Announcing only signs (storage is not asked); the send with it cannot be checked.
    let a = announce(
        &alice,
        &ch,
        json!({"filename": "a.png", "content_type": "image/png", "size": 3}),
    )
    .await?;
    let id = a["attachment_id"].as_str().unwrap_or_default().to_owned();
    assert_error(
        &send_with(&alice, &ch, "d1", Some("with a file"), &[&id]).await?,
        503,
        "unavailable",
    );
    // Text, over REST and the WebSocket, is unaffected — also while a send with a file
    // waits for storage (the gateway may batch them into one call).
    let m = alice.send(&ch, "d2", "plain text").await?;
    assert_eq!(m["seq"], 1);
    let other = alice.group("other", &[]).await?;
    let mut ws = Ws::connect(&stack.url(0), "alice").await?;
    let ids = [id.as_str()];
    let (with_file, text) = tokio::join!(
        send_with(&alice, &ch, "d3", Some("with a file"), &ids),
        async {
            ws.send(json!({"type": "send", "ref": 1, "channel_id": other, "client_msg_id": "d4", "body": "ws text"}))
                .await?;
            ws.expect("sent", T).await
        }
    );
    assert_error(&with_file?, 503, "unavailable");
    assert_eq!(text?["message"]["seq"], 1);
    assert_eq!(
        alice.history(&ch, "").await?["messages"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    Ok(())
}

#[tokio::test]
async fn a_public_base_url_serves_downloads_from_a_cdn() -> anyhow::Result<()> {
    let stack = stack(&[(
        "PARLEY__ATTACHMENTS__PUBLIC_BASE_URL",
        "https://cdn.example.com/files/",
    )])
    .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("cdn", &[]).await?;
    let id = uploaded(&alice, &ch, "a.gif", "image/gif", b"GIF89a").await?;
    let (s, location) = locate(&stack, "alice", &id).await?;
    assert_eq!(s, 302);
    let prefix = stack
        .storage_settings()
        .into_iter()
        .find(|(k, _)| *k == "PARLEY__STORAGE__KEY_PREFIX")
        .map(|(_, v)| v)
        .unwrap_or_default();
    assert_eq!(
        location,
        format!("https://cdn.example.com/files/{prefix}{ch}/{id}")
    );
    Ok(())
}
