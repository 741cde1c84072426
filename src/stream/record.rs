//! The stream record format, encoded and decoded here only.
//!
//! A record is one [`LineBatch`]: lines of one invoice from one request, with the store that sent
//! them and when shopstream accepted them. Its partition key is the invoice number, so an
//! invoice's lines stay on one shard, in order; its dedup key is a hash of its line ids, so a
//! retried request makes the same records and the embedded log can recognise them.
//!
//! Two encodings of the same layout ([`RecordFormat`]): JSON on Kinesis, where other consumers of
//! the stream may read it, and a binary one on the embedded log, which only shopstream reads and
//! where every sink decodes every record. [`decode`] reads both, told apart by the first byte, so
//! records written by any earlier version (all JSON) decode unchanged.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use super::{PutRecord, MAX_RECORD_BYTES};
use crate::model::{IngestedLine, InvoiceLine};

/// How a record's payload is written. [`decode`] reads either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// A JSON object: what the Kinesis stream carries, readable by any consumer of the stream.
    Json,
    /// [`BINARY_V2`], then the batch in postcard's serde format (length-prefixed fields in
    /// declaration order, varint integers; <https://postcard.jamesmunns.com/wire-format>) in a
    /// compact layout ([`CompactBatch`]): on the embedded log, which only shopstream reads. It
    /// decodes without scanning for escapes or matching field names, and takes about a quarter of
    /// the JSON's bytes.
    Binary,
}

/// The first byte of a binary record written from 2026-12-06 to 2026-12-07: [`LineBatch`] as
/// postcard writes it, each line whole (its invoice number, its id's hex digits, its date and
/// price as text). Still read. A JSON record starts with `{`.
pub const BINARY_V1: u8 = 0x01;

/// The first byte of a [`RecordFormat::Binary`] record: a [`CompactBatch`].
pub const BINARY_V2: u8 = 0x02;

/// A record that cannot be encoded or read back.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("binary record: {0}")]
    Binary(#[from] postcard::Error),
}

/// The payload of one stream record: lines of one invoice from one request, with their origin.
///
/// Packing an invoice's lines into one record (up to the record size limit) keeps them in order on
/// one shard and costs far fewer Kinesis PUT payload units than a record per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineBatch {
    pub store_id: std::sync::Arc<str>,
    pub ingested_at: DateTime<Utc>,
    pub lines: Vec<InvoiceLine>,
}

impl LineBatch {
    /// The lines with their origin attached, as the sinks store them.
    pub fn into_ingested(self) -> impl Iterator<Item = IngestedLine> {
        let LineBatch {
            store_id,
            ingested_at,
            lines,
        } = self;
        lines.into_iter().map(move |line| IngestedLine {
            line,
            store_id: store_id.clone(),
            ingested_at,
        })
    }
}

/// A record's lines, decoded: what a sink's worker holds until it has written them.
#[derive(Debug)]
pub struct DecodedLines {
    pub ingested_at: DateTime<Utc>,
    /// About the bytes the lines take as NDJSON with their store and acceptance time, as the
    /// archive writes them: what `archive.flush_bytes` counts, the same whatever the record's
    /// [`RecordFormat`] (a binary record is about a quarter of its JSON size).
    pub ndjson_bytes: usize,
    pub lines: Vec<IngestedLine>,
}

impl DecodedLines {
    /// `lines`, accepted at `ingested_at`, with their NDJSON size estimated.
    pub fn new(ingested_at: DateTime<Utc>, lines: Vec<IngestedLine>) -> Self {
        let ndjson_bytes = lines
            .iter()
            .map(|l| {
                NDJSON_FIXED_BYTES
                    + l.line.invoice_no.len()
                    + l.line.stock_code.len()
                    + l.line.description.as_deref().map_or(0, str::len)
                    + l.line.country.len()
                    + l.store_id.len()
            })
            .sum();
        DecodedLines {
            ingested_at,
            ndjson_bytes,
            lines,
        }
    }
}

impl From<LineBatch> for DecodedLines {
    fn from(batch: LineBatch) -> Self {
        DecodedLines::new(batch.ingested_at, batch.into_ingested().collect())
    }
}

