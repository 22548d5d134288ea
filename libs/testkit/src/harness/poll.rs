//! Waiting for a condition: polled with a deadline, failing with what was awaited.

use std::{fmt::Debug, fmt::Display, time::Duration};

/// The default bound of a wait for something that should happen (the suites share few
/// cores, so it is generous).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How often a condition is looked at.
const EVERY: Duration = Duration::from_millis(25);

/// Polls `probe` until it returns `Some` and returns that; an error from `probe` ends the
/// wait at once. Fails after `within` with "`what`: not within …".
pub async fn eventually<T, F, Fut>(
    within: Duration,
    what: impl Display,
    probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    poll(within, &what, probe, Option::is_some, |_| String::new())
        .await?
        .ok_or_else(|| anyhow::anyhow!("{what}: the probe changed its answer"))
}

/// Polls `look` until what it returns satisfies `done`, and returns that; an error from
/// `look` ends the wait at once. Fails after `within` with "`what`: not within …" and the
/// last value seen.
pub async fn wait_for<V, F, Fut>(
    within: Duration,
    what: impl Display,
    look: F,
    done: impl FnMut(&V) -> bool,
) -> anyhow::Result<V>
where
    V: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<V>>,
{
    poll(within, &what, look, done, |v| {
        let mut seen = format!("; last seen: {v:?}");
        if seen.len() > 2000 {
            let mut end = 2000;
            while !seen.is_char_boundary(end) {
                end -= 1;
            }
            seen.truncate(end);
            seen.push('…');
        }
        seen
    })
    .await
}

async fn poll<V, F, Fut>(
    within: Duration,
    what: &dyn Display,
    mut look: F,
    mut done: impl FnMut(&V) -> bool,
    seen: impl Fn(&V) -> String,
) -> anyhow::Result<V>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<V>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = look().await?;
        if done(&v) {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what}: not within {within:?}{}", seen(&v));
        }
        tokio::time::sleep(EVERY).await;
    }
}
