//! Settings of the HTTP server, store authentication and logging.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: String,
    /// Port to listen on; 0 picks a free one (tests), which is logged.
    pub port: u16,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most lines in one request; more get 413.
    pub max_lines_per_request: usize,
    /// Ingest requests parsed and appended at once; more get 503 with Retry-After. With the body
    /// limit this bounds ingest memory (about this many times a request's size, parsed).
    pub max_inflight_ingest: usize,
    /// How long one request may take before it is answered 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On SIGTERM/SIGINT: time to finish requests, flush every sink and write checkpoints.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Day/month order of slash dates in ingested lines unless a request says `?date_order=`.
    pub date_order: crate::model::DateOrder,
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(bad("server.max_body_bytes", "must be greater than 0"));
        }
        if self.max_lines_per_request == 0 {
            return Err(bad(
                "server.max_lines_per_request",
                "must be greater than 0",
            ));
        }
        if self.max_inflight_ingest == 0 {
            return Err(bad("server.max_inflight_ingest", "must be greater than 0"));
        }
        if self.request_timeout.is_zero() {
            return Err(bad("server.request_timeout", "must be greater than 0s"));
        }
        Ok(())
    }
}

/// Which API keys may send lines, and as which store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Store id -> API key. A store sends `Authorization: Bearer <key>`; its lines carry the id.
    /// Set secrets from the environment: `SHOPSTREAM__AUTH__STORES__<STORE_ID>=<key>`.
    pub stores: BTreeMap<String, String>,
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = BTreeMap::new();
        for (store, key) in &self.stores {
            if key.len() < 8 {
                return Err(ConfigError::BadValue {
                    key: "auth.stores",
                    reason: format!("the key of store {store:?} is shorter than 8 characters"),
                });
            }
            if let Some(other) = seen.insert(key.as_str(), store.as_str()) {
                return Err(ConfigError::BadValue {
                    key: "auth.stores",
                    reason: format!("stores {other:?} and {store:?} share one key"),
                });
            }
        }
        Ok(())
    }

    /// The store a bearer key belongs to.
    pub fn store_for_key(&self, key: &str) -> Option<&str> {
        self.stores
            .iter()
            .find(|(_, k)| constant_time_eq(k.as_bytes(), key.as_bytes()))
            .map(|(store, _)| store.as_str())
    }
}

/// Compares without an early exit, so response time does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (CloudWatch Logs Insights).
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directives, e.g. `info` or `shopstream=debug,actix_web=info`.
    /// `RUST_LOG` overrides it.
    pub level: String,
}

pub(super) fn bad(key: &'static str, reason: &str) -> ConfigError {
    ConfigError::BadValue {
        key,
        reason: reason.to_owned(),
    }
}
