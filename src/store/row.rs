//! How the embedded (SQLite) stores write an invoice line: one encoding into SQL values
//! ([`LineRow`]), bound by position ([`LineParams`]), with dates as sortable text.
//!
//! # How the stores key a line
//!
//! Both stores keep a line once by `(invoice_no, line_id)`, not by its line id alone. A line id
//! is a hash over the line's invoice number and more (its content, or the client's line number:
//! [`LineId`](crate::model::LineId)), so it determines the invoice: the pair is unique exactly
//! when the id is, and the stores stay idempotent by line id. What the pair changes is where a
//! write lands. In an index ordered by a random hash every line of a batch goes to a different
//! B-tree page, and each commit rewrites, checksums into the WAL and fsyncs about one page
//! per line. Ordered by invoice number first, the lines of a batch sit together (invoice numbers
//! grow with time) and a commit writes a few pages per invoice: `cargo bench --bench stores`
//! measured 3.2x the operational store's and 2.3x the warehouse's insert rate
//! (`docs/benchmarks.md`).

use chrono::{DateTime, Datelike, NaiveDateTime, SecondsFormat, Timelike, Utc};

use super::StoreError;
use crate::model::{money_to_micros, IngestedLine, Money};

/// Encodes every line first, so that a line that cannot be stored is reported before anything is
/// written.
///
/// # Errors
/// [`StoreError::Rejected`] for the first line whose amounts or customer id cannot be stored
/// exactly.
pub(crate) fn encode_lines<L: std::borrow::Borrow<IngestedLine>>(
    lines: &[L],
) -> Result<Vec<LineRow>, StoreError> {
    // The lines of one record share their acceptance time: format it once per run of equal
    // instants, not once per line.
    let mut instant: Option<(DateTime<Utc>, String)> = None;
    lines
        .iter()
        .map(|l| {
            let l = l.borrow();
            let ingested_at = match &mut instant {
                Some((t, text)) if *t == l.ingested_at => text,
                _ => {
                    &mut instant
                        .insert((l.ingested_at, instant_text(l.ingested_at)))
                        .1
                }
            };
            LineRow::encode(l, ingested_at).map_err(|reason| StoreError::Rejected {
                line_id: l.line.line_id.to_string(),
                reason,
            })
        })
        .collect()
}

/// The text columns of a [`LineRow`], in the order they sit in its buffer.
#[derive(Debug, Clone, Copy)]
enum Text {
    LineId,
    InvoiceNo,
    StockCode,
    /// Empty when the line has none ([`LineRow::description`] tells the two apart).
    Description,
    /// [`date_text`] of the invoice date.
    InvoiceDate,
    UnitPrice,
    LineTotal,
    Country,
    StoreId,
    /// RFC 3339 UTC, with as many fraction digits as needed to read back the same instant.
    IngestedAt,
}

const TEXT_COLUMNS: usize = Text::IngestedAt as usize + 1;

/// An invoice line as SQL values: money as exact text plus integer millionths, dates as sortable
/// text. Both stores write these columns under the same names.
///
/// The ten text columns share one buffer, one allocation per row rather than one per column: the
/// two stores encode every line they write, and a profile put a fifth of the sinks' allocations
/// in building and dropping rows.
pub(crate) struct LineRow {
    text: String,
    /// Where each text column ends in `text` (each starts where the one before ends).
    ends: [u32; TEXT_COLUMNS],
    has_description: bool,
    pub(crate) quantity: i64,
    pub(crate) unit_price_micros: i64,
    pub(crate) line_total_micros: i64,
    pub(crate) customer_id: Option<i64>,
    pub(crate) is_cancellation: bool,
}

