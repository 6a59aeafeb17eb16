//! Issue 19 item 3: `verify --prometheus` and `report --prometheus` against Debian's real
//! Prometheus. A fleet's history is backfilled with `promtool tsdb create-blocks-from
//! openmetrics` (5 days of 1-minute scrapes ending two hours ago), `prometheus` serves
//! that TSDB on 127.0.0.1 (retention long enough to keep every block), and the binary
//! reads it through the HTTP query API:
//!
//! - fleet `app="precis"`: three sidecars, ten freezes each over the 3 days before T (one
//!   of them a host event: all three in the same minute), precis-3 still freezing after T
//!   → NOT FIXED naming precis-3; precis-2 was down a day and unscraped a day → its
//!   coverage is 2d of 3d exactly;
//! - fleet `app="fixed"`: the same, all quiet after T → FIXED;
//! - a node_exporter target matched by the selector in `up` is ignored, and said;
//! - Prometheus down, a bad selector, a bad URL, answers too big → exit 2, one sentence;
//! - every query of `dashboards/stallwatch-fleet.json` returns data from the same TSDB,
//!   and the same-minute and coverage panels show the numbers put in.

mod common;
mod ecosystem_support;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, run_to_exit, Finished};
use ecosystem_support::{dashboards, panels, promtool, tool, url_encode};
use serde_json::Value;

const MIN: i64 = 60;
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
/// Days of history before T and after it.
const BEFORE_DAYS: i64 = 3;
const AFTER_DAYS: i64 = 2;
/// Seconds past each minute a scrape lands (not on the minute, as in real life).
const SCRAPE_OFFSET: i64 = 7;
/// Start-up of Prometheus over a few hundred backfilled blocks on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One backfilled target.
struct Target {
    job: &'static str,
    instance: &'static str,
    app: &'static str,
    /// Exports stallwatch metrics (else only `up`, like a node_exporter).
    sidecar: bool,
    /// Freeze start times (unix seconds).
    freezes: Vec<i64>,
    /// Wall-clock steps: counted in freezes_total{kind="wall_clock_step"}, not lost time.
    steps: Vec<i64>,
    /// Spans `[from, to)` where the scrape failed (up 0, no other samples).
    down: Vec<(i64, i64)>,
    /// Spans with no sample at all (Prometheus itself was not scraping).
    missing: Vec<(i64, i64)>,
}

impl Target {
    fn state_at(&self, t: i64) -> Option<bool> {
        if self.missing.iter().any(|(a, b)| (*a..*b).contains(&t)) {
            return None;
        }
        Some(!self.down.iter().any(|(a, b)| (*a..*b).contains(&t)))
    }
}

/// The history: `start` .. `end`, T = start + BEFORE_DAYS.
struct History {
    start: i64,
    t: i64,
    end: i64,
    host_event: i64,
    targets: Vec<Target>,
}

