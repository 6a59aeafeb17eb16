//! Bounded label values: the first `cap` distinct values of a label are kept, later ones
//! become `other`, so an app with a million workflow names cannot blow up Prometheus.

use std::collections::HashSet;

/// The label value that overflowing values are folded into.
pub const OVERFLOW_LABEL: &str = "other";

#[derive(Debug)]
pub struct LabelBudget {
    cap: usize,
    seen: HashSet<String>,
    overflowed: u64,
}

impl LabelBudget {
    pub fn new(cap: usize) -> LabelBudget {
        LabelBudget {
            cap,
            seen: HashSet::new(),
            overflowed: 0,
        }
    }

    /// The value to use for `value`: itself while within the budget, else `other`.
    pub fn admit<'a>(&mut self, value: &'a str) -> &'a str {
        if self.seen.contains(value) {
            return value;
        }
        if self.seen.len() < self.cap {
            self.seen.insert(value.to_string());
            return value;
        }
        self.overflowed += 1;
        OVERFLOW_LABEL
    }

    /// Values folded into `other` so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_cap_become_other() {
        let mut b = LabelBudget::new(2);
        assert_eq!(b.admit("a"), "a");
        assert_eq!(b.admit("b"), "b");
        assert_eq!(b.admit("c"), "other");
        assert_eq!(b.admit("a"), "a");
        assert_eq!(b.overflowed(), 1);
    }
}
