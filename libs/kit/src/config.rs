//! Layered configuration: embedded defaults < optional TOML file < environment.
//!
//! Environment variables are `PARLEY__<SECTION>__<KEY>` (double underscores), e.g.
//! `PARLEY__DATABASE__URL`. The file comes from `PARLEY_CONFIG` or `--config <path>`.
//! Tests pass their own variable map so they never mutate the process environment.

use std::collections::HashMap;

use serde::de::DeserializeOwned;

pub use config::ConfigError;

/// Where the settings come from, beyond the embedded defaults.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// Optional TOML file.
    pub file: Option<std::path::PathBuf>,
    /// Variables to read instead of the process environment (tests).
    pub env: Option<HashMap<String, String>>,
}

impl Sources {
    /// The process environment plus `--config <path>` / `PARLEY_CONFIG`.
    pub fn from_process() -> Self {
        let mut args = std::env::args().skip(1);
        let mut file = std::env::var_os("PARLEY_CONFIG").map(Into::into);
        while let Some(a) = args.next() {
            if a == "--config" {
                file = args.next().map(Into::into);
            } else if let Some(p) = a.strip_prefix("--config=") {
                file = Some(p.into());
            }
        }
        Self { file, env: None }
    }

    /// Only the given variables (names like `PARLEY__HTTP__ADDR`).
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            file: None,
            env: Some(
                vars.into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }
}

/// Loads `T` from `defaults` (TOML text embedded in the binary) and the sources.
pub fn load<T: DeserializeOwned>(
    defaults: &str,
    sources: &Sources,
) -> Result<T, config::ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(defaults, config::FileFormat::Toml));
    if let Some(path) = &sources.file {
        builder = builder.add_source(config::File::from(path.as_path()).required(true));
    }
    let mut env = config::Environment::with_prefix("PARLEY")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true);
    if let Some(vars) = &sources.env {
        env = env.source(Some(vars.clone().into_iter().collect()));
    }
    builder.add_source(env).build()?.try_deserialize()
}

/// A service's configuration: embedded defaults, layered sources, then its own checks.
pub trait Settings: DeserializeOwned {
    /// The defaults (TOML text embedded in the binary).
    const DEFAULTS: &'static str;

    /// Checks that the values make sense together (a message naming the setting).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Loads defaults < file < environment, then validates.
    fn load(sources: &Sources) -> Result<Self, config::ConfigError> {
        let c: Self = load(Self::DEFAULTS, sources)?;
        c.validate().map_err(config::ConfigError::Message)?;
        Ok(c)
    }
}

/// True when the process was started with `--print-config`.
pub fn print_requested() -> bool {
    std::env::args().any(|a| a == "--print-config")
}
