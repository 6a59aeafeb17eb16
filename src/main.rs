//! The `stallwatch` command line: parses arguments, loads config, maps errors to exit
//! codes (2 for anything the operator must fix in config or environment, 1 otherwise;
//! `verify` returns its verdict: 0 FIXED, 1 NOT FIXED, 3 NOT ENOUGH DATA; `doctor` 0 when
//! every freeze kind is covered here, 1 when some are blind).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stallwatch::clock;
use stallwatch::config::otlp::OtlpConfig;
use stallwatch::config::{default_data_dir, Config, LogFormat};
use stallwatch::otlp::own_spans::{self, OwnSpans};
use stallwatch::report::{self, Format, Outcome, TextFormat};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

mod usage;

/// Exit code for a problem the operator must fix in config or environment.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "stallwatch",
    version,
    about = "Tells a machine freeze from a job stall, with evidence, and exports it to Prometheus."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar. Without --config: freeze detector only, with defaults. With
    /// `-- CMD [ARGS…]`: run the app as its child (signals passed on, zombies reaped),
    /// stop with it and exit with its exit code (128 + signal if it was killed).
    Run {
        /// TOML config file (see examples/stallwatch.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, overriding the config (default 0.0.0.0:9847).
        #[arg(long, value_parser = usage::address)]
        listen: Option<std::net::SocketAddr>,
        /// State directory, overriding the config (default /var/lib/stallwatch as root,
        /// else $XDG_STATE_HOME/stallwatch or ~/.local/state/stallwatch).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// With an app: how long it has to exit after a passed-on SIGTERM/SIGINT before
        /// it is killed (SIGKILL), 1s to 5m.
        #[arg(long, value_parser = stallwatch::supervise::parse_stop_grace, requires = "command")]
        stop_grace: Option<std::time::Duration>,
        /// The app to run as a child, after `--`.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },
    /// A self-contained live demo: a synthetic app with a queue, steps, retries, dead
    /// letters, spend and stalls, watched by a real sidecar. No setup needed.
    Demo {
        /// Listen address of the demo's sidecar.
        #[arg(long, default_value = "127.0.0.1:9847", value_parser = usage::address)]
        listen: std::net::SocketAddr,
        /// Keep the demo's app and state DB in DIR (new or empty) instead of removing
        /// them on exit, and print the `report`/`verify` commands to try on it.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// What this machine lets stallwatch see: per freeze kind, whether it can be detected
    /// here and what to add if not; clocks, cgroup, data dir, references and sources.
    /// Exit 0 every kind covered, 1 some blind, 2 bad config.
    Doctor {
        /// TOML config file to check the machine against (default: no file, as `run`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// State directory, overriding the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: TextFormat,
    },
    /// Validate a config file: exit 0 if valid, 2 with the problem if not.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Every step gap and wait overrun in a DBOS system database's history, per UTC day,
    /// longest first. Needs no stallwatch history; reads the app DB read-only.
    Analyze {
        /// The DBOS system database: a SQLite path or sqlite:/// URL, or a postgres:// URL.
        #[arg(long)]
        source: String,
        /// Shortest gap or overrun reported (e.g. 60s, 5m).
        #[arg(long, default_value = "60s", value_parser = usage::duration)]
        gap_min: std::time::Duration,
        /// Gaps listed, overall and per day.
        #[arg(long, default_value_t = stallwatch::report::DEFAULT_TOP, value_parser = usage::count,
              allow_negative_numbers = true)]
        top: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: TextFormat,
    },
    /// Freezes and episodes from the state DB over a window. Times: RFC 3339, a date, a
    /// duration ago (7d) or now.
    Report {
        /// State directory of the sidecar (default as for `run`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Start of the window (default: a week before --until).
        #[arg(long)]
        since: Option<String>,
        /// End of the window (default: now).
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        evidence: Evidence,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Silences: a rule (for one source) records its alerts but does not notify until
    /// the silence ends; what it held back goes out then if the alert still fires.
    Silence {
        #[command(subcommand)]
        action: SilenceAction,
    },
    /// Did a change fix the freezes? Compares a before and an after window of the state
    /// DB. Exit 0 FIXED, 1 NOT FIXED, 3 NOT ENOUGH DATA, 2 bad input.
    #[command(group(clap::ArgGroup::new("windows").required(true).args(["before", "migrated_at"])))]
    Verify {
        /// State directory of the sidecar (default as for `run`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The window before the change: START..END.
        #[arg(long, requires = "after", conflicts_with = "migrated_at")]
        before: Option<String>,
        /// The window after the change: START..END.
        #[arg(long, requires = "before", conflicts_with = "migrated_at")]
        after: Option<String>,
        /// When the change was made: before is everything up to it, after is it to now.
        #[arg(long)]
        migrated_at: Option<String>,
        #[command(flatten)]
        evidence: Evidence,
        #[arg(long, value_enum, default_value = "text")]
        format: TextFormat,
    },
}

