//! Sums the stores keep and compute (rollups, summaries, invoice and customer totals): 128-bit
//! integers, which no sequence of accepted lines can overflow.
//!
//! Validation bounds every line ([`MAX_QUANTITY`] units at [`MAX_UNIT_PRICE`] pounds, six
//! decimals at most), so a line total is at most 10^18 millionths (< 2^60) and a quantity at
//! most 10^6 (< 2^20). SQLite counts rows in an `i64`, so no table holds 2^63 lines, and a sum of
//! them stays below 2^123: inside an `i128`. SQLite's own integers are `i64` and its `SUM()`
//! fails with "integer overflow" after ten extreme lines, so the embedded stores add up in Rust
//! and keep a stored sum as decimal text ([`to_sql`], [`from_sql`]).
//!
//! [`MAX_QUANTITY`]: crate::model::MAX_QUANTITY
//! [`MAX_UNIT_PRICE`]: crate::model::MAX_UNIT_PRICE

use rust_decimal::Decimal;

use super::StoreError;
use crate::model::{Money, MAX_PRICE_SCALE};

/// A stored sum as SQL text (`"-123"`): exact at any size, and readable in the `sqlite3` shell.
pub(crate) fn to_sql(sum: i128) -> String {
    sum.to_string()
}

/// Reads a stored sum: decimal text as [`to_sql`] writes it, or an `INTEGER` as files written
/// before sums were text hold.
///
/// # Errors
/// A conversion error naming the column when it holds anything else.
pub(crate) fn from_sql(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<i128> {
    use rusqlite::types::{FromSqlError, ValueRef};
    let bad = |t: rusqlite::types::Type, what: String| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            t,
            format!("a stored sum holds {what}, not a whole number").into(),
        )
    };
    match row.get_ref(column)? {
        ValueRef::Integer(i) => Ok(i128::from(i)),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.parse::<i128>().ok())
            .ok_or_else(|| {
                bad(
                    rusqlite::types::Type::Text,
                    format!("{:?}", String::from_utf8_lossy(t)),
                )
            }),
        other => Err(rusqlite::Error::FromSqlConversionFailure(
            column,
            other.data_type(),
            Box::new(FromSqlError::InvalidType),
        )),
    }
}

/// `a + b`, or the [`StoreError::Aggregate`] naming `what` (which bounded lines never reach).
///
/// # Errors
/// [`StoreError::Aggregate`] on overflow.
pub(crate) fn add(a: i128, b: i128, what: &str) -> Result<i128, StoreError> {
    a.checked_add(b)
        .ok_or_else(|| StoreError::Aggregate(format!("{what} overflows 128 bits")))
}

/// A sum of millionths as money, exact.
///
/// # Errors
/// [`StoreError::Aggregate`] when the sum is beyond what a `Decimal` holds (about 7.9 * 10^22
/// pounds, some 79 billion lines at the bounds): the sum itself is still kept exactly.
pub(crate) fn micros_to_money(micros: i128, what: &str) -> Result<Money, StoreError> {
    Decimal::try_from_i128_with_scale(micros, MAX_PRICE_SCALE)
        .map(|d| d.normalize())
        .map_err(|_| {
            StoreError::Aggregate(format!(
                "{what} of {micros} millionths is beyond what an exact decimal holds"
            ))
        })
}

/// An exact running sum of money, in 128-bit millionths: what the look-ups that add line totals
/// in Rust (an invoice's total, a customer's invoices, reconciliation totals) accumulate into,
/// where adding `Decimal`s would panic past 28 digits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MoneySum(i128);

impl MoneySum {
    /// Adds an amount stored as millionths.
    ///
    /// # Errors
    /// [`StoreError::Aggregate`] on overflow (bounded lines never reach it).
    pub(crate) fn add_micros(&mut self, micros: i64, what: &str) -> Result<(), StoreError> {
        self.0 = add(self.0, i128::from(micros), what)?;
        Ok(())
    }

