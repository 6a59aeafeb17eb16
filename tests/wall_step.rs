//! Issue 3: a step of the wall clock while the machine runs (an NTP step, `date -s`) is a
//! `wall_clock_step` of that signed size — not a suspend (docs/design.md, clock table, last row).
//! Issue 13: a *forward* step that nothing explains is time this machine did not run (what
//! a Firecracker snapshot restore leaves once the clock is set right): a `vm_pause` seen by
//! `wall_step`, counted and alerted as a freeze. A backward step, and a forward step that
//! undoes measured drift, stay `wall_clock_step` (ARCHITECTURE.md, "Forward steps"). This
//! machine has no reference clock and an unsynchronised kernel clock, so nothing else
//! explains a step here.
//!
//! The sidecar runs under libfaketime (Debian package `libfaketime`, pulled in by
//! `faketime`), in its thread-safe build `libfaketimeMT.so.1`: the sidecar is
//! multithreaded, and the plain `libfaketime.so.1` re-reads the offset file into one
//! unguarded static buffer, so with `FAKETIME_NO_CACHE=1` threads race and the faked
//! clock flips between the old and the new offset for a moment after each rewrite
//! (seen here as extra ±60 s steps).
//!
//! It runs with `FAKETIME_DONT_FAKE_MONOTONIC=1`, which leaves CLOCK_MONOTONIC(_RAW,
//! _COARSE) *and* CLOCK_BOOTTIME real (libfaketime 0.9.10 `clock_gettime` excludes them
//! from faking together); only REALTIME moves, so no `suspend` can appear. Without that
//! variable libfaketime fakes MONOTONIC and BOOTTIME along with REALTIME and no step
//! would be visible at all. The offset is read from `FAKETIME_TIMESTAMP_FILE` on every
//! call (`FAKETIME_NO_CACHE=1`), so rewriting the file steps the clock.
//!
//! Note on libfaketime 0.9.10 (Debian 12): with `FAKETIME_DONT_FAKE_MONOTONIC=1` it still
//! rewrites absolute `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)` deadlines as if
//! they were faked times, so the kernel gets a negative time and returns EINVAL
//! (wolfcw/libfaketime#426, fixed in 0.9.11). See the last test here.

mod common;

use std::path::Path;
use std::time::Duration;

use common::faketime::FakeClock;
use common::receiver::Receiver;
use common::{assert_near, poll_until, Freeze, Launch, Sidecar};

/// Normal running before a step.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long an event may take to appear (the 2 s merge window plus a busy machine).
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Extra running after the last expected event, for anything unexpected to show up.
const SETTLE: Duration = Duration::from_secs(3);
/// Tolerance issue 3 states for the size of each step.
const STEP_TOLERANCE_SECONDS: f64 = 1.0;

/// Waits for `n` events, showing the sidecar's own idea of the time (its `Date` header,
/// which libfaketime fakes) if they do not come, to tell "faketime not in effect" from
/// "step not detected".
fn wait_for(sidecar: &Sidecar, n: usize) -> Vec<Freeze> {
    poll_until(&format!("{n} freeze event(s)"), EVENT_TIMEOUT, || {
        let events = sidecar.freezes();
        if events.len() >= n {
            return Ok(events);
        }
        let date = sidecar.get("/healthz").header("date").map(str::to_string);
        Err(format!(
            "{events:?}; the sidecar's clock says {date:?}, the test's says {:?}",
            httpdate::fmt_http_date(std::time::SystemTime::now())
        ))
    })
}

/// Starts under libfaketime, steps REALTIME +120 s, then −60 s (offset +120 → +60),
/// waiting for each step's event. Returns the sidecar for further checks.
fn step_plus_120_then_minus_60(dir: &Path) -> Sidecar {
    let clock = FakeClock::new(dir);
    let sidecar = Sidecar::start_with(&dir.join("data"), &clock.launch());
    std::thread::sleep(WARM_UP);
    clock.set("+120");
    wait_for(&sidecar, 1);
    clock.set("+60");
    wait_for(&sidecar, 2);
    std::thread::sleep(SETTLE);
    sidecar
}