/// A record decoded once for all the sinks that read it.
///
/// The three workers of a shard read the same records from the shard's shared read
/// (`stream::shared_reads`), clones of one [`Record`](super::Record) whose `decoded` is this one
/// cell. The first worker to get to a record decodes it; the others take the same lines while any
/// worker still holds them (one copy where their units overlap). The cell holds them weakly, so it
/// keeps nothing alive itself: a worker that comes to a record after the others have written and
/// dropped it decodes it again (most records, when the sinks are more than a unit apart).
#[derive(Clone, Default)]
pub struct DecodeOnce(std::sync::Arc<std::sync::Mutex<std::sync::Weak<DecodedLines>>>);

impl std::fmt::Debug for DecodeOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecodeOnce")
    }
}

impl DecodeOnce {
    /// The lines of `data` (the record this cell belongs to): decoded by an earlier reader and
    /// still held, or decoded now. A worker asking while another decodes waits for it rather than
    /// decode the same record twice. A record that does not decode is not kept: each reader gets
    /// its own error (and dead-letters the record for its sink).
    ///
    /// # Errors
    /// The payload is not a line batch, as [`decode`].
    pub fn lines(&self, data: &[u8]) -> Result<std::sync::Arc<DecodedLines>, RecordError> {
        let mut cell = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lines) = cell.upgrade() {
            return Ok(lines);
        }
        let lines = std::sync::Arc::new(DecodedLines::from(decode(data)?));
        *cell = std::sync::Arc::downgrade(&lines);
        Ok(lines)
    }
}

/// What an NDJSON line of the archive takes beyond its free-text fields: field names, quotes,
/// the line id, the dates, the amounts (a typical line's; see the test).
const NDJSON_FIXED_BYTES: usize = 230;

/// A [`LineBatch`] borrowed from lines already in memory: records are serialized from it without
/// copying the lines. It serializes to exactly what `LineBatch` reads back.
#[derive(Debug, Serialize)]
struct LineBatchRef<'a> {
    store_id: &'a str,
    ingested_at: DateTime<Utc>,
    lines: &'a [&'a InvoiceLine],
}

/// The binary layout of a record ([`BINARY_V2`]). A record holds lines of one invoice, so the
/// invoice number is written once; each line's id is its 16 bytes, its date seconds and
/// nanoseconds, its price the decimal's mantissa and scale (exact, as the text was), and its date
/// and country only where they differ from the line before (an invoice's lines nearly always
/// share them). About 70 bytes a line of the dataset, against about 146 in [`BINARY_V1`]: the
/// embedded log writes, syncs and copies back every byte, and each sink decodes every line.
#[derive(Serialize, Deserialize)]
struct CompactBatch<'a> {
    #[serde(borrow)]
    store_id: &'a str,
    ingested_at: DateTime<Utc>,
    invoice_no: &'a str,
    #[serde(borrow)]
    lines: Vec<CompactLine<'a>>,
}

#[derive(Serialize, Deserialize)]
struct CompactLine<'a> {
    line_id: [u8; 16],
    stock_code: &'a str,
    description: Option<&'a str>,
    quantity: i64,
    /// Seconds and nanoseconds since 1970-01-01T00:00:00 (the date has no zone); `None`: the
    /// previous line's.
    invoice_date: Option<(i64, u32)>,
    /// The decimal's mantissa and scale.
    unit_price: (i128, u32),
    customer_id: Option<u64>,
    /// `None`: the previous line's.
    country: Option<&'a str>,
}

