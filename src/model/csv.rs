//! Invoice lines from CSV: a whole body ([`parse_csv`]) or a file of any size in bounded memory
//! ([`CsvLines`]).
//!
//! The header decides everything: columns in any order, named as in the dataset or in snake_case
//! (any case), unknown columns ignored, the delimiter (comma, semicolon or tab) detected from it.
//! Each record is decoded on its own: valid UTF-8 stays UTF-8, anything else is read as
//! Windows-1252 (a superset of ISO-8859-1), because exports from Excel on Windows are the usual
//! source of the latter and files that mix both exist.

use super::assemble::{Assembler, Occurrences, RecentInvoices};
use super::fields::{Field, RawLine, Value};
use super::{
    shorten, DateOrder, InputError, InvoiceLine, LineError, LineOrigin, LinePosition, ParseOptions,
    Parsed,
};
use csv::ByteRecord;
use encoding_rs::WINDOWS_1252;
use std::borrow::Cow;
use std::io::{self, Read};

/// With [`DateOrder::Auto`], how many rows [`CsvLines`] reads ahead for a date that decides the
/// day/month order before it gives up with [`InputError::AmbiguousDateOrder`].
pub const AUTO_LOOK_AHEAD_ROWS: usize = 100_000;

/// How many recently seen invoices [`CsvLines`] keeps occurrence counters for. Identical rows of
/// one invoice that are further apart (more than 10,000 to 20,000 other invoices in between) count
/// as different occurrences and so get the same line id, i.e. are stored once.
pub const RECENT_INVOICES: usize = 10_000;

/// With [`DateOrder::Auto`], after this many rows without any slash date the file is taken to have
/// none (an ISO-dated file needs no decision) and the look-ahead stops.
const ROWS_WITHOUT_SLASH_DATES: usize = 1_000;

/// The first line of a file longer than this is not a header.
const MAX_HEADER_BYTES: usize = 1 << 20;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A row that did not become a line: why, and the row itself for a reject file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub error: LineError,
    /// The row re-written as CSV with the file's delimiter (quoted where needed), decoded to
    /// UTF-8, without its line end: it reads back as the same row.
    pub raw: String,
}

/// Parses a whole CSV body. Row numbers count the header as row 1, as an editor shows them.
/// Identical lines of one invoice are counted over the whole body for their ids.
///
/// # Errors
/// [`InputError::Empty`] without a header row, [`InputError::MissingColumns`] when a required
/// column is absent, [`InputError::Csv`] when the header names a field twice or the body cannot
/// be read, [`InputError::AmbiguousDateOrder`] when `opts.date_order` is `Auto` and no date of
/// the body decides it.
pub fn parse_csv(body: &[u8], opts: &ParseOptions) -> Result<Parsed, InputError> {
    let mut rows = CsvLines::open(body, opts, Limits::whole_body())?;
    let mut parsed = Parsed::default();
    while let Some(row) = rows.next() {
        match row {
            Ok(line) => {
                parsed.lines.push(line);
                parsed.origins.push(rows.last_row);
            }
            Err(rejected) => parsed.errors.push(rejected.error),
        }
    }
    match rows.read_error {
        Some(e) => Err(InputError::Csv(e)),
        None => Ok(parsed),
    }
}

/// How far a reader looks back and ahead; see [`CsvLines::new`] and [`parse_csv`].
struct Limits {
    look_ahead_rows: usize,
    rows_without_slash_dates: usize,
    occurrences: Occurrences,
    keep_raw: bool,
}

impl Limits {
    fn whole_body() -> Self {
        Limits {
            look_ahead_rows: usize::MAX,
            rows_without_slash_dates: usize::MAX,
            occurrences: Occurrences::whole(),
            keep_raw: false,
        }
    }

    fn streaming() -> Self {
        Limits {
            look_ahead_rows: AUTO_LOOK_AHEAD_ROWS,
            rows_without_slash_dates: ROWS_WITHOUT_SLASH_DATES,
            occurrences: Occurrences::Recent(RecentInvoices::new(RECENT_INVOICES)),
            keep_raw: true,
        }
    }
}

/// The lines of a CSV file of any size, one at a time, in bounded memory.
///
/// Memory is one record, the occurrence counters of the last [`RECENT_INVOICES`] invoices, and,
/// with [`DateOrder::Auto`] only, the rows read ahead until a date decides the order.
pub struct CsvLines<R: Read> {
    reader: csv::Reader<io::Chain<io::Cursor<Vec<u8>>, R>>,
    columns: Vec<(usize, Field)>,
    width: usize,
    delimiter: u8,
    record: ByteRecord,
    assembler: Assembler<String>,
    keep_raw: bool,
    done: bool,
    read_error: Option<String>,
    /// Bytes before the csv reader's first byte (a BOM), for [`CsvLines::bytes_read`].
    skipped: u64,
    /// Where the line `next` returned last was.
    last_row: LineOrigin,
}

