//! `stallwatch doctor`: what this machine lets the sidecar see, and what to add.
//!
//! Looks once at the clocks (clocksource, `adjtimex`), the cgroup, the data dir, every
//! reference that would be used (discovered or configured: each read once) and every
//! `[[source]]` (opened and polled once through [`crate::sources::build::open`]), then says per
//! freeze kind ([`crate::freeze::visibility::assess`]) whether it can be detected here, by
//! which channel, and the config line that covers a blind one. Exit 0 when every kind is
//! covered, 1 when some are blind; a bad config is the caller's exit 2.
//!
//! [`assess`], [`render_text`], [`parse_cgroup`] and [`file_type_name`] are pure; the
//! `check_*`/`probe_*` functions are thin readers, each bounded in time. Doctor never
//! blocks on a FIFO (file types are checked before anything is opened), never creates the
//! state DB or the data dir (a temporary file proves the directory writable and is
//! removed), and never writes to an app database (sources are read-only).

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock;
use crate::config::source::Location;
use crate::config::{Config, ForwardSteps, ReferenceSpec, SourceConfig};
use crate::freeze::references::{self, discover};
use crate::freeze::visibility::{self, KindSight, Sight};
use crate::report::{Outcome, TextFormat};
use crate::sidecar::database_clock_name;
use crate::state::STATE_DB_FILE;

/// Exit code when every freeze kind can be detected here.
pub const EXIT_COVERED: u8 = 0;
/// Exit code when at least one freeze kind is blind here.
pub const EXIT_BLIND: u8 = 1;
/// Longest wait for one network reference (SNTP, HTTP `Date`): a healthy server answers
/// in milliseconds, and a doctor that hangs on a dead one helps nobody.
pub const NETWORK_REFERENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one source's check: a Postgres connect (5 s) and a statement (5 s)
/// with room to spare; a source still silent then is reported as not answering.
pub const SOURCE_CHECK_TIMEOUT: Duration = Duration::from_secs(12);
/// Where the process's cgroup membership is listed.
pub const PROC_SELF_CGROUP: &str = "/proc/self/cgroup";
/// Present only when the unified (v2) hierarchy is mounted at the root.
pub const CGROUP_V2_MARKER: &str = "/sys/fs/cgroup/cgroup.controllers";

/// The kernel's view of the wall clock.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct ClockFacts {
    pub clocksource: Option<String>,
    /// A time daemon keeps the wall clock synchronised (`adjtimex`).
    pub synchronised: Option<bool>,
    pub max_error_seconds: Option<f64>,
    pub est_error_seconds: Option<f64>,
    /// `freeze.forward_steps`.
    pub forward_steps: &'static str,
    /// Why a fact is missing, when one is.
    pub error: Option<String>,
}

/// One cgroup line of `/proc/self/cgroup`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CgroupLine {
    /// The controllers of a v1 hierarchy (`cpu,cpuacct`), empty for the unified one.
    pub controllers: String,
    pub path: String,
}

/// The cgroup version and where this process sits.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CgroupFacts {
    /// `v2`, `hybrid` (v1 controllers plus a unified hierarchy), `v1` or `unknown`.
    pub version: &'static str,
    /// The unified path on v2, the `cpu` controller's path on v1 (what throttles CPU).
    pub path: Option<String>,
    pub lines: Vec<CgroupLine>,
}

/// Whether the data dir can hold the state DB.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DataDirCheck {
    pub path: String,
    pub exists: bool,
    pub usable: bool,
    /// Why it is not usable.
    pub problem: Option<String>,
}

/// One reference clock and whether it answered now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReferenceCheck {
    pub name: String,
    /// `discovered` (no references in the config), `configured`, or `source` (a
    /// Postgres source's server clock).
    pub origin: &'static str,
    pub readable: bool,
    pub error: Option<String>,
}

