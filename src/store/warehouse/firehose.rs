//! The warehouse on Kinesis Data Firehose, delivering into the Redshift `sales` table.
//!
//! Each line becomes one JSON object with exactly the `sales` columns ([`SALES_DDL`]), one per
//! text line, which Redshift's `COPY ... FORMAT JSON 'auto'` loads by column name. Several lines
//! are packed into one Firehose record (Firehose bills every record in 5 KB steps, and a line is
//! about 300 bytes); a record always ends on a newline, so the objects Firehose concatenates stay
//! newline-delimited.
//!
//! Firehose delivers at least once and cannot look up what it already has: "a line id already
//! there is not added again" is kept by the Redshift load, which copies into a staging table and
//! merges into `sales` by `line_id` (see `docs/aws.md`).
//!
//! [`SALES_DDL`]: super::SALES_DDL

use async_trait::async_trait;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use serde::Serialize;

use super::{
    BulkFile, FileLoadStart, LedgerEntry, LoadCounts, LoadedInto, SalesSummary, Warehouse,
};
use crate::aws::{
    is_retriable_code, retry_entries, AwsClients, EntryOutcome, EntryRetry, PartialFailure,
};
use crate::config::{AwsConfig, FirehoseConfig};
use crate::model::{money_to_micros, IngestedLine};
use crate::store::StoreError;

/// PutRecordBatch limits: records per call, bytes per call, bytes per record.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_RECORD_BYTES: usize = 1000 * 1024;
/// Firehose bills ingestion per record in steps of this size.
const BILLING_STEP_BYTES: usize = 5 * 1024;

/// One row of the `sales` table, as Redshift's JSON 'auto' COPY reads it.
#[derive(Debug, Serialize)]
pub struct SalesRow<'a> {
    line_id: &'a str,
    invoice_no: &'a str,
    stock_code: &'a str,
    description: Option<&'a str>,
    quantity: i64,
    invoice_date: String,
    unit_price: String,
    line_total: String,
    line_total_micros: i64,
    customer_id: Option<u64>,
    country: &'a str,
    is_cancellation: u8,
    store_id: &'a str,
    ingested_at: String,
    source: &'static str,
}

impl<'a> SalesRow<'a> {
    /// The row of a line that came by the stream.
    ///
    /// # Errors
    /// `Rejected` when the line total has no exact micros value (does not fit 64 bits).
    pub fn new(l: &'a IngestedLine) -> Result<Self, StoreError> {
        let line = &l.line;
        let total = line.line_total();
        let micros = money_to_micros(total).ok_or_else(|| StoreError::Rejected {
            line_id: line.line_id.to_string(),
            reason: format!("line total {total} has no exact value in millionths"),
        })?;
        Ok(SalesRow {
            line_id: line.line_id.as_str(),
            invoice_no: &line.invoice_no,
            stock_code: &line.stock_code,
            description: line.description.as_deref(),
            quantity: line.quantity,
            invoice_date: line.invoice_date.format("%Y-%m-%d %H:%M:%S").to_string(),
            unit_price: line.unit_price.to_string(),
            line_total: total.to_string(),
            line_total_micros: micros,
            customer_id: line.customer_id,
            country: &line.country,
            is_cancellation: u8::from(line.is_cancellation()),
            store_id: &l.store_id,
            ingested_at: l.ingested_at.to_rfc3339(),
            source: "stream",
        })
    }
}

