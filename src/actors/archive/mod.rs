//! The raw archiver: every line as it arrived, gzip NDJSON objects in a folder or S3, for replays,
//! audits and tools that read files.
//!
//! Object keys are `<prefix>/dt=YYYY-MM-DD/shard=<id>/<first>-<last>.ndjson.gz`: the day (UTC) the
//! unit's first record entered shopstream, the shard, and the sequence range, zero-padded so keys
//! sort in stream order. A unit redelivered after a crash is the same range (the actor announces
//! ranges before writing them), hence the same key: the object is overwritten, not duplicated.

use async_trait::async_trait;
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use super::sink::{FlushPolicy, SinkFailure, SinkUnit, SinkWriter};
use crate::object_store::ObjectStore;
use crate::stream::{SequenceNumber, ShardId, SinkKind};

pub struct Archiver {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    flush_bytes: usize,
    flush_age: Duration,
}

impl Archiver {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        flush_bytes: usize,
        flush_age: Duration,
    ) -> Self {
        Archiver {
            store,
            prefix: prefix.trim_end_matches('/').to_owned(),
            flush_bytes,
            flush_age,
        }
    }

    /// The key of the object holding records `first..=last` of `shard`.
    pub fn key(
        &self,
        day: chrono::NaiveDate,
        shard: &ShardId,
        first: &SequenceNumber,
        last: &SequenceNumber,
    ) -> String {
        format!(
            "{}/dt={}/shard={}/{:0>20}-{:0>20}.ndjson.gz",
            self.prefix,
            day.format("%Y-%m-%d"),
            shard,
            first.as_str(),
            last.as_str()
        )
    }
}

/// Gzip NDJSON of the lines: one JSON object per line, as the sinks store them.
pub fn encode_ndjson_gz<L: std::borrow::Borrow<crate::model::IngestedLine>>(
    lines: &[L],
) -> std::io::Result<Vec<u8>> {
    // The lines go to the compressor some 64 KiB at a time, not one by one: each write into
    // the deflate stream has a cost of its own, as large as that of a line's bytes.
    const CHUNK: usize = 64 * 1024;
    let mut gz = GzEncoder::new(Vec::with_capacity(lines.len() * 80), Compression::fast());
    let mut buf = Vec::with_capacity(CHUNK + 1024);
    for line in lines {
        serde_json::to_writer(&mut buf, line.borrow())?;
        buf.push(b'\n');
        if buf.len() >= CHUNK {
            gz.write_all(&buf)?;
            buf.clear();
        }
    }
    gz.write_all(&buf)?;
    gz.finish()
}

#[async_trait]
impl SinkWriter for Archiver {
    fn kind(&self) -> SinkKind {
        SinkKind::Archive
    }

    fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy::Buffered {
            max_bytes: self.flush_bytes,
            max_age: self.flush_age,
        }
    }

    fn exact_units(&self) -> bool {
        true
    }

    fn per_line(&self) -> bool {
        false
    }

    async fn write(&self, unit: &SinkUnit<'_>) -> Result<(), SinkFailure> {
        let key = self.key(
            unit.first_ingested_at.date_naive(),
            unit.shard,
            unit.first,
            unit.last,
        );
        // Compressed right here: the archive's actors have an arbiter (thread) of their own, so
        // this holds up no other sink, and the lines need not be copied to another thread.
        let body = encode_ndjson_gz(unit.lines)
            .map_err(|e| SinkFailure::permanent(format!("cannot encode the lines: {e}")))?;
        self.store
            .put(&key, Bytes::from(body))
            .await
            .map_err(|e| SinkFailure::retriable(format!("cannot write {key}: {e}")))
    }

    async fn health(&self) -> Result<(), String> {
        self.store.health().await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::line::sample_ingested;
    use crate::model::IngestedLine;
    use std::io::Read;

    /// An object holds every line once, in order, one JSON object a line, whether the lines fill
    /// less than one of the chunks handed to the compressor or several.
    #[test]
    fn an_object_decompresses_to_its_lines_one_per_row() {
        for count in [0usize, 1, 3, 2_000] {
            let lines: Vec<IngestedLine> = (0..count)
                .map(|i| sample_ingested(Some(format!("ITEM {i}")), 6, "2.55", Some(i as u64)))
                .collect();
            let body = encode_ndjson_gz(&lines).unwrap();
            let mut text = String::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut text)
                .unwrap();
            assert!(
                count < 2_000 || text.len() > 2 * 64 * 1024,
                "several chunks"
            );
            let rows: Vec<IngestedLine> = text
                .lines()
                .map(|row| serde_json::from_str(row).unwrap())
                .collect();
            assert_eq!(rows, lines, "{count} lines");
        }
    }
}
