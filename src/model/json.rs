//! Invoice lines from JSON: one object, an array of objects, or NDJSON (one object per line).
//!
//! Values are taken as [`RawValue`]s borrowed from the body, so a number is read from the exact
//! text the client wrote (`2.55` is the decimal 2.55, never the nearest double) and an unescaped
//! string costs no allocation. Field names match case-insensitively; unknown keys are skipped.

use super::assemble::{Assembler, Occurrences};
use super::fields::{Field, RawLine, Value};
use super::{InputError, LineError, LinePosition, ParseOptions, Parsed};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

const NOT_AN_OBJECT: &str = "not a JSON object; send one object per line with the fields InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country";

/// Parses a JSON body of invoice lines.
///
/// NDJSON positions are the 0-based line numbers of the body (blank lines are skipped but
/// counted); array positions are 0-based indexes; a single object is at 0. A line that is valid
/// JSON but a bad invoice line, or (in NDJSON) a line that is not valid JSON, becomes an entry of
/// [`Parsed::errors`] and the other lines go on.
///
/// # Errors
/// [`InputError::Empty`] for a blank body; [`InputError::Json`] when the body is not JSON at all,
/// is cut off, or (for an object or array) is not UTF-8; [`InputError::AmbiguousDateOrder`] when
/// `opts.date_order` is `Auto` and no date of the body decides it.
pub fn parse_json(body: &[u8], opts: &ParseOptions) -> Result<Parsed, InputError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(InputError::Empty)?;
    let mut out = Collector {
        assembler: Assembler::new(opts.date_order, Occurrences::whole()).keyed(opts.request_key),
    };
    match body[start] {
        b'[' => out.array(utf8(body)?)?,
        b'{' => {
            let first_line_end = body[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(body.len(), |i| start + i);
            let rest_blank = body[first_line_end..]
                .iter()
                .all(|b| b.is_ascii_whitespace());
            if !rest_blank && parses_alone(&body[start..first_line_end]) {
                out.ndjson(body);
            } else {
                out.object(utf8(body)?)?;
            }
        }
        other => {
            return Err(InputError::Json(format!(
                "it starts with {:?} where a JSON object `{{...}}`, an array `[{{...}}, ...]` or NDJSON (one object per line) was expected",
                char::from(other)
            )))
        }
    }
    out.finish()
}

fn utf8(body: &[u8]) -> Result<&str, InputError> {
    std::str::from_utf8(body).map_err(|e| {
        // Where an editor shows it: 1-based line, and byte column within that line.
        let before = &body[..e.valid_up_to()];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
        InputError::Json(format!(
            "it is not UTF-8 (invalid byte at line {line} column {column}, offset {}); send JSON encoded as UTF-8",
            e.valid_up_to()
        ))
    })
}

/// Whether a line is one complete JSON value by itself: then the body is NDJSON rather than one
/// pretty-printed object spread over lines.
fn parses_alone(line: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(line).is_ok()
}

fn input_error(e: &serde_json::Error) -> InputError {
    let what = if e.is_eof() {
        "it ends before the JSON is complete (cut off?)"
    } else {
        "it is not valid JSON"
    };
    InputError::Json(format!(
        "{what}: {e}; send one object, an array of objects, or one object per line (NDJSON)"
    ))
}

struct Collector {
    assembler: Assembler<()>,
}

impl Collector {
    fn add(&mut self, position: LinePosition, element: Element<'_>) {
        let draft = match element {
            Some(raw) => raw.check(position),
            None => Err(LineError::line(position, NOT_AN_OBJECT)),
        };
        self.assembler.push(position, draft, || ());
    }

