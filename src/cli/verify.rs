//! `shopstream verify`: reconciles what every sink holds against the stream, and against an input
//! file when given, per day of invoice date.
//!
//! Each source (the stream's retained records, the archive objects, the operational store, the
//! warehouse) is read whole into `(invoice_no, line_id) -> total` per day. The expected lines of
//! a day are the union of all sources: a sink that lacks some of them (less its own dead letters,
//! which are accounted separately), or holds one with another total, differs. The stream drops
//! old records by retention, so a stream that holds fewer lines than the sinks is marked
//! `trimmed`, not wrong. The input file is compared by count and revenue only: its line ids
//! depend on how it was sent (docs/line-identity.md).
//!
//! Verify reads what is there: run it when the sinks are caught up (`/v1/status`).

use anyhow::Context;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::app::Backends;
use crate::config::Backend;
use crate::model::{IngestedLine, Money};
use crate::stream::{Position, SinkKind};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The CSV file that was sent: its lines per day are compared by count and revenue.
    #[arg(long, value_name = "FILE.csv")]
    input: Option<PathBuf>,
    /// Prints the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The lines one source holds: per day, `(invoice_no, line_id)` to the line's total.
type Holdings = BTreeMap<chrono::NaiveDate, BTreeMap<(String, String), Money>>;

/// Lines per day and shard, for the sources that know the shard (the stream, the archive).
type ShardLines = BTreeMap<chrono::NaiveDate, BTreeMap<String, u64>>;

/// What one source holds of one day.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
struct Cell {
    lines: u64,
    #[serde(with = "rust_decimal::serde::str")]
    revenue: Money,
    /// BLAKE3 of the sorted `invoice_no/line_id` keys, first 16 hex digits.
    digest: String,
}

impl Cell {
    fn of(lines: Option<&BTreeMap<(String, String), Money>>) -> Cell {
        let mut hasher = blake3::Hasher::new();
        let (mut n, mut revenue) = (0u64, Money::ZERO);
        for ((inv, id), total) in lines.into_iter().flatten() {
            hasher.update(inv.as_bytes());
            hasher.update(b"/");
            hasher.update(id.as_bytes());
            hasher.update(b"\n");
            n += 1;
            revenue += total;
        }
        Cell {
            lines: n,
            revenue: revenue.normalize(),
            digest: hasher.finalize().to_hex()[..16].to_owned(),
        }
    }
}

#[derive(Debug, Serialize)]
struct DayReport {
    day: chrono::NaiveDate,
    /// `None` where the source could not be read (a backend verify cannot scan).
    stream: Option<Cell>,
    archive: Option<Cell>,
    operational: Option<Cell>,
    warehouse: Option<Cell>,
    /// Only with `--input`: count and revenue (its digest is not compared).
    input: Option<Cell>,
    /// Dead-lettered lines of this day per sink, excused from that sink.
    dead_letters: BTreeMap<String, u64>,
    stream_trimmed: bool,
    /// Lines of the day per shard in the stream and in the archive (whose keys name the shard).
    stream_shards: BTreeMap<String, u64>,
    archive_shards: BTreeMap<String, u64>,
    /// One sentence per difference, naming the sink; empty when the day agrees.
    differences: Vec<String>,
}

