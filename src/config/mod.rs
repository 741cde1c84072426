//! Settings: `config/default.toml` (compiled in, every key documented there), then a file given
//! with `--config`, then environment variables `SHOPSTREAM__SECTION__KEY` (for example
//! `SHOPSTREAM__SERVER__PORT=9090`; a stage's backend section is one level deeper, as in
//! `SHOPSTREAM__WAREHOUSE__FIREHOSE__DELIVERY_STREAM`). Unknown keys and bad values stop the start with an error that
//! names the key and where it came from.

mod aws;
mod import;
mod pipeline;
mod server;

pub use aws::{
    check_bucket_name, AwsConfig, AwsService, DynamoDbConfig, FirehoseConfig, KinesisConfig,
    S3Config, BUCKET_RULE,
};
pub use import::{ImportConfig, Target};
pub use pipeline::{
    ArchiveConfig, Backend, DeadLetterConfig, OperationalConfig, RetryConfig, SinksConfig,
    StreamConfig, WarehouseConfig,
};
pub use server::{
    AuthConfig, LogConfig, LogFormat, RateLimitConfig, ReadAccess, ServerConfig, StoreRate,
    StoreReads,
};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The documented defaults, compiled into the binary so it runs from any folder.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of environment overrides; `__` separates section and key.
pub const ENV_PREFIX: &str = "SHOPSTREAM__";

/// Variables that start with `SHOPSTREAM_` but are not settings: read by the command line
/// (`--config`, `replay --key`) and the benchmarks. Every other `SHOPSTREAM_*` variable outside
/// [`ENV_PREFIX`] is a mistake that would otherwise be ignored without a word.
pub const OTHER_ENV_VARS: &[&str] = &[
    "SHOPSTREAM_CONFIG",
    "SHOPSTREAM_KEY",
    "SHOPSTREAM_BENCH_CSV",
    "SHOPSTREAM_BENCH_NDJSON",
];

/// One warning per environment variable that looks meant for shopstream but is read by nothing:
/// it starts with `SHOPSTREAM_`, not with [`ENV_PREFIX`] (unknown keys there already stop the
/// start), and is not one of [`OTHER_ENV_VARS`]. Each names the variable and the spelling a
/// setting takes (`SHOPSTREAM_SERVER__PORT` -> `SHOPSTREAM__SERVER__PORT`).
pub fn stray_env_vars<I>(vars: I) -> Vec<String>
where
    I: IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
{
    let mut warnings: Vec<String> = vars
        .into_iter()
        .filter_map(|(name, _)| {
            let name = name.to_string_lossy().into_owned();
            let rest = name.strip_prefix("SHOPSTREAM_")?;
            if name.starts_with(ENV_PREFIX) || OTHER_ENV_VARS.contains(&name.as_str()) {
                return None;
            }
            Some(format!(
                "environment variable {name} is not a setting and is ignored; settings are \
                 {ENV_PREFIX}SECTION__KEY with two underscores after SHOPSTREAM (did you mean \
                 {ENV_PREFIX}{}?)",
                rest.trim_start_matches('_')
            ))
        })
        .collect();
    warnings.sort();
    warnings
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Folder for everything the embedded backends keep (stream, stores, archive, dead letters).
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub rate_limits: RateLimitConfig,
    pub log: LogConfig,
    pub stream: StreamConfig,
    pub sinks: SinksConfig,
    pub archive: ArchiveConfig,
    pub operational: OperationalConfig,
    pub warehouse: WarehouseConfig,
    pub dead_letter: DeadLetterConfig,
    pub aws: AwsConfig,
    pub import: ImportConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration: key `{key}`: {reason}")]
    BadValue { key: &'static str, reason: String },
}

impl Settings {
    /// Whether any stage keeps its data in `data_dir` (runs on an embedded backend).
    pub fn uses_data_dir(&self) -> bool {
        [
            self.stream.backend,
            self.archive.backend,
            self.operational.backend,
            self.warehouse.backend,
            self.dead_letter.backend,
        ]
        .contains(&Backend::Embedded)
    }

    /// Loads the layers in order (defaults, `file`, environment) and validates the result.
    ///
    /// # Errors
    /// A missing file, an unknown key, a value of the wrong type or a value out of range, each
    /// named with its key.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    fn load_with_env(file: Option<&Path>, env: Env) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::MissingFile(file.to_path_buf()));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(env);
        let settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.auth.validate()?;
        self.rate_limits
            .validate(&self.auth, self.server.max_lines_per_request)?;
        self.stream.validate()?;
        self.sinks.validate()?;
        self.sinks
            .validate_lag(self.stream.retention, self.archive.flush_age)?;
        self.archive.validate()?;
        self.dead_letter.validate()?;
        self.aws.validate()?;
        self.stream
            .kinesis
            .validate(self.stream.backend, self.sinks.shard_refresh)?;
        // The dead letters on aws go to the archive's bucket.
        let s3 = if self.dead_letter.backend == Backend::Aws {
            Backend::Aws
        } else {
            self.archive.backend
        };
        self.archive.s3.validate(s3)?;
        self.operational
            .dynamodb
            .validate(self.operational.backend)?;
        self.warehouse.firehose.validate(self.warehouse.backend)?;
        self.import.validate()?;
        Ok(())
    }
}

