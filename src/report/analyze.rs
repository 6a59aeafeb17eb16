//! `stallwatch analyze`, the pure part: completed step rows in (in completion order),
//! every step gap and wait overrun at or above `gap_min` out, per UTC day and longest
//! first. No I/O: [`super::scan`] reads the rows.
//!
//! Gaps come from [`GapTracker`], the same code the sidecar uses live, so intended waits
//! (`DBOS.recv`, `DBOS.sleep`) are never gaps and a wait that ended past its deadline is
//! an overrun. What is added here:
//!
//! - **Forgetting finished workflows.** The tracker remembers at most
//!   [`MAX_TRACKED_WORKFLOWS`] workflows and drops the least recently active beyond that,
//!   which in a busy app would be exactly the one with the long gap. So the scan tells the
//!   analyzer, with one of each workflow's rows, how many rows the workflow has, and the
//!   analyzer forgets it after its last row: the tracker then only holds workflows in
//!   flight. Rows that come before the one carrying the count are remembered (at most
//!   [`MAX_EARLY_WORKFLOWS`] workflows). Evictions that still happen are counted and
//!   reported, never silent.
//! - **Per-day statistics.** Count, total and longest are exact. p50/p99 are exact
//!   (nearest rank) up to [`MAX_SAMPLE_PER_DAY`] gaps of one kind on one day; beyond
//!   that the day keeps a systematic 1-in-2ⁿ sample of its gaps and says so
//!   (`sampled`), so memory stays bounded however many gaps a day has.
//! - **Longest first.** The `top` longest gaps overall and per day, with workflow ids;
//!   ties go to the earlier gap.
//!
//! A gap belongs to the UTC day it started on.

use std::collections::{BTreeMap, HashMap};

use super::stats::quantile_sorted;
use crate::signals::steps::{Gap, GapKind, GapTracker, StepRow, MAX_TRACKED_WORKFLOWS};
use crate::time::day_of;

/// Gap durations kept per day and kind for exact quantiles (8 bytes each: 800 KB).
pub const MAX_SAMPLE_PER_DAY: usize = 100_000;
/// Most gaps listed, overall and per day.
pub const MAX_TOP: usize = 1_000;
/// Workflows whose rows are counted while their total is not known yet (it comes with a
/// later row, or never). Beyond this, such workflows are left to the tracker's own bound.
pub const MAX_EARLY_WORKFLOWS: usize = 100_000;

/// Count, total, longest and quantiles of one kind of gap on one day.
#[derive(Debug, Clone, Default)]
pub struct GapStats {
    pub count: u64,
    pub total_ns: i64,
    pub longest_ns: i64,
    /// Durations of every `stride`-th gap offered (every gap while `stride` is 1).
    sample: Vec<i64>,
    stride: u64,
}

impl GapStats {
    pub fn add(&mut self, duration_ns: i64) {
        let stride = self.stride.max(1);
        if self.count % stride == 0 {
            self.sample.push(duration_ns);
            if self.sample.len() >= MAX_SAMPLE_PER_DAY {
                // Keep offers 0, 2s, 4s, …: still every (2s)-th offer.
                let kept: Vec<i64> = self.sample.iter().step_by(2).copied().collect();
                self.sample = kept;
                self.stride = stride * 2;
            }
        }
        self.count += 1;
        self.total_ns += duration_ns;
        self.longest_ns = self.longest_ns.max(duration_ns);
    }

    /// Whether the quantiles come from a sample rather than every gap.
    pub fn sampled(&self) -> bool {
        self.stride > 1
    }

    /// Nearest-rank quantiles, one per `q`.
    pub fn quantiles(&self, qs: &[f64]) -> Vec<Option<i64>> {
        let mut sorted = self.sample.clone();
        sorted.sort_unstable();
        qs.iter().map(|q| quantile_sorted(&sorted, *q)).collect()
    }
}

/// The `k` longest gaps seen, longest first; equal durations keep the earlier gap first.
#[derive(Debug, Clone)]
pub struct Longest {
    k: usize,
    items: Vec<Gap>,
}

impl Longest {
    pub fn new(k: usize) -> Longest {
        Longest {
            k: k.min(MAX_TOP),
            items: Vec::new(),
        }
    }

    fn before(a: &Gap, b: &Gap) -> bool {
        (
            std::cmp::Reverse(a.duration_ns()),
            a.start_ns,
            &a.workflow_id,
        ) < (
            std::cmp::Reverse(b.duration_ns()),
            b.start_ns,
            &b.workflow_id,
        )
    }

    pub fn offer(&mut self, gap: &Gap) {
        if self.k == 0 {
            return;
        }
        if self.items.len() == self.k && !Self::before(gap, self.items.last().expect("k > 0")) {
            return;
        }
        let at = self.items.partition_point(|g| Self::before(g, gap));
        self.items.insert(at, gap.clone());
        self.items.truncate(self.k);
    }

