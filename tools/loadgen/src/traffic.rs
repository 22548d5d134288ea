//! The traffic scenario: N WebSocket clients in M channels; senders send at a fixed total
//! rate (open loop: a slow server does not slow the schedule), every member's connection
//! receives. Measures send→`sent` and send→receive latency, throughput, errors, and
//! verifies delivery (see `verify`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::api::{self, Api, Ws};
use crate::stats::{Latency, Summary};
use crate::verify::{self, Channel, Delivery, ReceiverLog, Verification};

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct TrafficArgs {
    /// WebSocket clients (one user and one connection each).
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Channels.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Members per channel: channel c has clients (c·members + j) mod clients, j < members.
    #[arg(long, default_value_t = 2)]
    pub members: usize,
    /// Members of each channel that send (the first ones); default: all.
    #[arg(long)]
    pub senders: Option<usize>,
    /// Total send rate, messages per second, spread round-robin over (sender, channel).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Sending time in seconds (at most 600).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many messages even if the duration is not over.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// After the last send, wait at most this long for acks and deliveries.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Message body size in bytes (at least 24).
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Concurrent token/channel/connect requests during set-up.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds between the last `hello` and the first send: the gateway sends `hello`
    /// before the connection's subscriptions and positions are set up.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Seconds at the start of sending reported apart (`*_first`) and left out of the
    /// `steady_*` summaries: each run starts with new users and channels, and the first
    /// traffic after that set-up pays first-touch costs.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// User id prefix (a random suffix keeps runs apart).
    #[arg(long, default_value = "lg")]
    pub prefix: String,
}

#[derive(Debug, Serialize)]
pub struct TrafficReport {
    pub config: TrafficArgs,
    pub connections: usize,
    pub setup_secs: f64,
    pub planned: u64,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub error_codes: BTreeMap<String, u64>,
    /// Sends never answered (neither `sent` nor `error`) by the end of the drain.
    pub unanswered: u64,
    /// Sending window, and until the last ack arrived.
    pub send_secs: f64,
    pub ack_secs: f64,
    /// acked / ack_secs: what the server actually sustained.
    pub throughput_msgs_per_sec: f64,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub delivery_rate_per_sec: f64,
    /// send → `sent` frame on the sender's connection.
    pub ack: Summary,
    /// send → `message` frame, every receiver.
    pub e2e: Summary,
    /// send → the last receiver of that message (fan-out completion).
    pub last_receive: Summary,
    pub verification: Verification,
    pub ok: bool,
    /// (ms, quantile) points of the ack and end-to-end distributions, for plots.
    pub ack_percentiles: Vec<(f64, f64)>,
    /// Ack latency per second of the sending window (by send time): where a tail sits.
    pub ack_by_second: Vec<SecondStat>,
    /// Wall-clock start of sending (Unix seconds): second `n` of `ack_by_second` began at
    /// this + n, to line up with other logs.
    pub send_started_unix: f64,
    /// Sends made during the first `warmup` seconds, and those after (steady state).
    pub ack_first: Summary,
    pub e2e_first: Summary,
    pub steady_ack: Summary,
    pub steady_e2e: Summary,
    pub e2e_percentiles: Vec<(f64, f64)>,
}

