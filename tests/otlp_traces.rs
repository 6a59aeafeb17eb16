//! Issue 8, item 5: OTLP traces. A real DBOS app from PyPI (`tests/dbos/app.py` in mode
//! `trace`, in the venv `scripts/dbos-venv.sh` makes) runs `fetch → crunch → DBOS.recv →
//! store` on a SQLite system DB while the sidecar watches it as a `dbos` source and exports traces to
//! a small OTLP/HTTP collector in this test, which decodes every request with the official
//! `opentelemetry-proto` types.
//!
//! - The sidecar is stopped (SIGSTOP) for 3 s while `crunch` runs, and the workflow is
//!   held 3 s before `store`. The collector gets one trace for the workflow: a root span
//!   named `ingest` with its id; one child span per `operation_outputs` row, each starting
//!   and ending exactly when DBOS says (to the nanosecond its milliseconds give); one
//!   `step_gap` span over the held time, caused by a `stall`; and one `freeze` span of kind
//!   `process_stall` with the same trace id and the root as parent, inside `crunch`'s time,
//!   as long as the stop and the same event as `/api/v1/freezes` shows. That freeze is
//!   exported nowhere else. The configured `authorization` header arrives; the log never
//!   shows it.
//! - The collector is down (nothing listens), then answers 503 twice, then 200: the sidecar
//!   keeps serving (`/healthz` 200, `source_up` 1), logs the outage once and the recovery
//!   once, retries the same spans (same ids), delivers the trace and drops nothing.
//! - With no workflow around, a 3 s stop of the sidecar is a trace of its own: one root
//!   `freeze` span of kind `process_stall`, as long as the stop. When the collector then
//!   takes a request and never answers, SIGTERM still ends the sidecar cleanly within the
//!   5 s an orchestrator gives it.
//! - The sidecar's own work (issue 18): with a JSONL source, a webhook channel whose first
//!   answer is 503 and a 3 s stop, the collector gets `stallwatch.poll` roots (source,
//!   kind, outcome, steps), one `stallwatch.freeze` (kind `process_stall`, as long as the
//!   stop), and two `stallwatch.deliver` spans (attempt 1 retried on 503 with error
//!   status, attempt 2 sent on 200), all under the configured service; the log has no
//!   span names in it. The tests above set `self_spans = false`: they count app spans.
//! - An `[otlp] endpoint` that is not http(s), or a header value that is not one: exit 2
//!   with one sentence naming the key, from `check-config` and `run`, and no secret in it.

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::dbos::{App, Journal, Mode, SystemDb};
use common::receiver::{Receiver, Reply};
use common::{assert_near, free_port, poll_until, run_to_exit, Launch, Sidecar};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use rusqlite::{Connection, OpenFlags};
use tempfile::TempDir;

/// The source name in the sidecar's config.
const SOURCE: &str = "app";
/// The JSONL source of the test of the sidecar's own spans.
const OWN_SOURCE: &str = "worker";
/// `STATUS_CODE_ERROR` of an OTLP span status.
const STATUS_CODE_ERROR: i32 = 2;
/// The workflow's name as DBOS records it.
const WORKFLOW: &str = "ingest";
/// Poll interval and shortest gap shown, as in the other real-DBOS tests.
const POLL: &str = "500ms";
const GAP_MIN_SECONDS: f64 = 2.0;
/// How long `crunch` runs, how far into it the sidecar is stopped, and for how long.
const CRUNCH_SECONDS: f64 = 6.0;
const STOP_INTO_CRUNCH: Duration = Duration::from_secs(1);
const STOP: Duration = Duration::from_secs(3);
/// How long the workflow is held after its recv: a gap longer than `gap_min`.
const HOLD: Duration = Duration::from_secs(3);
/// The tolerance issue 3 gives a process_stall's duration.
const FREEZE_TOLERANCE_SECONDS: f64 = 0.2;
/// The token in `otlp.headers`; it must reach the collector and never the log.
const TOKEN: &str = "Bearer otlp-test-token-7f3a";
const SERVICE: &str = "stallwatch-test";
const SOURCE_UP_TIMEOUT: Duration = Duration::from_secs(15);
/// Until a trace arrives: two quiet polls, the 4 s settle, a 1 s batch delay, and slack.
const TRACE_TIMEOUT: Duration = Duration::from_secs(30);
/// After a collector comes back, three attempts (503, 503, 200): at most a few failures
/// old, their backoff ceilings add up to under 30 s.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// After the trace arrived, how long to watch for anything sent twice.
const AFTERWARDS: Duration = Duration::from_secs(3);
/// Normal running before a stop, so the detector has a steady state to compare with.
const WARM_UP: Duration = Duration::from_secs(1);
/// The 5 s an orchestrator waits between SIGTERM and SIGKILL.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);
/// How long the hung collector holds a request unanswered (longer than the budget).
const HANG: Duration = Duration::from_secs(30);
const NS_PER_MS: u64 = 1_000_000;

