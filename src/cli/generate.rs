//! `shopstream generate`: writes realistic, reproducible online-retail data for tests, demos and
//! benchmarks (see [`crate::sim::generate`]).

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::File;
use std::io::{ErrorKind, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use crate::sim::generate::{
    rows, write_rows, DateStyle, Encoding, Format, GenerateError, GenerateOptions, GenerateStats,
    OutputOptions, DEFAULT_LINES, DEFAULT_SEED,
};

/// Rows between two updates of the progress bar: often enough to look live, rare enough to cost
/// nothing.
const PROGRESS_EVERY: u64 = 16_384;

#[derive(Debug, clap::Args)]
#[command(
    about = "Write realistic online-retail invoice lines (the shape of the UCI Online Retail dataset)",
    long_about = "Write realistic online-retail invoice lines in the shape of the UCI Online Retail \
                  dataset: the same arguments always give the same bytes."
)]
pub struct Args {
    /// Number of lines (rows) to write; the default is the size of the real dataset.
    #[arg(long, default_value_t = DEFAULT_LINES)]
    pub lines: u64,
    /// Seed of every random choice; the same seed and size give byte-identical output.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// File format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Character encoding of CSV (latin1: ISO-8859-1 bytes, as the Kaggle copy).
    #[arg(long, value_enum, default_value_t)]
    pub encoding: Encoding,
    /// How dates are written: uci `12/1/2010 8:26`, iso `2010-12-01 08:26:00`.
    #[arg(long, value_enum, default_value_t)]
    pub date_style: DateStyle,
    /// File to write; standard output when absent.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs `shopstream generate`.
///
/// # Errors
/// When the output file cannot be created or written, or Latin-1 is asked for JSON.
pub fn run(args: Args) -> anyhow::Result<()> {
    let generate = GenerateOptions {
        lines: args.lines,
        seed: args.seed,
    };
    let output = OutputOptions {
        format: args.format,
        encoding: args.encoding,
        date_style: args.date_style,
    };
    output.validate()?;
    let started = Instant::now();
    let (stats, target) = match &args.output {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("cannot create the output file {}", path.display()))?;
            let progress = progress_bar(args.lines);
            let mut written = 0u64;
            let tracked = rows(&generate).inspect(|_| {
                written += 1;
                if written % PROGRESS_EVERY == 0 {
                    progress.set_position(written);
                }
            });
            let stats = write_rows(tracked, file, &output)
                .with_context(|| format!("cannot write {}", path.display()))?;
            progress.finish_and_clear();
            (stats, path.display().to_string())
        }
        None => {
            let stdout = std::io::stdout().lock();
            match write_rows(rows(&generate), stdout, &output) {
                Ok(stats) => (stats, "standard output".to_owned()),
                // `shopstream generate | head` is fine: the reader has what it wanted.
                Err(GenerateError::Write(e)) if e.kind() == ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e).context("cannot write to standard output"),
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut stderr = std::io::stderr();
    // The summary goes to stderr so that stdout carries only the data.
    let _ = writeln!(stderr, "{}", summary(&stats, seconds, &target));
    Ok(())
}

/// A bar on stderr when a person is watching it; hidden otherwise (logs, CI, pipes).
fn progress_bar(lines: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(lines);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} lines ({per_sec}, {eta} left)",
        )
        .expect("the progress template is valid")
        .progress_chars("=> "),
    );
    bar
}

fn summary(stats: &GenerateStats, seconds: f64, target: &str) -> String {
    let rate = if seconds > 0.0 {
        stats.lines as f64 / seconds
    } else {
        0.0
    };
    format!(
        "wrote {} lines in {} invoices, {} bytes, to {target} in {seconds:.2} s ({rate:.0} lines/s)",
        stats.lines, stats.invoices, stats.bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_every_figure() {
        let stats = GenerateStats {
            lines: 2_000,
            invoices: 95,
            bytes: 180_000,
        };
        assert_eq!(
            summary(&stats, 0.5, "out.csv"),
            "wrote 2000 lines in 95 invoices, 180000 bytes, to out.csv in 0.50 s (4000 lines/s)"
        );
    }
}
