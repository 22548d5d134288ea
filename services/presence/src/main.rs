//! `parley-presence`: loads config, initialises telemetry, binds, serves.

use anyhow::Context as _;

// mimalloc: cheaper allocations than glibc malloc on the hot paths, and freed memory is
// returned to the OS (idle connections).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = parley_presence::Config::load(&parley_kit::config::Sources::from_process())
        .context("loading configuration")?;
    if parley_kit::config::print_requested() {
        println!("{config:#?}");
        return Ok(());
    }
    let _telemetry = parley_kit::telemetry::init("presence")?;
    let listener = tokio::net::TcpListener::bind(&config.grpc.addr)
        .await
        .with_context(|| format!("binding {}", config.grpc.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "listening (gRPC, /metrics)");
    parley_presence::serve(config, listener, parley_kit::shutdown::on_signal()).await
}
