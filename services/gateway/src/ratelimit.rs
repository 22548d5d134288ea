//! Per-user rate limits, shared by every gateway replica through Redis (keyspace
//! `gateway:rate:`). Each limit is `n` actions per `window_secs`:
//! - the product spec's limits (messages, channel creations, joins) are exact sliding
//!   windows: never more than `n` in any `window_secs` (a log of at most `n` timestamps
//!   per user);
//! - the others are token buckets of `n` refilled at `n / window_secs` a second (two
//!   numbers per user).
//!
//! When Redis cannot be reached each node enforces the same limits alone, in memory (a
//! user spread over k replicas then gets at most k times the limit), never none.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Instant,
};

use redis::aio::ConnectionManager;
use serde::Deserialize;

/// One limit: `n` per `window_secs`; `n = 0` switches it off (benchmarks only).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Rate {
    pub n: u32,
    pub window_secs: u64,
}

/// What a user does that is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Messages,
    ChannelCreations,
    Joins,
    Edits,
    Typing,
    ReadMarks,
    PresenceQueries,
    DeviceRegistrations,
    Searches,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::ChannelCreations => "channel_creations",
            Self::Joins => "joins",
            Self::Edits => "edits",
            Self::Typing => "typing",
            Self::ReadMarks => "read_marks",
            Self::PresenceQueries => "presence_queries",
            Self::DeviceRegistrations => "device_registrations",
            Self::Searches => "searches",
        }
    }

    /// The product spec's limits hold in every window, not on average.
    fn exact(self) -> bool {
        matches!(self, Self::Messages | Self::ChannelCreations | Self::Joins)
    }

    /// What the error message says was limited.
    fn what(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::ChannelCreations => "channel creations",
            Self::Joins => "members added",
            Self::Edits => "edits and deletions",
            Self::Typing => "typing notifications",
            Self::ReadMarks => "read and delivered marks",
            Self::PresenceQueries => "presence queries",
            Self::DeviceRegistrations => "device registrations",
            Self::Searches => "searches",
        }
    }
}

/// The `[rate]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct RateConfig {
    pub messages: Rate,
    pub channel_creations: Rate,
    pub joins: Rate,
    pub edits: Rate,
    pub typing: Rate,
    pub read_marks: Rate,
    pub presence_queries: Rate,
    pub device_registrations: Rate,
    pub searches: Rate,
}

impl RateConfig {
    fn get(&self, kind: Kind) -> Rate {
        match kind {
            Kind::Messages => self.messages,
            Kind::ChannelCreations => self.channel_creations,
            Kind::Joins => self.joins,
            Kind::Edits => self.edits,
            Kind::Typing => self.typing,
            Kind::ReadMarks => self.read_marks,
            Kind::PresenceQueries => self.presence_queries,
            Kind::DeviceRegistrations => self.device_registrations,
            Kind::Searches => self.searches,
        }
    }

    /// Every window is at least a second.
    pub fn validate(&self) -> Result<(), String> {
        for kind in ALL {
            if self.get(kind).window_secs == 0 {
                return Err(format!("rate.{}.window_secs must be positive", kind.name()));
            }
        }
        Ok(())
    }
}

const ALL: [Kind; 9] = [
    Kind::Messages,
    Kind::ChannelCreations,
    Kind::Joins,
    Kind::Edits,
    Kind::Typing,
    Kind::ReadMarks,
    Kind::PresenceQueries,
    Kind::DeviceRegistrations,
    Kind::Searches,
];

/// KEYS[1] = the user's log (a sorted set of timestamps); ARGV = n, window in ms, a unique
/// member prefix, k (actions taken at once, at most n). Server clock. Records k entries
/// `<prefix>:1..k` when they fit; returns {allowed (0/1), ms until enough entries left}.
const WINDOW: &str = r"
local n = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local k = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count + k <= n then
  for i = 1, k do
    redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. i)
  end
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local idx = count + k - n - 1
local e = redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')
return {0, math.max(1, tonumber(e[2]) + window - now)}
";