impl<'a> CompactBatch<'a> {
    fn of(
        store_id: &'a str,
        ingested_at: DateTime<Utc>,
        invoice_no: &'a str,
        lines: &[&'a InvoiceLine],
    ) -> Self {
        let mut before: Option<&InvoiceLine> = None;
        let lines = lines
            .iter()
            .map(|&line| {
                let compact = CompactLine {
                    line_id: line.line_id.to_bytes(),
                    stock_code: &line.stock_code,
                    description: line.description.as_deref(),
                    quantity: line.quantity,
                    invoice_date: (before.map(|b| b.invoice_date) != Some(line.invoice_date)).then(
                        || {
                            let date = line.invoice_date.and_utc();
                            (date.timestamp(), date.timestamp_subsec_nanos())
                        },
                    ),
                    unit_price: (line.unit_price.mantissa(), line.unit_price.scale()),
                    customer_id: line.customer_id,
                    country: (before.map(|b| &b.country) != Some(&line.country))
                        .then_some(line.country.as_str()),
                };
                before = Some(line);
                compact
            })
            .collect();
        CompactBatch {
            store_id,
            ingested_at,
            invoice_no,
            lines,
        }
    }

    fn into_batch(self) -> Result<LineBatch, RecordError> {
        let bad = || RecordError::Binary(postcard::Error::DeserializeBadEncoding);
        let invoice_no = compact_str::CompactString::from(self.invoice_no);
        let mut lines: Vec<InvoiceLine> = Vec::with_capacity(self.lines.len());
        for line in self.lines {
            let before = lines.last();
            let invoice_date = match (line.invoice_date, before) {
                (Some((secs, nanos)), _) => DateTime::from_timestamp(secs, nanos)
                    .ok_or_else(bad)?
                    .naive_utc(),
                (None, Some(before)) => before.invoice_date,
                (None, None) => return Err(bad()),
            };
            let country = match (line.country, before) {
                (Some(country), _) => country.into(),
                (None, Some(before)) => before.country.clone(),
                (None, None) => return Err(bad()),
            };
            let (mantissa, scale) = line.unit_price;
            lines.push(InvoiceLine {
                line_id: crate::model::LineId::from_bytes(&line.line_id),
                invoice_no: invoice_no.clone(),
                stock_code: line.stock_code.into(),
                description: line.description.map(Into::into),
                quantity: line.quantity,
                invoice_date,
                unit_price: rust_decimal::Decimal::try_from_i128_with_scale(mantissa, scale)
                    .map_err(|_| bad())?,
                customer_id: line.customer_id,
                country,
            });
        }
        Ok(LineBatch {
            store_id: self.store_id.into(),
            ingested_at: self.ingested_at,
            lines,
        })
    }
}

/// Groups the lines by invoice (in the order invoices first appear) into stream records: one
/// record per invoice, split in order when an invoice does not fit one record. Keeping an
/// invoice's lines in one record keeps them on one shard, in order, and costs one Kinesis PUT
/// payload unit per ~25 KB instead of one per line.
/// Returns each record with the indexes into `lines` of the lines it carries.
///
/// # Errors
/// A line that cannot be serialized (not expected for a parsed line).
pub fn encode_indexed<L: std::borrow::Borrow<InvoiceLine>>(
    format: RecordFormat,
    store_id: &str,
    lines: &[L],
) -> Result<Vec<(PutRecord, Vec<usize>)>, RecordError> {
    encode_within(format, store_id, Utc::now(), lines, MAX_RECORD_BYTES)
}

/// [`encode_indexed`] with the acceptance time and the record size limit given.
fn encode_within<L: std::borrow::Borrow<InvoiceLine>>(
    format: RecordFormat,
    store_id: &str,
    ingested_at: DateTime<Utc>,
    lines: &[L],
    max_bytes: usize,
) -> Result<Vec<(PutRecord, Vec<usize>)>, RecordError> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_invoice: HashMap<&str, Vec<(usize, &InvoiceLine)>> = HashMap::new();
    for (i, line) in lines.iter().map(std::borrow::Borrow::borrow).enumerate() {
        by_invoice
            .entry(line.invoice_no.as_str())
            .or_insert_with(|| {
                order.push(line.invoice_no.as_str());
                Vec::new()
            })
            .push((i, line));
    }
    let mut records = Vec::with_capacity(order.len());
    for invoice in order {
        let batch = Batch {
            format,
            store_id,
            ingested_at,
            invoice,
            max_bytes,
        };
        batch.push_records(&by_invoice[invoice], &mut records)?;
    }
    Ok(records)
}

/// What every record of one invoice shares.
struct Batch<'a> {
    format: RecordFormat,
    store_id: &'a str,
    ingested_at: DateTime<Utc>,
    invoice: &'a str,
    max_bytes: usize,
}

