//! Dependency health as metrics: `db_pool_connections{service,state}` (in use / idle /
//! max), `db_up{service}` (1 when `SELECT 1` answers) and `redis_up{service}` (1 when PING
//! answers), sampled every few seconds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Samples `pool` and `redis` (either may be absent) until `shutdown` (a background task:
/// `parley_kit::server::Background::spawn`).
pub async fn sample(
    service: &'static str,
    pool: Option<sqlx::PgPool>,
    redis: Option<redis::aio::ConnectionManager>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(p) = &pool {
            let size = f64::from(p.size());
            let idle = p.num_idle() as f64;
            let max = f64::from(p.options().get_max_connections());
            metrics::gauge!("db_pool_connections", "service" => service, "state" => "in_use")
                .set(size - idle);
            metrics::gauge!("db_pool_connections", "service" => service, "state" => "idle")
                .set(idle);
            metrics::gauge!("db_pool_connections", "service" => service, "state" => "max").set(max);
            let ping = sqlx::query("SELECT 1").execute(p);
            let up = tokio::time::timeout(Duration::from_secs(2), ping)
                .await
                .is_ok_and(|r| r.is_ok());
            metrics::gauge!("db_up", "service" => service).set(if up { 1.0 } else { 0.0 });
        }
        if let Some(r) = &redis {
            let mut conn = r.clone();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            let up = tokio::time::timeout(Duration::from_secs(2), ping)
                .await
                .is_ok_and(|r| r.is_ok());
            metrics::gauge!("redis_up", "service" => service).set(if up { 1.0 } else { 0.0 });
        }
    }
}