fn history(end: i64) -> History {
    let start = end - (BEFORE_DAYS + AFTER_DAYS) * DAY;
    let t = start + BEFORE_DAYS * DAY;
    let host_event = start + 30 * HOUR + 30 * MIN;
    let mut targets = Vec::new();
    for (app, still) in [("precis", true), ("fixed", false)] {
        for n in 1..=3i64 {
            // Ten freezes in the before window; the fifth is the host event, seconds
            // apart within one minute on all three.
            let mut freezes: Vec<i64> = (0..10)
                .map(|i| {
                    if i == 4 {
                        host_event + 10 * n
                    } else {
                        start + i * 7 * HOUR + HOUR + n * 23 * MIN + 11
                    }
                })
                .collect();
            if still && n == 3 {
                freezes.extend((0..6).map(|k| t + k * 7 * HOUR + 5 * HOUR + 3));
            }
            let instance: &'static str = Box::leak(format!("{app}-{n}:9847").into_boxed_str());
            targets.push(Target {
                job: "stallwatch",
                instance,
                app,
                sidecar: true,
                freezes,
                steps: if n == 1 {
                    (0..3).map(|k| t + k * 10 * HOUR + HOUR).collect()
                } else {
                    Vec::new()
                },
                // precis-2 / fixed-2: scrapes failed for a day, and for another day
                // nothing scraped at all: watched 2d of 3d before T.
                down: if n == 2 {
                    vec![(start + 8 * HOUR, start + 20 * HOUR)]
                } else {
                    Vec::new()
                },
                missing: if n == 2 {
                    vec![(start + 44 * HOUR, start + 56 * HOUR)]
                } else {
                    Vec::new()
                },
            });
        }
    }
    targets.push(Target {
        job: "node",
        instance: "node-1:9100",
        app: "precis",
        sidecar: false,
        freezes: Vec::new(),
        steps: Vec::new(),
        down: Vec::new(),
        missing: Vec::new(),
    });
    // Another app, not part of either fleet: freezes only after T.
    targets.push(Target {
        job: "stallwatch",
        instance: "other-1:9847",
        app: "other",
        sidecar: true,
        freezes: (1..=4).map(|k| t + k * 10 * HOUR).collect(),
        steps: Vec::new(),
        down: Vec::new(),
        missing: Vec::new(),
    });
    History {
        start,
        t,
        end,
        host_event,
        targets,
    }
}

/// The history as OpenMetrics text: each family's samples together, each series in time.
fn openmetrics(h: &History) -> String {
    let scrapes: Vec<i64> = (0..(h.end - h.start) / MIN)
        .map(|i| h.start + i * MIN + SCRAPE_OFFSET)
        .collect();
    let mut out = String::with_capacity(64 << 20);
    let labels = |t: &Target| {
        format!(
            "job=\"{}\",instance=\"{}\",app=\"{}\"",
            t.job, t.instance, t.app
        )
    };
    out.push_str("# TYPE up gauge\n");
    for t in &h.targets {
        let l = labels(t);
        for &s in &scrapes {
            if let Some(up) = t.state_at(s) {
                let _ = writeln!(out, "up{{{l}}} {} {s}", u8::from(up));
            }
        }
    }
    let sidecars: Vec<&Target> = h.targets.iter().filter(|t| t.sidecar).collect();
    let scraped = |t: &Target, s: i64| t.state_at(s) == Some(true);
    out.push_str("# TYPE stallwatch_freezes counter\n");
    for t in &sidecars {
        let l = labels(t);
        for (kind, events) in [("vm_pause", &t.freezes), ("wall_clock_step", &t.steps)] {
            for &s in scrapes.iter().filter(|s| scraped(t, **s)) {
                let n = events.iter().filter(|e| **e < s).count();
                let _ = writeln!(
                    out,
                    "stallwatch_freezes_total{{{l},kind=\"{kind}\"}} {n} {s}"
                );
            }
        }
    }
    out.push_str("# TYPE stallwatch_frozen_seconds counter\n");
    for t in &sidecars {
        let l = labels(t);
        for &s in scrapes.iter().filter(|s| scraped(t, **s)) {
            let n = t.freezes.iter().filter(|e| **e < s).count();
            let _ = writeln!(
                out,
                "stallwatch_frozen_seconds_total{{{l},kind=\"vm_pause\"}} {} {s}",
                n * 30
            );
        }
    }
    out.push_str("# TYPE stallwatch_last_freeze_timestamp_seconds gauge\n");
    for t in &sidecars {
        let l = labels(t);
        for &s in scrapes.iter().filter(|s| scraped(t, **s)) {
            let last = t
                .freezes
                .iter()
                .filter(|e| **e < s)
                .max()
                .copied()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "stallwatch_last_freeze_timestamp_seconds{{{l}}} {last} {s}"
            );
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Debian's Prometheus over a TSDB directory, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, tsdb: &Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = dir.join("prometheus.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(tool("prometheus", "prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            // The blocks are days old: keep them (retention counts from the
            // newest block, but a short one would drop the start of the history).
            .arg("--storage.tsdb.retention.time=3650d")
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting prometheus");
        let mut p = Prometheus { child, addr, log };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("prometheus exited with {status}:\n{}", p.log_text());
            }
            if matches!(ecosystem_support::http_get(addr, "/-/ready"), Ok((200, _))) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An API call's `data`, or a panic with the error.
    fn api(&self, path: &str) -> Value {
        let (status, body) = ecosystem_support::http_get(self.addr, path).unwrap();
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("HTTP {status} from {path}: {body}"));
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", self.log_text());
        }
    }
}