#[test]
fn a_forward_step_nothing_explains_is_lost_time_and_a_backward_step_is_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = step_plus_120_then_minus_60(dir.path());

    let events = sidecar.freezes();
    let summary: Vec<(&str, f64)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.duration_seconds))
        .collect();
    assert_eq!(
        events.len(),
        2,
        "expected exactly the two steps, nothing else (no suspend, no stall): {summary:?}\n{events:#?}"
    );
    let mut by_id = events.clone();
    by_id.sort_by_key(|e| e.id);
    let (forward, back) = (&by_id[0], &by_id[1]);
    assert_eq!(
        forward.kind, "vm_pause",
        "+120 s with no explanation: {summary:?}"
    );
    assert_eq!(forward.channels.len(), 1, "{forward:#?}");
    assert!(forward.channel("wall_step").is_some(), "{forward:#?}");
    assert_near(
        "lost time",
        forward.duration_seconds,
        120.0,
        STEP_TOLERANCE_SECONDS,
    );
    assert_eq!(back.kind, "wall_clock_step", "{summary:?}");
    assert_near(
        "backward step",
        back.duration_seconds,
        -60.0,
        STEP_TOLERANCE_SECONDS,
    );

    let m = sidecar.metrics();
    m.assert_freezes(&[("vm_pause", 1.0), ("wall_clock_step", 1.0)]);
    assert_eq!(m.expect("stallwatch_wall_clock_steps_total"), 1.0);
    assert_near(
        "frozen_seconds_total{kind=vm_pause}",
        m.expect("stallwatch_frozen_seconds_total{kind=\"vm_pause\"}"),
        120.0,
        STEP_TOLERANCE_SECONDS,
    );
    assert_eq!(m.expect("stallwatch_freeze_duration_seconds_count"), 1.0);
    let log = sidecar.log();
    assert!(
        log.contains("over time this machine did not run"),
        "the log says what the step was: {log}"
    );
}

/// A wall clock running 10 % slow (libfaketime rate 0.9) is 1 s behind after 10 s; a +1 s
/// correction then undoes measured drift: a `wall_clock_step`, not lost time. (The step
/// threshold is lowered to 500 ms: at the default 1 s, a 1 s correction less the 25 ms
/// the clock loses in that tick is drift, not a step.)
#[test]
fn correcting_a_drifting_clock_is_a_wall_clock_step() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(dir.path());
    clock.set("+0 x0.9");
    let launch = Launch {
        config: Some("[freeze]\nwall_step = \"500ms\"\n".into()),
        env: clock.env(),
    };
    let sidecar = Sidecar::start_with(&dir.path().join("data"), &launch);
    let drift = |s: &Sidecar| s.metrics().expect("stallwatch_wall_clock_drift_seconds");
    poll_until("1 s of drift", Duration::from_secs(30), || {
        let d = drift(&sidecar);
        if d <= -1.0 {
            Ok(d)
        } else {
            Err(format!("drift {d} s"))
        }
    });
    clock.set("+1 x0.9");
    let events = wait_for(&sidecar, 1);
    std::thread::sleep(SETTLE);
    let events = if events.len() == 1 {
        sidecar.freezes()
    } else {
        events
    };
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].kind, "wall_clock_step", "{events:#?}");
    assert_near("step", events[0].duration_seconds, 1.0, 0.2);
    sidecar
        .metrics()
        .assert_freezes(&[("wall_clock_step", 1.0)]);
    assert!(sidecar.log().contains("undoes_drift"), "{}", sidecar.log());
}

