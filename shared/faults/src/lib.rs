//! Named crash points at every side-effect boundary.
//!
//! Services call [`point`] right after every MongoDB commit, after every
//! publish is acknowledged and before every message is settled. In a normal
//! process a point does nothing (one relaxed atomic load). A fault test
//! starts a service with the `FAILPOINTS` environment variable of the
//! maintained [`fail`] crate, for example
//!
//! ```text
//! FAILPOINTS='store.commit=3*off->return'
//! ```
//!
//! which lets the point pass three times and **aborts the process** on the
//! fourth hit, exactly like `kill -9` at that instant (no destructor, no
//! flush, no ack). The action `return(error)` instead makes [`point`] return
//! [`Injected`], an infrastructure error, so in-process tests can interrupt a
//! handler at a boundary and deliver the message again.
//!
//! With `EXO_FAILPOINTS_TRACE=1` every hit is written to stderr as
//! `exo-failpoint <name>`, so a driver can count the hits of a fault-free run
//! and then crash at each of them in turn.
//!
//! Points are live only in debug builds (the test binaries); in release
//! builds [`point`] is an empty function and the `FAILPOINTS` variable is
//! ignored.

use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACE: AtomicBool = AtomicBool::new(false);

/// The injected failure returned by a point configured with `return(error)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected(pub &'static str);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "injected failure at {}", self.0)
    }
}

impl std::error::Error for Injected {}

/// Reads `FAILPOINTS` and `EXO_FAILPOINTS_TRACE` once, at process start.
/// Returns true when points are live. Release builds ignore both.
pub fn init_from_env() -> bool {
    if !cfg!(debug_assertions) {
        return false;
    }
    let configured = std::env::var("FAILPOINTS").is_ok_and(|v| !v.trim().is_empty());
    let trace = std::env::var("EXO_FAILPOINTS_TRACE").is_ok_and(|v| !v.is_empty() && v != "0");
    if configured {
        // Panics on a malformed FAILPOINTS value, which is what a test wants.
        std::mem::forget(fail::FailScenario::setup());
    }
    TRACE.store(trace, Ordering::Relaxed);
    ENABLED.store(configured || trace, Ordering::Relaxed);
    configured || trace
}

/// Configures one point in this process (in-process tests); `actions` uses
/// the `fail` crate's syntax, e.g. `"2*off->return(error)"`.
pub fn configure(name: &str, actions: &str) -> Result<(), String> {
    if !cfg!(debug_assertions) {
        return Err("fail points are compiled out of release builds".into());
    }
    fail::cfg(name, actions)?;
    ENABLED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Removes the configuration of one point (in-process tests).
pub fn clear(name: &str) {
    fail::remove(name);
}

/// A crash point. Passes unless configured: aborts the process (any action
/// but `return(error)`) or returns [`Injected`] (`return(error)`).
#[inline]
pub fn point(name: &'static str) -> Result<(), Injected> {
    if !cfg!(debug_assertions) || !ENABLED.load(Ordering::Relaxed) {
        return Ok(());
    }
    hit(name)
}

#[cold]
fn hit(name: &'static str) -> Result<(), Injected> {
    if TRACE.load(Ordering::Relaxed) {
        eprintln!("exo-failpoint {name}");
    }
    fail::fail_point!(name, |arg: Option<String>| {
        if arg.as_deref() == Some("error") {
            Err(Injected(name))
        } else {
            eprintln!("exo-failpoint {name}: crashing (abort)");
            std::process::abort()
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfigured_points_pass_and_configured_ones_fire_on_the_right_hit() {
        assert_eq!(point("t.unconfigured"), Ok(()));
        configure("t.counted", "2*off->return(error)").expect("valid actions");
        assert_eq!(point("t.counted"), Ok(()));
        assert_eq!(point("t.counted"), Ok(()));
        assert_eq!(point("t.counted"), Err(Injected("t.counted")));
        clear("t.counted");
        assert_eq!(point("t.counted"), Ok(()));
        assert_eq!(point("t.unconfigured"), Ok(()));
    }
}
