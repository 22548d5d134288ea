//! The attachments' clean-up job: every `attachments.cleanup_interval_ms`, uploads no
//! message took within `attachments.orphan_ttl_secs` are doomed, then the objects of doomed
//! attachments (unsent, or of a deleted message or channel) are deleted from storage and
//! their rows forgotten. Replicas may run it together: deleting an object twice is
//! harmless, and a row goes only once its object is gone (a failed delete is retried on
//! the next run).

use std::time::Duration;

use futures::StreamExt as _;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{AttachmentsConfig, storage::Storage, store::attachments};

/// Storage deletes in flight at once.
const PARALLEL_DELETES: usize = 8;

/// Runs until `stop` is cancelled.
pub async fn run(pool: PgPool, storage: Storage, cfg: AttachmentsConfig, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.cleanup_interval_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = once(&pool, &storage, &cfg).await {
            tracing::warn!(error = %e, "attachment clean-up failed; retrying next run");
        }
    }
}

/// One run; returns how many objects it deleted.
pub async fn once(
    pool: &PgPool,
    storage: &Storage,
    cfg: &AttachmentsConfig,
) -> Result<usize, crate::Error> {
    let orphans = attachments::doom_orphans(
        pool,
        Duration::from_secs(cfg.orphan_ttl_secs),
        cfg.cleanup_batch,
    )
    .await?;
    metrics::counter!("messaging_attachments_orphaned_total").increment(orphans);
    let doomed = attachments::doomed(pool, cfg.cleanup_batch).await?;
    let deleted: Vec<uuid::Uuid> = futures::stream::iter(doomed)
        .map(|(id, channel)| async move {
            match storage.delete(&storage.key(channel, id)).await {
                Ok(()) => Some(id),
                Err(e) => {
                    tracing::warn!(error = %e, attachment = %id, "deleting an object failed");
                    metrics::counter!("messaging_storage_errors_total").increment(1);
                    None
                }
            }
        })
        .buffer_unordered(PARALLEL_DELETES)
        .filter_map(std::future::ready)
        .collect()
        .await;
    if !deleted.is_empty() {
        attachments::forget(pool, &deleted).await?;
        metrics::counter!("messaging_attachments_deleted_total").increment(deleted.len() as u64);
    }
    Ok(deleted.len())
}
