//! Issue 16 item 5: the repository named a `DESIGN.md` that was not in it and a
//! `tests/ecosystem_config.rs` that did not exist. Cheap checks that stop it recurring:
//!
//! - `every_path_the_repository_names_exists`: every relative path that a tracked text
//!   file names — under `src/`, `tests/`, `deploy/`, `docs/`, `examples/`, `scripts/`,
//!   `benches/`, `alerts/`, `dashboards/`, a `../` path, or a top-level `*.md` — exists
//!   in the repository (a glob such as `tests/*.rs` counts by its directory).
//! - `design_doc_lists_exactly_the_registered_metrics`: the metric names in
//!   `docs/design.md` ("Metric names") are exactly those `src/metrics.rs` registers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Folders whose paths the docs and comments name.
const ROOTS: &[&str] = &[
    "src/",
    "tests/",
    "deploy/",
    "docs/",
    "examples/",
    "scripts/",
    "benches/",
    "alerts/",
    "dashboards/",
    ".ci/",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tracked files (the index, so a file being added counts), text only.
fn tracked_text_files() -> Vec<(String, String)> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .expect("running git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    let mut files = Vec::new();
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let path = repo().join(&name);
        // Deleted in the work tree but still in the index: nothing to read.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if name == "Cargo.lock" || bytes.contains(&0) {
            continue;
        }
        if let Ok(text) = String::from_utf8(bytes) {
            files.push((name, text));
        }
    }
    files
}

/// The relative paths `text` names: words made of path characters that start with one
/// of [`ROOTS`] or `../`, or are a top-level `NAME.md` in capitals. A word that begins
/// with `/` (a path inside a container or on the host) or follows one is not ours.
fn named_paths(text: &str) -> Vec<String> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let mut found = Vec::new();
    let mut word = String::new();
    let mut prev_boundary = ' ';
    // `after == '*'`: a glob (`tests/ecosystem_*.rs`), kept with its `*` as a prefix.
    let mut flush = |word: &mut String, before: char, after: char| {
        let mut w = if after == '*' {
            word.clone()
        } else {
            word.trim_end_matches(['.', '-']).to_string()
        };
        word.clear();
        if w.is_empty() || before == '/' || before == '~' || before == '$' || before == ':' {
            return;
        }
        let upper_md = w.ends_with(".md")
            && !w.contains('/')
            && w[..w.len() - 3]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_');
        if upper_md || ROOTS.iter().any(|r| w.starts_with(r)) || w.starts_with("../") {
            if after == '*' {
                w.push('*');
            }
            found.push(w);
        }
    };
    for c in text.chars() {
        if is_path_char(c) {
            word.push(c);
        } else {
            if !word.is_empty() {
                flush(&mut word, prev_boundary, c);
            }
            prev_boundary = c;
        }
    }
    if !word.is_empty() {
        flush(&mut word, prev_boundary, ' ');
    }
    found
}

#[test]
fn the_path_finder_finds_what_went_missing_before() {
    let text = "checked in tests/ecosystem_config.rs; see DESIGN.md and `../shared/DESIGN.md`,\n\
                not /etc/stallwatch/stallwatch.toml nor https://example.test/docs/x nor ~/src/x";
    assert_eq!(
        named_paths(text),
        vec![
            "tests/ecosystem_config.rs",
            "DESIGN.md",
            "../shared/DESIGN.md"
        ]
    );
    assert_eq!(
        named_paths("tests/ecosystem_*.rs, scripts/vm-*"),
        vec!["tests/ecosystem_*", "scripts/vm-*"]
    );
    assert!(!exists_in_repo("tests/ecosystem_config.rs", "README.md"));
    assert!(!exists_in_repo("DESIGN.md", "README.md"));
    assert!(!exists_in_repo("tests/nothing_like_this_*", "README.md"));
    assert!(exists_in_repo("tests/ecosystem_*", "README.md"));
    assert!(exists_in_repo("RUNBOOK.md", "tests/ecosystem_rules.rs"));
}

