//! The embedded operational store and warehouse on real SQLite files in temp dirs.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use shopstream::model::{IngestedLine, InvoiceLine, Money};
use shopstream::sqlite::SqliteOptions;
use shopstream::store::operational::sqlite::SqliteOperationalStore;
use shopstream::store::warehouse::sqlite::{SqliteWarehouse, SOURCE_IMPORT};
use shopstream::store::warehouse::{BulkFile, FileLoadStart};
use shopstream::store::{OperationalStore, StoreError, Warehouse};

/// The lines as the stores take them: borrowed one by one.
fn refs(lines: &[IngestedLine]) -> Vec<&IngestedLine> {
    lines.iter().collect()
}

fn date(day: u32, hour: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2010, 12, day)
        .unwrap()
        .and_hms_opt(hour, 30, 0)
        .unwrap()
}

fn money(s: &str) -> Money {
    Decimal::from_str(s).unwrap()
}

/// A line numbered by its client, so its id stays the same when its content changes.
#[allow(clippy::too_many_arguments)]
fn line(
    invoice: &str,
    line_no: u64,
    stock: &str,
    quantity: i64,
    price: &str,
    when: NaiveDateTime,
    customer: Option<u64>,
    country: &str,
) -> IngestedLine {
    IngestedLine {
        line: InvoiceLine::new(
            invoice.into(),
            stock.into(),
            Some(format!("PRODUCT {stock}").into()),
            quantity,
            when,
            money(price),
            customer,
            country.into(),
            Some(line_no),
            0,
        ),
        store_id: "demo".into(),
        ingested_at: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(123_456_789),
    }
}

/// `n` lines of invoice `invoice`, 2 units at 1.25 each.
fn invoice_lines(invoice: &str, n: u64) -> Vec<IngestedLine> {
    (0..n)
        .map(|i| {
            line(
                invoice,
                i,
                "85123A",
                2,
                "1.25",
                date(1, 8),
                Some(17850),
                "United Kingdom",
            )
        })
        .collect()
}

fn stores(dir: &tempfile::TempDir) -> (SqliteOperationalStore, SqliteWarehouse) {
    (
        SqliteOperationalStore::open(&dir.path().join("data/operational.sqlite")).unwrap(),
        SqliteWarehouse::open(&dir.path().join("data/warehouse.sqlite")).unwrap(),
    )
}

#[tokio::test]
async fn upserts_are_idempotent_and_both_stores_keep_the_first_version() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, wh) = stores(&dir);
    let lines = invoice_lines("536365", 3);
    for _ in 0..2 {
        ops.upsert(&refs(&lines)).await.unwrap();
        wh.insert(&refs(&lines)).await.unwrap();
    }
    assert_eq!(ops.totals().await.unwrap(), (3, money("7.50")));
    let summary = wh.summary().await.unwrap().unwrap();
    assert_eq!((summary.lines, summary.revenue), (3, money("7.5")));
    assert_eq!(
        wh.insert_with_source(&lines, SOURCE_IMPORT).await.unwrap(),
        0
    );

    // The same line id with a corrected quantity: the warehouse keeps the row it has.
    let mut corrected = lines[1].clone();
    corrected.line.quantity = 10;
    ops.upsert(&refs(&[corrected.clone()])).await.unwrap();
    wh.insert(&refs(&[corrected.clone()])).await.unwrap();
    // A line id is written once, first version kept (docs/line-identity.md): the operational
    // store keeps the row it has too.
    assert_eq!(ops.totals().await.unwrap(), (3, money("7.50")));
    let invoice = ops.invoice("536365").await.unwrap().unwrap();
    assert_eq!(invoice.lines[1], lines[1], "the first version stays");
    assert_eq!(wh.summary().await.unwrap().unwrap().revenue, money("7.5"));
}

