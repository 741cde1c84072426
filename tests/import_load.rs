//! The batch path through its library API, on real fixture files and real SQLite files.

mod import_support;

use import_support::{expected, fixture, gzip, ledger_rows, sales};
use indicatif::ProgressBar;
use rust_decimal::Decimal;
use shopstream::batch::{FileOutcome, ImportOptions, Importer, RunSummary, Target};
use shopstream::model::csv::parse_csv;
use shopstream::model::{IngestedLine, ParseOptions};
use shopstream::store::operational::sqlite::SqliteOperationalStore;
use shopstream::store::warehouse::sqlite::SqliteWarehouse;
use shopstream::store::{OperationalStore, Warehouse};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Setup {
    dir: tempfile::TempDir,
    warehouse: Arc<SqliteWarehouse>,
    operational: Arc<SqliteOperationalStore>,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let warehouse =
            Arc::new(SqliteWarehouse::open(&dir.path().join("warehouse.sqlite")).unwrap());
        let operational =
            Arc::new(SqliteOperationalStore::open(&dir.path().join("operational.sqlite")).unwrap());
        Setup {
            dir,
            warehouse,
            operational,
        }
    }

    fn options(&self) -> ImportOptions {
        ImportOptions {
            target: Target::Warehouse,
            reload: false,
            max_reject_ratio: 0.5,
            parse: ParseOptions::default(),
            reject_dir: self.dir.path().join("import-rejects"),
            dry_run: false,
        }
    }

    async fn run_with(&self, options: ImportOptions, sources: &[&Path]) -> RunSummary {
        let importer = Importer::new(
            self.warehouse.clone(),
            Some(self.operational.clone()),
            options,
        )
        .unwrap();
        let specs: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
        importer.run(&specs, &ProgressBar::hidden()).await
    }

    async fn run(&self, sources: &[&Path]) -> RunSummary {
        self.run_with(self.options(), sources).await
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("warehouse.sqlite")
    }

    /// A folder of its own under the temp dir, holding `files` (name, content).
    fn folder(&self, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, content) in files {
            std::fs::write(dir.join(file), content).unwrap();
        }
        dir
    }
}

