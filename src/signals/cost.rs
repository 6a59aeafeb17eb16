//! The cost day: spend summed per calendar day in a fixed UTC offset, against a cap.
//!
//! The day is the wall clock's (`now`, in the configured offset), never a spend line's:
//! one line dated days ahead must not move the day and blind the cap. Spend dated on the
//! day before or after today is kept under its own day (a clock stepped across midnight,
//! a writer slightly ahead near midnight); spend of any other day is not today's and is
//! dropped. Pure: times are passed in.

use crate::clock::NANOS_PER_SEC;

const DAY_NS: i64 = 86_400 * NANOS_PER_SEC;

/// Days kept on either side of today: one, so a clock stepped back or forward across one
/// midnight, or a line a little ahead just before midnight, keeps its day's sum.
const DAYS_KEPT_AROUND_TODAY: i64 = 1;

/// The day number (days since 1970-01-01 in the given offset) a time falls on.
pub fn cost_day(unix_ns: i64, utc_offset_secs: i64) -> i64 {
    unix_ns
        .saturating_add(utc_offset_secs.saturating_mul(NANOS_PER_SEC))
        .div_euclid(DAY_NS)
}

/// Spend per cost day, for today (by the wall clock) and the days next to it.
#[derive(Debug, Clone, Default)]
pub struct CostLedger {
    utc_offset_secs: i64,
    /// (day, USD), at most `2 * DAYS_KEPT_AROUND_TODAY + 1` entries.
    days: Vec<(i64, f64)>,
}

impl CostLedger {
    pub fn new(utc_offset_secs: i64) -> CostLedger {
        CostLedger {
            utc_offset_secs,
            days: Vec::new(),
        }
    }

    /// Adds a spend that happened at `at_ns`, as seen at wall time `now_ns`. Returns
    /// whether it was kept: spend of a day more than [`DAYS_KEPT_AROUND_TODAY`] from
    /// today is not, and neither is a spend that is not a finite number.
    pub fn add(&mut self, at_ns: i64, usd: f64, now_ns: i64) -> bool {
        let today = cost_day(now_ns, self.utc_offset_secs);
        self.days
            .retain(|(day, _)| (day - today).abs() <= DAYS_KEPT_AROUND_TODAY);
        let day = cost_day(at_ns, self.utc_offset_secs);
        if (day - today).abs() > DAYS_KEPT_AROUND_TODAY || !usd.is_finite() {
            return false;
        }
        match self.days.iter_mut().find(|(d, _)| *d == day) {
            Some((_, spent)) => *spent += usd,
            None => self.days.push((day, usd)),
        }
        true
    }

    /// Spend on the cost day of `now_ns` (0 once the day has turned and nothing is
    /// known of the new one).
    pub fn today_usd(&self, now_ns: i64) -> f64 {
        let today = cost_day(now_ns, self.utc_offset_secs);
        self.days
            .iter()
            .find(|(day, _)| *day == today)
            .map_or(0.0, |(_, spent)| *spent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = NANOS_PER_SEC;
    const DAY: i64 = 86_400 * S;

    #[test]
    fn spend_resets_at_midnight_in_the_offset() {
        let mut l = CostLedger::new(0);
        let midnight = 20_000 * DAY;
        l.add(midnight - 10 * S, 3.0, midnight - 10 * S);
        assert_eq!(l.today_usd(midnight - S), 3.0);
        assert_eq!(l.today_usd(midnight + S), 0.0);
        l.add(midnight + 5 * S, 1.5, midnight + 5 * S);
        // A late arrival from yesterday: not today's.
        l.add(midnight - 5 * S, 9.0, midnight + 5 * S);
        assert_eq!(l.today_usd(midnight + 6 * S), 1.5);
    }

    /// Issue 14 item 3: one line dated two days ahead zeroed today's spend and kept
    /// the cap from ever firing.
    #[test]
    fn a_spend_dated_days_ahead_does_not_move_the_day() {
        let mut l = CostLedger::new(0);
        let now = 20_000 * DAY + 12 * 3600 * S;
        assert!(l.add(now - 60 * S, 2.0, now));
        assert!(!l.add(now + 2 * DAY, 100.0, now));
        assert!(l.add(now, 4.0, now));
        assert_eq!(l.today_usd(now), 6.0);
        // Far past: not today's, and not kept either.
        assert!(!l.add(now - 30 * DAY, 7.0, now));
        assert_eq!(l.today_usd(now), 6.0);
    }

    #[test]
    fn the_day_follows_the_wall_clock_and_its_offset() {
        // 23:30 UTC is already tomorrow at +02:00.
        let late = 20_000 * DAY + (23 * 3600 + 1800) * S;
        let mut utc = CostLedger::new(0);
        let mut plus_two = CostLedger::new(7200);
        for l in [&mut utc, &mut plus_two] {
            l.add(late - 2 * 3600 * S, 1.0, late);
            l.add(late, 2.0, late);
        }
        assert_eq!(utc.today_usd(late), 3.0);
        assert_eq!(
            plus_two.today_usd(late),
            2.0,
            "22:30 UTC was today at +02:00"
        );
    }

    #[test]
    fn spend_a_little_ahead_before_midnight_counts_once_the_day_turns() {
        let midnight = 20_000 * DAY;
        let mut l = CostLedger::new(0);
        // A writer 20 minutes ahead logs tomorrow's spend before our midnight.
        assert!(l.add(midnight + 600 * S, 5.0, midnight - 600 * S));
        assert_eq!(l.today_usd(midnight - 600 * S), 0.0);
        assert_eq!(l.today_usd(midnight + S), 5.0);
    }

    #[test]
    fn a_clock_stepped_back_across_midnight_keeps_both_days() {
        let midnight = 20_000 * DAY;
        let mut l = CostLedger::new(0);
        l.add(midnight - 60 * S, 1.0, midnight - 60 * S);
        l.add(midnight + 60 * S, 2.0, midnight + 60 * S);
        // Stepped back to before midnight: yesterday's sum is today's again.
        assert_eq!(l.today_usd(midnight - 30 * S), 1.0);
        l.add(midnight - 20 * S, 0.5, midnight - 20 * S);
        assert_eq!(l.today_usd(midnight - 10 * S), 1.5);
        assert_eq!(l.today_usd(midnight + 90 * S), 2.0);
    }

    #[test]
    fn a_negative_offset_moves_the_day_back() {
        assert_eq!(cost_day(0, -3600), -1);
    }
}
