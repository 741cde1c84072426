//! The warehouse's rollups: running sums of `sales` by day and country and by product, which
//! keep [`SalesSummary`] fast however many lines the fact table holds, and the summary read
//! from them.
//!
//! Sums of money and units are 128-bit integers stored as decimal text (`crate::store::sum`): no
//! sequence of accepted lines can overflow them, where SQLite's `i64` arithmetic overflowed after
//! ten extreme lines. SQLite cannot add text numbers, so every change is a read-modify-write in
//! Rust, inside the caller's transaction on the one writer connection of the file: no other
//! writer can interleave. Line counts stay `INTEGER`: SQLite counts rows in an `i64` anyway.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::Money;
use crate::sqlite::Migration;
use crate::store::sum;
use crate::store::warehouse::{CustomerRevenue, DayRange, ProductRevenue, SalesSummary};
use crate::store::StoreError;

/// The rollup tables. Creating them takes no write lock on a file that has them, so a warehouse
/// another process holds locked still opens.
pub(super) const DDL: &str = "
CREATE TABLE IF NOT EXISTS sales_daily_sums (
    day                 TEXT NOT NULL,
    country             TEXT NOT NULL,
    lines               INTEGER NOT NULL,
    cancellation_lines  INTEGER NOT NULL,
    revenue_micros      TEXT NOT NULL,      -- i128, decimal text
    PRIMARY KEY (day, country)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sales_product_sums (
    stock_code          TEXT PRIMARY KEY,
    description         TEXT,
    quantity            TEXT NOT NULL,      -- i128, decimal text
    lines               INTEGER NOT NULL,
    revenue_micros      TEXT NOT NULL       -- i128, decimal text
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sales_invoices (
    invoice_no          TEXT PRIMARY KEY,
    customer_id         INTEGER
) WITHOUT ROWID;
";

/// The move of an older file's rollups into the tables of [`DDL`], needed where old rollup
/// tables are there or `sales` has lines but no rollups.
///
/// Files written before sums were 128-bit keep `sales_daily` and `sales_products`, with `i64`
/// sums under a `CHECK`. Opening one copies their rows (each fits an `i64`) into the new tables
/// and drops them, in one transaction. A `sales` table written without rollups (by a version
/// before them, or by hand with [`SALES_DDL`](crate::store::warehouse::SALES_DDL) alone) is summed
/// into them once, when `sales_daily_sums` is still empty; `sales_daily_sums` is filled last, so it
/// says whether that happened.
pub(super) const MIGRATION: Migration = Migration {
    needed: "
SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name IN ('sales_daily', 'sales_products'))
    OR (NOT EXISTS (SELECT 1 FROM sales_daily_sums) AND EXISTS (SELECT 1 FROM sales))",
    run: "
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS sales_daily (
    day TEXT, country TEXT, lines INTEGER, cancellation_lines INTEGER, revenue_micros INTEGER);
CREATE TABLE IF NOT EXISTS sales_products (
    stock_code TEXT, description TEXT, quantity INTEGER, lines INTEGER, revenue_micros INTEGER);
INSERT INTO sales_product_sums
    SELECT stock_code, description, CAST(quantity AS TEXT), lines, CAST(revenue_micros AS TEXT)
    FROM sales_products;
INSERT INTO sales_daily_sums
    SELECT day, country, lines, cancellation_lines, CAST(revenue_micros AS TEXT)
    FROM sales_daily;
DROP TABLE sales_products;
DROP TABLE sales_daily;
INSERT INTO sales_product_sums
    SELECT stock_code, MAX(description), CAST(SUM(quantity) AS TEXT), COUNT(*),
        CAST(SUM(line_total_micros) AS TEXT)
    FROM sales WHERE NOT EXISTS (SELECT 1 FROM sales_daily_sums) GROUP BY stock_code;
INSERT OR IGNORE INTO sales_invoices
    SELECT invoice_no, MIN(customer_id)
    FROM sales WHERE NOT EXISTS (SELECT 1 FROM sales_daily_sums) GROUP BY invoice_no;
INSERT INTO sales_daily_sums
    SELECT substr(invoice_date, 1, 10), country, COUNT(*), SUM(is_cancellation),
        CAST(SUM(line_total_micros) AS TEXT)
    FROM sales WHERE NOT EXISTS (SELECT 1 FROM sales_daily_sums) GROUP BY 1, 2;
COMMIT;
",
    done: "Moved or rebuilt the warehouse's rollups.",
};

/// Products in [`SalesSummary::top_products`].
const TOP_PRODUCTS: usize = 10;

/// Running sums of one rollup key: what a call adds (or, negative, takes out).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sums {
    pub lines: i64,
    pub cancellation_lines: i64,
    pub quantity: i128,
    pub revenue_micros: i128,
}

