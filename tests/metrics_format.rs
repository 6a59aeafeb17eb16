//! Issue 3: what a scraper and an API client get. Real `/metrics` output passes
//! `promtool check metrics` (Debian package `prometheus`) without a single remark, and
//! the JSON API answers as documented: 400 with a JSON error for a bad `since`, the
//! status fields, health and readiness.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::servers::ClockServer;
use common::{free_port, poll_until, Launch, Sidecar};

/// `promtool` from `$PATH`, else where Debian installs it.
fn promtool() -> PathBuf {
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    from_path
        .or_else(|| Some(PathBuf::from("/usr/bin/promtool")).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "promtool not found; install it with `apt-get install -y prometheus`. \
                 This test does not skip."
            )
        })
}

/// A sidecar whose `/metrics` has every family populated: a live reference, dead ones
/// of each network kind, and a recorded freeze so the histograms and gauges have values.
/// The SNTP server must outlive the sidecar's use.
fn sidecar_with_everything(dir: &std::path::Path, sntp: &ClockServer) -> Sidecar {
    let config = format!(
        "[freeze]\nreference_interval = \"1s\"\nreferences = [\"rtc\", \"sntp:{}\", \"sntp:127.0.0.1:{}\", \"http_date:http://127.0.0.1:{}/?token=secret\"]\n",
        sntp.addr,
        free_port(),
        free_port()
    );
    let sidecar = Sidecar::start_with(
        &dir.join("data"),
        &Launch {
            config: Some(config),
            env: vec![],
        },
    );
    sidecar.stop_for(Duration::from_millis(2500));
    sidecar.wait_for_freezes(1, Duration::from_secs(10));
    let offset = format!(
        "stallwatch_reference_offset_seconds{{reference=\"sntp:{}\"}}",
        sntp.addr
    );
    poll_until(
        "the live reference's offset",
        Duration::from_secs(10),
        || {
            sidecar
                .metrics()
                .value(&offset)
                .ok_or_else(|| "none yet".to_string())
        },
    );
    sidecar
}

#[test]
fn promtool_finds_nothing_to_say_about_real_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let sntp = ClockServer::sntp();
    let sidecar = sidecar_with_everything(dir.path(), &sntp);
    let response = sidecar.get("/metrics");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = response.body;
    // The families the scrape must carry (docs/design.md, metric names).
    for family in [
        "stallwatch_freezes_total",
        "stallwatch_frozen_seconds_total",
        "stallwatch_freeze_duration_seconds",
        "stallwatch_last_freeze_timestamp_seconds",
        "stallwatch_tick_overrun_seconds",
        "stallwatch_wall_clock_drift_seconds",
        "stallwatch_wall_clock_steps_total",
        "stallwatch_reference_offset_seconds",
        "stallwatch_reference_up",
        "stallwatch_cpu_steal_seconds_total",
        "stallwatch_downtime_seconds_total",
        "stallwatch_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "/metrics has no {family}:\n{text}"
        );
    }
    assert!(
        !text.contains("secret"),
        "a URL's query reached a label:\n{text}"
    );

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
        .expect("stdin")
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
        "promtool check metrics: {}\n{said}\n--- metrics ---\n{text}",
        out.status
    );
}

#[test]
fn bad_query_parameters_are_400_with_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(&dir.path().join("data"));
    for (query, mentions) in [
        ("since=garbage", "since"),
        ("since=2026-13-45T99:00:00Z", "since"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("colour=red", "since"),
    ] {
        let r = sidecar.get(&format!("/api/v1/freezes?{query}"));
        assert_eq!(r.status, 400, "?{query}: {r:?}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "?{query}: {r:?}"
        );
        let error = r.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("?{query}: no \"error\" string in {:?}", r.body))
            .to_string();
        assert!(error.contains(mentions), "?{query}: {error:?}");
    }
}

#[test]
fn since_selects_the_freezes_that_started_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let sntp = ClockServer::sntp();
    let sidecar = sidecar_with_everything(dir.path(), &sntp);
    let events = sidecar.freezes();
    assert_eq!(events.len(), 1, "{events:#?}");
    let started = humantime::parse_rfc3339(&events[0].started_at).expect("started_at is RFC 3339");
    let at = |t: std::time::SystemTime| humantime::format_rfc3339_millis(t).to_string();
    let query = |since: &str| {
        let r = sidecar.get(&format!("/api/v1/freezes?since={since}"));
        assert_eq!(r.status, 200, "since={since}: {r:?}");
        r.json().as_array().expect("a list").len()
    };
    assert_eq!(query(&at(started - Duration::from_secs(60))), 1);
    assert_eq!(query(&at(started)), 1);
    assert_eq!(query(&at(started + Duration::from_secs(1))), 0);
}

#[test]
fn status_health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sidecar = Sidecar::start(&data);
    std::thread::sleep(Duration::from_millis(600));

    let healthz = sidecar.get("/healthz");
    assert_eq!(healthz.status, 200, "{healthz:?}");
    let readyz = sidecar.get("/readyz");
    assert_eq!(readyz.status, 200, "{readyz:?}");

    let s = sidecar.status();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert_eq!(s["boot_id"], boot_id.trim(), "{s}");
    assert_eq!(s["pid"], sidecar.pid(), "{s}");
    assert_eq!(s["data_dir"], data.display().to_string(), "{s}");
    assert_eq!(s["tick_seconds"], 0.05, "{s}");
    assert_eq!(s["freeze_min_seconds"], 2.0, "{s}");
    assert!(s["ticks"].as_u64().is_some_and(|t| t >= 2), "{s}");
    let started_ns = s["started_at_unix_ns"]
        .as_i64()
        .expect("started_at_unix_ns");
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        (0..60_000_000_000).contains(&(now_ns - started_ns)),
        "started_at_unix_ns {started_ns} is not within the last minute: {s}"
    );
    for field in [
        "wall_clock_drift_ppm",
        "wall_clock_drift_seconds",
        "cpu_steal_seconds",
    ] {
        assert!(s[field].is_number(), "{field}: {s}");
    }
    // The default references are the RTC where the machine has one; without one (a
    // container, a Firecracker VM) it is left out rather than reported down forever.
    let references = s["references"].as_array().expect("references");
    if std::path::Path::new("/sys/class/rtc/rtc0/since_epoch").exists() {
        assert_eq!(references.len(), 1, "{s}");
        assert_eq!(references[0]["name"], "rtc", "{s}");
        assert!(references[0]["up"].is_boolean(), "{s}");
    } else {
        assert!(
            references.is_empty(),
            "an absent default RTC is left out: {s}"
        );
    }
    assert!(
        s["last_downtime"].is_null(),
        "a first start has no downtime: {s}"
    );
    assert!(s["state_db_error"].is_null(), "{s}");
    assert_eq!(s["events_recorded"], 0, "{s}");
}
