//! Benchmark (not a test) of the receipts service over gRPC, against a real Postgres and
//! Redis: GetUnread latency for a user in 1,000 channels holding 1,000,000 messages in
//! total, and MarkRead throughput.
//!
//!   cargo bench -p parley-receipts --bench receipts
//!
//! Postgres: `PARLEY_BENCH_PG_URL` (an admin URL; a database of its own is created and
//! dropped; default postgres://postgres@127.0.0.1:55432/postgres). Redis:
//! `PARLEY_BENCH_REDIS_URL` (default redis://127.0.0.1:56379; a unique key prefix is used).
//! The projection is seeded with SQL (watermarks store no messages: "1M messages" are the
//! channels' last_seq values); the stream consumer is off and messaging is never asked
//! (every mark is for a known member and a seq within the projected last_seq).

use parley_kit::config::Settings as _;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use parley_proto::receipts::v1::{self as pb, receipts_service_client::ReceiptsServiceClient};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use sqlx::{Connection as _, Executor as _};
use tokio_util::sync::CancellationToken;

const USER: &str = "bench-user";
const CHANNELS: i64 = 1_000;
const OTHER_MEMBERS: i64 = 19;
const BACKGROUND_CHANNELS: i64 = 100_000;
const BACKGROUND_MEMBERS: i64 = 10;
const UNREAD_CALLS: usize = 2_000;
const UNREAD_CONCURRENCY: usize = 8;
const MARK_CONCURRENCY: usize = 16;
const MARK_SECONDS: u64 = 10;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

fn replace_db(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, last)) if !last.contains('@') && !last.contains(':') => {
            let query = last
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            format!("{base}/{db}{query}")
        }
        _ => format!("{url}/{db}"),
    }
}

async fn run() -> anyhow::Result<()> {
    let admin = std::env::var("PARLEY_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432/postgres".into());
    let redis = std::env::var("PARLEY_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:56379".into());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db = format!("parley_bench_receipts_{}", &id[..12]);
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .context("connecting to PARLEY_BENCH_PG_URL")?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await?;
    let result = bench(
        &replace_db(&admin, &db),
        &redis,
        &format!("bench{}:", &id[..12]),
    )
    .await;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .await?;
    result
}

async fn bench(db_url: &str, redis_url: &str, prefix: &str) -> anyhow::Result<()> {
    let config = parley_receipts::Config::load(&parley_kit::config::Sources::from_vars([
        ("PARLEY__DATABASE__URL", db_url),
        ("PARLEY__DATABASE__MAX_CONNECTIONS", "16"),
        ("PARLEY__REDIS__URL", redis_url),
        ("PARLEY__REDIS__PREFIX", prefix),
        ("PARLEY__CONSUMER__ENABLED", "false"),
        // Never called: every mark below is within the projection.
        ("PARLEY__MESSAGING__URL", "http://127.0.0.1:9"),
    ]))?;
    let pool = parley_receipts::SCHEMA.open(&config.database).await?;

    let started = Instant::now();
    let expected_total = seed(&pool).await?;
    let messages: i64 = sqlx::query_scalar(
        "SELECT sum(c.last_seq)::bigint FROM channels c JOIN members m ON m.channel_id = c.id WHERE m.user_id = $1",
    )
    .bind(USER)
    .fetch_one(&pool)
    .await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM members")
        .fetch_one(&pool)
        .await?;
    println!(
        "seeded in {:.1}s: {USER} in {CHANNELS} channels holding {messages} messages (expected unread total {expected_total}); {rows} member rows in all",
        started.elapsed().as_secs_f64()
    );
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS) {}",
        parley_receipts::UNREAD_SQL
    )))
    .bind(USER)
    .fetch_all(&pool)
    .await?;
    println!("unread query plan:\n  {}", plan.join("\n  "));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(parley_receipts::serve(config, listener, shutdown.clone()));
    let client = ReceiptsServiceClient::connect(format!("http://{addr}")).await?;

    // GetUnread, one call at a time.
    let unread = |mut c: ReceiptsServiceClient<tonic::transport::Channel>| async move {
        let t = Instant::now();
        let r = c
            .get_unread(as_user(pb::GetUnreadRequest {}, USER))
            .await?
            .into_inner();
        anyhow::Ok((t.elapsed(), r))
    };
    for _ in 0..200 {
        unread(client.clone()).await?;
    }
    let (_, r) = unread(client.clone()).await?;
    anyhow::ensure!(
        r.total == expected_total as u64,
        "unread total {} != {expected_total}",
        r.total
    );
    println!(
        "GetUnread answer: total {} over {} channels",
        r.total,
        r.channels.len()
    );
    let mut lat = Vec::with_capacity(UNREAD_CALLS);
    let t = Instant::now();
    for _ in 0..UNREAD_CALLS {
        lat.push(unread(client.clone()).await?.0);
    }
    report(
        &format!("GetUnread sequential ({UNREAD_CALLS} calls)"),
        &mut lat,
        t.elapsed(),
    );

    // GetUnread, several callers at once.
    let t = Instant::now();
    let tasks: Vec<_> = (0..UNREAD_CONCURRENCY)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for _ in 0..UNREAD_CALLS / UNREAD_CONCURRENCY {
                    lat.push(unread(c.clone()).await?.0);
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await??);
    }
    report(
        &format!("GetUnread {UNREAD_CONCURRENCY} concurrent callers"),
        &mut lat,
        t.elapsed(),
    );

    // MarkRead: members of the bench channels reading forward at random.
    let changed = Arc::new(AtomicU64::new(0));
    let channels = Arc::new(channel_ids(&pool).await?);
    let deadline = Instant::now() + Duration::from_secs(MARK_SECONDS);
    let t = Instant::now();
    let tasks: Vec<_> = (0..MARK_CONCURRENCY)
        .map(|i| {
            let mut c = client.clone();
            let changed = changed.clone();
            let channels = channels.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(i as u64);
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let (ch, last) = &channels[rng.random_range(0..channels.len())];
                    let user = format!("m{}", rng.random_range(1..=OTHER_MEMBERS));
                    let seq = rng.random_range(1..=(*last).max(1)) as u64;
                    let s = Instant::now();
                    let r = c
                        .mark_read(as_user(
                            pb::MarkReadRequest {
                                channel_id: ch.clone(),
                                seq,
                            },
                            &user,
                        ))
                        .await?
                        .into_inner();
                    lat.push(s.elapsed());
                    if r.changed {
                        changed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await??);
    }
    let elapsed = t.elapsed();
    report(
        &format!("MarkRead {MARK_CONCURRENCY} concurrent callers, {MARK_SECONDS}s"),
        &mut lat,
        elapsed,
    );
    println!(
        "  of which changed a watermark: {}",
        changed.load(Ordering::Relaxed)
    );

    shutdown.cancel();
    server.await??;
    pool.close().await;
    Ok(())
}