impl<R: Read> CsvLines<R> {
    /// Reads the header: detects the delimiter (unless `opts.delimiter` is set) and maps the
    /// columns. With [`DateOrder::Auto`] it also reads ahead, up to [`AUTO_LOOK_AHEAD_ROWS`] rows,
    /// until a date decides the day/month order, so that the order is settled before the first
    /// line comes out. When the look-ahead saw no slash date at all (an ISO-dated file), the order
    /// stays open: a later deciding date settles it, and a later ambiguous one is rejected with
    /// its row.
    ///
    /// # Errors
    /// [`InputError::Empty`] for a file without a header row, [`InputError::MissingColumns`],
    /// [`InputError::Csv`] for a header that names a field twice or a first line over 1 MiB,
    /// [`InputError::Io`] when the reader fails, and [`InputError::AmbiguousDateOrder`] when the
    /// look-ahead saw dates that read both ways and none that decides.
    pub fn new(reader: R, opts: &ParseOptions) -> Result<Self, InputError> {
        Self::open(reader, opts, Limits::streaming())
    }

    fn open(mut reader: R, opts: &ParseOptions, limits: Limits) -> Result<Self, InputError> {
        let mut head = first_line(&mut reader)?;
        let skipped = if head.starts_with(UTF8_BOM) {
            head.drain(..UTF8_BOM.len());
            UTF8_BOM.len() as u64
        } else {
            0
        };
        if head.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(InputError::Empty);
        }
        let delimiter = opts.delimiter.unwrap_or_else(|| detect_delimiter(&head));
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(io::Cursor::new(head).chain(reader));
        let mut header = ByteRecord::new();
        if !reader.read_byte_record(&mut header).map_err(csv_error)? {
            return Err(InputError::Empty);
        }
        let columns = map_columns(&header)?;
        let mut lines = CsvLines {
            reader,
            columns,
            width: header.len(),
            delimiter,
            record: ByteRecord::new(),
            assembler: Assembler::new(opts.date_order, limits.occurrences).keyed(opts.request_key),
            keep_raw: limits.keep_raw,
            done: false,
            read_error: None,
            skipped,
            last_row: LineOrigin {
                position: LinePosition::Row(1),
                line_no: None,
            },
        };
        if opts.date_order == DateOrder::Auto {
            lines.look_ahead(limits.look_ahead_rows, limits.rows_without_slash_dates)?;
        }
        Ok(lines)
    }

    fn look_ahead(
        &mut self,
        max_rows: usize,
        rows_without_slash_dates: usize,
    ) -> Result<(), InputError> {
        let mut rows = 0;
        while self.assembler.undecided()
            && !self.done
            && rows < max_rows
            && (self.assembler.saw_slash_date() || rows < rows_without_slash_dates)
        {
            self.read_row();
            rows += 1;
        }
        self.assembler.end()?;
        self.assembler.stop_holding();
        Ok(())
    }

    /// Bytes of the file consumed so far, for progress reports.
    pub fn bytes_read(&self) -> u64 {
        self.reader.position().byte() + self.skipped
    }

    /// Why the file could not be read to its end (an I/O error), once the iterator has ended;
    /// `None` when it was read completely. The failing place is also the last rejected row.
    pub fn read_error(&self) -> Option<&str> {
        self.read_error.as_deref()
    }

    /// Reads one record and hands it to the assembler; sets `done` at the end of the file.
    fn read_row(&mut self) {
        match self.reader.read_byte_record(&mut self.record) {
            Ok(true) => {}
            Ok(false) => {
                self.done = true;
                return;
            }
            Err(e) => {
                self.done = true;
                let row = e.position().map_or(0, |p| p.line());
                let message = format!("the file cannot be read beyond row {row}: {e}");
                self.read_error = Some(message.clone());
                self.assembler.push(
                    LinePosition::Row(row),
                    Err(LineError::line(LinePosition::Row(row), message)),
                    String::new,
                );
                return;
            }
        }
        let position = LinePosition::Row(self.record.position().map_or(0, |p| p.line()));
        let draft = if self.record.len() == self.width {
            check_record(&self.record, &self.columns, position)
        } else {
            Err(LineError::line(
                position,
                format!(
                    "has {} fields where the header has {}; check the delimiter ({:?}) and the quotes of this row",
                    self.record.len(),
                    self.width,
                    char::from(self.delimiter)
                ),
            ))
        };
        let (record, delimiter, keep_raw) = (&self.record, self.delimiter, self.keep_raw);
        self.assembler.push(position, draft, || {
            if keep_raw {
                raw_row(record, delimiter)
            } else {
                String::new()
            }
        });
    }
}

