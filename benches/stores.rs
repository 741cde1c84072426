//! Throughput of the embedded operational store and warehouse, and the latency of their queries.
//!
//! Inserts 541,909 synthetic lines shaped like the Online Retail dataset (21 lines per invoice, a
//! quarter without customer, 38 countries, ~4,000 products, a year of dates) in batches of 1,000
//! into fresh SQLite files, three times per store, and prints the median lines/s; then times
//! `invoice()`, `customer_invoices()` and `summary()` on the filled stores.
//!
//! `cargo bench --bench stores` (set `BENCH_LINES` for another size).

use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use shopstream::model::{IngestedLine, InvoiceLine};
use shopstream::store::operational::sqlite::SqliteOperationalStore;
use shopstream::store::warehouse::sqlite::SqliteWarehouse;
use shopstream::store::{OperationalStore, Warehouse};

const LINES_PER_INVOICE: usize = 21;
const BATCH: usize = 1_000;
const RUNS: usize = 3;

fn synthetic_lines(n: usize) -> Vec<IngestedLine> {
    let mut rng = ChaCha8Rng::seed_from_u64(541_909);
    let start = NaiveDate::from_ymd_opt(2010, 12, 1)
        .unwrap()
        .and_hms_opt(8, 0, 0)
        .unwrap();
    let countries = (0..38).map(|c| format!("Country {c}")).collect::<Vec<_>>();
    let ingested_at = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
    let mut lines = Vec::with_capacity(n);
    let invoices = n.div_ceil(LINES_PER_INVOICE);
    for i in 0..invoices {
        let cancel = rng.gen_bool(0.02);
        let invoice_no = format!("{}{}", if cancel { "C" } else { "" }, 536_365 + i);
        let when = start + chrono::Duration::minutes((i * 525_600 / invoices) as i64);
        let customer = rng
            .gen_bool(0.75)
            .then(|| 12_346 + rng.gen_range(0..4_372u64));
        // Nine invoices in ten from the home country, as in the dataset.
        let spread = if rng.gen_bool(0.9) {
            1
        } else {
            countries.len()
        };
        let country = &countries[rng.gen_range(0..spread)];
        for l in 0..LINES_PER_INVOICE.min(n - lines.len()) {
            let product = rng.gen_range(0..4_000u32);
            let quantity = rng.gen_range(1..=24) * if cancel { -1 } else { 1 };
            lines.push(IngestedLine {
                line: InvoiceLine::new(
                    invoice_no.as_str().into(),
                    format!("{}{}", 20_000 + product, ['A', 'B', 'C'][l % 3]).into(),
                    Some(format!("PRODUCT NUMBER {product} IN A RED BOX").into()),
                    quantity,
                    when,
                    Decimal::new(rng.gen_range(10..5_000), 2),
                    customer,
                    country.as_str().into(),
                    Some(l as u64),
                    0,
                ),
                store_id: "demo".into(),
                ingested_at,
            });
        }
    }
    lines
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

fn main() {
    let n = std::env::var("BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(541_909);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lines = synthetic_lines(n);
    println!("{n} lines, batches of {BATCH}, median of {RUNS} runs on fresh files");

    let mut ops_rates = Vec::new();
    let mut wh_rates = Vec::new();
    // The stores take lines borrowed one by one, as a sink's unit holds them.
    let lines: Vec<&_> = lines.iter().collect();
    let mut kept = None;
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let ops = SqliteOperationalStore::open(&dir.path().join("operational.sqlite")).unwrap();
        let wh = SqliteWarehouse::open(&dir.path().join("warehouse.sqlite")).unwrap();
        let ((), t) = time(|| {
            rt.block_on(async {
                for batch in lines.chunks(BATCH) {
                    ops.upsert(batch).await.unwrap();
                }
            })
        });
        ops_rates.push(n as f64 / t.as_secs_f64());
        let ((), t) = time(|| {
            rt.block_on(async {
                for batch in lines.chunks(BATCH) {
                    wh.insert(batch).await.unwrap();
                }
            })
        });
        wh_rates.push(n as f64 / t.as_secs_f64());
        kept = Some((dir, ops, wh));
    }
    println!(
        "operational upsert: {:>9.0} lines/s   (runs: {:?})",
        median(ops_rates.clone()),
        ops_rates.iter().map(|r| *r as u64).collect::<Vec<_>>()
    );
    println!(
        "warehouse insert:   {:>9.0} lines/s   (runs: {:?})",
        median(wh_rates.clone()),
        wh_rates.iter().map(|r| *r as u64).collect::<Vec<_>>()
    );

    let (_dir, ops, wh) = kept.unwrap();
    let probe = &lines[n / 2].line;
    let customer = lines
        .iter()
        .find_map(|l| l.line.customer_id)
        .expect("some lines have a customer");
    rt.block_on(async {
        let (invoice, t) = time_async(ops.invoice(&probe.invoice_no)).await;
        let lines_of = invoice.unwrap().unwrap().lines.len();
        println!("invoice():           {t:>10.2?} ({lines_of} lines)");
        let (list, t) = time_async(ops.customer_invoices(customer, None, None)).await;
        println!(
            "customer_invoices(): {t:>10.2?} ({} invoices)",
            list.unwrap().len()
        );
        let (summary, t) = time_async(wh.summary()).await;
        let s = summary.unwrap().unwrap();
        println!(
            "summary():           {t:>10.2?} ({} lines, {} invoices, {} days, revenue {})",
            s.lines,
            s.invoices,
            s.by_day.len(),
            s.revenue
        );
        let (totals, t) = time_async(ops.totals()).await;
        println!("totals():            {t:>10.2?} ({:?})", totals.unwrap());
    });
}

async fn time_async<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let out = f.await;
    (out, t.elapsed())
}
