//! The product spec's per-user limits with their default values: exact windows ("never more
//! than n in any window"), shared by replicas, counting only what happened for creations
//! and joins, and still enforced when Redis is gone.

use parley_testkit::{Client, PrivateRedis, Stack};
use serde_json::json;

use crate::assert_error;

/// The `Retry-After` seconds of a 429.
fn retry_after(reply: &parley_testkit::Reply) -> u64 {
    reply
        .2
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After header")
}

#[tokio::test]
async fn sixty_messages_a_minute_and_not_one_more() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    for i in 0..60 {
        alice.send(&ch, &format!("m{i}"), "hi").await?;
    }
    let refused = alice.post_message(&ch, "m60", "one too many").await?;
    assert_error(&refused, 429, "rate_limited");
    let wait = retry_after(&refused);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_eq!(alice.channel(&ch).await?["last_seq"], 60);
    // Bob has his own 60.
    Client::new(&stack.url(0), "bob")
        .send(&ch, "b", "mine")
        .await?;
    Ok(())
}

#[tokio::test]
async fn five_channel_creations_and_twenty_joins_an_hour_counting_what_happened()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    // Refused creations (a blank name, refused by messaging) do not count...
    for _ in 0..3 {
        let blank = alice
            .req(
                "POST",
                "/v1/channels",
                Some(json!({"kind": "group", "name": "  ", "members": []})),
            )
            .await?;
        assert_error(&blank, 400, "invalid_argument");
    }
    let mut channels = Vec::new();
    for i in 0..5 {
        channels.push(alice.group(&format!("g{i}"), &[]).await?);
    }
    // ...nor does asking again for an existing direct channel; the sixth new one is refused.
    let sixth = alice
        .req(
            "POST",
            "/v1/channels",
            Some(json!({"kind": "group", "name": "g5", "members": []})),
        )
        .await?;
    assert_error(&sixth, 429, "rate_limited");
    assert!(retry_after(&sixth) > 3000, "an hour's window");

    // Joins: adding someone already a member changes nothing and does not count.
    let add = |ch: &str, user: &str| {
        let (alice, path, user) = (
            alice.clone(),
            format!("/v1/channels/{ch}/members"),
            user.to_owned(),
        );
        async move {
            alice
                .req("POST", &path, Some(json!({"user_id": user})))
                .await
        }
    };
    for i in 0..19 {
        let (s, b, _) = add(&channels[i % 5], &format!("u{i}")).await?;
        assert_eq!(s, 201, "{b}");
    }
    for _ in 0..3 {
        let (s, _, _) = add(&channels[0], "u0").await?;
        assert_eq!(s, 200, "already a member: not a join, not counted");
    }
    let (s, b, _) = add(&channels[1], "u19").await?;
    assert_eq!(s, 201, "the twentieth: {b}");
    assert_error(&add(&channels[1], "u99").await?, 429, "rate_limited");
    Ok(())
}

#[tokio::test]
async fn without_redis_each_replica_still_limits() -> anyhow::Result<()> {
    let Some(mut redis) = PrivateRedis::start().await? else {
        eprintln!("redis-server is not installed: skipping");
        return Ok(());
    };
    let mut stack = Stack::empty().await?;
    stack.redis_url = redis.url();
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[("PARLEY__RATE__MESSAGES__N", "3")])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    redis.stop();
    for i in 0..3 {
        let (s, b, _) = alice.post_message(&ch, &format!("m{i}"), "hi").await?;
        assert!(s == 201, "{s} {b}");
    }
    assert_error(
        &alice.post_message(&ch, "m3", "over").await?,
        429,
        "rate_limited",
    );
    let text = crate::metrics(&alice).await?;
    assert!(
        crate::sample(&text, "gateway_rate_limiter_errors_total").is_some_and(|n| n >= 4.0),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn members_of_a_new_group_count_as_joins() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let create = |n: usize, from: usize| {
        let members: Vec<String> = (from..from + n).map(|i| format!("u{i}")).collect();
        let alice = alice.clone();
        async move {
            alice
                .req(
                    "POST",
                    "/v1/channels",
                    Some(json!({"kind": "group", "name": "g", "members": members})),
                )
                .await
        }
    };
    // More than the hourly limit at once can never succeed; it takes nothing.
    let too_many = create(21, 0).await?;
    assert_error(&too_many, 429, "rate_limited");
    // 18 at creation, 2 added later: 20. The next is refused, at creation or by adding.
    let (s, g, _) = create(18, 0).await?;
    assert_eq!(s, 201, "{g}");
    let ch = g["id"].as_str().unwrap_or_default().to_owned();
    for u in ["u18", "u19"] {
        let (s, b, _) = alice
            .req(
                "POST",
                &format!("/v1/channels/{ch}/members"),
                Some(json!({"user_id": u})),
            )
            .await?;
        assert_eq!(s, 201, "{b}");
    }
    assert_error(&create(1, 20).await?, 429, "rate_limited");
    assert_error(
        &alice
            .req(
                "POST",
                &format!("/v1/channels/{ch}/members"),
                Some(json!({"user_id": "u20"})),
            )
            .await?,
        429,
        "rate_limited",
    );
    // A group without members is still fine (a creation, no joins).
    assert_eq!(create(0, 0).await?.0, 201);
    Ok(())
}