impl Sums {
    /// Adds one line (`sign` 1) or takes it out (`sign` -1). Within one call these cannot overflow:
    /// a call holds fewer than 2^63 lines of at most 10^18 millionths each.
    pub fn line(&mut self, sign: i64, is_cancellation: bool, quantity: i64, micros: i64) {
        self.lines += sign;
        self.cancellation_lines += sign * i64::from(is_cancellation);
        self.quantity += i128::from(sign) * i128::from(quantity);
        self.revenue_micros += i128::from(sign) * i128::from(micros);
    }

    fn plus(self, other: Sums) -> Result<Sums, StoreError> {
        let count = |a: i64, b: i64| {
            a.checked_add(b)
                .ok_or_else(|| StoreError::Aggregate("a rollup's line count overflows".into()))
        };
        Ok(Sums {
            lines: count(self.lines, other.lines)?,
            cancellation_lines: count(self.cancellation_lines, other.cancellation_lines)?,
            quantity: sum::add(self.quantity, other.quantity, "a rollup's quantity")?,
            revenue_micros: sum::add(
                self.revenue_micros,
                other.revenue_micros,
                "a rollup's revenue",
            )?,
        })
    }
}

/// A map keyed by short texts of the data (days, countries, stock codes): foldhash, seeded per
/// process, where the standard SipHash was a fifth of [`Changes::line`] in a profile.
type Keyed<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Changes of the rollups that one call makes, by key.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// By day, then country: two maps so that a line is looked up by its borrowed text, and
    /// only a key the call has not met yet is copied.
    pub daily: Keyed<Keyed<Sums>>,
    /// By stock code: the latest description given in the call, and the sums.
    pub products: Keyed<(Option<String>, Sums)>,
}

impl Changes {
    /// Adds one line of `sales` (`sign` 1) or takes it out (`sign` -1).
    #[allow(clippy::too_many_arguments)]
    pub fn line(
        &mut self,
        sign: i64,
        day: &str,
        country: &str,
        stock_code: &str,
        description: Option<&str>,
        is_cancellation: bool,
        quantity: i64,
        micros: i64,
    ) {
        let countries = match self.daily.get_mut(day) {
            Some(c) => c,
            None => self.daily.entry(day.to_owned()).or_default(),
        };
        let daily = match countries.get_mut(country) {
            Some(s) => s,
            None => countries.entry(country.to_owned()).or_default(),
        };
        daily.line(sign, is_cancellation, quantity, micros);
        let product = match self.products.get_mut(stock_code) {
            Some(p) => p,
            None => self.products.entry(stock_code.to_owned()).or_default(),
        };
        if description.is_some() && product.0.as_deref() != description {
            product.0 = description.map(str::to_owned);
        }
        product.1.line(sign, is_cancellation, quantity, micros);
    }