// ---- the test cases -------------------------------------------------------------------

#[test]
fn a_freeze_during_a_step_shows_inside_the_workflow_trace() {
    let collector = Collector::start(None);
    let (setup, mut app) = Setup::new(&collector.endpoint());
    let sidecar = &setup.sidecar;

    let label = "frozen";
    let workflow_id = app.start_ingest(label, CRUNCH_SECONDS, true);
    app.expect_phase("crunch-start", label);
    std::thread::sleep(STOP_INTO_CRUNCH);
    let stopped = sidecar.stop_for(STOP).as_secs_f64();
    app.expect_phase("waiting", label);
    std::thread::sleep(HOLD);
    app.command(&format!("go {label}"));
    app.expect_phase("done", label);

    let trace = wait_for_trace(&collector, &workflow_id, TRACE_TIMEOUT);
    std::thread::sleep(AFTERWARDS);
    let rows = db_rows(&setup.db, &workflow_id);
    let freezes = sidecar.freezes();
    eprintln!(
        "stopped {stopped:.3} s; DBOS rows {rows:#?}\nfreezes {freezes:#?}\nspans:\n{}",
        trace.iter().map(show).collect::<Vec<_>>().join("\n")
    );

    // The root: the workflow, from its start to its last row.
    let roots: Vec<&Span> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root span per workflow trace");
    let root = roots[0];
    assert_eq!(root.name, WORKFLOW);
    assert_eq!(string_attr(root, "workflow.id"), Some(workflow_id.as_str()));
    assert_eq!(string_attr(root, "stallwatch.source"), Some(SOURCE));
    let first_start = rows.iter().map(|r| r.started_ms).min().unwrap();
    let last_end = rows.iter().map(|r| r.completed_ms).max().unwrap();
    assert!(
        root.start_time_unix_nano <= first_start as u64 * NS_PER_MS,
        "the root starts by the first row"
    );
    assert_eq!(root.end_time_unix_nano, last_end as u64 * NS_PER_MS);
    for s in &trace {
        assert_eq!(s.trace_id, root.trace_id, "{}", show(s));
        if s.span_id != root.span_id {
            assert_eq!(s.parent_span_id, root.span_id, "{}", show(s));
        }
    }

    // One span per row DBOS wrote, with DBOS's own times.
    let step_spans: Vec<&Span> = trace
        .iter()
        .filter(|s| s.attributes.iter().any(|kv| kv.key == "step.index"))
        .collect();
    assert_eq!(
        step_spans.len(),
        rows.len(),
        "one span per operation_outputs row"
    );
    let names: Vec<&str> = rows.iter().map(|r| r.step.as_str()).collect();
    for step in ["fetch", "crunch", "DBOS.recv", "store"] {
        assert!(names.contains(&step), "DBOS wrote no {step} row: {rows:?}");
    }
    for row in &rows {
        let span = step_spans
            .iter()
            .find(|s| s.name == row.step)
            .unwrap_or_else(|| panic!("no span for DBOS row {row:?}"));
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (
                row.started_ms as u64 * NS_PER_MS,
                row.completed_ms as u64 * NS_PER_MS
            ),
            "span {} vs DBOS row {row:?}",
            show(span)
        );
    }

    // The held time is one gap, the app's own (the sidecar ran through it).
    let find = |step: &str| rows.iter().find(|r| r.step == step).unwrap();
    let (recv, store, crunch) = (find("DBOS.recv"), find("store"), find("crunch"));
    let gaps: Vec<&Span> = trace.iter().filter(|s| s.name == "step_gap").collect();
    assert_eq!(gaps.len(), 1, "one gap longer than gap_min");
    let gap = gaps[0];
    assert_eq!(
        (gap.start_time_unix_nano, gap.end_time_unix_nano),
        (
            recv.completed_ms as u64 * NS_PER_MS,
            store.started_ms as u64 * NS_PER_MS
        )
    );
    assert_eq!(string_attr(gap, "gap.cause"), Some("stall"));
    assert_eq!(string_attr(gap, "gap.to_step"), Some("store"));
    assert!(double_attr(gap, "gap.seconds").unwrap() >= GAP_MIN_SECONDS);

    // The freeze: inside this trace, inside crunch, as long as the stop.
    let freeze_spans: Vec<&Span> = trace.iter().filter(|s| s.name == "freeze").collect();
    assert_eq!(freeze_spans.len(), 1, "the stop is one freeze in the trace");
    let f = freeze_spans[0];
    assert_eq!(string_attr(f, "freeze.kind"), Some("process_stall"));
    assert!(
        f.start_time_unix_nano >= crunch.started_ms as u64 * NS_PER_MS
            && f.end_time_unix_nano <= crunch.completed_ms as u64 * NS_PER_MS,
        "the freeze {} lies inside crunch {crunch:?}",
        show(f)
    );
    let duration = (f.end_time_unix_nano - f.start_time_unix_nano) as f64 / 1e9;
    assert_near(
        "freeze span duration",
        duration,
        stopped,
        FREEZE_TOLERANCE_SECONDS,
    );
    let recorded = freezes
        .iter()
        .find(|e| Some(e.id) == int_attr(f, "freeze.id"))
        .unwrap_or_else(|| panic!("freeze.id of {} is not in /api/v1/freezes", show(f)));
    assert_eq!(recorded.kind, "process_stall");
    assert_near(
        "freeze.duration_seconds vs /api/v1/freezes",
        double_attr(f, "freeze.duration_seconds").unwrap(),
        recorded.duration_seconds,
        1e-6,
    );
    let channels = strings_attr(f, "freeze.channels");
    assert!(channels.contains(&"tick".to_string()), "{channels:?}");

    // Sent once: no second copy of the freeze (on its own or in another trace).
    let everything = collector.delivered_spans();
    let all_freezes = everything.iter().filter(|s| s.name == "freeze").count();
    assert_eq!(
        all_freezes, 1,
        "the freeze is exported once, inside the workflow"
    );
    let ids: Vec<&Vec<u8>> = everything.iter().map(|s| &s.span_id).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no span is sent twice");

    // What the collector saw of the request, and what the log never shows.
    let requests = collector.requests();
    for r in &requests {
        assert_eq!(r.path, "/v1/traces");
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(r.header("authorization"), Some(TOKEN));
        assert_eq!(r.service_name().as_deref(), Some(SERVICE));
    }
    let log = sidecar.log();
    assert!(
        !log.contains("otlp-test-token"),
        "the token is in the log:\n{log}"
    );
    assert_eq!(dropped_spans(sidecar), 0.0);
    drop(setup);
    app.quit();
}

