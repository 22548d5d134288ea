//! Rolling deploy with zero loss: two gateway and two messaging replicas, clients sending
//! continuously; one gateway is stopped (SIGTERM-like drain), then one messaging replica,
//! then Redis restarts. Every acknowledged message must exist exactly once and every
//! member must have seen every message, in order.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{SinkExt as _, StreamExt as _};
use parley_testkit::{Client, PrivateRedis, Stack, token};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::LONG;

/// What one client saw and had acknowledged.
#[derive(Debug, Default)]
struct Report {
    seen: Vec<u64>,
    acked: HashMap<String, u64>,
    reconnects: u32,
    /// Recent connection events, for the failure message.
    log: Vec<String>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to the first gateway (from `start`, wrapping) that accepts, and resumes.
async fn connect(
    urls: &[String],
    start: usize,
    user: &str,
    ch: &str,
    last: Option<u64>,
) -> anyhow::Result<(Socket, usize)> {
    for attempt in 0..100 {
        let i = (start + attempt) % urls.len();
        let url = format!(
            "{}/v1/ws?token={}",
            urls[i].replacen("http", "ws", 1),
            token(user, 3600)
        );
        if let Ok((mut s, _)) = tokio_tungstenite::connect_async(url).await {
            if let Some(last) = last {
                s.send(Ws::Text(
                    json!({"type": "resume", "positions": {ch: last}})
                        .to_string()
                        .into(),
                ))
                .await?;
            }
            return Ok((s, i));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{user}: no gateway accepted a connection")
}

/// One member: sends every ~50 ms until `stop`, retries unacknowledged sends with the same
/// client_msg_id (idempotent), reconnects + resumes when told to or cut off, and checks
/// that the messages it receives are consecutive.
async fn member(
    user: String,
    urls: Vec<String>,
    start: usize,
    ch: String,
    stop: Arc<AtomicBool>,
    idle: Arc<AtomicUsize>,
    target: Arc<AtomicU64>,
) -> anyhow::Result<Report> {
    let mut counted_idle = false;
    let mut report = Report::default();
    // A client without local state resumes from 0: it gets the whole channel, in order,
    // however late it connects relative to the others.
    let (mut socket, mut at) = connect(&urls, start, &user, &ch, Some(0)).await?;
    let mut pending: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    let mut n = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{user}: did not finish; seen up to {:?}, pending {pending:?}",
            report.seen.last()
        );
        let done_sending = stop.load(Ordering::Acquire);
        if done_sending && pending.is_empty() && !counted_idle {
            // Nothing more will be sent by this member.
            counted_idle = true;
            idle.fetch_add(1, Ordering::AcqRel);
        }
        let goal = target.load(Ordering::Acquire);
        if done_sending
            && pending.is_empty()
            && goal > 0
            && report.seen.last().copied().unwrap_or(0) >= goal
        {
            return Ok(report);
        }
        let mut lost = false;
        tokio::select! {
            _ = tick.tick() => {
                if !done_sending {
                    n += 1;
                    pending.insert(format!("{user}-{n}"), tokio::time::Instant::now() - Duration::from_secs(10));
                }
                // (Re)send what is due: new sends at once, unacknowledged ones after 1 s.
                let now = tokio::time::Instant::now();
                for (cid, last) in pending.iter_mut() {
                    if now.duration_since(*last) >= Duration::from_secs(1) {
                        *last = now;
                        let f = json!({"type": "send", "ref": cid, "channel_id": ch, "client_msg_id": cid, "body": "x"});
                        if socket.send(Ws::Text(f.to_string().into())).await.is_err() {
                            lost = true;
                            break;
                        }
                    }
                }
            }
            frame = socket.next() => match frame {
                Some(Ok(Ws::Text(t))) => {
                    let f: Value = serde_json::from_str(t.as_str())?;
                    match f["type"].as_str() {
                        Some("message") if f["message"]["channel_id"] == ch.as_str() => {
                            let seq = f["message"]["seq"].as_u64().unwrap_or(0);
                            report.log.push(format!("m{seq}"));
                            let expected = report.seen.last().map_or(1, |s| s + 1);
                            anyhow::ensure!(seq == expected, "{user}: got seq {seq}, expected {expected}; log: {:?}", &report.log[report.log.len().saturating_sub(12)..]);
                            report.seen.push(seq);
                        }
                        Some("sent") => {
                            let cid = f["ref"].as_str().unwrap_or_default().to_owned();
                            let seq = f["message"]["seq"].as_u64().unwrap_or(0);
                            if let Some(prev) = report.acked.insert(cid.clone(), seq) {
                                anyhow::ensure!(prev == seq, "{user}: {cid} acked as {prev} then {seq}");
                            }
                            pending.remove(&cid);
                        }
                        Some("reconnect") => {
                            report.log.push(format!("reconnect frame at seq {:?}", report.seen.last()));
                            lost = true;
                        }
                        Some("resumed") | Some("hello") | Some("error") => report.log.push(format!("{f} at seq {:?}", report.seen.last())),
                        // `error` (unavailable while a replica goes away): retried by the tick.
                        _ => {}
                    }
                }
                Some(Ok(Ws::Close(_))) | Some(Err(_)) | None => {
                    report.log.push(format!("socket closed at seq {:?}", report.seen.last()));
                    lost = true;
                }
                Some(Ok(_)) => {}
            },
        }
        if lost {
            report.reconnects += 1;
            let last = report.seen.last().copied().unwrap_or(0);
            let (s, i) = connect(&urls, at + 1, &user, &ch, Some(last)).await?;
            report
                .log
                .push(format!("reconnected to gateway {i}, resume from {last}"));
            socket = s;
            at = i;
            // Sends whose answer was lost are retried at once.
            for t in pending.values_mut() {
                *t -= Duration::from_secs(10);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_of_gateway_messaging_and_redis_loses_nothing() -> anyhow::Result<()> {
    let Some(mut redis) = PrivateRedis::start().await? else {
        eprintln!("redis-server is not installed: skipping the rolling-deploy test");
        return Ok(());
    };
    let mut stack = Stack::empty().await?;
    stack.redis_url = redis.url();
    let m0 = stack.add_messaging(&[]).await?;
    let m1 = stack.add_messaging(&[]).await?;
    let both = format!("http://{m0},http://{m1}");
    let gw = [
        ("PARLEY__MESSAGING__URL", both.as_str()),
        ("PARLEY__RATE__MESSAGES__N", "0"),
        ("PARLEY__HTTP__DRAIN_DELAY_MS", "200"),
    ];
    stack.add_gateway(&gw).await?;
    stack.add_gateway(&gw).await?;
    let urls = vec![stack.url(0), stack.url(1)];
    let users = ["u0", "u1", "u2", "u3"];
    let owner = Client::new(&urls[1], "u0");
    let ch = owner.group("rolling", &users[1..]).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let idle = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicU64::new(0));
    let mut tasks: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            tokio::spawn(member(
                (*u).to_owned(),
                urls.clone(),
                i % 2,
                ch.clone(),
                stop.clone(),
                idle.clone(),
                target.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    // 1. A gateway is rolled: its clients get `reconnect`, move to the other and resume.
    stack.gateways.remove(0).stop().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 2. A messaging replica is rolled: calls move to the other one.
    stack.messaging.remove(0).stop().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 3. Redis restarts (empty): sends still commit; the outbox and catch-up repair delivery.
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);

    // Once every member has every send acknowledged, the channel's last seq is final:
    // everyone must reach it.
    let deadline = tokio::time::Instant::now() + LONG;
    while idle.load(Ordering::Acquire) < users.len() {
        if let Some(i) = tasks.iter().position(tokio::task::JoinHandle::is_finished) {
            // A member stopped early: its error says why.
            let failed = tasks.remove(i).await??;
            anyhow::bail!("a member finished before the others settled: {failed:?}");
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "sends never settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = loop {
        let (s, c, _) = owner
            .req("GET", &format!("/v1/channels/{ch}"), None)
            .await?;
        if s == 503 {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "channel never readable"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue; // `unavailable` is retryable by contract
        }
        anyhow::ensure!(s == 200, "{c}");
        break c["last_seq"].as_u64().unwrap_or(0);
    };
    target.store(last, Ordering::Release);
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await??);
    }

    // Every member saw every message, in order, exactly once.
    let all: Vec<u64> = (1..=last).collect();
    for (u, r) in users.iter().zip(&reports) {
        assert_eq!(r.seen, all, "{u} did not see 1..={last} in order");
    }
    assert!(
        reports.iter().any(|r| r.reconnects > 0),
        "nobody had to reconnect: the gateway roll did nothing"
    );

    // Every acknowledged message exists exactly once, with the acknowledged seq.
    let mut history: HashMap<String, Vec<u64>> = HashMap::new();
    let mut after = 0;
    loop {
        let (s, page, _) = owner
            .req(
                "GET",
                &format!("/v1/channels/{ch}/messages?after={after}&limit=200"),
                None,
            )
            .await?;
        if s == 503 {
            continue;
        }
        assert_eq!(s, 200);
        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
        for m in &msgs {
            let seq = m["seq"].as_u64().unwrap_or(0);
            assert_eq!(seq, after + 1, "history has a gap");
            after = seq;
            history
                .entry(m["client_msg_id"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(seq);
        }
        if page["has_more"] != true {
            break;
        }
    }
    assert_eq!(after, last);
    let acked: usize = reports.iter().map(|r| r.acked.len()).sum();
    assert!(acked > 50, "too little traffic to mean anything: {acked}");
    for r in &reports {
        for (cid, seq) in &r.acked {
            assert_eq!(history.get(cid), Some(&vec![*seq]), "{cid}");
        }
    }
    assert_eq!(
        history.len(),
        acked,
        "every message in history was acknowledged to its sender"
    );
    Ok(())
}