#[tokio::test]
async fn money_is_exact_with_zero_negative_and_cancellations() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, wh) = stores(&dir);
    let uk = "United Kingdom";
    let lines = vec![
        line("536400", 0, "A", 1, "0.1", date(2, 9), Some(1), uk),
        line("536400", 1, "B", 1, "0.1", date(2, 9), Some(1), uk),
        line("536400", 2, "C", 1, "0.1", date(2, 9), Some(1), uk),
        line("536400", 3, "POST", 3, "0", date(2, 9), Some(1), uk),
        line("A536401", 0, "B", 1, "-11062.06", date(2, 10), None, uk),
        line("C536402", 0, "A", -2, "0.1", date(3, 9), Some(1), uk),
        line(
            "536403",
            0,
            "D",
            7,
            "123456.123456",
            date(3, 9),
            Some(2),
            "France",
        ),
    ];
    ops.upsert(&refs(&lines)).await.unwrap();
    wh.insert(&refs(&lines)).await.unwrap();
    let expected: Money = lines.iter().map(|l| l.line.line_total()).sum();
    assert_eq!(
        expected,
        money("-11062.06") + money("0.1") + money("864192.864192")
    );
    assert_eq!(ops.totals().await.unwrap(), (7, expected));

    let invoice = ops.invoice("536400").await.unwrap().unwrap();
    assert_eq!(invoice.total.to_string(), "0.3");
    let cancellation = ops.invoice("C536402").await.unwrap().unwrap();
    assert!(cancellation.is_cancellation);
    assert_eq!(cancellation.total, money("-0.2"));

    let s = wh.summary().await.unwrap().unwrap();
    assert_eq!(s.revenue, expected);
    assert_eq!(
        (s.lines, s.invoices, s.customers, s.cancellation_lines),
        (7, 4, 2, 1)
    );
    assert_eq!(
        s.by_country,
        vec![
            ("France".to_owned(), money("864192.864192")),
            ("United Kingdom".to_owned(), money("-11061.96")),
        ]
    );
    assert_eq!(
        s.by_day,
        vec![
            ("2010-12-02".to_owned(), money("-11061.76")),
            ("2010-12-03".to_owned(), money("864192.664192")),
        ]
    );
    assert_eq!(s.by_month, vec![("2010-12".to_owned(), expected)]);
    assert_eq!(s.top_products[0].stock_code, "D");
    assert_eq!(s.top_products[0].quantity, 7);
    // A: 0.1 sold, 0.2 cancelled. B: 0.1 sold, -11062.06 adjusted.
    let a = s.top_products.iter().find(|p| p.stock_code == "A").unwrap();
    assert_eq!((a.quantity, a.revenue), (-1, money("-0.1")));
    assert_eq!(s.top_products.last().unwrap().stock_code, "B");
}

