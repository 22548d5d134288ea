//! The edge under one hostile account: (1) one connection sends `send` frames to many
//! distinct made-up channel ids — the gateway's resident memory must not grow with them;
//! (2) a well-behaved client's ping round trip while another connection floods frames as
//! fast as it can — the flood must not make the calm client wait.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    api::{self, Api, Ws},
    procfs,
    stats::{Latency, Summary},
};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct AbuseArgs {
    /// Distinct made-up channel ids one connection sends to (at most 100000).
    #[arg(long, default_value_t = 20_000)]
    pub bogus: usize,
    /// Seconds the calm client measures, quiet and then beside the flood (at most 120).
    #[arg(long, default_value_t = 10.0)]
    pub calm_secs: f64,
    /// The calm client's pings per second (one at a time).
    #[arg(long, default_value_t = 50.0)]
    pub calm_rate: f64,
    /// Gateway pid, to read its RSS.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    #[arg(long, default_value = "abuse")]
    pub prefix: String,
}

/// Part 1: the made-up channel flood.
#[derive(Debug, Serialize)]
pub struct BogusReport {
    pub frames_sent: usize,
    pub answered: usize,
    /// Answers by error code (`sent` if a send was accepted).
    pub codes: BTreeMap<String, usize>,
    pub closed: Option<String>,
    pub secs: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_growth_kib: Option<i64>,
}

