//! Postgres plumbing shared by the services that own a schema: a pool whose connections
//! use that schema, and migrations applied under an advisory lock.

use std::time::Duration;

use sqlx::{
    PgPool,
    migrate::{MigrateError, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// `[database]` of a service that owns a schema.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

/// The schema a service owns: its name, the advisory lock its migrations run under (one
/// per service, so replicas starting together do not race), and the migrations.
pub struct Schema {
    pub name: &'static str,
    /// `application_name` of its connections (shown in `pg_stat_activity`).
    pub application: &'static str,
    pub lock_key: i64,
    pub migrator: &'static Migrator,
}

impl Schema {
    /// A pool whose connections use this schema.
    pub async fn connect(&self, cfg: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
        connect(
            &cfg.url,
            self.name,
            self.application,
            cfg.max_connections,
            Duration::from_millis(cfg.acquire_timeout_ms),
        )
        .await
    }

    /// Creates the schema and applies the migrations (safe to run any number of times,
    /// concurrently too).
    pub async fn migrate(&self, pool: &PgPool) -> Result<(), MigrateError> {
        migrate(pool, self.name, self.lock_key, self.migrator).await
    }

    /// [`Schema::connect`], then [`Schema::migrate`].
    pub async fn open(&self, cfg: &DatabaseConfig) -> anyhow::Result<PgPool> {
        let pool = self.connect(cfg).await?;
        self.migrate(&pool).await?;
        Ok(pool)
    }
}

/// A pool on `url` whose connections have `search_path = <schema>`.
pub async fn connect(
    url: &str,
    schema: &'static str,
    application_name: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    let opts = url
        .parse::<PgConnectOptions>()?
        .options([("search_path", schema)])
        .application_name(application_name);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_with(opts)
        .await
}

/// Creates `schema` and applies `migrator`, holding the advisory lock `lock_key` so that
/// replicas (or a migration job) starting together do not race. Safe to run any number of
/// times.
pub async fn migrate(
    pool: &PgPool,
    schema: &'static str,
    lock_key: i64,
    migrator: &Migrator,
) -> Result<(), MigrateError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await?;
    let result = create_and_run(&mut conn, schema, migrator).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await?;
    result
}

// A plain async fn (not an async block borrowing the connection): futures built this way
// stay Send for every lifetime, which the services' spawned `serve` futures need.
async fn create_and_run(
    conn: &mut sqlx::PgConnection,
    schema: &'static str,
    migrator: &Migrator,
) -> Result<(), MigrateError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&mut *conn)
    .await?;
    // `run_direct` (not `run`) sidesteps sqlx's "Acquire is not general enough" error.
    migrator.run_direct(None, conn, false).await
}

/// SQLSTATEs by which the database refuses a value that came from the caller: a byte
/// sequence it cannot store (NUL in text: 22021, 22P05), text too long for its column
/// (22001), text that is not valid for its type (22P02), a value too big for an index row
/// (54000). Other data exceptions (overflows in the service's own arithmetic, dates) are
/// the service's bugs and stay `internal`.
const CALLER_DATA_ERRORS: &[&str] = &["22021", "22P05", "22001", "22P02", "54000"];

/// Whether the database refused a value the caller supplied ([`CALLER_DATA_ERRORS`]).
/// Retrying such a request cannot succeed; it is the caller's error, not the service's.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    sqlx_sqlstate(e).is_some_and(|c| CALLER_DATA_ERRORS.contains(&c.as_str()))
}

fn sqlx_sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The API status of a database error: `unavailable` when the database cannot be reached
/// (safe to retry), `invalid_argument` when it refused a value the caller supplied
/// ([`is_data_error`]), `internal` otherwise. Details go to the log, never to the caller.
pub fn status(e: &sqlx::Error) -> tonic::Status {
    let unreachable = matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    );
    if unreachable {
        tracing::warn!(error = %e, "database unavailable");
        crate::ErrorCode::Unavailable.status("database unavailable")
    } else if is_data_error(e) {
        let code = sqlx_sqlstate(e).unwrap_or_default();
        // Each one is a value the edge's validation let through: worth a look.
        tracing::warn!(error = %e, sqlstate = %code, "the database refused a value");
        metrics::counter!("db_values_refused_total", "sqlstate" => code.clone()).increment(1);
        crate::ErrorCode::InvalidArgument.status(format!(
            "a value in the request cannot be stored (SQLSTATE {code})"
        ))
    } else {
        tracing::error!(error = %e, "database error");
        crate::ErrorCode::Internal.status("internal error")
    }
}

/// The API status of a migration error (always `internal`).
pub fn migrate_status(e: &MigrateError) -> tonic::Status {
    tracing::error!(error = %e, "migration error");
    crate::ErrorCode::Internal.status("internal error")
}
