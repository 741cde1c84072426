//! Writing rows in the formats the dataset circulates in: the UCI/Kaggle CSV (UTF-8 or the
//! original ISO-8859-1 bytes), and pandas-style NDJSON and JSON.
//!
//! Every writer streams: one row in, its bytes out through a large buffer, nothing kept.

use chrono::{Datelike, NaiveDateTime, Timelike};
use std::fmt::{self, Write as _};
use std::io::{self, BufWriter, Write};

use super::GeneratedRow;

/// The header of the UCI Online Retail CSV.
pub const CSV_HEADER: [&str; 8] = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
];

/// Output buffer: large enough that writes to a file or pipe are few and big.
const BUFFER_BYTES: usize = 256 * 1024;

/// The file format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated with the UCI header, fields quoted only where needed.
    #[default]
    Csv,
    /// One JSON object per line, as pandas `to_json(orient="records", lines=True)` writes.
    Ndjson,
    /// One JSON array of those objects.
    Json,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
            Format::Json => "json",
        })
    }
}

/// Character encoding of CSV output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Encoding {
    #[default]
    Utf8,
    /// ISO-8859-1 bytes, as the Kaggle copy of the dataset is encoded.
    Latin1,
}

/// How invoice dates are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DateStyle {
    /// `12/1/2010 8:26`: month first, no leading zeros, no seconds, as the UCI file.
    #[default]
    Uci,
    /// `2010-12-01 08:26:00`.
    Iso,
}

/// How to write rows; the default is the UCI CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputOptions {
    pub format: Format,
    /// Applies to CSV only; JSON is always UTF-8.
    pub encoding: Encoding,
    pub date_style: DateStyle,
}

impl OutputOptions {
    /// Checks the combination before anything is created or written.
    ///
    /// # Errors
    /// [`GenerateError::EncodingNotForFormat`] for Latin-1 with a JSON format.
    pub fn validate(&self) -> Result<(), GenerateError> {
        match (self.format, self.encoding) {
            (Format::Ndjson | Format::Json, Encoding::Latin1) => {
                Err(GenerateError::EncodingNotForFormat {
                    format: self.format,
                })
            }
            _ => Ok(()),
        }
    }
}

/// What a writer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GenerateStats {
    pub lines: u64,
    /// Runs of consecutive rows with the same invoice number.
    pub invoices: u64,
    /// Bytes handed to the output, header included.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot write the generated data: {0}")]
    Write(#[from] io::Error),
    #[error(
        "row {row}: {field} {value:?} has a character that ISO-8859-1 cannot encode; \
         write this data as UTF-8 (--encoding utf8)"
    )]
    NotLatin1 {
        row: u64,
        field: &'static str,
        value: String,
    },
    #[error("{format} output is always UTF-8; --encoding latin1 applies to --format csv only")]
    EncodingNotForFormat { format: Format },
}

/// Writes `rows` to `out` as `options` say.
///
/// # Errors
/// [`GenerateError::EncodingNotForFormat`] for Latin-1 JSON, and the errors of the writer used.
pub fn write_rows(
    rows: impl IntoIterator<Item = GeneratedRow>,
    out: impl Write,
    options: &OutputOptions,
) -> Result<GenerateStats, GenerateError> {
    options.validate()?;
    match options.format {
        Format::Csv => write_csv(rows, out, options.encoding, options.date_style),
        Format::Ndjson => write_ndjson(rows, out, options.date_style),
        Format::Json => write_json(rows, out, options.date_style),
    }
}