/// One `[[source]]` and whether a poll worked now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SourceCheck {
    pub name: String,
    pub kind: &'static str,
    /// The location with any password removed.
    pub location: String,
    pub usable: bool,
    pub error: Option<String>,
    /// The reference this source's server clock is (`postgres:<name>`), for Postgres.
    pub reference: Option<String>,
    /// The server clock answered: a reference for `vm_pause`.
    pub server_clock: bool,
}

/// Everything looked at, before any judgement.
#[derive(Debug, Clone)]
pub struct Probes {
    pub clock: ClockFacts,
    pub cgroup: CgroupFacts,
    pub data_dir: DataDirCheck,
    /// Discovered or configured references, read once.
    pub references: Vec<ReferenceCheck>,
    pub sources: Vec<SourceCheck>,
    pub forward_steps: ForwardSteps,
    /// `discovered` (the config names no references) or `configured`.
    pub references_from: &'static str,
}

/// What `doctor` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every freeze kind can be detected here.
    pub covered: bool,
    pub kinds: Vec<KindSight>,
    pub clock: ClockFacts,
    pub cgroup: CgroupFacts,
    pub data_dir: DataDirCheck,
    /// `discovered` (the config names no references) or `configured`.
    pub references_from: &'static str,
    /// Discovered or configured references, then each Postgres source's server clock.
    pub references: Vec<ReferenceCheck>,
    pub sources: Vec<SourceCheck>,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        if self.covered {
            EXIT_COVERED
        } else {
            EXIT_BLIND
        }
    }
}

// ---- the judgement (pure) --------------------------------------------------------------

/// Judges the probes: each Postgres source that answered is a reference for `vm_pause`.
pub fn assess(probes: Probes) -> Report {
    let mut references = probes.references;
    for source in &probes.sources {
        let Some(name) = &source.reference else {
            continue;
        };
        references.push(ReferenceCheck {
            name: name.clone(),
            origin: "source",
            readable: source.server_clock,
            error: (!source.server_clock).then(|| {
                source
                    .error
                    .clone()
                    .unwrap_or_else(|| "the server clock could not be read".into())
            }),
        });
    }
    let (up, down): (Vec<_>, Vec<_>) = references.iter().partition(|r| r.readable);
    let sight = Sight {
        references_up: up.iter().map(|r| r.name.clone()).collect(),
        references_down: down.iter().map(|r| r.name.clone()).collect(),
        forward_steps: probes.forward_steps,
        state_db: probes.data_dir.usable,
    };
    let kinds = visibility::assess(&sight);
    Report {
        covered: kinds.iter().all(KindSight::covered),
        kinds,
        clock: probes.clock,
        cgroup: probes.cgroup,
        data_dir: probes.data_dir,
        references_from: probes.references_from,
        references,
        sources: probes.sources,
    }
}

/// The cgroup facts from `/proc/self/cgroup` and whether the v2 marker file exists.
pub fn parse_cgroup(proc_self_cgroup: &str, v2_root: bool) -> CgroupFacts {
    let lines: Vec<CgroupLine> = proc_self_cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            Some(CgroupLine { controllers, path })
        })
        .collect();
    let unified = lines.iter().find(|l| l.controllers.is_empty());
    let v1_line = |name: &str| {
        lines
            .iter()
            .find(|l| l.controllers.split(',').any(|c| c == name))
    };
    let (version, path) = if v2_root {
        ("v2", unified.map(|l| l.path.clone()))
    } else if lines.iter().any(|l| !l.controllers.is_empty()) {
        let version = if unified.is_some() { "hybrid" } else { "v1" };
        let cpu = v1_line("cpu").or_else(|| lines.iter().find(|l| !l.controllers.is_empty()));
        (version, cpu.map(|l| l.path.clone()))
    } else {
        ("unknown", unified.map(|l| l.path.clone()))
    };
    CgroupFacts {
        version,
        path,
        lines,
    }
}

pub use crate::sources::file::file_type_name;