#[test]
fn a_down_collector_keeps_the_sidecar_serving_and_gets_the_trace_when_back() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let (setup, mut app) = Setup::new(&endpoint);
    let sidecar = &setup.sidecar;

    let label = "quick";
    let workflow_id = app.start_ingest(label, 0.2, false);
    app.expect_phase("done", label);
    poll_until(
        "the exporter to report the collector down",
        TRACE_TIMEOUT,
        || {
            let log = sidecar.log();
            if log.contains("OTLP collector unreachable") {
                Ok(())
            } else {
                Err("no warning yet".to_string())
            }
        },
    );
    // Still serving with the collector down. (Coming back soon after: the backoff keeps
    // growing while it is down, and this test should not wait out a 30 s ceiling.)
    let health = sidecar.get("/healthz");
    assert_eq!(
        health.status, 200,
        "/healthz with the collector down: {health:?}"
    );
    let up = format!("stallwatch_source_up{{source=\"{SOURCE}\"}}");
    assert_eq!(sidecar.metrics().value(&up), Some(1.0));

    // Back, but failing twice with 503 before it takes anything.
    let collector = Collector::start(Some((port, vec![503, 503])));
    let trace = wait_for_trace(&collector, &workflow_id, RECOVERY_TIMEOUT);
    std::thread::sleep(AFTERWARDS);
    let requests = collector.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    eprintln!("collector answered {statuses:?}");
    assert_eq!(&statuses[..3], [503, 503, 200], "{statuses:?}");
    let root = trace.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
    for refused in &requests[..2] {
        assert!(
            refused.spans().iter().any(|s| s.span_id == root.span_id),
            "a retry sends the same spans, with the same ids"
        );
    }
    let rows = db_rows(&setup.db, &workflow_id);
    assert_eq!(trace.len(), 1 + rows.len(), "root and one span per row");

    let log = sidecar.log();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("OTLP collector unreachable"),
        1,
        "logged once:\n{log}"
    );
    assert_eq!(count("OTLP collector reachable again"), 1, "{log}");
    assert_eq!(dropped_spans(sidecar), 0.0, "retried, not dropped");
    assert_eq!(sidecar.get("/healthz").status, 200);
    assert_eq!(sidecar.metrics().value(&up), Some(1.0));
    drop(setup);
    app.quit();
}

