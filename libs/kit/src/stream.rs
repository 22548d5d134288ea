//! A Redis stream consumer-group loop, shared by every service that consumes the event
//! stream (receipts, notification).
//!
//! `XGROUP CREATE … 0 MKSTREAM` (a new group replays what the stream still holds), then this
//! consumer's own pending entries (`XREADGROUP … 0`, left by a previous run under the same
//! name), then new entries (`XREADGROUP … >`). Every `claim_interval` it takes over entries
//! idle for longer than `claim_idle` (`XAUTOCLAIM`: their consumer died). A batch is
//! prepared once, applied until it succeeds (or the consumer stops), and acknowledged
//! (`XACK`) only afterwards: at-least-once, so handlers must be idempotent.
//!
//! Metrics, named after the service's `metric_prefix`: `<p>_consumer_errors_total{step}`,
//! `<p>_events_claimed_total`, `<p>_stream_lag`, `<p>_stream_pending`.

use std::{future::Future, time::Duration};

use redis::{
    aio::ConnectionManager,
    streams::{StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamReadReply},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The event stream messaging publishes (after the deployment's Redis prefix) and receipts
/// and notification consume: the one definition of its name.
pub const EVENTS: &str = "messaging:events";

/// `[consumer]` of a service that consumes the event stream.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ConsumerConfig {
    /// Consume at all (off only in tests of the fallbacks).
    pub enabled: bool,
    /// Consumer group shared by the service's replicas.
    pub group: String,
    /// This replica's consumer name; empty: [`default_name`].
    pub name: String,
    pub batch: usize,
    pub block_ms: u64,
    pub linger_ms: u64,
    pub claim_idle_ms: u64,
    pub claim_interval_ms: u64,
    pub retry_backoff_ms: u64,
    pub lag_interval_ms: u64,
}

impl ConsumerConfig {
    /// Checks the values (a message naming the setting).
    pub fn validate(&self) -> Result<(), String> {
        if self.group.is_empty() {
            return Err("consumer.group must not be empty".into());
        }
        if self.batch == 0 || self.batch > 10_000 {
            return Err("consumer.batch must be 1-10000".into());
        }
        if self.block_ms == 0 || self.claim_idle_ms == 0 || self.claim_interval_ms == 0 {
            return Err(
                "consumer: block_ms, claim_idle_ms and claim_interval_ms must be positive".into(),
            );
        }
        Ok(())
    }

    /// The loop's settings for `stream` (with the deployment prefix), consumer `name`.
    pub fn settings(
        &self,
        stream: String,
        name: String,
        metric_prefix: &'static str,
        apply_step: &'static str,
    ) -> Settings {
        Settings {
            stream,
            group: self.group.clone(),
            name,
            batch: self.batch,
            block_ms: self.block_ms,
            linger_ms: self.linger_ms,
            claim_idle_ms: self.claim_idle_ms,
            claim_interval_ms: self.claim_interval_ms,
            retry_backoff_ms: self.retry_backoff_ms,
            lag_interval_ms: self.lag_interval_ms,
            metric_prefix,
            apply_step,
        }
    }
}

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Stream key (with the deployment prefix).
    pub stream: String,
    pub group: String,
    /// Consumer name; see [`default_name`].
    pub name: String,
    pub batch: usize,
    pub block_ms: u64,
    /// After a batch smaller than `batch`, wait this long before reading again, so that
    /// entries accumulate into fewer, bigger batches (0: read again at once).
    pub linger_ms: u64,
    pub claim_idle_ms: u64,
    pub claim_interval_ms: u64,
    pub retry_backoff_ms: u64,
    pub lag_interval_ms: u64,
    /// Prefix of the metric names (the service name).
    pub metric_prefix: &'static str,
    /// `step` label of errors from [`Handler::apply`].
    pub apply_step: &'static str,
}