/// KEYS[1] = bucket; ARGV = capacity, refill per second. Server clock.
/// Returns {allowed (0/1), ms until a token is available}.
const BUCKET: &str = r"
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil then tokens = cap; ts = now end
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(cap * 1000 / rate) + 1000)
return {allowed, wait}
";

/// Users the per-node fallback remembers; beyond it, expired entries are dropped first.
const LOCAL_MAX: usize = 100_000;

/// Per-node state of one (kind, user) while Redis is unreachable.
enum Local {
    Log(VecDeque<Instant>),
    Bucket { tokens: f64, at: Instant },
}

pub struct Limiter {
    redis: ConnectionManager,
    prefix: String,
    config: RateConfig,
    window: redis::Script,
    bucket: redis::Script,
    local: Mutex<HashMap<(Kind, String), Local>>,
}

impl Limiter {
    pub fn new(redis: ConnectionManager, prefix: &str, config: RateConfig) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            config,
            window: redis::Script::new(WINDOW),
            bucket: redis::Script::new(BUCKET),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one `kind` action of `user`: `Err` is the `rate_limited` answer, with the
    /// seconds to wait.
    pub async fn check(&self, kind: Kind, user: &str) -> Result<(), crate::ApiError> {
        self.take(kind, user, 1).await.map(drop)
    }

    /// Runs `action` as one `kind` action of `user`; when it fails, or says (`false`) that
    /// it changed nothing, the action is given back: for channel creations and joins only
    /// what happened counts, not refused attempts.
    pub async fn counted<T>(
        &self,
        kind: Kind,
        user: &str,
        k: u32,
        action: impl Future<Output = Result<(T, bool), crate::ApiError>>,
    ) -> Result<(T, bool), crate::ApiError> {
        let taken = self.take(kind, user, k).await?;
        let result = action.await;
        if !matches!(result, Ok((_, true)))
            && let Some((key, prefix)) = taken
        {
            let mut conn = self.redis.clone();
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(&key);
            for i in 1..=k {
                zrem.arg(format!("{prefix}:{i}"));
            }
            let given_back: redis::RedisResult<i64> = zrem.query_async(&mut conn).await;
            if let Err(e) = given_back {
                tracing::debug!(error = %e, "rate limiter: could not give back an action");
            }
        }
        result
    }

    /// Takes `k` actions at once; for an exact window in Redis, returns the key and the
    /// prefix of the entries that recorded them.
    async fn take(
        &self,
        kind: Kind,
        user: &str,
        k: u32,
    ) -> Result<Option<(String, String)>, crate::ApiError> {
        let rate = self.config.get(kind);
        if rate.n == 0 || k == 0 {
            return Ok(None);
        }
        if k > rate.n {
            metrics::counter!("gateway_rate_limited_total", "kind" => kind.name()).increment(1);
            return Err(crate::ApiError::rate_limited(
                format!(
                    "rate limit: at most {} {} per {} s, and this asks for {k} at once",
                    rate.n,
                    kind.what(),
                    rate.window_secs
                ),
                rate.window_secs,
            ));
        }
        let window_ms = rate.window_secs.saturating_mul(1000);
        let key = format!("{}gateway:rate:{}:{user}", self.prefix, kind.name());
        let mut conn = self.redis.clone();
        let member = uuid::Uuid::now_v7().to_string();
        let res: redis::RedisResult<(i64, i64)> = if kind.exact() {
            self.window
                .key(&key)
                .arg(rate.n)
                .arg(window_ms)
                .arg(&member)
                .arg(k)
                .invoke_async(&mut conn)
                .await
        } else {
            self.bucket
                .key(&key)
                .arg(rate.n)
                .arg(f64::from(rate.n) / rate.window_secs as f64)
                .invoke_async(&mut conn)
                .await
        };
        let wait_ms = match res {
            Ok((1, _)) => return Ok(kind.exact().then_some((key, member))),
            Ok((_, wait_ms)) => wait_ms.max(1) as u64,
            Err(e) => {
                metrics::counter!("gateway_rate_limiter_errors_total").increment(1);
                tracing::warn!(error = %e, "rate limiter: Redis unavailable; limiting on this node alone");
                match check_local(&self.local, kind, user, rate, k) {
                    None => return Ok(None),
                    Some(wait_ms) => wait_ms,
                }
            }
        };
        metrics::counter!("gateway_rate_limited_total", "kind" => kind.name()).increment(1);
        let wait = wait_ms.div_ceil(1000);
        Err(crate::ApiError::rate_limited(
            format!(
                "rate limit: at most {} {} per {} s; retry in {wait} s",
                rate.n,
                kind.what(),
                rate.window_secs
            ),
            wait,
        ))
    }
}

