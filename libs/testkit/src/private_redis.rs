//! A private Redis server a test may stop and restart.

use super::*;

/// A private `redis-server` process that a test may stop and restart (the shared test Redis
/// must not be disturbed). Killed on drop.
pub struct PrivateRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` (from `PATH`) on a free loopback port; `Ok(None)` when the
    /// binary is not installed.
    pub async fn start() -> anyhow::Result<Option<Self>> {
        let found = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|d| d.join("redis-server").is_file())
        });
        if !found {
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir =
            std::env::temp_dir().join(format!("parley-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut r = Self {
            port,
            dir,
            child: None,
        };
        r.restart().await?;
        Ok(Some(r))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// kill -9 (no persistence: a restart comes back empty, like a lost cache node).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("spawn redis-server")?;
        self.child = Some(child);
        let client = redis::Client::open(self.url().as_str())?;
        eventually(
            Duration::from_secs(10),
            format_args!("redis-server on port {} answering", self.port),
            || async {
                let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                    return Ok(None);
                };
                let pong = redis::cmd("PING").query_async::<String>(&mut c).await;
                Ok(pong.is_ok().then_some(()))
            },
        )
        .await
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