impl LineRow {
    /// Encodes a line; `ingested_at` is [`instant_text`] of its acceptance time.
    ///
    /// # Errors
    /// The reason, for the person reading the dead letter, when an amount is not a whole number of
    /// millionths that fits 64 bits, or the customer id does not fit SQLite's signed integers.
    fn encode(l: &IngestedLine, ingested_at: &str) -> Result<Self, String> {
        use std::fmt::Write;
        let line = &l.line;
        let micros = |what: &str, m: Money| {
            money_to_micros(m).ok_or_else(|| {
                format!("{what} {m} is not a whole number of millionths within ±9.2e12 and cannot be summed exactly")
            })
        };
        let line_total = Money::from(line.quantity)
            .checked_mul(line.unit_price)
            .ok_or_else(|| {
                format!(
                    "line total {} x {} overflows a decimal",
                    line.quantity, line.unit_price
                )
            })?;
        let customer_id = line
            .customer_id
            .map(|c| {
                i64::try_from(c).map_err(|_| format!("customer id {c} is larger than {}", i64::MAX))
            })
            .transpose()?;
        let description = line.description.as_deref();
        // The fixed-width columns (id 32, date 19, two amounts) and the free text.
        let mut text = String::with_capacity(
            96 + line.invoice_no.len()
                + line.stock_code.len()
                + description.map_or(0, str::len)
                + line.country.len()
                + l.store_id.len()
                + ingested_at.len(),
        );
        let mut ends = [0u32; TEXT_COLUMNS];
        let mut column = |text: &mut String, c: Text| ends[c as usize] = text.len() as u32;
        text.push_str(line.line_id.as_str());
        column(&mut text, Text::LineId);
        text.push_str(&line.invoice_no);
        column(&mut text, Text::InvoiceNo);
        text.push_str(&line.stock_code);
        column(&mut text, Text::StockCode);
        text.push_str(description.unwrap_or_default());
        column(&mut text, Text::Description);
        push_date_text(&mut text, line.invoice_date);
        column(&mut text, Text::InvoiceDate);
        let _ = write!(text, "{}", line.unit_price);
        column(&mut text, Text::UnitPrice);
        let _ = write!(text, "{line_total}");
        column(&mut text, Text::LineTotal);
        text.push_str(&line.country);
        column(&mut text, Text::Country);
        text.push_str(&l.store_id);
        column(&mut text, Text::StoreId);
        text.push_str(ingested_at);
        column(&mut text, Text::IngestedAt);
        Ok(Self {
            text,
            ends,
            has_description: description.is_some(),
            quantity: line.quantity,
            unit_price_micros: micros("unit price", line.unit_price)?,
            line_total_micros: micros("line total", line_total)?,
            customer_id,
            is_cancellation: line.is_cancellation(),
        })
    }