    /// Applies the changes to the stored rollups, in the caller's transaction: reads each key's
    /// sums, adds in Rust, writes them back, and removes a key left with no lines.
    ///
    /// # Errors
    /// [`StoreError::Aggregate`] when a sum would leave its range (bounded lines never do), the
    /// SQLite error otherwise, as [`StoreError::sqlite`].
    pub fn apply(&self, tx: &Connection, path: &Path) -> Result<(), StoreError> {
        let fail = |e: rusqlite::Error| StoreError::sqlite(path, &e);
        let mut read = tx
            .prepare_cached(
                "SELECT lines, cancellation_lines, revenue_micros FROM sales_daily_sums
                 WHERE day = ?1 AND country = ?2",
            )
            .map_err(fail)?;
        let mut write = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO sales_daily_sums
                     (day, country, lines, cancellation_lines, revenue_micros)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(fail)?;
        let mut remove = tx
            .prepare_cached("DELETE FROM sales_daily_sums WHERE day = ?1 AND country = ?2")
            .map_err(fail)?;
        let daily = self
            .daily
            .iter()
            .flat_map(|(day, countries)| countries.iter().map(move |(c, s)| (day, c, s)));
        for (day, country, change) in daily {
            let stored = read
                .query_row(params![day, country], |r| {
                    Ok(Sums {
                        lines: r.get(0)?,
                        cancellation_lines: r.get(1)?,
                        quantity: 0,
                        revenue_micros: sum::from_sql(r, 2)?,
                    })
                })
                .optional()
                .map_err(fail)?
                .unwrap_or_default();
            let s = stored.plus(*change)?;
            if s.lines == 0 {
                remove.execute(params![day, country]).map_err(fail)?;
            } else {
                write
                    .execute(params![
                        day,
                        country,
                        s.lines,
                        s.cancellation_lines,
                        sum::to_sql(s.revenue_micros)
                    ])
                    .map_err(fail)?;
            }
        }
        let mut read = tx
            .prepare_cached(
                "SELECT description, quantity, lines, revenue_micros FROM sales_product_sums
                 WHERE stock_code = ?1",
            )
            .map_err(fail)?;
        let mut write = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO sales_product_sums
                     (stock_code, description, quantity, lines, revenue_micros)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(fail)?;
        let mut remove = tx
            .prepare_cached("DELETE FROM sales_product_sums WHERE stock_code = ?1")
            .map_err(fail)?;
        for (code, (description, change)) in &self.products {
            let stored = read
                .query_row([code], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        Sums {
                            lines: r.get(2)?,
                            cancellation_lines: 0,
                            quantity: sum::from_sql(r, 1)?,
                            revenue_micros: sum::from_sql(r, 3)?,
                        },
                    ))
                })
                .optional()
                .map_err(fail)?;
            let (old_description, stored) = stored.unwrap_or_default();
            let s = stored.plus(Sums {
                cancellation_lines: 0,
                ..*change
            })?;
            if s.lines == 0 {
                remove.execute([code]).map_err(fail)?;
            } else {
                write
                    .execute(params![
                        code,
                        description.as_ref().or(old_description.as_ref()),
                        sum::to_sql(s.quantity),
                        s.lines,
                        sum::to_sql(s.revenue_micros)
                    ])
                    .map_err(fail)?;
            }
        }
        Ok(())
    }
}

