//! Invoice dates in every form stores send them.
//!
//! The dataset writes `12/1/2010 8:26` (month first, sometimes with a two-digit year); UK exports
//! write `01/12/2010 08:26`; pandas writes `2010-12-01 08:26:00` or epoch milliseconds; other
//! clients send RFC 3339. A slash date cannot be read on its own when both of its first two
//! numbers are 12 or less, so it is kept as a [`SlashDate`] until the input's order is known (see
//! [`DateOrder`]). Parsing is a hand-written scan of the bytes: it runs once per line on the ingest
//! hot path, where `chrono`'s format-string parser would cost more than the rest of the line.

use super::DateOrder;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use std::fmt;

/// Why a value is not a date, worded to follow the value in a [`LineError`](super::LineError).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("is not a date in a known form (expected e.g. 12/1/2010 8:26, 01/12/2010 08:26:00, 2010-12-01 08:26:00, 2010-12-01T08:26:00Z or epoch milliseconds)")]
    Form,
    #[error("is not a real calendar date and time (check day, month, hour and minute)")]
    NoSuchDate,
    #[error("is not whole epoch milliseconds (expected e.g. 1291191960000)")]
    EpochForm,
    #[error("is too small for epoch milliseconds (sent in seconds? expected e.g. 1291191960000 for 2010-12-01 08:26)")]
    EpochTooSmall,
}

/// A date read from one value; slash dates wait for the day/month order of their input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateValue {
    Exact(NaiveDateTime),
    Slash(SlashDate),
}

/// `A/B/YYYY [H:MM[:SS]]` before it is known whether A is the month or the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlashDate {
    first: u32,
    second: u32,
    year: i32,
    time: NaiveTime,
}

/// What one slash date says about the order of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Both orders give this same date (`1/1/2011`, `3/3/2011`): the value decides nothing.
    Same(NaiveDateTime),
    /// Only this order gives a real date (`13/1/2011` is day-first): the value decides the input.
    Only(DateOrder),
    /// Both orders give real, different dates (`1/2/2011`).
    Ambiguous,
    /// Neither order gives a real date (`13/13/2011`, `2/30/2011` read either way).
    Neither,
}

impl SlashDate {
    /// The date read with `order`; `None` when that reading is no real date, or for
    /// [`DateOrder::Auto`] unless both readings agree.
    pub fn read_as(&self, order: DateOrder) -> Option<NaiveDateTime> {
        let (month, day) = match order {
            DateOrder::Mdy => (self.first, self.second),
            DateOrder::Dmy => (self.second, self.first),
            DateOrder::Auto => return self.same_either_way(),
        };
        NaiveDate::from_ymd_opt(self.year, month, day).map(|d| d.and_time(self.time))
    }

    fn same_either_way(&self) -> Option<NaiveDateTime> {
        match self.evidence() {
            Evidence::Same(d) => Some(d),
            _ => None,
        }
    }

    pub fn evidence(&self) -> Evidence {
        let mdy = self.read_as(DateOrder::Mdy);
        let dmy = self.read_as(DateOrder::Dmy);
        match (mdy, dmy) {
            (Some(a), Some(b)) if a == b => Evidence::Same(a),
            (Some(_), Some(_)) => Evidence::Ambiguous,
            (Some(_), None) => Evidence::Only(DateOrder::Mdy),
            (None, Some(_)) => Evidence::Only(DateOrder::Dmy),
            (None, None) => Evidence::Neither,
        }
    }
}

/// Written back in the input's shape, for error messages (`1/2/2011 08:26:00`).
impl fmt::Display for SlashDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{} {}",
            self.first, self.second, self.year, self.time
        )
    }
}

/// Reads a date written as text: a slash date, an ISO 8601 date and time, or RFC 3339 with an
/// offset (converted to UTC). Two-digit years are 20YY, as in the dataset's `12/1/10 8:26`.
///
/// # Errors
/// [`DateError::Form`] when the text has none of those forms, [`DateError::NoSuchDate`] when it
/// has the form but names no real date or time (`2011-02-30`, `25:00`).
pub fn parse_date(text: &str) -> Result<DateValue, DateError> {
    let mut c = Cursor::new(text.trim().as_bytes());
    let (lead, width) = c.number(1, 4).ok_or(DateError::Form)?;
    if width == 4 && c.eat(b'-') {
        iso(lead as i32, &mut c)
    } else if width <= 2 && c.eat(b'/') {
        slash(lead, &mut c)
    } else {
        Err(DateError::Form)
    }
}