/// Writes the UCI CSV: header, then one record per row; fields with commas, quotes or line breaks
/// are quoted, quotes doubled. A missing description or customer is an empty field.
///
/// # Errors
/// [`GenerateError::Write`] when `out` fails; [`GenerateError::NotLatin1`] when `encoding` is
/// Latin-1 and a text field has a character beyond U+00FF (generated rows never do).
pub fn write_csv(
    rows: impl IntoIterator<Item = GeneratedRow>,
    out: impl Write,
    encoding: Encoding,
    date_style: DateStyle,
) -> Result<GenerateStats, GenerateError> {
    let mut out = Counting::new(out);
    let mut tally = Tally::default();
    let mut dates = DateText::new(date_style);
    let mut number = String::new();
    let mut encoded = Vec::new();
    {
        let mut csv = csv::WriterBuilder::new()
            .buffer_capacity(BUFFER_BYTES)
            .from_writer(&mut out);
        csv.write_record(CSV_HEADER).map_err(csv_error)?;
        for row in rows {
            tally.count(&row);
            let texts = [
                ("InvoiceNo", row.invoice_no.as_str()),
                ("StockCode", row.stock_code.as_str()),
                ("Description", row.description.as_deref().unwrap_or("")),
            ];
            for (field, value) in texts {
                let bytes = text(value, encoding, &mut encoded, tally.lines, field)?;
                csv.write_field(bytes).map_err(csv_error)?;
            }
            number.clear();
            write!(number, "{}", row.quantity).expect("writing to a String");
            csv.write_field(&number).map_err(csv_error)?;
            csv.write_field(dates.text(row.invoice_date))
                .map_err(csv_error)?;
            number.clear();
            write!(number, "{}", row.unit_price).expect("writing to a String");
            csv.write_field(&number).map_err(csv_error)?;
            number.clear();
            if let Some(customer) = row.customer_id {
                write!(number, "{customer}").expect("writing to a String");
            }
            csv.write_field(&number).map_err(csv_error)?;
            let country = text(&row.country, encoding, &mut encoded, tally.lines, "Country")?;
            csv.write_field(country).map_err(csv_error)?;
            csv.write_record(None::<&[u8]>).map_err(csv_error)?;
        }
        csv.flush()?;
    }
    Ok(tally.stats(out.bytes))
}

/// Writes one JSON object per line with the dataset's field names, as pandas does: `CustomerID`
/// a float (`17850.0`) or `null`, `UnitPrice` a number written exactly from the decimal,
/// `InvoiceDate` text.
///
/// # Errors
/// [`GenerateError::Write`] when `out` fails.
pub fn write_ndjson(
    rows: impl IntoIterator<Item = GeneratedRow>,
    out: impl Write,
    date_style: DateStyle,
) -> Result<GenerateStats, GenerateError> {
    write_objects(rows, out, date_style, JsonShape::Lines)
}

/// Writes one JSON array of the objects [`write_ndjson`] writes, one element per line.
///
/// # Errors
/// [`GenerateError::Write`] when `out` fails.
pub fn write_json(
    rows: impl IntoIterator<Item = GeneratedRow>,
    out: impl Write,
    date_style: DateStyle,
) -> Result<GenerateStats, GenerateError> {
    write_objects(rows, out, date_style, JsonShape::Array)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonShape {
    Lines,
    Array,
}

fn write_objects(
    rows: impl IntoIterator<Item = GeneratedRow>,
    out: impl Write,
    date_style: DateStyle,
    shape: JsonShape,
) -> Result<GenerateStats, GenerateError> {
    let mut out = Counting::new(out);
    let mut tally = Tally::default();
    let mut dates = DateText::new(date_style);
    {
        let mut w = BufWriter::with_capacity(BUFFER_BYTES, &mut out);
        for row in rows {
            if shape == JsonShape::Array {
                w.write_all(if tally.lines == 0 { b"[\n" } else { b",\n" })?;
            }
            tally.count(&row);
            json_object(&mut w, &row, &mut dates)?;
            if shape == JsonShape::Lines {
                w.write_all(b"\n")?;
            }
        }
        if shape == JsonShape::Array {
            w.write_all(if tally.lines == 0 { b"[]\n" } else { b"\n]\n" })?;
        }
        w.flush()?;
    }
    Ok(tally.stats(out.bytes))
}

fn json_object(w: &mut impl Write, row: &GeneratedRow, dates: &mut DateText) -> io::Result<()> {
    w.write_all(b"{\"InvoiceNo\":")?;
    json_string(w, &row.invoice_no)?;
    w.write_all(b",\"StockCode\":")?;
    json_string(w, &row.stock_code)?;
    w.write_all(b",\"Description\":")?;
    match &row.description {
        Some(d) => json_string(w, d)?,
        None => w.write_all(b"null")?,
    }
    // Dates and decimals never need escaping; rust_decimal never writes an exponent.
    write!(
        w,
        ",\"Quantity\":{},\"InvoiceDate\":\"{}\",\"UnitPrice\":{}",
        row.quantity,
        dates.text(row.invoice_date),
        row.unit_price
    )?;
    match row.customer_id {
        Some(c) => write!(w, ",\"CustomerID\":{c}.0")?,
        None => w.write_all(b",\"CustomerID\":null")?,
    }
    w.write_all(b",\"Country\":")?;
    json_string(w, &row.country)?;
    w.write_all(b"}")
}

fn json_string(w: &mut impl Write, s: &str) -> io::Result<()> {
    serde_json::to_writer(w, s).map_err(io::Error::from)
}

/// The I/O error inside a CSV writer's error, with its kind kept (a closed pipe stays
/// `BrokenPipe`); the writer reports nothing else, as it is not asked to check field counts.
fn csv_error(e: csv::Error) -> GenerateError {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => GenerateError::Write(e),
        other => GenerateError::Write(io::Error::other(format!("{other:?}"))),
    }
}

