//! Publishing of committed events: right after commit (inline) and, for whatever a crash
//! left in the outbox, by the sweeper. Delivery is at-least-once; consumers deduplicate.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{OutboxConfig, store::Pending};

/// Name of the event stream (without the deployment prefix).
pub use parley_kit::stream::EVENTS as STREAM;

/// Publishes outbox entries to Redis pub/sub and the event stream.
#[derive(Clone)]
pub struct Publisher {
    redis: ConnectionManager,
    prefix: String,
    maxlen: usize,
}

impl Publisher {
    pub fn new(redis: ConnectionManager, prefix: &str, maxlen: usize) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            maxlen,
        }
    }

    /// PUBLISH to every topic of each entry and XADD to the stream, in one round trip.
    async fn publish(&self, entries: &[Pending]) -> redis::RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let stream = format!("{}{STREAM}", self.prefix);
        for e in entries {
            for t in &e.topics {
                pipe.cmd("PUBLISH")
                    .arg(format!("{}{t}", self.prefix))
                    .arg(&e.payload)
                    .ignore();
            }
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.maxlen)
                .arg("*")
                .arg("event")
                .arg(&e.payload)
                .ignore();
        }
        let mut conn = self.redis.clone();
        pipe.query_async::<()>(&mut conn).await
    }
}

/// Publishes entries committed by this request and deletes their outbox rows. Failures
/// are logged and left to the sweeper: the change is committed whatever happens here.
pub async fn publish_committed(pool: &PgPool, publisher: &Publisher, entries: Vec<Pending>) {
    if entries.is_empty() {
        return;
    }
    let span = tracing::info_span!(
        "publish messaging:events",
        otel.kind = "producer",
        messaging.system = "redis",
        messaging.operation.type = "send",
        messaging.destination.name = STREAM,
        messaging.batch.message_count = entries.len(),
    );
    if publish(publisher, &entries).instrument(span).await {
        clear(pool, &entries).await;
    }
}

/// Publishes committed entries (no span of its own); false, logged and counted, when
/// Redis failed: the rows stay for the sweeper.
pub async fn publish(publisher: &Publisher, entries: &[Pending]) -> bool {
    if let Err(e) = publisher.publish(entries).await {
        metrics::counter!("messaging_outbox_publish_failures_total").increment(1);
        tracing::warn!(error = %e, "publish failed; the outbox sweeper will retry");
        return false;
    }
    metrics::counter!("messaging_events_published_total").increment(entries.len() as u64);
    true
}

/// Deletes the outbox rows of published entries.
pub async fn clear(pool: &PgPool, entries: &[Pending]) {
    let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
    clear_ids(pool, &ids).await;
}

/// Deletes the outbox rows `ids` (published).
pub async fn clear_ids(pool: &PgPool, ids: &[i64]) {
    if let Err(e) = sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await
    {
        // Published but not cleared: the sweeper republishes later (consumers dedupe).
        tracing::warn!(error = %e, "clearing outbox rows failed");
    }
}

/// Periodically republishes outbox rows older than `sweep_min_age_ms`, sharing the work
/// between replicas with `FOR UPDATE SKIP LOCKED`.
///
/// "Older" is decided by id, not by a timestamp: every tick samples the outbox id
/// sequence, and a row whose id is at or below a value sampled at least `sweep_min_age_ms`
/// ago was written at least that long ago. The sweep is then a primary-key range scan
/// that stops at that id, instead of a filter over every row (the queue is mostly dead
/// tuples between vacuums, and a filtered scan visited them all on every tick).
pub async fn sweep(
    pool: PgPool,
    publisher: Publisher,
    cfg: OutboxConfig,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.sweep_interval_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let min_age = Duration::from_millis(cfg.sweep_min_age_ms);
    let mut marks: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut upto: Option<i64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match allocated_ids(&pool).await {
            Ok(v) => marks.push_back((Instant::now(), v)),
            Err(e) => {
                // The backlog gauge keeps its last value until a pass runs again.
                tracing::warn!(error = %e, "outbox sweep: reading the id sequence failed");
                continue;
            }
        }
        while let Some(&(at, v)) = marks.front() {
            if at.elapsed() < min_age {
                break;
            }
            upto = Some(v);
            marks.pop_front();
        }
        let Some(upto) = upto else {
            continue;
        };
        let mut backlog = 0;
        loop {
            match sweep_once(&pool, &publisher, &cfg, upto).await {
                Ok(n) => {
                    backlog += n;
                    if (n as i64) < cfg.sweep_batch {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox sweep failed");
                    backlog = backlog.max(waiting(&pool, upto).await.unwrap_or(0));
                    break;
                }
            }
        }
        metrics::gauge!("messaging_outbox_backlog").set(backlog as f64);
    }
}

/// The outbox id sequence's last value: every row written so far has an id at or below it.
///
/// The age rule in [`sweep`] needs ids to be taken in the order rows are written, so the
/// sequence must keep `CACHE 1` (the default of a `bigserial`): with a cache, a session
/// could write a row long after its id was counted here, and the sweeper would republish
/// it at once (harmless, consumers dedupe, but the inline publish would no longer be the
/// usual path). A transaction that takes an id and commits later than `sweep_min_age_ms`
/// gets the same early republish.
async fn allocated_ids(pool: &PgPool) -> sqlx::Result<i64> {
    let (last, called): (i64, bool) =
        sqlx::query_as("SELECT last_value, is_called FROM outbox_id_seq")
            .fetch_one(pool)
            .await?;
    Ok(if called { last } else { 0 })
}

/// Rows at or below `upto` still in the outbox (counted only when a sweep failed).
async fn waiting(pool: &PgPool, upto: i64) -> sqlx::Result<usize> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE id <= $1")
        .bind(upto)
        .fetch_one(pool)
        .await?;
    Ok(n as usize)
}

/// One sweep batch of rows with id at most `upto`; returns how many were republished.
pub async fn sweep_once(
    pool: &PgPool,
    publisher: &Publisher,
    cfg: &OutboxConfig,
    upto: i64,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(i64, Vec<String>, Vec<u8>)> = sqlx::query_as(
        "SELECT id, topics, payload FROM outbox WHERE id <= $1
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(upto)
    .bind(cfg.sweep_batch)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let entries: Vec<Pending> = rows
        .into_iter()
        .map(|(id, topics, payload)| Pending {
            id,
            topics,
            payload,
        })
        .collect();
    publisher.publish(&entries).await?;
    let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    metrics::counter!("messaging_outbox_swept_total").increment(entries.len() as u64);
    tracing::info!(count = entries.len(), "outbox sweeper republished events");
    Ok(entries.len())
}