/// What a service does with a batch of entries.
pub trait Handler: Send + Sync {
    /// Work done once per batch (decoding, folding), whatever the number of attempts.
    type Batch: Send + Sync;
    type Error: std::fmt::Display + Send;
    fn prepare(&self, entries: &[StreamId]) -> Self::Batch;
    /// Makes the batch's effects durable; retried until it succeeds. Must be idempotent.
    fn apply<'a>(
        &'a self,
        entries: &'a [StreamId],
        batch: &'a Self::Batch,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'a;
}

/// Consumes until `shutdown`. Never returns early: Redis or database outages are retried
/// with a pause (the entries stay in the stream / pending list meanwhile).
pub async fn consume<H: Handler>(
    client: redis::Client,
    s: Settings,
    handler: H,
    shutdown: CancellationToken,
) {
    tracing::info!(stream = %s.stream, group = %s.group, consumer = %s.name, "consuming events");
    let c = Consumer { s, handler };
    c.run(client, shutdown).await;
}

struct Consumer<H> {
    s: Settings,
    handler: H,
}

impl<H: Handler> Consumer<H> {
    fn error(&self, step: &'static str) {
        metrics::counter!(format!("{}_consumer_errors_total", self.s.metric_prefix), "step" => step).increment(1);
    }

    fn backoff(&self) -> Duration {
        Duration::from_millis(self.s.retry_backoff_ms.max(10))
    }

