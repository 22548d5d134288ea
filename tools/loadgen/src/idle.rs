//! Idle connections: opens N WebSockets, holds them, and reports the gateway's resident
//! memory per connection (from /proc/<pid>/status when `--gateway-pid` is given).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, stream};
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::watch;

use crate::api::{self, Api};
use crate::procfs;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct IdleArgs {
    /// Connections to open (at most 20000; raise `ulimit -n` for both sides).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Distinct users; connections are spread over them round-robin.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Seconds to hold the connections once all are open (at most 600).
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Gateway pid, to read its RSS before, while holding, and after closing.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Concurrent connects.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    #[arg(long, default_value = "idle")]
    pub prefix: String,
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub config: IdleArgs,
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    /// Connections still open at the end of the hold.
    pub alive_at_end: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    pub rss_after_close_kib: Option<u64>,
    pub rss_per_connection_kib: Option<f64>,
    /// Gateway CPU while the connections were held idle, in % of one core.
    pub cpu_held_pct: Option<f64>,
}

impl IdleReport {
    pub fn table(&self) -> String {
        let kib =
            |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
        format!(
            "idle connections: {} opened ({} failed{}) in {:.1}s ({:.0}/s), {} alive after {:.0}s\n\
             gateway RSS: before {}, holding {}, after close {}; per connection {}; \
             CPU while holding {}\n",
            self.opened,
            self.failed,
            self.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(": {e}")),
            self.connect_secs,
            self.connects_per_sec,
            self.alive_at_end,
            self.config.hold,
            kib(self.rss_before_kib),
            kib(self.rss_held_kib),
            kib(self.rss_after_close_kib),
            self.rss_per_connection_kib
                .map_or("-".into(), |v| format!("{v:.1} KiB")),
            self.cpu_held_pct
                .map_or("-".into(), |v| format!("{v:.1}% of a core")),
        )
    }
}

pub async fn run(api: &Api, a: IdleArgs, progress: bool) -> Result<IdleReport> {
    if a.connections == 0 || a.connections > 20_000 || a.users == 0 {
        bail!("--connections must be 1-20000 and --users ≥ 1");
    }
    if !(0.0..=600.0).contains(&a.hold) {
        bail!("--hold must be 0-600 s");
    }
    let tag: u32 = rand::random::<u32>() % 1_000_000;
    let users: Vec<String> = (0..a.users.min(a.connections))
        .map(|i| format!("{}{tag}-{i}", a.prefix))
        .collect();
    let tokens = api
        .tokens(&users, a.connect_concurrency)
        .await
        .context("dev tokens")?;
    let rss_before = a.gateway_pid.and_then(procfs::rss_kib);

    let bar = if progress {
        ProgressBar::new(a.connections as u64)
    } else {
        ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let results: Vec<Result<tokio::task::JoinHandle<bool>>> =
        stream::iter((0..a.connections).map(|i| {
            let token = &tokens[i % tokens.len()];
            let bar = &bar;
            let mut stop = stop_rx.clone();
            async move {
                let mut ws = api.connect(token).await?;
                bar.inc(1);
                // Read (answering pings) until told to stop; report whether still open.
                Ok(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = stop.changed() => { api::close(ws).await; return true; }
                            m = ws.next() => match m {
                                Some(Ok(_)) => {}
                                _ => return false,
                            },
                        }
                    }
                }))
            }
        }))
        .buffer_unordered(a.connect_concurrency.max(1))
        .collect()
        .await;
    let connect_secs = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut handles = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(h) => handles.push(h),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let opened = handles.len();
    let cpu_start = a.gateway_pid.and_then(procfs::cpu_secs);
    let held_since = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let cpu_held_pct = match (cpu_start, a.gateway_pid.and_then(procfs::cpu_secs)) {
        (Some(b), Some(e)) => Some((e - b) / held_since.elapsed().as_secs_f64().max(1e-9) * 100.0),
        _ => None,
    };
    let rss_held = a.gateway_pid.and_then(procfs::rss_kib);
    let _ = stop_tx.send(true);
    let mut alive = 0;
    for h in handles {
        if h.await.unwrap_or(false) {
            alive += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = a.gateway_pid.and_then(procfs::rss_kib);
    let per = match (rss_before, rss_held) {
        (Some(b), Some(h)) if opened > 0 => Some(h.saturating_sub(b) as f64 / opened as f64),
        _ => None,
    };
    Ok(IdleReport {
        config: a,
        opened,
        failed,
        first_error,
        connect_secs,
        connects_per_sec: opened as f64 / connect_secs.max(1e-9),
        alive_at_end: alive,
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        rss_after_close_kib: rss_after,
        rss_per_connection_kib: per,
        cpu_held_pct,
    })
}
