//! Delivery workers: send due rows of the delivery log, several workers and replicas at
//! once.
//!
//! A worker claims up to `delivery.batch` pending rows (`FOR UPDATE SKIP LOCKED`, so no two
//! workers claim the same row), taking for each due (device, channel) ALL its pending rows,
//! also those still inside their coalescing window: they go out as ONE push ("N new
//! messages in #channel") and share its fate. The claim is a lease: it sets the rows'
//! `lease_until` past the longest an attempt can take (`lease`) and commits at once.
//! Each group is then sent on its own, outside any transaction, and settled in a short
//! transaction of its own as soon as its provider answers: one slow endpoint delays only
//! its own push, never the others of the batch, and holds no database connection. A worker
//! keeps at most `delivery.max_in_flight` groups on their way. A crash before the settle
//! leaves the rows pending (due again when the lease ends; no loss) and a row marked `sent`
//! is never sent again. The remaining window (provider answered 2xx, crash before the
//! settle) resends the push with the same `X-Parley-Delivery-Id`, so the receiver can drop
//! the duplicate.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use parley_kit::stream::pause;

use crate::{
    Config, Error,
    provider::{Outcome, Providers, Push, platform_label},
    store,
};

/// One claimed (device, channel) group and the end of its lease.
struct Claimed {
    rows: Vec<Row>,
    until: DateTime<Utc>,
}

/// A locked pending row with its device (None when the device was removed).
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    message_id: Uuid,
    device_id: Uuid,
    delivery_id: Uuid,
    user_id: String,
    channel_id: Uuid,
    channel_name: String,
    seq: i64,
    sender_id: String,
    preview: String,
    attempts: i32,
    trace_context: serde_json::Value,
    platform: Option<i16>,
    token: Option<String>,
    secret: Option<String>,
}

const CLAIM: &str = "
SELECT d.message_id, d.device_id, d.delivery_id, d.user_id, d.channel_id, d.channel_name,
       d.seq, d.sender_id, d.preview, d.attempts, d.trace_context, v.platform, v.token,
       v.secret
FROM deliveries d
LEFT JOIN devices v ON v.id = d.device_id
WHERE d.status = 'pending'
  AND (d.lease_until IS NULL OR d.lease_until <= now())
  AND (d.device_id, d.channel_id) IN (
      SELECT device_id, channel_id FROM deliveries
      WHERE status = 'pending' AND next_attempt_at <= now()
        AND (lease_until IS NULL OR lease_until <= now())
      ORDER BY next_attempt_at
      LIMIT $1)
ORDER BY d.device_id, d.channel_id, d.seq
LIMIT $2
FOR UPDATE OF d SKIP LOCKED";

/// Leases the claimed rows for `$3` ms: no other claim takes them meanwhile (the lease is
/// part of the claim's row condition, so a claim that waited for these rows' lock and
/// re-checks them skips them too).
const LEASE: &str = "
UPDATE deliveries SET lease_until = now() + make_interval(secs => $3::float8 / 1000.0)
WHERE (message_id, device_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))
RETURNING lease_until";

/// Delay before attempt `attempt + 1` after `attempt` failures: base·2^(attempt-1),
/// capped at `max`, with jitter in [50 %, 100 %] so that a failing endpoint's retries
/// spread out.
pub fn backoff(attempt: i32, base_ms: u64, max_ms: u64) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let ceiling = base_ms.saturating_mul(1u64 << exp).min(max_ms).max(1);
    let ms = rand::rng().random_range(ceiling / 2..=ceiling);
    Duration::from_millis(ms)
}

/// Added to the longest attempt (request timeout + DNS timeout) to make a claim's lease.
const LEASE_MARGIN_MS: u64 = 30_000;