impl Batch<'_> {
    /// Appends the records of `lines`: one when they fit, else the two halves, each split again
    /// as needed. A single line too large for a record is still one record; the stream refuses it
    /// with [`StreamError::RecordTooLarge`](super::StreamError::RecordTooLarge).
    fn push_records(
        &self,
        indexed: &[(usize, &InvoiceLine)],
        out: &mut Vec<(PutRecord, Vec<usize>)>,
    ) -> Result<(), RecordError> {
        let lines: Vec<&InvoiceLine> = indexed.iter().map(|(_, l)| *l).collect();
        let batch = LineBatchRef {
            store_id: self.store_id,
            ingested_at: self.ingested_at,
            lines: &lines,
        };
        let data = match self.format {
            RecordFormat::Json => serde_json::to_vec(&batch)?,
            RecordFormat::Binary => {
                let compact =
                    CompactBatch::of(self.store_id, self.ingested_at, self.invoice, &lines);
                // About 70 bytes a line in the dataset: sized once, not grown from one byte.
                let mut data = Vec::with_capacity(64 + lines.len() * 96);
                data.push(BINARY_V2);
                postcard::serialize_with_flavor(&compact, VecFlavor(data))?
            }
        };
        if data.len() + self.invoice.len() <= self.max_bytes || lines.len() == 1 {
            let record = PutRecord {
                partition_key: self.invoice.to_owned(),
                data: Bytes::from(data),
                dedup_key: Some(dedup_key(&lines)),
            };
            out.push((record, indexed.iter().map(|(i, _)| *i).collect()));
            return Ok(());
        }
        let (a, b) = indexed.split_at(indexed.len() / 2);
        self.push_records(a, out)?;
        self.push_records(b, out)
    }
}

