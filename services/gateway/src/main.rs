//! `parley-gateway`: loads config, initialises telemetry, binds, serves.

use anyhow::Context as _;

// mimalloc: cheaper allocations than glibc malloc on the hot paths, and freed memory is
// returned to the OS (idle connections).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = parley_gateway::Config::load(&parley_kit::config::Sources::from_process())
        .context("loading configuration")?;
    if parley_kit::config::print_requested() {
        println!("{config:#?}");
        return Ok(());
    }
    let _telemetry = parley_kit::telemetry::init("gateway")?;
    let listener = tokio::net::TcpListener::bind(&config.http.addr)
        .await
        .with_context(|| format!("binding {}", config.http.addr))?;
    tracing::info!(addr = %listener.local_addr()?, dev_tokens = config.auth.dev_tokens, "listening (HTTP, WebSocket)");
    parley_gateway::serve(config, listener, parley_kit::shutdown::on_signal()).await
}
