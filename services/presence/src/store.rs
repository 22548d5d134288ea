//! The Redis keyspace `<prefix>presence:`: connections, their expiries, per-user records
//! and typing throttles. Every state change is one Lua script (`src/lua/`), so a transition
//! and its version bump are atomic and each round trip is one call whatever the batch size.

use std::sync::Arc;

use parley_kit::domain::UserId;
use redis::{Script, Value, aio::ConnectionManager};
use uuid::Uuid;

use crate::Error;

/// A validated connection reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub user: UserId,
    /// Stored in its canonical (lowercase, hyphenated) form.
    pub id: Uuid,
}

/// A user's ONLINE/OFFLINE transition, as recorded in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub user: String,
    pub version: u64,
    /// `last_seen_at` of the new state, in ms since the epoch.
    pub seen_ms: i64,
}

/// Outcome of RegisterConnection.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Set when this connection made the user ONLINE.
    pub came_online: bool,
    pub version: u64,
    pub seen_ms: i64,
}

/// What a Heartbeat did to one listed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// It had expired (or was unknown) and was registered again.
    Restored,
    /// Live on another node; left alone.
    Rejected,
}

/// Outcome of a Heartbeat batch.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// One entry per listed connection, in order.
    pub renewals: Vec<Renewal>,
    /// Users a restored connection made ONLINE.
    pub came_online: Vec<Transition>,
    pub now_ms: i64,
}

/// Outcome of an UnregisterConnections batch.
#[derive(Debug, Clone)]
pub struct Unregistered {
    pub went_offline: Vec<Transition>,
    pub now_ms: i64,
}

/// A user's stored presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub online: bool,
    /// 0 when presence has never seen the user (or the record aged out).
    pub version: u64,
    pub seen_ms: Option<i64>,
}

/// Outcome of one sweep batch.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Expired connections removed by this call.
    pub expired: usize,
    /// Time until the next connection expires, if any connection is live.
    pub next_in_ms: Option<u64>,
    /// Users with at least one live connection, after the sweep.
    pub online_users: i64,
    pub went_offline: Vec<Transition>,
    pub now_ms: i64,
}

struct Scripts {
    register: Script,
    heartbeat: Script,
    unregister: Script,
    sweep: Script,
    get: Script,
    typing: Script,
}

const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// Handle on the presence keyspace (cheap to clone).
#[derive(Clone)]
pub struct Store {
    redis: ConnectionManager,
    /// `<redis.prefix>presence:`
    keys: Arc<str>,
    scripts: Arc<Scripts>,
}

