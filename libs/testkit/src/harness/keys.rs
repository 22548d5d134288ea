//! A Redis key prefix of a test's own, and cleanup that runs wherever a value is dropped.

/// The Redis server of the tests: `PARLEY_TEST_REDIS_URL`, else `PARLEY_REDIS_URL` (what
/// `. .local/deps.env` exports), else `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("PARLEY_TEST_REDIS_URL")
        .or_else(|_| std::env::var("PARLEY_REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh key prefix on the test Redis, so that tests run in parallel; dropping it deletes
/// every key under it.
pub struct KeyPrefix {
    pub redis_url: String,
    pub prefix: String,
}

impl KeyPrefix {
    /// `{tag}` and 12 random hex digits, then `:`.
    pub fn new(tag: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            redis_url: redis_url(),
            prefix: format!("{tag}{}:", &id[..12]),
        }
    }

    /// A connection to the test Redis (for checks of the keyspace).
    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?)
    }
}

impl Drop for KeyPrefix {
    fn drop(&mut self) {
        let (url, prefix) = (self.redis_url.clone(), self.prefix.clone());
        on_own_runtime(async move { delete_keys(&url, &prefix).await });
    }
}

/// Deletes every key under `prefix` (best effort: a server that is gone is left alone).
pub async fn delete_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
    }
}

/// Runs `work` to its end on a runtime of its own, on another thread, and waits for it:
/// cleanup in `Drop`, which may run inside a runtime or outside any.
pub fn on_own_runtime(work: impl Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    })
    .join();
}
