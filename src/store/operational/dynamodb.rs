//! The operational store on DynamoDB.
//!
//! One table, `operational.dynamodb.invoices_table`: partition key `InvoiceNo`, sort key `LineId`, one item per
//! line, written by key (so a redelivered line overwrites itself). Customer look-ups use the
//! global secondary index `operational.dynamodb.customers_index` (partition key `CustomerID`, sort key
//! `InvoiceDate`, all attributes projected); lines without a customer have no `CustomerID` and so
//! stay out of the index. Why an index rather than a second table: see `docs/aws.md`.
//!
//! Money is stored as exact decimal strings (`UnitPrice`, `LineTotal`), never as floats. The table
//! keeps no running sums (no `ADD` updates, whose numbers hold 38 digits): invoice and customer
//! totals are added up when read, in 128 bits (`crate::store::sum`), and a line total is at most
//! 10^12 pounds by the validation bounds, far inside DynamoDB's numbers.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use chrono::{DateTime, NaiveDateTime, Utc};
use std::collections::HashMap;
use std::str::FromStr;

use super::{invoice_total, Invoice, InvoiceSummary, OperationalStore};
use crate::aws::{retry_entries, AwsClients, EntryOutcome, EntryRetry, PartialFailure};
use crate::config::{AwsConfig, DynamoDbConfig};
use crate::model::{IngestedLine, InvoiceLine, LineId, Money};
use crate::store::sum::MoneySum;
use crate::store::StoreError;

/// BatchWriteItem takes at most 25 put requests.
pub const MAX_BATCH_ITEMS: usize = 25;
/// DynamoDB's item size limit (names and values counted).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// How `InvoiceDate` is stored: sortable text, the same as the warehouse's.
const DATE_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

type Item = HashMap<String, AttributeValue>;

/// Invoice lines in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoOperationalStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    customers_index: String,
    retry: EntryRetry,
}

impl DynamoOperationalStore {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        customers_index: impl Into<String>,
        retry: EntryRetry,
    ) -> Self {
        DynamoOperationalStore {
            client,
            table: table.into(),
            customers_index: customers_index.into(),
            retry,
        }
    }

    pub fn from_config(clients: &AwsClients, aws: &AwsConfig, cfg: &DynamoDbConfig) -> Self {
        Self::new(
            clients.dynamodb.clone(),
            cfg.invoices_table.clone(),
            cfg.customers_index.clone(),
            EntryRetry::from_config(aws),
        )
    }

    /// How errors name this backend's resource.
    fn resource(&self) -> String {
        format!("table {}", self.table)
    }

    /// One BatchWriteItem of up to 25 distinct keys, resending unprocessed items.
    async fn write_batch(&self, batch: Vec<(String, Item)>) -> Result<(), StoreError> {
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        let result = retry_entries(
            batch,
            self.retry.clone(),
            StoreError::is_retriable,
            |pending: Vec<(String, Item)>| async move {
                crate::metrics::aws_call("dynamodb", "BatchWriteItem");
                crate::metrics::aws_billed("dynamodb_items_written", pending.len());
                let requests = pending
                    .iter()
                    .map(|(_, item)| {
                        PutRequest::builder()
                            .set_item(Some(item.clone()))
                            .build()
                            .map(|p| WriteRequest::builder().put_request(p).build())
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StoreError::Backend(format!("building a put request: {e}")))?;
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(|e| StoreError::aws_write("BatchWriteItem", &self.resource(), &e))?;
                // Unprocessed items come back as items, not positions: match them by line id.
                let unprocessed: std::collections::HashSet<String> = out
                    .unprocessed_items()
                    .and_then(|m| m.get(&self.table))
                    .into_iter()
                    .flatten()
                    .filter_map(|w| w.put_request())
                    .filter_map(|p| p.item().get("LineId")?.as_s().ok().cloned())
                    .collect();
                Ok(pending
                    .iter()
                    .map(|(id, _)| {
                        if unprocessed.contains(id) {
                            EntryOutcome::Retry("unprocessed (throughput exceeded)".into())
                        } else {
                            EntryOutcome::Done(())
                        }
                    })
                    .collect())
            },
        )
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(PartialFailure::Call(e)) => Err(e),
            Err(PartialFailure::Exhausted {
                index,
                attempts,
                reason,
            }) => Err(StoreError::Unavailable(format!(
                "line {} was still unprocessed by table {} after {attempts} attempts: {reason}",
                ids[index], self.table
            ))),
            Err(PartialFailure::Rejected { index, reason }) => Err(StoreError::Rejected {
                line_id: ids[index].clone(),
                reason,
            }),
        }
    }

    /// Every item of a Query on the table or the customers index, all pages.
    async fn query_all(
        &self,
        index: Option<&str>,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .set_index_name(index.map(str::to_owned))
            .key_condition_expression(condition);
        // Strongly consistent on the table; a global index is only eventually consistent.
        if index.is_none() {
            q = q.consistent_read(true);
        }
        for (k, v) in values {
            q = q.expression_attribute_values(k, v);
        }
        let mut pages = q.into_paginator().send();
        let mut items = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError::aws_call("Query", &self.resource(), &e))?;
            items.extend(page.items().iter().cloned());
        }
        Ok(items)
    }
}

