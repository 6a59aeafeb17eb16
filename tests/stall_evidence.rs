//! Issue 13 item 5: a `process_stall` carries the evidence that tells why this process did
//! not run, so a whole-machine stop (none of it) can be told from a stop of this process
//! alone. Three ways to stall the real sidecar, each with the evidence that tells it apart:
//!
//! - `SIGSTOP`: `sigcont` (the stop's length), no `run_delay`, `throttled`, `cgroup_freeze`;
//! - a cgroup freeze: `cgroup_freeze`, no `sigcont`, `run_delay` or `throttled`;
//! - CPU starvation (a CFS quota of 1 ms a second, spent by a busy loop in the same
//!   cgroup): `run_delay` or `throttled` covering at least half of the stall, no `sigcont`
//!   or `cgroup_freeze`; and an app's step gap over it is `cause = starvation`, not
//!   `freeze`.
//!
//! The kind stays `process_stall` in every case. These tests need root and cgroups (the
//! v1 freezer and cpu controllers, or v2 with `cgroup.freeze` and the cpu controller); they
//! fail, not skip, without them. The sidecar starts inside its test cgroup, as a service
//! does: it resolves its cgroup once, at start.
//!
//! **The v1 freezer** notifies nothing itself. What the sidecar sees is the write of
//! `FROZEN` (and of `THAWED`) to `freezer.state`: an `IN_MODIFY` on a file it watches
//! (its own freezer cgroup's and every ancestor's), queued while it was frozen and read
//! after the thaw. A freezer driven some other way than by writing those files would not
//! be seen. v2's `cgroup.events` is notified by the kernel itself.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cgroup::{v1_mount, v2_mount, TestCgroup, Version};
use common::{poll_until, Freeze, Launch, Sidecar};

/// How long the sidecar is stopped or frozen.
const STOP: Duration = Duration::from_secs(3);
/// Normal running first: the evidence is sampled once a second and a stall needs a
/// sample from before it.
const WARM_UP: Duration = Duration::from_secs(2);
/// How long the event may take to appear: it is held open for the 2 s merge window.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Extra running after the first event, for any other to show up.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the cgroup's CPU is starved.
const STARVE: Duration = Duration::from_secs(4);
/// The starving quota: 1 ms of CPU a second (the smallest v1 accepts), which a busy loop
/// spends at the start of each period. Measured here: the tick thread then waits for the
/// next period, 750 ms (or 1,750 ms) past its deadline.
const QUOTA: Duration = Duration::from_millis(1);
const PERIOD: Duration = Duration::from_secs(1);
/// A CFS period is at most 1 s, so overruns under a quota stay below it: the stall
/// threshold is lowered to 600 ms (at least two ticks, as the config requires).
/// The app is a JSONL log whose gaps over 2 s are step gaps.
const STARVATION_CONFIG: &str = "[freeze]\nmin = \"600ms\"\n\n\
    [[source]]\nname = \"app\"\nkind = \"jsonl\"\nurl = \"{log}\"\npoll = \"300ms\"\ngap_min = \"2s\"\n";
/// How long the app's step gap may take to be attributed: the merge window and the
/// source's settling after the gap ends, on a loaded machine.
const EPISODE_TIMEOUT: Duration = Duration::from_secs(20);
/// The numeric evidence channels only appear when at least 1/20 of the stall.
const CPU_CHANNELS: [&str; 2] = ["run_delay", "throttled"];

/// Every channel of an event, for messages and the measured numbers.
fn evidence(e: &Freeze) -> String {
    let channels: Vec<String> = e
        .channels
        .iter()
        .map(|c| format!("{} {:.3} s", c.channel, c.estimate_seconds))
        .collect();
    format!(
        "{} of {:.3} s: {}",
        e.kind,
        e.duration_seconds,
        channels.join(", ")
    )
}