    fn object(&mut self, text: &str) -> Result<(), InputError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let element = ElementSeed
            .deserialize(&mut de)
            .and_then(|e| de.end().map(|()| e))
            .map_err(|e| input_error(&e))?;
        self.add(LinePosition::Index(0), element);
        Ok(())
    }

    fn array(&mut self, text: &str) -> Result<(), InputError> {
        let mut de = serde_json::Deserializer::from_str(text);
        de::Deserializer::deserialize_seq(&mut de, ArrayVisitor(self))
            .and_then(|()| de.end())
            .map_err(|e| input_error(&e))
    }

    fn ndjson(&mut self, body: &[u8]) {
        for (index, line) in body.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let position = LinePosition::Index(index);
            match std::str::from_utf8(line) {
                Ok(text) => {
                    let mut de = serde_json::Deserializer::from_str(text);
                    match ElementSeed
                        .deserialize(&mut de)
                        .and_then(|e| de.end().map(|()| e))
                    {
                        Ok(element) => self.add(position, element),
                        Err(e) => self.assembler.push(
                            position,
                            Err(LineError::line(
                                position,
                                format!(
                                    "is not valid JSON ({e}); send one complete object per line"
                                ),
                            )),
                            || (),
                        ),
                    }
                }
                Err(e) => self.assembler.push(
                    position,
                    Err(LineError::line(
                        position,
                        format!(
                            "is not UTF-8 (invalid byte at column {}); send JSON encoded as UTF-8",
                            e.valid_up_to() + 1
                        ),
                    )),
                    || (),
                ),
            }
        }
    }

    fn finish(mut self) -> Result<Parsed, InputError> {
        self.assembler.end()?;
        let mut parsed = Parsed::default();
        while let Some((origin, line)) = self.assembler.pop_at() {
            match line {
                Ok(line) => {
                    parsed.lines.push(line);
                    parsed.origins.push(origin);
                }
                Err((error, ())) => parsed.errors.push(error),
            }
        }
        Ok(parsed)
    }
}

/// One element of a body: an object's fields, or `None` for anything else (reported as not an
/// object).
type Element<'a> = Option<RawLine<'a>>;

struct ElementSeed;

impl<'de> DeserializeSeed<'de> for ElementSeed {
    type Value = Element<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of an invoice line")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawLine::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Some(field) => {
                    let value: &'de RawValue = map.next_value()?;
                    raw.set(field, value_of::<A::Error>(value)?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(raw))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A value as the field checks see it: strings unescaped (borrowed when they hold no escape),
/// numbers as their exact text.
fn value_of<E: de::Error>(raw: &RawValue) -> Result<Value<'_>, E> {
    let text = raw.get();
    Ok(match text.as_bytes().first() {
        Some(b'"') if !text.contains('\\') => Value::Text(Cow::Borrowed(&text[1..text.len() - 1])),
        Some(b'"') => Value::Text(Cow::Owned(serde_json::from_str(text).map_err(E::custom)?)),
        Some(b'n') => Value::Null,
        Some(b't' | b'f') => Value::Other("a boolean"),
        Some(b'{') => Value::Other("an object"),
        Some(b'[') => Value::Other("an array"),
        _ => Value::Number(text),
    })
}

/// Maps a key to its field without allocating; `None` for keys that are not fields.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<Field>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Option<Field>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Field::from_name(key))
    }
}

