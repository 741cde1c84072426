//! The `shopstream` command line: one subcommand per file in this folder.

/// `println!` that never panics: a closed stdout (`shopstream serve | true`, a reader that went
/// away) must not bring down a command, least of all a running server. The error is logged at
/// debug level and otherwise ignored; what the commands print is also in the logs or the exit
/// status.
macro_rules! out {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod aws;
mod dead_letter;
mod demo;
mod replay;
mod serve;
mod verify;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use crate::config::{LogFormat, Settings};

pub mod generate;
pub mod import;

#[derive(Debug, Parser)]
#[command(
    name = "shopstream",
    version,
    about = "Moves a retailer's invoice lines from its stores to an archive, an operational store and a warehouse.",
    propagate_version = true
)]
pub struct Cli {
    /// Settings file layered over the built-in defaults (see config/default.toml for every key).
    #[arg(long, global = true, env = "SHOPSTREAM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the pipeline: the HTTP API (ingest, look-ups, dashboard, metrics) and the sink actors.
    Serve(serve::Args),
    /// Starts the pipeline on embedded backends, replays a realistic dataset through it, and says
    /// where to look. The quickest way to see shopstream work.
    Demo(demo::Args),
    /// The store simulator: sends a CSV file's lines to a running shopstream, invoice by invoice,
    /// from several concurrent stores.
    Replay(replay::Args),
    /// Lists or re-drives the lines that sinks could not store.
    #[command(subcommand)]
    DeadLetter(dead_letter::Command),
    Generate(generate::Args),
    /// Set up the AWS resources of the aws backends (`aws init`).
    Aws(aws::AwsArgs),
    Import(import::Args),
    /// Reconciles what every sink holds against the stream (and an input file): per day, line
    /// counts, revenue and a digest of line ids. Exits 1 naming the sink and day that differ.
    Verify(verify::Args),
}

/// Parses the command line and runs the command. The binary's `main` is only this.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(cli.config.as_deref(), args),
        Command::Demo(args) => demo::run(cli.config.as_deref(), args),
        Command::Replay(args) => replay::run(args),
        Command::DeadLetter(cmd) => dead_letter::run(cli.config.as_deref(), cmd),
        Command::Generate(args) => generate::run(args),
        Command::Aws(args) => aws::run(args, cli.config.as_deref()),
        Command::Import(args) => import::run(args, cli.config.as_deref()),
        Command::Verify(args) => verify::run(cli.config.as_deref(), args),
    }
}

/// Loads settings for commands that need them, with the file named on the command line.
pub fn load_settings(config: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    Settings::load(config).context("cannot start")
}

/// Writes to stdout, ignoring (and logging) a write error; see `out!`.
#[doc(hidden)]
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        tracing::debug!(error = %e, "Cannot write to stdout; the output is dropped.");
    }
}

/// For commands that only read the data folder (`dead-letter list`, `dead-letter redrive`):
/// refuses a `data_dir` that does not exist instead of creating an empty one and reporting
/// nothing, which is what a mistyped path would otherwise do. Only matters when a stage uses
/// the embedded backends (the aws ones keep nothing there).
///
/// # Errors
/// `data_dir` is used and is not an existing folder.
pub fn require_data_dir(settings: &Settings) -> anyhow::Result<()> {
    let uses_folder = settings.uses_data_dir();
    let dir = &settings.data_dir;
    if uses_folder && !dir.is_dir() {
        anyhow::bail!(
            "data folder {} does not exist (or is not a folder); check `data_dir` in the settings \
             file or SHOPSTREAM__DATA_DIR: it must name the folder `shopstream serve` writes to",
            dir.display()
        );
    }
    Ok(())
}

/// Sets up `tracing` as the settings say; `RUST_LOG` overrides the level. Safe to call twice.
pub fn init_logging(settings: &Settings) {
    init_logging_into(settings, None);
}

/// [`init_logging`], with the log going to `file` when one is given, and only warnings and errors
/// to stderr (unless `RUST_LOG` asks for more): a command that tells a story on the terminal (the
/// demo) keeps it readable. Colours only when stderr is a terminal.
pub fn init_logging_into(settings: &Settings, file: Option<std::fs::File>) {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::{filter::LevelFilter, fmt, prelude::*, EnvFilter, Layer, Registry};
    type Boxed = Box<dyn Layer<Registry> + Send + Sync>;
    let asked = std::env::var_os("RUST_LOG").is_some();
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(settings.log.level.clone()))
    };
    let layer = |writer: BoxMakeWriter, ansi: bool| -> Boxed {
        let layer = fmt::layer().with_writer(writer).with_ansi(ansi);
        match settings.log.format {
            LogFormat::Json => layer.json().boxed(),
            LogFormat::Text => layer.boxed(),
        }
    };
    let stderr = layer(
        BoxMakeWriter::new(std::io::stderr),
        std::io::stderr().is_terminal(),
    );
    let mut layers: Vec<Boxed> = Vec::new();
    match file {
        Some(file) => {
            layers.push(
                layer(BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
                    .with_filter(filter())
                    .boxed(),
            );
            if asked {
                layers.push(stderr.with_filter(filter()).boxed());
            } else {
                layers.push(stderr.with_filter(LevelFilter::WARN).boxed());
            }
        }
        None => layers.push(stderr.with_filter(filter()).boxed()),
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
    // Once per process, whichever command calls first: a misspelt override (one underscore
    // after SHOPSTREAM) is otherwise ignored without a word.
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        for warning in crate::config::stray_env_vars(std::env::vars_os()) {
            tracing::warn!("{warning}");
        }
    });
}