/// Waits for the stall(s) a cause made and returns them, checking each is a
/// `process_stall` seen by the tick.
fn stalls(sidecar: &Sidecar) -> Vec<Freeze> {
    sidecar.wait_for_freezes(1, EVENT_TIMEOUT);
    std::thread::sleep(SETTLE);
    let events = sidecar.freezes();
    for e in &events {
        eprintln!("measured: {}", evidence(e));
        assert_eq!(e.kind, "process_stall", "the kind never changes: {e:#?}");
        assert!(e.channel("tick").is_some(), "{e:#?}");
    }
    events
}

#[track_caller]
fn assert_absent(e: &Freeze, channels: &[&str]) {
    for c in channels {
        assert_eq!(e.channel(c), None, "no {c} expected: {}", evidence(e));
    }
}

#[test]
fn a_sigstop_stall_carries_sigcont_and_no_cpu_starvation() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(&dir.path().join("data"));
    std::thread::sleep(WARM_UP);

    let stopped = sidecar.stop_for(STOP).as_secs_f64();

    let events = stalls(&sidecar);
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    let sigcont = e
        .channel("sigcont")
        .unwrap_or_else(|| panic!("a stop ended by SIGCONT: {}", evidence(e)));
    assert!(
        (sigcont - stopped).abs() <= 0.3,
        "sigcont says stopped {sigcont:.3} s, the test stopped it {stopped:.3} s"
    );
    assert_absent(e, &["run_delay", "throttled", "cgroup_freeze"]);
}

#[test]
fn a_cgroup_freeze_stall_carries_cgroup_freeze_and_no_sigcont() {
    // Every freezer this machine has: v1's when mounted, v2's when it can freeze.
    let mut freezers = Vec::new();
    if let Some(root) = v1_mount("freezer") {
        freezers.push((Version::V1, root));
    }
    if let Some(root) = v2_mount() {
        freezers.push((Version::V2, root));
    }
    let mut tried = 0;
    for (version, root) in freezers {
        let cgroup = TestCgroup::create(version, &root, "freeze")
            .unwrap_or_else(|e| panic!("this test needs root to make cgroups: {e}"));
        if version == Version::V2 && !cgroup.dir.join("cgroup.freeze").exists() {
            continue; // a v2 kernel before 5.2: no v2 freezer
        }
        tried += 1;
        freeze_once(&cgroup);
    }
    assert!(
        tried > 0,
        "no cgroup freezer here (neither /sys/fs/cgroup/freezer nor cgroup.freeze): this \
         test needs one and does not skip"
    );
}

/// Freezes a sidecar started in `cgroup` for [`STOP`] and checks its stall's evidence.
fn freeze_once(cgroup: &TestCgroup) {
    let dir = tempfile::tempdir().unwrap();
    eprintln!("freezer {:?}: {}", cgroup.version, cgroup.dir.display());
    let sidecar = Sidecar::start_in(
        &dir.path().join("data"),
        &Launch::default(),
        &[cgroup.procs()],
    );
    // Dropped before the sidecar: a frozen process cannot be killed and reaped.
    let _thaw = cgroup.thaw_on_drop();
    std::thread::sleep(WARM_UP);

    cgroup.freeze_for(STOP);

    let events = stalls(&sidecar);
    assert_eq!(events.len(), 1, "{:?}: {events:#?}", cgroup.version);
    let e = &events[0];
    assert!(
        e.channel("cgroup_freeze").is_some(),
        "{:?} freezer: {}\n{}",
        cgroup.version,
        evidence(e),
        sidecar.log()
    );
    assert_absent(e, &["sigcont", "run_delay", "throttled"]);
}

/// Appends one event of job `job-1` to the app's JSONL log, stamped now.
fn app_event(log: &Path, event: &str) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .expect("opening the app's log");
    writeln!(
        f,
        "{{\"ts\": {ts:.6}, \"key\": \"job-1\", \"event\": \"{event}\"}}"
    )
    .expect("appending to the app's log");
}

/// A busy loop inside a cgroup, killed when dropped.
struct BusyLoop(Child);