#[test]
fn a_freeze_outside_any_workflow_is_its_own_trace_and_a_hung_collector_cannot_hold_up_a_stop() {
    let collector = Collector::start(None);
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::start_with(
        &dir.path().join("data"),
        &Launch {
            // Only the app-side freeze trace is counted here; the sidecar's own spans
            // have a test of their own.
            config: Some(format!(
                "[otlp]\nendpoint = \"{}\"\nself_spans = false\n",
                collector.endpoint()
            )),
            env: Vec::new(),
        },
    );
    std::thread::sleep(WARM_UP);
    let stopped = sidecar.stop_for(STOP).as_secs_f64();
    let spans = poll_until("the freeze's own trace", TRACE_TIMEOUT, || {
        let spans = collector.delivered_spans();
        if spans.is_empty() {
            Err("nothing yet".to_string())
        } else {
            Ok(spans)
        }
    });
    std::thread::sleep(AFTERWARDS);
    let spans_now = collector.delivered_spans();
    assert_eq!(spans_now.len(), 1, "one span: {spans_now:?}");
    let f = &spans[0];
    eprintln!("stopped {stopped:.3} s: {}", show(f));
    assert_eq!(f.name, "freeze");
    assert!(f.parent_span_id.is_empty(), "a root of its own");
    assert_eq!(string_attr(f, "freeze.kind"), Some("process_stall"));
    let duration = (f.end_time_unix_nano - f.start_time_unix_nano) as f64 / 1e9;
    assert_near(
        "freeze span duration",
        duration,
        stopped,
        FREEZE_TOLERANCE_SECONDS,
    );
    assert_eq!(
        collector.requests()[0].service_name().as_deref(),
        Some("stallwatch"),
        "the default service name"
    );

    // The collector now reads a request and never answers: a stop must not wait for it.
    collector.hang();
    sidecar.stop_for(STOP);
    poll_until(
        "the next export to hang",
        TRACE_TIMEOUT,
        || match collector.requests().len() {
            2 => Ok(()),
            n => Err(format!("{n} requests")),
        },
    );
    sidecar.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let status = sidecar.wait_exit(SHUTDOWN_BUDGET);
    eprintln!("stopped in {:.3} s: {status:?}", t0.elapsed().as_secs_f64());
    assert!(
        status.is_some_and(|s| s.success()),
        "a clean exit within {SHUTDOWN_BUDGET:?} with the collector hung: {status:?}\n{}",
        sidecar.log()
    );
}

