//! Where the workspace, the server binaries and the built service binaries are.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Oldest nats-server accepted from `PATH` (Debian's 2.9 lacks what JetStream code here needs).
const MIN_NATS_VERSION: (u32, u32) = (2, 10);

/// The workspace root: two levels above this crate's manifest (`shared/test-support`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// The `nats-server` binary to use in tests.
///
/// In order: `EXO_NATS_SERVER_BIN`; `<root>/.tools/nats/bin/nats-server` (from
/// `deploy/install.sh`); `nats-server` on `PATH`, but only if `--version` reports 2.10 or newer.
///
/// # Errors
///
/// When none is found, when `EXO_NATS_SERVER_BIN` names a missing file, or when the one on
/// `PATH` is too old (Debian ships 2.9); the message says to run `deploy/install.sh`.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EXO_NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !is_executable(&p) {
            bail!(
                "EXO_NATS_SERVER_BIN={} is not an executable file; run deploy/install.sh",
                p.display()
            );
        }
        return Ok(p);
    }
    let local = workspace_root().join(".tools/nats/bin/nats-server");
    if is_executable(&local) {
        return Ok(local);
    }
    let Some(p) = find_on_path("nats-server") else {
        bail!(
            "nats-server not found (looked at EXO_NATS_SERVER_BIN, {}, PATH); run deploy/install.sh",
            local.display()
        );
    };
    let out = Command::new(&p)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", p.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match parse_nats_version(&text) {
        Some(v) if v >= MIN_NATS_VERSION => Ok(p),
        Some((major, minor)) => bail!(
            "{} is nats-server {major}.{minor}, but {}.{} or newer is required (Debian's 2.9 \
             silently ignores several filter subjects and cannot create KV buckets for \
             async-nats 0.51); run deploy/install.sh, which installs 2.15.1 into .tools/nats",
            p.display(),
            MIN_NATS_VERSION.0,
            MIN_NATS_VERSION.1
        ),
        None => bail!(
            "cannot read the version of {} ({:?}); run deploy/install.sh",
            p.display(),
            text.trim()
        ),
    }
}

/// The MongoDB-wire server binary (`secantusd-rs`) to use in tests.
///
/// In order: `EXO_SECANTUSD_BIN`; `$CARGO_HOME/bin/secantusd-rs` (default
/// `~/.cargo/bin/secantusd-rs`); `secantusd-rs` on `PATH`.
///
/// # Errors
///
/// When none is found or `EXO_SECANTUSD_BIN` names a missing file; the message says to run
/// `deploy/install.sh`.
pub fn mongo_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EXO_SECANTUSD_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !is_executable(&p) {
            bail!(
                "EXO_SECANTUSD_BIN={} is not an executable file; run deploy/install.sh",
                p.display()
            );
        }
        return Ok(p);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = &cargo_home {
        let p = home.join("bin/secantusd-rs");
        if is_executable(&p) {
            return Ok(p);
        }
    }
    if let Some(p) = find_on_path("secantusd-rs") {
        return Ok(p);
    }
    bail!(
        "secantusd-rs not found (looked at EXO_SECANTUSD_BIN, ~/.cargo/bin, PATH); run \
         deploy/install.sh (it runs `cargo install secantus-mdb`), or point EXO_TEST_MONGO_URI \
         at an existing MongoDB replica set"
    )
}

/// The path of a built workspace binary: `<target>/<profile>/<name>`.
///
/// `<target>` is `CARGO_TARGET_DIR` when set (relative paths are taken from the workspace
/// root), else `<root>/target`; `<profile>` is `EXO_BIN_PROFILE` when set (e.g. `release`
/// for benchmarks), else `debug`.
///
/// # Errors
///
/// When the file does not exist; the message says to run `cargo build --workspace --bins`.
pub fn service_bin(name: &str) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let profile = std::env::var("EXO_BIN_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "debug".to_string());
    let bin = target.join(profile).join(name);
    if !is_executable(&bin) {
        bail!(
            "service binary {} not found; run `cargo build --workspace --bins` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// `name` in one of the `PATH` directories, if it is an executable file there.
pub(crate) fn find_on_path(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name.as_ref()))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `(major, minor)` from `nats-server: v2.15.1` (or `nats-server version 2.9.10`).
fn parse_nats_version(text: &str) -> Option<(u32, u32)> {
    text.split(|c: char| c.is_whitespace() || c == ':')
        .map(|w| w.trim_start_matches('v'))
        .find_map(|w| {
            let mut parts = w.split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            Some((major, minor))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nats_versions() {
        assert_eq!(parse_nats_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_nats_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_nats_version("version 2.10.0-beta"), Some((2, 10)));
        assert_eq!(parse_nats_version("garbage"), None);
        assert!(parse_nats_version("nats-server: v2.9.10").unwrap() < MIN_NATS_VERSION);
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let root = workspace_root();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn missing_service_bin_says_how_to_build() {
        let err = service_bin("exo-no-such-binary").unwrap_err().to_string();
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
    }
}