/// Aligned text: the verdict per freeze kind first, then the facts behind it.
pub fn render_text(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let blind: Vec<&str> = report
        .kinds
        .iter()
        .filter(|k| !k.covered())
        .map(|k| k.kind)
        .collect();
    let _ = writeln!(out, "freeze kinds");
    for k in &report.kinds {
        let state = match k.visible {
            "yes" => "ok",
            "after_resync" => "BLIND (after resync only)",
            _ => "BLIND",
        };
        let detail = match &k.missing {
            Some(missing) => missing.clone(),
            None => format!("seen by {}", k.channels.join(", ")),
        };
        let _ = writeln!(out, "  {:<16}{state:<27}{detail}", k.kind);
    }

    let _ = writeln!(out, "\nclock");
    let c = &report.clock;
    let _ = writeln!(
        out,
        "  {:<16}{}",
        "clocksource",
        c.clocksource.as_deref().unwrap_or("unknown")
    );
    let ntp = match (c.synchronised, c.max_error_seconds) {
        (Some(true), Some(max)) => format!("synchronised, max error {}", seconds(max)),
        (Some(false), Some(max)) => format!(
            "NOT synchronised (max error {}, an upper bound that means little unsynchronised)",
            seconds(max)
        ),
        (Some(s), None) => if s {
            "synchronised"
        } else {
            "NOT synchronised"
        }
        .to_string(),
        (None, _) => format!(
            "unknown ({})",
            c.error.as_deref().unwrap_or("adjtimex failed")
        ),
    };
    let _ = writeln!(out, "  {:<16}{ntp}", "ntp");
    let _ = writeln!(out, "  {:<16}{}", "forward_steps", c.forward_steps);

    let g = &report.cgroup;
    let version = match g.version {
        "hybrid" => "v1 (hybrid: a unified hierarchy beside the v1 controllers)",
        other => other,
    };
    let _ = writeln!(out, "\ncgroup");
    let _ = writeln!(out, "  {:<16}{version}", "version");
    let _ = writeln!(
        out,
        "  {:<16}{}",
        "path",
        g.path.as_deref().unwrap_or("unknown")
    );
    for line in g
        .lines
        .iter()
        .filter(|l| !l.controllers.is_empty() && Some(&l.path) != g.path.as_ref())
    {
        let _ = writeln!(out, "  {:<16}{}", line.controllers, line.path);
    }

    let d = &report.data_dir;
    let state = match (&d.problem, d.exists) {
        (Some(problem), _) => format!("NOT USABLE  {problem}"),
        (None, true) => "usable".to_string(),
        (None, false) => "usable (created on first run)".to_string(),
    };
    let _ = writeln!(out, "\ndata dir        {}  {state}", d.path);

    let _ = writeln!(out, "\nreferences ({})", report.references_from);
    if report.references.is_empty() {
        let why = if report.references_from == "discovered" {
            "no RTC in /sys/class/rtc, no host PTP clock in /sys/class/ptp, no Postgres source"
        } else {
            "references = [] and no Postgres source"
        };
        let _ = writeln!(out, "  {:<16}{why}", "none");
    }
    for r in &report.references {
        let state = match &r.error {
            None => "up".to_string(),
            Some(e) => format!("DOWN  {e}"),
        };
        let _ = writeln!(out, "  {:<28}{:<12}{state}", r.name, r.origin);
    }

    let _ = writeln!(out, "\nsources");
    if report.sources.is_empty() {
        let _ = writeln!(out, "  none configured");
    }
    for s in &report.sources {
        // An error names the location itself.
        let state = match &s.error {
            None => format!("usable  ({})", s.location),
            Some(e) => format!("NOT USABLE  {e}"),
        };
        let _ = writeln!(out, "  {:<16}{:<12}{state}", s.name, s.kind);
    }

    let _ = if report.covered {
        writeln!(out, "\ncovered: every freeze kind can be detected here")
    } else {
        writeln!(
            out,
            "\nNOT covered: blind to {} here (fix above)",
            blind.join(", ")
        )
    };
    out
}

fn seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

// ---- the probes (thin I/O) -------------------------------------------------------------

