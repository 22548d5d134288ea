//! Per-user send rate limit: a token bucket in Redis (keyspace `gateway:ratelimit:`), so
//! every gateway replica draws on the same bucket. If Redis is unreachable the limiter
//! fails open (logged and counted) rather than stopping chat.

use redis::aio::ConnectionManager;

/// KEYS[1] = bucket; ARGV = capacity, refill per second. Uses the server clock.
/// Returns {allowed (0/1), milliseconds until a token is available}.
const SCRIPT: &str = r"
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

#[derive(Clone)]
pub struct Limiter {
    redis: ConnectionManager,
    prefix: String,
    burst: u32,
    refill: f64,
    script: redis::Script,
}

impl Limiter {
    pub fn new(redis: ConnectionManager, prefix: &str, burst: u32, refill: f64) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            burst,
            refill,
            script: redis::Script::new(SCRIPT),
        }
    }

    /// `Ok(())` when `user` may send now, else `Err(seconds to wait)`.
    pub async fn check(&self, user: &str) -> Result<(), u64> {
        let key = format!("{}gateway:ratelimit:{user}", self.prefix);
        let mut conn = self.redis.clone();
        let res: redis::RedisResult<(i64, i64)> = self
            .script
            .key(key)
            .arg(self.burst)
            .arg(self.refill)
            .invoke_async(&mut conn)
            .await;
        match res {
            Ok((1, _)) => Ok(()),
            Ok((_, wait_ms)) => {
                metrics::counter!("gateway_rate_limited_total").increment(1);
                Err((wait_ms.max(1) as u64).div_ceil(1000))
            }
            Err(e) => {
                metrics::counter!("gateway_rate_limiter_errors_total").increment(1);
                tracing::warn!(error = %e, "rate limiter unavailable; allowing the send");
                Ok(())
            }
        }
    }
}
