//! `stallwatch report --format html`: one self-contained page — inline CSS, an inline SVG
//! timeline, no scripts, fonts, images or links to anything — so it can be mailed,
//! attached to a ticket or opened offline. Pure: a [`ReportData`] in, a string out.
//!
//! The timeline has one lane per freeze kind and one per episode kind, over the report
//! window. Each freeze or episode is a bar from its start, as long as it lasted (at least
//! [`MIN_MARK_PX`] wide so a 2 s freeze in a week stays visible), coloured by freeze kind
//! or by the episode's cause, with a tooltip giving its start and duration.

use std::fmt::Write as _;

use super::history::{EpisodeRow, FreezeRow};
use super::render::report::{
    alert_rows, episode_total_cells, freeze_cells, kind_cells, no_data_sentence, notification_rows,
    steps_text, ALERT_COLUMNS, EPISODE_COLUMNS, EPISODE_TOTAL_COLUMNS, FREEZE_COLUMNS,
    KIND_COLUMNS, NOTIFICATION_COLUMNS, NO_ALERT_HISTORY,
};
use super::render::watched_text;
use super::results::ReportData;
use crate::freeze::FreezeKind;
use crate::time::{day_label, human, rfc3339, Window, DAY_NS};

/// Width of the SVG's coordinate system (it scales to the page).
pub const SVG_WIDTH: f64 = 960.0;
/// Left edge of the plot: the lane labels sit left of it.
pub const PLOT_LEFT: f64 = 170.0;
/// Right edge of the plot: room for half a tick label after it.
pub const PLOT_RIGHT: f64 = 915.0;
/// Height of one lane.
pub const LANE_PX: f64 = 30.0;
/// Narrowest bar drawn: a freeze of seconds in a window of days must still be seen.
pub const MIN_MARK_PX: f64 = 3.0;
/// Most axis ticks.
const MAX_TICKS: i64 = 8;
const TOP_PX: f64 = 10.0;
const AXIS_PX: f64 = 34.0;

const CSS: &str = "
:root{color-scheme:light dark;--fg:#1f2328;--muted:#59636e;--bg:#fff;--card:#f6f8fa;--line:#d1d9e0}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--bg:#0d1117;--card:#151b23;--line:#3d444d}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1040px;padding:16px;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub,.note,footer{color:var(--muted);font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px;min-width:150px;flex:1}
.card b{display:block;font-size:22px}
.card span{color:var(--muted);font-size:13px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);white-space:nowrap}
th{color:var(--muted);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
svg{width:100%;height:auto;display:block;background:var(--card);border:1px solid var(--line);border-radius:8px}
svg text{fill:var(--fg);font:12px system-ui,sans-serif}
svg .axis{stroke:var(--line)}
svg .lane{fill:none;stroke:var(--line);stroke-dasharray:2 3}
.legend{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0;font-size:13px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}
";

/// Colour of a freeze kind's bars.
pub fn freeze_colour(kind: &str) -> &'static str {
    match kind {
        "process_stall" => "#e8830c",
        "vm_pause" => "#d1242f",
        "suspend" => "#8250df",
        "restart" => "#1f6feb",
        "reboot" => "#0e8a7d",
        "wall_clock_step" => "#8c959f",
        _ => "#57606a",
    }
}

/// Colour of an episode's bar: by what caused it.
pub fn cause_colour(cause: &str) -> &'static str {
    match cause {
        "freeze" => "#d1242f",
        "starvation" => "#e8830c",
        _ => "#bf8700",
    }
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The x coordinate of a time in the window.
pub fn x_of(w: &Window, ns: i64) -> f64 {
    let f = (ns - w.start_ns) as f64 / w.len_ns().max(1) as f64;
    PLOT_LEFT + f.clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT)
}

/// A bar `[start, start + duration)` clipped to the plot, at least [`MIN_MARK_PX`] wide.
pub fn bar(w: &Window, start_ns: i64, duration_ns: i64) -> (f64, f64) {
    let x0 = x_of(w, start_ns);
    let x1 = x_of(w, start_ns.saturating_add(duration_ns.max(0)));
    let width = (x1 - x0).max(MIN_MARK_PX);
    let x = x0.min(PLOT_RIGHT - width);
    (x, width)
}