#[tokio::test]
async fn amounts_that_cannot_be_summed_exactly_reject_the_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, wh) = stores(&dir);
    let mut lines = invoice_lines("536500", 2);
    lines.push(line(
        "536500",
        9,
        "X",
        1,
        "0.0000001",
        date(1, 8),
        None,
        "Spain",
    ));
    let bad = lines[2].line.line_id.to_string();
    match ops.upsert(&refs(&lines)).await {
        Err(StoreError::Rejected { line_id, reason }) => {
            assert_eq!(line_id, bad);
            assert!(reason.contains("millionths"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    match wh.insert(&refs(&lines)).await {
        Err(e @ StoreError::Rejected { .. }) => assert!(!e.is_retriable()),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(ops.totals().await.unwrap().0, 0);
    assert_eq!(wh.summary().await.unwrap().unwrap().lines, 0);
}

#[tokio::test]
async fn looks_up_invoices_and_customers_within_date_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, _) = stores(&dir);
    let uk = "United Kingdom";
    let lines = vec![
        line("536367", 0, "B", 1, "3", date(3, 9), Some(7), uk),
        line("536365", 0, "A", 2, "1.5", date(1, 8), Some(7), uk),
        line("536365", 1, "B", 1, "2", date(1, 8), Some(7), uk),
        line("C536366", 0, "A", -1, "1.5", date(2, 9), Some(7), uk),
        line("536368", 0, "A", 1, "1", date(2, 9), Some(8), "Norway"),
        line("536369", 0, "A", 1, "1", date(2, 9), None, uk),
    ];
    ops.upsert(&refs(&lines)).await.unwrap();

    assert_eq!(ops.invoice("999999").await.unwrap(), None);
    let inv = ops.invoice("536365").await.unwrap().unwrap();
    assert_eq!(inv.lines, lines[1..3].to_vec(), "lines in insertion order");
    assert_eq!((inv.customer_id, inv.total), (Some(7), money("5")));
    assert_eq!(inv.invoice_date, date(1, 8));
    assert_eq!(
        ops.invoice("536369").await.unwrap().unwrap().customer_id,
        None
    );

    let all = ops.customer_invoices(7, None, None).await.unwrap();
    let numbers: Vec<_> = all.iter().map(|s| s.invoice_no.as_str()).collect();
    assert_eq!(numbers, ["536365", "C536366", "536367"], "oldest first");
    assert_eq!((all[0].line_count, all[0].total), (2, money("5")));
    assert!(all[1].is_cancellation && all[1].total == money("-1.5"));
    // `from` is inclusive, `to` exclusive.
    let middle = ops
        .customer_invoices(7, Some(date(2, 9)), Some(date(3, 9)))
        .await
        .unwrap();
    assert_eq!(middle.len(), 1);
    assert_eq!(middle[0].invoice_no, "C536366");
    assert!(ops
        .customer_invoices(9, None, None)
        .await
        .unwrap()
        .is_empty());
    assert!(ops
        .customer_invoices(u64::MAX, None, None)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing_and_reads_run_during_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, wh) = stores(&dir);
    let ops: Arc<dyn OperationalStore> = Arc::new(ops);
    let wh: Arc<dyn Warehouse> = Arc::new(wh);
    let mut writers = Vec::new();
    for w in 0..8 {
        let (ops, wh) = (ops.clone(), wh.clone());
        writers.push(tokio::spawn(async move {
            for b in 0..25 {
                let lines = invoice_lines(&format!("{}", 600_000 + w * 100 + b), 40);
                let lines = refs(&lines);
                let (o, h) = tokio::join!(ops.upsert(&lines), wh.insert(&lines));
                o.unwrap();
                h.unwrap();
            }
        }));
    }
    let mut reads = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        let (totals, summary, invoice) =
            tokio::join!(ops.totals(), wh.summary(), ops.invoice("600000"));
        let (count, sum) = totals.unwrap();
        assert_eq!(
            sum,
            Money::from(count) * money("2.5"),
            "a read sees whole batches"
        );
        assert_eq!(summary.unwrap().unwrap().lines % 40, 0);
        if let Some(inv) = invoice.unwrap() {
            assert_eq!(inv.lines.len(), 40);
        }
        reads += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(reads > 0);
    assert_eq!(ops.totals().await.unwrap(), (8000, money("20000")));
    let s = wh.summary().await.unwrap().unwrap();
    assert_eq!(
        (s.lines, s.invoices, s.revenue),
        (8000, 200, money("20000"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_file_gives_the_retriable_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(100),
        readers: 1,
    };
    let ops_path = dir.path().join("operational.sqlite");
    let wh_path = dir.path().join("warehouse.sqlite");
    let ops = SqliteOperationalStore::open_with(&ops_path, &options).unwrap();
    let wh = SqliteWarehouse::open_with(&wh_path, &options).unwrap();
    let lines = invoice_lines("536365", 2);

    let ops_lock = rusqlite::Connection::open(&ops_path).unwrap();
    ops_lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let wh_lock = rusqlite::Connection::open(&wh_path).unwrap();
    wh_lock.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let e = ops.upsert(&refs(&lines)).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable(_)) && e.is_retriable(),
        "{e}"
    );
    assert!(e.to_string().contains("operational.sqlite"), "{e}");
    // A server restarted while another process holds the store locked still starts: opening
    // the file takes no write lock (its writes wait, as above).
    let reopened = SqliteOperationalStore::open_with(&ops_path, &options)
        .expect("a locked operational store opens");
    drop(reopened);
    let reopened =
        SqliteWarehouse::open_with(&wh_path, &options).expect("a locked warehouse opens");
    drop(reopened);
    let e = wh.insert(&refs(&lines)).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable(_)) && e.is_retriable(),
        "{e}"
    );

    // Once the lock goes, the retry succeeds.
    ops_lock.execute_batch("COMMIT").unwrap();
    wh_lock.execute_batch("COMMIT").unwrap();
    ops.upsert(&refs(&lines)).await.unwrap();
    wh.insert(&refs(&lines)).await.unwrap();
    assert_eq!(ops.totals().await.unwrap().0, 2);
}

