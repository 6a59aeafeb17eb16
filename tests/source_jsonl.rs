//! Issue 4: the `jsonl` source — spend against the daily cap, and a log followed across
//! appends, rename rotation and truncation without losing or double-counting an event.
//!
//! Events are counted through `stallwatch_cost_usd_today`. In the tailing test event `k`
//! costs 2^k/128 USD: every sum is exact in binary floating point, and the sum names the
//! set of events counted (bit `k` set = event `k` counted once), so a lost line or a line
//! read twice changes it.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{poll_until, Launch, Metrics, Sidecar};

/// Poll interval of the source under test.
const POLL: &str = "300ms";
/// How long an appended line may take to show in `/metrics`, on a loaded 2-core machine.
const SEEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for several polls to pass, to show a value stays put.
const SEVERAL_POLLS: Duration = Duration::from_secs(2);
/// The cap configured in the cost test.
const CAP_USD: f64 = 10.0;
/// Longest run of one test here, with room: the cost day must not turn during a test.
const LONGEST_TEST: Duration = Duration::from_secs(180);

fn now_unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Spend is per UTC day: if the day would turn during the test, wait for it to turn first.
fn avoid_utc_midnight() {
    let into_day = now_unix_s().rem_euclid(86_400.0);
    let left = 86_400.0 - into_day;
    if left < LONGEST_TEST.as_secs_f64() {
        std::thread::sleep(Duration::from_secs_f64(left + 1.0));
    }
}

/// One event line as the job agent logs it.
fn event(cost_usd: f64) -> String {
    format!(
        "{{\"ts\": {:.6}, \"key\": \"job-1\", \"event\": \"step_done\", \"cost_usd\": {cost_usd}}}\n",
        now_unix_s()
    )
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} to append: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("appending");
}

fn start(dir: &Path, log: &Path, cost_cap: Option<f64>) -> Sidecar {
    let cap = cost_cap.map_or(String::new(), |c| format!("cost_cap_usd = {c:?}\n"));
    let config = format!(
        "[[source]]\nname = \"spend\"\nkind = \"jsonl\"\nurl = \"{}\"\npoll = \"{POLL}\"\n{cap}",
        log.display()
    );
    Sidecar::start_with(
        &dir.join("data"),
        &Launch {
            config: Some(config),
            env: Vec::new(),
        },
    )
}

const COST_TODAY: &str = "stallwatch_cost_usd_today{source=\"spend\"}";
const COST_CAP: &str = "stallwatch_cost_cap_usd{source=\"spend\"}";
const UP: &str = "stallwatch_source_up{source=\"spend\"}";

/// Waits until `/metrics` shows `usd` spent today (exactly) with the source up.
#[track_caller]
fn wait_spent(sidecar: &Sidecar, usd: f64, describe: impl Fn(f64) -> String) -> Metrics {
    poll_until(&describe(usd), SEEN_TIMEOUT, || {
        let m = sidecar.metrics();
        match (m.value(UP), m.value(COST_TODAY)) {
            (Some(up), Some(spent)) if up == 1.0 && spent == usd => Ok(m),
            (up, Some(spent)) => Err(format!("up {up:?}, {}", describe(spent))),
            (up, None) => Err(format!("up {up:?}, no {COST_TODAY}")),
        }
    })
}

#[test]
fn cost_today_reaches_50_80_and_100_percent_of_the_cap_exactly() {
    avoid_utc_midnight();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    File::create(&log).unwrap();
    let sidecar = start(dir.path(), &log, Some(CAP_USD));
    let usd = |v: f64| format!("{v} USD spent today");
    let m = wait_spent(&sidecar, 0.0, usd);
    assert_eq!(m.expect(COST_CAP), CAP_USD);

    // Binary-exact amounts, so the sums are exact too.
    let steps: [(f64, &[f64]); 3] = [
        (0.5, &[1.25, 1.25, 1.25, 1.25]),
        (0.8, &[1.25, 1.75]),
        (1.0, &[1.25, 0.75]),
    ];
    let mut spent = 0.0;
    for (share, amounts) in steps {
        for &a in amounts {
            append(&log, &event(a));
            spent += a;
        }
        assert_eq!(spent, share * CAP_USD, "the fixture's running sum");
        let m = wait_spent(&sidecar, spent, usd);
        assert_eq!(m.expect(COST_CAP), CAP_USD);
        assert_eq!(m.expect(COST_TODAY) / m.expect(COST_CAP), share);
    }
    std::thread::sleep(SEVERAL_POLLS);
    let m = wait_spent(&sidecar, CAP_USD, usd);
    assert_eq!(m.expect(COST_CAP), CAP_USD);
}