fn rfc(t: i64) -> String {
    // Epoch seconds are one of the time forms verify reads.
    t.to_string()
}

fn exit_code(f: &Finished) -> i32 {
    f.status.code().unwrap_or(-1)
}

fn one_sentence(f: &Finished) -> String {
    assert_eq!(
        exit_code(f),
        2,
        "stdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
    let lines = f.stderr_lines();
    assert_eq!(lines.len(), 1, "one sentence on stderr, got:\n{}", f.stderr);
    assert!(f.stdout.is_empty(), "nothing on stdout: {}", f.stdout);
    lines[0].to_string()
}

/// A server that answers every request with `body` as a 200 JSON response.
fn serve_once_each(body: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    addr
}

#[test]
fn a_fleet_through_real_prometheus() {
    let tmp = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let end = (now - 2 * HOUR) / MIN * MIN;
    let h = history(end);

    // ---- backfill and serve.
    let started = Instant::now();
    let om = tmp.path().join("fleet.om");
    std::fs::write(&om, openmetrics(&h)).unwrap();
    let tsdb = tmp.path().join("tsdb");
    let ran = ecosystem_support::run(
        Command::new(promtool())
            .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
            .arg(&om)
            .arg(&tsdb),
    );
    ran.expect_success();
    eprintln!(
        "backfilled {} MB of OpenMetrics in {:.1} s",
        std::fs::metadata(&om).unwrap().len() >> 20,
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_file(&om).unwrap();
    let prom = Prometheus::start(tmp.path(), &tsdb);
    let url = prom.url();
    let before = format!("--before={}..{}", rfc(h.start), rfc(h.t));
    let after = format!("--after={}..{}", rfc(h.t), rfc(h.end));

    // ---- precis: precis-3 still freezes after T.
    let verify = |selector: &str, extra: &[&str]| {
        let mut args = vec![
            "verify".to_string(),
            "--prometheus".into(),
            url.clone(),
            "--selector".into(),
            selector.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run_to_exit(args)
    };
    let f = verify("{app=\"precis\"}", &[&before, &after]);
    eprintln!("{}", f.stdout);
    assert_eq!(exit_code(&f), 1, "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stdout
            .starts_with("verdict: NOT FIXED — 1 instance still freezes: precis-3:9847\n"),
        "{}",
        f.stdout
    );
    let line = |name: &str| {
        f.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", f.stdout))
            .to_string()
    };
    assert!(
        line("precis-3:9847").contains("NOT FIXED"),
        "{}",
        line("precis-3:9847")
    );
    for quiet in ["precis-1:9847", "precis-2:9847"] {
        assert!(
            line(quiet).contains("0 freezes in 2d of 2d (100 %)  FIXED"),
            "{}",
            line(quiet)
        );
    }
    assert!(
        line("precis-2:9847").contains("10 freezes in 2d of 3d (67 %)"),
        "{}",
        line("precis-2:9847")
    );
    assert!(
        line("precis-1:9847").contains("10 freezes in 3d of 3d (100 %)"),
        "{}",
        line("precis-1:9847")
    );
    assert!(
        f.stdout
            .contains("ignored: 1 target the selector matches in up"),
        "{}",
        f.stdout
    );
    assert!(
        !f.stdout.contains("other-1") && !f.stdout.contains("node-1"),
        "{}",
        f.stdout
    );

    // The same in JSON, to the second.
    let j = verify("{app=\"precis\"}", &[&before, &after, "--format=json"]);
    assert_eq!(exit_code(&j), 1);
    let v: Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["verdict"], "NOT FIXED");
    assert_eq!(v["not_fixed_instances"][0]["instance"], "precis-3:9847");
    assert_eq!(
        v["pooled"]["verdict"], "FIXED",
        "pooled, 6 where 20 were expected"
    );
    let inst = |name: &str| {
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(inst("precis-3:9847")["after"]["freezes"], 6);
    assert_eq!(
        inst("precis-1:9847")["after"]["freezes"],
        0,
        "wall-clock steps are not counted"
    );
    assert_eq!(inst("precis-2:9847")["before"]["freezes"], 10);
    assert_eq!(
        inst("precis-2:9847")["before"]["covered_seconds"].as_f64(),
        Some((2 * DAY) as f64)
    );
    assert_eq!(
        inst("precis-1:9847")["before"]["covered_seconds"].as_f64(),
        Some((3 * DAY) as f64)
    );
    let frozen = inst("precis-3:9847")["before"]["frozen_seconds"]
        .as_f64()
        .unwrap();
    // increase() extrapolates to the window's edges: a fraction of a second here.
    assert!((frozen - 300.0).abs() < 0.5, "10 freezes of 30 s: {frozen}");

    // --migrated-at T: after runs to now (two hours without data are not watched).
    let m = verify("{app=\"precis\"}", &[&format!("--migrated-at={}", h.t)]);
    assert_eq!(exit_code(&m), 1, "{}\n{}", m.stdout, m.stderr);
    assert!(
        m.stdout.contains("still freezes: precis-3:9847"),
        "{}",
        m.stdout
    );

    // ---- fixed: all three quiet after T.
    let f = verify("{app=\"fixed\"}", &[&before, &after]);
    assert_eq!(exit_code(&f), 0, "{}\n{}", f.stdout, f.stderr);
    assert!(f.stdout.starts_with("verdict: FIXED\n"), "{}", f.stdout);
    assert_eq!(f.stdout.matches("  FIXED  ").count(), 3, "{}", f.stdout);

    // No selector: every sidecar, other-1 (freezes only after T) named too.
    let all = run_to_exit(["verify", "--prometheus", &url, &before, &after]);
    assert_eq!(exit_code(&all), 1);
    assert!(
        all.stdout.contains("other-1:9847, precis-3:9847"),
        "{}",
        all.stdout
    );
    assert!(all.stdout.contains("fleet (7 instances)"), "{}", all.stdout);

    // ---- report --prometheus over the after window.
    let r = run_to_exit([
        "report",
        "--prometheus",
        &url,
        "--selector",
        "app=\"precis\"",
        &format!("--since={}", h.t),
        &format!("--until={}", h.end),
    ]);
    assert_eq!(exit_code(&r), 0, "{}\n{}", r.stdout, r.stderr);
    eprintln!("{}", r.stdout);
    assert!(r.stdout.contains("3 instances"), "{}", r.stdout);
    let row = r
        .stdout
        .lines()
        .find(|l| l.contains("precis-3:9847"))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "precis-3:9847",
            "stallwatch",
            "6",
            "3m",
            "2d",
            "of",
            "2d",
            "(100",
            "%)"
        ],
        "{row}"
    );

    // ---- bad input: exit 2, one sentence.
    let s = one_sentence(&verify("{app=~\"(\"}", &[&before, &after]));
    assert!(
        s.contains("refused the query (bad_data)") && s.contains("check --selector"),
        "{s}"
    );
    let s = one_sentence(&verify("{app=\"x\" or}", &[&before, &after]));
    assert!(s.contains("refused the query"), "{s}");
    let s = one_sentence(&verify("{app=\"x\"}) or vector(1) (", &[&before, &after]));
    assert!(s.contains("give label matchers like"), "{s}");
    let s = one_sentence(&run_to_exit([
        "verify",
        "--prometheus",
        "prometheus:9090",
        &before,
        &after,
    ]));
    assert!(s.contains("is not an http:// or https:// URL"), "{s}");
    // Something that is not Prometheus's API (its own /-/ready page under a wrong path).
    let s = one_sentence(&run_to_exit([
        "verify",
        "--prometheus",
        &format!("{url}/-/ready/x"),
        &before,
        &after,
    ]));
    assert!(
        s.contains("did not answer as a Prometheus query API"),
        "{s}"
    );
    // Answers too big: 100,000 series, and a body over the byte cap.
    let mut many = String::from(r#"{"status":"success","data":{"resultType":"vector","result":["#);
    for i in 0..100_000 {
        if i > 0 {
            many.push(',');
        }
        let _ = write!(
            many,
            r#"{{"metric":{{"instance":"i{i}","job":"j"}},"value":[1,"1"]}}"#
        );
    }
    many.push_str("]}}");
    let big = serve_once_each(many.into_bytes());
    let s = one_sentence(&run_to_exit([
        "verify",
        "--prometheus",
        &format!("http://{big}"),
        &before,
        &after,
    ]));
    assert!(
        s.contains("matched 100000 series") && s.contains("narrow --selector"),
        "{s}"
    );
    let huge = serve_once_each(vec![b' '; 40 << 20]);
    let s = one_sentence(&run_to_exit([
        "verify",
        "--prometheus",
        &format!("http://{huge}"),
        &before,
        &after,
    ]));
    assert!(s.contains("more than 16 MiB"), "{s}");

    // ---- the Fleet dashboard against the same Prometheus.
    let (_, board) = dashboards()
        .into_iter()
        .find(|(p, _)| p.ends_with("stallwatch-fleet.json"))
        .expect("dashboards/stallwatch-fleet.json");
    let mut checked = 0;
    for p in panels(&board).into_iter().filter(|p| p["type"] != "row") {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$__range", &format!("{}s", h.end - h.t))
                .replace("$job", "stallwatch")
                .replace("$instance", ".*");
            let data = prom.api(&format!(
                "/api/v1/query_range?query={}&start={}&end={}&step=3600",
                url_encode(&expr),
                h.start,
                h.end
            ));
            assert!(
                !data["result"].as_array().unwrap().is_empty(),
                "panel {:?}: no data over the backfilled history\n    {expr}",
                p["title"]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6, "every panel query ran");
    // Same minute: after the host event, six instances (both fleets) share its minute.
    let same = board_expr(&board, "Instances that froze in the same minute");
    let data = prom.api(&format!(
        "/api/v1/query?query={}&time={}",
        url_encode(
            &same
                .replace("$job", "stallwatch")
                .replace("$instance", ".*")
        ),
        h.host_event + 2 * MIN
    ));
    let minute = (h.host_event / MIN * MIN).to_string();
    let hit = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"]["minute"] == minute.as_str())
        .unwrap_or_else(|| panic!("no group for the host-event minute {minute}: {data}"));
    assert_eq!(hit["value"][1], "6", "{data}");
    // Coverage over the before window: precis-2 2 of 3 days.
    let cov = board_expr(&board, "Coverage per instance")
        .replace("$__range", &format!("{}s", BEFORE_DAYS * DAY))
        .replace("$job", "stallwatch")
        .replace("$instance", "precis-2:9847");
    let data = prom.api(&format!(
        "/api/v1/query?query={}&time={}",
        url_encode(&cov),
        h.t
    ));
    let share: f64 = data["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (share - 2.0 / 3.0).abs() < 0.001,
        "precis-2 coverage {share}: {data}"
    );

    // ---- Prometheus down.
    drop(prom);
    let s = one_sentence(&run_to_exit([
        "verify",
        "--prometheus",
        &url,
        &before,
        &after,
    ]));
    assert!(
        s.contains("cannot reach Prometheus at") && s.contains("cannot connect"),
        "{s}"
    );
}

fn board_expr(board: &Value, title: &str) -> String {
    panels(board)
        .into_iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"))["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .to_string()
}
