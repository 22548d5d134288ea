//! Message search (issue 17): `GET /v1/search` over the caller's channels, against the
//! real services.

use parley_testkit::{Client, Stack, eventually};
use serde_json::{Value, json};

use crate::{T, assert_error};

/// One messaging (collecting the words of messages at once, every 100 ms) and one
/// gateway without per-user rate limits.
async fn stack() -> anyhow::Result<Stack> {
    let mut s = Stack::empty().await?;
    s.add_messaging(&[
        ("PARLEY__SEARCH__WORDS_SETTLE_MS", "0"),
        ("PARLEY__SEARCH__WORDS_INTERVAL_MS", "100"),
    ])
    .await?;
    s.add_gateway(&[
        ("PARLEY__RATE__MESSAGES__N", "0"),
        ("PARLEY__RATE__EDITS__N", "0"),
        ("PARLEY__RATE__SEARCHES__N", "0"),
        ("PARLEY__RATE__CHANNEL_CREATIONS__N", "0"),
    ])
    .await?;
    Ok(s)
}

/// `GET /v1/search?<query>` (the query already URL-encoded).
async fn search(c: &Client, query: &str) -> anyhow::Result<parley_testkit::Reply> {
    c.req("GET", &format!("/v1/search?{query}"), None).await
}

/// The bodies of a search's hits, in order.
async fn bodies(c: &Client, q: &str) -> anyhow::Result<Vec<String>> {
    let (s, b, _) = search(c, &format!("q={}", enc(q))).await?;
    anyhow::ensure!(s == 200, "search {q:?}: {s} {b}");
    Ok(b["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| h["message"]["body"].as_str().unwrap_or_default().to_owned())
        .collect())
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A hit's snippet rendered with [brackets] around the highlighted parts.
fn rendered(hit: &Value) -> String {
    hit["snippet"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let t = p["text"].as_str().unwrap_or_default();
            if p["highlight"] == true {
                format!("[{t}]")
            } else {
                t.to_owned()
            }
        })
        .collect()
}

#[tokio::test]
async fn finds_words_substrings_and_typos_newest_first_with_snippets() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let team = alice.group("team", &["bob"]).await?;
    let mine = alice.group("notes", &[]).await?;
    alice
        .send(&team, "m1", "The Rocket launch is on Friday")
        .await?;
    bob.send(&team, "m2", "lunch at noon?").await?;
    alice
        .send(&mine, "m3", "remember: rocket fuel order")
        .await?;
    bob.send(&team, "m4", "rocketry club meets tomorrow")
        .await?;
    alice.send(&team, "m5", "50% off_sale today").await?;
    alice.send(&mine, "m6", "fusion talk").await?;
    // The words of the messages (what parts of words and misspellings are looked up in)
    // are collected in the background.
    eventually(T, "the words of the messages collected", || async {
        Ok((!bodies(&alice, "fusiom").await?.is_empty()).then_some(()))
    })
    .await?;

    // Words, newest first, across the caller's channels; highlighted case-insensitively.
    let (s, b, _) = search(&alice, "q=rocket").await?;
    assert_eq!(s, 200, "{b}");
    let hits = b["hits"].as_array().cloned().unwrap_or_default();
    let found: Vec<&str> = hits
        .iter()
        .map(|h| h["message"]["body"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        found,
        [
            "rocketry club meets tomorrow",
            "remember: rocket fuel order",
            "The Rocket launch is on Friday"
        ],
        "`rocketry` contains `rocket`: it counts too"
    );
    assert_eq!(rendered(&hits[2]), "The [Rocket] launch is on Friday");
    assert_eq!(rendered(&hits[0]), "[rocketry] club meets tomorrow");
    assert_eq!(hits[2]["message"]["client_msg_id"], "m1");
    assert!(b["next_cursor"].is_null(), "{b}");
    // Bob is not in `notes`.
    assert_eq!(
        bodies(&bob, "rocket").await?,
        [
            "rocketry club meets tomorrow",
            "The Rocket launch is on Friday"
        ]
    );
    // A misspelt word (pg_trgm word similarity against the words of the messages, which
    // are collected in the background) and part of a word.
    assert_eq!(
        bodies(&alice, "launhc").await?,
        ["The Rocket launch is on Friday"]
    );
    let (_, b, _) = search(&alice, "q=launhc").await?;
    assert_eq!(rendered(&b["hits"][0]), "The Rocket [launch] is on Friday");
    assert_eq!(bodies(&alice, "noon").await?, ["lunch at noon?"]);
    assert_eq!(
        bodies(&alice, "unc").await?,
        ["lunch at noon?", "The Rocket launch is on Friday"]
    );
    // LIKE's wildcards are plain characters: `f_s` is no pattern matching `fus`.
    assert_eq!(bodies(&alice, "50%").await?, ["50% off_sale today"]);
    assert!(bodies(&alice, "f_s").await?.is_empty());
    assert!(bodies(&alice, "zebra").await?.is_empty());
    // Several words: all must match (full text).
    assert_eq!(
        bodies(&alice, "rocket friday").await?,
        ["The Rocket launch is on Friday"]
    );
    // One channel only.
    let (s, b, _) = search(&alice, &format!("q=rocket&channel_id={mine}")).await?;
    assert_eq!(s, 200);
    assert_eq!(b["hits"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test]
async fn pages_are_keyset_and_complete() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("many", &[]).await?;
    for i in 0..7 {
        alice
            .send(&ch, &format!("c{i}"), &format!("status report number {i}"))
            .await?;
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let q = if cursor.is_empty() {
            "q=report&limit=3".to_owned()
        } else {
            format!("q=report&limit=3&cursor={cursor}")
        };
        let (s, b, _) = search(&alice, &q).await?;
        assert_eq!(s, 200, "{b}");
        let hits = b["hits"].as_array().cloned().unwrap_or_default();
        assert!(hits.len() <= 3);
        seen.extend(
            hits.iter()
                .map(|h| h["message"]["seq"].as_u64().unwrap_or(0)),
        );
        match b["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, [7, 6, 5, 4, 3, 2, 1]);
    Ok(())
}

#[tokio::test]
async fn edits_reindex_deletes_and_leaving_hide() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = alice.group("t", &["bob"]).await?;
    alice.send(&ch, "e1", "meeting at the harbour").await?;
    alice.send(&ch, "e2", "bring the blueprints").await?;
    assert_eq!(bodies(&bob, "harbour").await?, ["meeting at the harbour"]);

    // An edit re-indexes: the old word is gone, the new one found.
    let (s, b, _) = alice
        .req(
            "PATCH",
            &format!("/v1/channels/{ch}/messages/1"),
            Some(json!({"body": "meeting at the lighthouse"})),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    assert!(bodies(&bob, "harbour").await?.is_empty());
    assert_eq!(
        bodies(&bob, "lighthouse").await?,
        ["meeting at the lighthouse"]
    );
    // A deleted message is not found.
    let (s, _, _) = alice
        .req("DELETE", &format!("/v1/channels/{ch}/messages/2"), None)
        .await?;
    assert_eq!(s, 204);
    assert!(bodies(&bob, "blueprints").await?.is_empty());
    // A former member finds nothing of the channel any more (history is members-only too).
    let (s, _, _) = bob
        .req("DELETE", &format!("/v1/channels/{ch}/members/bob"), None)
        .await?;
    assert!(s == 200 || s == 204, "leave: {s}");
    assert!(bodies(&bob, "lighthouse").await?.is_empty());
    assert_error(
        &search(&bob, &format!("q=lighthouse&channel_id={ch}")).await?,
        403,
        "permission_denied",
    );
    // System messages (moderation records) are not search results.
    let (s, b, _) = alice
        .req(
            "PUT",
            &format!("/v1/channels/{ch}/bans/mallory"),
            Some(json!({})),
        )
        .await?;
    assert!(s == 200 || s == 201, "ban: {s} {b}");
    let page = alice.history(&ch, "").await?;
    let record = page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m.get("system").is_some())
        .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let word = record
        .split_whitespace()
        .find(|w| w.contains("mallory"))
        .unwrap_or("mallory");
    assert!(
        !record.is_empty(),
        "a system message records the ban: {page}"
    );
    assert!(bodies(&alice, word).await?.is_empty(), "{record}");
    assert_eq!(bodies(&alice, "lighthouse").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn bad_queries_are_refused() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("b", &[]).await?;
    for q in [
        "".to_owned(),
        "q=".to_owned(),
        "q=%20%20".to_owned(),
        format!("q={}", "a".repeat(201)),
        "q=x&limit=0".to_owned(),
        "q=x&limit=101".to_owned(),
        "q=x&limit=ten".to_owned(),
        "q=x&cursor=!!".to_owned(),
        "q=x&channel_id=nope".to_owned(),
        "q=a%07b".to_owned(),
    ] {
        assert_error(&search(&alice, &q).await?, 400, "invalid_argument");
    }
    assert_error(
        &search(&alice, &format!("q=x&channel_id={}", uuid::Uuid::new_v4())).await?,
        404,
        "not_found",
    );
    // At the limit is fine.
    let (s, _, _) = search(&alice, &format!("q={}&channel_id={ch}", "a".repeat(200))).await?;
    assert_eq!(s, 200);
    Ok(())
}

#[tokio::test]
async fn searches_are_rate_limited_per_user() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[("PARLEY__RATE__SEARCHES__N", "2")])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    for _ in 0..2 {
        assert_eq!(search(&alice, "q=x").await?.0, 200);
    }
    let limited = search(&alice, "q=x").await?;
    assert_error(&limited, 429, "rate_limited");
    assert!(limited.2.get("retry-after").is_some());
    assert_eq!(search(&bob, "q=x").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn messaging_builds_the_search_indexes_at_start() -> anyhow::Result<()> {
    let stack = stack().await?;
    // Built in the background, CONCURRENTLY: valid once done.
    let sql = "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE c.relnamespace = 'messaging'::regnamespace AND i.indisvalid
                 AND (c.relname = 'messages_created_at'
                      OR (c.relname = 'messages_fts_simple'
                          AND c.reloptions @> ARRAY['fastupdate=off']))";
    eventually(T, "the search indexes built", || async {
        Ok((stack.query_i64(sql).await? == 2).then_some(()))
    })
    .await?;
    Ok(())
}
