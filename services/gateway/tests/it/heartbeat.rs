//! Heartbeats: the server pings and closes a connection that stopped answering.

use parley_testkit::{Stack, Ws};

use crate::{T, ping};

#[tokio::test]
async fn a_silent_connection_is_closed_and_a_live_one_is_not() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[("PARLEY__WS__HEARTBEAT_MS", "1000")])
        .await?;
    let mut silent = Ws::connect(&stack.url(0), "alice").await?;
    let mut live = Ws::connect(&stack.url(0), "bob").await?;
    assert_eq!(live.hello["heartbeat_ms"], 1000);

    // `live` keeps reading (which answers the server's pings) for 4 s; `silent` reads
    // nothing meanwhile, so it never answers and is closed after two intervals.
    let frames = live.frames_for(std::time::Duration::from_secs(4)).await?;
    assert!(frames.is_empty(), "{frames:?}");
    assert!(ping(&mut live, "still-here").await?.is_empty());

    // The silent one was closed by the server: only the close is left to read.
    assert!(
        silent.closed_within(T).await,
        "the silent connection is still open"
    );
    Ok(())
}
