//! The allowed range of every duration and number in the config, in one table, and the
//! one helper that shortens a user's value before an error message quotes it.
//!
//! Owns the bounds, not the keys' meaning: each validator asks its key's [`Range`] to
//! check the value, so an out-of-range value is refused at config time with one sentence
//! naming the range (a duration of `u64::MAX` seconds would otherwise wrap to −1 s when it
//! becomes signed nanoseconds). Cross-key rules (`freeze.min` ≥ two ticks,
//! `backoff_max` ≥ `backoff_initial`) stay with their validators.

use std::borrow::Cow;
use std::time::Duration;

/// Most characters of a user's value an error message quotes: enough to recognise it,
/// never a 100 KB paste echoed back whole.
pub const MAX_ECHO_CHARS: usize = 80;

/// The inclusive range a setting must lie in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range<T> {
    pub min: T,
    pub max: T,
}

/// How a bound or a value is written in an error sentence.
pub trait Shown: Copy + PartialOrd {
    fn shown(self) -> String;
}

impl Shown for Duration {
    fn shown(self) -> String {
        clip(&humantime::format_duration(self).to_string()).into_owned()
    }
}

macro_rules! shown_as_display {
    ($($t:ty),*) => {$(
        impl Shown for $t {
            fn shown(self) -> String {
                clip(&self.to_string()).into_owned()
            }
        }
    )*};
}
shown_as_display!(u32, u64, usize, f64);

impl<T: Shown> Range<T> {
    pub const fn new(min: T, max: T) -> Range<T> {
        Range { min, max }
    }

