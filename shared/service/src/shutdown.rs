//! Signal handling: SIGTERM or SIGINT cancels the returned token; a second
//! signal exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Returns a token cancelled by the first SIGTERM or SIGINT. Must be called
/// inside a Tokio runtime.
pub fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("Could not install signal handlers; shutdown only by kill.");
            return;
        };
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if t.is_cancelled() {
                tracing::warn!(signal = name, "Second signal, exiting now.");
                std::process::exit(130);
            }
            tracing::info!(signal = name, "Shutdown requested.");
            t.cancel();
        }
    });
    token
}