const FIXTURES: [&str; 4] = [
    "online-retail-sample-182.csv",
    "online-retail-sample-873-iso.csv",
    "online-retail-sample-182-accents-utf8.csv",
    "online-retail-sample-182-accents-latin1.csv",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_loads_with_exact_counts_and_revenue() {
    for name in FIXTURES {
        let s = Setup::new();
        let (rows, revenue) = expected(&fixture(name));
        let summary = s.run(&[&fixture(name)]).await;
        assert_eq!(
            (summary.loaded, summary.failed),
            (1, 0),
            "{name}: {summary}"
        );
        assert_eq!(summary.rows_loaded, rows, "{name}");
        assert_eq!(sales(&s.db()), (rows, revenue), "{name}");
        // The rollups the dashboard reads agree with the fact table.
        let rollup = s.warehouse.summary().await.unwrap().unwrap();
        assert_eq!((rollup.lines, rollup.revenue), (rows, revenue), "{name}");
    }
    assert_eq!(
        expected(&fixture("online-retail-sample-182.csv")),
        (179, Decimal::new(775362, 2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_file_loads_like_the_plain_one() {
    let s = Setup::new();
    let plain = fixture("online-retail-sample-873-iso.csv");
    let gz = s.dir.path().join("873.csv.gz");
    gzip(&plain, &gz);
    let summary = s.run(&[&gz]).await;
    assert_eq!(summary.loaded, 1, "{summary}");
    assert_eq!(sales(&s.db()), expected(&plain));
    // The same lines by the plain file: same ids, nothing new.
    let again = s.run(&[&plain]).await;
    assert_eq!((again.rows_loaded, again.rows_new), (873, 0), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimport_is_a_no_op_a_change_is_reported_and_reload_replaces() {
    let s = Setup::new();
    let original = std::fs::read_to_string(fixture("online-retail-sample-873-iso.csv")).unwrap();
    let folder = s.folder("drops", &[("day.csv", original.as_bytes())]);
    let file = folder.join("day.csv");

    let first = s.run(&[&folder]).await;
    assert_eq!((first.loaded, first.rows_loaded), (1, 873), "{first}");
    let before = sales(&s.db());

    let second = s.run(&[&folder]).await;
    assert_eq!(
        (second.loaded, second.skipped, second.rows_loaded),
        (0, 1, 0),
        "{second}"
    );
    assert_eq!(sales(&s.db()), before);

    // The export is redone: the last 100 rows are gone and one price changed.
    let kept: Vec<&str> = original.lines().take(1 + 773).collect();
    let modified = kept.join("\n").replacen(",2.55,", ",2.65,", 1) + "\n";
    std::fs::write(&file, &modified).unwrap();
    let (rows, revenue) = expected(&file);
    assert_eq!(rows, 773);

    let changed = s.run(&[&folder]).await;
    assert_eq!(changed.changed, 1, "{changed}");
    assert!(changed.files[0]
        .error
        .as_deref()
        .unwrap()
        .contains("--reload"));
    assert_eq!(sales(&s.db()), before, "a changed file is not loaded");

    let reload = s
        .run_with(
            shopstream::batch::ImportOptions {
                reload: true,
                ..s.options()
            },
            &[&folder],
        )
        .await;
    assert_eq!((reload.loaded, reload.rows_loaded), (1, 773), "{reload}");
    assert_eq!(
        sales(&s.db()),
        (rows, revenue),
        "no duplicates, the new content"
    );
    let rollup = s.warehouse.summary().await.unwrap().unwrap();
    assert_eq!((rollup.lines, rollup.revenue), (rows, revenue));
    assert_eq!(ledger_rows(&s.db()), 1);

    let after = s.run(&[&folder]).await;
    assert_eq!(after.skipped, 1, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_go_to_the_reject_file_with_their_reason() {
    let s = Setup::new();
    let summary = s.run(&[&fixture("online-retail-sample-182.csv")]).await;
    assert_eq!(
        (summary.loaded, summary.rows_loaded, summary.rows_rejected),
        (1, 179, 4)
    );
    let path = summary.files[0].reject_file.clone().expect("a reject file");
    assert_eq!(summary.reject_files, vec![path.clone()]);
    let mut reader = csv::Reader::from_path(&path).unwrap();
    assert_eq!(reader.headers().unwrap(), vec!["line", "reason", "row"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let lines: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(lines, ["121", "172", "175", "179"]);
    for r in &rows {
        assert!(
            r[1].contains("has 7 fields where the header has 8"),
            "{r:?}"
        );
        assert!(r[2].starts_with("536"), "the original row: {r:?}");
    }
    assert_eq!(sales(&s.db()).0, 179);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mostly_bad_file_loads_nothing() {
    let s = Setup::new();
    let good = "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom\n";
    let mut body =
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
            .to_owned();
    body.push_str(good);
    for i in 0..3 {
        body.push_str(&good.replace(",6,", &format!(",six{i},")));
    }
    let folder = s.folder("garbage", &[("bad.csv", body.as_bytes())]);
    let summary = s.run(&[&folder]).await;
    assert_eq!(summary.failed, 1, "{summary}");
    let report = &summary.files[0];
    assert_eq!(report.rows_rejected, 3);
    assert!(report
        .error
        .as_deref()
        .unwrap()
        .contains("--max-reject-ratio"));
    let rejects = std::fs::read_to_string(report.reject_file.as_ref().unwrap()).unwrap();
    assert_eq!(rejects.lines().count(), 4, "header and the 3 bad rows");
    assert_eq!(sales(&s.db()).0, 0);
    assert_eq!(ledger_rows(&s.db()), 0);

    // A more tolerant ratio loads the good row.
    let tolerant = s
        .run_with(
            ImportOptions {
                max_reject_ratio: 0.8,
                ..s.options()
            },
            &[&folder],
        )
        .await;
    assert_eq!(
        (tolerant.loaded, tolerant.rows_loaded),
        (1, 1),
        "{tolerant}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_gzip_fails_alone() {
    let s = Setup::new();
    let folder = s.folder("mixed", &[]);
    gzip(
        &fixture("online-retail-sample-873-iso.csv"),
        &folder.join("whole.csv.gz"),
    );
    let bytes = std::fs::read(folder.join("whole.csv.gz")).unwrap();
    std::fs::write(folder.join("cut.csv.gz"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    std::fs::copy(
        fixture("online-retail-sample-182.csv"),
        folder.join("plain.csv"),
    )
    .unwrap();

    let summary = s.run(&[&folder]).await;
    assert_eq!((summary.loaded, summary.failed), (2, 1), "{summary}");
    let cut = summary
        .files
        .iter()
        .find(|f| f.key.ends_with("cut.csv.gz"))
        .unwrap();
    assert_eq!(cut.outcome, FileOutcome::Failed);
    assert!(cut
        .error
        .as_deref()
        .unwrap()
        .contains("nothing of it was loaded"));
    // Exactly what the two good files give on their own.
    let good = Setup::new();
    let whole = folder.join("whole.csv.gz");
    let plain = folder.join("plain.csv");
    assert_eq!(good.run(&[&whole, &plain]).await.loaded, 2);
    assert_eq!(sales(&s.db()), sales(&good.db()));
    assert_eq!(
        ledger_rows(&s.db()),
        2,
        "the failed file is not in the ledger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_targets_fill_the_operational_store_too() {
    let s = Setup::new();
    let file = fixture("online-retail-sample-873-iso.csv");
    let both = || ImportOptions {
        target: Target::Both,
        ..s.options()
    };
    let summary = s.run_with(both(), &[&file]).await;
    assert_eq!(summary.loaded, 2, "one report per store: {summary}");
    let (rows, revenue) = expected(&file);
    assert_eq!(s.operational.totals().await.unwrap(), (rows, revenue));
    assert!(s.operational.invoice("536365").await.unwrap().is_some());
    assert_eq!(sales(&s.db()), (rows, revenue));
    let again = s.run_with(both(), &[&file]).await;
    assert_eq!(again.skipped, 2, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_that_came_by_the_stream_are_not_stored_twice() {
    let s = Setup::new();
    let file = fixture("online-retail-sample-873-iso.csv");
    let parsed = parse_csv(&std::fs::read(&file).unwrap(), &ParseOptions::default()).unwrap();
    let streamed: Vec<IngestedLine> = parsed
        .lines
        .into_iter()
        .take(500)
        .map(|line| IngestedLine {
            line,
            store_id: "demo".into(),
            ingested_at: chrono::Utc::now(),
        })
        .collect();
    s.warehouse
        .insert(&streamed.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let summary = s.run(&[&file]).await;
    assert_eq!(
        (summary.rows_loaded, summary.rows_new),
        (873, 373),
        "{summary}"
    );
    assert_eq!(sales(&s.db()), expected(&file));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_counts_and_writes_nothing() {
    let s = Setup::new();
    let summary = s
        .run_with(
            ImportOptions {
                dry_run: true,
                ..s.options()
            },
            &[&fixture("online-retail-sample-182.csv")],
        )
        .await;
    assert_eq!(
        (summary.checked, summary.rows_loaded, summary.rows_rejected),
        (1, 179, 4)
    );
    assert!(summary.files[0].reject_file.is_some());
    assert_eq!(sales(&s.db()).0, 0);
    assert_eq!(ledger_rows(&s.db()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_imports_new_drops_until_shutdown() {
    let s = Setup::new();
    let folder = s.folder("watched", &[]);
    let importer = Arc::new(
        Importer::new(
            s.warehouse.clone(),
            Some(s.operational.clone()),
            s.options(),
        )
        .unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(shopstream::batch::watch(
        importer,
        vec![folder.display().to_string()],
        std::time::Duration::from_secs(1),
        async {
            let _ = stopped.await;
        },
    ));
    // A file dropped after the watcher started is picked up by a later tick.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let file = fixture("online-retail-sample-873-iso.csv");
    std::fs::copy(&file, folder.join("drop.csv")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ledger_rows(&s.db()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher did not import the drop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(sales(&s.db()), expected(&file));
    let loaded = shopstream::metrics::IMPORT_FILES
        .with_label_values(&["loaded"])
        .get();
    assert!(loaded >= 1);
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), watcher)
        .await
        .expect("the watcher stops on shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operational_store_alone_checks_the_ratio_before_writing() {
    let s = Setup::new();
    let file = fixture("online-retail-sample-182.csv");
    let operational_only = |ratio: f64| ImportOptions {
        target: Target::Operational,
        max_reject_ratio: ratio,
        ..s.options()
    };
    // 4 of 183 rows are bad: a ratio of 1% refuses the file before anything is written.
    let refused = s.run_with(operational_only(0.01), &[&file]).await;
    assert_eq!(refused.failed, 1, "{refused}");
    assert_eq!(s.operational.totals().await.unwrap().0, 0);

    let summary = s.run_with(operational_only(0.5), &[&file]).await;
    assert_eq!((summary.loaded, summary.rows_rejected), (1, 4), "{summary}");
    assert!(summary.files[0].reject_file.is_some());
    assert_eq!(s.operational.totals().await.unwrap(), expected(&file));
    assert_eq!(sales(&s.db()).0, 0, "the warehouse is not filled");
    let again = s.run_with(operational_only(0.5), &[&file]).await;
    assert_eq!(again.skipped, 1, "{again}");
}