/// Part 2: the calm client beside a frame flood.
#[derive(Debug, Serialize)]
pub struct FloodReport {
    pub quiet: Summary,
    pub beside_flood: Summary,
    /// beside_flood.p99 / quiet.p99.
    pub p99_ratio: f64,
    pub flood_frames_sent: u64,
    pub flood_frames_per_sec: f64,
    pub flood_answers: BTreeMap<String, u64>,
    /// Connections the flooder opened (it reconnects when closed) and upgrades refused.
    pub flood_connections: u64,
    pub flood_refused_connects: u64,
    /// How its connections ended.
    pub flood_closes: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct AbuseReport {
    pub config: AbuseArgs,
    pub bogus: BogusReport,
    pub flood: FloodReport,
}

impl AbuseReport {
    pub fn table(&self) -> String {
        let b = &self.bogus;
        let f = &self.flood;
        let kib =
            |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
        format!(
            "made-up channels: {} send frames, {} answered in {:.1}s {:?}{}\n\
             gateway RSS: before {}, after {}: growth {}\n\
             calm client ping p99: quiet {:.2} ms, beside the flood {:.2} ms (x{:.2}); \
             flood: {} frames ({:.0}/s), answers {:?}, {} connections ({} refused), ended {:?}\n",
            b.frames_sent,
            b.answered,
            b.secs,
            b.codes,
            b.closed
                .as_ref()
                .map_or(String::new(), |c| format!(", closed: {c}")),
            kib(b.rss_before_kib),
            kib(b.rss_after_kib),
            b.rss_growth_kib.map_or("-".into(), |g| format!("{g} KiB")),
            f.quiet.p99_ms,
            f.beside_flood.p99_ms,
            f.p99_ratio,
            f.flood_frames_sent,
            f.flood_frames_per_sec,
            f.flood_answers,
            f.flood_connections,
            f.flood_refused_connects,
            f.flood_closes,
        )
    }
}

pub async fn run(api: &Api, a: AbuseArgs) -> Result<AbuseReport> {
    if a.bogus == 0 || a.bogus > 100_000 {
        bail!("--bogus must be 1-100000");
    }
    if !(1.0..=120.0).contains(&a.calm_secs) || !(1.0..=1000.0).contains(&a.calm_rate) {
        bail!("--calm-secs must be 1-120 and --calm-rate 1-1000");
    }
    let tag: u32 = rand::random::<u32>() % 1_000_000;
    // Each part its own hostile user: a flooder closed for flooding may be refused for a
    // while (`ws.flood_ban_secs`).
    let users = [
        format!("{}{tag}-bogus", a.prefix),
        format!("{}{tag}-flooder", a.prefix),
        format!("{}{tag}-calm", a.prefix),
        format!("{}{tag}-warm", a.prefix),
    ];
    let tokens = api.tokens(&users, 4).await.context("dev tokens")?;
    let bogus = bogus_channels(api, &tokens, &a).await?;
    let flood = beside_a_flood(api, &tokens[1], &tokens[2], &a).await?;
    Ok(AbuseReport {
        config: a,
        bogus,
        flood,
    })
}

/// Made-up sends of the warm-up.
const WARM: usize = 100;

/// A random version-4 UUID string (no channel has it).
fn random_uuid() -> String {
    let (a, b, c, d, e): (u32, u16, u16, u16, u64) = rand::random();
    format!(
        "{a:08x}-{b:04x}-4{:03x}-{:04x}-{:012x}",
        c & 0x0fff,
        (d & 0x3fff) | 0x8000,
        e & 0xffff_ffff_ffff
    )
}

fn label(v: &Value) -> String {
    match v["type"].as_str() {
        Some("error") => v["code"].as_str().unwrap_or("error").to_owned(),
        Some(t) => t.to_owned(),
        None => "?".into(),
    }
}

fn close_label(m: &Message) -> Option<String> {
    match m {
        Message::Close(Some(f)) => Some(format!("{} {}", u16::from(f.code), f.reason)),
        Message::Close(None) => Some("close".into()),
        _ => None,
    }
}

/// What one connection's made-up sends got.
struct MadeUp {
    sent: usize,
    answered: usize,
    codes: BTreeMap<String, usize>,
    closed: Option<String>,
    secs: f64,
}

/// One connection sends `n` `send` frames to made-up channels as fast as it can and reads
/// their answers (until all came or the server closed it); returns the tally and the
/// connection if it is still open.
async fn made_up_sends(api: &Api, token: &str, n: usize) -> Result<(MadeUp, Option<Ws>)> {
    let ws = api.connect(token).await?;
    let (mut tx, mut rx) = ws.split();
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for i in 0..n {
            let f = json!({"type": "send", "ref": i, "channel_id": random_uuid(),
                           "client_msg_id": "k", "body": "x"});
            if tx.send(Message::Text(f.to_string().into())).await.is_err() {
                break;
            }
            sent += 1;
        }
        (sent, tx)
    });
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut answered = 0;
    let mut closed = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while answered < n {
        match tokio::time::timeout_at(deadline, rx.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => {
                closed.get_or_insert_with(|| "ended".to_owned());
                break;
            }
            Ok(Some(Ok(m))) => {
                if let Some(c) = close_label(&m) {
                    closed = Some(c);
                    break;
                }
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(&t)?;
                    if v.get("ref").is_some() {
                        answered += 1;
                        *codes.entry(label(&v)).or_default() += 1;
                    }
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (sent, tx) = writer.await?;
    let open = if closed.is_none() {
        tx.reunite(rx).ok()
    } else {
        None
    };
    Ok((
        MadeUp {
            sent,
            answered,
            codes,
            closed,
            secs,
        },
        open,
    ))
}

async fn bogus_channels(api: &Api, tokens: &[String], a: &AbuseArgs) -> Result<BogusReport> {
    // Warm-up: the gateway's first connections allocate pools, HTTP/2 windows and each
    // worker thread's allocator pages, which every later connection shares. Before the
    // measurement the same paths run once: four connections of one user with a few
    // made-up sends each (within any frame limit), and another user's burst of 1,000 (on
    // a gateway with the default frame limit, refused and closed), then the memory settles.
    let warm =
        futures::future::join_all((0..4).map(|_| made_up_sends(api, &tokens[2], WARM))).await;
    for w in warm {
        if let (_, Some(ws)) = w? {
            api::close(ws).await;
        }
    }
    if let (_, Some(ws)) = made_up_sends(api, &tokens[3], 1000).await? {
        api::close(ws).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = a.gateway_pid.and_then(procfs::rss_kib);
    let (m, open) = made_up_sends(api, &tokens[0], a.bogus).await?;
    // Memory with the connection still open if it is (what it made the gateway keep),
    // after the allocator settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = a.gateway_pid.and_then(procfs::rss_kib);
    if let Some(ws) = open {
        api::close(ws).await;
    }
    Ok(BogusReport {
        frames_sent: m.sent,
        answered: m.answered,
        codes: m.codes,
        closed: m.closed,
        secs: m.secs,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_growth_kib: match (rss_before, rss_after) {
            (Some(b), Some(a)) => Some(a as i64 - b as i64),
            _ => None,
        },
    })
}

/// Pings one at a time at `rate` for `secs`; the round trips.
async fn calm(ws: &mut Ws, rate: f64, secs: f64) -> Result<Latency> {
    let mut lat = Latency::new();
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut i = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        i += 1;
        let r = format!("c{i}");
        let sent = Instant::now();
        ws.send(Message::Text(
            json!({"type": "ping", "ref": r}).to_string().into(),
        ))
        .await?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .context("the calm client's pong did not come within 30 s")?
                .context("the calm client's connection ended")??;
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "pong" && v["ref"] == r.as_str() {
                    lat.record_ns(sent.elapsed().as_nanos() as u64);
                    break;
                }
            }
        }
    }
    Ok(lat)
}