/// The delivery id a push carries: the row's own, or for a coalesced push a UUID derived
/// from its rows' ids (the same set of rows always gets the same id).
pub fn push_id(ids: &[Uuid]) -> Uuid {
    if let [one] = ids {
        return *one;
    }
    let mut sorted = ids.to_vec();
    sorted.sort();
    let mut h = Sha256::new();
    for id in &sorted {
        h.update(id.as_bytes());
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

pub struct Worker {
    index: usize,
    pool: PgPool,
    providers: Arc<Providers>,
    config: Arc<Config>,
    /// How long a claim keeps its rows from other workers: longer than any attempt.
    lease: Duration,
}

impl Worker {
    pub fn new(index: usize, pool: PgPool, providers: Arc<Providers>, config: Arc<Config>) -> Self {
        let lease = Duration::from_millis(
            config.delivery.request_timeout_ms + config.webhook.dns_timeout_ms + LEASE_MARGIN_MS,
        );
        Self {
            index,
            pool,
            providers,
            config,
            lease,
        }
    }

    /// Sends until `shutdown`. Groups on their way finish (their requests are bounded by
    /// `request_timeout_ms`) so that what was sent is recorded.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(worker = self.index, "delivery worker started");
        let idle = Duration::from_millis(self.config.delivery.poll_interval_ms);
        let max = self.config.delivery.max_in_flight.max(1);
        let worker = Arc::new(self);
        let room = Arc::new(tokio::sync::Semaphore::new(max));
        let mut groups = tokio::task::JoinSet::new();
        while !shutdown.is_cancelled() {
            while groups.try_join_next().is_some() {}
            let free = room.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = groups.join_next() => continue,
                }
            }
            match worker
                .claim(free.min(worker.config.delivery.batch as usize))
                .await
            {
                Ok(claimed) if claimed.is_empty() => {
                    if pause(&shutdown, idle).await {
                        break;
                    }
                }
                Ok(claimed) => {
                    for group in claimed {
                        let Ok(permit) = room.clone().acquire_owned().await else {
                            break;
                        };
                        let w = worker.clone();
                        groups.spawn(async move {
                            w.deliver(group).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    metrics::counter!("notification_delivery_errors_total").increment(1);
                    tracing::warn!(error = %e, worker = worker.index, "delivery claim failed");
                    if pause(&shutdown, idle).await {
                        break;
                    }
                }
            }
        }
        while groups.join_next().await.is_some() {}
    }

    /// Claims up to `groups` (device, channel) groups, whole (at most `delivery.batch` rows
    /// in all), leased for `self.lease`; returns them with the lease's end.
    async fn claim(&self, groups: usize) -> Result<Vec<Claimed>, Error> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Row> = sqlx::query_as(CLAIM)
            .bind(groups as i64)
            .bind(self.config.delivery.batch)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let messages: Vec<Uuid> = rows.iter().map(|r| r.message_id).collect();
        let devices: Vec<Uuid> = rows.iter().map(|r| r.device_id).collect();
        let until: Option<DateTime<Utc>> = sqlx::query_scalar(LEASE)
            .bind(&messages)
            .bind(&devices)
            .bind(self.lease.as_millis() as f64)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .next();
        tx.commit().await?;
        let Some(until) = until else {
            return Ok(Vec::new());
        };
        let mut groups: Vec<Claimed> = Vec::new();
        for row in rows {
            match groups.last_mut() {
                Some(g)
                    if g.rows[0].device_id == row.device_id
                        && g.rows[0].channel_id == row.channel_id =>
                {
                    g.rows.push(row);
                }
                _ => groups.push(Claimed {
                    rows: vec![row],
                    until,
                }),
            }
        }
        Ok(groups)
    }

    /// Sends one group and records its outcome in a transaction of its own. If recording
    /// fails the rows stay leased and are sent again when the lease ends.
    async fn deliver(&self, group: Claimed) {
        let outcome = self.send_group(&group.rows).await;
        let settled = async {
            let mut tx = self.pool.begin().await?;
            self.settle(&mut tx, &group.rows, group.until, outcome)
                .await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        };
        if let Err(e) = settled.await {
            metrics::counter!("notification_delivery_errors_total").increment(1);
            tracing::warn!(error = %e, worker = self.index, "recording a push's outcome failed; it is sent again after its lease");
        }
    }

    /// Sends one (device, channel) group as one push, in a span that continues the trace
    /// of the (newest) message's fan-out.
    async fn send_group(&self, group: &[Row]) -> Outcome {
        let newest = group.last().expect("groups are never empty");
        let trace: HashMap<String, String> =
            serde_json::from_value(newest.trace_context.clone()).unwrap_or_default();
        let platform = newest.platform.unwrap_or(0);
        let span = tracing::info_span!(
            "notification.push",
            otel.kind = "client",
            platform = platform_label(platform),
            channel = %newest.channel_id,
            seq = newest.seq,
            count = group.len(),
            outcome = tracing::field::Empty,
        );
        parley_kit::propagation::set_parent_from_map(&span, &trace);
        let (Some(platform), Some(token)) = (newest.platform, newest.token.clone()) else {
            return Outcome::Gone("device was removed".into());
        };
        let Some(provider) = self.providers.get(platform) else {
            return Outcome::Refused(format!("unknown platform {platform}"));
        };
        let ids: Vec<Uuid> = group.iter().map(|r| r.delivery_id).collect();
        let push = Push {
            delivery_id: push_id(&ids),
            user_id: newest.user_id.clone(),
            channel_id: newest.channel_id,
            channel_name: newest.channel_name.clone(),
            message_id: newest.message_id,
            seq: newest.seq,
            sender_id: newest.sender_id.clone(),
            preview: newest.preview.clone(),
            message_ids: group.iter().map(|r| r.message_id).collect(),
            token,
            secret: newest.secret.clone(),
        };
        let started = std::time::Instant::now();
        let outcome = provider.send(&push).instrument(span.clone()).await;
        let label = platform_label(platform);
        span.record("outcome", outcome.label());
        metrics::histogram!("notification_push_duration_seconds", "platform" => label)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("notification_push_attempts_total", "platform" => label, "outcome" => outcome.label())
            .increment(1);
        match &outcome {
            Outcome::Delivered => {
                if group.len() > 1 {
                    metrics::counter!("notification_pushes_coalesced_total")
                        .increment(group.len() as u64 - 1);
                }
            }
            Outcome::Retry(e) | Outcome::Refused(e) => {
                metrics::counter!("notification_push_failures_total", "platform" => label)
                    .increment(1);
                tracing::info!(parent: &span, error = %e, "push failed");
            }
            Outcome::Gone(_) => {}
        }
        outcome
    }

    /// Records a group's outcome in the open transaction.
    ///
    /// Only rows still under this claim's lease are changed: a settle that comes after the
    /// lease ended (another worker may have claimed and sent them since) changes nothing.
    async fn settle(
        &self,
        tx: &mut PgConnection,
        group: &[Row],
        until: DateTime<Utc>,
        outcome: Outcome,
    ) -> Result<(), Error> {
        let messages: Vec<Uuid> = group.iter().map(|r| r.message_id).collect();
        let devices: Vec<Uuid> = group.iter().map(|r| r.device_id).collect();
        let platform = platform_label(group[0].platform.unwrap_or(0));
        // The rows of this claim, while it holds them ($n: the lease's end).
        let keys = |n: usize| {
            format!(
                "(message_id, device_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))
                 AND status = 'pending' AND lease_until = ${n}"
            )
        };
        match outcome {
            Outcome::Delivered => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE deliveries SET status = 'sent', attempts = attempts + 1,
                         finished_at = now(), last_error = NULL, lease_until = NULL WHERE {}",
                    keys(3)
                )))
                .bind(&messages)
                .bind(&devices)
                .bind(until)
                .execute(&mut *tx)
                .await?;
            }
            Outcome::Gone(reason) => {
                // Only this group's rows: other workers may hold the device's other rows;
                // they will find the device missing and settle them the same way.
                store::remove_device(tx, group[0].device_id).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE deliveries SET status = 'gone', attempts = attempts + 1,
                         finished_at = now(), last_error = $3, lease_until = NULL WHERE {}",
                    keys(4)
                )))
                .bind(&messages)
                .bind(&devices)
                .bind(&reason)
                .bind(until)
                .execute(&mut *tx)
                .await?;
                tracing::info!(device = %group[0].device_id, reason = %reason, "device removed: token gone");
                metrics::counter!("notification_devices_removed_total", "platform" => platform)
                    .increment(1);
            }
            Outcome::Retry(reason) => {
                let attempts = group.iter().map(|r| r.attempts).max().unwrap_or(0) + 1;
                let d = &self.config.delivery;
                let delay = backoff(attempts, d.backoff_base_ms, d.backoff_max_ms);
                let dead: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "UPDATE deliveries SET attempts = attempts + 1, last_error = $3, lease_until = NULL,
                         status = CASE WHEN attempts + 1 >= $4 THEN 'dead' ELSE 'pending' END,
                         finished_at = CASE WHEN attempts + 1 >= $4 THEN now() END,
                         next_attempt_at = now() + make_interval(secs => $5::float8 / 1000.0)
                     WHERE {} RETURNING status",
                    keys(6)
                )))
                .bind(&messages)
                .bind(&devices)
                .bind(&reason)
                .bind(d.max_attempts)
                .bind(delay.as_millis() as f64)
                .bind(until)
                .fetch_all(&mut *tx)
                .await?;
                let dead = dead.iter().filter(|s| *s == "dead").count() as u64;
                if dead > 0 {
                    metrics::counter!("notification_dead_letters_total", "platform" => platform)
                        .increment(dead);
                    tracing::warn!(device = %group[0].device_id, rows = dead, reason = %reason, "deliveries dead-lettered after max attempts");
                }
            }
            Outcome::Refused(reason) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE deliveries SET status = 'dead', attempts = attempts + 1,
                         finished_at = now(), last_error = $3, lease_until = NULL WHERE {}",
                    keys(4)
                )))
                .bind(&messages)
                .bind(&devices)
                .bind(&reason)
                .bind(until)
                .execute(&mut *tx)
                .await?;
                metrics::counter!("notification_dead_letters_total", "platform" => platform)
                    .increment(group.len() as u64);
                tracing::warn!(device = %group[0].device_id, reason = %reason, "deliveries refused: dead-lettered");
            }
        }
        Ok(())
    }
}

/// Refreshes the gauges of the delivery log (pending rows, dead letters) until shutdown.
pub async fn gauges(pool: PgPool, every: Duration, shutdown: CancellationToken) {
    loop {
        let counts: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM deliveries WHERE status = 'pending'),
                    (SELECT count(*) FROM deliveries WHERE status = 'dead')",
        )
        .fetch_one(&pool)
        .await;
        match counts {
            Ok((pending, dead)) => {
                metrics::gauge!("notification_deliveries_pending").set(pending as f64);
                metrics::gauge!("notification_dead_letters").set(dead as f64);
            }
            Err(e) => tracing::debug!(error = %e, "delivery gauges failed"),
        }
        if pause(&shutdown, every).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for attempt in 1..40 {
            let d = backoff(attempt, 100, 5_000).as_millis() as u64;
            let ceiling = (100u64 << (attempt - 1).min(30)).min(5_000);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d}");
        }
    }

    #[test]
    fn push_ids_are_stable() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        assert_eq!(push_id(&[a]), a);
        assert_eq!(push_id(&[a, b]), push_id(&[b, a]));
        assert_ne!(push_id(&[a, b]), a);
    }
}
