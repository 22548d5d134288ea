//! Blocks and moderation in the fan-out: a user who blocked a sender gets no push for
//! their messages (from the BlockChanged projection) until they unblock, while the other
//! members still do; system messages (bans, mutes) push nobody.

use parley_proto::messaging::v1 as mpb;

use crate::{Env, as_user, pushed_messages, spawn};

/// `blocker` blocks (`on`) or unblocks `blocked` through messaging; whether that changed
/// anything.
async fn set_block(env: &Env, blocker: &str, blocked: &str, on: bool) -> anyhow::Result<bool> {
    let mut c = env.messaging.client.clone();
    Ok(if on {
        c.block_user(as_user(
            mpb::BlockUserRequest {
                user_id: blocked.into(),
            },
            blocker,
        ))
        .await?
        .into_inner()
        .created
    } else {
        c.unblock_user(as_user(
            mpb::UnblockUserRequest {
                user_id: blocked.into(),
            },
            blocker,
        ))
        .await?
        .into_inner()
        .changed
    })
}

/// The message ids pushed to `user` (at `/hook/<user>`) so far, in order.
fn pushed_to(env: &Env, user: &str) -> Vec<String> {
    pushed_messages(&env.receiver.seen(&format!("/hook/{user}")))
}

/// The projection's row of (`blocker`, `blocked`): 1 active, 0 lifted, -1 none.
async fn projected(env: &Env, blocker: &str, blocked: &str) -> anyhow::Result<i64> {
    env.count(&format!(
        "SELECT coalesce(max(CASE WHEN active THEN 1 ELSE 0 END), -1)::int8
         FROM notification.blocks WHERE blocker = '{blocker}' AND blocked = '{blocked}'"
    ))
    .await
}

#[tokio::test]
async fn a_blocker_gets_no_pushes_for_the_blocked_senders_messages_until_unblocked()
-> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob", "carol"]).await?;
    for u in ["alice", "bob", "carol"] {
        env.webhook(u, &format!("/hook/{u}")).await?;
    }

    // Before any block: carol's message reaches both other members.
    let before = env.send("carol", &ch, "before the block").await?;
    env.wait_settled().await?;
    assert_eq!(pushed_to(&env, "alice"), vec![before.clone()]);
    assert_eq!(pushed_to(&env, "bob"), vec![before.clone()]);

    assert!(set_block(&env, "bob", "carol", true).await?, "a new block");
    assert!(
        !set_block(&env, "bob", "carol", true).await?,
        "blocking again changes nothing"
    );
    let blocked = env.send("carol", &ch, "while blocked").await?;
    // bob's block is of carol only: alice's messages still reach him.
    let from_alice = env.send("alice", &ch, "from alice").await?;
    env.wait_settled().await?;
    assert_eq!(projected(&env, "bob", "carol").await?, 1, "block projected");
    assert_eq!(
        pushed_to(&env, "alice"),
        [before.clone(), blocked.clone()],
        "alice did not block carol: she is pushed"
    );
    assert_eq!(
        pushed_to(&env, "bob"),
        [before.clone(), from_alice.clone()],
        "bob blocked carol: no push for her message, alice's still comes"
    );
    assert_eq!(pushed_to(&env, "carol"), vec![from_alice.clone()]);
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM notification.deliveries
             WHERE message_id = '{blocked}' AND user_id = 'bob'"
        ))
        .await?,
        0,
        "no delivery row either"
    );

    assert!(set_block(&env, "bob", "carol", false).await?, "lifted");
    let after = env.send("carol", &ch, "after the unblock").await?;
    env.wait_settled().await?;
    assert_eq!(projected(&env, "bob", "carol").await?, 0, "lift projected");
    assert_eq!(
        pushed_to(&env, "bob"),
        [before.clone(), from_alice, after.clone()],
        "unblocked: carol's next message reaches bob again"
    );
    assert_eq!(pushed_to(&env, "alice"), [before, blocked, after]);
    Ok(())
}

