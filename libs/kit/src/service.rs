//! A service binary's `main`, once: load the configuration (`--config`, `PARLEY_CONFIG`,
//! `PARLEY__…` variables), `--print-config` (secrets redacted by the config's `Debug`),
//! telemetry, `--migrate-only` for the services that own a schema, bind, serve until
//! SIGTERM/SIGINT.

use std::future::Future;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Settings, Sources},
    db::{DatabaseConfig, Schema},
};

/// What a gRPC service's listener serves (for the log line).
pub const GRPC: &str = "gRPC, /metrics";

/// What `main` needs to know of a service binary.
pub struct Binary<C> {
    /// The service's name (telemetry, logs).
    pub name: &'static str,
    /// What the listener serves, for the log line.
    pub serves: &'static str,
    /// The address to listen on.
    pub addr: fn(&C) -> &str,
    /// The schema the service owns and its database settings, for `--migrate-only` (a
    /// Job per rollout); `None` when it owns none.
    pub schema: Option<(&'static Schema, DatabaseOf<C>)>,
}

/// Where a configuration keeps its database settings.
pub type DatabaseOf<C> = fn(&C) -> &DatabaseConfig;

/// The whole `main` of a service binary: `serve(config, listener, shutdown)` runs until
/// the first SIGTERM/SIGINT cancels `shutdown` (a second one exits at once).
pub async fn main<C, F>(
    binary: Binary<C>,
    serve: impl FnOnce(C, TcpListener, CancellationToken) -> F,
) -> anyhow::Result<()>
where
    C: Settings + std::fmt::Debug,
    F: Future<Output = anyhow::Result<()>>,
{
    let config = C::load(&Sources::from_process()).context("loading configuration")?;
    if crate::config::print_requested() {
        println!("{config:#?}");
        return Ok(());
    }
    let _telemetry = crate::telemetry::init(binary.name)?;
    if std::env::args().any(|a| a == "--migrate-only") {
        let Some((schema, database)) = binary.schema else {
            anyhow::bail!("{} owns no schema: nothing to migrate", binary.name);
        };
        // Safe to run twice and concurrently: migrations take a Postgres advisory lock.
        schema.open(database(&config)).await?.close().await;
        tracing::info!(schema = schema.name, "migrations applied");
        return Ok(());
    }
    let addr = (binary.addr)(&config).to_owned();
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, serves = binary.serves, "listening");
    serve(config, listener, crate::shutdown::on_signal()).await
}
