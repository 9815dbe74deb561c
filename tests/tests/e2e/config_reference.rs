//! docs/deploy.md's configuration reference is generated from the
//! configuration structs (`exo_service::reference`), and kept true: every
//! documented variable sets the setting it names, and every variable the
//! code reads is documented.
//!
//! Regenerate after changing a configuration struct:
//! `EXO_BLESS=1 cargo nextest run -p exo-e2e -E 'test(config_reference)'`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use exo_service::config::CommonConfig;
use exo_service::reference::{PROCESS_ENV, Setting, process_env_table, settings, table};
use serde_json::Value;

const BEGIN: &str = "<!-- config-reference:begin -->";
const END: &str = "<!-- config-reference:end -->";

fn doc_path() -> PathBuf {
    exo_test_support::workspace_root().join("docs/deploy.md")
}

/// `(heading, settings)` per service: the shared ones, then what each
/// service adds.
fn sections() -> Vec<(&'static str, Vec<Setting>)> {
    let common = settings::<CommonConfig>();
    let only = |all: Vec<Setting>| -> Vec<Setting> {
        all.into_iter()
            .filter(|s| !common.iter().any(|c| c.env == s.env))
            .collect()
    };
    vec![
        ("Every service", common.clone()),
        ("exo-api", only(settings::<exo_api::Config>())),
        ("exo-trigger", only(settings::<exo_trigger::Config>())),
        ("exo-completion", only(settings::<exo_completion::Config>())),
        (
            "exo-scheduler and exo-retry",
            only(settings::<exo_engine::worker::Config>()),
        ),
    ]
}

fn generated() -> String {
    let mut md = String::from(BEGIN);
    md.push('\n');
    for (heading, list) in sections() {
        md.push_str(&format!("\n### {heading}\n\n{}", table(&list)));
    }
    md.push_str(&format!(
        "\n### Process environment\n\nRead by every binary outside the settings above.\n\n{}",
        process_env_table()
    ));
    md.push('\n');
    md.push_str(END);
    md
}

#[test]
fn config_reference_in_docs_matches_the_structs() -> anyhow::Result<()> {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path)?;
    let (start, end) = match (doc.find(BEGIN), doc.find(END)) {
        (Some(s), Some(e)) if s < e => (s, e + END.len()),
        _ => anyhow::bail!("{} has no {BEGIN} … {END} block", path.display()),
    };
    let want = generated();
    if doc[start..end] == want {
        return Ok(());
    }
    if std::env::var_os("EXO_BLESS").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &doc[..start], &doc[end..]))?;
        return Ok(());
    }
    anyhow::bail!(
        "docs/deploy.md's configuration reference is out of date; regenerate it with \
         EXO_BLESS=1 cargo nextest run -p exo-e2e -E 'test(config_reference)'"
    )
}

/// A value of `kind` unlike any default.
fn probe(kind: &str) -> &'static str {
    match kind {
        k if k.contains("integer") => "7",
        k if k.contains("boolean") => "true",
        _ => "x-probe",
    }
}

/// The serialised configuration `T` loads from `env`.
fn loaded<T>(env: &[(&str, &str)]) -> anyhow::Result<Value>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(serde_json::to_value(exo_service::config::load_from::<T>(
        None, env,
    )?)?)
}

fn at<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(v, |v, part| v.get(part))
}

/// Every listed variable (and alias) sets its key; returns the settings
/// that are never serialised (secrets), which cannot be read back.
fn check_type<T>(failures: &mut Vec<String>) -> anyhow::Result<BTreeSet<String>>
where
    T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + Default,
{
    let base = loaded::<T>(&[])?;
    let mut unreadable = BTreeSet::new();
    for s in settings::<T>() {
        let Some(before) = at(&base, &s.key) else {
            unreadable.insert(s.env.clone());
            continue;
        };
        let value = probe(&s.kind);
        let names = std::iter::once(s.env.as_str()).chain(s.alias);
        for name in names {
            let after = loaded::<T>(&[(name, value)])?;
            if at(&after, &s.key) == Some(before) {
                failures.push(format!("{name}={value} did not change `{}`", s.key));
            }
        }
    }
    Ok(unreadable)
}

