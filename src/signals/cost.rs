//! The cost day: spend summed per calendar day in a fixed UTC offset, against a cap.

use crate::clock::NANOS_PER_SEC;

const DAY_NS: i64 = 86_400 * NANOS_PER_SEC;

/// The day number (days since 1970-01-01 in the given offset) a time falls on.
pub fn cost_day(unix_ns: i64, utc_offset_secs: i64) -> i64 {
    (unix_ns + utc_offset_secs * NANOS_PER_SEC).div_euclid(DAY_NS)
}

/// Spend of the current cost day.
#[derive(Debug, Clone, Default)]
pub struct CostLedger {
    utc_offset_secs: i64,
    day: i64,
    spent_usd: f64,
}

impl CostLedger {
    pub fn new(utc_offset_secs: i64) -> CostLedger {
        CostLedger {
            utc_offset_secs,
            day: i64::MIN,
            spent_usd: 0.0,
        }
    }

    /// Adds a spend that happened at `at_ns`; spends of earlier days are ignored,
    /// a spend of a later day starts that day.
    pub fn add(&mut self, at_ns: i64, usd: f64) {
        let day = cost_day(at_ns, self.utc_offset_secs);
        if day > self.day {
            self.day = day;
            self.spent_usd = 0.0;
        }
        if day == self.day && usd.is_finite() {
            self.spent_usd += usd;
        }
    }

    /// Spend today as of `now_ns` (0 once the day has turned).
    pub fn today_usd(&self, now_ns: i64) -> f64 {
        if cost_day(now_ns, self.utc_offset_secs) == self.day {
            self.spent_usd
        } else {
            0.0
        }
    }
}

/// Parses a UTC offset like `"UTC"`, `"+02:00"`, `"-05:30"` into seconds.
pub fn parse_utc_offset(text: &str) -> Option<i64> {
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return Some(0);
    }
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = text[1..].split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60 && h.to_string().len() <= 2).then_some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = NANOS_PER_SEC;

    #[test]
    fn spend_resets_at_midnight_in_the_offset() {
        let mut l = CostLedger::new(0);
        let midnight = 20_000 * 86_400 * S;
        l.add(midnight - 10 * S, 3.0);
        assert_eq!(l.today_usd(midnight - S), 3.0);
        assert_eq!(l.today_usd(midnight + S), 0.0);
        l.add(midnight + 5 * S, 1.5);
        l.add(midnight - 5 * S, 9.0); // late arrival from yesterday: not today's
        assert_eq!(l.today_usd(midnight + 6 * S), 1.5);
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_utc_offset("UTC"), Some(0));
        assert_eq!(parse_utc_offset("+02:00"), Some(7200));
        assert_eq!(parse_utc_offset("-05:30"), Some(-19800));
        assert_eq!(parse_utc_offset("Europe/Paris"), None);
        assert_eq!(cost_day(0, -3600), -1);
    }
}