/// postcard's output into a `Vec` that may hold bytes already (`to_extend` goes through `Extend`,
/// a byte at a time for every varint and tag; `to_allocvec` cannot start from a sized buffer).
struct VecFlavor(Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor {
    type Output = Vec<u8>;

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// The identity of a record's content: its line ids, in order. A retried request makes the same
/// records, so the stream can recognise them.
fn dedup_key(lines: &[&InvoiceLine]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(b"shopstream.record.v1\0");
    for line in lines {
        h.update(line.line_id.as_str().as_bytes());
    }
    let mut key = [0u8; 16];
    key.copy_from_slice(&h.finalize().as_bytes()[..16]);
    key
}

/// Reads a record's payload, in either [`RecordFormat`], back into its lines.
///
/// # Errors
/// The payload is not a line batch (the shard reader sends such a record to dead letters).
pub fn decode(data: &[u8]) -> Result<LineBatch, RecordError> {
    match data.split_first() {
        Some((&BINARY_V2, rest)) => whole::<CompactBatch<'_>>(rest)?.into_batch(),
        Some((&BINARY_V1, rest)) => whole::<LineBatch>(rest),
        _ => Ok(serde_json::from_slice(data)?),
    }
}

/// A `T` that takes all of `bytes`: a cut or padded record is an error, not a shorter batch.
fn whole<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, RecordError> {
    let (value, left) = postcard::take_from_bytes::<T>(bytes)?;
    if !left.is_empty() {
        return Err(RecordError::Binary(postcard::Error::DeserializeBadEncoding));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    fn line(invoice: &str, description: String, occurrence: u32) -> InvoiceLine {
        InvoiceLine::new(
            invoice.into(),
            "85123A".into(),
            Some(description.into()),
            6,
            NaiveDate::from_ymd_opt(2010, 12, 1)
                .unwrap()
                .and_hms_opt(8, 26, 0)
                .unwrap(),
            Decimal::new(255, 2),
            Some(17850),
            "United Kingdom".into(),
            None,
            occurrence,
        )
    }

    #[test]
    fn clones_of_a_record_share_its_decode_while_a_reader_holds_it() {
        let lines = [line("536365", "A".into(), 0), line("536365", "B".into(), 1)];
        let (record, _) = encode_indexed(RecordFormat::Binary, "store-7", &lines)
            .unwrap()
            .remove(0);
        let cell = DecodeOnce::default();
        let first = cell.lines(&record.data).unwrap();
        assert_eq!(first.lines.len(), 2);
        assert_eq!(&*first.lines[1].store_id, "store-7");
        // A clone (another sink reading the same record from the shared read) gets the same
        // lines, not a second decode.
        let second = cell.clone().lines(&record.data).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &second));
        // Once no reader holds them, the cell keeps nothing: the next reader decodes again.
        let weak = std::sync::Arc::downgrade(&first);
        drop((first, second));
        assert!(weak.upgrade().is_none());
        assert_eq!(cell.lines(&record.data).unwrap().lines.len(), 2);
        // A payload that is not a line batch fails for every reader.
        let bad = DecodeOnce::default();
        assert!(bad.lines(b"not a batch").is_err());
        assert!(bad.lines(b"not a batch").is_err());
    }

    #[test]
    fn a_borrowed_batch_serializes_as_the_owned_one() {
        let lines = [line("536365", "A".into(), 0), line("536365", "B".into(), 1)];
        let owned = LineBatch {
            store_id: "store-7".into(),
            ingested_at: Utc::now(),
            lines: lines.to_vec(),
        };
        let refs: Vec<&InvoiceLine> = lines.iter().collect();
        let borrowed = LineBatchRef {
            store_id: "store-7",
            ingested_at: owned.ingested_at,
            lines: &refs,
        };
        let json = serde_json::to_vec(&borrowed).unwrap();
        assert_eq!(json, serde_json::to_vec(&owned).unwrap());
        assert_eq!(decode(&json).unwrap(), owned);
    }

    #[test]
    fn records_of_earlier_versions_still_decode() {
        let data = br#"{"store_id":"demo","ingested_at":"2026-01-02T03:04:05Z","lines":[{"line_id":"0123456789abcdef0123456789abcdef","invoice_no":"536365","stock_code":"85123A","description":"WHITE HANGING HEART T-LIGHT HOLDER","quantity":6,"invoice_date":"2010-12-01T08:26:00","unit_price":"2.55","customer_id":17850,"country":"United Kingdom"}]}"#;
        let batch = decode(data).unwrap();
        assert_eq!(&*batch.store_id, "demo");
        assert_eq!(batch.lines.len(), 1);
        assert_eq!(
            batch.lines[0].line_id.as_str(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(serde_json::to_vec(&batch).unwrap(), data.to_vec());
    }

    /// The binary form carries exactly what the JSON form does, in fewer bytes, and is told
    /// apart by its first byte; a cut or padded binary record is an error, not a shorter batch.
    #[test]
    fn both_formats_decode_to_the_same_batch() {
        let lines: Vec<_> = (0..3)
            .map(|i| line("C536379", format!("WHITE \"HEART\" é {i}"), i))
            .collect();
        let at = Utc::now();
        let json =
            encode_within(RecordFormat::Json, "store-7", at, &lines, MAX_RECORD_BYTES).unwrap();
        let binary = encode_within(
            RecordFormat::Binary,
            "store-7",
            at,
            &lines,
            MAX_RECORD_BYTES,
        )
        .unwrap();
        // The dedup key names the lines, not their bytes.
        assert_eq!(json[0].0.dedup_key, binary[0].0.dedup_key);
        let (json, binary) = (&json[0].0.data, &binary[0].0.data);
        assert_eq!(json[0], b'{');
        assert_eq!(binary[0], BINARY_V2);
        assert!(
            binary.len() < json.len(),
            "{} >= {}",
            binary.len(),
            json.len()
        );
        let batch = decode(binary).unwrap();
        assert_eq!(batch, decode(json).unwrap());
        assert_eq!(batch.lines, lines);
        assert_eq!(batch.ingested_at, at);
        assert!(decode(&binary[..binary.len() - 1]).is_err());
        let mut padded = binary.to_vec();
        padded.push(0);
        assert!(decode(&padded).is_err());
        assert!(decode(b"").is_err());
    }

    /// A binary record of the first layout ([`BINARY_V1`], each line whole) still decodes.
    #[test]
    fn binary_records_of_the_first_layout_still_decode() {
        let lines = [line("536365", "A".into(), 0), line("536365", "B".into(), 1)];
        let refs: Vec<&InvoiceLine> = lines.iter().collect();
        let at = Utc::now();
        let mut v1 = vec![BINARY_V1];
        v1.extend(
            postcard::to_allocvec(&LineBatchRef {
                store_id: "store-7",
                ingested_at: at,
                lines: &refs,
            })
            .unwrap(),
        );
        let batch = decode(&v1).unwrap();
        assert_eq!(batch.lines, lines);
        assert_eq!(batch.ingested_at, at);
        assert_eq!(&*batch.store_id, "store-7");
        assert!(decode(&v1[..v1.len() - 1]).is_err());
    }

    /// Lines of one invoice that differ in date, country, customer or the price's scale, or that
    /// lack a description, come back exactly as they were: the compact layout writes a date and
    /// a country only where they change, and a price as its mantissa and scale.
    #[test]
    fn the_compact_layout_keeps_what_differs_between_lines() {
        let mut lines: Vec<InvoiceLine> = (0..5).map(|i| line("536365", "x".into(), i)).collect();
        lines[1].invoice_date += chrono::Duration::seconds(61);
        lines[2].country = "France".into();
        lines[2].customer_id = None;
        lines[3].unit_price = Decimal::new(2550, 3);
        lines[3].description = None;
        lines[4].unit_price = Decimal::new(-1_000_000_000_001, 2);
        lines[4].invoice_date += chrono::Duration::nanoseconds(5);
        let records = encode_indexed(RecordFormat::Binary, "store-1", &lines).unwrap();
        let batch = decode(&records[0].0.data).unwrap();
        assert_eq!(batch.lines, lines);
        assert_eq!(batch.lines[3].unit_price.to_string(), "2.550");
        // The first line must carry its date and country: a record whose first line has none is
        // refused, not given a made-up one.
        let mut bad = vec![BINARY_V2];
        bad.extend(
            postcard::to_allocvec(&CompactBatch {
                store_id: "s",
                ingested_at: Utc::now(),
                invoice_no: "536365",
                lines: vec![CompactLine {
                    line_id: [0; 16],
                    stock_code: "85123A",
                    description: None,
                    quantity: 1,
                    invoice_date: None,
                    unit_price: (255, 2),
                    customer_id: None,
                    country: Some("France"),
                }],
            })
            .unwrap(),
        );
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn the_ndjson_estimate_is_within_a_tenth_of_the_archive_lines() {
        let lines: Vec<_> = (0..20)
            .map(|i| line("536365", "WHITE HANGING HEART T-LIGHT HOLDER".into(), i))
            .collect();
        let batch = LineBatch {
            store_id: "store-7".into(),
            ingested_at: Utc::now(),
            lines,
        };
        let estimate = DecodedLines::from(batch.clone()).ndjson_bytes;
        let actual: usize = batch
            .clone()
            .into_ingested()
            .map(|l| serde_json::to_vec(&l).unwrap().len() + 1)
            .sum();
        let off = estimate.abs_diff(actual) as f64 / actual as f64;
        assert!(off < 0.1, "estimate {estimate}, actual {actual}");
    }

    #[test]
    fn a_retried_request_makes_the_same_records() {
        let lines: Vec<_> = (0..3).map(|i| line("536365", "x".into(), i)).collect();
        let a = encode_indexed(RecordFormat::Binary, "demo", &lines).unwrap();
        let b = encode_indexed(RecordFormat::Binary, "demo", &lines).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0.dedup_key, b[0].0.dedup_key);
        assert_eq!(a[0].0.partition_key, "536365");
        assert_eq!(a[0].1, [0, 1, 2]);
    }

    proptest! {
        /// Encoding then decoding gives back every line once, in order within each invoice, each
        /// record holding one invoice under its partition key and fitting the size limit unless
        /// it is a single line.
        #[test]
        fn encode_then_decode_gives_back_the_lines(
            specs in prop::collection::vec((0usize..4, 0usize..600), 1..40),
            max_bytes in 600usize..4000,
            binary in any::<bool>(),
        ) {
            let format = if binary { RecordFormat::Binary } else { RecordFormat::Json };
            let lines: Vec<InvoiceLine> = specs
                .iter()
                .enumerate()
                .map(|(i, (inv, len))| line(&format!("5363{inv}"), "d".repeat(*len), i as u32))
                .collect();
            let at = Utc::now();
            let records = encode_within(format, "store-9", at, &lines, max_bytes).unwrap();
            let mut back: Vec<InvoiceLine> = Vec::new();
            for (r, indexes) in &records {
                let carried: Vec<&InvoiceLine> = indexes.iter().map(|&i| &lines[i]).collect();
                let batch = decode(&r.data).unwrap();
                prop_assert_eq!(&*batch.store_id, "store-9");
                prop_assert_eq!(batch.ingested_at, at);
                prop_assert!(batch.lines.iter().all(|l| l.invoice_no == r.partition_key));
                prop_assert!(
                    r.data.len() + r.partition_key.len() <= max_bytes || batch.lines.len() == 1,
                    "a record of {} lines is {} bytes, over {}",
                    batch.lines.len(),
                    r.data.len(),
                    max_bytes
                );
                let refs: Vec<&InvoiceLine> = batch.lines.iter().collect();
                prop_assert_eq!(r.dedup_key, Some(dedup_key(&refs)));
                prop_assert_eq!(carried, refs);
                back.extend(batch.lines);
            }
            let mut want = lines.clone();
            // Records come invoice by invoice, in the order invoices first appear.
            let first_seen = |inv: &str| lines.iter().position(|l| l.invoice_no == inv);
            want.sort_by_key(|l| first_seen(&l.invoice_no));
            prop_assert_eq!(back, want);
        }
    }
}