impl<R: Read> Iterator for CsvLines<R> {
    type Item = Result<InvoiceLine, RejectedRow>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((row, out)) = self.assembler.pop_at() {
                self.last_row = row;
                return Some(out.map_err(|(error, raw)| RejectedRow { error, raw }));
            }
            if self.done {
                return None;
            }
            self.read_row();
        }
    }
}

fn csv_error(e: csv::Error) -> InputError {
    if e.is_io_error() {
        if let csv::ErrorKind::Io(io) = e.into_kind() {
            return InputError::Io(io);
        }
        return InputError::Csv("the file cannot be read".into());
    }
    InputError::Csv(e.to_string())
}

/// Reads up to the end of the first non-blank line (the header), so the delimiter can be detected
/// before the csv reader is built; the bytes are handed on to it.
fn first_line<R: Read>(reader: &mut R) -> Result<Vec<u8>, InputError> {
    let mut head: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let content = head.iter().position(|b| !b.is_ascii_whitespace());
        if let Some(start) = content {
            if head[start..].contains(&b'\n') {
                return Ok(head);
            }
        }
        if head.len() > MAX_HEADER_BYTES {
            return Err(InputError::Csv(format!(
                "the first line is longer than {MAX_HEADER_BYTES} bytes, so it is no header; send a header row naming the columns (InvoiceNo, StockCode, ...)"
            )));
        }
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(head),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(InputError::Io(e)),
        }
    }
}

/// The most frequent of comma, semicolon and tab outside quotes in the header; comma on a tie.
fn detect_delimiter(head: &[u8]) -> u8 {
    let start = head
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    let line = head[start..].split(|&b| b == b'\n').next().unwrap_or(&[]);
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for &b in line {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let candidates = [b',', b';', b'\t'];
    let mut best = 0;
    for i in 1..3 {
        if counts[i] > counts[best] {
            best = i;
        }
    }
    candidates[best]
}

fn map_columns(header: &ByteRecord) -> Result<Vec<(usize, Field)>, InputError> {
    let utf8 = std::str::from_utf8(header.as_slice()).is_ok();
    let names: Vec<Cow<'_, str>> = header.iter().map(|h| decode(h, utf8)).collect();
    let mut columns: Vec<(usize, Field)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let Some(field) = Field::from_name(name) else {
            continue;
        };
        if let Some((j, _)) = columns.iter().find(|(_, f)| *f == field) {
            return Err(InputError::Csv(format!(
                "the header names {} twice (columns {} and {}); keep one of them",
                field.name(),
                j + 1,
                i + 1
            )));
        }
        columns.push((i, field));
    }
    let missing: Vec<&'static str> = Field::ALL
        .into_iter()
        .filter(|f| f.is_required() && !columns.iter().any(|(_, c)| c == f))
        .map(Field::name)
        .collect();
    if missing.is_empty() {
        Ok(columns)
    } else {
        Err(InputError::MissingColumns {
            missing,
            found: names.iter().map(|n| shorten(n)).collect(),
        })
    }
}

/// Text of a field: borrowed when the record is UTF-8, otherwise decoded from Windows-1252.
fn decode(bytes: &[u8], record_is_utf8: bool) -> Cow<'_, str> {
    if record_is_utf8 {
        if let Ok(s) = std::str::from_utf8(bytes) {
            return Cow::Borrowed(s);
        }
    }
    WINDOWS_1252.decode_without_bom_handling(bytes).0
}

fn check_record(
    record: &ByteRecord,
    columns: &[(usize, Field)],
    position: LinePosition,
) -> Result<super::fields::Draft, LineError> {
    // Decide the encoding per record: all mapped fields UTF-8, or the whole record Windows-1252.
    // Each field is checked once; the texts of a UTF-8 record are kept from that check. A field
    // is mapped to one column at most (`map_columns` refuses a header that names one twice).
    let mut texts = [""; Field::ALL.len()];
    let utf8 = columns.iter().zip(&mut texts).all(|(&(i, _), text)| {
        match std::str::from_utf8(&record[i]) {
            Ok(s) => {
                *text = s;
                true
            }
            Err(_) => false,
        }
    });
    let mut raw = RawLine::default();
    for (&(i, field), text) in columns.iter().zip(texts) {
        let text = if utf8 {
            Cow::Borrowed(text)
        } else {
            decode(&record[i], false)
        };
        raw.set(field, Value::Text(text));
    }
    raw.check(position)
}

