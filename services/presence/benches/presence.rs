//! Presence benchmark (not a test): an in-process presence server on port 0 against a
//! running Redis (`PARLEY_BENCH_REDIS_URL`, default `redis://127.0.0.1:56379`).
//!
//!   cargo bench -p parley-presence --bench presence
//!
//! Measures heartbeat renewals per second for 10,000 live connections, renewed the way
//! gateways do (one Heartbeat call per node per interval, batches of at most 5,000), and the
//! latency of GetPresence for 100 users, idle and while heartbeats run. Everything it writes
//! lives under a fresh key prefix, deleted at the end.

use parley_kit::config::Settings as _;
use std::time::{Duration, Instant};

use parley_proto::presence::v1::{self as pb, presence_service_client::PresenceServiceClient};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

type Client = PresenceServiceClient<Channel>;

const CONNECTIONS: usize = 10_000;
const BATCH: usize = 5_000;
const RUN: Duration = Duration::from_secs(10);
const QUERY_USERS: usize = 100;
const QUERIES: usize = 5_000;
const WARMUP: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis_url = std::env::var("PARLEY_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:56379".into());
    let prefix = format!("bench{}:", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let config = parley_presence::Config::load(&parley_kit::config::Sources::from_vars([
        ("PARLEY__REDIS__URL", redis_url.as_str()),
        ("PARLEY__REDIS__PREFIX", prefix.as_str()),
    ]))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(parley_presence::serve(config, listener, shutdown.clone()));
    let client = connect(addr).await?;

    println!(
        "presence benchmark: redis {redis_url}, prefix {prefix}, {CONNECTIONS} connections, ttl 60 s"
    );
    let result = run(client).await;

    shutdown.cancel();
    let _ = server.await;
    cleanup(&redis_url, &prefix).await?;
    result
}

async fn run(mut client: Client) -> anyhow::Result<()> {
    // 10,000 users with one connection each; registered by restoring heartbeats.
    let conns: Vec<pb::ConnectionRef> = (0..CONNECTIONS)
        .map(|i| pb::ConnectionRef {
            user_id: format!("user{i}"),
            connection_id: uuid::Uuid::now_v7().to_string(),
        })
        .collect();
    let started = Instant::now();
    for chunk in conns.chunks(BATCH) {
        let req = pb::HeartbeatRequest {
            node_id: "gw-0".into(),
            connections: chunk.to_vec(),
            ttl_seconds: 60,
        };
        let restored = client.heartbeat(req).await?.into_inner().restored.len();
        anyhow::ensure!(
            restored == chunk.len(),
            "setup: {restored} of {} registered",
            chunk.len()
        );
    }
    println!(
        "setup: registered {CONNECTIONS} connections in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    // One gateway node holding all 10,000: two batches of 5,000 per round, back to back.
    let (rate, lat) = heartbeats(&client, &[(String::from("gw-0"), conns.clone())], RUN).await?;
    println!(
        "heartbeat, 1 node x 10,000 (2 calls of 5,000 per round): {rate:.0} renewals/s; call p50 {:.1} ms, p99 {:.1} ms",
        lat.p(0.50),
        lat.p(0.99)
    );

    // Four gateway nodes with 2,500 each, heartbeating concurrently (re-own the connections).
    let nodes: Vec<(String, Vec<pb::ConnectionRef>)> = conns
        .chunks(CONNECTIONS / 4)
        .enumerate()
        .map(|(i, c)| (format!("gw-{}", i + 1), c.to_vec()))
        .collect();
    for (node, chunk) in &nodes {
        let req = pb::UnregisterConnectionsRequest {
            node_id: "gw-0".into(),
            connections: chunk.clone(),
        };
        client.unregister_connections(req).await?;
        let req = pb::HeartbeatRequest {
            node_id: node.clone(),
            connections: chunk.clone(),
            ttl_seconds: 60,
        };
        client.heartbeat(req).await?;
    }
    let (rate, lat) = heartbeats(&client, &nodes, RUN).await?;
    println!(
        "heartbeat, 4 nodes x 2,500 concurrently (1 call each per round): {rate:.0} renewals/s; call p50 {:.1} ms, p99 {:.1} ms",
        lat.p(0.50),
        lat.p(0.99)
    );

    // GetPresence of 100 users: 80 online, 10 offline (seen), 10 never seen.
    let offline: Vec<pb::ConnectionRef> = conns[CONNECTIONS - 10..].to_vec();
    let req = pb::UnregisterConnectionsRequest {
        node_id: "gw-4".into(),
        connections: offline,
    };
    client.unregister_connections(req).await?;
    // Those ten are gone from gw-4: it no longer heartbeats them.
    let mut nodes = nodes;
    if let Some((_, last)) = nodes.last_mut() {
        last.truncate(last.len() - 10);
    }
    let query: Vec<String> = (0..80)
        .map(|i| format!("user{}", i * 97))
        .chain((CONNECTIONS - 10..CONNECTIONS).map(|i| format!("user{i}")))
        .chain((0..10).map(|i| format!("ghost{i}")))
        .collect();
    assert_eq!(query.len(), QUERY_USERS);
    let lat = get_presence(&mut client, &query, QUERIES).await?;
    println!(
        "GetPresence, {QUERY_USERS} users, sequential, idle: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({QUERIES} calls)",
        lat.p(0.50),
        lat.p(0.99),
        lat.p(1.0)
    );

    // The same while the four nodes heartbeat once a second each (staggered), i.e. 10,000
    // renewals/s: the load of 300,000 connections at the usual 30 s interval.
    let (rate, lat) = get_presence_during(
        &client,
        &nodes,
        Some(Duration::from_secs(1)),
        &query,
        QUERIES,
    )
    .await?;
    println!(
        "GetPresence, {QUERY_USERS} users, sequential, during paced heartbeats ({rate:.0} renewals/s): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        lat.p(0.50),
        lat.p(0.99),
        lat.p(1.0)
    );
    // Worst case: heartbeats back to back, Redis saturated by heartbeat scripts.
    let (rate, lat) = get_presence_during(&client, &nodes, None, &query, QUERIES / 10).await?;
    println!(
        "GetPresence, {QUERY_USERS} users, sequential, during saturating heartbeats ({rate:.0} renewals/s): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} calls)",
        lat.p(0.50),
        lat.p(0.99),
        lat.p(1.0),
        QUERIES / 10
    );
    Ok(())
}

/// Each node renews all its connections (in calls of at most BATCH) round after round for
/// `run`; returns renewals per second over all nodes and the latencies of the calls.
async fn heartbeats(
    client: &Client,
    nodes: &[(String, Vec<pb::ConnectionRef>)],
    run: Duration,
) -> anyhow::Result<(f64, Latencies)> {
    let stop = CancellationToken::new();
    let timer = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(run).await;
            stop.cancel();
        }
    });
    let result = heartbeats_until(client, nodes, None, stop).await;
    timer.abort();
    result
}

