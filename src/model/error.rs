//! Errors of parsing and validating invoice lines.

use serde::Serialize;
use std::fmt;

/// Where a line sits in its input: the position a person can find it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "number", rename_all = "snake_case")]
pub enum LinePosition {
    /// 0-based index into a JSON array, or into the lines of an NDJSON body, or 0 for one object.
    Index(usize),
    /// 1-based line number of a CSV file, counting the header as line 1 (what an editor shows).
    Row(u64),
}

impl fmt::Display for LinePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinePosition::Index(i) => write!(f, "line {i}"),
            LinePosition::Row(r) => write!(f, "row {r}"),
        }
    }
}

/// Why one input line was rejected: which line, which field, what was there and what was expected.
///
/// The message is written for the person who has to fix the input, e.g.
/// `row 14: field Quantity: "six" is not a whole number (expected e.g. 6 or -2)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{position}: {}{reason}", field.as_ref().map(|f| format!("field {f}: ")).unwrap_or_default())]
pub struct LineError {
    pub position: LinePosition,
    /// The dataset's name of the field (`Quantity`), or `None` when the line as a whole is bad
    /// (ragged CSV row, JSON that is not an object).
    pub field: Option<&'static str>,
    /// The offending value, shortened to at most 100 characters for the report.
    pub value: Option<String>,
    /// What is wrong and what is expected instead.
    pub reason: String,
}

impl LineError {
    pub fn field(
        position: LinePosition,
        field: &'static str,
        value: Option<&str>,
        reason: impl Into<String>,
    ) -> Self {
        LineError {
            position,
            field: Some(field),
            value: value.map(shorten),
            reason: reason.into(),
        }
    }

    pub fn line(position: LinePosition, reason: impl Into<String>) -> Self {
        LineError {
            position,
            field: None,
            value: None,
            reason: reason.into(),
        }
    }
}

/// Cuts a value to 100 characters (on a char boundary) so a 10 MB field does not become a 10 MB
/// error message.
pub fn shorten(s: &str) -> String {
    const MAX: usize = 100;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}… ({} bytes in all)", s.len())
    }
}

/// A whole input that cannot be read as lines at all (as opposed to single bad lines).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "the body is empty: send a JSON object, a JSON array, NDJSON or CSV with a header row"
    )]
    Empty,
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the CSV header is missing required column(s) {missing:?}; found {found:?}. Name the columns as in the dataset (InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country) or in snake_case")]
    MissingColumns {
        missing: Vec<&'static str>,
        found: Vec<String>,
    },
    #[error("the CSV cannot be read: {0}")]
    Csv(String),
    #[error("the dates of this file are ambiguous between month-first and day-first ({example:?} reads both ways and no value decides it); set the date order explicitly (mdy or dmy)")]
    AmbiguousDateOrder { example: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