/// Where `report` and `verify` take their evidence from instead of the state DB alone:
/// a fleet's Prometheus, or the app's own history.
#[derive(clap::Args)]
struct Evidence {
    /// Read a fleet's freezes from this Prometheus (or Thanos/Mimir) query API instead of
    /// a state DB: `report` prints one line per instance, `verify` one verdict for the
    /// fleet and one line per instance.
    #[arg(long, conflicts_with = "data_dir")]
    prometheus: Option<String>,
    /// With --prometheus: label matchers added to every query, e.g. '{app="precis"}'.
    #[arg(long, requires = "prometheus")]
    selector: Option<String>,
    /// The app's own history as evidence: a DBOS system DB, a queue table or a JSONL
    /// log (a path or URL; with --config, the name of one of its [[source]]s). The
    /// state DB is read only when --data-dir is given.
    #[arg(long, conflicts_with = "prometheus")]
    source: Option<String>,
    /// With --source: the config file whose [[source]] --source names.
    #[arg(long, requires = "source")]
    config: Option<PathBuf>,
    /// With --source: the shortest step gap or wait overrun counted (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = usage::duration)]
    gap_min: std::time::Duration,
}

/// Where `silence` finds the state DB: `--data-dir`, or the config's `data_dir`.
#[derive(clap::Args)]
struct StateDbArgs {
    /// State directory of the sidecar (default as for `run`).
    #[arg(long, conflicts_with = "config")]
    data_dir: Option<PathBuf>,
    /// The sidecar's config file: its data_dir, and the sources --source may name.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SilenceAction {
    /// Silence a rule's alerts (of one source, with --source) for a while.
    Add {
        /// The rule: freeze, stuck_jobs, source_down, … (docs/alerts.md).
        #[arg(long)]
        rule: String,
        /// Only the alerts of this source (default: every source).
        #[arg(long)]
        source: Option<String>,
        /// How long, e.g. 10m, 2h (at most 30d).
        #[arg(long = "for", value_parser = usage::duration)]
        duration: std::time::Duration,
        /// Why, shown with the silence (e.g. "deploy").
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        db: StateDbArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: TextFormat,
    },
    /// Active silences and those ended in the last week.
    List {
        #[command(flatten)]
        db: StateDbArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: TextFormat,
    },
    /// End a silence now.
    Expire {
        /// The silence's id (silence list shows it).
        #[arg(value_parser = usage::id, allow_negative_numbers = true)]
        id: i64,
        #[command(flatten)]
        db: StateDbArgs,
    },
}

/// The state DB and sources `silence` works on.
fn silence_target(db: StateDbArgs) -> Result<stallwatch::silence::Target, ExitCode> {
    match (db.data_dir, db.config) {
        (_, Some(file)) => match Config::load(&file) {
            Ok(c) => Ok(stallwatch::silence::Target {
                data_dir: c.data_dir,
                sources: Some(c.sources.iter().map(|s| s.name.clone()).collect()),
            }),
            Err(e) => Err(fail(EXIT_CONFIG, &e.to_string())),
        },
        (dir, None) => Ok(stallwatch::silence::Target {
            data_dir: dir.unwrap_or_else(default_data_dir),
            sources: None,
        }),
    }
}