#[tokio::test]
async fn a_ban_or_a_mute_system_message_pushes_nobody() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob", "carol"]).await?;
    for u in ["alice", "bob", "carol"] {
        env.webhook(u, &format!("/hook/{u}")).await?;
    }
    let welcome = env.send("alice", &ch, "welcome").await?;
    env.wait_settled().await?;
    assert_eq!(pushed_to(&env, "bob"), vec![welcome.clone()]);
    assert_eq!(pushed_to(&env, "carol"), vec![welcome.clone()]);

    let mut c = env.messaging.client.clone();
    // Mute bob (a system message while bob and carol are members), then ban carol (one
    // while bob is): each would be pushed to them were it a message a user wrote.
    c.mute_member(as_user(
        mpb::MuteMemberRequest {
            channel_id: ch.clone(),
            user_id: "bob".into(),
            expires_at: None,
        },
        "alice",
    ))
    .await?;
    let ban = c
        .ban_member(as_user(
            mpb::BanMemberRequest {
                channel_id: ch.clone(),
                user_id: "carol".into(),
                expires_at: None,
                reason: "spam".into(),
            },
            "alice",
        ))
        .await?
        .into_inner();
    assert!(ban.removed);
    // A message a user wrote after them is pushed as usual.
    let later = env.send("alice", &ch, "business as usual").await?;
    env.wait_settled().await?;

    let history = c
        .list_messages(as_user(
            mpb::ListMessagesRequest {
                channel_id: ch.clone(),
                before: None,
                after: Some(0),
                limit: 100,
            },
            "alice",
        ))
        .await?
        .into_inner()
        .messages;
    let system: Vec<(String, String)> = history
        .iter()
        .filter_map(|m| Some((m.system.as_ref()?.action.clone(), m.id.clone())))
        .collect();
    let actions: Vec<&str> = system.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(actions, ["muted", "banned"], "{history:?}");

    assert_eq!(
        pushed_to(&env, "bob"),
        [welcome.clone(), later.clone()],
        "bob: no push for either system message"
    );
    assert_eq!(
        pushed_to(&env, "carol"),
        [welcome],
        "carol: no push for the mute, and banned before the rest"
    );
    assert!(pushed_to(&env, "alice").is_empty(), "alice sent everything");
    for (action, id) in &system {
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM notification.deliveries WHERE message_id = '{id}'"
            ))
            .await?,
            0,
            "no delivery row for the {action} system message"
        );
    }
    assert_eq!(
        env.count("SELECT count(*) FROM notification.deliveries")
            .await?,
        3,
        "welcome to bob and carol, the later message to bob"
    );
    Ok(())
}

/// Messages and block changes consumed in one batch (the consumer starts only after all
/// of them are on the stream): each message is judged by the blocks as they stood when it
/// was sent, not by the batch's end state — in both directions.
#[tokio::test]
async fn a_batch_judges_each_message_by_the_blocks_when_it_was_sent() -> anyhow::Result<()> {
    let mut env = crate::env().await?;
    // Started once without consuming, so the consumer group exists before anything is sent.
    env.notification = Some(
        env.start(&[
            ("PARLEY__CONSUMER__ENABLED", "false"),
            ("PARLEY__DELIVERY__ENABLED", "false"),
        ])
        .await?,
    );
    let ch = env.group("alice", &["bob", "carol"]).await?;
    for u in ["alice", "bob"] {
        env.webhook(u, &format!("/hook/{u}")).await?;
    }
    let sent_before = env.send("carol", &ch, "before the block").await?;
    set_block(&env, "bob", "carol", true).await?;
    let while_blocked = env.send("carol", &ch, "while blocked").await?;
    set_block(&env, "bob", "carol", false).await?;
    let after = env.send("carol", &ch, "after the unblock").await?;
    if let Some(n) = env.notification.take() {
        n.stop().await?;
    }
    env.notification = Some(env.start(&[]).await?);
    env.wait_settled().await?;

    let mut bob = pushed_to(&env, "bob");
    bob.sort();
    let mut expected = vec![sent_before.clone(), after.clone()];
    expected.sort();
    assert_eq!(
        bob, expected,
        "bob: not the message sent while he blocked carol"
    );
    let mut alice = pushed_to(&env, "alice");
    alice.sort();
    let mut all = vec![sent_before, while_blocked, after];
    all.sort();
    assert_eq!(alice, all, "alice blocked nobody");
    assert_eq!(
        projected(&env, "bob", "carol").await?,
        0,
        "the unblock is the end state"
    );
    Ok(())
}
