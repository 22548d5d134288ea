//! `parley-messaging`: loads config, initialises telemetry, binds, serves.

use anyhow::Context as _;

// mimalloc: cheaper allocations than glibc malloc on the hot paths, and freed memory is
// returned to the OS (idle connections).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = parley_messaging::Config::load(&parley_kit::config::Sources::from_process())
        .context("loading configuration")?;
    if parley_kit::config::print_requested() {
        println!("{config:#?}");
        return Ok(());
    }
    let _telemetry = parley_kit::telemetry::init("messaging")?;
    if std::env::args().any(|a| a == "--migrate-only") {
        // One-off schema migration (a Kubernetes Job per rollout); safe to run twice and
        // concurrently: migrations take a Postgres advisory lock.
        let pool = parley_messaging::connect_db(&config.database).await?;
        parley_messaging::migrate(&pool).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(&config.grpc.addr)
        .await
        .with_context(|| format!("binding {}", config.grpc.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "listening (gRPC, /metrics)");
    parley_messaging::serve(config, listener, parley_kit::shutdown::on_signal()).await
}