/// Exits 0 when every source agrees, 1 naming the sink and day that differ, 2 when verify could
/// not run (settings, an unreadable backend or input): a script can tell "differs" from "broken".
pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<()> {
    match verify(config, args) {
        Ok(true) => Ok(()),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Runs the reconciliation and prints it; `Ok(false)` when something differs.
fn verify(config: Option<&Path>, args: Args) -> anyhow::Result<bool> {
    let settings = super::load_settings(config)?;
    super::init_logging(&settings);
    super::require_data_dir(&settings)?;
    let input = match &args.input {
        Some(path) => Some(read_input(path)?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let days = runtime.block_on(async {
        let backends = Backends::open(&settings).await?;
        reconcile(&settings, &backends, input).await
    })?;
    let agree = days.iter().all(|d| d.differences.is_empty());
    if args.json {
        let report = serde_json::json!({ "agree": agree, "total": totals(&days), "days": days });
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&days, args.input.is_some());
    }
    let bad: Vec<&String> = days.iter().flat_map(|d| &d.differences).collect();
    for d in &bad {
        eprintln!("differs: {d}");
    }
    Ok(bad.is_empty())
}

/// The input file's lines per day; ids as the parser makes them (compared by count and revenue
/// only).
fn read_input(path: &Path) -> anyhow::Result<Holdings> {
    let mut body = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut body))
        .with_context(|| format!("cannot read --input {}", path.display()))?;
    let parsed = crate::model::csv::parse_csv(&body, &Default::default())
        .with_context(|| format!("--input {} is not a CSV of invoice lines", path.display()))?;
    let mut held = Holdings::new();
    for (i, line) in parsed.lines.iter().enumerate() {
        // The position keeps rows apart whose parsed ids coincide (identical rows of a file sent
        // without line numbers are distinct lines once replay numbers them).
        held.entry(line.invoice_date.date()).or_default().insert(
            (line.invoice_no.to_string(), format!("{}#{i}", line.line_id)),
            line.line_total(),
        );
    }
    Ok(held)
}

async fn reconcile(
    settings: &crate::config::Settings,
    backends: &Backends,
    input: Option<Holdings>,
) -> anyhow::Result<Vec<DayReport>> {
    eprintln!("verify: reading the stream");
    let (stream, stream_shards) = read_stream(backends).await?;
    eprintln!("verify: reading the archive");
    let (archive, archive_shards) = read_archive(backends, &settings.archive.prefix).await?;
    eprintln!("verify: reading the operational store");
    let operational = backends
        .operational
        .stored_lines()
        .await
        .context("cannot read the operational store")?
        .map(group);
    eprintln!("verify: reading the warehouse");
    let warehouse = match backends
        .warehouse
        .stored_lines()
        .await
        .context("cannot read the warehouse")?
    {
        Some(lines) => Some(group(lines)),
        // Firehose cannot be queried, but a delivery stream made by `aws init` writes its
        // objects into the archive's bucket: those are what the warehouse was sent.
        None if settings.warehouse.backend == Backend::Aws
            && settings.archive.backend == Backend::Aws =>
        {
            Some(read_firehose_output(backends, &settings.warehouse.firehose.prefix).await?)
        }
        None => None,
    };
    eprintln!("verify: reading the dead letters");
    let letters = backends.dead_letters(settings);
    // (sink, day) -> dead-lettered keys.
    let mut dead: BTreeMap<(SinkKind, chrono::NaiveDate), BTreeSet<(String, String)>> =
        BTreeMap::new();
    for meta in letters.list(None).await? {
        let letter = letters.get(&meta.key).await?;
        if let Some(l) = letter.line {
            dead.entry((letter.sink, l.line.invoice_date.date()))
                .or_default()
                .insert((l.line.invoice_no.into(), l.line.line_id.to_string()));
        }
    }

    let sinks: [(SinkKind, Option<&Holdings>); 3] = [
        (SinkKind::Archive, Some(&archive)),
        (SinkKind::Operational, operational.as_ref()),
        (SinkKind::Warehouse, warehouse.as_ref()),
    ];
    let mut all_days: BTreeSet<chrono::NaiveDate> = stream.keys().copied().collect();
    for (_, held) in &sinks {
        all_days.extend(held.iter().flat_map(|h| h.keys().copied()));
    }
    if let Some(i) = &input {
        all_days.extend(i.keys().copied());
    }
    let mut reports = Vec::new();
    for day in all_days {
        // Every line any source holds of this day, with its total.
        let mut expected: BTreeMap<(String, String), Money> = BTreeMap::new();
        for held in [Some(&stream)].into_iter().chain(sinks.iter().map(|s| s.1)) {
            if let Some(lines) = held.and_then(|h| h.get(&day)) {
                for (k, v) in lines {
                    expected.entry(k.clone()).or_insert(*v);
                }
            }
        }
        let mut differences = Vec::new();
        let mut dead_letters = BTreeMap::new();
        for (kind, held) in &sinks {
            let Some(held) = held else { continue };
            let lines = held.get(&day);
            let excused = dead.get(&(*kind, day));
            if let Some(e) = excused {
                dead_letters.insert(kind.to_string(), e.len() as u64);
            }
            let missing = expected
                .keys()
                .filter(|k| !lines.is_some_and(|l| l.contains_key(*k)))
                .filter(|k| !excused.is_some_and(|e| e.contains(*k)))
                .count();
            let other_total = lines
                .into_iter()
                .flatten()
                .filter(|(k, v)| expected.get(*k) != Some(*v))
                .count();
            if missing > 0 {
                differences.push(format!(
                    "{kind} {day}: {missing} lines missing that other sources hold"
                ));
            }
            if other_total > 0 {
                differences.push(format!(
                    "{kind} {day}: {other_total} lines with another total than other sources"
                ));
            }
        }
        let stream_cell = Cell::of(stream.get(&day));
        let stream_trimmed = (stream_cell.lines as usize) < expected.len();
        let shards_of = |s: &ShardLines| s.get(&day).cloned().unwrap_or_default();
        let (in_stream, in_archive) = (shards_of(&stream_shards), shards_of(&archive_shards));
        // An invoice's lines are on one shard, and the archive files them under the shard they
        // were read from: with the whole day in the stream, the shards must match one for one.
        if !stream_trimmed {
            let shards: BTreeSet<&String> = in_stream.keys().chain(in_archive.keys()).collect();
            for shard in shards {
                let (a, st) = (
                    in_archive.get(shard).copied().unwrap_or(0),
                    in_stream.get(shard).copied().unwrap_or(0),
                );
                if a != st {
                    differences.push(format!(
                        "archive {day} shard {shard}: {a} lines, the stream holds {st}"
                    ));
                }
            }
        }
        let input_cell = input.as_ref().map(|i| Cell::of(i.get(&day)));
        if let Some(ic) = &input_cell {
            for (kind, held) in &sinks {
                let Some(held) = held else { continue };
                let c = Cell::of(held.get(&day));
                let excused = dead.get(&(*kind, day)).map_or(0, |e| e.len() as u64);
                if c.lines + excused != ic.lines || (excused == 0 && c.revenue != ic.revenue) {
                    differences.push(format!(
                        "{kind} {day}: {} lines, {} revenue; the input has {} lines, {} revenue",
                        c.lines, c.revenue, ic.lines, ic.revenue
                    ));
                }
            }
        }
        reports.push(DayReport {
            day,
            stream: Some(stream_cell),
            archive: Some(Cell::of(archive.get(&day))),
            operational: operational.as_ref().map(|h| Cell::of(h.get(&day))),
            warehouse: warehouse.as_ref().map(|h| Cell::of(h.get(&day))),
            input: input_cell,
            dead_letters,
            stream_trimmed,
            stream_shards: in_stream,
            archive_shards: in_archive,
            differences,
        });
    }
    Ok(reports)
}

fn group(lines: Vec<crate::store::StoredLine>) -> Holdings {
    let mut held = Holdings::new();
    for l in lines {
        held.entry(l.day)
            .or_default()
            .insert((l.invoice_no, l.line_id), l.total);
    }
    held
}

fn add(held: &mut Holdings, l: &IngestedLine) {
    held.entry(l.line.invoice_date.date()).or_default().insert(
        (l.line.invoice_no.to_string(), l.line.line_id.to_string()),
        l.line.line_total(),
    );
}

/// Every record each shard still retains, from the oldest on.
async fn read_stream(backends: &Backends) -> anyhow::Result<(Holdings, ShardLines)> {
    let mut held = Holdings::new();
    let mut shards = ShardLines::new();
    for shard in backends.stream.list_shards().await? {
        let mut from = Position::TrimHorizon;
        loop {
            let batch = backends.stream.read(&shard.id, from.clone(), 1000).await?;
            let Some(last) = batch.records.last() else {
                // Kinesis answers empty batches on the way through a shard (its iterator moves
                // on, cached by the backend for the same `from`): only an empty read at the tip
                // is the end.
                if batch.shard_ended || batch.millis_behind_latest.unwrap_or(0) == 0 {
                    break;
                }
                continue;
            };
            from = Position::After(last.sequence_number.clone());
            for record in &batch.records {
                let lines = crate::stream::record::decode(&record.data).with_context(|| {
                    format!(
                        "record {} of shard {} is not a line batch",
                        record.sequence_number, shard.id
                    )
                })?;
                for l in lines.into_ingested() {
                    add(&mut held, &l);
                    *shards
                        .entry(l.line.invoice_date.date())
                        .or_default()
                        .entry(shard.id.0.clone())
                        .or_default() += 1;
                }
            }
            if batch.shard_ended {
                break;
            }
        }
    }
    Ok((held, shards))
}

/// Every line of every archive object (gzip NDJSON of [`IngestedLine`]).
async fn read_archive(backends: &Backends, prefix: &str) -> anyhow::Result<(Holdings, ShardLines)> {
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    let mut held = Holdings::new();
    let mut shards = ShardLines::new();
    for meta in backends.archive.list(&prefix).await? {
        let body = backends.archive.get(&meta.key).await?;
        // `<prefix>/dt=<day>/shard=<id>/<first>-<last>.ndjson.gz` (actors/archive).
        let shard = meta.key.split('/').find_map(|p| p.strip_prefix("shard="));
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .with_context(|| format!("archive object {} is not gzip text", meta.key))?;
        for (n, row) in text
            .lines()
            .enumerate()
            .filter(|(_, r)| !r.trim().is_empty())
        {
            let l: IngestedLine = serde_json::from_str(row).with_context(|| {
                format!(
                    "line {} of archive object {} is not a line",
                    n + 1,
                    meta.key
                )
            })?;
            if let Some(shard) = shard {
                *shards
                    .entry(l.line.invoice_date.date())
                    .or_default()
                    .entry(shard.to_owned())
                    .or_default() += 1;
            }
            add(&mut held, &l);
        }
    }
    Ok((held, shards))
}

/// Lines and revenue of each source over every day (`None` where a source could not be read).
fn totals(days: &[DayReport]) -> BTreeMap<&'static str, Option<(u64, String)>> {
    let sum = |pick: fn(&DayReport) -> &Option<Cell>| {
        let mut total = Some((0u64, Money::ZERO));
        for d in days {
            total = match (total, pick(d)) {
                (Some((n, r)), Some(c)) => Some((n + c.lines, r + c.revenue)),
                _ => None,
            };
        }
        total.map(|(n, r)| (n, r.normalize().to_string()))
    };
    BTreeMap::from([
        ("stream", sum(|d| &d.stream)),
        ("archive", sum(|d| &d.archive)),
        ("operational", sum(|d| &d.operational)),
        ("warehouse", sum(|d| &d.warehouse)),
        ("input", sum(|d| &d.input)),
    ])
}

