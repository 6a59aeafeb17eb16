//! Issue 7: no typo can hide in a dashboard or a rule. Every metric name they use exists
//! in the real `/metrics` of a running `stallwatch demo` (every source kind live) and of a
//! `stallwatch run` watching the same app with a live reference clock, after 30 s; both
//! outputs pass `promtool check metrics`; and every `stallwatch_*` family the sidecar
//! exports is shown somewhere on a dashboard.

mod common;
mod ecosystem_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::servers::ClockServer;
use common::{Launch, Sidecar};
use ecosystem_support::*;

/// The README promises every metric family is live within 30 s of `stallwatch demo`.
const WARM_UP: Duration = Duration::from_secs(30);

/// Families no dashboard needs to show, with why.
const NOT_ON_DASHBOARDS: &[(&str, &str)] = &[(
    "stallwatch_sql_",
    "columns of an operator's own query: their names are the operator's",
)];

fn promtool_check_metrics(what: &str, text: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("feeding promtool");
    let out = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {what} said:\n{said}"
    );
}

/// Every metric name in the rules and dashboards, with where it is used.
fn names_in_use() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in rules() {
        for n in metric_names(&r.expr) {
            out.push((n, format!("alerts/stallwatch.rules.yml: {}", r.name)));
        }
    }
    for q in dashboard_queries() {
        for n in metric_names(&q.expr) {
            out.push((n, format!("dashboards/{}: {}", q.dashboard, q.place)));
        }
    }
    out
}

#[test]
fn every_metric_in_dashboards_and_rules_exists_in_real_metrics() {
    let demo = Demo::start();
    let clock = ClockServer::http_date();
    let data = tempfile::tempdir().unwrap();
    let run = Sidecar::start_with(
        data.path(),
        &Launch {
            config: Some(demo.watching_config(&[format!("http_date:http://{}/", clock.addr)])),
            ..Launch::default()
        },
    );
    let started = Instant::now();
    std::thread::sleep(WARM_UP.saturating_sub(started.elapsed()));
    // The run sidecar's reference has answered by now (reference_interval 1 s).
    let run_text = wait_for(
        "a reference offset on the run sidecar",
        Duration::from_secs(30),
        || {
            let text = run.metrics().0;
            text.contains("stallwatch_reference_offset_seconds{")
                .then_some(text)
        },
    );
    let demo_text = demo.metrics();

    promtool_check_metrics("the demo's /metrics", &demo_text);
    promtool_check_metrics("the run sidecar's /metrics", &run_text);

    let mut exposed = exposed_names(&demo_text);
    exposed.extend(exposed_names(&run_text));
    let recorded: BTreeSet<String> = rules()
        .into_iter()
        .filter(|r| !r.alert)
        .map(|r| r.name)
        .collect();
    let metrics_rs =
        std::fs::read_to_string(repo_file("src/metrics.rs")).expect("reading src/metrics.rs");

    let mut problems = Vec::new();
    let mut notes = BTreeSet::new();
    for (name, place) in names_in_use() {
        if name.contains(':') {
            if !recorded.contains(&name) {
                problems.push(format!(
                    "{place}: {name} is not a recording rule of alerts/stallwatch.rules.yml"
                ));
            }
        } else if PROMETHEUS_SYNTHETIC.contains(&name.as_str()) {
            // Made by Prometheus for every target.
        } else if let Some((_, declared, why)) =
            FIRST_EVENT_ONLY.iter().find(|(n, _, _)| *n == name)
        {
            if exposed.contains(&name) {
                continue;
            }
            if !metrics_rs.contains(declared) {
                problems.push(format!(
                    "{place}: {name} is neither in /metrics nor declared in src/metrics.rs"
                ));
            }
            notes.insert(format!("{name}: not in /metrics yet: {why}"));
        } else if !exposed.contains(&name) {
            problems.push(format!(
                "{place}: {name} is not in the real /metrics output"
            ));
        }
    }
    for n in &notes {
        eprintln!("note: {n}");
    }
    assert!(
        problems.is_empty(),
        "metric names that do not exist:\n  {}\n(/metrics exposes: {exposed:?})",
        problems.join("\n  ")
    );

    // And the other way round: every family the sidecar exports is on a dashboard.
    let shown: BTreeSet<String> = dashboard_queries()
        .iter()
        .flat_map(|q| metric_names(&q.expr))
        .collect();
    let families: BTreeSet<String> = format!("{demo_text}\n{run_text}")
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .filter(|(name, _)| name.starts_with("stallwatch_"))
        .map(|(name, kind)| {
            if kind == "histogram" {
                format!("{name}_bucket")
            } else {
                name
            }
        })
        .collect();
    let unshown: Vec<String> = families
        .iter()
        .filter(|f| {
            let base = f.trim_end_matches("_bucket");
            !shown.contains(f.as_str())
                && !shown.contains(&format!("{base}_count"))
                && !shown.contains(&format!("{base}_sum"))
                && !NOT_ON_DASHBOARDS.iter().any(|(p, _)| f.starts_with(p))
        })
        .cloned()
        .collect();
    assert!(
        unshown.is_empty(),
        "exported but on no dashboard (add a panel to dashboards/): {unshown:?}"
    );
    drop(run);
}