/// Looks at this machine under `config` and judges it; prints text or one JSON object.
pub fn run(mut config: Config, format: TextFormat) -> Outcome {
    let origin = if config.freeze.references_defaulted {
        "discovered"
    } else {
        "configured"
    };
    discover::use_discovered(&mut config.freeze, Path::new(discover::SYSFS_ROOT));
    // Sources poll on their own threads (the Postgres driver runs its own runtime), while
    // the references are read here.
    let pending = spawn_source_checks(&config.sources);
    let references = check_references(&config.freeze.references, origin);
    let sources = collect_source_checks(&config.sources, pending);
    let report = assess(Probes {
        clock: probe_clock(config.freeze.forward_steps),
        cgroup: probe_cgroup(),
        data_dir: check_data_dir(&config.data_dir),
        references,
        sources,
        forward_steps: config.freeze.forward_steps,
        references_from: origin,
    });
    let stdout = match format {
        TextFormat::Text => render_text(&report),
        TextFormat::Json => {
            serde_json::to_string_pretty(&report).expect("the report serialises") + "\n"
        }
    };
    Outcome {
        stdout,
        exit_code: report.exit_code(),
    }
}

fn probe_clock(forward_steps: ForwardSteps) -> ClockFacts {
    let mut facts = ClockFacts {
        forward_steps: forward_steps.as_str(),
        ..Default::default()
    };
    match clock::clocksource() {
        Ok(name) => facts.clocksource = Some(name),
        Err(e) => facts.error = Some(format!("cannot read {}: {e}", clock::CLOCKSOURCE_PATH)),
    }
    match clock::kernel_clock() {
        Ok(k) => {
            facts.synchronised = Some(k.synced);
            facts.max_error_seconds = Some(k.max_error_ns as f64 / 1e9);
            facts.est_error_seconds = Some(k.est_error_ns as f64 / 1e9);
        }
        Err(e) => facts.error = Some(format!("adjtimex failed: {e}")),
    }
    facts
}

fn probe_cgroup() -> CgroupFacts {
    let text = std::fs::read_to_string(PROC_SELF_CGROUP).unwrap_or_default();
    parse_cgroup(&text, Path::new(CGROUP_V2_MARKER).exists())
}

/// Whether `dir` is (or can become) a writable directory for the state DB. Creates
/// nothing that stays: a temporary file proves writability and is removed at once.
pub fn check_data_dir(dir: &Path) -> DataDirCheck {
    let shown = dir.display().to_string();
    let verdict = |exists, problem: Option<String>| DataDirCheck {
        path: shown.clone(),
        exists,
        usable: problem.is_none(),
        problem,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let db = dir.join(STATE_DB_FILE);
            if let Ok(db_meta) = std::fs::metadata(&db) {
                if !db_meta.is_file() {
                    return verdict(
                        true,
                        Some(format!(
                            "{} is {}, not a state DB file",
                            db.display(),
                            file_type_name(db_meta.file_type())
                        )),
                    );
                }
            }
            verdict(true, probe_writable(dir).err())
        }
        Ok(meta) => verdict(
            true,
            Some(format!(
                "{shown} is {}, not a directory; set data_dir (or --data-dir) to a directory",
                file_type_name(meta.file_type())
            )),
        ),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            // Created on the first run: its nearest existing ancestor must be a writable
            // directory (ENOTDIR: an ancestor is a file, named below).
            let mut ancestor = dir.parent();
            while let Some(a) = ancestor {
                let a = if a.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    a
                };
                match std::fs::metadata(a) {
                    Ok(meta) if meta.is_dir() => {
                        let problem = probe_writable(a)
                            .err()
                            .map(|p| format!("{shown} does not exist and cannot be created: {p}"));
                        return verdict(false, problem);
                    }
                    Ok(meta) => {
                        return verdict(
                            false,
                            Some(format!(
                                "{shown} cannot be created: {} is {}",
                                a.display(),
                                file_type_name(meta.file_type())
                            )),
                        )
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::NotFound
                            || e.raw_os_error() == Some(libc::ENOTDIR) =>
                    {
                        ancestor = if a == Path::new(".") {
                            None
                        } else {
                            a.parent()
                        };
                    }
                    Err(e) => {
                        return verdict(
                            false,
                            Some(format!("{shown} cannot be created: {}: {e}", a.display())),
                        )
                    }
                }
            }
            verdict(false, Some(format!("{shown} cannot be created")))
        }
        Err(e) => verdict(false, Some(format!("{shown}: {e}"))),
    }
}