#[test]
fn every_documented_variable_sets_its_setting() -> anyhow::Result<()> {
    let mut failures = Vec::new();
    let mut unreadable = check_type::<exo_api::Config>(&mut failures)?;
    unreadable.extend(check_type::<exo_trigger::Config>(&mut failures)?);
    unreadable.extend(check_type::<exo_completion::Config>(&mut failures)?);
    unreadable.extend(check_type::<exo_engine::worker::Config>(&mut failures)?);
    assert!(failures.is_empty(), "{failures:#?}");
    // Only secrets are never serialised.
    let secrets: BTreeSet<String> = [
        "EXO_API__KEY",
        "EXO_API__SECRETS_ENCRYPTION_KEY",
        "EXO_NATS__NKEY_SEED",
        "EXO_NATS__PASSWORD",
        "EXO_NATS__TOKEN",
    ]
    .map(String::from)
    .into();
    assert_eq!(unreadable, secrets);
    Ok(())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        // The CLI is no service: its variables are docs/cli.md's (checked below).
        let skip = ["tests", "examples", "test-support", "target", "cli"];
        if path.is_dir() && !skip.contains(&name.as_str()) {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Upper-case string literals passed to an environment lookup in `code`.
fn env_reads(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for call in [
        "env::var(\"",
        "env::var_os(\"",
        "env_count(\"",
        ".env(\"",
        "env = \"",
    ] {
        for (i, _) in code.match_indices(call) {
            let rest = &code[i + call.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !name.is_empty() && rest[name.len()..].starts_with('"') {
                found.insert(name);
            }
        }
    }
    // Lists of names checked in a loop (`["OTEL_…", …].iter().any(…)`).
    for (i, _) in code.match_indices("\"OTEL_") {
        let name: String = code[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        found.insert(name);
    }
    found
}

#[test]
fn every_variable_the_services_read_is_in_the_config_reference() -> anyhow::Result<()> {
    let root = exo_test_support::workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("services"), &mut files);
    rust_files(&root.join("shared"), &mut files);
    let mut read = BTreeSet::new();
    let mut all_code = String::new();
    for f in &files {
        let code = std::fs::read_to_string(f)?;
        read.extend(env_reads(&code));
        all_code.push_str(&code);
    }
    assert!(
        read.contains("EXO_MAX_OUTPUTS"),
        "the scan finds env reads: {read:?}"
    );
    let mut documented: BTreeSet<String> =
        PROCESS_ENV.iter().map(|(n, _, _)| n.to_string()).collect();
    for (_, list) in sections() {
        documented.extend(list.iter().map(|s| s.env.clone()));
        documented.extend(list.iter().filter_map(|s| s.alias.map(String::from)));
    }
    let missing: Vec<_> = read.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "read by the code, not in the reference: {missing:?}"
    );
    // Defaults stated in the table are the constants the code uses.
    let stated = |name: &str| {
        PROCESS_ENV
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, d, _)| *d)
    };
    assert_eq!(
        stated("EXO_FANOUT_CHUNK"),
        Some(format!("`{}`", exo_completion::handlers::CHUNK).as_str())
    );
    assert_eq!(
        stated("EXO_OUTBOX_STALE_MS"),
        Some(format!("`{}`", exo_engine::lifecycle::STALE_OUTBOX_MS).as_str())
    );
    let stale: Vec<_> = PROCESS_ENV
        .iter()
        .map(|(n, _, _)| *n)
        .filter(|n| !all_code.contains(&format!("\"{n}\"")))
        .collect();
    assert!(stale.is_empty(), "documented, read nowhere: {stale:?}");
    Ok(())
}

#[test]
fn every_variable_the_cli_reads_is_in_its_guide() -> anyhow::Result<()> {
    let root = exo_test_support::workspace_root();
    let mut read = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("services/cli/src"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            read.extend(env_reads(&std::fs::read_to_string(path)?));
        }
    }
    assert!(
        read.contains("EXO_URL"),
        "the scan finds clap's env: {read:?}"
    );
    let guide = std::fs::read_to_string(root.join("docs/cli.md"))?;
    let missing: Vec<_> = read
        .iter()
        .filter(|v| !["HOME", "PATH"].contains(&v.as_str()))
        .filter(|v| !guide.contains(&format!("`{v}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the CLI, not in docs/cli.md: {missing:?}"
    );
    Ok(())
}