    fn text(&self, c: Text) -> &str {
        let i = c as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    pub(crate) fn line_id(&self) -> &str {
        self.text(Text::LineId)
    }

    pub(crate) fn invoice_no(&self) -> &str {
        self.text(Text::InvoiceNo)
    }

    pub(crate) fn stock_code(&self) -> &str {
        self.text(Text::StockCode)
    }

    pub(crate) fn description(&self) -> Option<&str> {
        self.has_description.then(|| self.text(Text::Description))
    }

    /// [`date_text`] of the invoice date.
    pub(crate) fn invoice_date(&self) -> &str {
        self.text(Text::InvoiceDate)
    }

    pub(crate) fn country(&self) -> &str {
        self.text(Text::Country)
    }
}

/// The named parameters a store's SQL may take from a [`LineRow`]: its field names.
const LINE_PARAMS: [&str; 15] = [
    ":line_id",
    ":invoice_no",
    ":stock_code",
    ":description",
    ":quantity",
    ":invoice_date",
    ":unit_price",
    ":unit_price_micros",
    ":line_total",
    ":line_total_micros",
    ":customer_id",
    ":country",
    ":is_cancellation",
    ":store_id",
    ":ingested_at",
];

/// Where one statement takes each of [`LINE_PARAMS`] (`None`: it does not), looked up once per
/// batch rather than by name for every line.
pub(crate) struct LineParams([Option<usize>; 15]);

impl LineParams {
    /// # Errors
    /// The SQLite error of looking a parameter up.
    pub(crate) fn of(stmt: &rusqlite::Statement<'_>) -> rusqlite::Result<Self> {
        let mut at = [None; 15];
        for (slot, name) in at.iter_mut().zip(LINE_PARAMS) {
            *slot = stmt.parameter_index(name)?;
        }
        Ok(LineParams(at))
    }
}

impl LineRow {
    /// Binds the row to the named parameters `:line_id`, `:invoice_no`, ... (the field names) that
    /// `stmt` has (found by [`LineParams::of`] on the same statement), so each store's SQL lists
    /// just the columns it keeps, and executes it. Returns the number of rows changed (0 when
    /// `INSERT OR IGNORE` found the line).
    ///
    /// # Errors
    /// The SQLite error of binding or executing.
    pub(crate) fn execute(
        &self,
        stmt: &mut rusqlite::Statement<'_>,
        params: &LineParams,
    ) -> rusqlite::Result<usize> {
        use rusqlite::ToSql;
        let description = self.description();
        let values: [&dyn ToSql; 15] = [
            &self.text(Text::LineId),
            &self.text(Text::InvoiceNo),
            &self.text(Text::StockCode),
            &description,
            &self.quantity,
            &self.text(Text::InvoiceDate),
            &self.text(Text::UnitPrice),
            &self.unit_price_micros,
            &self.text(Text::LineTotal),
            &self.line_total_micros,
            &self.customer_id,
            &self.text(Text::Country),
            &self.is_cancellation,
            &self.text(Text::StoreId),
            &self.text(Text::IngestedAt),
        ];
        for (at, value) in params.0.iter().zip(values) {
            if let Some(i) = *at {
                stmt.raw_bind_parameter(i, value)?;
            }
        }
        stmt.raw_execute()
    }
}

/// `YYYY-MM-DD HH:MM:SS`, plus a fraction only when there is one: sorts as the dates do, and the
/// first ten characters are the day.
pub(crate) fn date_text(d: NaiveDateTime) -> String {
    let mut text = String::with_capacity(19);
    push_date_text(&mut text, d);
    text
}

/// Appends [`date_text`] of `d` to `out`.
fn push_date_text(out: &mut String, d: NaiveDateTime) {
    use std::fmt::Write;
    if d.nanosecond() == 0 && (0..=9999).contains(&d.year()) {
        // The common case, digit by digit: `format!` with padding was a third of encoding a row.
        let mut text = *b"0000-00-00 00:00:00";
        for (at, width, value) in [
            (0, 4, d.year() as u32),
            (5, 2, d.month()),
            (8, 2, d.day()),
            (11, 2, d.hour()),
            (14, 2, d.minute()),
            (17, 2, d.second()),
        ] {
            let mut v = value;
            for c in text[at..at + width].iter_mut().rev() {
                *c = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        out.push_str(std::str::from_utf8(&text).expect("digits and separators are ASCII"));
    } else if d.nanosecond() == 0 {
        let _ = write!(out, "{}", d.format("%Y-%m-%d %H:%M:%S"));
    } else {
        let _ = write!(out, "{}", d.format("%Y-%m-%d %H:%M:%S%.f"));
    }
}

/// Reads back [`date_text`].
pub(crate) fn parse_date_text(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok()
}

/// RFC 3339 in UTC with the fraction digits the instant needs.
pub(crate) fn instant_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Reads back [`instant_text`].
pub(crate) fn parse_instant_text(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn ingested(description: Option<&str>) -> IngestedLine {
        let mut l =
            crate::model::line::sample_ingested(description.map(str::to_owned), -6, "2.55", None);
        l.ingested_at = DateTime::parse_from_rfc3339("2026-12-06T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        l
    }

    #[test]
    fn a_row_holds_each_column_of_its_line() {
        let lines = [
            ingested(Some("WHITE HANGING HEART T-LIGHT HOLDER")),
            ingested(None),
            ingested(Some("")),
        ];
        let rows = encode_lines(&lines).unwrap();
        for (row, l) in rows.iter().zip(&lines) {
            assert_eq!(row.line_id(), l.line.line_id.as_str());
            assert_eq!(row.invoice_no(), "536365");
            assert_eq!(row.stock_code(), "85123A");
            assert_eq!(row.description(), l.line.description.as_deref());
            assert_eq!(row.invoice_date(), "2010-12-01 08:26:00");
            assert_eq!(row.text(Text::UnitPrice), "2.55");
            assert_eq!(row.text(Text::LineTotal), "-15.30");
            assert_eq!(row.line_total_micros, -15_300_000);
            assert_eq!(row.country(), "United Kingdom");
            assert_eq!(row.text(Text::StoreId), "demo");
            assert_eq!(row.text(Text::IngestedAt), "2026-12-06T10:00:00.500Z");
            assert!(!row.is_cancellation);
            assert_eq!(row.customer_id, Some(17850));
        }
    }

    #[test]
    fn date_text_matches_its_format_and_reads_back() {
        for (d, text) in [
            (
                NaiveDate::from_ymd_opt(2010, 12, 1)
                    .unwrap()
                    .and_hms_opt(8, 26, 0),
                "2010-12-01 08:26:00",
            ),
            (
                NaiveDate::from_ymd_opt(2011, 1, 9)
                    .unwrap()
                    .and_hms_milli_opt(23, 5, 7, 250),
                "2011-01-09 23:05:07.250",
            ),
            (
                NaiveDate::from_ymd_opt(12, 3, 4)
                    .unwrap()
                    .and_hms_opt(0, 0, 0),
                "0012-03-04 00:00:00",
            ),
        ] {
            let d = d.unwrap();
            assert_eq!(date_text(d), text);
            assert_eq!(parse_date_text(text), Some(d));
        }
        let far = NaiveDate::from_ymd_opt(12_345, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        assert_eq!(date_text(far), far.format("%Y-%m-%d %H:%M:%S").to_string());
    }

    #[test]
    fn dates_round_trip_and_sort() {
        let d = NaiveDate::from_ymd_opt(2010, 12, 1)
            .unwrap()
            .and_hms_opt(8, 26, 0)
            .unwrap();
        assert_eq!(date_text(d), "2010-12-01 08:26:00");
        let later = d + chrono::Duration::milliseconds(500);
        assert_eq!(date_text(later), "2010-12-01 08:26:00.500");
        assert!(date_text(d) < date_text(later));
        assert_eq!(parse_date_text(&date_text(d)), Some(d));
        assert_eq!(parse_date_text(&date_text(later)), Some(later));
        let now = Utc::now();
        assert_eq!(parse_instant_text(&instant_text(now)), Some(now));
    }
}