#[tokio::test]
async fn data_survives_close_and_reopen_and_rollups_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = invoice_lines("536365", 3);
    lines.push(line("536366", 0, "X", 1, "2.550", date(5, 9), None, "EIRE"));
    let before = {
        let (ops, wh) = stores(&dir);
        ops.upsert(&refs(&lines)).await.unwrap();
        wh.insert(&refs(&lines)).await.unwrap();
        wh.summary().await.unwrap().unwrap()
    };
    let (ops, wh) = stores(&dir);
    let invoice = ops.invoice("536365").await.unwrap().unwrap();
    assert_eq!(
        invoice.lines,
        lines[..3].to_vec(),
        "every field, ingested_at to the ns"
    );
    let eire = ops.invoice("536366").await.unwrap().unwrap();
    assert_eq!(
        eire.lines[0].line.unit_price.to_string(),
        "2.550",
        "price text as sent"
    );
    assert_eq!(wh.summary().await.unwrap().unwrap(), before);
    drop(wh);

    // A `sales` table filled without the rollups (e.g. by hand with SALES_DDL): they are rebuilt.
    let path = dir.path().join("data/warehouse.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DELETE FROM sales_daily_sums; DELETE FROM sales_product_sums;
             DELETE FROM sales_invoices;",
        )
        .unwrap();
    let wh = SqliteWarehouse::open(&path).unwrap();
    assert_eq!(wh.summary().await.unwrap().unwrap(), before);
    assert!(wh.health().await.is_ok() && ops.health().await.is_ok());
}

/// Extreme accepted lines (±1,000,000 units at ±1,000,000 a unit, 10^18 millionths each) add up
/// far past an `i64` in every sum the stores keep: the rollups, the summary, an invoice's total, a
/// customer's invoices and the reconciliation totals all read back exactly.
#[tokio::test]
async fn sums_of_extreme_lines_pass_64_bits_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, wh) = stores(&dir);
    let uk = "United Kingdom";
    let mut lines = Vec::new();
    for i in 0..40 {
        lines.push(line(
            "536500",
            i,
            "BIG",
            1_000_000,
            "1000000",
            date(1 + (i % 3) as u32, 9),
            Some(99),
            uk,
        ));
    }
    lines.push(line(
        "C536501",
        0,
        "BIG",
        -1_000_000,
        "1000000",
        date(4, 9),
        Some(99),
        uk,
    ));
    lines.push(line(
        "536502",
        0,
        "SMALL",
        3,
        "0.000001",
        date(4, 9),
        Some(99),
        "France",
    ));
    for chunk in lines.chunks(7) {
        ops.upsert(&refs(chunk)).await.unwrap();
        wh.insert(&refs(chunk)).await.unwrap();
    }
    // 39 net lines of 10^12 pounds plus 3 millionths: past i64::MAX millionths fourfold.
    let expected = money("39000000000000.000003");
    assert_eq!(ops.totals().await.unwrap(), (42, expected));
    let s = wh.summary().await.unwrap().unwrap();
    assert_eq!(s.revenue, expected);
    assert_eq!(
        (s.lines, s.cancellation_lines, s.invoices, s.customers),
        (42, 1, 3, 1)
    );
    let day_of = |d: &str| s.by_day.iter().find(|(k, _)| k == d).map(|(_, v)| *v);
    assert_eq!(day_of("2010-12-01"), Some(money("14000000000000")));
    assert_eq!(day_of("2010-12-04"), Some(money("-999999999999.999997")));
    assert_eq!(s.by_month, vec![("2010-12".to_owned(), expected)]);
    assert_eq!(s.top_products[0].stock_code, "BIG");
    assert_eq!(s.top_products[0].quantity, 39_000_000);
    assert_eq!(s.top_products[0].revenue, money("39000000000000"));
    assert_eq!(
        ops.invoice("536500").await.unwrap().unwrap().total,
        money("40000000000000")
    );
    let invoices = ops.customer_invoices(99, None, None).await.unwrap();
    let totals: Vec<(String, Money)> = invoices
        .iter()
        .map(|i| (i.invoice_no.clone(), i.total))
        .collect();
    assert_eq!(
        totals,
        vec![
            ("536500".to_owned(), money("40000000000000")),
            ("536502".to_owned(), money("0.000003")),
            ("C536501".to_owned(), money("-1000000000000")),
        ]
    );
    assert_eq!(invoices[0].line_count, 40);
    // A reopened file reads the same sums back.
    drop(wh);
    let wh = SqliteWarehouse::open(&dir.path().join("data/warehouse.sqlite")).unwrap();
    assert_eq!(wh.summary().await.unwrap().unwrap(), s);
}