/// Tick spacing: the smallest "nice" step giving at most [`MAX_TICKS`] ticks.
pub fn tick_step_ns(window_ns: i64) -> i64 {
    const MIN: i64 = 60_000_000_000;
    let steps = [
        MIN,
        5 * MIN,
        15 * MIN,
        60 * MIN,
        3 * 60 * MIN,
        6 * 60 * MIN,
        12 * 60 * MIN,
        DAY_NS,
        2 * DAY_NS,
        7 * DAY_NS,
        14 * DAY_NS,
        30 * DAY_NS,
        91 * DAY_NS,
        365 * DAY_NS,
    ];
    steps
        .into_iter()
        .find(|s| window_ns / s <= MAX_TICKS)
        .unwrap_or_else(|| (window_ns / MAX_TICKS).max(1))
}

fn tick_label(ns: i64, step_ns: i64) -> String {
    let t = rfc3339(ns);
    if step_ns >= DAY_NS {
        day_label(ns.div_euclid(DAY_NS))
    } else {
        // "11-20 15:00"
        format!("{} {}", &t[5..10], &t[11..16])
    }
}

enum Lane<'a> {
    Freeze(&'a str, Vec<&'a FreezeRow>),
    Episode(&'a str, Vec<&'a EpisodeRow>),
}

fn lanes<'a>(freezes: &'a [FreezeRow], episodes: &'a [EpisodeRow]) -> Vec<Lane<'a>> {
    let mut kinds: Vec<&str> = FreezeKind::ALL.iter().map(|k| k.as_str()).collect();
    for f in freezes {
        if !kinds.contains(&f.kind.as_str()) {
            kinds.push(&f.kind);
        }
    }
    let mut out = Vec::new();
    for kind in kinds {
        let rows: Vec<&FreezeRow> = freezes.iter().filter(|f| f.kind == kind).collect();
        if !rows.is_empty() {
            out.push(Lane::Freeze(kind, rows));
        }
    }
    let mut kinds: Vec<&str> = vec!["step_gap", "wait_overrun", "stall"];
    for e in episodes {
        if !kinds.contains(&e.kind.as_str()) {
            kinds.push(&e.kind);
        }
    }
    for kind in kinds {
        let rows: Vec<&EpisodeRow> = episodes.iter().filter(|e| e.kind == kind).collect();
        if !rows.is_empty() {
            out.push(Lane::Episode(kind, rows));
        }
    }
    out
}