    /// Adds an amount; every stored line total is a whole number of millionths within an `i64`.
    ///
    /// # Errors
    /// [`StoreError::Aggregate`] for an amount that is not, or on overflow.
    pub(crate) fn add_money(&mut self, m: Money, what: &str) -> Result<(), StoreError> {
        let micros = crate::model::money_to_micros(m).ok_or_else(|| {
            StoreError::Aggregate(format!(
                "{what}: {m} is not a whole number of millionths within 64 bits"
            ))
        })?;
        self.add_micros(micros, what)
    }

    /// The sum as money.
    ///
    /// # Errors
    /// As [`micros_to_money`].
    pub(crate) fn money(self, what: &str) -> Result<Money, StoreError> {
        micros_to_money(self.0, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{money_to_micros, MAX_QUANTITY, MAX_UNIT_PRICE};
    use std::str::FromStr;

    #[test]
    fn the_largest_line_fits_an_i64_and_any_count_of_them_an_i128() {
        let largest =
            money_to_micros(Money::from(MAX_QUANTITY) * Money::from_str("999999.999999").unwrap())
                .expect("fits an i64");
        assert!(largest < 1_000_000_000_000_000_000);
        let largest = i128::from(MAX_QUANTITY) * i128::from(MAX_UNIT_PRICE) * 1_000_000;
        assert_eq!(largest, 10i128.pow(18));
        // i64::MAX lines (more than SQLite can count) of the largest total, either sign.
        let most = i128::from(i64::MAX) * largest;
        assert!(most.checked_add(most).is_some() && most < i128::MAX / 2);
    }

    #[test]
    fn sums_past_i64_stay_exact() {
        let line = 10i128.pow(18);
        let mut sum = 0i128;
        for _ in 0..1000 {
            sum = add(sum, line, "revenue").unwrap();
        }
        assert_eq!(to_sql(sum), "1000000000000000000000");
        assert_eq!(
            micros_to_money(sum, "revenue").unwrap(),
            Money::from_str("1000000000000000").unwrap()
        );
        assert_eq!(
            micros_to_money(-2_550_000, "revenue").unwrap().to_string(),
            "-2.55"
        );
        assert!(matches!(
            add(i128::MAX, 1, "revenue"),
            Err(StoreError::Aggregate(_))
        ));
        let e = micros_to_money(i128::MAX, "revenue").unwrap_err();
        assert!(matches!(e, StoreError::Aggregate(_)) && !e.is_retriable());
    }

    #[test]
    fn money_sums_add_past_what_a_decimal_sum_would_hold() {
        let mut s = MoneySum::default();
        let largest = Money::from(1_000_000_000_000i64);
        for _ in 0..100 {
            s.add_money(largest, "total").unwrap();
            s.add_money(-largest, "total").unwrap();
            s.add_money(largest, "total").unwrap();
        }
        s.add_micros(-1, "total").unwrap();
        assert_eq!(
            s.money("total").unwrap(),
            Money::from_str("99999999999999.999999").unwrap()
        );
        assert!(matches!(
            s.add_money(Money::from_str("0.0000001").unwrap(), "total"),
            Err(StoreError::Aggregate(_))
        ));
    }

    #[test]
    fn stored_sums_read_back_from_text_and_from_old_integers() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let big = -(10i128.pow(30)) - 7;
        let (a, b): (i128, i128) = conn
            .query_row("SELECT ?1, 42", [to_sql(big)], |r| {
                Ok((from_sql(r, 0)?, from_sql(r, 1)?))
            })
            .unwrap();
        assert_eq!((a, b), (big, 42));
        assert!(conn
            .query_row("SELECT 'x', 1.5", [], |r| from_sql(r, 0))
            .is_err());
        assert!(conn
            .query_row("SELECT 1.5", [], |r| from_sql(r, 0))
            .is_err());
    }
}
