//! Who may open a WebSocket connection: at most `ws.max_connections_per_user` per user
//! across every replica (a sorted set per user in Redis, keyspace `gateway:conns:`, each
//! entry expiring unless its connection renews it, so a killed node's entries go away by
//! themselves) and at most `ws.max_connections` on this node. Both answer the upgrade with
//! `429 rate_limited`. Without Redis the per-user cap is applied to this node's connections.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::aio::ConnectionManager;

use crate::ApiError;

/// KEYS[1] = the user's connections; ARGV = max, ttl ms, session id. Server clock.
/// Returns 1 when admitted (and recorded), 0 when the user is at the cap.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
";

/// KEYS[1] = the user's connections; ARGV = ttl ms, session id: pushes the entry's expiry
/// (only if it is there: a renewal that runs after the connection's removal must not
/// bring it back).
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
";

struct Inner {
    redis: ConnectionManager,
    prefix: String,
    per_user: usize,
    per_node: usize,
    ttl: Duration,
    /// How long a flooder's new connections are refused (zero: never).
    ban: Duration,
    node: AtomicUsize,
    local: Mutex<HashMap<String, usize>>,
    admit: redis::Script,
    renew: redis::Script,
}

/// The node's connection admission (cheap to clone).
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

/// One admitted connection: renew it while it lives; dropping it gives the place back.
pub struct Ticket {
    inner: Arc<Inner>,
    user: String,
    session: String,
}

impl Admission {
    pub fn new(redis: ConnectionManager, prefix: &str, cfg: &crate::WsConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                prefix: prefix.to_owned(),
                per_user: cfg.max_connections_per_user.max(1),
                per_node: cfg.max_connections.max(1),
                // Renewed every heartbeat: three missed renewals and the entry is gone.
                ttl: Duration::from_millis(cfg.heartbeat_ms.saturating_mul(3).max(1000)),
                ban: Duration::from_secs(cfg.flood_ban_secs),
                node: AtomicUsize::new(0),
                local: Mutex::new(HashMap::new()),
                admit: redis::Script::new(ADMIT),
                renew: redis::Script::new(RENEW),
            }),
        }
    }

    /// Admits a connection of `user` (`session` is its id), or the `429` answer.
    pub async fn admit(&self, user: &str, session: &str) -> Result<Ticket, ApiError> {
        let i = &self.inner;
        if let Some(secs) = self.banned(user).await {
            return Err(refused(
                "flood_ban",
                format!(
                    "this user's connection was closed for flooding; connect again in {secs} s"
                ),
                secs,
            ));
        }
        if i.node.fetch_add(1, Ordering::AcqRel) >= i.per_node {
            i.node.fetch_sub(1, Ordering::AcqRel);
            return Err(refused(
                "node_connections",
                format!(
                    "this gateway node holds its maximum of {} connections; retry (another replica may take it)",
                    i.per_node
                ),
                REFUSED_RETRY_SECS,
            ));
        }
        let here = {
            let mut local = i.local.lock().unwrap_or_else(|e| e.into_inner());
            let n = local.entry(user.to_owned()).or_default();
            *n += 1;
            *n
        };
        // From here on, dropping the ticket undoes both counts.
        let ticket = Ticket {
            inner: i.clone(),
            user: user.to_owned(),
            session: session.to_owned(),
        };
        let mut conn = i.redis.clone();
        let admitted: redis::RedisResult<i64> = i
            .admit
            .key(ticket.key())
            .arg(i.per_user)
            .arg(i.ttl.as_millis() as u64)
            .arg(session)
            .invoke_async(&mut conn)
            .await;
        let ok = match admitted {
            Ok(n) => n == 1,
            Err(e) => {
                metrics::counter!("gateway_admission_errors_total").increment(1);
                tracing::warn!(error = %e, "admission: Redis unavailable; capping this node's connections of the user");
                here <= i.per_user
            }
        };
        if ok {
            Ok(ticket)
        } else {
            Err(refused(
                "user_connections",
                format!(
                    "this user already has {} open connections (the maximum); close one or retry later",
                    i.per_user
                ),
                REFUSED_RETRY_SECS,
            ))
        }
    }
}

impl Admission {
    fn ban_key(&self, user: &str) -> String {
        format!("{}gateway:flood:{user}", self.inner.prefix)
    }

    /// Seconds left of `user`'s flood ban, if any (none when Redis cannot say).
    async fn banned(&self, user: &str) -> Option<u64> {
        if self.inner.ban.is_zero() {
            return None;
        }
        let mut conn = self.inner.redis.clone();
        let ttl: redis::RedisResult<i64> = redis::cmd("TTL")
            .arg(self.ban_key(user))
            .query_async(&mut conn)
            .await;
        match ttl {
            Ok(t) if t > 0 => Some(t as u64),
            _ => None,
        }
    }

    /// `user` kept flooding: their new connections are refused for `ws.flood_ban_secs`, on
    /// every replica (so a flooder cannot just reconnect and flood again). Waits for Redis
    /// (bounded by the connection's response timeout).
    pub async fn ban(&self, user: &str) {
        if self.inner.ban.is_zero() {
            return;
        }
        let mut conn = self.inner.redis.clone();
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(self.ban_key(user))
            .arg(1)
            .arg("EX")
            .arg(self.inner.ban.as_secs())
            .query_async(&mut conn)
            .await;
        if let Err(e) = set {
            tracing::warn!(error = %e, "admission: could not record a flood ban");
        }
    }
}

impl Ticket {
    fn key(&self) -> String {
        format!("{}gateway:conns:{}", self.inner.prefix, self.user)
    }

    /// Keeps the connection's place (start at least once per heartbeat; it runs apart from
    /// the connection's loop).
    pub fn renew(&self) {
        let (key, session, mut conn) = (self.key(), self.session.clone(), self.inner.redis.clone());
        let (script, ttl) = (self.inner.renew.clone(), self.inner.ttl.as_millis() as u64);
        tokio::spawn(async move {
            let renewed: redis::RedisResult<i64> = script
                .key(key)
                .arg(ttl)
                .arg(session)
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = renewed {
                tracing::debug!(error = %e, "admission: could not renew a connection");
            }
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let i = &self.inner;
        i.node.fetch_sub(1, Ordering::AcqRel);
        {
            let mut local = i.local.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = local.get_mut(&self.user) {
                *n -= 1;
                if *n == 0 {
                    local.remove(&self.user);
                }
            }
        }
        let (key, session, mut conn) = (self.key(), self.session.clone(), i.redis.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _: redis::RedisResult<i64> = redis::cmd("ZREM")
                    .arg(&key)
                    .arg(&session)
                    .query_async(&mut conn)
                    .await;
            });
        }
    }
}

/// `Retry-After` of an upgrade refused for a connection cap.
const REFUSED_RETRY_SECS: u64 = 5;

/// A refused upgrade, counted in `gateway_ws_refused_total{reason}`.
fn refused(reason: &'static str, message: String, retry_after: u64) -> ApiError {
    metrics::counter!("gateway_ws_refused_total", "reason" => reason).increment(1);
    ApiError::rate_limited(message, retry_after)
}