/// The cost of event `k`: 2^k/128 USD.
fn cost_of(k: u32) -> f64 {
    f64::from(1u32 << k) / 128.0
}

/// Which events a sum counts, for a failure message: 128 × sum as a bit set.
fn events_in(usd: f64) -> String {
    let units = usd * 128.0;
    if units.fract() != 0.0 || units < 0.0 {
        return format!("{usd} USD (not a sum of distinct events)");
    }
    let bits = units as u64;
    let set: Vec<u32> = (0..64).filter(|k| bits & (1 << k) != 0).collect();
    format!("{usd} USD = events {set:?}")
}

/// Appends event `k`; returns the bit it adds.
fn log_event(path: &Path, k: u32) -> u64 {
    append(path, &event(cost_of(k)));
    1 << k
}

fn usd_of(bits: u64) -> f64 {
    bits as f64 / 128.0
}

#[test]
fn appends_rotation_and_truncation_lose_no_event_and_count_none_twice() {
    avoid_utc_midnight();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let rotated = dir.path().join("events.jsonl.1");
    let mut counted = 0u64;

    // Lines already in the log when the sidecar starts are today's spend.
    counted |= log_event(&log, 0);
    counted |= log_event(&log, 1);
    let sidecar = start(dir.path(), &log, None);
    wait_spent(&sidecar, usd_of(counted), events_in);

    // Appends, one of them written in two halves across polls.
    counted |= log_event(&log, 2);
    counted |= log_event(&log, 3);
    let line = event(cost_of(4));
    let (head, tail) = line.split_at(line.len() / 2);
    append(&log, head);
    wait_spent(&sidecar, usd_of(counted), events_in);
    std::thread::sleep(SEVERAL_POLLS);
    wait_spent(&sidecar, usd_of(counted), events_in);
    append(&log, tail);
    counted |= 1 << 4;
    wait_spent(&sidecar, usd_of(counted), events_in);

    // Rename rotation as an app with an open log sees it: the file is renamed, the app
    // writes a last line through the handle it still holds, then opens a new file.
    let mut writer = OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("the app's handle");
    fs::rename(&log, &rotated).expect("rotating the log");
    writer
        .write_all(event(cost_of(5)).as_bytes())
        .expect("writing to the renamed file");
    counted |= 1 << 5;
    drop(writer);
    counted |= log_event(&log, 6);
    counted |= log_event(&log, 7);
    wait_spent(&sidecar, usd_of(counted), events_in);
    counted |= log_event(&log, 8);
    wait_spent(&sidecar, usd_of(counted), events_in);

    // Truncation in place (what copytruncate does once it has copied), then new lines,
    // fewer bytes than were there.
    OpenOptions::new()
        .write(true)
        .open(&log)
        .expect("opening the log")
        .set_len(0)
        .expect("truncating the log");
    counted |= log_event(&log, 9);
    wait_spent(&sidecar, usd_of(counted), events_in);
    counted |= log_event(&log, 10);
    wait_spent(&sidecar, usd_of(counted), events_in);

    // Nothing is read twice later, and the rotated file is not read again.
    std::thread::sleep(SEVERAL_POLLS);
    wait_spent(&sidecar, usd_of(counted), events_in);
    assert_eq!(counted, (1 << 11) - 1, "events 0..=10 were written");
}