/// Reads epoch milliseconds (what pandas' `to_json` writes for a parsed date column) as a UTC
/// date and time.
///
/// # Errors
/// [`DateError::EpochForm`] for anything but a whole number (`1291191960000.0` is whole),
/// [`DateError::EpochTooSmall`] for numbers before 1973-03-03, which are almost surely seconds
/// sent by mistake, and [`DateError::NoSuchDate`] beyond chrono's range.
pub fn from_epoch_millis(number: &str) -> Result<NaiveDateTime, DateError> {
    let text = number.trim();
    let digits = match text.split_once('.') {
        Some((int, frac)) if frac.bytes().all(|b| b == b'0') => int,
        Some(_) => return Err(DateError::EpochForm),
        None => text,
    };
    let millis: i64 = digits.parse().map_err(|_| DateError::EpochForm)?;
    if millis.unsigned_abs() < 100_000_000_000 {
        return Err(DateError::EpochTooSmall);
    }
    DateTime::from_timestamp_millis(millis)
        .map(|d| d.naive_utc())
        .ok_or(DateError::NoSuchDate)
}

fn slash(first: u32, c: &mut Cursor<'_>) -> Result<DateValue, DateError> {
    let (second, _) = c.number(1, 2).ok_or(DateError::Form)?;
    if !c.eat(b'/') {
        return Err(DateError::Form);
    }
    let year = match c.number(2, 4).ok_or(DateError::Form)? {
        (yy, 2) => 2000 + yy as i32,
        (yyyy, 4) => yyyy as i32,
        _ => return Err(DateError::Form),
    };
    let time = if c.at_end() {
        NaiveTime::MIN
    } else {
        if !c.spaces() {
            return Err(DateError::Form);
        }
        time(c)?
    };
    if !c.at_end() {
        return Err(DateError::Form);
    }
    if first == 0 || second == 0 || (first > 12 && second > 12) {
        return Err(DateError::NoSuchDate);
    }
    Ok(DateValue::Slash(SlashDate {
        first,
        second,
        year,
        time,
    }))
}

fn iso(year: i32, c: &mut Cursor<'_>) -> Result<DateValue, DateError> {
    let (month, _) = c.number(2, 2).ok_or(DateError::Form)?;
    if !c.eat(b'-') {
        return Err(DateError::Form);
    }
    let (day, _) = c.number(2, 2).ok_or(DateError::Form)?;
    let date = NaiveDate::from_ymd_opt(year, month, day).ok_or(DateError::NoSuchDate)?;
    if c.at_end() {
        return Ok(DateValue::Exact(date.and_time(NaiveTime::MIN)));
    }
    if !(c.eat(b'T') || c.eat(b't') || c.spaces()) {
        return Err(DateError::Form);
    }
    let local = date.and_time(time(c)?);
    let offset_minutes = offset(c)?;
    if !c.at_end() {
        return Err(DateError::Form);
    }
    Ok(DateValue::Exact(
        local - TimeDelta::minutes(i64::from(offset_minutes)),
    ))
}

/// `H:MM`, `HH:MM:SS` or `HH:MM:SS.fff` (fractions of a second are dropped: the dataset has
/// minutes).
fn time(c: &mut Cursor<'_>) -> Result<NaiveTime, DateError> {
    let (hour, _) = c.number(1, 2).ok_or(DateError::Form)?;
    if !c.eat(b':') {
        return Err(DateError::Form);
    }
    let (minute, _) = c.number(2, 2).ok_or(DateError::Form)?;
    let mut second = 0;
    if c.eat(b':') {
        second = c.number(2, 2).ok_or(DateError::Form)?.0;
        if c.eat(b'.') || c.eat(b',') {
            c.number(1, 9).ok_or(DateError::Form)?;
        }
    }
    NaiveTime::from_hms_opt(hour, minute, second).ok_or(DateError::NoSuchDate)
}