/// The limit on this node alone: `None` allowed, else milliseconds to wait.
fn check_local(
    local: &Mutex<HashMap<(Kind, String), Local>>,
    kind: Kind,
    user: &str,
    rate: Rate,
    k: u32,
) -> Option<u64> {
    let now = Instant::now();
    let window = std::time::Duration::from_secs(rate.window_secs);
    let per_sec = f64::from(rate.n) / rate.window_secs as f64;
    let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
    if local.len() >= LOCAL_MAX {
        local.retain(|_, l| match l {
            Local::Log(log) => log.back().is_some_and(|t| now - *t < window),
            Local::Bucket { at, .. } => now - *at < window,
        });
        if local.len() >= LOCAL_MAX {
            local.clear();
        }
    }
    let entry = local
        .entry((kind, user.to_owned()))
        .or_insert_with(|| match kind.exact() {
            true => Local::Log(VecDeque::new()),
            false => Local::Bucket {
                tokens: f64::from(rate.n),
                at: now,
            },
        });
    match entry {
        Local::Log(log) => {
            while log.front().is_some_and(|t| now - *t >= window) {
                log.pop_front();
            }
            let k = k as usize;
            if log.len() + k <= rate.n as usize {
                log.extend(std::iter::repeat_n(now, k));
                None
            } else {
                // Enough entries must leave: the (len + k - n)-th oldest.
                let at = *log
                    .get(log.len() + k - rate.n as usize - 1)
                    .expect("k <= n, so that entry exists");
                Some((window - (now - at)).as_millis().max(1) as u64)
            }
        }
        Local::Bucket { tokens, at } => {
            *tokens = (*tokens + (now - *at).as_secs_f64() * per_sec).min(f64::from(rate.n));
            *at = now;
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                None
            } else {
                Some((((1.0 - *tokens) / per_sec) * 1000.0).ceil().max(1.0) as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter_config(n: u32, window_secs: u64) -> RateConfig {
        let r = Rate { n, window_secs };
        RateConfig {
            messages: r,
            channel_creations: r,
            joins: r,
            edits: r,
            typing: r,
            read_marks: r,
            presence_queries: r,
            device_registrations: r,
            searches: r,
        }
    }

    #[test]
    fn the_local_window_never_allows_more_than_n() {
        let cfg = limiter_config(3, 60);
        let local: Mutex<HashMap<(Kind, String), Local>> = Mutex::new(HashMap::new());
        // The fallback alone, without Redis: build the state by hand.
        let l = LocalOnly { local, config: cfg };
        for _ in 0..3 {
            assert!(l.check(Kind::Messages, "u").is_none());
        }
        let wait = l.check(Kind::Messages, "u").expect("the fourth is refused");
        assert!(wait > 59_000 && wait <= 60_000, "{wait}");
        // Another user and another kind have their own limits.
        assert!(l.check(Kind::Messages, "v").is_none());
        assert!(l.check(Kind::Joins, "u").is_none());
        // A bucket: n at once, then refused.
        for _ in 0..3 {
            assert!(l.check(Kind::Edits, "u").is_none());
        }
        assert!(l.check(Kind::Edits, "u").is_some());
    }

    /// `check_local` without a Redis connection.
    struct LocalOnly {
        local: Mutex<HashMap<(Kind, String), Local>>,
        config: RateConfig,
    }

    impl LocalOnly {
        fn check(&self, kind: Kind, user: &str) -> Option<u64> {
            check_local(&self.local, kind, user, self.config.get(kind), 1)
        }
    }
}