/// The record written back as one CSV row, for a reject file.
fn raw_row(record: &ByteRecord, delimiter: u8) -> String {
    let mut writer = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let written = writer.write_byte_record(record).is_ok();
    let mut bytes = match writer.into_inner() {
        Ok(bytes) if written => bytes,
        _ => return String::new(),
    };
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => WINDOWS_1252
            .decode_without_bom_handling(e.as_bytes())
            .0
            .into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n";
    const ROW: &str = "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom\n";

    fn parse(body: &str) -> Parsed {
        parse_csv(body.as_bytes(), &ParseOptions::default()).expect("parses")
    }

    fn stream(body: &[u8], opts: &ParseOptions) -> Vec<Result<InvoiceLine, RejectedRow>> {
        CsvLines::new(body, opts).expect("header").collect()
    }

    #[test]
    fn the_dataset_header_and_row() {
        let p = parse(&format!("{HEADER}{ROW}"));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let l = &p.lines[0];
        assert_eq!(l.invoice_no, "536365");
        assert_eq!(l.unit_price.to_string(), "2.55");
        assert_eq!(l.invoice_date.to_string(), "2010-12-01 08:26:00");
    }

    #[test]
    fn columns_in_any_order_any_case_with_extras() {
        let body = "Unnamed: 0;country;unit_price;INVOICEDATE;quantity;description;stock_code;invoice_no;customer_id\r\n\
                    0;United Kingdom;2,55;2010-12-01 08:26:00;6;\"WHITE; HANGING \"\"HEART\"\"\";85123A;536365;17850.0\r\n";
        let p = parse(body);
        // `2,55` is no price: the decimal separator is a point.
        assert_eq!(p.errors[0].field, Some("UnitPrice"));
        let p = parse(&body.replace("2,55", "2.55"));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(
            p.lines[0].description.as_deref(),
            Some("WHITE; HANGING \"HEART\"")
        );
        let tabs = format!("{HEADER}{ROW}").replace(',', "\t");
        assert_eq!(parse(&tabs).lines, parse(&format!("{HEADER}{ROW}")).lines);
    }

    #[test]
    fn explicit_delimiter_wins() {
        let opts = ParseOptions {
            delimiter: Some(b';'),
            ..ParseOptions::default()
        };
        assert!(matches!(
            parse_csv(format!("{HEADER}{ROW}").as_bytes(), &opts),
            Err(InputError::MissingColumns { .. })
        ));
    }

    #[test]
    fn quoted_newlines_and_row_numbers() {
        let body = format!(
            "{HEADER}{ROW}536365,71053,\"WHITE\nMETAL, LANTERN\",6,12/1/2010 8:26,3.39,17850,United Kingdom\n536365,X,Y,six,12/1/2010 8:26,1,,United Kingdom"
        );
        let p = parse(&body);
        assert_eq!(p.lines.len(), 2);
        assert_eq!(
            p.lines[1].description.as_deref(),
            Some("WHITE\nMETAL, LANTERN")
        );
        // Header row 1, first row 2, the two-line row 3-4, so the bad one is row 5.
        assert_eq!(p.errors[0].position, LinePosition::Row(5));
        assert_eq!(p.errors[0].to_string(), "row 5: field Quantity: is not a whole number (expected a whole number of units (e.g. 6 or -2))");
    }

    #[test]
    fn ragged_rows_are_rejected_with_their_raw_text() {
        let body = format!("{HEADER}{ROW}536365,\"A,B\",6\n{ROW}");
        let out = stream(body.as_bytes(), &ParseOptions::default());
        assert_eq!(out.len(), 3);
        let rejected = out[1].as_ref().expect_err("ragged");
        assert_eq!(rejected.raw, "536365,\"A,B\",6");
        assert!(rejected
            .error
            .to_string()
            .starts_with("row 3: has 3 fields where the header has 8"));
        assert!(out[2].is_ok());
    }

    #[test]
    fn latin1_and_bom() {
        let utf8 = format!(
            "\u{feff}{HEADER}{}",
            ROW.replace("HEART", "C\u{153}UR \u{a3}5")
        );
        let mut latin1 =
            format!("{HEADER}{}", ROW.replace("HEART", "C\u{1}UR \u{2}5")).into_bytes();
        for b in &mut latin1 {
            *b = match *b {
                1 => 0x9C, // œ in Windows-1252
                2 => 0xA3, // £ in ISO-8859-1 and Windows-1252
                other => other,
            };
        }
        let a = parse(&utf8);
        let b = parse_csv(&latin1, &ParseOptions::default()).expect("parses");
        assert!(a.errors.is_empty() && b.errors.is_empty());
        assert_eq!(a.lines, b.lines);
        assert_eq!(
            a.lines[0].description.as_deref(),
            Some("WHITE HANGING C\u{153}UR \u{a3}5 T-LIGHT HOLDER")
        );
    }

    #[test]
    fn whole_file_problems_are_input_errors() {
        assert!(matches!(
            parse_csv(b"", &ParseOptions::default()),
            Err(InputError::Empty)
        ));
        assert!(matches!(
            parse_csv(b"\n \r\n", &ParseOptions::default()),
            Err(InputError::Empty)
        ));
        match parse_csv(
            b"InvoiceNo,StockCode,Quantity\n1,2,3\n",
            &ParseOptions::default(),
        ) {
            Err(e @ InputError::MissingColumns { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("\"InvoiceDate\", \"UnitPrice\", \"Country\""),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        let twice = HEADER.replace("Country", "invoice_no");
        assert!(matches!(
            parse_csv(twice.as_bytes(), &ParseOptions::default()),
            Err(InputError::Csv(m)) if m.contains("names InvoiceNo twice")
        ));
        let header_only = parse(HEADER);
        assert!(header_only.lines.is_empty() && header_only.errors.is_empty());
    }

    #[test]
    fn a_ten_megabyte_field_is_a_short_error() {
        let huge = format!("\"{}\"", "x".repeat(10 << 20));
        let body = format!("{HEADER}{}{ROW}", ROW.replace("85123A", &huge));
        let p = parse(&body);
        assert_eq!(p.lines.len(), 1);
        assert_eq!(p.errors[0].field, Some("StockCode"));
        assert!(p.errors[0].to_string().len() < 400);
    }

    #[test]
    fn auto_order_reads_ahead_and_refuses_to_guess() {
        let opts = ParseOptions {
            date_order: DateOrder::Auto,
            ..ParseOptions::default()
        };
        let dmy = |d: &str| ROW.replace("12/1/2010 8:26", d);
        let decided = format!(
            "{HEADER}{}{}",
            dmy("01/12/2010 08:26"),
            dmy("13/12/2010 08:26")
        );
        let out = stream(decided.as_bytes(), &opts);
        assert_eq!(
            out[0].as_ref().map(|l| l.invoice_date.to_string()).ok(),
            Some("2010-12-01 08:26:00".to_string())
        );
        let ambiguous = format!(
            "{HEADER}{}{}",
            dmy("01/12/2010 08:26"),
            dmy("02/12/2010 08:26")
        );
        assert!(matches!(
            CsvLines::new(ambiguous.as_bytes(), &opts),
            Err(InputError::AmbiguousDateOrder { .. })
        ));
        assert!(matches!(
            parse_csv(ambiguous.as_bytes(), &opts),
            Err(InputError::AmbiguousDateOrder { .. })
        ));
    }

    #[test]
    fn streaming_and_whole_body_agree() {
        let body = format!("{HEADER}{ROW}{ROW}{}", ROW.replace("536365", "536366"));
        let whole = parse(&body).lines;
        let streamed: Vec<InvoiceLine> = stream(body.as_bytes(), &ParseOptions::default())
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("all good");
        assert_eq!(whole, streamed);
        assert_ne!(whole[0].line_id, whole[1].line_id);
        let mut lines = CsvLines::new(body.as_bytes(), &ParseOptions::default()).expect("header");
        assert!(lines.bytes_read() > 0);
        lines.by_ref().for_each(drop);
        assert_eq!(lines.bytes_read(), body.len() as u64);
        assert_eq!(lines.read_error(), None);
    }

    #[test]
    fn delimiters_are_detected_outside_quotes() {
        assert_eq!(detect_delimiter(b"a;b;c\n"), b';');
        assert_eq!(detect_delimiter(b"\"a,b,c\";d;e\n"), b';');
        assert_eq!(detect_delimiter(b"a\tb\n"), b'\t');
        assert_eq!(detect_delimiter(b"a\n"), b',');
    }
}