impl Store {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self {
            redis,
            keys: format!("{prefix}presence:").into(),
            scripts: Arc::new(Scripts {
                register: script(include_str!("lua/register.lua")),
                heartbeat: script(include_str!("lua/heartbeat.lua")),
                unregister: script(include_str!("lua/unregister.lua")),
                sweep: script(include_str!("lua/sweep.lua")),
                get: script(include_str!("lua/get.lua")),
                typing: script(include_str!("lua/typing.lua")),
            }),
        }
    }

    async fn run(&self, invocation: redis::ScriptInvocation<'_>) -> Result<Value, Error> {
        let mut conn = self.redis.clone();
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    #[tracing::instrument(skip_all, fields(user = %conn.user, connection = %conn.id))]
    pub async fn register(
        &self,
        conn: &Conn,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Registered, Error> {
        let mut inv = self.scripts.register.prepare_invoke();
        inv.arg(&*self.keys)
            .arg(conn.user.as_str())
            .arg(conn.id.to_string())
            .arg(node)
            .arg(ttl_ms);
        let reply = self.run(inv).await?;
        let [came, version, seen] = array::<3>(reply)?;
        Ok(Registered {
            came_online: int(&came)? == 1,
            version: uint(&version)?,
            seen_ms: int(&seen)?,
        })
    }

    #[tracing::instrument(skip_all, fields(node, connections = conns.len()))]
    pub async fn heartbeat(
        &self,
        node: &str,
        conns: &[Conn],
        ttl_ms: u64,
    ) -> Result<Heartbeat, Error> {
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.arg(&*self.keys).arg(node).arg(ttl_ms);
        for c in conns {
            inv.arg(c.user.as_str()).arg(c.id.to_string());
        }
        let [codes, came, now] = array::<3>(self.run(inv).await?)?;
        let renewals = list(codes)?
            .iter()
            .map(|c| match int(c)? {
                0 => Ok(Renewal::Renewed),
                1 => Ok(Renewal::Restored),
                2 => Ok(Renewal::Rejected),
                n => Err(Error::Reply(format!("heartbeat code {n}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if renewals.len() != conns.len() {
            return Err(Error::Reply(format!(
                "{} heartbeat codes for {} connections",
                renewals.len(),
                conns.len()
            )));
        }
        Ok(Heartbeat {
            renewals,
            came_online: transitions(came)?,
            now_ms: int(&now)?,
        })
    }

    #[tracing::instrument(skip_all, fields(node, connections = conns.len()))]
    pub async fn unregister(
        &self,
        node: &str,
        conns: &[Conn],
        retention_ms: u64,
    ) -> Result<Unregistered, Error> {
        let mut inv = self.scripts.unregister.prepare_invoke();
        inv.arg(&*self.keys).arg(node).arg(retention_ms);
        for c in conns {
            inv.arg(c.user.as_str()).arg(c.id.to_string());
        }
        let [went, now] = array::<2>(self.run(inv).await?)?;
        Ok(Unregistered {
            went_offline: transitions(went)?,
            now_ms: int(&now)?,
        })
    }

    /// Presence of each user, in order, read atomically in one round trip.
    #[tracing::instrument(skip_all, fields(users = users.len()))]
    pub async fn get(&self, users: &[UserId]) -> Result<Vec<Snapshot>, Error> {
        let mut inv = self.scripts.get.prepare_invoke();
        inv.arg(&*self.keys);
        for u in users {
            inv.arg(u.as_str());
        }
        let rows = list(self.run(inv).await?)?;
        if rows.len() != users.len() {
            return Err(Error::Reply(format!(
                "{} rows for {} users",
                rows.len(),
                users.len()
            )));
        }
        rows.into_iter()
            .map(|row| {
                let [live, version, seen] = array::<3>(row)?;
                Ok(Snapshot {
                    online: int(&live)? > 0,
                    version: opt(&version, uint)?.unwrap_or(0),
                    seen_ms: opt(&seen, int)?,
                })
            })
            .collect()
    }

    /// Removes up to `batch` expired connections (atomically claimed: safe on every replica).
    #[tracing::instrument(skip_all)]
    pub async fn sweep(&self, batch: usize, retention_ms: u64) -> Result<Sweep, Error> {
        let mut inv = self.scripts.sweep.prepare_invoke();
        inv.arg(&*self.keys).arg(batch).arg(retention_ms);
        let [expired, next_in, online, went, now] = array::<5>(self.run(inv).await?)?;
        let next_in = int(&next_in)?;
        Ok(Sweep {
            expired: usize::try_from(int(&expired)?)
                .map_err(|_| Error::Reply("negative count".into()))?,
            next_in_ms: u64::try_from(next_in).ok(),
            online_users: int(&online)?,
            went_offline: transitions(went)?,
            now_ms: int(&now)?,
        })
    }

    /// Publishes `payload` on the channel's typing topic unless throttled; true if published.
    #[tracing::instrument(skip_all, fields(user = %user, channel = %channel))]
    pub async fn typing(
        &self,
        user: &UserId,
        channel: &Uuid,
        throttle_ms: u64,
        payload: &[u8],
    ) -> Result<bool, Error> {
        let mut inv = self.scripts.typing.prepare_invoke();
        inv.arg(&*self.keys)
            .arg(channel.to_string())
            .arg(user.as_str())
            .arg(throttle_ms)
            .arg(payload);
        Ok(int(&self.run(inv).await?)? == 1)
    }
}

fn list(v: Value) -> Result<Vec<Value>, Error> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(Error::Reply(format!("expected an array, got {other:?}"))),
    }
}

fn array<const N: usize>(v: Value) -> Result<[Value; N], Error> {
    let items = list(v)?;
    let len = items.len();
    items
        .try_into()
        .map_err(|_| Error::Reply(format!("expected {N} items, got {len}")))
}

fn int(v: &Value) -> Result<i64, Error> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::Reply(format!("not an integer: {:?}", String::from_utf8_lossy(b)))
            }),
        other => Err(Error::Reply(format!("expected an integer, got {other:?}"))),
    }
}

fn uint(v: &Value) -> Result<u64, Error> {
    u64::try_from(int(v)?).map_err(|_| Error::Reply("negative version".into()))
}

fn opt<T>(v: &Value, f: fn(&Value) -> Result<T, Error>) -> Result<Option<T>, Error> {
    match v {
        Value::Nil => Ok(None),
        v => f(v).map(Some),
    }
}

fn string(v: Value) -> Result<String, Error> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b).map_err(|_| Error::Reply("user id is not UTF-8".into()))
        }
        other => Err(Error::Reply(format!("expected a string, got {other:?}"))),
    }
}

/// `{{user, version, seen_ms}, ...}`
fn transitions(v: Value) -> Result<Vec<Transition>, Error> {
    list(v)?
        .into_iter()
        .map(|t| {
            let [user, version, seen] = array::<3>(t)?;
            Ok(Transition {
                user: string(user)?,
                version: uint(&version)?,
                seen_ms: int(&seen)?,
            })
        })
        .collect()
}