fn as_user<T>(msg: T, user: &str) -> tonic::Request<T> {
    parley_kit::propagation::with_user(tonic::Request::new(msg), user).expect("valid user id")
}

async fn channel_ids(pool: &sqlx::PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    let rows: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT c.id, c.last_seq FROM channels c JOIN members m ON m.channel_id = c.id WHERE m.user_id = $1",
    )
    .bind(USER)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, last)| (id.to_string(), last))
        .collect())
}

/// Seeds the projection; returns the bench user's expected unread total.
async fn seed(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    let mut tx = pool.begin().await?;
    // The bench user's channels: last_seq 1..=1999, spread so that they add up to ~1M.
    sqlx::query(
        "CREATE TEMP TABLE bench_channels ON COMMIT DROP AS
         SELECT i, gen_random_uuid() AS id, 1 + (i * 7919) % 1999 AS last_seq FROM generate_series(1, $1::bigint) AS i",
    )
    .bind(CHANNELS)
    .execute(&mut *tx)
    .await?;
    // Everybody else: 100k channels of 10 members among 100k users (each in ~10 channels,
    // some of which they left), so that the tables and the index are not the bench user's
    // alone.
    sqlx::query(
        "CREATE TEMP TABLE bg_channels ON COMMIT DROP AS
         SELECT j, gen_random_uuid() AS id, (j % 500) AS last_seq FROM generate_series(1, $1::bigint) AS j",
    )
    .bind(BACKGROUND_CHANNELS)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO channels (id, last_seq)
         SELECT id, last_seq FROM bench_channels UNION ALL SELECT id, last_seq FROM bg_channels",
    )
    .execute(&mut *tx)
    .await?;
    // All memberships in random order, so the bench user's rows are scattered over the
    // heap as they would be after years of joins. The bench user has read all but (i % 50)
    // messages of each channel (every 50th channel fully read).
    sqlx::query(
        "INSERT INTO members (channel_id, user_id, active, joined_seq, delivered_seq, read_seq)
         SELECT * FROM (
             SELECT id, $1::text, true, 0::bigint, last_seq - LEAST(i % 50, last_seq), last_seq - LEAST(i % 50, last_seq)
             FROM bench_channels
             UNION ALL
             SELECT id, 'm' || k, true, 0, last_seq / 2, last_seq / 3
             FROM bench_channels, generate_series(1, $2::bigint) AS k
             UNION ALL
             SELECT id, 'bg' || ((j * 7 + k * 10007) % $4::bigint), k % 9 <> 0, 0, last_seq / 2, last_seq / 4
             FROM bg_channels, generate_series(1, $3::bigint) AS k
         ) AS rows ORDER BY random()",
    )
    .bind(USER)
    .bind(OTHER_MEMBERS)
    .bind(BACKGROUND_MEMBERS)
    .bind(BACKGROUND_CHANNELS)
    .execute(&mut *tx)
    .await?;
    let expected: i64 =
        sqlx::query_scalar("SELECT sum(LEAST(i % 50, last_seq))::bigint FROM bench_channels")
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    sqlx::query("VACUUM ANALYZE channels").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE members").execute(pool).await?;
    Ok(expected)
}

fn report(name: &str, lat: &mut [Duration], elapsed: Duration) {
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name}: {} calls in {:.2}s = {:.0}/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(lat[lat.len() - 1]),
    );
}
