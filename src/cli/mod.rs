//! The `shopstream` command line: one subcommand per file in this folder.

pub mod aws;
mod dead_letter;
mod demo;
mod replay;
mod serve;

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
    }
}

/// Loads settings for commands that need them, with the file named on the command line.
pub fn load_settings(config: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    Settings::load(config).context("cannot start")
}

/// Sets up `tracing` as the settings say; `RUST_LOG` overrides the level. Safe to call twice.
pub fn init_logging(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log.level.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
