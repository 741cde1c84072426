//! `shopstream dead-letter list|redrive`: the lines sinks could not store, and sending them again.

use anyhow::Context;
use std::path::Path;

use std::collections::BTreeMap;

use crate::actors::sink::SinkUnit;
use crate::app::Backends;
use crate::model::IngestedLine;
use crate::stream::{SequenceNumber, ShardId, SinkKind};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Lists dead letters with their reasons.
    List {
        /// Only this sink's.
        #[arg(long, value_enum)]
        sink: Option<SinkKind>,
    },
    /// Writes dead letters to their sink again; each one written is removed, the others stay.
    Redrive {
        /// Only this sink's.
        #[arg(long, value_enum)]
        sink: Option<SinkKind>,
    },
}

pub fn run(config: Option<&Path>, command: Command) -> anyhow::Result<()> {
    let settings = super::load_settings(config)?;
    super::init_logging(&settings);
    super::require_data_dir(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let backends = Backends::open(&settings).await?;
        let letters = backends.dead_letters(&settings);
        match command {
            Command::List { sink } => {
                let keys = letters.list(sink).await?;
                for meta in &keys {
                    let letter = letters.get(&meta.key).await?;
                    let line = letter.line.as_ref().map_or_else(
                        || "(undecodable record)".to_owned(),
                        |l| format!("invoice {} line {}", l.line.invoice_no, l.line.line_id),
                    );
                    out!(
                        "{} {} {}: {} ({})",
                        letter.failed_at.format("%Y-%m-%d %H:%M:%S"),
                        letter.sink,
                        line,
                        letter.reason,
                        meta.key
                    );
                }
                out!("{} dead letters", keys.len());
                Ok(())
            }
            Command::Redrive { sink } => {
                // Redrive writes the sinks and removes letters, as a running pipeline does.
                let _lock = crate::app::DataDirLock::acquire(&settings, "dead-letter redrive")?;
                let sinks = backends.sinks(&settings);
                // Letters of one unit (sink, shard, first record) are written together: for the
                // archive the unit is one object, named by its range.
                let mut groups: BTreeMap<(SinkKind, String, String), Vec<(String, IngestedLine)>> =
                    BTreeMap::new();
                let mut kept = 0u64;
                for meta in letters.list(sink).await? {
                    let letter = letters.get(&meta.key).await?;
                    match letter.line {
                        Some(line) => groups
                            .entry((
                                letter.sink,
                                letter.shard.0.clone(),
                                letter.sequence_number.to_string(),
                            ))
                            .or_default()
                            .push((meta.key, line)),
                        None => {
                            out!(
                                "kept {}: the record could not be decoded into lines",
                                meta.key
                            );
                            kept += 1;
                        }
                    }
                }
                let mut done = 0u64;
                for ((kind, shard, seq), entries) in groups {
                    let writer = sinks
                        .iter()
                        .find(|s| s.kind() == kind)
                        .context("dead letter of an unknown sink")?;
                    let shard = ShardId(shard);
                    let seq: SequenceNumber = seq.parse()?;
                    let lines: Vec<&IngestedLine> = entries.iter().map(|(_, l)| l).collect();
                    let unit = SinkUnit {
                        shard: &shard,
                        first: &seq,
                        last: &seq,
                        first_ingested_at: lines[0].ingested_at,
                        lines: &lines,
                    };
                    match writer.write(&unit).await {
                        Ok(()) => {
                            for (key, _) in &entries {
                                letters.delete(key).await?;
                            }
                            done += entries.len() as u64;
                        }
                        Err(e) => {
                            out!("kept {} letters of {kind} on {shard}: {e}", entries.len());
                            kept += entries.len() as u64;
                        }
                    }
                }
                out!("re-driven: {done} written, {kept} kept");
                if kept > 0 {
                    anyhow::bail!("{kept} dead letters could not be written; see above");
                }
                Ok(())
            }
        }
    })
}
