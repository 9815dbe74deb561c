//! A `TEST_LOG`-gated tracing subscriber for tests.

use std::sync::Once;

use tracing_subscriber::EnvFilter;

/// Installs a tracing subscriber for tests, once per process; later calls do nothing.
///
/// Nothing is printed unless `TEST_LOG` is set (to any value). The filter comes from
/// `RUST_LOG`, default `info`. Output goes through the test harness's capture, so
/// `cargo test` shows it only for failing tests unless `--nocapture` is given. If another
/// global subscriber was installed first, that one is kept.
pub fn init_test_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_none() {
            return;
        }
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
