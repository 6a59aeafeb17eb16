//! Issue 7: the Grafana dashboards in `dashboards/`. They validate against Grafana's
//! published schema (npm `@grafana/schema`, type-checked with TypeScript by
//! `dashboards/schema-check/check.mjs`); every panel, target, annotation and query
//! variable uses the `${datasource}` variable, never a hard-coded data source uid; the
//! `datasource`, `job`, `instance` and `source` variables exist; every panel has a unit
//! and a description; the boards show what the issue lists.

mod ecosystem_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use ecosystem_support::*;
use serde_json::Value;

/// `dashboards/*.json` use schemaVersion 42, the current one of @grafana/schema 13.2.
const SCHEMA_VERSION: u64 = 42;

/// Panel titles each dashboard must have (what issue 7 lists for it).
const REQUIRED_PANELS: &[(&str, &[&str])] = &[
    (
        "stallwatch-overview.json",
        &[
            "Freezes by kind",
            "Frozen seconds",
            "Last freeze",
            "Tick overrun heatmap",
            "Wall-clock drift",
            "Reference offsets",
            "CPU steal",
            "Downtime before the current start",
        ],
    ),
    (
        "stallwatch-queues.json",
        &[
            "Queue depth",
            "Oldest job age",
            "Retries",
            "Dead letters",
            "Stuck jobs",
            "Step latency quantiles",
            "Step gap quantiles",
            "Stalled workflows",
            "Cost today vs cap",
            "Episodes by cause",
        ],
    ),
    (
        // Issue 19: a fleet at once, the evidence behind `verify --prometheus`.
        "stallwatch-fleet.json",
        &[
            "Frozen time per instance",
            "Instances that froze in the same minute",
            "Which instances froze together",
            "Coverage per instance",
        ],
    ),
    (
        "stallwatch-health.json",
        &[
            "Sources up",
            "Source poll duration",
            "Source errors by kind",
            "State DB errors",
            "Dropped items",
            "Process RSS",
            "Process CPU",
            "Build info",
            "Alerts firing",
            "Notifications",
            "Outbox pending",
            "Oldest undelivered notification",
        ],
    ),
];

fn is_datasource_variable(ds: &Value) -> bool {
    ds["uid"] == "${datasource}" && ds["type"] == "prometheus"
}