/// The offset east of UTC in minutes: nothing (0), `Z`, `+01:00`, `-0500` or `+01`.
fn offset(c: &mut Cursor<'_>) -> Result<i32, DateError> {
    if c.at_end() || c.eat(b'Z') || c.eat(b'z') {
        return Ok(0);
    }
    let sign = if c.eat(b'+') {
        1
    } else if c.eat(b'-') {
        -1
    } else {
        return Err(DateError::Form);
    };
    let (hours, _) = c.number(2, 2).ok_or(DateError::Form)?;
    let had_colon = c.eat(b':');
    let minutes = match c.number(2, 2) {
        Some((m, _)) => m,
        None if had_colon => return Err(DateError::Form),
        None => 0,
    };
    if hours > 23 || minutes > 59 {
        return Err(DateError::NoSuchDate);
    }
    Ok(sign * (hours * 60 + minutes) as i32)
}

/// A position in the bytes of a date.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, at: 0 }
    }

    fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.bytes.get(self.at) == Some(&b);
        self.at += usize::from(hit);
        hit
    }

    /// One or more spaces; false when there is none.
    fn spaces(&mut self) -> bool {
        let start = self.at;
        while self.eat(b' ') {}
        self.at > start
    }

    /// Between `min` and `max` ASCII digits, as a number and how many digits there were.
    fn number(&mut self, min: usize, max: usize) -> Option<(u32, usize)> {
        let mut value = 0u32;
        let mut n = 0;
        while n < max {
            match self.bytes.get(self.at) {
                Some(b) if b.is_ascii_digit() => {
                    value = value * 10 + u32::from(b - b'0');
                    self.at += 1;
                    n += 1;
                }
                _ => break,
            }
        }
        (n >= min).then_some((value, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|d| d.and_hms_opt(h, mi, s))
            .expect("valid test date")
    }

    fn exact(text: &str) -> NaiveDateTime {
        match parse_date(text) {
            Ok(DateValue::Exact(d)) => d,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn slash_date(text: &str) -> SlashDate {
        match parse_date(text) {
            Ok(DateValue::Slash(s)) => s,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn dataset_slash_dates_read_month_first() {
        let d = at(2010, 12, 1, 8, 26, 0);
        for text in [
            "12/1/2010 8:26",
            "12/1/10 8:26",
            "12/01/2010 08:26",
            "12/1/2010 8:26:00",
            " 12/1/2010  8:26 ",
        ] {
            assert_eq!(slash_date(text).read_as(DateOrder::Mdy), Some(d), "{text}");
        }
        assert_eq!(
            slash_date("12/9/2011 12:50:59").read_as(DateOrder::Mdy),
            Some(at(2011, 12, 9, 12, 50, 59))
        );
        assert_eq!(
            slash_date("12/1/2010").read_as(DateOrder::Mdy),
            Some(at(2010, 12, 1, 0, 0, 0))
        );
    }

    #[test]
    fn uk_slash_dates_read_day_first() {
        let s = slash_date("01/12/2010 08:26");
        assert_eq!(s.read_as(DateOrder::Dmy), Some(at(2010, 12, 1, 8, 26, 0)));
        assert_eq!(s.read_as(DateOrder::Mdy), Some(at(2010, 1, 12, 8, 26, 0)));
        assert_eq!(s.read_as(DateOrder::Auto), None);
    }

    #[test]
    fn evidence_decides_only_when_one_reading_is_real() {
        assert_eq!(
            slash_date("13/1/2011 9:00").evidence(),
            Evidence::Only(DateOrder::Dmy)
        );
        assert_eq!(
            slash_date("1/13/2011 9:00").evidence(),
            Evidence::Only(DateOrder::Mdy)
        );
        // 31 cannot be a month, and February has no 31st either way.
        assert_eq!(slash_date("2/31/2011 9:00").evidence(), Evidence::Neither);
        assert_eq!(slash_date("1/2/2011 9:00").evidence(), Evidence::Ambiguous);
        assert_eq!(
            slash_date("3/3/2011 9:00").evidence(),
            Evidence::Same(at(2011, 3, 3, 9, 0, 0))
        );
        assert_eq!(
            slash_date("3/3/2011 9:00").read_as(DateOrder::Auto),
            Some(at(2011, 3, 3, 9, 0, 0))
        );
        assert_eq!(slash_date("1/2/2011 9:00").to_string(), "1/2/2011 09:00:00");
    }

    #[test]
    fn iso_and_rfc3339() {
        let d = at(2010, 12, 1, 8, 26, 0);
        for text in [
            "2010-12-01 08:26:00",
            "2010-12-01T08:26:00",
            "2010-12-01T08:26",
            "2010-12-01T08:26:00Z",
            "2010-12-01T08:26:00.000Z",
            "2010-12-01T09:26:00+01:00",
            "2010-12-01T03:26:00-05:00",
            "2010-12-01T03:26:00-0500",
            "2010-12-01T09:26:00+01",
        ] {
            assert_eq!(exact(text), d, "{text}");
        }
        assert_eq!(exact("2010-12-01"), at(2010, 12, 1, 0, 0, 0));
        // Crossing midnight on the way to UTC.
        assert_eq!(
            exact("2010-12-01T00:30:00+01:00"),
            at(2010, 11, 30, 23, 30, 0)
        );
    }

    #[test]
    fn epoch_millis_is_utc() {
        assert_eq!(
            from_epoch_millis("1291191960000"),
            Ok(at(2010, 12, 1, 8, 26, 0))
        );
        assert_eq!(
            from_epoch_millis("1291191960000.0"),
            Ok(at(2010, 12, 1, 8, 26, 0))
        );
        assert_eq!(
            from_epoch_millis("1291191960"),
            Err(DateError::EpochTooSmall)
        );
        assert_eq!(
            from_epoch_millis("1291191960000.5"),
            Err(DateError::EpochForm)
        );
        assert_eq!(from_epoch_millis("1e12"), Err(DateError::EpochForm));
        assert_eq!(
            from_epoch_millis("99999999999999999"),
            Err(DateError::NoSuchDate)
        );
    }

    #[test]
    fn bad_dates_say_why() {
        for text in [
            "",
            "yesterday",
            "12-1-2010",
            "2010/12/01",
            "12/1/201 8:26",
            "12/1/2010 8",
            "12/1/2010 8:26pm",
            "2010-12-01X08:26",
            "2010-12-1 08:26",
            "2010-12-01T08:26:00+1",
            "12/1/2010T8:26",
        ] {
            assert_eq!(parse_date(text), Err(DateError::Form), "{text}");
        }
        for text in [
            "2011-02-30 10:00",
            "2010-12-01 24:00",
            "2010-12-01 08:61",
            "0/1/2010 8:26",
            "13/13/2010 8:26",
            "12/1/2010 25:00",
        ] {
            assert_eq!(parse_date(text), Err(DateError::NoSuchDate), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_form_of_a_date_reads_the_same(
            y in 2000i32..2099, mo in 1u32..=12, d in 1u32..=28, h in 0u32..24, mi in 0u32..60, s in 0u32..60
        ) {
            let want = at(y, mo, d, h, mi, s);
            let mdy = slash_date(&format!("{mo}/{d}/{y} {h}:{mi:02}:{s:02}"));
            proptest::prop_assert_eq!(mdy.read_as(DateOrder::Mdy), Some(want));
            let dmy = slash_date(&format!("{d:02}/{mo:02}/{y} {h:02}:{mi:02}:{s:02}"));
            proptest::prop_assert_eq!(dmy.read_as(DateOrder::Dmy), Some(want));
            let short = slash_date(&format!("{mo}/{d}/{:02} {h}:{mi:02}:{s:02}", y % 100));
            proptest::prop_assert_eq!(short.read_as(DateOrder::Mdy), Some(want));
            proptest::prop_assert_eq!(exact(&want.format("%Y-%m-%d %H:%M:%S").to_string()), want);
            proptest::prop_assert_eq!(exact(&want.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()), want);
            let millis = want.and_utc().timestamp_millis().to_string();
            proptest::prop_assert_eq!(from_epoch_millis(&millis), Ok(want));
        }
    }
}