fn silence(action: SilenceAction) -> ExitCode {
    let now = clock::real_ns();
    let result = match action {
        SilenceAction::Add {
            rule,
            source,
            duration,
            reason,
            db,
            format,
        } => silence_target(db).map(|t| {
            stallwatch::silence::add(
                &t,
                &stallwatch::silence::AddArgs {
                    rule,
                    source,
                    duration,
                    reason,
                    format,
                },
                now,
            )
        }),
        SilenceAction::List { db, format } => {
            silence_target(db).map(|t| stallwatch::silence::list(&t, format, now))
        }
        SilenceAction::Expire { id, db } => {
            silence_target(db).map(|t| stallwatch::silence::expire(&t, id, now))
        }
    };
    match result {
        Ok(r) => finish(r),
        Err(code) => code,
    }
}

fn main() -> ExitCode {
    // Taken first, so a restart's measured downtime does not include start-up work.
    let started = clock::read_clocks();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // One sentence in the user's terms; a pasted 100 KB value is shown clipped.
        Err(e) if e.use_stderr() => {
            eprintln!("stallwatch: {}", usage::sentence(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Silence { action } => silence(action),
        Command::Analyze {
            source,
            gap_min,
            top,
            format,
        } => finish(report::analyze(&report::AnalyzeArgs {
            source,
            gap_min,
            top,
            format: format.into(),
        })),
        Command::Report {
            evidence:
                Evidence {
                    source: Some(source),
                    config,
                    gap_min,
                    ..
                },
            data_dir,
            since,
            until,
            format,
            ..
        } => finish(report::app_verify::report(
            &report::app_verify::SourceArgs {
                source,
                config,
                gap_min,
                data_dir,
                before: None,
                after: None,
                migrated_at: None,
                since,
                until,
                format,
            },
            clock::real_ns(),
        )),
        Command::Report {
            evidence:
                Evidence {
                    prometheus: Some(prometheus),
                    selector,
                    ..
                },
            since,
            until,
            format,
            ..
        } => finish(report::fleet::report(
            &report::fleet::FleetReportArgs {
                prometheus,
                selector,
                since,
                until,
                format,
            },
            clock::real_ns(),
        )),
        Command::Report {
            data_dir,
            since,
            until,
            format,
            ..
        } => finish(report::report(
            &report::ReportArgs {
                data_dir: data_dir.unwrap_or_else(default_data_dir),
                since,
                until,
                format,
            },
            clock::real_ns(),
        )),
        Command::Verify {
            evidence:
                Evidence {
                    source: Some(source),
                    config,
                    gap_min,
                    ..
                },
            data_dir,
            before,
            after,
            migrated_at,
            format,
            ..
        } => finish(report::app_verify::verify(
            &report::app_verify::SourceArgs {
                source,
                config,
                gap_min,
                data_dir,
                before,
                after,
                migrated_at,
                since: None,
                until: None,
                format: format.into(),
            },
            clock::real_ns(),
        )),
        Command::Verify {
            evidence:
                Evidence {
                    prometheus: Some(prometheus),
                    selector,
                    ..
                },
            before,
            after,
            migrated_at,
            format,
            ..
        } => finish(report::fleet::verify(
            &report::fleet::FleetVerifyArgs {
                prometheus,
                selector,
                before,
                after,
                migrated_at,
                format: format.into(),
            },
            clock::real_ns(),
        )),
        Command::Verify {
            data_dir,
            before,
            after,
            migrated_at,
            format,
            ..
        } => finish(report::verify(
            &report::VerifyArgs {
                data_dir: data_dir.unwrap_or_else(default_data_dir),
                before,
                after,
                migrated_at,
                format: format.into(),
            },
            clock::real_ns(),
        )),
        Command::CheckConfig { file } => match Config::load(&file)
            .and_then(|config| source_files_usable(&file, &config).map(|()| config))
        {
            Ok(_) => {
                println!("{}: valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_CONFIG, &e.to_string()),
        },
        Command::Demo { listen, keep } => {
            init_logging_with(LogFormat::Text, stallwatch::demo::LOG_FILTER);
            match stallwatch::demo::run(listen, started, keep.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(EXIT_CONFIG, &e.to_string()),
            }
        }
        Command::Doctor {
            config,
            data_dir,
            format,
        } => {
            let mut config = match load_config(config) {
                Ok(c) => c,
                Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
            };
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            let outcome = stallwatch::doctor::run(config, format);
            print!("{}", outcome.stdout);
            ExitCode::from(outcome.exit_code)
        }
        Command::Run {
            config,
            listen,
            data_dir,
            stop_grace,
            command,
        } => {
            let file = config.clone();
            let loaded = load_config(config).and_then(|c| match &file {
                Some(file) => source_files_usable(file, &c).map(|()| c),
                None => Ok(c),
            });
            let mut config = match loaded {
                Ok(c) => c,
                Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
            };
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            let own_spans = init_logging(config.log_format, config.otlp.as_ref());
            let mut command = command.into_iter();
            let Some(program) = command.next() else {
                return match stallwatch::sidecar::run(config, started, own_spans) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(EXIT_CONFIG, &e.to_string()),
                };
            };
            let app = stallwatch::supervise::App {
                program,
                args: command.collect(),
                stop_grace: stop_grace.unwrap_or(stallwatch::supervise::DEFAULT_STOP_GRACE),
            };
            match stallwatch::sidecar::run_app(config, started, own_spans, app) {
                Ok(outcome) => ExitCode::from(stallwatch::supervise::exit_code(outcome.status)),
                Err(e) => fail(EXIT_CONFIG, &e.to_string()),
            }
        }
    }
}

/// A source path that exists must be a regular file, for `run` and `check-config` (a FIFO
/// would block the source's open). `doctor` loads the same file without this check and
/// reports such a source as unusable instead.
fn source_files_usable(
    file: &std::path::Path,
    config: &Config,
) -> Result<(), stallwatch::config::ConfigError> {
    match stallwatch::sources::file::first_not_a_file(&config.sources) {
        None => Ok(()),
        Some((index, problem)) => Err(stallwatch::config::ConfigError::Key {
            path: file.to_path_buf(),
            key: format!("source[{index}].url"),
            problem: format!("is refused: {problem}"),
        }),
    }
}

/// The config file, or without one the defaults `run` uses.
fn load_config(path: Option<PathBuf>) -> Result<Config, stallwatch::config::ConfigError> {
    match path {
        Some(path) => Config::load(&path),
        None => Ok(Config::default_with(default_data_dir())),
    }
}

/// Prints an operator tool's output; any error is the operator's to fix (exit 2).
fn finish(result: Result<Outcome, report::ToolError>) -> ExitCode {
    match result {
        Ok(outcome) => {
            print!("{}", outcome.stdout);
            ExitCode::from(outcome.exit_code)
        }
        Err(e) => fail(EXIT_CONFIG, &e.to_string()),
    }
}

/// One sentence on stderr; any value it quotes whole (a `--since` of 64 KB) is clipped.
fn fail(code: u8, sentence: &str) -> ExitCode {
    eprintln!("stallwatch: {}", stallwatch::config::clip_words(sentence));
    ExitCode::from(code)
}

/// Logging to stderr (`STALLWATCH_LOG` when set, else `info`), and with `[otlp]` (unless
/// `self_spans = false`) the layer that exports the sidecar's own spans: its other end is
/// returned for the exporter. The log layer never shows those spans, so log lines read
/// the same either way.
fn init_logging(format: LogFormat, otlp: Option<&OtlpConfig>) -> Option<OwnSpans> {
    let (own_layer, own_spans) = match otlp.filter(|o| o.self_spans) {
        Some(_) => {
            let (layer, own) = own_spans::layer();
            (Some(layer), Some(own))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(log_layer(format, "info"))
        .with(own_layer)
        .init();
    own_spans
}

fn init_logging_with(format: LogFormat, default_filter: &str) {
    tracing_subscriber::registry()
        .with(log_layer(format, default_filter))
        .init();
}

/// Log lines to stderr, text or JSON; `STALLWATCH_LOG` when set, else `default_filter`.
fn log_layer<S>(format: LogFormat, default_filter: &str) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let filter = EnvFilter::try_from_env("STALLWATCH_LOG")
        .unwrap_or_else(|_| EnvFilter::new(default_filter))
        .and(filter_fn(|meta| !own_spans::is_own_span(meta)));
    // Colour only on a terminal: journald and `docker logs` would keep the escape codes.
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer.json().with_filter(filter).boxed(),
    }
}