/// Reads every figure from one snapshot, so they agree with each other while sinks write. The
/// rollups hold a few thousand rows (days x countries, products); they are added up here, in
/// 128 bits, rather than by SQLite's `SUM()`.
///
/// # Errors
/// The SQLite error as [`StoreError::sqlite`]; [`StoreError::Aggregate`] for a figure beyond what
/// an exact decimal holds.
pub(super) fn summary(
    conn: &Connection,
    path: &Path,
    range: DayRange,
) -> Result<SalesSummary, StoreError> {
    let fail = |e: rusqlite::Error| StoreError::sqlite(path, &e);
    let tx = conn.unchecked_transaction().map_err(fail)?;
    let (first_day, last_day) = range.day_bounds();
    let (mut lines, mut cancellation_lines, mut revenue) = (0i128, 0i128, 0i128);
    let mut by_country: HashMap<String, i128> = HashMap::new();
    let mut by_day: BTreeMap<String, i128> = BTreeMap::new();
    let mut by_month: BTreeMap<String, i128> = BTreeMap::new();
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT day, country, lines, cancellation_lines, revenue_micros
                 FROM sales_daily_sums WHERE day >= ?1 AND day <= ?2",
            )
            .map_err(fail)?;
        let mut rows = stmt.query(params![first_day, last_day]).map_err(fail)?;
        while let Some(r) = rows.next().map_err(fail)? {
            let day: String = r.get(0).map_err(fail)?;
            let country: String = r.get(1).map_err(fail)?;
            let n: i64 = r.get(2).map_err(fail)?;
            let c: i64 = r.get(3).map_err(fail)?;
            let micros = sum::from_sql(r, 4).map_err(fail)?;
            lines += i128::from(n);
            cancellation_lines += i128::from(c);
            revenue = sum::add(revenue, micros, "revenue")?;
            let month = day.get(..7).unwrap_or(&day).to_owned();
            for (total, what) in [
                (
                    by_country.entry(country).or_default(),
                    "revenue of a country",
                ),
                (by_day.entry(day).or_default(), "revenue of a day"),
                (by_month.entry(month).or_default(), "revenue of a month"),
            ] {
                *total = sum::add(*total, micros, what)?;
            }
        }
    }
    let (invoices, customers, mut products) = if range.is_all() {
        let (invoices, customers) = tx
            .query_row(
                "SELECT COUNT(*), COUNT(DISTINCT customer_id) FROM sales_invoices",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .map_err(fail)?;
        let mut stmt = tx
            .prepare_cached(
                "SELECT stock_code, description, quantity, revenue_micros FROM sales_product_sums",
            )
            .map_err(fail)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    sum::from_sql(r, 2)?,
                    sum::from_sql(r, 3)?,
                ))
            })
            .map_err(fail)?;
        let products = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(fail)?;
        (invoices as u64, customers as u64, products)
    } else {
        in_range(&tx, path, range)?
    };
    products.sort_by(|a, b| b.3.cmp(&a.3).then_with(|| a.0.cmp(&b.0)));
    let top_products = products
        .into_iter()
        .take(TOP_PRODUCTS)
        .map(|(stock_code, description, quantity, micros)| {
            Ok(ProductRevenue {
                stock_code,
                description,
                quantity,
                revenue: sum::micros_to_money(micros, "revenue of a product")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let money = |pairs: Vec<(String, i128)>, what: &str| {
        pairs
            .into_iter()
            .map(|(k, v)| Ok((k, sum::micros_to_money(v, what)?)))
            .collect::<Result<Vec<(String, Money)>, StoreError>>()
    };
    let mut by_country: Vec<(String, i128)> = by_country.into_iter().collect();
    by_country.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let count = |n: i128| u64::try_from(n).unwrap_or(0);
    Ok(SalesSummary {
        lines: count(lines),
        invoices,
        customers,
        revenue: sum::micros_to_money(revenue, "revenue")?,
        cancellation_lines: count(cancellation_lines),
        by_country: money(by_country, "revenue of a country")?,
        by_day: money(by_day.into_iter().collect(), "revenue of a day")?,
        by_month: money(by_month.into_iter().collect(), "revenue of a month")?,
        top_products,
        from: range.from,
        to: range.to,
    })
}

/// Products sold in a part of the time: (stock code, latest description, quantity, revenue).
type ProductSums = Vec<(String, Option<String>, i128, i128)>;

/// Invoices, customers and product sums of the lines of `range`, read from `sales` through its
/// `invoice_date` index (the rollups have no date for these). A range of a few months reads a
/// few hundred thousand rows at most: fine for a person filtering the dashboard.
fn in_range(
    tx: &Connection,
    path: &Path,
    range: DayRange,
) -> Result<(u64, u64, ProductSums), StoreError> {
    let fail = |e: rusqlite::Error| StoreError::sqlite(path, &e);
    let (low, high) = range.date_bounds();
    let mut stmt = tx
        .prepare_cached(
            "SELECT invoice_no, customer_id, stock_code, description, quantity, line_total_micros
             FROM sales WHERE invoice_date >= ?1 AND invoice_date < ?2",
        )
        .map_err(fail)?;
    let mut rows = stmt.query(params![low, high]).map_err(fail)?;
    let mut invoices = std::collections::HashSet::new();
    let mut customers = std::collections::HashSet::new();
    let mut products: HashMap<String, (Option<String>, i128, i128)> = HashMap::new();
    while let Some(r) = rows.next().map_err(fail)? {
        let invoice: String = r.get(0).map_err(fail)?;
        invoices.insert(invoice);
        if let Some(c) = r.get::<_, Option<i64>>(1).map_err(fail)? {
            customers.insert(c);
        }
        let code: String = r.get(2).map_err(fail)?;
        let description: Option<String> = r.get(3).map_err(fail)?;
        let quantity: i64 = r.get(4).map_err(fail)?;
        let micros: i64 = r.get(5).map_err(fail)?;
        let p = products.entry(code).or_default();
        if description.is_some() {
            p.0 = description;
        }
        p.1 = sum::add(p.1, i128::from(quantity), "a product's quantity")?;
        p.2 = sum::add(p.2, i128::from(micros), "a product's revenue")?;
    }
    let products = products
        .into_iter()
        .map(|(code, (description, quantity, micros))| (code, description, quantity, micros))
        .collect();
    Ok((invoices.len() as u64, customers.len() as u64, products))
}

/// The `limit` customers with the largest net revenue in `range` (cancellations subtract), read
/// from `sales`: lines without a customer id are left out.
///
/// # Errors
/// As [`summary`].
pub(super) fn top_customers(
    conn: &Connection,
    path: &Path,
    range: DayRange,
    limit: usize,
) -> Result<Vec<CustomerRevenue>, StoreError> {
    let fail = |e: rusqlite::Error| StoreError::sqlite(path, &e);
    let (low, high) = range.date_bounds();
    let mut stmt = conn
        .prepare_cached(
            "SELECT customer_id, invoice_no, line_total_micros FROM sales
             WHERE invoice_date >= ?1 AND invoice_date < ?2 AND customer_id IS NOT NULL",
        )
        .map_err(fail)?;
    let mut rows = stmt.query(params![low, high]).map_err(fail)?;
    let mut by_customer: HashMap<i64, (std::collections::HashSet<String>, u64, i128)> =
        HashMap::new();
    while let Some(r) = rows.next().map_err(fail)? {
        let customer: i64 = r.get(0).map_err(fail)?;
        let invoice: String = r.get(1).map_err(fail)?;
        let micros: i64 = r.get(2).map_err(fail)?;
        let c = by_customer.entry(customer).or_default();
        c.0.insert(invoice);
        c.1 += 1;
        c.2 = sum::add(c.2, i128::from(micros), "a customer's revenue")?;
    }
    let mut customers: Vec<_> = by_customer.into_iter().collect();
    customers.sort_by(|a, b| b.1 .2.cmp(&a.1 .2).then_with(|| a.0.cmp(&b.0)));
    customers
        .into_iter()
        .take(limit)
        .map(|(customer_id, (invoices, lines, micros))| {
            Ok(CustomerRevenue {
                customer_id: u64::try_from(customer_id).unwrap_or_default(),
                invoices: invoices.len() as u64,
                lines,
                revenue: sum::micros_to_money(micros, "a customer's revenue")?,
            })
        })
        .collect()
}
