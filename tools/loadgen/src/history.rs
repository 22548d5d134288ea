//! History pages: `GET …/messages?before=<random>&limit=50` through the gateway, checking
//! each page is the 50 messages right below the cursor.

use std::time::Instant;

use anyhow::{Result, bail};
use futures::{StreamExt, stream};
use rand::Rng;
use serde::Serialize;

use crate::api::Api;
use crate::stats::{Latency, Summary};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct HistoryArgs {
    /// Channel id (the user must be a member).
    #[arg(long)]
    pub channel: String,
    /// User to read as (a dev token is fetched for it).
    #[arg(long)]
    pub user: String,
    /// The channel's last seq: cursors are drawn uniformly from 2..=last_seq+1.
    #[arg(long)]
    pub last_seq: u64,
    /// Requests (at most 100000).
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub config: HistoryArgs,
    pub ok: u64,
    pub errors: u64,
    pub wrong_pages: u64,
    pub secs: f64,
    pub pages_per_sec: f64,
    pub latency: Summary,
}

impl HistoryReport {
    pub fn table(&self) -> String {
        format!(
            "history before= pages of {}: {} ok, {} errors, {} wrong, {:.0} pages/s\n{}\n{}\n",
            self.config.limit,
            self.ok,
            self.errors,
            self.wrong_pages,
            self.pages_per_sec,
            Summary::header(),
            self.latency.row("GET before= (keyset)")
        )
    }
}

pub async fn run(api: &Api, a: HistoryArgs) -> Result<HistoryReport> {
    if a.requests == 0 || a.requests > 100_000 || a.last_seq < 1 {
        bail!("--requests must be 1-100000 and --last-seq ≥ 1");
    }
    let token = api.token(&a.user).await?;
    let cursors: Vec<u64> = {
        let mut rng = rand::rng();
        (0..a.requests)
            .map(|_| rng.random_range(2..=a.last_seq + 1))
            .collect()
    };
    let t0 = Instant::now();
    let results: Vec<(u64, Result<bool>)> = stream::iter(cursors.into_iter().map(|before| {
        let token = &token;
        let a = &a;
        async move {
            let t = Instant::now();
            let page = api.history_before(token, &a.channel, before, a.limit).await;
            let ns = t.elapsed().as_nanos() as u64;
            // the page must be before-1, before-2, … (as many as exist)
            let want = (before - 1).min(u64::from(a.limit));
            let good = page.map(|p| {
                p.len() as u64 == want
                    && p.iter()
                        .enumerate()
                        .all(|(i, &s)| s == before - 1 - i as u64)
            });
            (ns, good)
        }
    }))
    .buffer_unordered(a.concurrency.max(1))
    .collect()
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let mut lat = Latency::new();
    let (mut ok, mut errors, mut wrong) = (0, 0, 0);
    for (ns, r) in results {
        match r {
            Ok(true) => {
                ok += 1;
                lat.record_ns(ns);
            }
            Ok(false) => wrong += 1,
            Err(_) => errors += 1,
        }
    }
    Ok(HistoryReport {
        ok,
        errors,
        wrong_pages: wrong,
        secs,
        pages_per_sec: ok as f64 / secs.max(1e-9),
        latency: lat.summary(),
        config: a,
    })
}
