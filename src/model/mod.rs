//! The domain: the typed invoice line, its identity, and the parsers that turn what stores send
//! (JSON, NDJSON, CSV in any of the real export formats) into lines or per-line errors.

mod error;
mod line;

pub mod csv;
pub mod datetime;
pub mod generate;
pub mod json;

pub use error::{shorten, InputError, LineError, LinePosition};
pub use line::{
    micros_to_money, money_to_micros, IngestedLine, InvoiceLine, LineBatch, LineContent, LineId,
    Money, OccurrenceCounter, MAX_PRICE_SCALE,
};

use serde::{Deserialize, Serialize};

/// How to read a date like `01/02/2011` whose day and month could be either way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DateOrder {
    /// Month first, as in the UCI dataset (`12/1/2010 8:26` is 1 December 2010).
    #[default]
    Mdy,
    /// Day first, as in UK exports (`01/12/2010 08:26`).
    Dmy,
    /// Decided per file (or request) from the values: a day above 12 settles it; a file where no
    /// value settles it is reported as ambiguous rather than guessed.
    Auto,
}

/// The outcome of parsing one body or file: the good lines and, for every bad one, why.
#[derive(Debug, Default)]
pub struct Parsed {
    pub lines: Vec<InvoiceLine>,
    pub errors: Vec<LineError>,
}

/// How to read an input. Everything has a default that fits the UCI dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// Day/month order of slash dates.
    pub date_order: DateOrder,
    /// CSV field delimiter; `None` detects comma, semicolon or tab from the header row.
    pub delimiter: Option<u8>,
}