#[test]
fn the_sidecars_own_polls_freeze_decision_and_deliveries_are_spans_of_the_same_service() {
    let collector = Collector::start(None);
    let hook = Receiver::start();
    // The first delivery fails: one retried attempt, then the one that is sent.
    hook.script(vec![Reply::status(503)]);
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("worker.jsonl");
    std::fs::write(&log_file, "").unwrap();
    let config = format!(
        "[[source]]\nname = \"{OWN_SOURCE}\"\nkind = \"jsonl\"\nurl = \"{}\"\npoll = \"{POLL}\"\n\n\
         [alerts]\ngroup_wait = \"0s\"\nbackoff_initial = \"200ms\"\nbackoff_max = \"400ms\"\n\n\
         [[rule]]\nrule = \"freeze\"\nthreshold = \"1s\"\n{}\n\
         [[channel]]\nname = \"phone\"\nkind = \"webhook\"\nurl = \"{}\"\n\n\
         [otlp]\nendpoint = \"{}\"\nservice_name = \"{SERVICE}\"\n",
        log_file.display(),
        common::quiet_rules_except("freeze"),
        hook.url("/hook"),
        collector.endpoint()
    );
    let mut launch = Launch {
        config: Some(config),
        env: Vec::new(),
    };
    launch.env.push(("STALLWATCH_LOG".into(), "info".into()));
    let sidecar = Sidecar::start_with(&dir.path().join("data"), &launch);
    std::thread::sleep(WARM_UP);
    let stopped = sidecar.stop_for(STOP).as_secs_f64();
    hook.wait_for(2, TRACE_TIMEOUT);
    let own = |name: &str| -> Vec<Span> {
        collector
            .delivered_spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    };
    let deliveries = poll_until("both delivery attempts as spans", TRACE_TIMEOUT, || {
        let d = own("stallwatch.deliver");
        if d.len() >= 2 && !own("stallwatch.freeze").is_empty() {
            Ok(d)
        } else {
            Err(format!("{} delivery spans so far", d.len()))
        }
    });

    // Polls: roots of their own, each with its source and outcome.
    let polls = own("stallwatch.poll");
    assert!(polls.len() >= 2, "a span per poll: {}", polls.len());
    for p in &polls {
        assert!(p.parent_span_id.is_empty(), "a poll is a root: {}", show(p));
        assert_eq!(string_attr(p, "source"), Some(OWN_SOURCE), "{}", show(p));
        assert_eq!(string_attr(p, "source.kind"), Some("jsonl"), "{}", show(p));
        assert_eq!(string_attr(p, "outcome"), Some("ok"), "{}", show(p));
        assert_eq!(int_attr(p, "steps"), Some(0), "an empty log: {}", show(p));
        assert!(p.end_time_unix_nano >= p.start_time_unix_nano);
    }

    // The freeze decision: the stop, as the detector recorded it.
    let freezes = own("stallwatch.freeze");
    assert_eq!(freezes.len(), 1, "{freezes:?}");
    let f = &freezes[0];
    eprintln!("stopped {stopped:.3} s: {}", show(f));
    assert_eq!(string_attr(f, "freeze.kind"), Some("process_stall"));
    assert_near(
        "freeze.duration_seconds",
        double_attr(f, "freeze.duration_seconds").expect("freeze.duration_seconds"),
        stopped,
        FREEZE_TOLERANCE_SECONDS,
    );

    // Deliveries: the 503 is a retried attempt marked as an error, then the one sent.
    let mut deliveries = deliveries;
    deliveries.sort_by_key(|d| d.start_time_unix_nano);
    let (failed, sent) = (&deliveries[0], &deliveries[1]);
    for d in [failed, sent] {
        assert_eq!(string_attr(d, "channel"), Some("phone"), "{}", show(d));
        assert_eq!(string_attr(d, "rule"), Some("freeze"), "{}", show(d));
    }
    assert_eq!(
        string_attr(failed, "outcome"),
        Some("retried"),
        "{}",
        show(failed)
    );
    assert_eq!(
        int_attr(failed, "http.response.status_code"),
        Some(503),
        "{}",
        show(failed)
    );
    assert_eq!(int_attr(failed, "attempt"), Some(1));
    assert_eq!(status_code(failed), STATUS_CODE_ERROR, "{}", show(failed));
    assert_eq!(string_attr(sent, "outcome"), Some("sent"), "{}", show(sent));
    assert_eq!(int_attr(sent, "http.response.status_code"), Some(200));
    assert_eq!(int_attr(sent, "attempt"), Some(2));
    assert_ne!(status_code(sent), STATUS_CODE_ERROR, "{}", show(sent));

    // One service for the app's traces and the sidecar's own.
    for r in collector.requests() {
        assert_eq!(r.service_name().as_deref(), Some(SERVICE));
    }
    // The log reads as it does without [otlp]: no span names in front of its lines.
    let log = sidecar.log();
    assert!(log.contains("notification delivered"), "{log}");
    assert!(log.contains("freeze detected"), "{log}");
    assert!(!log.contains("stallwatch.poll"), "{log}");
    assert!(!log.contains("stallwatch.deliver"), "{log}");
    assert!(!log.contains("stallwatch.freeze"), "{log}");
    assert_eq!(dropped_spans(&sidecar), 0.0);
}