/// Files written before rollup sums were 128-bit have `sales_daily` and `sales_products` with
/// `i64` sums under a `CHECK`: opening one moves their rows into the new tables, and sums go on
/// past 64 bits from there.
#[tokio::test]
async fn rollups_of_64_bit_files_move_into_128_bit_sums() {
    let dir = tempfile::tempdir().unwrap();
    let (_, wh) = stores(&dir);
    wh.insert(&refs(&invoice_lines("536365", 5))).await.unwrap();
    let before = wh.summary().await.unwrap().unwrap();
    drop(wh);
    let path = dir.path().join("data/warehouse.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE sales_daily (
                day TEXT NOT NULL, country TEXT NOT NULL, lines INTEGER NOT NULL,
                cancellation_lines INTEGER NOT NULL,
                revenue_micros INTEGER NOT NULL CHECK (typeof(revenue_micros) = 'integer'),
                PRIMARY KEY (day, country)) WITHOUT ROWID;
             CREATE TABLE sales_products (
                stock_code TEXT PRIMARY KEY, description TEXT,
                quantity INTEGER NOT NULL CHECK (typeof(quantity) = 'integer'),
                lines INTEGER NOT NULL,
                revenue_micros INTEGER NOT NULL CHECK (typeof(revenue_micros) = 'integer')
             ) WITHOUT ROWID;
             INSERT INTO sales_daily SELECT day, country, lines, cancellation_lines,
                CAST(revenue_micros AS INTEGER) FROM sales_daily_sums;
             INSERT INTO sales_products SELECT stock_code, description, CAST(quantity AS INTEGER),
                lines, CAST(revenue_micros AS INTEGER) FROM sales_product_sums;
             DROP TABLE sales_daily_sums; DROP TABLE sales_product_sums;",
        )
        .unwrap();
    let wh = SqliteWarehouse::open(&path).unwrap();
    assert_eq!(wh.summary().await.unwrap().unwrap(), before);
    let old_tables: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('sales_daily', 'sales_products')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old_tables, 0);
    let big: Vec<_> = (0..20)
        .map(|i| {
            line(
                "536366",
                i,
                "85123A",
                1_000_000,
                "1000000",
                date(1, 9),
                Some(17850),
                "United Kingdom",
            )
        })
        .collect();
    wh.insert(&refs(&big)).await.unwrap();
    let s = wh.summary().await.unwrap().unwrap();
    assert_eq!(s.revenue, before.revenue + money("20000000000000"));
    assert_eq!(s.top_products[0].quantity, 20_000_010);
}

#[tokio::test]
async fn the_importer_writes_lines_and_its_ledger_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (_, wh) = stores(&dir);
    let lines = invoice_lines("536365", 5);
    let file = BulkFile {
        key: "/drop/sales.csv".into(),
        size: 100,
        change_token: "v1".into(),
        stamp: String::new(),
    };
    let FileLoadStart::Loading(mut load) = wh.load_file(&file, false).await.unwrap() else {
        panic!("a file the ledger does not know is loaded");
    };
    // A load that stops before its ledger row commits (a failing ledger write, too many rejected
    // rows) rolls the lines back too.
    tokio::task::spawn_blocking(move || {
        let added = load.insert(&lines).unwrap();
        assert_eq!(added, 5);
        drop(load);
    })
    .await
    .unwrap();
    assert_eq!(wh.summary().await.unwrap().unwrap().lines, 0);
}