impl BusyLoop {
    fn start_in(cgroup: &TestCgroup) -> BusyLoop {
        let script = format!(
            "echo 0 > '{}' && exec sh -c 'while :; do :; done'",
            cgroup.procs().display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning a busy loop");
        BusyLoop(child)
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_cpu_starved_stall_carries_run_delay_or_throttling_over_half_of_it() {
    let (version, root) = match (v1_mount("cpu"), v2_mount()) {
        (Some(root), _) => (Version::V1, root),
        (None, Some(root)) => (Version::V2, root),
        (None, None) => panic!("no cgroup cpu controller here: this test needs one"),
    };
    let cgroup = TestCgroup::create(version, &root, "starve")
        .unwrap_or_else(|e| panic!("this test needs root to make cgroups: {e}"));
    let quota_file = match version {
        Version::V1 => "cpu.cfs_quota_us",
        Version::V2 => "cpu.max",
    };
    if version == Version::V2 && !cgroup.dir.join(quota_file).exists() {
        // The cpu controller is not enabled below the root yet.
        std::fs::write(root.join("cgroup.subtree_control"), "+cpu")
            .unwrap_or_else(|e| panic!("cannot enable the v2 cpu controller: {e}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.jsonl");
    std::fs::File::create(&log).unwrap();
    let launch = Launch {
        config: Some(STARVATION_CONFIG.replace("{log}", &log.display().to_string())),
        ..Launch::default()
    };
    let sidecar = Sidecar::start_in(&dir.path().join("data"), &launch, &[cgroup.procs()]);
    std::thread::sleep(WARM_UP);
    app_event(&log, "fetch");

    cgroup
        .set_cpu_quota(Some((QUOTA, PERIOD)))
        .unwrap_or_else(|e| panic!("cannot set {quota_file} of {}: {e}", cgroup.dir.display()));
    let busy = BusyLoop::start_in(&cgroup);
    std::thread::sleep(STARVE);
    // Lifted first: a throttled busy loop takes periods to die of its SIGKILL.
    cgroup.set_cpu_quota(None).expect("lifting the quota");
    drop(busy);
    app_event(&log, "store");
    eprintln!("cpu.stat after: {:?}", cgroup.read("cpu.stat"));

    let events = stalls(&sidecar);
    for e in &events {
        let starved = CPU_CHANNELS
            .iter()
            .filter_map(|c| e.channel(c))
            .fold(0.0, f64::max);
        assert!(
            starved >= e.duration_seconds / 2.0,
            "run_delay or throttled must cover at least half of the stall: {}",
            evidence(e)
        );
        assert_absent(e, &["sigcont", "cgroup_freeze"]);
    }

    // The app's gap over the starvation: the machine ran, short of CPU — not a freeze.
    let episodes = poll_until("the app's step gap", EPISODE_TIMEOUT, || {
        let r = sidecar.get("/api/v1/episodes");
        let episodes = r.json();
        match episodes.as_array() {
            Some(list) if !list.is_empty() => Ok(list.clone()),
            _ => Err(format!("{r:?}")),
        }
    });
    eprintln!("episodes: {episodes:?}");
    assert_eq!(episodes.len(), 1, "{episodes:#?}");
    let gap = &episodes[0];
    assert_eq!(gap["kind"], "step_gap", "{gap:#}");
    assert_eq!(gap["cause"], "starvation", "{gap:#}");
    assert!(
        events.iter().any(|e| gap["freeze_id"] == e.id),
        "the gap names one of the stalls: {gap:#}, {events:#?}"
    );
    let m = sidecar.metrics();
    for (cause, n) in [("starvation", 1.0), ("freeze", 0.0), ("stall", 0.0)] {
        assert_eq!(
            m.expect(&format!(
                "stallwatch_step_gaps_total{{cause=\"{cause}\",source=\"app\"}}"
            )),
            n,
            "step gaps caused by {cause}"
        );
    }
}