#[test]
fn a_bad_otlp_table_is_one_sentence_and_exit_2() {
    let cases = [
        (
            "[otlp]\nendpoint = \"ftp://collector.example:4318\"\n",
            vec!["otlp.endpoint ", "http:// or https://"],
            None,
        ),
        (
            "[otlp]\nendpoint = \"collector.example:4318\"\n",
            vec!["otlp.endpoint ", "http:// or https://"],
            None,
        ),
        (
            "[otlp]\nendpoint = \"http://127.0.0.1:4318\"\nheaders = { authorization = \"Bearer s3cret-value\\n\" }\n",
            vec!["otlp.headers.authorization ", "not a valid HTTP header value"],
            Some("s3cret-value"),
        ),
        (
            "[otlp]\nendpoint = \"http://127.0.0.1:4318\"\nsample_rate = 1\n",
            vec!["otlp.sample_rate ", "is not a known setting"],
            None,
        ),
        (
            "[otlp]\nendpoint = \"http://127.0.0.1:4318\"\nself_spans = \"yes\"\n",
            vec!["otlp.self_spans ", "true or false"],
            None,
        ),
    ];
    for (text, needles, secret) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let checked = run_to_exit(["check-config".as_ref(), path.as_os_str()]);
        let data = dir.path().join("data");
        let run = run_to_exit([
            "run".as_ref(),
            "--listen".as_ref(),
            format!("127.0.0.1:{}", free_port()).as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--config".as_ref(),
            path.as_os_str(),
        ]);
        for out in [&checked, &run] {
            assert_eq!(out.status.code(), Some(2), "{text}\nstderr: {}", out.stderr);
            let lines = out.stderr_lines();
            assert_eq!(lines.len(), 1, "one sentence for {text:?}: {}", out.stderr);
            for needle in &needles {
                assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
            }
            if let Some(secret) = secret {
                assert!(!out.stderr.contains(secret), "{}", out.stderr);
            }
        }
        assert!(!data.exists(), "a refused run creates no data dir");
    }
}

