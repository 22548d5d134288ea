//! History: concurrent senders get gapless, unique seqs, and keyset paging in both
//! directions returns every message exactly once.

use std::collections::{BTreeMap, HashMap};

use futures::{StreamExt as _, stream};
use parley_testkit::{Client, Stack};
use serde_json::Value;

use crate::{LONG, seqs};

const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const PER_USER: usize = 75;
const TOTAL: u64 = (USERS.len() * PER_USER) as u64;
const PAGE: u64 = 37;

async fn big_burst_stack() -> anyhow::Result<Stack> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[("PARLEY__RATE__MESSAGES__N", "0")])
        .await?;
    Ok(stack)
}

/// Every user sends `PER_USER` messages, a few at a time, all users at once. Returns
/// (sender, client_msg_id) → message as answered by the send.
async fn send_all(stack: &Stack, ch: &str) -> anyhow::Result<HashMap<(String, String), Value>> {
    let tasks = USERS.iter().map(|u| {
        let client = Client::new(&stack.url(0), u);
        let ch = ch.to_owned();
        tokio::spawn(async move {
            let results: Vec<anyhow::Result<Value>> = stream::iter(0..PER_USER)
                .map(|i| {
                    let (client, ch) = (client.clone(), ch.clone());
                    async move {
                        let (s, b, _) = client
                            .post_message(
                                &ch,
                                &format!("{}-{i}", client.user),
                                &format!("{} says {i}", client.user),
                            )
                            .await?;
                        anyhow::ensure!(s == 201, "send: {s} {b}");
                        Ok(b)
                    }
                })
                .buffer_unordered(3)
                .collect()
                .await;
            results.into_iter().collect::<anyhow::Result<Vec<Value>>>()
        })
    });
    let mut sent = HashMap::new();
    for t in futures::future::join_all(tasks).await {
        for m in t?? {
            let key = (
                m["sender_id"].as_str().expect("sender").to_owned(),
                m["client_msg_id"].as_str().expect("cid").to_owned(),
            );
            assert!(
                sent.insert(key, m).is_none(),
                "a client_msg_id was answered twice"
            );
        }
    }
    Ok(sent)
}

/// Checks a history message against what its send returned.
fn check_against_sent(m: &Value, sent: &HashMap<(String, String), Value>) {
    let key = (
        m["sender_id"].as_str().expect("sender").to_owned(),
        m["client_msg_id"].as_str().expect("cid").to_owned(),
    );
    let original = sent
        .get(&key)
        .unwrap_or_else(|| panic!("history has a message nobody sent: {m}"));
    assert_eq!(m, original, "history differs from the send's answer");
    let (user, i) = key.1.rsplit_once('-').expect("cid format");
    assert_eq!(m["body"], format!("{user} says {i}"));
}

#[tokio::test]
async fn concurrent_senders_page_backwards_and_forwards() -> anyhow::Result<()> {
    let stack = big_burst_stack().await?;
    let owner = Client::new(&stack.url(0), USERS[0]);
    let ch = owner.group("busy", &USERS[1..]).await?;

    let sent = tokio::time::timeout(LONG, send_all(&stack, &ch)).await??;
    assert_eq!(sent.len() as u64, TOTAL);
    let mut sent_seqs: Vec<u64> = sent
        .values()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    sent_seqs.sort_unstable();
    assert_eq!(
        sent_seqs,
        (1..=TOTAL).collect::<Vec<_>>(),
        "sends got gapless, unique seqs"
    );
    assert_eq!(owner.channel(&ch).await?["last_seq"], TOTAL);

    // Backwards (newest first) with `before`.
    let reader = Client::new(&stack.url(0), USERS[2]);
    let mut backwards = Vec::new();
    let mut query = format!("limit={PAGE}");
    let mut pages = 0;
    loop {
        let page = reader.history(&ch, &query).await?;
        pages += 1;
        let msgs = page["messages"].as_array().expect("messages").clone();
        let s = seqs(&msgs);
        assert!(
            s.windows(2).all(|w| w[0] == w[1] + 1),
            "a page is newest first without gaps: {s:?}"
        );
        let done = backwards.len() as u64 + msgs.len() as u64 == TOTAL;
        assert_eq!(
            page["has_more"],
            !done,
            "has_more after {} messages",
            backwards.len() + msgs.len()
        );
        if done {
            assert_eq!(msgs.len() as u64, TOTAL % PAGE);
        } else {
            assert_eq!(msgs.len() as u64, PAGE);
        }
        let oldest = *s.last().expect("non-empty page");
        backwards.extend(msgs);
        if done {
            break;
        }
        query = format!("before={oldest}&limit={PAGE}");
    }
    assert_eq!(pages, TOTAL.div_ceil(PAGE));
    assert_eq!(seqs(&backwards), (1..=TOTAL).rev().collect::<Vec<_>>());

    // Forwards (oldest first) with `after`.
    let mut forwards = Vec::new();
    let mut after = 0;
    loop {
        let page = reader
            .history(&ch, &format!("after={after}&limit={PAGE}"))
            .await?;
        let msgs = page["messages"].as_array().expect("messages").clone();
        let s = seqs(&msgs);
        assert!(
            s.windows(2).all(|w| w[0] + 1 == w[1]),
            "a page is oldest first without gaps: {s:?}"
        );
        let done = forwards.len() as u64 + msgs.len() as u64 == TOTAL;
        assert_eq!(page["has_more"], !done);
        after = *s.last().expect("non-empty page");
        forwards.extend(msgs);
        if done {
            break;
        }
    }
    assert_eq!(seqs(&forwards), (1..=TOTAL).collect::<Vec<_>>());
    // Past the end: an empty page without more.
    let end = reader.history(&ch, &format!("after={TOTAL}")).await?;
    assert_eq!(end["messages"], serde_json::json!([]));
    assert_eq!(end["has_more"], false);

    // Each (sender, client_msg_id) appears exactly once, as the send answered it, and both
    // directions agree message by message.
    let mut by_key = BTreeMap::new();
    for m in &forwards {
        check_against_sent(m, &sent);
        let key = (
            m["sender_id"].as_str().expect("sender").to_owned(),
            m["client_msg_id"].as_str().expect("cid").to_owned(),
        );
        assert!(
            by_key.insert(key, m["seq"].clone()).is_none(),
            "duplicate in history: {m}"
        );
    }
    assert_eq!(by_key.len() as u64, TOTAL);
    let mut reversed = backwards.clone();
    reversed.reverse();
    assert_eq!(reversed, forwards);
    for u in USERS {
        assert_eq!(
            forwards.iter().filter(|m| m["sender_id"] == u).count(),
            PER_USER,
            "messages of {u}"
        );
    }

    // The default page is the newest 50.
    let latest = reader.history(&ch, "").await?;
    assert_eq!(
        seqs(latest["messages"].as_array().expect("messages")),
        (TOTAL - 49..=TOTAL).rev().collect::<Vec<_>>()
    );
    assert_eq!(latest["has_more"], true);
    // `before=1` is empty; a page that ends exactly at the start has no more.
    let none = reader.history(&ch, "before=1").await?;
    assert_eq!(none["messages"], serde_json::json!([]));
    assert_eq!(none["has_more"], false);
    let exact = reader.history(&ch, "before=11&limit=10").await?;
    assert_eq!(
        seqs(exact["messages"].as_array().expect("messages")),
        (1..=10).rev().collect::<Vec<_>>()
    );
    assert_eq!(exact["has_more"], false);
    Ok(())
}
