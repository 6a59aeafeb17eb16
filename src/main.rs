//! The `stallwatch` command line: parses arguments, loads config, maps errors to exit
//! codes (2 for anything the operator must fix in config or environment, 1 otherwise;
//! `verify` returns its verdict: 0 FIXED, 1 NOT FIXED, 3 NOT ENOUGH DATA; `doctor` 0 when
//! every freeze kind is covered here, 1 when some are blind).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stallwatch::clock;
use stallwatch::config::{default_data_dir, Config, LogFormat};
use stallwatch::report::{self, Format, Outcome, TextFormat};

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
    /// Run the sidecar. Without --config: freeze detector only, with defaults.
    Run {
        /// TOML config file (see examples/stallwatch.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, overriding the config (default 0.0.0.0:9847).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// State directory, overriding the config (default /var/lib/stallwatch as root,
        /// else $XDG_STATE_HOME/stallwatch or ~/.local/state/stallwatch).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// A self-contained live demo: a synthetic app with a queue, steps, retries, dead
    /// letters, spend and stalls, watched by a real sidecar. No setup needed.
    Demo {
        /// Listen address of the demo's sidecar.
        #[arg(long, default_value = "127.0.0.1:9847")]
        listen: std::net::SocketAddr,
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
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        gap_min: std::time::Duration,
        /// Gaps listed, overall and per day.
        #[arg(long, default_value_t = stallwatch::report::DEFAULT_TOP)]
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
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
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
        #[arg(long, value_enum, default_value = "text")]
        format: TextFormat,
    },
}

fn main() -> ExitCode {
    // Taken first, so a restart's measured downtime does not include start-up work.
    let started = clock::read_clocks();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors quote the argument; a pasted 100 KB value is shown clipped.
        Err(e) if e.use_stderr() => {
            eprint!(
                "{}",
                stallwatch::config::clip_words(&e.render().to_string())
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => e.exit(),
    };
    match cli.command {
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
            data_dir,
            since,
            until,
            format,
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
            data_dir,
            before,
            after,
            migrated_at,
            format,
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
        Command::Demo { listen } => {
            init_logging(LogFormat::Text);
            match stallwatch::demo::run(listen, started) {
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
            init_logging(config.log_format);
            match stallwatch::sidecar::run(config, started) {
                Ok(()) => ExitCode::SUCCESS,
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STALLWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: journald and `docker logs` would keep the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