/// What the flooder did.
#[derive(Default)]
struct Flooded {
    frames: u64,
    answers: BTreeMap<String, u64>,
    connections: u64,
    refused_connects: u64,
    closes: BTreeMap<String, u64>,
}

/// Floods `ping` frames as fast as the socket takes them, reading every answer; when the
/// server closes the connection it connects again (as an attacker would), until `stop`.
async fn flood(api: Api, token: String, stop: Arc<tokio::sync::Notify>) -> Flooded {
    let mut out = Flooded::default();
    let frame = Message::Text(json!({"type": "ping", "ref": "f"}).to_string().into());
    loop {
        let ws = tokio::select! {
            _ = stop.notified() => return out,
            ws = api.connect(&token) => ws,
        };
        let Ok(ws) = ws else {
            out.refused_connects += 1;
            tokio::select! {
                _ = stop.notified() => return out,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        };
        out.connections += 1;
        let (mut tx, mut rx) = ws.split();
        let sent = Arc::new(AtomicU64::new(0));
        let writer = {
            let (sent, frame) = (sent.clone(), frame.clone());
            tokio::spawn(async move {
                while tx.send(frame.clone()).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                tx
            })
        };
        let mut stopped = false;
        let close = loop {
            let m = tokio::select! {
                _ = stop.notified() => { stopped = true; break "stopped".to_owned(); }
                m = rx.next() => m,
            };
            match m {
                None | Some(Err(_)) => break "ended".to_owned(),
                Some(Ok(m)) => {
                    if let Some(c) = close_label(&m) {
                        break c;
                    }
                    if let Message::Text(t) = m
                        && let Ok(v) = serde_json::from_str::<Value>(&t)
                    {
                        *out.answers.entry(label(&v)).or_default() += 1;
                    }
                }
            }
        };
        writer.abort();
        out.frames += sent.load(Ordering::Relaxed);
        *out.closes.entry(close).or_default() += 1;
        if stopped {
            return out;
        }
    }
}

async fn beside_a_flood(
    api: &Api,
    flooder: &str,
    calm_token: &str,
    a: &AbuseArgs,
) -> Result<FloodReport> {
    let mut calm_ws = api.connect(calm_token).await?;
    let quiet = calm(&mut calm_ws, a.calm_rate, a.calm_secs).await?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let flooding = tokio::spawn(flood(api.clone(), flooder.to_owned(), stop.clone()));
    let t0 = Instant::now();
    let beside = calm(&mut calm_ws, a.calm_rate, a.calm_secs).await?;
    let flood_secs = t0.elapsed().as_secs_f64();
    stop.notify_one();
    let f = flooding.await?;
    api::close(calm_ws).await;
    let (q, b) = (quiet.summary(), beside.summary());
    Ok(FloodReport {
        p99_ratio: if q.p99_ms > 0.0 {
            b.p99_ms / q.p99_ms
        } else {
            0.0
        },
        quiet: q,
        beside_flood: b,
        flood_frames_sent: f.frames,
        flood_frames_per_sec: f.frames as f64 / flood_secs.max(1e-9),
        flood_answers: f.answers,
        flood_connections: f.connections,
        flood_refused_connects: f.refused_connects,
        flood_closes: f.closes,
    })
}