/// The item of one line.
fn to_item(l: &IngestedLine) -> Item {
    let line = &l.line;
    let mut item = Item::new();
    let s = |v: &str| AttributeValue::S(v.to_owned());
    item.insert("InvoiceNo".into(), s(&line.invoice_no));
    item.insert("LineId".into(), s(line.line_id.as_str()));
    item.insert("StockCode".into(), s(&line.stock_code));
    if let Some(d) = &line.description {
        item.insert("Description".into(), s(d));
    }
    item.insert(
        "Quantity".into(),
        AttributeValue::N(line.quantity.to_string()),
    );
    item.insert(
        "InvoiceDate".into(),
        s(&line.invoice_date.format(DATE_FORMAT).to_string()),
    );
    item.insert("UnitPrice".into(), s(&line.unit_price.to_string()));
    item.insert("LineTotal".into(), s(&line.line_total().to_string()));
    if let Some(c) = line.customer_id {
        item.insert("CustomerID".into(), AttributeValue::N(c.to_string()));
    }
    item.insert("Country".into(), s(&line.country));
    item.insert("StoreId".into(), s(&l.store_id));
    item.insert("IngestedAt".into(), s(&l.ingested_at.to_rfc3339()));
    item
}

/// An item's size as DynamoDB counts it: names plus values (a number is counted by its text,
/// which is never less than DynamoDB's own encoding).
fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
                    _ => 0,
                }
        })
        .sum()
}

fn bad_item(what: &str, item: &Item) -> StoreError {
    let key = item
        .get("LineId")
        .and_then(|v| v.as_s().ok())
        .map_or("<no LineId>", String::as_str);
    StoreError::Backend(format!("item {key} has a bad or missing {what}"))
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| bad_item(name, item))
}

fn get_n<T: FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_n()
            .ok()
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| bad_item(name, item)),
    }
}

fn parse<T: FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    get_s(item, name)?.parse().map_err(|_| bad_item(name, item))
}

fn invoice_date(item: &Item) -> Result<NaiveDateTime, StoreError> {
    NaiveDateTime::parse_from_str(get_s(item, "InvoiceDate")?, DATE_FORMAT)
        .map_err(|_| bad_item("InvoiceDate", item))
}

/// The line of one item.
fn from_item(item: &Item) -> Result<IngestedLine, StoreError> {
    let line = InvoiceLine {
        line_id: LineId::parse(get_s(item, "LineId")?).ok_or_else(|| bad_item("LineId", item))?,
        invoice_no: get_s(item, "InvoiceNo")?.into(),
        stock_code: get_s(item, "StockCode")?.into(),
        description: item
            .get("Description")
            .and_then(|v| v.as_s().ok())
            .map(|s| s.as_str().into()),
        quantity: get_n(item, "Quantity")?.ok_or_else(|| bad_item("Quantity", item))?,
        invoice_date: invoice_date(item)?,
        unit_price: parse(item, "UnitPrice")?,
        customer_id: get_n(item, "CustomerID")?,
        country: get_s(item, "Country")?.into(),
    };
    let ingested_at: DateTime<Utc> = DateTime::parse_from_rfc3339(get_s(item, "IngestedAt")?)
        .map_err(|_| bad_item("IngestedAt", item))?
        .with_timezone(&Utc);
    Ok(IngestedLine {
        line,
        store_id: get_s(item, "StoreId")?.into(),
        ingested_at,
    })
}