// ---- what the collector got -----------------------------------------------------------

/// Every span of the trace whose root names `workflow_id`, once delivered (200).
fn wait_for_trace(collector: &Collector, workflow_id: &str, timeout: Duration) -> Vec<Span> {
    poll_until(
        &format!("the trace of workflow {workflow_id}"),
        timeout,
        || {
            let spans = collector.delivered_spans();
            let root = spans.iter().find(|s| {
                s.parent_span_id.is_empty() && string_attr(s, "workflow.id") == Some(workflow_id)
            });
            match root {
                Some(root) => Ok(spans
                    .iter()
                    .filter(|s| s.trace_id == root.trace_id)
                    .cloned()
                    .collect()),
                None => Err(format!(
                    "{} requests, spans: {:?}",
                    collector.requests().len(),
                    spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
                )),
            }
        },
    )
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attr<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match attr(s, key) {
        Some(Value::StringValue(v)) => Some(v),
        _ => None,
    }
}

fn double_attr(s: &Span, key: &str) -> Option<f64> {
    match attr(s, key) {
        Some(Value::DoubleValue(v)) => Some(*v),
        _ => None,
    }
}

fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key) {
        Some(Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

fn strings_attr(s: &Span, key: &str) -> Vec<String> {
    match attr(s, key) {
        Some(Value::ArrayValue(a)) => a
            .values
            .iter()
            .filter_map(|v| match &v.value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn status_code(s: &Span) -> i32 {
    s.status.as_ref().map_or(0, |st| st.code)
}

fn show(s: &Span) -> String {
    let attributes: Vec<String> = s
        .attributes
        .iter()
        .map(|kv| {
            format!(
                "{}={:?}",
                kv.key,
                kv.value.as_ref().and_then(|v| v.value.as_ref())
            )
        })
        .collect();
    format!(
        "{} [{:.3} .. {:.3}] {}",
        s.name,
        s.start_time_unix_nano as f64 / 1e9,
        s.end_time_unix_nano as f64 / 1e9,
        attributes.join(" ")
    )
}

fn dropped_spans(sidecar: &Sidecar) -> f64 {
    sidecar
        .metrics()
        .expect("stallwatch_dropped_total{queue=\"otlp_spans\"}")
}

/// One request the collector read.
#[derive(Debug, Clone)]
struct Export {
    path: String,
    /// Names lower-cased.
    headers: HashMap<String, String>,
    body: ExportTraceServiceRequest,
    /// What the collector answered.
    status: u16,
}

impl Export {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn spans(&self) -> Vec<Span> {
        self.body
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }

    fn service_name(&self) -> Option<String> {
        self.body.resource_spans.iter().find_map(|r| {
            r.resource.as_ref()?.attributes.iter().find_map(|kv| {
                match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(v) if kv.key == "service.name" => Some(v.clone()),
                    _ => None,
                }
            })
        })
    }
}

#[derive(Default)]
struct CollectorState {
    requests: Vec<Export>,
    /// Statuses to answer before the default 200.
    script: VecDeque<u16>,
    /// Requests that did not decode as `ExportTraceServiceRequest`.
    garbage: Vec<String>,
    /// Read requests and hold them unanswered for [`HANG`].
    hang: bool,
}

/// A minimal OTLP/HTTP collector: `POST /v1/traces` with a protobuf body, decoded with
/// `opentelemetry-proto`, recorded, answered (scripted status, else 200 with an empty
/// `ExportTraceServiceResponse`). One thread per connection, `Connection: close`.
struct Collector {
    addr: SocketAddr,
    state: Arc<Mutex<CollectorState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 16 << 20;

impl Collector {
    /// Listens on `port` (or any free one) and answers `script` first.
    fn start(on: Option<(u16, Vec<u16>)>) -> Collector {
        let (port, script) = on.unwrap_or((0, Vec::new()));
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding the collector");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(CollectorState {
            script: script.into(),
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || serve(stream, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Collector {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// From now on, hold every request unanswered (recorded with status 0).
    fn hang(&self) {
        self.state.lock().unwrap().hang = true;
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Export> {
        let state = self.state.lock().unwrap();
        assert!(
            state.garbage.is_empty(),
            "undecodable requests: {:?}",
            state.garbage
        );
        state.requests.clone()
    }

    /// Spans of every request answered 200.
    fn delivered_spans(&self) -> Vec<Span> {
        self.requests()
            .iter()
            .filter(|r| r.status == 200)
            .flat_map(Export::spans)
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<CollectorState>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_BODY_BYTES);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let status = {
        let mut s = state.lock().unwrap();
        match ExportTraceServiceRequest::decode(&body[..]) {
            Ok(decoded) => {
                let status = if s.hang {
                    0
                } else {
                    s.script.pop_front().unwrap_or(200)
                };
                s.requests.push(Export {
                    path,
                    headers,
                    body: decoded,
                    status,
                });
                status
            }
            Err(e) => {
                s.garbage.push(format!("{request_line}: {e}"));
                400
            }
        }
    };
    if status == 0 {
        std::thread::sleep(HANG);
        return;
    }
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.flush();
}

// ---- what DBOS wrote ------------------------------------------------------------------

/// One `operation_outputs` row.
#[derive(Debug, Clone)]
struct Row {
    step: String,
    started_ms: i64,
    completed_ms: i64,
}

/// The rows of one workflow, read-only, in one short statement.
fn db_rows(db: &Path, workflow_id: &str) -> Vec<Row> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("opening {} read-only: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT function_name, started_at_epoch_ms, completed_at_epoch_ms \
             FROM operation_outputs WHERE workflow_uuid = ?1 ORDER BY function_id",
        )
        .unwrap();
    let rows = stmt
        .query_map([workflow_id], |r| {
            Ok(Row {
                step: r.get(0)?,
                started_ms: r.get(1)?,
                completed_ms: r.get(2)?,
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

// ---- setup: venv, app, sidecar --------------------------------------------------------

struct Setup {
    // Field order is drop order: the sidecar goes before its directory.
    sidecar: Sidecar,
    db: PathBuf,
    _dir: TempDir,
}

impl Setup {
    /// Starts the app (it creates the DB), then a sidecar watching it and exporting to
    /// `endpoint`; returns both once the source is up.
    fn new(endpoint: &str) -> (Setup, App) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("dbos.sqlite");
        let app = App::start(Mode::Trace, SystemDb::Sqlite(&db, Journal::Wal), dir.path());
        let config = format!(
            "[[source]]\nname = \"{SOURCE}\"\nkind = \"dbos\"\nurl = \"sqlite://{}\"\n\
             poll = \"{POLL}\"\ngap_min = \"{GAP_MIN_SECONDS}s\"\n\n\
             [otlp]\nendpoint = \"{endpoint}\"\nservice_name = \"{SERVICE}\"\nself_spans = false\n\
             headers = {{ Authorization = \"${{OTLP_TOKEN}}\" }}\n",
            db.display()
        );
        let sidecar = Sidecar::start_with(
            &dir.path().join("data"),
            &Launch {
                config: Some(config),
                env: vec![("OTLP_TOKEN".into(), TOKEN.into())],
            },
        );
        let up = format!("stallwatch_source_up{{source=\"{SOURCE}\"}}");
        poll_until(
            "the dbos source to be up",
            SOURCE_UP_TIMEOUT,
            || match sidecar.metrics().value(&up) {
                Some(1.0) => Ok(()),
                other => Err(format!("{up} = {other:?}")),
            },
        );
        (
            Setup {
                sidecar,
                db,
                _dir: dir,
            },
            app,
        )
    }
}