/// Files written before the stores keyed lines by `(invoice_no, line_id)` had `line_id TEXT
/// PRIMARY KEY` (and the indexes below). They open, gain the new key's index, and keep taking
/// upserts and inserts with each line stored once and the newest content kept.
#[tokio::test]
async fn files_keyed_by_line_id_alone_open_and_keep_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let columns = "
        invoice_no TEXT NOT NULL, stock_code TEXT NOT NULL, description TEXT,
        quantity INTEGER NOT NULL, invoice_date TEXT NOT NULL, unit_price TEXT NOT NULL";
    rusqlite::Connection::open(dir.path().join("data/operational.sqlite"))
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE invoice_lines (line_id TEXT PRIMARY KEY, {columns},
                unit_price_micros INTEGER NOT NULL, line_total TEXT NOT NULL,
                line_total_micros INTEGER NOT NULL, customer_id INTEGER, country TEXT NOT NULL,
                is_cancellation INTEGER NOT NULL, store_id TEXT NOT NULL, ingested_at TEXT NOT NULL);
             CREATE INDEX invoice_lines_by_invoice ON invoice_lines (invoice_no, invoice_date);"
        ))
        .unwrap();
    rusqlite::Connection::open(dir.path().join("data/warehouse.sqlite"))
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE sales (line_id TEXT PRIMARY KEY, {columns}, line_total TEXT NOT NULL,
                line_total_micros INTEGER NOT NULL, customer_id INTEGER, country TEXT NOT NULL,
                is_cancellation INTEGER NOT NULL, store_id TEXT NOT NULL,
                ingested_at TEXT NOT NULL, source TEXT NOT NULL);
             CREATE INDEX sales_invoice_no ON sales (invoice_no);"
        ))
        .unwrap();

    let (ops, wh) = stores(&dir);
    let lines = invoice_lines("536365", 3);
    for _ in 0..2 {
        ops.upsert(&refs(&lines)).await.unwrap();
        wh.insert(&refs(&lines)).await.unwrap();
    }
    let mut corrected = lines[2].clone();
    corrected.line.quantity = 10;
    ops.upsert(&refs(&[corrected.clone()])).await.unwrap();
    assert_eq!(ops.totals().await.unwrap(), (3, money("7.50")));
    assert_eq!(
        ops.invoice("536365").await.unwrap().unwrap().lines[2],
        lines[2]
    );
    let summary = wh.summary().await.unwrap().unwrap();
    assert_eq!((summary.lines, summary.revenue), (3, money("7.5")));
    for (file, index) in [
        ("operational", "invoice_lines_key"),
        ("warehouse", "sales_key"),
    ] {
        let conn =
            rusqlite::Connection::open(dir.path().join(format!("data/{file}.sqlite"))).unwrap();
        let found: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [index],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(found, 1, "{file} has the index {index}");
    }
}

/// A customer's invoices are found by a row per (customer, date, invoice), not an index entry per
/// line. A file from before, whose only way to a customer's lines was that index, opens with its
/// customers found the same way, and the index gone.
#[tokio::test]
async fn customers_of_a_file_with_an_index_per_line_are_found_after_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/operational.sqlite");
    let uk = "United Kingdom";
    let mut lines = invoice_lines("536365", 3);
    lines.push(line("536366", 0, "A", 1, "2", date(2, 9), Some(7), uk));
    lines.push(line("536367", 0, "A", 1, "2", date(2, 9), None, uk));
    {
        let ops = SqliteOperationalStore::open(&path).unwrap();
        ops.upsert(&refs(&lines)).await.unwrap();
    }
    let db = rusqlite::Connection::open(&path).unwrap();
    let rows = |db: &rusqlite::Connection| -> i64 {
        db.query_row("SELECT count(*) FROM customer_invoices", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(
        rows(&db),
        2,
        "one row per customer and invoice, none without a customer"
    );
    // The file as the version before wrote it.
    db.execute_batch(
        "DELETE FROM customer_invoices;
         CREATE INDEX invoice_lines_by_customer ON invoice_lines (customer_id, invoice_date)
             WHERE customer_id IS NOT NULL;",
    )
    .unwrap();

    let ops = SqliteOperationalStore::open(&path).unwrap();
    assert_eq!(rows(&db), 2);
    let index: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'invoice_lines_by_customer'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 0, "the index per line is dropped");
    let found = ops.customer_invoices(17850, None, None).await.unwrap();
    assert_eq!(
        found
            .iter()
            .map(|s| (s.invoice_no.as_str(), s.line_count))
            .collect::<Vec<_>>(),
        [("536365", 3)]
    );
    let found = ops.customer_invoices(7, None, None).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].invoice_no, "536366");
    // Opening again changes nothing.
    drop(ops);
    SqliteOperationalStore::open(&path).unwrap();
    assert_eq!(rows(&db), 2);
}