/// Lines into newline-terminated JSON, packed into records of at most `MAX_RECORD_BYTES`,
/// grouped into PutRecordBatch calls of at most 500 records and 4 MiB.
///
/// # Errors
/// `Rejected` for a line whose JSON alone exceeds a record.
pub fn pack<L: std::borrow::Borrow<IngestedLine>>(
    lines: &[L],
) -> Result<Vec<Vec<Vec<u8>>>, StoreError> {
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    for l in lines {
        let l = l.borrow();
        let mut json = serde_json::to_vec(&SalesRow::new(l)?).map_err(|e| {
            StoreError::Backend(format!("serializing line {}: {e}", l.line.line_id))
        })?;
        json.push(b'\n');
        if json.len() > MAX_RECORD_BYTES {
            return Err(StoreError::Rejected {
                line_id: l.line.line_id.to_string(),
                reason: format!(
                    "its JSON row is {} bytes, over Firehose's {MAX_RECORD_BYTES}-byte record limit",
                    json.len()
                ),
            });
        }
        if current.len() + json.len() > MAX_RECORD_BYTES {
            records.push(std::mem::take(&mut current));
        }
        current.extend_from_slice(&json);
    }
    if !current.is_empty() {
        records.push(current);
    }
    let mut batches: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut bytes = 0;
    for r in records {
        match batches.last_mut() {
            Some(b) if b.len() < MAX_BATCH_RECORDS && bytes + r.len() <= MAX_BATCH_BYTES => {
                bytes += r.len();
                b.push(r);
            }
            _ => {
                bytes = r.len();
                batches.push(vec![r]);
            }
        }
    }
    Ok(batches)
}

/// The `sales` table fed through a Firehose delivery stream.
#[derive(Debug, Clone)]
pub struct FirehoseWarehouse {
    client: aws_sdk_firehose::Client,
    delivery_stream: String,
    retry: EntryRetry,
}

impl FirehoseWarehouse {
    pub fn new(
        client: aws_sdk_firehose::Client,
        delivery_stream: impl Into<String>,
        retry: EntryRetry,
    ) -> Self {
        FirehoseWarehouse {
            client,
            delivery_stream: delivery_stream.into(),
            retry,
        }
    }

    pub fn from_config(clients: &AwsClients, aws: &AwsConfig, cfg: &FirehoseConfig) -> Self {
        Self::new(
            clients.firehose.clone(),
            cfg.delivery_stream.clone(),
            EntryRetry::from_config(aws),
        )
    }

    /// How errors name this backend's resource.
    fn resource(&self) -> String {
        format!("delivery stream {}", self.delivery_stream)
    }

    /// The answer to a bulk load: Firehose only forwards lines and keeps no ledger.
    fn no_bulk_loads(&self) -> StoreError {
        StoreError::Backend(format!(
            "delivery stream {}: the Firehose warehouse takes lines from the stream only and keeps \
             no import ledger; load bulk files into Redshift with COPY (docs/aws.md), or import \
             them into the embedded warehouse (warehouse.backend = \"embedded\")",
            self.delivery_stream
        ))
    }

    async fn put_batch(&self, batch: Vec<Vec<u8>>) -> Result<(), StoreError> {
        let result = retry_entries(
            batch,
            self.retry.clone(),
            StoreError::is_retriable,
            |pending: Vec<Vec<u8>>| async move {
                crate::metrics::aws_call("firehose", "PutRecordBatch");
                crate::metrics::aws_billed_steps(
                    "firehose_5kib_units",
                    pending.iter().map(Vec::len),
                    BILLING_STEP_BYTES,
                );
                let records = pending
                    .into_iter()
                    .map(|data| Record::builder().data(Blob::new(data)).build())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StoreError::Backend(format!("building a record: {e}")))?;
                let out = self
                    .client
                    .put_record_batch()
                    .delivery_stream_name(&self.delivery_stream)
                    .set_records(Some(records))
                    .send()
                    .await
                    .map_err(|e| StoreError::aws_write("PutRecordBatch", &self.resource(), &e))?;
                Ok(out
                    .request_responses()
                    .iter()
                    .map(|r| match r.error_code() {
                        None => EntryOutcome::Done(()),
                        Some(code) => {
                            let reason =
                                format!("{code}: {}", r.error_message().unwrap_or_default());
                            if is_retriable_code(code) {
                                EntryOutcome::Retry(reason)
                            } else {
                                EntryOutcome::Reject(reason)
                            }
                        }
                    })
                    .collect())
            },
        )
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(PartialFailure::Call(e)) => Err(e),
            Err(e @ PartialFailure::Exhausted { .. }) => Err(StoreError::Unavailable(format!(
                "delivery stream {}: {e}",
                self.delivery_stream
            ))),
            Err(e @ PartialFailure::Rejected { .. }) => Err(StoreError::Invalid(format!(
                "delivery stream {}: {e}",
                self.delivery_stream
            ))),
        }
    }
}

