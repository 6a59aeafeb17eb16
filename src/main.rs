//! The `stallwatch` command line: parses arguments, loads config, maps errors to exit
//! codes (2 for anything the operator must fix in config or environment, 1 otherwise).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stallwatch::clock;
use stallwatch::config::{default_data_dir, Config, LogFormat};

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
    /// Validate a config file: exit 0 if valid, 2 with the problem if not.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    // Taken first, so a restart's measured downtime does not include start-up work.
    let started = clock::read_clocks();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
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
        Command::Run {
            config,
            listen,
            data_dir,
        } => {
            let mut config = match config {
                Some(path) => match Config::load(&path) {
                    Ok(c) => c,
                    Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
                },
                None => Config::default_with(default_data_dir()),
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

fn fail(code: u8, sentence: &str) -> ExitCode {
    eprintln!("stallwatch: {sentence}");
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