/// The `sales` columns verify needs of a Firehose output row (see `SalesRow`).
#[derive(serde::Deserialize)]
struct FirehoseRow {
    line_id: String,
    invoice_no: String,
    invoice_date: String,
    line_total: String,
}

/// Every row of the Firehose output objects under `prefix` (NDJSON, gzip or not). Firehose
/// delivers at least once: a row delivered twice counts once, as the Redshift merge keeps it.
async fn read_firehose_output(backends: &Backends, prefix: &str) -> anyhow::Result<Holdings> {
    let mut held = Holdings::new();
    for meta in backends.archive.list(prefix).await? {
        let body = backends.archive.get(&meta.key).await?;
        let mut text = String::new();
        if body.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut text)
                .with_context(|| format!("Firehose object {} is not gzip text", meta.key))?;
        } else {
            text = String::from_utf8(body.to_vec())
                .with_context(|| format!("Firehose object {} is not UTF-8", meta.key))?;
        }
        for row in text.lines().filter(|r| !r.trim().is_empty()) {
            let r: FirehoseRow = serde_json::from_str(row).with_context(|| {
                format!(
                    "Firehose object {} has a row that is not a sales row",
                    meta.key
                )
            })?;
            let day = r
                .invoice_date
                .get(..10)
                .and_then(|d| d.parse().ok())
                .with_context(|| {
                    format!(
                        "Firehose object {}: bad invoice_date {:?}",
                        meta.key, r.invoice_date
                    )
                })?;
            let total: Money = r.line_total.parse().with_context(|| {
                format!(
                    "Firehose object {}: bad line_total {:?}",
                    meta.key, r.line_total
                )
            })?;
            held.entry(day)
                .or_default()
                .insert((r.invoice_no, r.line_id), total);
        }
    }
    Ok(held)
}