#[async_trait]
impl OperationalStore for DynamoOperationalStore {
    /// Puts every line by key in BatchWriteItem requests of at most 25 distinct keys. A line id
    /// given twice is written once, with its last version (BatchWriteItem refuses duplicate keys
    /// in one request).
    ///
    /// # Errors
    /// `Rejected` for a line whose item would exceed 400 KB (nothing of the call is written
    /// then); `Invalid` when DynamoDB refuses a BatchWriteItem as invalid
    /// (`ValidationException`: it names no item, so the sink finds the line by writing them one at
    /// a time); `Unavailable` when throttling outlasts the retries; `Backend` otherwise.
    async fn upsert(&self, lines: &[&IngestedLine]) -> Result<(), StoreError> {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, l) in lines.iter().enumerate() {
            last.insert(l.line.line_id.as_str(), i);
        }
        let mut items = Vec::with_capacity(last.len());
        for (i, l) in lines.iter().enumerate() {
            if last[l.line.line_id.as_str()] != i {
                continue;
            }
            let item = to_item(l);
            let size = item_size(&item);
            if size > MAX_ITEM_BYTES {
                return Err(StoreError::Rejected {
                    line_id: l.line.line_id.to_string(),
                    reason: format!(
                        "its DynamoDB item is {size} bytes, over DynamoDB's 400 KB \
                         ({MAX_ITEM_BYTES}-byte) item limit; shorten its description"
                    ),
                });
            }
            items.push((l.line.line_id.to_string(), item));
        }
        while !items.is_empty() {
            let rest = items.split_off(items.len().min(MAX_BATCH_ITEMS));
            self.write_batch(std::mem::replace(&mut items, rest))
                .await?;
        }
        Ok(())
    }

    async fn invoice(&self, invoice_no: &str) -> Result<Option<Invoice>, StoreError> {
        let items = self
            .query_all(
                None,
                "InvoiceNo = :i",
                vec![(":i", AttributeValue::S(invoice_no.to_owned()))],
            )
            .await?;
        let lines = items.iter().map(from_item).collect::<Result<Vec<_>, _>>()?;
        let Some(first) = lines.first() else {
            return Ok(None);
        };
        Ok(Some(Invoice {
            invoice_no: invoice_no.to_owned(),
            invoice_date: first.line.invoice_date,
            customer_id: first.line.customer_id,
            country: first.line.country.to_string(),
            is_cancellation: first.line.is_cancellation(),
            total: invoice_total(&lines)?,
            lines,
        }))
    }

    /// Queries the customers index (eventually consistent: a line written a moment ago may be
    /// missing for about a second).
    async fn customer_invoices(
        &self,
        customer_id: u64,
        from: Option<NaiveDateTime>,
        to: Option<NaiveDateTime>,
    ) -> Result<Vec<InvoiceSummary>, StoreError> {
        let lo = from.map_or_else(|| "0000".to_owned(), |d| d.format(DATE_FORMAT).to_string());
        // `to` is exclusive; BETWEEN is inclusive, so the bound itself is filtered out below.
        let hi = to.map_or_else(|| "9999".to_owned(), |d| d.format(DATE_FORMAT).to_string());
        let items = self
            .query_all(
                Some(&self.customers_index),
                "CustomerID = :c AND InvoiceDate BETWEEN :lo AND :hi",
                vec![
                    (":c", AttributeValue::N(customer_id.to_string())),
                    (":lo", AttributeValue::S(lo)),
                    (":hi", AttributeValue::S(hi)),
                ],
            )
            .await?;
        // One item per line: fold the lines into their invoices (an invoice's lines share its
        // date, but a partly corrected invoice may not, so group by number and keep the earliest).
        let mut by_invoice: HashMap<String, (InvoiceSummary, MoneySum)> = HashMap::new();
        for item in &items {
            let date = invoice_date(item)?;
            if to.is_some_and(|to| date >= to) {
                continue;
            }
            let invoice_no = get_s(item, "InvoiceNo")?;
            let total: Money = parse(item, "LineTotal")?;
            let (summary, sum) = by_invoice.entry(invoice_no.to_owned()).or_insert_with(|| {
                let summary = InvoiceSummary {
                    invoice_no: invoice_no.to_owned(),
                    invoice_date: date,
                    country: String::new(),
                    line_count: 0,
                    total: Money::ZERO,
                    is_cancellation: invoice_no.starts_with('C'),
                };
                (summary, MoneySum::default())
            });
            summary.invoice_date = summary.invoice_date.min(date);
            summary.country = get_s(item, "Country")?.to_owned();
            summary.line_count += 1;
            sum.add_money(total, "an invoice's total")?;
        }
        let mut list = by_invoice
            .into_values()
            .map(|(mut summary, sum)| {
                summary.total = sum.money("an invoice's total")?;
                Ok(summary)
            })
            .collect::<Result<Vec<InvoiceSummary>, StoreError>>()?;
        list.sort_by(|a, b| (a.invoice_date, &a.invoice_no).cmp(&(b.invoice_date, &b.invoice_no)));
        Ok(list)
    }

    /// Scans the whole table (only `LineTotal` is read back, but a Scan is billed for every byte
    /// of every item it passes): meant for reconciliation and tests, not for a dashboard that
    /// refreshes. Strongly consistent.
    async fn totals(&self) -> Result<(u64, Money), StoreError> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .projection_expression("LineTotal, LineId")
            .consistent_read(true)
            .into_paginator()
            .send();
        let (mut count, mut sum) = (0u64, MoneySum::default());
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError::aws_call("Scan", &self.resource(), &e))?;
            for item in page.items() {
                count += 1;
                sum.add_money(parse::<Money>(item, "LineTotal")?, "the total of all lines")?;
            }
        }
        Ok((count, sum.money("the total of all lines")?))
    }

    /// A consistent scan of the whole table: one read unit per 4 KB of items, so about a
    /// thousandth of a unit per line.
    async fn stored_lines(&self) -> Result<Option<Vec<crate::store::StoredLine>>, StoreError> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError::aws_call("Scan", &self.resource(), &e))?;
            for item in page.items() {
                let l = from_item(item)?;
                out.push(crate::store::StoredLine {
                    day: l.line.invoice_date.date(),
                    total: l.line.line_total(),
                    line_id: l.line.line_id.to_string(),
                    invoice_no: l.line.invoice_no.into(),
                });
            }
        }
        Ok(Some(out))
    }

    async fn health(&self) -> Result<(), StoreError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| {
                StoreError::aws_describe(
                    "DescribeTable",
                    &self.resource(),
                    &e,
                    "run `shopstream aws init`",
                )
            })?;
        let status = out.table().and_then(|t| t.table_status());
        match status {
            Some(aws_sdk_dynamodb::types::TableStatus::Active)
            | Some(aws_sdk_dynamodb::types::TableStatus::Updating) => Ok(()),
            other => Err(StoreError::Unavailable(format!(
                "table {} is {other:?}, not ACTIVE",
                self.table
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(description: String) -> IngestedLine {
        crate::model::line::sample_ingested(Some(description), 6, "2.55", None)
    }

    #[test]
    fn item_round_trips_exactly() {
        let l = line("WHITE HANGING HEART".into());
        let back = from_item(&to_item(&l)).unwrap();
        assert_eq!(back.line, l.line);
        assert_eq!(&*back.store_id, "demo");
        assert_eq!(to_item(&l)["LineTotal"].as_s().unwrap(), "15.30");
    }

    #[test]
    fn item_size_counts_names_and_values() {
        let small = to_item(&line("x".into()));
        let big = to_item(&line("x".repeat(MAX_ITEM_BYTES)));
        assert!(item_size(&small) < 400);
        assert!(item_size(&big) > MAX_ITEM_BYTES);
    }
}
