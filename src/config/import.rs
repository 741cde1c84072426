//! Settings of the batch path (bulk CSV imports): `shopstream import` and the watcher that
//! `shopstream serve` runs.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

use super::server::bad;
use super::ConfigError;
use crate::model::DateOrder;

/// Which store(s) an import fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The `sales` fact table (the usual case: bulk dumps are for analytics).
    #[default]
    Warehouse,
    /// The operational store only, so bulk-loaded invoices answer the query API.
    Operational,
    /// Both, the warehouse first.
    Both,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Warehouse => "warehouse",
            Target::Operational => "operational",
            Target::Both => "both",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// Day/month order of dates like `01/02/2011` in imported files.
    pub date_order: DateOrder,
    /// Which store(s) imports fill by default (`--to` overrides).
    pub target: Target,
    /// A file with a larger share of rejected rows loads nothing (`--max-reject-ratio` overrides).
    pub max_reject_ratio: f64,
    /// Folder of the reject files; relative paths are under `data_dir`.
    pub reject_dir: PathBuf,
    /// Sources the server's watcher imports on every tick (files, folders, globs); empty for none.
    /// A file is loaded once two consecutive scans saw the same size and modification time.
    pub watch: Vec<String>,
    /// Time between two watcher runs, from the end of one to the start of the next: a new file
    /// loads between one and two intervals after it stops changing.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl ImportConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.max_reject_ratio) {
            return Err(bad(
                "import.max_reject_ratio",
                "must be between 0 (no bad row allowed) and 1 (any share allowed)",
            ));
        }
        if self.interval < Duration::from_secs(1) {
            return Err(bad("import.interval", "must be at least 1s"));
        }
        for source in &self.watch {
            if let Some(rest) = source.strip_prefix("s3://") {
                let bucket = rest.split_once('/').map_or(rest, |(b, _)| b);
                super::check_bucket_name(bucket).map_err(|reason| {
                    bad("import.watch", &format!("source {source:?}: {reason}"))
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ImportConfig {
        ImportConfig {
            date_order: DateOrder::Mdy,
            target: Target::Warehouse,
            max_reject_ratio: 0.5,
            reject_dir: "import-rejects".into(),
            watch: Vec::new(),
            interval: Duration::from_secs(300),
        }
    }

    #[test]
    fn watched_buckets_are_checked_when_the_settings_load() {
        let mut c = config();
        c.watch = vec!["s3://good-bucket/dumps/".into(), "/data/drop".into()];
        assert!(c.validate().is_ok());
        c.watch.push("s3://../../etc/passwd".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("import.watch") && err.contains("3 to 63 characters"),
            "{err}"
        );
    }

    #[test]
    fn ratio_and_interval_are_checked_with_their_keys() {
        assert!(config().validate().is_ok());
        let ratio = ImportConfig {
            max_reject_ratio: 1.5,
            ..config()
        };
        assert!(ratio
            .validate()
            .unwrap_err()
            .to_string()
            .contains("import.max_reject_ratio"));
        let interval = ImportConfig {
            interval: Duration::from_millis(10),
            ..config()
        };
        assert!(interval
            .validate()
            .unwrap_err()
            .to_string()
            .contains("import.interval"));
    }
}
