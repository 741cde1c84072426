//! The fields of an input line, by name, and the checks that turn their values into a [`Draft`].
//!
//! JSON and CSV differ only in how a value arrives (a JSON string, number or null; a CSV cell), so
//! both parsers fill a [`RawLine`] with borrowed [`Value`]s and share every rule here.

use super::datetime::{self, DateValue};
use super::{LineError, LinePosition, Money, MAX_PRICE_SCALE};
use compact_str::CompactString;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::borrow::Cow;

/// Longest accepted text fields, in bytes. The dataset's longest description is 35 characters;
/// the limits exist so that a runaway field (a lost quote, a 10 MB blob) is rejected with a short
/// message instead of being carried into every sink.
pub const MAX_STOCK_CODE_BYTES: usize = 64;
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
pub const MAX_COUNTRY_BYTES: usize = 128;
/// Longest invoice number, in characters.
pub const MAX_INVOICE_NO_CHARS: usize = 20;

/// Largest accepted quantity, in units, either sign: `Quantity` must lie in
/// `-MAX_QUANTITY..=MAX_QUANTITY`. The real dataset's extreme is 80,995 units (and its
/// cancellation); a million leaves more than tenfold headroom.
///
/// With [`MAX_UNIT_PRICE`] and six decimals at most, a line total is at most 10^12 pounds, 10^18
/// millionths: every line fits an `i64` of millionths, and any sum of fewer than 2^63 lines fits
/// the `i128` the stores keep their sums in (`crate::store::sum`). These bounds are what make
/// the stores' sums safe: raise them only with that arithmetic redone.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Largest accepted unit price, in pounds, either sign: `UnitPrice` must lie in
/// `-MAX_UNIT_PRICE..=MAX_UNIT_PRICE` (with at most [`MAX_PRICE_SCALE`] decimals). The real
/// dataset's extreme is 38,970.00 (a manual adjustment); a million leaves 25-fold headroom.
pub const MAX_UNIT_PRICE: i64 = 1_000_000;

/// A field of the dataset, plus the client's optional line number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    InvoiceNo,
    StockCode,
    Description,
    Quantity,
    InvoiceDate,
    UnitPrice,
    CustomerId,
    Country,
    LineNo,
}

const FIELD_COUNT: usize = 9;

impl Field {
    pub(crate) const ALL: [Field; FIELD_COUNT] = [
        Field::InvoiceNo,
        Field::StockCode,
        Field::Description,
        Field::Quantity,
        Field::InvoiceDate,
        Field::UnitPrice,
        Field::CustomerId,
        Field::Country,
        Field::LineNo,
    ];

    /// The name in the dataset's header, used in every message.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::InvoiceNo => "InvoiceNo",
            Field::StockCode => "StockCode",
            Field::Description => "Description",
            Field::Quantity => "Quantity",
            Field::InvoiceDate => "InvoiceDate",
            Field::UnitPrice => "UnitPrice",
            Field::CustomerId => "CustomerID",
            Field::Country => "Country",
            Field::LineNo => "LineNo",
        }
    }

    fn snake_name(self) -> &'static str {
        match self {
            Field::InvoiceNo => "invoice_no",
            Field::StockCode => "stock_code",
            Field::Description => "description",
            Field::Quantity => "quantity",
            Field::InvoiceDate => "invoice_date",
            Field::UnitPrice => "unit_price",
            Field::CustomerId => "customer_id",
            Field::Country => "country",
            Field::LineNo => "line_no",
        }
    }

    pub(crate) fn is_required(self) -> bool {
        !matches!(self, Field::Description | Field::CustomerId | Field::LineNo)
    }

    /// The field a key or column names, case-insensitively, in the dataset's spelling or in
    /// snake_case; `None` for anything else (a pandas index column, `Unnamed: 0`), which is ignored.
    pub(crate) fn from_name(name: &str) -> Option<Field> {
        let name = name.trim();
        Field::ALL.into_iter().find(|f| {
            name.eq_ignore_ascii_case(f.name()) || name.eq_ignore_ascii_case(f.snake_name())
        })
    }
}