#[test]
fn every_panel_target_annotation_and_variable_uses_the_datasource_variable() {
    let mut problems = Vec::new();
    for (path, d) in dashboards() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("?");
            if p["type"] == "row" {
                if !p["datasource"].is_null() && !is_datasource_variable(&p["datasource"]) {
                    problems.push(format!(
                        "{name}: row {title:?}: datasource {}",
                        p["datasource"]
                    ));
                }
                continue;
            }
            if !is_datasource_variable(&p["datasource"]) {
                problems.push(format!(
                    "{name}: panel {title:?}: datasource {}",
                    p["datasource"]
                ));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{name}: panel {title:?} has no query"));
            }
            for t in targets {
                if !is_datasource_variable(&t["datasource"]) {
                    problems.push(format!(
                        "{name}: panel {title:?} target {}: datasource {}",
                        t["refId"], t["datasource"]
                    ));
                }
            }
        }
        for a in d["annotations"]["list"].as_array().into_iter().flatten() {
            if !is_datasource_variable(&a["datasource"]) {
                problems.push(format!(
                    "{name}: annotation {}: datasource {}",
                    a["name"], a["datasource"]
                ));
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if v["type"] == "query" && !is_datasource_variable(&v["datasource"]) {
                problems.push(format!(
                    "{name}: variable {}: datasource {}",
                    v["name"], v["datasource"]
                ));
            }
        }
        // Nothing anywhere names a data source by a fixed uid.
        let text = serde_json::to_string(&d).unwrap();
        for (i, _) in text.match_indices("\"uid\":") {
            let rest = &text[i + 6..];
            let value: String = rest.chars().skip(1).take_while(|c| *c != '"').collect();
            if value != "${datasource}"
                && !rest.starts_with(&format!("\"{}\"", d["uid"].as_str().unwrap_or("")))
            {
                problems.push(format!("{name}: a hard-coded uid {value:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_dashboard_has_the_template_variables_and_current_schema() {
    for (path, d) in dashboards() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(d["schemaVersion"], SCHEMA_VERSION, "{name}: schemaVersion");
        let uid = d["uid"].as_str().unwrap_or("");
        assert!(
            (8..=40).contains(&uid.len()),
            "{name}: uid {uid:?} must be 8-40 characters"
        );
        let vars: Vec<&Value> = d["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .collect();
        let var = |n: &str| {
            *vars
                .iter()
                .find(|v| v["name"] == n)
                .unwrap_or_else(|| panic!("{name}: no ${n} variable"))
        };
        let ds = var("datasource");
        assert_eq!(ds["type"], "datasource", "{name}: $datasource");
        assert_eq!(ds["query"], "prometheus", "{name}: $datasource");
        for n in ["job", "instance", "source"] {
            let v = var(n);
            assert_eq!(v["type"], "query", "{name}: ${n}");
            let q = v["query"]["query"].as_str().expect("query");
            assert!(
                q.starts_with("label_values(") && q.trim_end().ends_with(&format!(", {n})")),
                "{name}: ${n} query {q:?}"
            );
        }
        // Every query filters by the variables, so the pickers mean something.
        for p in panels(&d).into_iter().filter(|p| p["type"] != "row") {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or("");
                assert!(
                    expr.contains("job=~\"$job\"") && expr.contains("instance=~\"$instance\""),
                    "{name}: panel {:?} does not filter by $job and $instance: {expr}",
                    p["title"]
                );
            }
        }
    }
}

#[test]
fn every_panel_has_a_unit_a_description_and_a_place() {
    let mut problems = Vec::new();
    for (path, d) in dashboards() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let mut ids = BTreeSet::new();
        let mut cells: Vec<(String, u64, u64, u64, u64)> = Vec::new();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("").to_string();
            let id = p["id"].as_u64().unwrap_or(0);
            if !ids.insert(id) {
                problems.push(format!("{name}: panel id {id} ({title:?}) is used twice"));
            }
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_u64().unwrap_or(99),
                g["y"].as_u64().unwrap_or(0),
                g["w"].as_u64().unwrap_or(0),
                g["h"].as_u64().unwrap_or(0),
            );
            if w == 0 || h == 0 || x + w > 24 {
                problems.push(format!(
                    "{name}: panel {title:?} gridPos {g} does not fit 24 columns"
                ));
            }
            for (t, cx, cy, cw, ch) in &cells {
                if x < cx + cw && *cx < x + w && y < cy + ch && *cy < y + h {
                    problems.push(format!("{name}: panels {title:?} and {t:?} overlap"));
                }
            }
            cells.push((title.clone(), x, y, w, h));
            if p["type"] == "row" {
                continue;
            }
            if title.is_empty() {
                problems.push(format!("{name}: a panel without a title"));
            }
            if p["description"].as_str().is_none_or(|s| s.len() < 20) {
                problems.push(format!("{name}: panel {title:?} has no description"));
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{name}: panel {title:?} has no unit"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dashboards_show_what_the_issue_lists() {
    let boards = dashboards();
    for (file, titles) in REQUIRED_PANELS {
        let (_, d) = boards
            .iter()
            .find(|(p, _)| p.ends_with(file))
            .unwrap_or_else(|| panic!("dashboards/{file} is missing"));
        let have: BTreeSet<&str> = panels(d)
            .iter()
            .filter_map(|p| p["title"].as_str())
            .collect();
        for t in *titles {
            assert!(
                have.contains(t),
                "dashboards/{file} has no panel {t:?}; it has {have:?}"
            );
        }
    }
    // The overview marks freeze events on every graph.
    let (_, overview) = boards
        .iter()
        .find(|(p, _)| p.ends_with("stallwatch-overview.json"))
        .unwrap();
    let freeze_annotation = overview["annotations"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "Freezes")
        .expect("a Freezes annotation");
    let expr = freeze_annotation["target"]["expr"].as_str().unwrap();
    assert!(expr.contains("changes(stallwatch_freezes_total"), "{expr}");
    // The tick-overrun heatmap reads the histogram's buckets as a heatmap.
    let heatmap = panels(overview)
        .into_iter()
        .find(|p| p["title"] == "Tick overrun heatmap")
        .unwrap();
    assert_eq!(heatmap["type"], "heatmap");
    assert_eq!(heatmap["targets"][0]["format"], "heatmap");
    assert!(heatmap["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .contains("stallwatch_tick_overrun_seconds_bucket"));
}

/// Installs the pinned @grafana/schema and TypeScript (package-lock.json) once into
/// Cargo's test temp dir (again only when the lock file changes) and returns that dir.
fn schema_checker() -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let npm = tool("npm", "npm");
    let src = repo_file("dashboards/schema-check");
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("grafana-schema-check");
    std::fs::create_dir_all(&work).expect("creating the schema check dir");
    let lock = std::fs::read(src.join("package-lock.json")).expect("package-lock.json");
    let fresh = std::fs::read(work.join("package-lock.json")).ok().as_ref() == Some(&lock)
        && work
            .join("node_modules/@grafana/schema/package.json")
            .is_file()
        && work.join("node_modules/typescript/package.json").is_file();
    for f in ["package.json", "package-lock.json", "check.mjs"] {
        std::fs::copy(src.join(f), work.join(f)).expect("copying the schema check");
    }
    if !fresh {
        // The npm registry is the only network this needs, once per lock file change.
        run(Command::new(&npm).current_dir(&work).args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]))
        .expect_success();
    }
    work
}

#[test]
fn dashboards_validate_against_the_published_grafana_schema() {
    let node = tool("node", "nodejs");
    let work = schema_checker();
    let mut cmd = Command::new(node);
    cmd.current_dir(&work).arg("check.mjs");
    for (path, _) in dashboards() {
        cmd.arg(path);
    }
    let ran = run(&mut cmd);
    assert!(
        ran.status.success(),
        "dashboards do not match Grafana's schema (@grafana/schema):\n{}{}",
        ran.stdout,
        ran.stderr
    );
    assert!(
        ran.stdout.contains("valid against @grafana/schema"),
        "{}",
        ran.stdout
    );
}

/// The checker is not a rubber stamp: a misspelt enum value, a missing required option and
/// an unknown field are each reported, with the panel named.
#[test]
fn the_schema_check_rejects_a_broken_dashboard() {
    let node = tool("node", "nodejs");
    let work = schema_checker();
    let (_, mut d) = dashboards()
        .into_iter()
        .find(|(p, _)| p.ends_with("stallwatch-overview.json"))
        .unwrap();
    let list = d["panels"].as_array_mut().unwrap();
    let stat = list
        .iter_mut()
        .find(|p| p["title"] == "Freezes in range")
        .unwrap();
    stat["options"]["colorMode"] = "valu".into();
    let ts = list
        .iter_mut()
        .find(|p| p["title"] == "Freezes by kind")
        .unwrap();
    ts["options"].as_object_mut().unwrap().remove("legend");
    ts["fieldConfig"]["defaults"]["unitt"] = "s".into();
    let broken = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(broken.path(), serde_json::to_string(&d).unwrap()).unwrap();
    let ran = run(Command::new(node)
        .current_dir(&work)
        .arg("check.mjs")
        .arg(broken.path()));
    assert!(
        !ran.status.success(),
        "a broken dashboard passed:\n{}",
        ran.stdout
    );
    for needle in [
        "panel \"Freezes in range\" (stat)",
        "\"valu\"",
        "panel \"Freezes by kind\" (timeseries)",
        "'legend' is missing",
        "'\"unitt\"' does not exist",
    ] {
        assert!(
            ran.stdout.contains(needle),
            "the checker did not report {needle}:\n{}",
            ran.stdout
        );
    }
}