/// Creates and removes a temporary file in `dir`.
fn probe_writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".stallwatch-doctor-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"stallwatch doctor\n"));
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| format!("{} is not writable: {e}", dir.display()))
}

/// Reads each reference once: local ones here, network ones concurrently with a short
/// timeout each.
fn check_references(specs: &[ReferenceSpec], origin: &'static str) -> Vec<ReferenceCheck> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the runtime");
    let client = reqwest::Client::builder()
        .timeout(NETWORK_REFERENCE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building an HTTP client");
    let network: Vec<_> = specs
        .iter()
        .filter(|spec| spec.is_network())
        .map(|spec| {
            let (spec, client) = (spec.clone(), client.clone());
            runtime.spawn(async move {
                tokio::time::timeout(
                    NETWORK_REFERENCE_TIMEOUT,
                    references::read_network(&spec, &client),
                )
                .await
                .map_err(|_| {
                    format!(
                        "did not answer within {} s",
                        NETWORK_REFERENCE_TIMEOUT.as_secs()
                    )
                })?
                .map(|_| ())
            })
        })
        .collect();
    let mut network = network.into_iter();
    specs
        .iter()
        .map(|spec| {
            let result = if spec.is_network() {
                let task = network.next().expect("one task per network reference");
                runtime
                    .block_on(task)
                    .unwrap_or_else(|e| Err(format!("the check failed: {e}")))
            } else {
                read_local(spec)
            };
            ReferenceCheck {
                name: spec.name(),
                origin,
                readable: result.is_ok(),
                error: result.err(),
            }
        })
        .collect()
}

/// Reads an RTC or PTP reference once.
fn read_local(spec: &ReferenceSpec) -> Result<(), String> {
    if let ReferenceSpec::Ptp(path) = spec {
        not_a_device(path)?;
    }
    let mut reader = references::open_local(spec).expect("a local reference");
    reader.read().map(|_| ())
}

/// A PTP clock is a character device; anything else is refused before it is opened (a
/// FIFO would block the open forever).
fn not_a_device(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_char_device() => Ok(()),
        Ok(meta) => Err(format!(
            "{} is {}, not a PTP clock device",
            path.display(),
            file_type_name(meta.file_type())
        )),
        Err(e) => Err(format!("cannot open {}: {e}", path.display())),
    }
}

/// A SQLite or log source's path must be a regular file (or absent, which the source
/// reports itself); anything else is refused before it is opened.
pub fn not_a_file(location: &Location) -> Option<String> {
    let (Location::Sqlite(path) | Location::File(path)) = location else {
        return None;
    };
    let expected = crate::sources::file::expected(location)?;
    let meta = std::fs::metadata(path).ok()?;
    (!meta.is_file())
        .then(|| crate::sources::file::not_a_file_sentence(path, meta.file_type(), expected))
}

type Pending = (mpsc::Receiver<(usize, SourceCheck)>, Instant);

fn spawn_source_checks(sources: &[SourceConfig]) -> Pending {
    let (tx, rx) = mpsc::channel();
    for (index, source) in sources.iter().enumerate() {
        let tx = tx.clone();
        let source = source.clone();
        // Detached: a source that never answers must not keep doctor from exiting.
        std::thread::Builder::new()
            .name(format!("doctor-{}", source.name))
            .spawn(move || {
                let _ = tx.send((index, check_source(&source)));
            })
            .expect("spawning a thread");
    }
    (rx, Instant::now() + SOURCE_CHECK_TIMEOUT)
}