/// Feeds the elements of a top-level array to the collector one by one, without a `Vec`.
struct ArrayVisitor<'c>(&'c mut Collector);

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of invoice line objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(element) = seq.next_element_seed(ElementSeed)? {
            self.0.add(LinePosition::Index(index), element);
            index += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DateOrder;

    const PANDAS_ROW: &str = r#"{"InvoiceNo":"536365","StockCode":"85123A","Description":"WHITE HANGING HEART T-LIGHT HOLDER","Quantity":6,"InvoiceDate":"12\/1\/2010 8:26","UnitPrice":2.55,"CustomerID":17850.0,"Country":"United Kingdom"}"#;

    fn parse(body: &str) -> Parsed {
        parse_json(body.as_bytes(), &ParseOptions::default()).expect("parses")
    }

    /// The pandas row with `CÉUR` written in Latin-1, which is not UTF-8.
    fn latin1_row() -> Vec<u8> {
        let mut row = PANDAS_ROW.replace("HEART", "C\u{1}UR").into_bytes();
        row.iter_mut().filter(|b| **b == 1).for_each(|b| *b = 0xC9);
        row
    }

    fn input_error_of(body: &[u8]) -> String {
        match parse_json(body, &ParseOptions::default()) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("accepted: {p:?}"),
        }
    }

    #[test]
    fn a_pandas_row() {
        let p = parse(PANDAS_ROW);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let l = &p.lines[0];
        assert_eq!(l.invoice_no, "536365");
        assert_eq!(l.unit_price.to_string(), "2.55");
        assert_eq!(l.customer_id, Some(17850));
        assert_eq!(l.invoice_date.to_string(), "2010-12-01 08:26:00");
        assert_eq!(
            l.description.as_deref(),
            Some("WHITE HANGING HEART T-LIGHT HOLDER")
        );
    }

    #[test]
    fn a_pandas_row_with_parsed_dates_numbers_and_nan() {
        let p = parse(
            r#"{"Unnamed: 0":3,"InvoiceNo":536365,"StockCode":"85123A","Description":null,"Quantity":6,"InvoiceDate":1291191960000,"UnitPrice":2.55,"CustomerID":null,"Country":"United Kingdom"}"#,
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let l = &p.lines[0];
        assert_eq!(l.invoice_no, "536365");
        assert_eq!(l.description, None);
        assert_eq!(l.customer_id, None);
        assert_eq!(l.invoice_date.to_string(), "2010-12-01 08:26:00");
    }

    #[test]
    fn snake_case_array_and_ndjson_give_the_same_lines() {
        let snake = r#"{"invoice_no":"536365","stock_code":"85123A","description":"WHITE HANGING HEART T-LIGHT HOLDER","quantity":"6","invoice_date":"2010-12-01T08:26:00","unit_price":"2.55","customer_id":"17850","country":"United Kingdom"}"#;
        let one = parse(PANDAS_ROW).lines;
        assert_eq!(parse(snake).lines, one);
        let array = parse(&format!("[{PANDAS_ROW},\n {PANDAS_ROW}]")).lines;
        let ndjson = parse(&format!("{PANDAS_ROW}\n\n{PANDAS_ROW}\r\n")).lines;
        assert_eq!(array.len(), 2);
        assert_eq!(array, ndjson);
        assert_eq!(array[0], one[0]);
        assert_ne!(
            array[0].line_id, array[1].line_id,
            "identical lines get occurrences 0 and 1"
        );
    }

    #[test]
    fn a_pretty_printed_object_is_one_line() {
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(PANDAS_ROW).expect("json"),
        )
        .expect("json");
        let p = parse(&pretty);
        assert_eq!(p.lines.len(), 1, "{:?}", p.errors);
    }

    #[test]
    fn line_numbers_make_ids() {
        let with_no = PANDAS_ROW.replacen('{', r#"{"LineNo":1,"#, 1);
        let p = parse(&format!("{with_no}\n{with_no}"));
        assert_eq!(p.lines.len(), 2);
        assert_eq!(
            p.lines[0].line_id, p.lines[1].line_id,
            "same client line number, same id"
        );
        assert_eq!(
            p.lines[0].line_id,
            crate::model::LineId::from_line_no("536365", 1)
        );
    }

    #[test]
    fn bad_lines_are_reported_and_the_rest_go_on() {
        let body = format!(
            "{PANDAS_ROW}\n{}\n[1]\n{{\"InvoiceNo\": \n{}\n",
            PANDAS_ROW.replace("\"Quantity\":6", "\"Quantity\":\"six\""),
            PANDAS_ROW.replace("2.55", "true"),
        );
        let p = parse(&body);
        assert_eq!(p.lines.len(), 1);
        let errors: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        let expected = [
            "line 1: field Quantity: is not a whole number",
            "line 2: not a JSON object",
            "line 3: is not valid JSON",
            "line 4: field UnitPrice: is a boolean",
        ];
        for (error, start) in errors.iter().zip(expected) {
            assert!(error.starts_with(start), "{errors:?}");
        }
        let p = parse(&format!("[{PANDAS_ROW}, 5, {{}}]"));
        assert_eq!(p.lines.len(), 1);
        assert_eq!(p.errors[0].position, LinePosition::Index(1));
        assert_eq!(p.errors[1].position, LinePosition::Index(2));
        assert_eq!(p.errors[1].field, Some("InvoiceNo"));
    }

    #[test]
    fn whole_body_problems_are_input_errors() {
        assert!(matches!(
            parse_json(b" \n\t", &ParseOptions::default()),
            Err(InputError::Empty)
        ));
        let cut = &PANDAS_ROW[..60];
        assert!(input_error_of(cut.as_bytes()).contains("ends before the JSON is complete"));
        assert!(input_error_of(format!("[{PANDAS_ROW}, {cut}").as_bytes())
            .contains("ends before the JSON is complete"));
        assert!(input_error_of(b"InvoiceNo,StockCode").contains("starts with 'I'"));
        assert!(input_error_of(b"[1, 2] x").contains("not valid JSON"));
        let latin1 = latin1_row();
        assert!(input_error_of(&latin1).contains("not UTF-8"));
        let array = [b"[".as_slice(), &latin1, b"]"].concat();
        assert!(input_error_of(&array).contains("not UTF-8"));
        // Where, as an editor shows it: the bad byte on the second line of a pretty array.
        let pretty = [b"[\n  ".as_slice(), &latin1, b"\n]"].concat();
        let at = latin1.iter().position(|b| !b.is_ascii()).unwrap();
        assert!(input_error_of(&pretty).contains(&format!("line 2 column {}", at + 3)));
    }

    #[test]
    fn invalid_utf8_in_ndjson_is_that_lines_error() {
        let mut body = format!("{PANDAS_ROW}\n").into_bytes();
        body.extend_from_slice(&latin1_row());
        let p = parse_json(&body, &ParseOptions::default()).expect("parses");
        assert_eq!(p.lines.len(), 1);
        assert!(p.errors[0].reason.contains("not UTF-8"), "{:?}", p.errors);
    }

    #[test]
    fn a_ten_megabyte_field_is_a_short_error() {
        let huge = "A".repeat(10 << 20);
        let body = PANDAS_ROW.replace("WHITE HANGING", &huge);
        let p = parse(&body);
        assert_eq!(p.errors.len(), 1);
        assert!(p.errors[0].to_string().len() < 400);
        let body = PANDAS_ROW.replace(
            "\"Quantity\":6",
            &format!("\"Quantity\":{}", "9".repeat(10 << 20)),
        );
        let p = parse(&body);
        assert_eq!(p.errors[0].field, Some("Quantity"));
    }

    #[test]
    fn auto_date_order_is_decided_by_the_body() {
        let dmy = |d: &str| PANDAS_ROW.replace(r"12\/1\/2010 8:26", d);
        let opts = ParseOptions {
            date_order: DateOrder::Auto,
            ..ParseOptions::default()
        };
        let body = format!("{}\n{}", dmy("01/12/2010 08:26"), dmy("13/12/2010 08:26"));
        let p = parse_json(body.as_bytes(), &opts).expect("decided");
        assert_eq!(p.lines[0].invoice_date.to_string(), "2010-12-01 08:26:00");
        let body = format!("{}\n{}", dmy("01/12/2010 08:26"), dmy("02/12/2010 08:26"));
        assert!(matches!(
            parse_json(body.as_bytes(), &opts),
            Err(InputError::AmbiguousDateOrder { .. })
        ));
    }
}