/// The timeline of `freezes` and `episodes` over `w`, as an inline SVG element.
pub fn timeline_svg(w: &Window, freezes: &[FreezeRow], episodes: &[EpisodeRow]) -> String {
    let lanes = lanes(freezes, episodes);
    let height = TOP_PX + LANE_PX * lanes.len().max(1) as f64 + AXIS_PX;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {SVG_WIDTH} {height}\" role=\"img\" aria-label=\"timeline of freezes and episodes from {} to {}\">\n",
        rfc3339(w.start_ns),
        rfc3339(w.end_ns)
    );
    let axis_y = TOP_PX + LANE_PX * lanes.len().max(1) as f64;
    // Ticks and grid.
    let step = tick_step_ns(w.len_ns());
    let mut t = w.start_ns.div_euclid(step) * step;
    if t < w.start_ns {
        t += step;
    }
    while t <= w.end_ns {
        let x = x_of(w, t);
        let _ = writeln!(
            svg,
            "<line class=\"axis\" x1=\"{x:.1}\" y1=\"{TOP_PX}\" x2=\"{x:.1}\" y2=\"{:.1}\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            axis_y + 4.0,
            axis_y + 20.0,
            tick_label(t, step)
        );
        t += step;
    }
    let _ = writeln!(
        svg,
        "<line class=\"axis\" x1=\"{PLOT_LEFT}\" y1=\"{axis_y:.1}\" x2=\"{PLOT_RIGHT}\" y2=\"{axis_y:.1}\"/>"
    );
    if lanes.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">nothing in this window</text>",
            (PLOT_LEFT + PLOT_RIGHT) / 2.0,
            TOP_PX + LANE_PX / 2.0 + 4.0
        );
    }
    for (i, lane) in lanes.iter().enumerate() {
        let y = TOP_PX + LANE_PX * i as f64;
        let mid = y + LANE_PX / 2.0;
        let (label, count) = match lane {
            Lane::Freeze(k, rows) => (format!("freeze: {k}"), rows.len()),
            Lane::Episode(k, rows) => (k.replace('_', " "), rows.len()),
        };
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} ({count})</text><line class=\"lane\" x1=\"{PLOT_LEFT}\" y1=\"{mid:.1}\" x2=\"{PLOT_RIGHT}\" y2=\"{mid:.1}\"/>",
            PLOT_LEFT - 8.0,
            mid + 4.0,
            escape(&label)
        );
        let (bar_y, bar_h) = (y + 6.0, LANE_PX - 12.0);
        match lane {
            Lane::Freeze(kind, rows) => {
                for f in rows {
                    // A wall-clock step's duration is a jump, not a span: a tick mark.
                    let duration = if *kind == "wall_clock_step" {
                        0
                    } else {
                        f.duration_ns
                    };
                    let (x, width) = bar(w, f.started_at_ns, duration);
                    let _ = writeln!(
                        svg,
                        "<rect x=\"{x:.1}\" y=\"{bar_y:.1}\" width=\"{width:.1}\" height=\"{bar_h:.1}\" rx=\"1.5\" fill=\"{}\"><title>{} #{} at {} for {}</title></rect>",
                        freeze_colour(kind),
                        escape(kind),
                        f.id,
                        rfc3339(f.started_at_ns),
                        human(f.duration_ns)
                    );
                }
            }
            Lane::Episode(kind, rows) => {
                for e in rows {
                    let (x, width) = bar(w, e.started_at_ns, e.duration_ns);
                    let _ = writeln!(
                        svg,
                        "<rect x=\"{x:.1}\" y=\"{bar_y:.1}\" width=\"{width:.1}\" height=\"{bar_h:.1}\" rx=\"1.5\" fill=\"{}\"><title>{} of {} ({}) {} at {} for {}, cause {}</title></rect>",
                        cause_colour(&e.cause),
                        escape(kind),
                        escape(&e.workflow_id),
                        escape(&e.workflow_name),
                        escape(&steps_text(&e.from_step, &e.to_step)),
                        rfc3339(e.started_at_ns),
                        human(e.duration_ns),
                        escape(&e.cause)
                    );
                }
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

fn table(header: &[&str], numeric: &[usize], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    for (i, h) in header.iter().enumerate() {
        let class = if numeric.contains(&i) {
            " class=\"num\""
        } else {
            ""
        };
        let _ = write!(out, "<th{class}>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let class = if numeric.contains(&i) {
                " class=\"num\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{}</td>", escape(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>\n");
    out
}

fn card(value: &str, label: &str) -> String {
    format!(
        "<div class=\"card\"><b>{}</b><span>{}</span></div>",
        escape(value),
        escape(label)
    )
}

fn legend(d: &ReportData) -> String {
    let mut items: Vec<(String, &str)> = Vec::new();
    let mut kinds: Vec<&str> = d.timeline_freezes.iter().map(|f| f.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for k in kinds {
        items.push((format!("freeze: {k}"), freeze_colour(k)));
    }
    if !d.timeline_episodes.is_empty() {
        items.push(("episode caused by a freeze".into(), cause_colour("freeze")));
        items.push((
            "episode caused by CPU starvation (machine running)".into(),
            cause_colour("starvation"),
        ));
        items.push((
            "episode, app stalled (no freeze)".into(),
            cause_colour("stall"),
        ));
    }
    let mut out = String::from("<div class=\"legend\">");
    for (label, colour) in items {
        let _ = write!(
            out,
            "<span><i style=\"background:{colour}\"></i>{}</span>",
            escape(&label)
        );
    }
    out.push_str("</div>\n");
    out
}

/// The whole page.
pub fn report_html(d: &ReportData) -> String {
    let title = format!(
        "stallwatch report {} .. {}",
        rfc3339(d.window.start_ns),
        rfc3339(d.window.end_ns)
    );
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<header><h1>stallwatch report</h1><div class=\"sub\">{} .. {} ({}) · state DB {} · generated {}</div></header>\n",
        escape(&title),
        rfc3339(d.window.start_ns),
        rfc3339(d.window.end_ns),
        human(d.window.len_ns()),
        escape(&d.state_db),
        rfc3339(d.generated_ns)
    );
    if d.is_empty() {
        let _ = writeln!(
            out,
            "<p>{}</p>\n</body>\n</html>",
            escape(&no_data_sentence(d))
        );
        return out;
    }
    let longest = d
        .longest_freezes
        .first()
        .map_or("-".into(), |f| human(f.duration_ns));
    let by_cause = |cause: &str| -> u64 {
        d.episodes
            .iter()
            .filter(|e| e.cause == cause)
            .map(|e| e.count)
            .sum()
    };
    let (by_freeze, by_starvation) = (by_cause("freeze"), by_cause("starvation"));
    out.push_str("<section class=\"cards\">");
    out.push_str(&card(&d.freeze_count().to_string(), "freezes (lost time)"));
    out.push_str(&card(&human(d.frozen_ns()), "frozen in total"));
    out.push_str(&card(&longest, "longest freeze"));
    out.push_str(&card(
        &d.episode_count().to_string(),
        &format!(
            "gap and stall episodes, {by_freeze} caused by a freeze, {by_starvation} by CPU starvation"
        ),
    ));
    out.push_str("</section>\n<section><h2>Timeline</h2>\n");
    out.push_str(&timeline_svg(
        &d.window,
        &d.timeline_freezes,
        &d.timeline_episodes,
    ));
    out.push('\n');
    out.push_str(&legend(d));
    if d.timeline_truncated() {
        let _ = writeln!(
            out,
            "<p class=\"note\">The timeline shows the longest {} freezes and {} episodes; the tables count all of them.</p>",
            d.timeline_freezes.len(),
            d.timeline_episodes.len()
        );
    }
    out.push_str("</section>\n<section><h2>Freezes by kind</h2>\n");
    let rows: Vec<Vec<String>> = d.freezes.iter().map(kind_cells).collect();
    out.push_str(&table(&KIND_COLUMNS, &[1, 2, 3], &rows));
    out.push_str("</section>\n<section><h2>Episodes by kind and cause</h2>\n");
    let rows: Vec<Vec<String>> = d.episodes.iter().map(episode_total_cells).collect();
    out.push_str(&table(&EPISODE_TOTAL_COLUMNS, &[2, 3, 4], &rows));
    out.push_str("</section>\n<section><h2>Alerts, stuck jobs and dead letters</h2>\n");
    match &d.alerts {
        None => {
            let _ = writeln!(out, "<p class=\"note\">{}.</p>", escape(NO_ALERT_HISTORY));
        }
        Some(a) => {
            out.push_str(&table(&ALERT_COLUMNS, &[1, 2, 3], &alert_rows(a)));
            if !a.notifications.is_empty() {
                out.push_str(&table(
                    &NOTIFICATION_COLUMNS,
                    &[1, 2, 3, 4],
                    &notification_rows(a),
                ));
            }
        }
    }
    out.push_str("</section>\n");
    if !d.longest_freezes.is_empty() {
        out.push_str("<section><h2>Longest freezes</h2>\n");
        let rows: Vec<Vec<String>> = d.longest_freezes.iter().map(freeze_cells).collect();
        out.push_str(&table(&FREEZE_COLUMNS, &[0], &rows));
        out.push_str("</section>\n");
    }
    if !d.longest_episodes.is_empty() {
        out.push_str("<section><h2>Longest episodes</h2>\n");
        let rows: Vec<Vec<String>> = d
            .longest_episodes
            .iter()
            .map(|e| {
                vec![
                    human(e.duration_ns),
                    e.kind.clone(),
                    e.freeze_id
                        .map_or(e.cause.clone(), |id| format!("{} #{id}", e.cause)),
                    rfc3339(e.started_at_ns),
                    e.source.clone(),
                    format!("{} ({})", e.workflow_id, e.workflow_name),
                    steps_text(&e.from_step, &e.to_step),
                ]
            })
            .collect();
        out.push_str(&table(&EPISODE_COLUMNS, &[0], &rows));
        out.push_str("</section>\n");
    }
    let _ = writeln!(
        out,
        "<footer><p>Freezes are only seen while the sidecar runs; in this window it {}.</p></footer>\n</body>\n</html>",
        escape(&watched_text(
            &d.watched,
            d.window.clip(i64::MIN, d.generated_ns).len_ns()
        ))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn freeze(id: i64, kind: &str, start: i64, secs: i64) -> FreezeRow {
        FreezeRow {
            id,
            kind: kind.into(),
            started_at_ns: start,
            duration_ns: secs * S,
            channels: vec![],
        }
    }

    #[test]
    fn bars_sit_where_their_times_are() {
        let w = Window {
            start_ns: 0,
            end_ns: 1_000 * S,
        };
        let plot = PLOT_RIGHT - PLOT_LEFT;
        let (x, width) = bar(&w, 500 * S, 100 * S);
        assert!((x - (PLOT_LEFT + plot / 2.0)).abs() < 1e-9);
        assert!((width - plot / 10.0).abs() < 1e-9);
        // A short one is still visible; one at the very end stays inside the plot.
        assert_eq!(bar(&w, 0, S).1, MIN_MARK_PX);
        let (x, width) = bar(&w, 999_999_999_999, 0);
        assert!(x + width <= PLOT_RIGHT + 1e-9);
        // One that started before the window is clipped to its left edge.
        assert_eq!(bar(&w, -100 * S, 200 * S).0, PLOT_LEFT);
    }

    #[test]
    fn ticks_are_few_and_nice() {
        assert_eq!(tick_step_ns(3_600 * S), 15 * 60 * S);
        assert_eq!(tick_step_ns(7 * DAY_NS), DAY_NS);
        assert_eq!(tick_step_ns(60 * DAY_NS), 7 * DAY_NS);
        assert_eq!(tick_step_ns(100 * DAY_NS), 14 * DAY_NS);
        assert_eq!(tick_label(1_763_651_475 * S, 3_600 * S), "11-20 15:11");
        assert_eq!(tick_label(1_763_651_475 * S, DAY_NS), "2025-11-20");
    }

    #[test]
    fn one_lane_per_kind_with_a_tooltip_per_mark_and_escaped_text() {
        let w = Window {
            start_ns: 0,
            end_ns: 3_600 * S,
        };
        let freezes = vec![
            freeze(1, "vm_pause", 60 * S, 15),
            freeze(2, "vm_pause", 600 * S, 30),
            freeze(3, "restart", 900 * S, 5),
        ];
        let episodes = vec![EpisodeRow {
            id: 1,
            source: "app".into(),
            kind: "step_gap".into(),
            cause: "freeze".into(),
            workflow_id: "<wf>".into(),
            workflow_name: "a&b".into(),
            from_step: "x".into(),
            to_step: "y".into(),
            started_at_ns: 600 * S,
            duration_ns: 31 * S,
            freeze_id: Some(2),
        }];
        let svg = timeline_svg(&w, &freezes, &episodes);
        assert!(svg.contains("freeze: vm_pause (2)"), "{svg}");
        assert!(svg.contains("freeze: restart (1)"));
        assert!(svg.contains("step gap (1)"));
        assert_eq!(svg.matches("<rect").count(), 4);
        assert_eq!(svg.matches("<title>").count(), 4);
        assert!(svg.contains("&lt;wf&gt; (a&amp;b)"));
        assert!(!svg.contains("<wf>"));
    }
}