/// A freeze found by a resync pages as a freeze, saying how it was seen.
#[test]
fn a_lost_time_step_is_alerted_by_the_freeze_rule() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    let clock = FakeClock::new(dir.path());
    let config = format!(
        "[alerts]\ngroup_wait = \"0s\"\n\n[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\n\
         [[rule]]\nrule = \"freeze\"\nthreshold = \"5s\"\n",
        rx.url("/hook")
    );
    let launch = Launch {
        config: Some(config),
        env: clock.env(),
    };
    let sidecar = Sidecar::start_with(&dir.path().join("data"), &launch);
    std::thread::sleep(WARM_UP);
    clock.set("+120");
    let got = rx.wait_for(1, EVENT_TIMEOUT);
    let body = got[0].text();
    assert!(
        body.contains("vm_pause") && body.contains("wall clock was stepped"),
        "the page names a freeze seen by the resync: {body}"
    );
    assert!(!body.contains("wall clock stepped forward"), "{body}");
    drop(sidecar);
}

/// The drift gauge is documented as "REALTIME minus MONOTONIC since start, excluding
/// steps": with a clock that only steps (libfaketime adds an exact offset) it must stay 0.
///
/// Fails today: src/freeze/detector.rs `on_wake` computes
/// `step = wall_moved - suspended.max(0)` and adds every sub-threshold `step` to the
/// drift. `suspended` (the change of BOOTTIME − MONOTONIC between ticks) is only read
/// noise when nothing suspends, and clipping it at 0 subtracts the positive half of that
/// noise on every tick: a bias that never averages out. It is ~15 ns a tick with vDSO
/// clocks (−5 ms a day at 4 ticks/s), and µs a tick when clock reads are slow, as here
/// with libfaketime. Subtracting `suspended` signed makes the sum telescope to the exact
/// change of REALTIME − BOOTTIME.
#[test]
fn drift_stays_zero_when_the_wall_clock_only_steps() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = step_plus_120_then_minus_60(dir.path());
    let m = sidecar.metrics();
    let drift = m.expect("stallwatch_wall_clock_drift_seconds");
    assert!(
        drift.abs() < 0.01,
        "stallwatch_wall_clock_drift_seconds is {drift} s after two exact steps and no drift; \
         status: {}; events: {:?}",
        sidecar.status(),
        sidecar.freezes()
    );
}

/// The tick loop sleeps between ticks under libfaketime 0.9.10 too: at most twice the
/// configured 4 ticks a second, and well under a core of CPU.
///
/// Fails today with Debian 12's libfaketime 0.9.10: `clock_nanosleep` returns EINVAL at
/// once (wolfcw/libfaketime#426) and src/clock.rs `sleep_until_mono` returns on any
/// result but EINTR, so the tick thread spins at 100 % CPU — ~100 000 ticks a second —
/// and nothing reports it. An error from `clock_nanosleep` other than EINTR should be
/// handled (e.g. fall back to a relative sleep of `deadline − now`), not taken as
/// "deadline reached".
#[test]
fn the_tick_loop_sleeps_under_libfaketime() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(dir.path());
    let sidecar = Sidecar::start_with(&dir.path().join("data"), &clock.launch());
    let ticks = |s: &Sidecar| s.status()["ticks"].as_u64().expect("ticks");
    let cpu = |s: &Sidecar| s.metrics().expect("process_cpu_seconds_total");
    let (ticks0, cpu0) = (ticks(&sidecar), cpu(&sidecar));
    let window = Duration::from_secs(5);
    let started = std::time::Instant::now();
    std::thread::sleep(window);
    let elapsed = started.elapsed().as_secs_f64();
    let (ticks1, cpu1) = (ticks(&sidecar), cpu(&sidecar));
    let rate = (ticks1 - ticks0) as f64 / elapsed;
    let cpu_share = (cpu1 - cpu0) / elapsed;
    assert!(
        rate <= 40.0 && cpu_share < 0.5,
        "the tick loop does not sleep: {rate:.0} ticks/s (configured 20/s), {:.0} % of a core",
        cpu_share * 100.0
    );
}