#[async_trait]
impl Warehouse for FirehoseWarehouse {
    /// Sends the lines as packed NDJSON records; entries Firehose reports failed are resent
    /// with backoff.
    ///
    /// # Errors
    /// `Rejected` for a line that cannot become a row (checked before anything is sent);
    /// `Invalid` when Firehose refuses the call, or an entry with a non-retriable code (an entry
    /// packs many lines: the sink finds the line by writing them one at a time); `Unavailable`
    /// when throttling outlasts the retries; `Backend` otherwise.
    async fn insert(&self, lines: &[&IngestedLine]) -> Result<(), StoreError> {
        for batch in pack(lines)? {
            self.put_batch(batch).await?;
        }
        Ok(())
    }

    /// Firehose cannot be queried; the dashboard reads Redshift directly.
    async fn summary(&self) -> Result<Option<SalesSummary>, StoreError> {
        Ok(None)
    }

    async fn health(&self) -> Result<(), StoreError> {
        use aws_sdk_firehose::types::DeliveryStreamStatus;
        let out = self
            .client
            .describe_delivery_stream()
            .delivery_stream_name(&self.delivery_stream)
            .send()
            .await
            .map_err(|e| {
                StoreError::aws_describe(
                    "DescribeDeliveryStream",
                    &self.resource(),
                    &e,
                    "create it from deploy/ or run `shopstream aws init`",
                )
            })?;
        match out
            .delivery_stream_description()
            .map(|d| d.delivery_stream_status())
        {
            Some(DeliveryStreamStatus::Active) => Ok(()),
            other => Err(StoreError::Unavailable(format!(
                "delivery stream {} is {other:?}, not ACTIVE",
                self.delivery_stream
            ))),
        }
    }

    /// Bulk files do not go through Firehose.
    ///
    /// # Errors
    /// Always [`StoreError::Backend`], saying where bulk files go instead.
    async fn load_file(&self, _: &BulkFile, _: bool) -> Result<FileLoadStart, StoreError> {
        Err(self.no_bulk_loads())
    }

    /// # Errors
    /// Always, as [`load_file`](Self::load_file).
    async fn ledger_entry(
        &self,
        _: &str,
        _: LoadedInto,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        Err(self.no_bulk_loads())
    }

    /// # Errors
    /// Always, as [`load_file`](Self::load_file).
    async fn record_load(
        &self,
        _: &BulkFile,
        _: LoadedInto,
        _: &LoadCounts,
        _: Option<&str>,
    ) -> Result<(), StoreError> {
        Err(self.no_bulk_loads())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: u64, description: String) -> IngestedLine {
        crate::model::line::sample_ingested(Some(description), 3, "0.1", Some(i))
    }

    #[test]
    fn rows_have_the_sales_columns_and_exact_money() {
        let l = line(1, "heart".into());
        let v: serde_json::Value = serde_json::to_value(SalesRow::new(&l).unwrap()).unwrap();
        assert_eq!(v["line_total"], "0.3");
        assert_eq!(v["line_total_micros"], 300_000);
        assert_eq!(v["invoice_date"], "2010-12-01 08:26:00");
        for column in super::super::SALES_DDL
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        {
            assert!(v.get(column).is_some(), "column {column} missing");
        }
    }

    #[test]
    fn packing_respects_every_limit_and_keeps_lines_whole() {
        // 3,000 lines of about 2 KB: several records, several batches.
        let lines: Vec<_> = (0..3000).map(|i| line(i, "d".repeat(1800))).collect();
        let batches = pack(&lines).unwrap();
        let mut count = 0;
        for b in &batches {
            assert!(b.len() <= MAX_BATCH_RECORDS);
            assert!(b.iter().map(Vec::len).sum::<usize>() <= MAX_BATCH_BYTES);
            for r in b {
                assert!(r.len() <= MAX_RECORD_BYTES && r.ends_with(b"\n"));
                count += r.split(|&c| c == b'\n').filter(|s| !s.is_empty()).count();
            }
        }
        assert_eq!(count, 3000);
        assert!(batches.len() > 1);

        let too_big = line(1, "x".repeat(MAX_RECORD_BYTES));
        assert!(matches!(pack(&[too_big]), Err(StoreError::Rejected { .. })));
    }
}