/// Folders a relative path may be relative to besides the repository's root: `src/`
/// (the code map names modules as `alerts/engine.rs`) and `alerts/` (promtool runs there).
const BASES: &[&str] = &["", "src", "alerts"];

/// Whether `path`, named in the file `naming`, exists: under one of [`BASES`], or beside
/// `naming` for a `../` path (which must stay in the repository); a trailing `*` is a
/// prefix of some entry of its folder; a bare `NAME.md` may live in any folder.
fn exists_in_repo(path: &str, naming: &str) -> bool {
    let candidates: Vec<PathBuf> = if let Some(rest) = path.strip_prefix("../") {
        match Path::new(naming).parent() {
            Some(base) if !base.as_os_str().is_empty() => vec![base.join("..").join(rest)],
            _ => Vec::new(),
        }
    } else {
        BASES.iter().map(|b| Path::new(b).join(path)).collect()
    };
    let here = |p: &Path| -> bool {
        let full = repo().join(p).to_string_lossy().into_owned();
        match full.strip_suffix('*') {
            Some(prefix) => {
                let (dir, start) = prefix.rsplit_once('/').unwrap_or((".", prefix));
                std::fs::read_dir(dir).is_ok_and(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(start))
                })
            }
            None => Path::new(&full).exists(),
        }
    };
    if candidates.iter().any(|p| here(p)) {
        return true;
    }
    !path.contains('/') && path.ends_with(".md") && {
        let out = Command::new("git")
            .args(["ls-files", "--", &format!("*/{path}")])
            .current_dir(repo())
            .output()
            .expect("running git ls-files");
        !out.stdout.is_empty()
    }
}

#[test]
fn every_path_the_repository_names_exists() {
    let mut missing = BTreeSet::new();
    let files = tracked_text_files();
    assert!(files.len() > 50, "only {} tracked text files", files.len());
    for (name, text) in &files {
        if name == "tests/repo_paths.rs" {
            continue;
        }
        for path in named_paths(text) {
            if !exists_in_repo(&path, name) {
                missing.insert(format!("{name}: {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths named but not in the repository:\n  {}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

/// Metric names (without the `stallwatch_` prefix) registered in `src/metrics.rs`: the
/// first argument of `opts(…)`, `HistogramOpts::new(…)` and the per-source helpers.
fn registered_metrics() -> BTreeSet<String> {
    let source = std::fs::read_to_string(repo().join("src/metrics.rs")).unwrap();
    let mut names = BTreeSet::new();
    for call in [
        "opts(",
        "counter(",
        "gauge(",
        "histogram(",
        "HistogramOpts::new(",
    ] {
        for (at, _) in source.match_indices(call) {
            let rest = source[at + call.len()..].trim_start();
            if let Some(rest) = rest.strip_prefix('"') {
                let name: String = rest.chars().take_while(|c| *c != '"').collect();
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    names.insert(name);
                }
            }
        }
    }
    names
}

#[test]
fn design_doc_lists_exactly_the_registered_metrics() {
    let doc = std::fs::read_to_string(repo().join("docs/design.md")).unwrap();
    let section = doc
        .split("### Metric names")
        .nth(1)
        .expect("a \"Metric names\" section in docs/design.md");
    let section = section.split("\n#").next().unwrap();
    let mut listed = BTreeSet::new();
    for (i, piece) in section.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let name = piece.split('{').next().unwrap();
        // Suffixes (`_total`), `sql_<column>` (one per column) and `process_*` are not names.
        if name == "stallwatch_"
            || name.starts_with('_')
            || name.contains('<')
            || name.starts_with("process_")
        {
            continue;
        }
        if name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            listed.insert(name.to_string());
        }
    }
    let registered = registered_metrics();
    assert!(registered.len() > 40, "{registered:?}");
    let not_listed: Vec<_> = registered.difference(&listed).collect();
    let not_registered: Vec<_> = listed.difference(&registered).collect();
    assert!(
        not_listed.is_empty() && not_registered.is_empty(),
        "docs/design.md's metric names and src/metrics.rs differ:\n  registered, not listed: {not_listed:?}\n  listed, not registered: {not_registered:?}"
    );
}