fn collect_source_checks(sources: &[SourceConfig], (rx, deadline): Pending) -> Vec<SourceCheck> {
    let mut done: Vec<Option<SourceCheck>> = vec![None; sources.len()];
    while done.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((index, check)) => done[index] = Some(check),
            Err(_) => break,
        }
    }
    sources
        .iter()
        .zip(done)
        .map(|(source, check)| {
            check.unwrap_or_else(|| {
                source_check(
                    source,
                    Err(format!(
                        "did not answer within {} s",
                        SOURCE_CHECK_TIMEOUT.as_secs()
                    )),
                )
            })
        })
        .collect()
}

/// Opens a source and polls it once, as the sidecar's source thread would.
pub fn check_source(source: &SourceConfig) -> SourceCheck {
    if let Some(problem) = not_a_file(&source.location) {
        return source_check(source, Err(problem));
    }
    let mut opened = crate::sources::build::open(source);
    let result = opened
        .poll(clock::real_ns())
        .map(|obs| obs.server_clock.is_some())
        .map_err(|e| e.message);
    source_check(source, result)
}

fn source_check(source: &SourceConfig, result: Result<bool, String>) -> SourceCheck {
    SourceCheck {
        name: source.name.clone(),
        kind: source.kind.as_str(),
        location: source.location.shown(),
        reference: matches!(source.location, Location::Postgres(_))
            .then(|| database_clock_name(&source.name)),
        usable: result.is_ok(),
        server_clock: result.as_ref().is_ok_and(|clock| *clock),
        error: result.err(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firecracker(references: Vec<ReferenceCheck>, sources: Vec<SourceCheck>) -> Probes {
        Probes {
            clock: ClockFacts {
                clocksource: Some("kvm-clock".into()),
                synchronised: Some(false),
                max_error_seconds: Some(16.0),
                est_error_seconds: Some(16.0),
                forward_steps: "auto",
                error: None,
            },
            cgroup: parse_cgroup("1:cpu:/\n0::/\n", false),
            data_dir: DataDirCheck {
                path: "/var/lib/stallwatch".into(),
                exists: true,
                usable: true,
                problem: None,
            },
            references,
            sources,
            forward_steps: ForwardSteps::Auto,
            references_from: "discovered",
        }
    }

    fn postgres(name: &str, answered: bool) -> SourceCheck {
        SourceCheck {
            name: name.into(),
            kind: "sql",
            location: "postgres://127.0.0.1:5432/postgres".into(),
            usable: answered,
            error: (!answered).then(|| "connection refused".to_string()),
            reference: Some(format!("postgres:{name}")),
            server_clock: answered,
        }
    }

    #[test]
    fn no_reference_leaves_vm_pause_blind_and_names_the_fix() {
        let report = assess(firecracker(vec![], vec![]));
        assert!(!report.covered);
        assert_eq!(report.exit_code(), EXIT_BLIND);
        let text = render_text(&report);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("vm_pause"))
            .unwrap();
        assert!(line.contains("BLIND (after resync only)"), "{line}");
        assert!(line.contains("sntp:"), "{line}");
        assert!(text.contains("NOT covered: blind to vm_pause"), "{text}");
        // Aligned: each kind's state starts in column 18, its detail in column 45.
        for line in text.lines().skip(1).take(6) {
            assert!(
                line[18..].starts_with("ok") || line[18..].starts_with("BLIND"),
                "{line:?}"
            );
            assert!(
                line[44..].starts_with(' ') && !line[45..].starts_with(' '),
                "{line:?}"
            );
        }
    }

    #[test]
    fn a_postgres_source_that_answered_covers_vm_pause() {
        let report = assess(firecracker(vec![], vec![postgres("app", true)]));
        assert!(report.covered, "{report:?}");
        assert_eq!(report.exit_code(), EXIT_COVERED);
        let pause = report.kinds.iter().find(|k| k.kind == "vm_pause").unwrap();
        assert!(pause.channels.contains(&"postgres:app".to_string()));
        assert_eq!(report.references[0].origin, "source");
    }

    #[test]
    fn a_postgres_source_that_did_not_answer_is_a_reference_down() {
        let report = assess(firecracker(vec![], vec![postgres("app", false)]));
        assert!(!report.covered);
        let pause = report.kinds.iter().find(|k| k.kind == "vm_pause").unwrap();
        assert!(
            pause
                .missing
                .as_ref()
                .unwrap()
                .contains("postgres:app down"),
            "{pause:?}"
        );
        assert_eq!(
            report.references[0].error.as_deref(),
            Some("connection refused")
        );
    }

    #[test]
    fn an_unusable_data_dir_blinds_restart_and_reboot() {
        let mut probes = firecracker(
            vec![ReferenceCheck {
                name: "rtc".into(),
                origin: "discovered",
                readable: true,
                error: None,
            }],
            vec![],
        );
        probes.data_dir.usable = false;
        probes.data_dir.problem = Some("/x is a regular file, not a directory".into());
        let report = assess(probes);
        let blind: Vec<_> = report
            .kinds
            .iter()
            .filter(|k| !k.covered())
            .map(|k| k.kind)
            .collect();
        assert_eq!(blind, vec!["restart", "reboot"]);
        assert!(render_text(&report).contains("NOT USABLE  /x is a regular file"));
    }

    #[test]
    fn cgroup_versions_and_paths() {
        let v2 = parse_cgroup("0::/system.slice/stallwatch.service\n", true);
        assert_eq!(v2.version, "v2");
        assert_eq!(v2.path.as_deref(), Some("/system.slice/stallwatch.service"));

        let hybrid = parse_cgroup(
            "4:memory:/process_api/d3c2\n2:cpuacct:/\n1:cpu,cpuacct:/app\n0::/\n",
            false,
        );
        assert_eq!(hybrid.version, "hybrid");
        assert_eq!(hybrid.path.as_deref(), Some("/app"));
        assert_eq!(hybrid.lines.len(), 4);

        let v1 = parse_cgroup("3:memory:/m\n1:name=systemd:/s\n", false);
        assert_eq!(v1.version, "v1");
        assert_eq!(v1.path.as_deref(), Some("/m"));

        assert_eq!(parse_cgroup("", false).version, "unknown");
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn data_dir_usable_missing_file_and_fifo() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = check_data_dir(tmp.path());
        assert!(ok.usable && ok.exists, "{ok:?}");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "probe removed"
        );

        let later = check_data_dir(&tmp.path().join("a/b"));
        assert!(later.usable && !later.exists, "{later:?}");
        assert!(!tmp.path().join("a").exists(), "nothing created");

        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let bad = check_data_dir(&file);
        assert!(!bad.usable);
        assert!(bad
            .problem
            .unwrap()
            .contains("is a regular file, not a directory"));
        let under = check_data_dir(&file.join("sub"));
        assert!(!under.usable);
        assert!(under.problem.unwrap().contains("cannot be created"));

        let fifo = tmp.path().join("fifo");
        mkfifo(&fifo);
        let bad = check_data_dir(&fifo);
        assert!(bad.problem.unwrap().contains("is a FIFO (named pipe)"));
    }

    #[test]
    fn a_fifo_or_directory_source_is_refused_before_it_is_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("app.db");
        mkfifo(&fifo);
        let problem = not_a_file(&Location::Sqlite(fifo.clone())).unwrap();
        assert!(
            problem.contains("is a FIFO (named pipe), not a SQLite database file"),
            "{problem}"
        );
        let problem = not_a_file(&Location::File(tmp.path().to_path_buf())).unwrap();
        assert!(
            problem.contains("is a directory, not a log file"),
            "{problem}"
        );
        assert_eq!(
            not_a_file(&Location::Sqlite(tmp.path().join("absent.db"))),
            None
        );
        let err = not_a_device(&fifo).unwrap_err();
        assert!(err.contains("not a PTP clock device"), "{err}");
    }
}
