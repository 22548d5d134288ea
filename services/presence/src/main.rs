//! `parley-presence`: loads config, initialises telemetry, binds, serves.

// mimalloc: cheaper allocations than glibc malloc on the hot paths, and freed memory is
// returned to the OS (idle connections).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parley_kit::service::main(parley_presence::BINARY, parley_presence::serve).await
}