/// Ack latency of the sends made in one second of the sending window.
#[derive(Debug, Clone, Serialize)]
pub struct SecondStat {
    pub second: u64,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl TrafficReport {
    pub fn table(&self) -> String {
        let v = &self.verification;
        let mut s = format!(
            "clients {}  channels {}  members/channel {}  target {:.0} msg/s for {:.1}s\n\
             sent {}  acked {}  errors {}  unanswered {}  throughput {:.0} msg/s (acks over {:.2}s)\n\
             deliveries {}/{} ({:.0}/s)\n",
            self.config.clients,
            self.config.channels,
            self.config.members,
            self.config.rate,
            self.config.duration,
            self.sent,
            self.acked,
            self.errors,
            self.unanswered,
            self.throughput_msgs_per_sec,
            self.ack_secs,
            self.deliveries,
            self.expected_deliveries,
            self.delivery_rate_per_sec,
        );
        if !self.error_codes.is_empty() {
            s += &format!("error codes: {:?}\n", self.error_codes);
        }
        s += &format!(
            "{}\n{}\n{}\n{}\n",
            Summary::header(),
            self.ack.row("send -> sent (ack)"),
            self.e2e.row("send -> receive"),
            self.last_receive.row("send -> last receiver"),
        );
        s += &format!(
            "first {:.0}s of sending: ack p99 {:.1} ms, e2e p99 {:.1} ms; after it (steady): ack p99 {:.1} ms, e2e p99 {:.1} ms\n",
            self.config.warmup,
            self.ack_first.p99_ms,
            self.e2e_first.p99_ms,
            self.steady_ack.p99_ms,
            self.steady_e2e.p99_ms,
        );
        if !self.ack_by_second.is_empty() {
            s += &format!(
                "ack p99 by second of sending (ms): {}\n",
                self.ack_by_second
                    .iter()
                    .map(|b| format!("{:.0}", b.p99_ms))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        s += &format!(
            "verification: {} — {} streams, {} delivered, missing {}, duplicates {}, out of order {}, mismatched {}, unexpected {}, delivered-unacked {}\n",
            if v.ok() { "OK" } else { "FAILED" },
            v.streams,
            v.delivered,
            v.missing,
            v.duplicates,
            v.out_of_order,
            v.mismatched,
            v.unexpected,
            v.delivered_unacked
        );
        for e in &v.examples {
            s += &format!("  ! {e}\n");
        }
        s
    }
}

/// What a connection's loop is told to send.
struct SendCmd {
    channel: Channel,
    channel_id: Arc<str>,
    n: u64,
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
}

/// Everything one connection saw.
#[derive(Default)]
struct ConnResult {
    log: ReceiverLog,
    /// send→receive ns, parallel to `log.deliveries`.
    e2e_ns: Vec<u64>,
    ack: Latency,
    e2e: Latency,
    /// (sent at, ack latency) in ns since the epoch.
    ack_samples: Vec<(u64, u64)>,
    /// (sent at, send→receive) in ns since the epoch.
    e2e_samples: Vec<(u64, u64)>,
    acks: Vec<(Channel, u64, String)>,
    error_codes: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    code: Option<String>,
    /// A message object in `sent`/`message` frames, a string in `error` frames.
    message: Option<serde_json::Value>,
}

impl Frame {
    fn msg(&mut self) -> Option<Msg> {
        serde_json::from_value(self.message.take()?).ok()
    }
}

#[derive(Deserialize)]
struct Msg {
    channel_id: String,
    seq: u64,
    client_msg_id: String,
    body: String,
}

/// Membership: channel c has clients (c·k + j) mod n for j < k (duplicates dropped).
pub fn membership(clients: usize, channels: usize, members: usize) -> Vec<Vec<usize>> {
    (0..channels)
        .map(|c| {
            let mut m: Vec<usize> = Vec::with_capacity(members);
            for j in 0..members {
                let u = (c * members + j) % clients;
                if !m.contains(&u) {
                    m.push(u);
                }
            }
            m
        })
        .collect()
}

fn validate(a: &TrafficArgs) -> Result<()> {
    if a.clients == 0 || a.clients > 20_000 {
        bail!("--clients must be 1-20000");
    }
    if a.channels == 0 || a.members == 0 || a.members > 1000 {
        bail!("--channels ≥ 1 and --members 1-1000");
    }
    if !(a.rate > 0.0 && a.rate <= 200_000.0) {
        bail!("--rate must be in (0, 200000]");
    }
    if !(a.duration > 0.0 && a.duration <= 600.0 && (0.0..=120.0).contains(&a.drain)) {
        bail!("--duration must be in (0, 600] and --drain in [0, 120]");
    }
    Ok(())
}

pub async fn run(api: &Api, a: TrafficArgs, progress: bool) -> Result<TrafficReport> {
    validate(&a)?;
    let t_setup = Instant::now();
    let run_tag: u32 = rand::random::<u32>() % 1_000_000;
    let users: Vec<String> = (0..a.clients)
        .map(|i| format!("{}{run_tag}-{i}", a.prefix))
        .collect();
    let conc = a.connect_concurrency.max(1);
    let tokens = api.tokens(&users, conc).await.context("dev tokens")?;

    // channels and who is in them
    let members = membership(a.clients, a.channels, a.members);
    let channel_ids: Vec<Arc<str>> = stream::iter(members.iter().enumerate().map(|(c, m)| {
        let rest: Vec<String> = m[1..].iter().map(|&u| users[u].clone()).collect();
        let owner = &tokens[m[0]];
        async move {
            api.create_channel(owner, &format!("lg-{run_tag}-{c}"), &rest, 8)
                .await
                .map(Arc::<str>::from)
        }
    }))
    .buffered(conc.min(16))
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<_>>()
    .context("creating channels")?;
    let index: Arc<HashMap<String, Channel>> = Arc::new(
        channel_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.to_string(), i as Channel))
            .collect(),
    );
    let mut client_channels: Vec<Vec<Channel>> = vec![Vec::new(); a.clients];
    for (c, m) in members.iter().enumerate() {
        for &u in m {
            client_channels[u].push(c as Channel);
        }
    }
    let senders_per_channel = a.senders.unwrap_or(a.members).max(1);
    // (client, channel) pairs that send, interleaved across channels
    let mut pairs: Vec<(usize, Channel)> = Vec::new();
    for j in 0..senders_per_channel {
        for (c, m) in members.iter().enumerate() {
            if let Some(&u) = m.get(j) {
                pairs.push((u, c as Channel));
            }
        }
    }

    // connect everyone (connections are per client whether it sends or only receives)
    let sockets: Vec<Ws> = stream::iter(tokens.iter().map(|t| api.connect(t)))
        .buffered(conc)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()
        .context("connecting WebSockets")?;
    let setup_secs = t_setup.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.settle.clamp(0.0, 60.0))).await;

    let epoch = Instant::now();
    let send_started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut cmd_txs = Vec::with_capacity(a.clients);
    let mut tasks = Vec::with_capacity(a.clients);
    let body_pad = "x".repeat(a.body_bytes.max(24) - 20);
    for (i, ws) in sockets.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        cmd_txs.push(tx);
        tasks.push(tokio::spawn(connection(
            i,
            ws,
            rx,
            stop_rx.clone(),
            epoch,
            index.clone(),
            client_channels[i].clone(),
            counters.clone(),
            body_pad.clone(),
        )));
    }

    // open-loop schedule
    let planned = ((a.rate * a.duration) as u64)
        .min(a.max_messages.unwrap_or(u64::MAX))
        .max(1);
    let bar = if progress {
        ProgressBar::new(planned)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} sent  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let status = |c: &Counters| {
        format!(
            "acked {}  errors {}  delivered {}",
            c.acked.load(Relaxed),
            c.errors.load(Relaxed),
            c.delivered.load(Relaxed)
        )
    };
    let mut sent = 0u64;
    let mut per_pair = vec![0u64; pairs.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_draw = Instant::now();
    while sent < planned {
        tick.tick().await;
        let due = ((epoch.elapsed().as_secs_f64() * a.rate) as u64).min(planned);
        while sent < due {
            let p = (sent as usize) % pairs.len();
            let (u, c) = pairs[p];
            per_pair[p] += 1;
            let _ = cmd_txs[u].send(SendCmd {
                channel: c,
                channel_id: channel_ids[c as usize].clone(),
                n: per_pair[p],
            });
            sent += 1;
        }
        if last_draw.elapsed() > Duration::from_millis(200) {
            bar.set_position(sent);
            bar.set_message(status(&counters));
            last_draw = Instant::now();
        }
    }
    let send_secs = epoch.elapsed().as_secs_f64();
    bar.set_position(sent);

    // drain: every send answered, and every acked message delivered to every member
    let member_count: Vec<u64> = members.iter().map(|m| m.len() as u64).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain);
    let avg_members = {
        // deliveries expected per message, weighted by how often each channel is sent to
        let total: u64 = pairs.iter().map(|&(_, c)| member_count[c as usize]).sum();
        total as f64 / pairs.len() as f64
    };
    let mut ack_secs = send_secs;
    let mut acked_all = false;
    loop {
        let answered = counters.acked.load(Relaxed) + counters.errors.load(Relaxed);
        if !acked_all && answered >= sent {
            acked_all = true;
            ack_secs = epoch.elapsed().as_secs_f64();
        }
        let want = (counters.acked.load(Relaxed) as f64 * avg_members).floor() as u64;
        if acked_all && counters.delivered.load(Relaxed) >= want {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        bar.set_message(status(&counters));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !acked_all {
        ack_secs = epoch.elapsed().as_secs_f64();
    }
    bar.finish_and_clear();
    let _ = stop_tx.send(true);
    drop(cmd_txs);

    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.context("connection task panicked")?);
    }

    // merge
    let mut acked: HashMap<Channel, BTreeMap<u64, String>> = HashMap::new();
    let mut ack = Latency::new();
    let mut e2e = Latency::new();
    let mut error_codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut last: HashMap<(Channel, u64), u64> = HashMap::new();
    for r in &results {
        ack.merge(&r.ack);
        e2e.merge(&r.e2e);
        for (c, s, cid) in &r.acks {
            acked.entry(*c).or_default().insert(*s, cid.clone());
        }
        for (k, n) in &r.error_codes {
            *error_codes.entry(k.clone()).or_default() += n;
        }
        for (d, ns) in r.log.deliveries.iter().zip(&r.e2e_ns) {
            let e = last.entry((d.channel, d.seq)).or_default();
            *e = (*e).max(*ns);
        }
    }
    let warmup_ns = (a.warmup.max(0.0) * 1e9) as u64;
    let (ack_first, steady_ack) = split_at(results.iter().map(|r| &r.ack_samples), warmup_ns);
    let (e2e_first, steady_e2e) = split_at(results.iter().map(|r| &r.e2e_samples), warmup_ns);
    let mut per_second: BTreeMap<u64, Latency> = BTreeMap::new();
    for r in &results {
        for (at, ns) in &r.ack_samples {
            per_second
                .entry(at / 1_000_000_000)
                .or_default()
                .record_ns(*ns);
        }
    }
    let ack_by_second = per_second
        .into_iter()
        .map(|(second, l)| {
            let s = l.summary();
            SecondStat {
                second,
                count: s.count,
                p50_ms: s.p50_ms,
                p99_ms: s.p99_ms,
                max_ms: s.max_ms,
            }
        })
        .collect();
    let mut last_receive = Latency::new();
    for ns in last.values() {
        last_receive.record_ns(*ns);
    }
    let logs: Vec<ReceiverLog> = results.into_iter().map(|r| r.log).collect();
    let verification = verify::verify(&acked, &logs);
    let n_acked: u64 = acked.values().map(|m| m.len() as u64).sum();
    let expected_deliveries: u64 = acked
        .iter()
        .map(|(c, m)| m.len() as u64 * member_count[*c as usize])
        .sum();
    let errors: u64 = error_codes.values().sum();
    let ok = verification.ok() && errors == 0;
    Ok(TrafficReport {
        connections: logs.len(),
        setup_secs,
        planned,
        sent,
        acked: n_acked,
        errors,
        unanswered: sent.saturating_sub(n_acked + errors),
        send_secs,
        ack_secs,
        throughput_msgs_per_sec: n_acked as f64 / ack_secs.max(1e-9),
        deliveries: verification.delivered,
        expected_deliveries,
        delivery_rate_per_sec: verification.delivered as f64 / ack_secs.max(1e-9),
        ack: ack.summary(),
        e2e: e2e.summary(),
        last_receive: last_receive.summary(),
        ok,
        verification,
        error_codes,
        config: a,
        ack_percentiles: ack.percentiles(),
        ack_by_second,
        send_started_unix,
        ack_first: ack_first.summary(),
        e2e_first: e2e_first.summary(),
        steady_ack: steady_ack.summary(),
        steady_e2e: steady_e2e.summary(),
        e2e_percentiles: e2e.percentiles(),
    })
}