    pub fn items(&self) -> &[Gap] {
        &self.items
    }

    fn items_mut(&mut self) -> &mut [Gap] {
        &mut self.items
    }
}

/// One UTC day's gaps.
#[derive(Debug, Clone)]
pub struct Day {
    pub day: i64,
    pub step: GapStats,
    pub overrun: GapStats,
    pub longest: Longest,
}

/// Gaps at or above a threshold, per day and overall.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub gap_min_ns: i64,
    pub days: BTreeMap<i64, Day>,
    pub longest: Longest,
    pub step_gaps: u64,
    pub wait_overruns: u64,
    top: usize,
}

impl Analysis {
    pub fn new(gap_min_ns: i64, top: usize) -> Analysis {
        Analysis {
            gap_min_ns,
            days: BTreeMap::new(),
            longest: Longest::new(top),
            step_gaps: 0,
            wait_overruns: 0,
            top,
        }
    }

    /// Ids of the workflows of every gap listed (overall and per day), each once.
    pub fn listed_workflows(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .longest
            .items()
            .iter()
            .chain(self.days.values().flat_map(|d| d.longest.items()))
            .map(|g| g.workflow_id.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Gives the listed gaps their workflow names (id → name).
    pub fn name_workflows(&mut self, names: &HashMap<String, String>) {
        let lists = std::iter::once(&mut self.longest)
            .chain(self.days.values_mut().map(|d| &mut d.longest));
        for list in lists {
            for g in list.items_mut() {
                if let Some(name) = names.get(&g.workflow_id) {
                    g.workflow_name = name.clone();
                }
            }
        }
    }

    /// Counts `gap` if it is at least `gap_min`.
    pub fn add(&mut self, gap: &Gap) {
        let d = gap.duration_ns();
        if d < self.gap_min_ns {
            return;
        }
        let day = day_of(gap.start_ns);
        let top = self.top;
        let entry = self.days.entry(day).or_insert_with(|| Day {
            day,
            step: GapStats::default(),
            overrun: GapStats::default(),
            longest: Longest::new(top),
        });
        match gap.kind {
            GapKind::Step => {
                entry.step.add(d);
                self.step_gaps += 1;
            }
            GapKind::WaitOverrun => {
                entry.overrun.add(d);
                self.wait_overruns += 1;
            }
        }
        entry.longest.offer(gap);
        self.longest.offer(gap);
    }
}

/// Rows in, [`Analysis`] out: the [`GapTracker`] plus forgetting finished workflows.
#[derive(Debug)]
pub struct Analyzer {
    tracker: GapTracker,
    /// Rows still to come per workflow, once its total is known.
    expected: HashMap<String, u64>,
    /// Rows seen per workflow whose total is not known yet.
    early: HashMap<String, u64>,
    pub analysis: Analysis,
    /// Rows fed.
    pub rows: u64,
    /// Workflows the tracker had to drop while they were still in flight (a gap of theirs
    /// would be missed).
    pub evicted: u64,
    /// Earliest start and latest completion of the rows fed.
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
}

impl Analyzer {
    pub fn new(gap_min_ns: i64, top: usize) -> Analyzer {
        Analyzer {
            tracker: GapTracker::default(),
            expected: HashMap::new(),
            early: HashMap::new(),
            analysis: Analysis::new(gap_min_ns, top),
            rows: 0,
            evicted: 0,
            first_ns: None,
            last_ns: None,
        }
    }

    /// Workflows being tracked (in flight, as far as the rows read so far show).
    pub fn tracked(&self) -> usize {
        self.tracker.tracked()
    }

    /// Feeds one row, in completion order, with the workflow's total row count if this
    /// row carries it. Returns the gap or overrun before the row, whatever its length
    /// (the analysis itself counts only those at or above `gap_min`).
    pub fn observe(&mut self, row: StepRow, total_rows: Option<u64>) -> Option<Gap> {
        self.rows += 1;
        self.first_ns = Some(
            self.first_ns
                .map_or(row.started_ns, |f| f.min(row.started_ns)),
        );
        self.last_ns = Some(
            self.last_ns
                .map_or(row.completed_ns, |l| l.max(row.completed_ns)),
        );
        let before = self.tracker.tracked();
        let gap = self.tracker.observe(&row);
        let after = self.tracker.tracked();
        // An eviction drops a tenth of the tracked workflows; nothing else shrinks it here.
        if before >= MAX_TRACKED_WORKFLOWS && after < before {
            self.evicted += (before + 1 - after) as u64;
        }
        if let Some(gap) = &gap {
            self.analysis.add(gap);
        }
        self.settle(row.workflow_id, total_rows);
        gap
    }

    /// Counts a workflow's row and forgets the workflow after its last.
    fn settle(&mut self, id: String, total_rows: Option<u64>) {
        let left = match total_rows {
            Some(total) => {
                let seen = self.early.remove(&id).unwrap_or(0) + 1;
                Some(total.saturating_sub(seen))
            }
            None => match self.expected.get_mut(&id) {
                Some(left) => {
                    *left = left.saturating_sub(1);
                    Some(*left)
                }
                None => {
                    if self.early.len() < MAX_EARLY_WORKFLOWS || self.early.contains_key(&id) {
                        *self.early.entry(id).or_insert(0) += 1;
                    }
                    return;
                }
            },
        };
        match left {
            Some(0) => {
                self.expected.remove(&id);
                self.tracker.forget(&id);
            }
            Some(n) if total_rows.is_some() => {
                self.expected.insert(id, n);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;
    const S: i64 = 1_000 * MS;
    /// 2025-11-20T15:11:15Z.
    const T0: i64 = 1_763_651_475 * S;

    fn row(wf: &str, step: &str, started: i64, completed: i64) -> StepRow {
        StepRow {
            workflow_id: wf.into(),
            workflow_name: String::new(),
            step: step.into(),
            started_ns: started,
            completed_ns: completed,
            deadline_ns: None,
        }
    }

    fn gap(kind: GapKind, wf: &str, start: i64, secs: i64) -> Gap {
        Gap {
            kind,
            workflow_id: wf.into(),
            workflow_name: "w".into(),
            from_step: "a".into(),
            to_step: "b".into(),
            start_ns: start,
            end_ns: start + secs * S,
        }
    }

    /// The incident as DBOS 3.4 writes it, in completion order.
    fn incident(wf: &str) -> Vec<StepRow> {
        let recv_start = T0 + 4 * MS;
        let deadline = recv_start + 60 * S;
        vec![
            row(wf, "parse_email", T0 - 200 * MS, T0),
            StepRow {
                deadline_ns: Some(deadline),
                ..row(wf, "DBOS.sleep", T0 + 6 * MS, T0 + 7 * MS)
            },
            row(wf, "DBOS.recv", recv_start, deadline + 6 * MS),
            row(wf, "generate_reply", T0 + 6_493 * S, T0 + 6_497 * S),
            row(wf, "send_reply", T0 + 6_497 * S + 2 * MS, T0 + 6_498 * S),
        ]
    }

    #[test]
    fn the_incident_is_one_107_minute_gap_after_the_debounce() {
        let mut a = Analyzer::new(60 * S, 10);
        for (i, r) in incident("wf-1").into_iter().enumerate() {
            let row = StepRow {
                workflow_name: "reply".into(),
                ..r
            };
            a.observe(row, (i == 0).then_some(5));
        }
        let longest = a.analysis.longest.items();
        assert_eq!(longest.len(), 1, "{longest:#?}");
        let g = &longest[0];
        assert_eq!(
            (g.kind, g.workflow_id.as_str(), g.workflow_name.as_str()),
            (GapKind::Step, "wf-1", "reply")
        );
        assert_eq!(
            (g.from_step.as_str(), g.to_step.as_str()),
            ("DBOS.recv", "generate_reply")
        );
        // 16:59:28 − (15:12:15.010, the end of the debounce) = 6432.990 s.
        assert_eq!(g.duration_ns(), 6_432_990 * MS);
        assert_eq!((a.analysis.step_gaps, a.analysis.wait_overruns), (1, 0));
        assert_eq!(a.tracked(), 0, "a finished workflow is forgotten");
        assert_eq!(
            (a.rows, a.first_ns, a.last_ns),
            (5, Some(T0 - 200 * MS), Some(T0 + 6_498 * S))
        );
    }

    #[test]
    fn a_wait_that_overran_its_deadline_is_an_overrun_on_its_day() {
        let mut a = Analyzer::new(60 * S, 10);
        let deadline = T0 + 60 * S;
        a.observe(row("w", "parse", T0 - S, T0), None);
        a.observe(
            StepRow {
                deadline_ns: Some(deadline),
                ..row("w", "DBOS.sleep", T0, T0 + MS)
            },
            None,
        );
        a.observe(row("w", "DBOS.recv", T0, deadline + 600 * S), None);
        a.observe(
            row("w", "send", deadline + 600 * S, deadline + 601 * S),
            None,
        );
        assert_eq!((a.analysis.step_gaps, a.analysis.wait_overruns), (0, 1));
        let day = &a.analysis.days[&day_of(T0)];
        assert_eq!((day.overrun.count, day.overrun.longest_ns), (1, 600 * S));
    }

    #[test]
    fn threshold_is_inclusive_and_days_split_at_utc_midnight() {
        let mut a = Analysis::new(60 * S, 10);
        let midnight = (day_of(T0) + 1) * crate::time::DAY_NS;
        a.add(&gap(GapKind::Step, "a", T0, 59));
        a.add(&gap(GapKind::Step, "b", T0, 60));
        a.add(&gap(GapKind::Step, "c", midnight - S, 120));
        a.add(&gap(GapKind::Step, "d", midnight, 90));
        let days: Vec<(i64, u64)> = a.days.values().map(|d| (d.day, d.step.count)).collect();
        assert_eq!(days, vec![(day_of(T0), 2), (day_of(T0) + 1, 1)]);
        let ids: Vec<&str> = a
            .longest
            .items()
            .iter()
            .map(|g| g.workflow_id.as_str())
            .collect();
        assert_eq!(ids, vec!["c", "d", "b"]);
        assert_eq!(a.listed_workflows(), vec!["b", "c", "d"]);
        a.name_workflows(&HashMap::from([("c".to_string(), "named".to_string())]));
        assert_eq!(a.longest.items()[0].workflow_name, "named");
        assert_eq!(
            a.days[&day_of(T0)].longest.items()[0].workflow_name,
            "named",
            "c started the day before midnight"
        );
    }

    #[test]
    fn per_day_quantiles_are_nearest_rank_and_exact() {
        let mut s = GapStats::default();
        for secs in (1..=100).rev() {
            s.add(secs * S);
        }
        assert_eq!(s.quantiles(&[0.5, 0.99]), vec![Some(50 * S), Some(99 * S)]);
        assert_eq!(
            (s.count, s.longest_ns, s.total_ns, s.sampled()),
            (100, 100 * S, 5050 * S, false)
        );
    }

    #[test]
    fn a_day_with_more_gaps_than_the_sample_keeps_a_systematic_sample() {
        let mut s = GapStats::default();
        let n = 3 * MAX_SAMPLE_PER_DAY as i64;
        for i in 0..n {
            s.add(i % 1000);
        }
        assert!(s.sampled());
        assert_eq!(s.count, n as u64);
        assert_eq!(s.longest_ns, 999);
        assert!(s.sample.len() < MAX_SAMPLE_PER_DAY);
        let q = s.quantiles(&[0.5])[0].unwrap();
        assert!(
            (490..=510).contains(&q),
            "median of a uniform 0..1000 sample: {q}"
        );
    }

    #[test]
    fn longest_keeps_the_k_longest_and_earlier_first_on_ties() {
        let mut l = Longest::new(2);
        l.offer(&gap(GapKind::Step, "x", 5 * S, 10));
        l.offer(&gap(GapKind::Step, "y", S, 10));
        l.offer(&gap(GapKind::Step, "z", 0, 5));
        l.offer(&gap(GapKind::Step, "w", 0, 30));
        let ids: Vec<&str> = l.items().iter().map(|g| g.workflow_id.as_str()).collect();
        assert_eq!(ids, vec!["w", "y"]);
    }

    #[test]
    fn without_row_counts_evictions_are_counted_not_silent() {
        let mut a = Analyzer::new(60 * S, 10);
        // The stalled workflow first, then enough others to fill the tracker.
        a.observe(row("stalled", "a", 0, S), None);
        for i in 0..MAX_TRACKED_WORKFLOWS as i64 {
            a.observe(row(&format!("w{i}"), "a", 2 * S + i, 2 * S + i + 1), None);
        }
        assert!(a.evicted > 0);
        // With row counts, finished workflows leave and nothing is evicted.
        let mut b = Analyzer::new(60 * S, 10);
        b.observe(row("stalled", "a", 0, S), Some(2));
        for i in 0..MAX_TRACKED_WORKFLOWS as i64 {
            b.observe(
                row(&format!("w{i}"), "a", 2 * S + i, 2 * S + i + 1),
                Some(1),
            );
        }
        b.observe(row("stalled", "b", 7_200 * S, 7_201 * S), None);
        assert_eq!(b.evicted, 0);
        assert_eq!(b.analysis.longest.items()[0].duration_ns(), 7_199 * S);
        assert_eq!(b.tracked(), 0);
    }

    #[test]
    fn a_count_that_comes_with_a_later_row_still_forgets_at_the_last() {
        // A workflow that starts with a recv: its placeholder (function 2) completes
        // before the recv (function 1), which carries the count of 3.
        let mut a = Analyzer::new(60 * S, 10);
        a.observe(row("w", "DBOS.sleep", 0, MS), None);
        assert_eq!(a.tracked(), 1);
        a.observe(row("w", "DBOS.recv", 0, S), Some(3));
        assert_eq!(a.tracked(), 1, "one row still to come");
        a.observe(row("w", "send", S, 2 * S), None);
        assert_eq!((a.tracked(), a.early.len(), a.expected.len()), (0, 0, 0));
    }
}