/// `value` as bytes in `encoding`; `scratch` holds the Latin-1 bytes when they differ from UTF-8.
fn text<'a>(
    value: &'a str,
    encoding: Encoding,
    scratch: &'a mut Vec<u8>,
    row: u64,
    field: &'static str,
) -> Result<&'a [u8], GenerateError> {
    if encoding == Encoding::Utf8 || value.is_ascii() {
        return Ok(value.as_bytes());
    }
    scratch.clear();
    for ch in value.chars() {
        // ISO-8859-1 is exactly the first 256 code points.
        let byte = u8::try_from(u32::from(ch)).map_err(|_| GenerateError::NotLatin1 {
            row,
            field,
            value: value.to_owned(),
        })?;
        scratch.push(byte);
    }
    Ok(scratch)
}

/// The text of a date in one style, kept while consecutive rows (one invoice) share the date.
struct DateText {
    style: DateStyle,
    last: Option<NaiveDateTime>,
    text: String,
}

impl DateText {
    fn new(style: DateStyle) -> Self {
        DateText {
            style,
            last: None,
            text: String::new(),
        }
    }

    fn text(&mut self, date: NaiveDateTime) -> &str {
        if self.last != Some(date) {
            self.text.clear();
            let result = match self.style {
                DateStyle::Uci => write!(
                    self.text,
                    "{}/{}/{} {}:{:02}",
                    date.month(),
                    date.day(),
                    date.year(),
                    date.hour(),
                    date.minute()
                ),
                DateStyle::Iso => write!(self.text, "{}", date.format("%Y-%m-%d %H:%M:%S")),
            };
            result.expect("writing to a String");
            self.last = Some(date);
        }
        &self.text
    }
}

/// Counts rows and invoices (runs of one invoice number) as they are written.
#[derive(Default)]
struct Tally {
    lines: u64,
    invoices: u64,
    last_invoice: String,
}

impl Tally {
    fn count(&mut self, row: &GeneratedRow) {
        self.lines += 1;
        if self.invoices == 0 || row.invoice_no != self.last_invoice {
            self.invoices += 1;
            self.last_invoice.clone_from(&row.invoice_no);
        }
    }

    fn stats(&self, bytes: u64) -> GenerateStats {
        GenerateStats {
            lines: self.lines,
            invoices: self.invoices,
            bytes,
        }
    }
}

/// A writer that counts the bytes that pass through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W> Counting<W> {
    fn new(inner: W) -> Self {
        Counting { inner, bytes: 0 }
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
