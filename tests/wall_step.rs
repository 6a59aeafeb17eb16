//! Issue 3: a step of the wall clock while the machine runs (an NTP step, `date -s`) is a
//! `wall_clock_step` of that signed size — not lost time, not a suspend (DESIGN.md, clock
//! table, last row).
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
use common::{assert_near, poll_until, Freeze, Sidecar};

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
fn stepping_the_wall_clock_is_two_wall_clock_steps_and_nothing_else() {
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
    for e in &events {
        assert_eq!(e.kind, "wall_clock_step", "{events:#?}");
        assert!(e.channel("wall_step").is_some(), "{e:#?}");
    }
    let mut by_id = events.clone();
    by_id.sort_by_key(|e| e.id);
    assert_near(
        "first step",
        by_id[0].duration_seconds,
        120.0,
        STEP_TOLERANCE_SECONDS,
    );
    assert_near(
        "second step",
        by_id[1].duration_seconds,
        -60.0,
        STEP_TOLERANCE_SECONDS,
    );

    let m = sidecar.metrics();
    m.assert_freezes(&[("wall_clock_step", 2.0)]);
    assert_eq!(m.expect("stallwatch_wall_clock_steps_total"), 2.0);
    // A step is not lost time.
    assert_eq!(
        m.expect("stallwatch_frozen_seconds_total{kind=\"suspend\"}"),
        0.0
    );
    assert_eq!(m.expect("stallwatch_freeze_duration_seconds_count"), 0.0);
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
        rate <= 8.0 && cpu_share < 0.5,
        "the tick loop does not sleep: {rate:.0} ticks/s (configured 4/s), {:.0} % of a core",
        cpu_share * 100.0
    );
}