/// As [`heartbeats`], until `stop` is cancelled; with `pace`, each node starts a round only
/// every `pace` (the nodes staggered over it), as gateways do.
async fn heartbeats_until(
    client: &Client,
    nodes: &[(String, Vec<pb::ConnectionRef>)],
    pace: Option<Duration>,
    stop: CancellationToken,
) -> anyhow::Result<(f64, Latencies)> {
    let started = Instant::now();
    let n = nodes.len() as u32;
    let tasks: Vec<_> = nodes
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (node, conns))| {
            let (mut client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut renewed, mut lat) = (0usize, Vec::new());
                let mut tick = pace.map(|p| {
                    let first = tokio::time::Instant::now() + p * i as u32 / n;
                    tokio::time::interval_at(first, p)
                });
                while !stop.is_cancelled() {
                    if let Some(tick) = tick.as_mut() {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tick.tick() => {}
                        }
                    }
                    for chunk in conns.chunks(BATCH) {
                        let req = pb::HeartbeatRequest {
                            node_id: node.clone(),
                            connections: chunk.to_vec(),
                            ttl_seconds: 60,
                        };
                        let t = Instant::now();
                        let r = client.heartbeat(req).await?.into_inner();
                        lat.push(t.elapsed());
                        anyhow::ensure!(
                            r.rejected.is_empty() && r.restored.is_empty(),
                            "unexpected {r:?}"
                        );
                        renewed += chunk.len();
                    }
                }
                anyhow::Ok((renewed, lat))
            })
        })
        .collect();
    let (mut renewed, mut all) = (0, Vec::new());
    for t in tasks {
        let (n, lat) = t.await??;
        renewed += n;
        all.extend(lat);
    }
    Ok((
        renewed as f64 / started.elapsed().as_secs_f64(),
        Latencies::new(all),
    ))
}

/// GetPresence latencies while the nodes heartbeat (see [`heartbeats_until`]); also returns
/// the renewals per second achieved meanwhile.
async fn get_presence_during(
    client: &Client,
    nodes: &[(String, Vec<pb::ConnectionRef>)],
    pace: Option<Duration>,
    users: &[String],
    calls: usize,
) -> anyhow::Result<(f64, Latencies)> {
    let stop = CancellationToken::new();
    let load = tokio::spawn({
        let (client, nodes, stop) = (client.clone(), nodes.to_vec(), stop.clone());
        async move { heartbeats_until(&client, &nodes, pace, stop).await }
    });
    let lat = get_presence(&mut client.clone(), users, calls).await;
    stop.cancel();
    let (rate, _) = load.await??;
    Ok((rate, lat?))
}

async fn get_presence(
    client: &mut Client,
    users: &[String],
    calls: usize,
) -> anyhow::Result<Latencies> {
    let mut lat = Vec::with_capacity(calls);
    for i in 0..WARMUP + calls {
        let t = Instant::now();
        let got = client
            .get_presence(pb::GetPresenceRequest {
                user_ids: users.to_vec(),
            })
            .await?
            .into_inner();
        if i >= WARMUP {
            lat.push(t.elapsed());
        }
        anyhow::ensure!(got.presences.len() == users.len());
    }
    Ok(Latencies::new(lat))
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut v: Vec<Duration>) -> Self {
        v.sort();
        Self(v)
    }

    /// Quantile `q` in milliseconds.
    fn p(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i].as_secs_f64() * 1e3
    }
}

async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Client> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?;
    for _ in 0..200 {
        if let Ok(channel) = endpoint.connect().await {
            return Ok(PresenceServiceClient::new(channel));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("presence at {addr} never accepted connections")
}

async fn cleanup(url: &str, prefix: &str) -> anyhow::Result<()> {
    let mut c = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await?;
    for chunk in keys.chunks(1000) {
        redis::cmd("DEL")
            .arg(chunk)
            .query_async::<()>(&mut c)
            .await?;
    }
    Ok(())
}
