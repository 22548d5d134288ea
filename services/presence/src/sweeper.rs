//! The expiry sweeper: turns OFFLINE the users whose last connection stopped heartbeating
//! (a gateway killed without unregistering). Every replica runs it; the sweep script claims
//! each expired connection atomically, so exactly one replica records a given OFFLINE
//! transition and publishes its event.
//!
//! It sleeps until the next expiry is due (bounded by `interval_ms` and `min_interval_ms`),
//! so a user goes OFFLINE about one TTL after the last heartbeat, not a whole interval later.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{Config, events::Publisher, store::Store};

/// Sweeps until `shutdown` is cancelled.
pub async fn run(
    store: Store,
    publisher: Publisher,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let cfg = &config.sweeper;
    let retention_ms = config.retention.last_seen_secs.saturating_mul(1000);
    let (min, max) = (cfg.min_interval_ms, cfg.interval_ms);
    let mut wait = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
        wait = match sweep_once(&store, &publisher, cfg.batch, retention_ms).await {
            // A full batch: more may be due already.
            Ok(s) if s.expired >= cfg.batch => 0,
            Ok(s) => s.next_in_ms.map_or(max, |n| n.clamp(min, max)),
            Err(e) => {
                tracing::warn!(error = %e, "presence sweep failed");
                max
            }
        };
    }
}

/// One sweep batch: removes expired connections and publishes the OFFLINE events of the
/// users this replica turned offline.
async fn sweep_once(
    store: &Store,
    publisher: &Publisher,
    batch: usize,
    retention_ms: u64,
) -> Result<crate::store::Sweep, crate::Error> {
    let s = store.sweep(batch, retention_ms).await?;
    metrics::gauge!("presence_online_users").set(s.online_users.max(0) as f64);
    if s.expired > 0 {
        metrics::counter!("presence_sweeper_expired_total").increment(s.expired as u64);
        tracing::info!(
            expired = s.expired,
            offline = s.went_offline.len(),
            "swept expired connections"
        );
    }
    // No trace context: nothing caused these but the passing of time.
    publisher
        .transitions(&s.went_offline, false, s.now_ms, &HashMap::new())
        .await;
    Ok(s)
}