    async fn run(&self, client: redis::Client, shutdown: CancellationToken) {
        let s = &self.s;
        // A dedicated connection: XREADGROUP BLOCK holds it for up to block_ms.
        let mut conn = loop {
            let c = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(
                    Duration::from_millis(s.block_ms) + Duration::from_secs(5),
                ))
                .set_number_of_retries(1);
            match ConnectionManager::new_with_config(client.clone(), c).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: cannot connect to Redis; retrying");
                    if pause(&shutdown, self.backoff()).await {
                        return;
                    }
                }
            }
        };
        let mut group_ready = false;
        // Start with our own pending entries ("0"), then new ones (">").
        let mut own_pending = true;
        let mut next_claim = Instant::now();
        let mut next_lag = Instant::now();
        while !shutdown.is_cancelled() {
            if !group_ready {
                match self.create_group(&mut conn).await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: cannot create the consumer group; retrying");
                        if pause(&shutdown, self.backoff()).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            if Instant::now() >= next_lag {
                self.record_lag(&mut conn).await;
                next_lag = Instant::now() + Duration::from_millis(s.lag_interval_ms.max(100));
            }
            if Instant::now() >= next_claim {
                if let Err(e) = self.claim(&mut conn, &shutdown).await {
                    tracing::warn!(error = %e, "event stream: XAUTOCLAIM failed");
                    group_ready = !is_nogroup(&e);
                }
                next_claim = Instant::now() + Duration::from_millis(s.claim_interval_ms.max(10));
            }
            let id = if own_pending { "0" } else { ">" };
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&s.group)
                .arg(&s.name)
                .arg("COUNT")
                .arg(s.batch);
            if !own_pending {
                // Wake up for the next claim / lag refresh at the latest.
                let until = next_claim
                    .min(next_lag)
                    .saturating_duration_since(Instant::now());
                let block = Duration::from_millis(s.block_ms)
                    .min(until)
                    .max(Duration::from_millis(1));
                cmd.arg("BLOCK").arg(block.as_millis() as u64);
            }
            cmd.arg("STREAMS").arg(&s.stream).arg(id);
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = cmd.query_async::<Option<StreamReadReply>>(&mut conn) => r,
            };
            let entries: Vec<StreamId> = match read {
                Ok(reply) => reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default(),
                Err(e) => {
                    self.error("read");
                    tracing::warn!(error = %e, "event stream: XREADGROUP failed");
                    group_ready = !is_nogroup(&e);
                    if pause(&shutdown, self.backoff()).await {
                        return;
                    }
                    continue;
                }
            };
            if own_pending && entries.is_empty() {
                own_pending = false;
                continue;
            }
            if entries.is_empty() {
                continue;
            }
            let short = entries.len() < s.batch;
            metrics::histogram!(format!("{}_stream_batch_size", s.metric_prefix))
                .record(entries.len() as f64);
            // A batch is retried here until it is applied (or we stop): its entries stay
            // pending for this consumer meanwhile, so nobody else claims them before
            // claim_idle passes.
            if !self.process_until_done(&mut conn, entries, &shutdown).await {
                return;
            }
            if short
                && !own_pending
                && s.linger_ms > 0
                && pause(&shutdown, Duration::from_millis(s.linger_ms)).await
            {
                return;
            }
        }
    }

    async fn create_group(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.s.stream)
            .arg(&self.s.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Takes over entries idle for longer than `claim_idle_ms` and processes them.
    async fn claim(
        &self,
        conn: &mut ConnectionManager,
        shutdown: &CancellationToken,
    ) -> redis::RedisResult<()> {
        let mut start = "0-0".to_owned();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.s.stream)
                .arg(&self.s.group)
                .arg(&self.s.name)
                .arg(self.s.claim_idle_ms)
                .arg(&start)
                .arg("COUNT")
                .arg(self.s.batch)
                .query_async(conn)
                .await?;
            if !reply.claimed.is_empty() {
                metrics::counter!(format!("{}_events_claimed_total", self.s.metric_prefix))
                    .increment(reply.claimed.len() as u64);
                tracing::info!(
                    count = reply.claimed.len(),
                    "claimed events left pending by another consumer"
                );
                if !self.process_until_done(conn, reply.claimed, shutdown).await {
                    return Ok(());
                }
            }
            if reply.next_stream_id == "0-0" || shutdown.is_cancelled() {
                return Ok(());
            }
            start = reply.next_stream_id;
        }
    }

    /// Prepares once, applies and acknowledges `entries`, retrying on failure; false when
    /// stopped first (the entries then stay pending for this consumer name, or for
    /// whoever claims them).
    async fn process_until_done(
        &self,
        conn: &mut ConnectionManager,
        entries: Vec<StreamId>,
        shutdown: &CancellationToken,
    ) -> bool {
        let batch = self.handler.prepare(&entries);
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let mut applied = false;
        loop {
            if !applied {
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    r = self.handler.apply(&entries, &batch) => r,
                };
                match outcome {
                    Ok(()) => applied = true,
                    Err(e) => {
                        self.error(self.s.apply_step);
                        tracing::warn!(error = %e, count = ids.len(), "processing events failed; retrying");
                    }
                }
            }
            if applied {
                let acked: redis::RedisResult<i64> = redis::cmd("XACK")
                    .arg(&self.s.stream)
                    .arg(&self.s.group)
                    .arg(&ids)
                    .query_async(conn)
                    .await;
                match acked {
                    Ok(_) => return true,
                    Err(e) => {
                        // Applied but not acknowledged: retrying the XACK is enough (and
                        // should the process die first, the redelivery changes nothing).
                        self.error("ack");
                        tracing::warn!(error = %e, "XACK failed; retrying");
                    }
                }
            }
            if pause(shutdown, self.backoff()).await {
                return false;
            }
        }
    }

    async fn record_lag(&self, conn: &mut ConnectionManager) {
        let info: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.s.stream)
            .query_async(conn)
            .await;
        match info {
            Ok(info) => {
                if let Some(g) = info.groups.iter().find(|g| g.name == self.s.group) {
                    let p = self.s.metric_prefix;
                    if let Some(lag) = g.lag {
                        metrics::gauge!(format!("{p}_stream_lag")).set(lag as f64);
                    }
                    metrics::gauge!(format!("{p}_stream_pending")).set(g.pending as f64);
                }
            }
            Err(e) => tracing::debug!(error = %e, "XINFO GROUPS failed"),
        }
    }
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// Sleeps `d` unless `shutdown` comes first; true when stopped.
pub async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// `<hostname>-<pid>`, or a UUID when the host name is unknown.
pub fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("{h}-{}", std::process::id()),
        None => uuid::Uuid::new_v4().to_string(),
    }
}