fn print_table(days: &[DayReport], with_input: bool) {
    let cell = |c: &Option<Cell>| {
        c.as_ref().map_or_else(
            || "n/a".to_owned(),
            |c| format!("{} / {}", c.lines, c.revenue),
        )
    };
    let mut header = format!(
        "{:<10}  {:>22}  {:>22}  {:>22}  {:>22}",
        "day", "stream", "archive", "operational", "warehouse"
    );
    if with_input {
        header.push_str(&format!("  {:>22}", "input"));
    }
    out!("{header}  status");
    for d in days {
        let mut row = format!(
            "{:<10}  {:>22}  {:>22}  {:>22}  {:>22}",
            d.day.to_string(),
            cell(&d.stream),
            cell(&d.archive),
            cell(&d.operational),
            cell(&d.warehouse)
        );
        if with_input {
            row.push_str(&format!("  {:>22}", cell(&d.input)));
        }
        let mut status = if d.differences.is_empty() {
            "ok".to_owned()
        } else {
            format!("DIFFERS: {}", d.differences.join("; "))
        };
        if d.stream_trimmed {
            status.push_str(" (stream trimmed)");
        }
        for (sink, n) in &d.dead_letters {
            status.push_str(&format!(" ({n} dead-lettered in {sink})"));
        }
        out!("{row}  {status}");
    }
    let t = totals(days);
    let total = |k: &str| {
        t[k].as_ref()
            .map_or_else(|| "n/a".to_owned(), |(n, r)| format!("{n} / {r}"))
    };
    let mut row = format!(
        "{:<10}  {:>22}  {:>22}  {:>22}  {:>22}",
        "total",
        total("stream"),
        total("archive"),
        total("operational"),
        total("warehouse")
    );
    if with_input {
        row.push_str(&format!("  {:>22}", total("input")));
    }
    out!("{row}");
    out!("(each cell: lines / revenue)");
}