/// One value as it arrived, borrowed from the input where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// A JSON string (unescaped) or a CSV cell (decoded).
    Text(Cow<'a, str>),
    /// A JSON number, exactly as written (`2.55`, `17850.0`, `1291191960000`).
    Number(&'a str),
    /// JSON `null`.
    Null,
    /// Any other JSON value, named for the message (`a boolean`, `an object`).
    Other(&'static str),
}

/// What a present value holds after trimming and dropping the markers of missing data.
enum Given<'v> {
    Text(&'v str),
    Number(&'v str),
    Other(&'static str),
}

impl Value<'_> {
    /// `None` for missing values: absent, `null`, empty or blank text, and `NaN`/`nan`/`NA`, which
    /// is how pandas and R write a missing cell.
    fn given(&self) -> Option<Given<'_>> {
        match self {
            Value::Text(t) => {
                let t = t.trim();
                (!matches!(t, "" | "NaN" | "nan" | "NA")).then_some(Given::Text(t))
            }
            Value::Number(n) => Some(Given::Number(n)),
            Value::Null => None,
            Value::Other(kind) => Some(Given::Other(kind)),
        }
    }
}

/// The values of one input line, by field.
#[derive(Debug, Default)]
pub(crate) struct RawLine<'a> {
    values: [Option<Value<'a>>; FIELD_COUNT],
    /// A field given twice (`InvoiceNo` and `invoice_no`): which one is meant is unknowable.
    duplicate: Option<Field>,
}

/// A line whose fields are all valid, waiting for its date order (and then its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Draft {
    pub invoice_no: CompactString,
    pub stock_code: CompactString,
    pub description: Option<CompactString>,
    pub quantity: i64,
    pub date: DateValue,
    pub unit_price: Money,
    pub customer_id: Option<u64>,
    pub country: CompactString,
    pub line_no: Option<u64>,
}

impl<'a> RawLine<'a> {
    pub(crate) fn set(&mut self, field: Field, value: Value<'a>) {
        let slot = &mut self.values[field as usize];
        if slot.is_some() {
            self.duplicate.get_or_insert(field);
        }
        *slot = Some(value);
    }

    /// Checks every field, in the dataset's column order, and reports the first bad one.
    ///
    /// # Errors
    /// A [`LineError`] at `position` naming the field, its (shortened) value and the expected form.
    pub(crate) fn check(self, position: LinePosition) -> Result<Draft, LineError> {
        if let Some(f) = self.duplicate {
            return Err(LineError::field(
                position,
                f.name(),
                None,
                format!(
                    "is given twice (as {} and as {}, or twice in one spelling); send it once",
                    f.name(),
                    f.snake_name()
                ),
            ));
        }
        let [invoice_no, stock_code, description, quantity, date, price, customer, country, line_no] =
            self.values;
        let at = At { position };
        let invoice_no = at.required(Field::InvoiceNo, invoice_no, invoice_no_of)?;
        let stock_code = at.required(Field::StockCode, stock_code, |g| {
            text_of(
                g,
                MAX_STOCK_CODE_BYTES,
                "a stock code such as 85123A or POST",
            )
        })?;
        let description = at.optional(Field::Description, description, |g| {
            text_of(g, MAX_DESCRIPTION_BYTES, "a product name")
        })?;
        let quantity = at.required(Field::Quantity, quantity, quantity_of)?;
        let date = at.required(Field::InvoiceDate, date, date_of)?;
        let unit_price = at.required(Field::UnitPrice, price, price_of)?;
        let customer_id = at.optional(Field::CustomerId, customer, |g| {
            natural_of(g, "a customer number (e.g. 17850 or 17850.0)")
        })?;
        let country = at.required(Field::Country, country, |g| {
            text_of(
                g,
                MAX_COUNTRY_BYTES,
                "a country name such as United Kingdom",
            )
        })?;
        let line_no = at.optional(Field::LineNo, line_no, |g| {
            natural_of(g, "a line number (e.g. 1)")
        })?;
        Ok(Draft {
            invoice_no,
            stock_code,
            description,
            quantity,
            date,
            unit_price,
            customer_id,
            country,
            line_no,
        })
    }
}

/// Turns a field's check into a [`LineError`] at one position.
struct At {
    position: LinePosition,
}

type Check<T> = Result<T, String>;

impl At {
    fn optional<T>(
        &self,
        field: Field,
        value: Option<Value<'_>>,
        check: impl FnOnce(&Given<'_>) -> Check<T>,
    ) -> Result<Option<T>, LineError> {
        let Some(value) = value else { return Ok(None) };
        let Some(given) = value.given() else {
            return Ok(None);
        };
        match check(&given) {
            Ok(v) => Ok(Some(v)),
            Err(reason) => {
                let shown = match given {
                    Given::Text(t) | Given::Number(t) => Some(t),
                    Given::Other(_) => None,
                };
                Err(LineError::field(self.position, field.name(), shown, reason))
            }
        }
    }

    fn required<T>(
        &self,
        field: Field,
        value: Option<Value<'_>>,
        check: impl FnOnce(&Given<'_>) -> Check<T>,
    ) -> Result<T, LineError> {
        self.optional(field, value, check)?.ok_or_else(|| {
            LineError::field(
                self.position,
                field.name(),
                None,
                format!(
                    "is missing (it is required; empty, null, NaN and NA count as missing){}",
                    hint(field)
                ),
            )
        })
    }
}

fn hint(field: Field) -> &'static str {
    match field {
        Field::InvoiceNo => ": send e.g. 536365",
        Field::StockCode => ": send e.g. 85123A",
        Field::Quantity => ": send e.g. 6",
        Field::InvoiceDate => ": send e.g. 12/1/2010 8:26",
        Field::UnitPrice => ": send e.g. 2.55",
        Field::Country => ": send e.g. United Kingdom",
        _ => "",
    }
}

fn not_a(kind: &str, expected: &str) -> String {
    format!("is {kind} (expected {expected})")
}

fn text_of(given: &Given<'_>, max_bytes: usize, expected: &str) -> Check<CompactString> {
    match given {
        Given::Text(t) | Given::Number(t) if t.contains('\0') => Err(format!(
            "contains a NUL character (\\0, U+0000); remove it (expected {expected})"
        )),
        Given::Text(t) | Given::Number(t) if t.len() <= max_bytes => Ok((*t).into()),
        Given::Text(_) | Given::Number(_) => Err(format!(
            "is longer than {max_bytes} bytes (expected {expected})"
        )),
        Given::Other(kind) => Err(not_a(kind, expected)),
    }
}

/// `536365`, `C536379`, `A563185`: letters, then digits, 1 to 20 characters. A JSON number is
/// taken as the digits it writes (`536365.0` from a float column is `536365`).
fn invoice_no_of(given: &Given<'_>) -> Check<CompactString> {
    const EXPECTED: &str =
        "an invoice number such as 536365 or C536379: letters, then digits, at most 20 characters";
    match given {
        Given::Text(t) => {
            let digits = t.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            let ok = t.len() <= MAX_INVOICE_NO_CHARS
                && !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit());
            if ok {
                Ok((*t).into())
            } else {
                Err(format!("is not {EXPECTED}"))
            }
        }
        Given::Number(n) => match whole_number(n).filter(|v| *v >= 0).map(|v| v.to_string()) {
            Some(digits) if digits.len() <= MAX_INVOICE_NO_CHARS => Ok(digits.into()),
            _ => Err(format!("is not {EXPECTED}")),
        },
        Given::Other(kind) => Err(not_a(kind, EXPECTED)),
    }
}

fn whole_of(given: &Given<'_>, expected: &str) -> Check<i64> {
    match given {
        Given::Text(t) | Given::Number(t) => {
            whole_number(t).ok_or_else(|| format!("is not a whole number (expected {expected})"))
        }
        Given::Other(kind) => Err(not_a(kind, expected)),
    }
}

/// A whole number of units within `±`[`MAX_QUANTITY`].
fn quantity_of(given: &Given<'_>) -> Check<i64> {
    const EXPECTED: &str = "a whole number of units (e.g. 6 or -2)";
    let n = whole_of(given, EXPECTED)?;
    if n.unsigned_abs() > MAX_QUANTITY.unsigned_abs() {
        return Err(format!(
            "is outside the accepted range of -{MAX_QUANTITY} to {MAX_QUANTITY} units; \
             send a real quantity, or split a larger one into several lines"
        ));
    }
    Ok(n)
}

fn natural_of(given: &Given<'_>, expected: &str) -> Check<u64> {
    let n = whole_of(given, expected)?;
    u64::try_from(n).map_err(|_| format!("is negative (expected {expected})"))
}

/// A whole number written as an integer (`6`, `-2`), with a zero fraction (`6.0`, what pandas
/// writes for an integer column that has missing values) or in exponent form (`1.785e4`).
pub(crate) fn whole_number(text: &str) -> Option<i64> {
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    let d = decimal(text)?;
    if d.fract().is_zero() {
        d.to_i64()
    } else {
        None
    }
}

/// A decimal read exactly from its text; `None` when the text is no number or has more digits
/// than a `Decimal` holds (28), rather than rounding it.
fn decimal(text: &str) -> Option<Decimal> {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+'));
    if plain {
        Decimal::from_str_exact(text).ok()
    } else if text.bytes().any(|b| b == b'e' || b == b'E')
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        Decimal::from_scientific(text).ok()
    } else {
        None
    }
}

