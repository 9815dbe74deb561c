//! The `main` of a consuming service binary: one flag (`--config`, or
//! `EXO_CONFIG`), configuration loaded and checked (exit 64 when it is
//! wrong), a tokio runtime with the configured worker threads, telemetry,
//! a signal-driven shutdown token, then the service's `run`.

use std::future::Future;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::config::{self, CommonConfig};

/// What [`main`] needs of a service's configuration.
pub trait ServiceConfig: DeserializeOwned {
    /// The settings every service has.
    fn common(&self) -> &CommonConfig;

    /// Checks the configuration (by default [`CommonConfig::validate`]).
    fn validate(&self) -> Result<(), config::Error> {
        self.common().validate()
    }
}

/// Runs service `name` (`exo-retry`, …; `about` is its `--help` line) with
/// `run` until a shutdown signal.
pub fn main<C, R, F>(name: &'static str, about: &'static str, run: R) -> anyhow::Result<()>
where
    C: ServiceConfig,
    R: FnOnce(C, CancellationToken) -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    let args = clap::Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .about(about)
        .arg(
            clap::Arg::new("config")
                .long("config")
                .env("EXO_CONFIG")
                .value_name("CONFIG")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Optional TOML config file; EXO_* environment variables override it"),
        )
        .get_matches();
    let file = args.get_one::<PathBuf>("config");
    let cfg: C = config::load_or_exit(file.map(PathBuf::as_path), C::validate);
    let runtime = crate::runtime::build(cfg.common().worker_threads.unwrap_or(0))?;
    let result = runtime.block_on(async {
        crate::telemetry::init(name);
        run(cfg, crate::shutdown::signal_token()).await
    });
    crate::otel::flush();
    result
}