    /// The value if it lies in the range, else the problem as "must be between … and …,
    /// not …". A NaN lies in no range.
    pub fn check(&self, value: T) -> Result<T, String> {
        if value >= self.min && value <= self.max {
            Ok(value)
        } else {
            Err(format!(
                "must be between {} and {}, not {}",
                self.min.shown(),
                self.max.shown(),
                value.shown()
            ))
        }
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

// ---- the table -----------------------------------------------------------------------
// One line per key: the range and why its ends are where they are.

/// `freeze.tick`: below 10 ms the wake-ups cost more CPU than the sidecar's budget;
/// above 10 s a stall's start is too vague to attribute.
pub const FREEZE_TICK: Range<Duration> = Range::new(ms(10), secs(10));
/// `freeze.min`: at least two of the shortest ticks; above an hour nothing would page.
pub const FREEZE_MIN: Range<Duration> = Range::new(ms(20), secs(HOUR));
/// `freeze.wall_step`: NTP slews far below 100 ms per tick; a step threshold above an
/// hour would miss every VM restore that matters.
pub const FREEZE_WALL_STEP: Range<Duration> = Range::new(ms(100), secs(HOUR));
/// `freeze.reference_interval`: at most once a second to a shared server, at least hourly.
pub const FREEZE_REFERENCE_INTERVAL: Range<Duration> = Range::new(secs(1), secs(HOUR));
/// `source.poll`: faster than 100 ms loads the app DB; slower than an hour is not live.
pub const SOURCE_POLL: Range<Duration> = Range::new(ms(100), secs(HOUR));
/// `source.stall_after`: a second at least (one poll); a week at most.
pub const SOURCE_STALL_AFTER: Range<Duration> = Range::new(secs(1), secs(7 * DAY));
/// `source.gap_min`: one poll's resolution at least; a day at most.
pub const SOURCE_GAP_MIN: Range<Duration> = Range::new(ms(100), secs(DAY));
/// `source.lease`: a task lease from a second to a week.
pub const SOURCE_LEASE: Range<Duration> = Range::new(secs(1), secs(7 * DAY));
/// `source.max_attempts`: DBOS and job agents retry at most hundreds of times.
pub const SOURCE_MAX_ATTEMPTS: Range<u32> = Range::new(1, 1000);
/// `source.cost_cap_usd`: a cent to a billion US dollars a day.
pub const SOURCE_COST_CAP_USD: Range<f64> = Range::new(0.01, 1e9);
/// `alerts.backoff_initial`.
pub const ALERTS_BACKOFF_INITIAL: Range<Duration> = Range::new(ms(100), secs(600));
/// `alerts.backoff_max` (also at least `backoff_initial`).
pub const ALERTS_BACKOFF_MAX: Range<Duration> = Range::new(ms(100), secs(DAY));
/// `alerts.outbox_max`: ~1 KiB a row, so at most ~1 GB of disk.
pub const ALERTS_OUTBOX_MAX: Range<usize> = Range::new(100, 1_000_000);
/// `alerts.heartbeat_interval`: healthchecks-style services expect minutes, not days.
pub const ALERTS_HEARTBEAT_INTERVAL: Range<Duration> = Range::new(secs(1), secs(HOUR));
/// `rule.threshold` for a rule measured in time.
pub const RULE_THRESHOLD_DURATION: Range<Duration> = Range::new(Duration::ZERO, secs(30 * DAY));
/// `rule.threshold` for a rule measured in a count.
pub const RULE_THRESHOLD_COUNT: Range<u64> = Range::new(1, 1_000_000);
/// `rule.levels`: percentages of the cost cap.
pub const RULE_LEVEL_PERCENT: Range<u32> = Range::new(1, 1000);
/// `rule.repeat_interval`: at most once a second, at least monthly.
pub const RULE_REPEAT_INTERVAL: Range<Duration> = Range::new(secs(1), secs(30 * DAY));
/// `rule.resolve_after`.
pub const RULE_RESOLVE_AFTER: Range<Duration> = Range::new(Duration::ZERO, secs(DAY));
/// `rule.for`.
pub const RULE_FOR: Range<Duration> = Range::new(Duration::ZERO, secs(DAY));
/// `alerts.group_wait`, `rule.group_wait`: how long a new group collects before it is sent.
pub const GROUP_WAIT: Range<Duration> = Range::new(Duration::ZERO, secs(HOUR));
/// `alerts.group_interval`, `rule.group_interval`: between two sends of one group.
pub const GROUP_INTERVAL: Range<Duration> = Range::new(Duration::ZERO, secs(DAY));
/// `alerts.freeze_settle`: how long after a freeze its consequences are folded into it.
pub const FREEZE_SETTLE: Range<Duration> = Range::new(Duration::ZERO, secs(HOUR));
/// `channel.max_per_hour`: 0 turns the limit off.
pub const CHANNEL_MAX_PER_HOUR: Range<u32> = Range::new(0, 10_000);
/// `channel.rate_window`: the window `max_per_hour` counts in.
pub const CHANNEL_RATE_WINDOW: Range<Duration> = Range::new(secs(10), secs(DAY));
/// `channel.timeout`: a TLS handshake over a slow link needs a second; a lane waits a
/// minute at most for one answer.
pub const CHANNEL_TIMEOUT: Range<Duration> = Range::new(secs(1), secs(60));

// ---- echoing a user's value ----------------------------------------------------------

/// At most [`MAX_ECHO_CHARS`] characters of `s`, with "…" and the full length when cut.
pub fn clip(s: &str) -> Cow<'_, str> {
    let chars = s.chars().count();
    if chars <= MAX_ECHO_CHARS {
        return Cow::Borrowed(s);
    }
    let head: String = s.chars().take(MAX_ECHO_CHARS).collect();
    Cow::Owned(format!("{head}… ({chars} characters)"))
}

/// A user's value quoted for an error message: `"abc"`, escaped, clipped by [`clip`].
pub fn quoted(s: &str) -> String {
    let chars = s.chars().count();
    if chars <= MAX_ECHO_CHARS {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(MAX_ECHO_CHARS).collect();
    format!("{head:?}… ({chars} characters)")
}

/// Every whitespace-separated word of a sentence clipped by [`clip`]: for messages built
/// elsewhere (argument parsing, serde) that may quote a value whole.
pub fn clip_words(sentence: &str) -> String {
    if sentence.len() <= MAX_ECHO_CHARS {
        return sentence.to_string();
    }
    let mut out = String::with_capacity(sentence.len().min(4 * MAX_ECHO_CHARS));
    let mut rest = sentence;
    while !rest.is_empty() {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..word_end];
        // A value [`quoted`] already clipped is two quotes and an ellipsis longer.
        if word.chars().count() <= MAX_ECHO_CHARS + 3 {
            out.push_str(word);
        } else {
            out.push_str(&clip(word));
        }
        rest = &rest[word_end..];
        let space_end = rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len());
        out.push_str(&rest[..space_end]);
        rest = &rest[space_end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_names_its_ends_and_the_value() {
        assert_eq!(FREEZE_TICK.check(ms(250)), Ok(ms(250)));
        let e = FREEZE_WALL_STEP.check(secs(u64::MAX)).unwrap_err();
        assert!(e.starts_with("must be between 100ms and 1h, not "), "{e}");
        assert!(e.chars().count() < 200, "{e}");
        assert!(SOURCE_COST_CAP_USD.check(f64::NAN).is_err());
        assert!(SOURCE_COST_CAP_USD.check(f64::INFINITY).is_err());
        assert_eq!(SOURCE_MAX_ATTEMPTS.check(4), Ok(4));
        assert!(SOURCE_MAX_ATTEMPTS.check(0).is_err());
    }

    #[test]
    fn every_table_entry_is_a_nonempty_range() {
        let durations = [
            FREEZE_TICK,
            FREEZE_MIN,
            FREEZE_WALL_STEP,
            FREEZE_REFERENCE_INTERVAL,
            SOURCE_POLL,
            SOURCE_STALL_AFTER,
            SOURCE_GAP_MIN,
            SOURCE_LEASE,
            ALERTS_BACKOFF_INITIAL,
            ALERTS_BACKOFF_MAX,
            ALERTS_HEARTBEAT_INTERVAL,
            RULE_THRESHOLD_DURATION,
            RULE_REPEAT_INTERVAL,
            RULE_RESOLVE_AFTER,
            RULE_FOR,
            CHANNEL_TIMEOUT,
            GROUP_WAIT,
            GROUP_INTERVAL,
            FREEZE_SETTLE,
            CHANNEL_RATE_WINDOW,
        ];
        for r in durations {
            assert!(r.min <= r.max, "{r:?}");
            // Every accepted duration fits signed nanoseconds with room to add a day.
            assert!(r.max.as_nanos() < (i64::MAX / 2) as u128, "{r:?}");
        }
    }

    #[test]
    fn a_long_value_is_quoted_short() {
        let long = "x".repeat(100_000);
        let q = quoted(&long);
        assert!(q.len() < 120, "{q}");
        assert!(q.contains("100000 characters"), "{q}");
        assert_eq!(quoted("fast"), "\"fast\"");
        assert_eq!(clip("short"), "short");
        let sentence = format!("invalid value '{long}' for '--listen'");
        let c = clip_words(&sentence);
        assert!(c.len() < 200 && c.ends_with(" for '--listen'"), "{c}");
    }
}