/// An exact price with at most [`MAX_PRICE_SCALE`] decimal places once trailing zeros are dropped
/// (`2.5500000` is 2.55; `0.1234567` is refused, not rounded).
fn price_of(given: &Given<'_>) -> Check<Money> {
    const EXPECTED: &str = "a decimal price in pounds such as 2.55, 0 or -11062.06";
    match given {
        Given::Text(t) | Given::Number(t) => {
            let mut price = decimal(t).ok_or_else(|| format!("is not {EXPECTED}"))?;
            if price.scale() > MAX_PRICE_SCALE {
                price = price.normalize();
            }
            if price.scale() > MAX_PRICE_SCALE {
                return Err(format!(
                    "has {} decimal places; at most {MAX_PRICE_SCALE} are allowed (expected {EXPECTED})",
                    price.scale()
                ));
            }
            if price.abs() > Decimal::from(MAX_UNIT_PRICE) {
                return Err(format!(
                    "is outside the accepted range of -{MAX_UNIT_PRICE} to {MAX_UNIT_PRICE} pounds \
                     a unit; send a real price (a larger amount is no unit price)"
                ));
            }
            Ok(price)
        }
        Given::Other(kind) => Err(not_a(kind, EXPECTED)),
    }
}

fn date_of(given: &Given<'_>) -> Check<DateValue> {
    match given {
        Given::Text(t) => datetime::parse_date(t).map_err(|e| e.to_string()),
        Given::Number(n) => datetime::from_epoch_millis(n)
            .map(DateValue::Exact)
            .map_err(|e| e.to_string()),
        Given::Other(kind) => Err(not_a(
            kind,
            "a date such as 12/1/2010 8:26 or 2010-12-01 08:26:00, or epoch milliseconds",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    const AT: LinePosition = LinePosition::Index(0);

    fn full(overrides: &[(Field, Value<'static>)]) -> RawLine<'static> {
        let mut raw = RawLine::default();
        let base = [
            (Field::InvoiceNo, Value::Text("536365".into())),
            (Field::StockCode, Value::Text("85123A".into())),
            (
                Field::Description,
                Value::Text("WHITE HANGING HEART".into()),
            ),
            (Field::Quantity, Value::Number("6")),
            (
                Field::InvoiceDate,
                Value::Text("2010-12-01 08:26:00".into()),
            ),
            (Field::UnitPrice, Value::Number("2.55")),
            (Field::CustomerId, Value::Number("17850.0")),
            (Field::Country, Value::Text("United Kingdom".into())),
        ];
        for (f, v) in base {
            raw.values[f as usize] = Some(v);
        }
        for (f, v) in overrides {
            raw.values[*f as usize] = Some(v.clone());
        }
        raw
    }

    fn error_of(overrides: &[(Field, Value<'static>)]) -> LineError {
        full(overrides).check(AT).expect_err("should be rejected")
    }

    #[test]
    fn names_match_case_insensitively_in_both_spellings() {
        assert_eq!(Field::from_name("InvoiceNo"), Some(Field::InvoiceNo));
        assert_eq!(Field::from_name("INVOICENO"), Some(Field::InvoiceNo));
        assert_eq!(Field::from_name("customer_id"), Some(Field::CustomerId));
        assert_eq!(Field::from_name("CustomerID"), Some(Field::CustomerId));
        assert_eq!(Field::from_name(" LineNo "), Some(Field::LineNo));
        assert_eq!(Field::from_name("Unnamed: 0"), None);
        assert_eq!(Field::from_name(""), None);
    }

    #[test]
    fn a_pandas_row_checks() {
        let d = full(&[]).check(AT).expect("valid");
        assert_eq!(d.invoice_no, "536365");
        assert_eq!(d.quantity, 6);
        assert_eq!(d.unit_price.to_string(), "2.55");
        assert_eq!(d.customer_id, Some(17850));
        assert_eq!(
            d.date,
            DateValue::Exact(
                NaiveDate::from_ymd_opt(2010, 12, 1)
                    .and_then(|d| d.and_hms_opt(8, 26, 0))
                    .expect("date")
            )
        );
    }

    #[test]
    fn numbers_and_strings_are_both_accepted() {
        let d = full(&[
            (Field::InvoiceNo, Value::Number("536365")),
            (Field::Quantity, Value::Text(" -2 ".into())),
            (Field::UnitPrice, Value::Text("2.550".into())),
            (Field::CustomerId, Value::Text("17850".into())),
            (Field::Description, Value::Null),
        ])
        .check(AT)
        .expect("valid");
        assert_eq!(d.invoice_no, "536365");
        assert_eq!(d.quantity, -2);
        assert_eq!(d.unit_price.to_string(), "2.550");
        assert_eq!(d.customer_id, Some(17850));
        assert_eq!(d.description, None);
        for missing in ["", "  ", "NaN", "nan", "NA"] {
            let d = full(&[(Field::CustomerId, Value::Text(missing.into()))])
                .check(AT)
                .expect("valid");
            assert_eq!(d.customer_id, None, "{missing:?}");
        }
        assert_eq!(
            full(&[(Field::Quantity, Value::Number("6.0"))])
                .check(AT)
                .map(|d| d.quantity),
            Ok(6)
        );
    }

    #[test]
    fn bad_values_name_field_value_and_form() {
        let e = error_of(&[(Field::Quantity, Value::Text("six".into()))]);
        assert_eq!(e.field, Some("Quantity"));
        assert_eq!(e.value.as_deref(), Some("six"));
        assert!(
            e.to_string()
                .starts_with("line 0: field Quantity: is not a whole number"),
            "{e}"
        );
        let e = error_of(&[(Field::Quantity, Value::Number("6.5"))]);
        assert_eq!(e.value.as_deref(), Some("6.5"));
        let e = error_of(&[(Field::CustomerId, Value::Number("17850.5"))]);
        assert_eq!(e.field, Some("CustomerID"));
        let e = error_of(&[(Field::UnitPrice, Value::Number("0.1234567"))]);
        assert!(e.reason.contains("7 decimal places; at most 6"), "{e}");
        let e = error_of(&[(Field::UnitPrice, Value::Other("a boolean"))]);
        assert!(
            e.reason.starts_with("is a boolean (expected a decimal"),
            "{e}"
        );
        let e = error_of(&[(Field::InvoiceNo, Value::Text("53-6365".into()))]);
        assert_eq!(e.field, Some("InvoiceNo"));
        let e = error_of(&[(
            Field::InvoiceNo,
            Value::Text("536365123456789012345".into()),
        )]);
        assert_eq!(e.field, Some("InvoiceNo"));
        let e = error_of(&[(Field::Country, Value::Text("NaN".into()))]);
        assert!(e.reason.starts_with("is missing"), "{e}");
        let e = error_of(&[(Field::InvoiceDate, Value::Text("2010-13-01".into()))]);
        assert_eq!(e.field, Some("InvoiceDate"));
        let e = error_of(&[(Field::CustomerId, Value::Number("-5"))]);
        assert!(e.reason.starts_with("is negative"), "{e}");
    }

    #[test]
    fn quantity_and_price_are_bounded() {
        // The bounds themselves are accepted, in both signs.
        for (q, p) in [
            ("1000000", "1000000"),
            ("-1000000", "-1000000"),
            ("80995", "38970.00"),
            ("0", "0"),
            ("1e6", "999999.999999"),
        ] {
            let d = full(&[
                (Field::Quantity, Value::Number(q)),
                (Field::UnitPrice, Value::Number(p)),
            ])
            .check(AT)
            .unwrap_or_else(|e| panic!("{q} x {p}: {e}"));
            assert!(d.quantity.abs() <= MAX_QUANTITY);
        }
        for q in [
            "1000001",
            "-1000001",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            let e = error_of(&[(Field::Quantity, Value::Number(q))]);
            assert_eq!(e.field, Some("Quantity"), "{q}");
            assert!(
                e.reason
                    .contains("outside the accepted range of -1000000 to 1000000 units"),
                "{e}"
            );
        }
        for p in [
            "1000000.000001",
            "-1000000.01",
            "1e11",
            "1e20",
            "100000000000",
        ] {
            let e = error_of(&[(Field::UnitPrice, Value::Number(p))]);
            assert_eq!(e.field, Some("UnitPrice"), "{p}");
            assert!(
                e.reason
                    .contains("outside the accepted range of -1000000 to 1000000 pounds"),
                "{p}: {e}"
            );
        }
        // Beyond a Decimal's 28 digits it is no number at all, still naming the field.
        let e = error_of(&[(Field::UnitPrice, Value::Number("1e40"))]);
        assert_eq!(e.field, Some("UnitPrice"));
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field() {
        for field in [Field::StockCode, Field::Description, Field::Country] {
            let e = error_of(&[(field, Value::Text("AB\0C".into()))]);
            assert_eq!(e.field, Some(field.name()));
            assert!(e.reason.contains("NUL character"), "{e}");
        }
        for field in [
            Field::InvoiceNo,
            Field::Quantity,
            Field::UnitPrice,
            Field::CustomerId,
        ] {
            let e = error_of(&[(field, Value::Text("5\0".into()))]);
            assert_eq!(e.field, Some(field.name()), "{e}");
        }
    }

    #[test]
    fn a_huge_field_gives_a_short_error() {
        let huge: String = "x".repeat(10 << 20);
        let e = error_of(&[(Field::Description, Value::Text(huge.into()))]);
        assert_eq!(e.field, Some("Description"));
        assert!(e.to_string().len() < 400, "{}", e.to_string().len());
    }

    #[test]
    fn a_field_given_twice_is_refused() {
        let mut raw = full(&[]);
        raw.set(Field::Quantity, Value::Number("7"));
        assert_eq!(
            raw.check(AT).expect_err("duplicate").field,
            Some("Quantity")
        );
    }

    #[test]
    fn whole_numbers() {
        assert_eq!(whole_number("17850.0"), Some(17850));
        assert_eq!(whole_number("-2"), Some(-2));
        assert_eq!(whole_number("1.785e4"), Some(17850));
        assert_eq!(whole_number("17850.5"), None);
        assert_eq!(whole_number("six"), None);
        assert_eq!(whole_number("1_000"), None);
        assert_eq!(whole_number("99999999999999999999999"), None);
    }
}