/// (sent at, latency) samples split into those sent before `at_ns` and the rest.
fn split_at<'a>(
    samples: impl Iterator<Item = &'a Vec<(u64, u64)>>,
    at_ns: u64,
) -> (Latency, Latency) {
    let (mut before, mut after) = (Latency::new(), Latency::new());
    for (sent, ns) in samples.flatten() {
        if *sent < at_ns {
            &mut before
        } else {
            &mut after
        }
        .record_ns(*ns);
    }
    (before, after)
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    client: usize,
    ws: Ws,
    mut cmds: mpsc::UnboundedReceiver<SendCmd>,
    mut stop: watch::Receiver<bool>,
    epoch: Instant,
    index: Arc<HashMap<String, Channel>>,
    channels: Vec<Channel>,
    counters: Arc<Counters>,
    pad: String,
) -> ConnResult {
    let mut r = ConnResult {
        log: ReceiverLog {
            channels,
            deliveries: Vec::new(),
        },
        ..ConnResult::default()
    };
    let (mut sink, mut source) = ws.split();
    let mut cmds_open = true;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            cmd = cmds.recv(), if cmds_open => {
                let Some(cmd) = cmd else { cmds_open = false; continue };
                let t = now_ns(epoch);
                // The body carries the send time (ns since the run's epoch): receivers in
                // this process compute end-to-end latency from it; `ref` does the same for acks.
                let frame = serde_json::json!({
                    "type": "send",
                    "ref": t,
                    "channel_id": &*cmd.channel_id,
                    "client_msg_id": format!("c{client}-{}-{}", cmd.channel, cmd.n),
                    "body": format!("{t:020}{pad}"),
                });
                if sink.send(Message::text(frame.to_string())).await.is_err() {
                    *r.error_codes.entry("ws_write".into()).or_default() += 1;
                    counters.errors.fetch_add(1, Relaxed);
                }
            }
            m = source.next() => {
                let Some(Ok(m)) = m else {
                    *r.error_codes.entry("ws_closed".into()).or_default() += 1;
                    break;
                };
                let Message::Text(text) = m else { continue };
                let Ok(mut f) = serde_json::from_str::<Frame>(&text) else {
                    *r.error_codes.entry("bad_frame".into()).or_default() += 1;
                    continue;
                };
                let t = now_ns(epoch);
                match f.kind.as_str() {
                    "sent" => {
                        counters.acked.fetch_add(1, Relaxed);
                        if let Some(sent_at) = f.reference {
                            r.ack.record_ns(t.saturating_sub(sent_at));
                            r.ack_samples.push((sent_at, t.saturating_sub(sent_at)));
                        }
                        if let Some(m) = f.msg()
                            && let Some(&c) = index.get(&m.channel_id)
                        {
                            r.acks.push((c, m.seq, m.client_msg_id));
                        }
                    }
                    "message" => {
                        let Some(m) = f.msg() else { continue };
                        let Some(&c) = index.get(&m.channel_id) else { continue };
                        counters.delivered.fetch_add(1, Relaxed);
                        let sent_at = m.body.get(..20).and_then(|s| s.parse::<u64>().ok());
                        let ns = sent_at.map_or(0, |s| t.saturating_sub(s));
                        r.e2e.record_ns(ns);
                        r.e2e_ns.push(ns);
                        r.e2e_samples.push((sent_at.unwrap_or(0), ns));
                        r.log.deliveries.push(Delivery {
                            channel: c,
                            seq: m.seq,
                            client_msg_id: m.client_msg_id,
                        });
                    }
                    "error" => {
                        if f.reference.is_some() {
                            counters.errors.fetch_add(1, Relaxed);
                        }
                        *r.error_codes.entry(f.code.unwrap_or_default()).or_default() += 1;
                    }
                    "reconnect" => {
                        *r.error_codes.entry("reconnect".into()).or_default() += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    if let Ok(ws) = sink.reunite(source) {
        api::close(ws).await;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_spreads_clients() {
        let m = membership(4, 2, 2);
        assert_eq!(m, vec![vec![0, 1], vec![2, 3]]);
        let m = membership(3, 1, 5);
        assert_eq!(m, vec![vec![0, 1, 2]]);
        let m = membership(4, 4, 2);
        assert_eq!(m[2], vec![0, 1]);
    }
}