/// Figment's errors carry the key path and the source (file or env var); put them in one sentence
/// per problem.
fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::new()
            } else {
                format!("key `{}`: ", e.path.join("."))
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| match m.source.as_ref() {
                    Some(src) => format!(" (from {} {src})", m.name),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            format!("{key}{}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn no_env() -> Env {
        Env::prefixed("SHOPSTREAM_TEST_UNSET_PREFIX__").split("__")
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load_with_env(None, no_env()).unwrap();
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.stream.backend, Backend::Embedded);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[server]\nprot = 9000").unwrap();
        let err = Settings::load_with_env(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn wrong_type_is_rejected_with_its_key() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[server]\nport = \"eighty\"").unwrap();
        let err = Settings::load_with_env(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.port"), "{err}");
    }

    #[test]
    fn keys_name_one_store_or_reader_and_demo_keys_can_be_dropped() {
        let err = load_toml("[auth.readers]\nbi = \"demo-key-change-me\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("store \"demo\" and reader \"bi\" share one key"),
            "{err}"
        );
        let err = load_toml("[auth.readers]\nbi = \"short\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("reader \"bi\" is shorter than 8"), "{err}");
        let mut s = load_toml("[auth.readers]\nbi = \"a-real-reader-key\"").unwrap();
        assert_eq!(
            s.auth.read_access("a-real-reader-key"),
            Ok(ReadAccess::Everything)
        );
        assert_eq!(
            s.auth.read_access("demo-key-change-me"),
            Ok(ReadAccess::OwnStore("demo".into()))
        );
        assert_eq!(s.auth.read_access("nobody's key"), Err(None));
        assert_eq!(
            s.auth.drop_demo_keys(),
            vec!["auth.stores.demo", "auth.readers.demo"]
        );
        assert!(s.auth.stores.is_empty());
        assert_eq!(s.auth.readers.keys().collect::<Vec<_>>(), ["bi"]);
    }

    #[test]
    fn rate_limits_let_a_full_request_pass_and_name_known_stores() {
        let err = load_toml("[rate_limits]\nlines_per_second = 10\nburst_lines = 100")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rate_limits.burst_lines") && err.contains("50000"),
            "{err}"
        );
        let err =
            load_toml("[rate_limits.stores.leeds]\nlines_per_second = 10\nburst_lines = 60000")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("\"leeds\" has a rate limit but no key"),
            "{err}"
        );
        let s = load_toml("[rate_limits.stores.demo]\nlines_per_second = 10\nburst_lines = 60000")
            .unwrap();
        assert_eq!(
            s.rate_limits.for_store("demo").unwrap().lines_per_second,
            10
        );
        assert_eq!(s.rate_limits.for_store("other"), None, "off by default");
    }

    #[test]
    fn an_ops_port_is_optional_and_not_the_main_port() {
        assert_eq!(load_toml("").unwrap().server.ops_port, None);
        assert_eq!(
            load_toml("[server]\nops_port = 9090")
                .unwrap()
                .server
                .ops_port,
            Some(9090)
        );
        let err = load_toml("[server]\nops_port = 8080")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.ops_port") && err.contains("a port of its own"),
            "{err}"
        );
        // 0 on both picks two free ports (tests).
        let s = load_toml("[server]\nport = 0\nops_port = 0").unwrap();
        assert_eq!(s.server.ops_port, Some(0));
    }

    #[test]
    fn missing_file_is_an_error() {
        let err =
            Settings::load_with_env(Some(Path::new("/nonexistent/x.toml")), no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }

    #[test]
    // figment's `Jail` fixes the closure's error type (`figment::Error`, large); not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SHOPSTREAM__SERVER__PORT", "9191");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.server.port, 9191);
            Ok(())
        });
    }

    #[test]
    fn stray_shopstream_variables_are_named_with_the_right_spelling() {
        let vars = [
            ("SHOPSTREAM_SERVER__PORT", "9090"),
            ("SHOPSTREAM__SERVER__PORT", "9090"),
            ("SHOPSTREAM_CONFIG", "x.toml"),
            ("SHOPSTREAM_KEY", "k"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let warnings = stray_env_vars(vars);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("SHOPSTREAM_SERVER__PORT")
                && warnings[0].contains("did you mean SHOPSTREAM__SERVER__PORT?"),
            "{warnings:?}"
        );
    }

    fn load_toml(text: &str) -> Result<Settings, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{text}").unwrap();
        Settings::load_with_env(Some(f.path()), no_env())
    }

    #[test]
    fn each_aws_service_takes_its_own_endpoint_or_the_shared_one() {
        let s = load_toml(
            "[aws]\nendpoint_url = \"http://127.0.0.1:5000\"\nkinesis_endpoint_url = \"http://127.0.0.1:4567\"",
        )
        .unwrap();
        assert_eq!(s.aws.endpoint(AwsService::Kinesis), "http://127.0.0.1:4567");
        assert_eq!(
            s.aws.endpoint(AwsService::DynamoDb),
            "http://127.0.0.1:5000"
        );
        assert_eq!(s.aws.endpoint(AwsService::S3), "http://127.0.0.1:5000");
        let err = load_toml("[aws]\ns3_endpoint_url = \"127.0.0.1:5000\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("aws.s3_endpoint_url") && err.contains("http://"),
            "{err}"
        );
    }

    #[test]
    fn a_lease_shorter_than_two_renewals_is_refused() {
        let err = load_toml(
            "[stream]\nbackend = \"aws\"\n[sinks]\nshard_refresh = \"5s\"\n[stream.kinesis]\nlease_duration = \"8s\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("stream.kinesis.lease_duration") && err.contains("shard_refresh"),
            "{err}"
        );
        load_toml("[stream]\nbackend = \"aws\"\n[sinks]\nshard_refresh = \"5s\"\n[stream.kinesis]\nlease_duration = \"10s\"")
            .unwrap();
    }

    #[test]
    // See `env_overrides_file`.
    #[allow(clippy::result_large_err)]
    fn env_overrides_a_stage_backend_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "SHOPSTREAM__WAREHOUSE__FIREHOSE__DELIVERY_STREAM",
                "sales-from-env",
            );
            jail.set_env("SHOPSTREAM__STREAM__KINESIS__LEASE_DURATION", "45s");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.warehouse.firehose.delivery_stream, "sales-from-env");
            assert_eq!(
                s.stream.kinesis.lease_duration,
                std::time::Duration::from_secs(45)
            );
            Ok(())
        });
    }

    #[test]
    fn a_stage_backend_key_is_checked_under_its_stage() {
        let err = load_toml("[warehouse.firehose]\ndelivery_strem = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery_strem"), "{err}");
        let err = load_toml(
            "[warehouse]\nbackend = \"aws\"\n[warehouse.firehose]\ndelivery_stream = \"\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("warehouse.firehose.delivery_stream"), "{err}");
        let err = load_toml("[dead_letter]\nbackend = \"aws\"\n[archive.s3]\nbucket = \"\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("archive.s3.bucket"), "{err}");
    }

    #[test]
    fn the_kinesis_idle_read_interval_is_at_most_a_minute() {
        let s = load_toml("").unwrap();
        assert_eq!(
            s.stream.kinesis.idle_read_interval,
            std::time::Duration::from_secs(1)
        );
        let e =
            load_toml("[stream]\nbackend = \"aws\"\n[stream.kinesis]\nidle_read_interval = \"2m\"")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("stream.kinesis.idle_read_interval") && e.contains("at most 1m"),
            "{e}"
        );
        let s = load_toml("[stream.kinesis]\nidle_read_interval = \"0s\"").unwrap();
        assert!(s.stream.kinesis.idle_read_interval.is_zero());
    }

    #[test]
    fn max_lag_sits_above_the_archive_flush_age_and_within_half_the_retention() {
        let err = |text| load_toml(text).unwrap_err().to_string();
        let e = err("[stream]\nretention = \"1h\"\n[sinks]\nmax_lag = \"45m\"");
        assert!(
            e.contains("sinks.max_lag") && e.contains("stream.retention (1h)"),
            "{e}"
        );
        let e = err("[archive]\nflush_age = \"10m\"");
        assert!(
            e.contains("sinks.max_lag") && e.contains("archive.flush_age (10m)"),
            "{e}"
        );
        let e = err("[sinks]\nmax_lag = \"0s\"");
        assert!(
            e.contains("sinks.max_lag") && e.contains("greater than 0"),
            "{e}"
        );
        let s = load_toml("[stream]\nretention = \"1h\"\n[sinks]\nmax_lag = \"30m\"").unwrap();
        assert_eq!(s.sinks.max_lag, std::time::Duration::from_secs(1800));
    }

    #[test]
    fn the_sinks_run_in_the_idle_class_unless_told_to_use_nice() {
        use crate::actors::priority::SinkPriority;
        assert_eq!(load_toml("").unwrap().sinks.priority(), SinkPriority::Idle);
        let nice = load_toml("[sinks]\ncpu_class = \"nice\"\nnice = 7").unwrap();
        assert_eq!(nice.sinks.priority(), SinkPriority::Nice(7));
        let e = load_toml("[sinks]\ncpu_class = \"low\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cpu_class") && e.contains("idle") && e.contains("nice"),
            "{e}"
        );
    }

    #[test]
    fn the_sinks_nice_value_is_a_linux_nice_step() {
        assert_eq!(load_toml("").unwrap().sinks.nice, 10);
        assert_eq!(load_toml("[sinks]\nnice = 0").unwrap().sinks.nice, 0);
        assert_eq!(load_toml("[sinks]\nnice = 19").unwrap().sinks.nice, 19);
        for bad in ["20", "-1"] {
            let e = load_toml(&format!("[sinks]\nnice = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("sinks.nice") && e.contains("0") && e.contains("19"),
                "{e}"
            );
        }
    }
}
