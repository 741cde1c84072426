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
    /// A second port, on the same `bind` address, for `/metrics` (and `/health/*`): when set,
    /// `/metrics` is served there only (404 on `port`), so a load balancer in front of `port`
    /// never exposes it. Unset (the default): everything on `port`. 0 picks a free one (tests).
    #[serde(default)]
    pub ops_port: Option<u16>,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most lines in one request; more get 413.
    pub max_lines_per_request: usize,
    /// Ingest requests parsed and appended at once; more get 503 with Retry-After. With the body
    /// limit this bounds ingest memory (about this many times a request's size, parsed).
    pub max_inflight_ingest: usize,
    /// Requests one store may have in progress (body being read, or parsed and appended); more
    /// get 503. 0 means half of `max_inflight_ingest` (at least 1).
    pub max_inflight_per_store: usize,
    /// How long a request body may take to arrive whole; a slower one gets 408. The body is read
    /// before the request takes an ingest permit, so a slow client holds none meanwhile.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// How long one request may take before it is answered 503. On Kinesis an invoice lock of
    /// the line-id table lasts this plus 2 s (an append is dropped at this time).
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
        if self.body_timeout.is_zero() {
            return Err(bad("server.body_timeout", "must be greater than 0s"));
        }
        if self
            .ops_port
            .is_some_and(|ops| ops != 0 && ops == self.port)
        {
            return Err(bad(
                "server.ops_port",
                &format!(
                    "is {} like server.port: /metrics needs a port of its own; pick another, or leave server.ops_port out to serve it on server.port",
                    self.port
                ),
            ));
        }
        if self.max_inflight_per_store > self.max_inflight_ingest {
            return Err(bad(
                "server.max_inflight_per_store",
                &format!(
                    "is {} but server.max_inflight_ingest is {}: a store's share cannot be more than all (0 means half)",
                    self.max_inflight_per_store, self.max_inflight_ingest
                ),
            ));
        }
        Ok(())
    }

    /// The requests one store may have in progress: `max_inflight_per_store`, or half of
    /// `max_inflight_ingest` (at least 1) when that is 0.
    pub fn per_store_requests(&self) -> usize {
        match self.max_inflight_per_store {
            0 => (self.max_inflight_ingest / 2).max(1),
            n => n,
        }
    }
}

/// Which API keys may send lines (stores) and read them (readers).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Store id -> API key. A store sends `Authorization: Bearer <key>`; its lines carry the id.
    /// Set secrets from the environment: `SHOPSTREAM__AUTH__STORES__<STORE_ID>=<key>`.
    pub stores: BTreeMap<String, String>,
    /// Reader name -> API key, for the query API, `/v1/status` and the dashboard (analysts, BI
    /// tools, operators). Set from the environment: `SHOPSTREAM__AUTH__READERS__<NAME>=<key>`.
    pub readers: BTreeMap<String, String>,
    /// What a store's key may read: see [`StoreReads`].
    pub store_reads: StoreReads,
}

/// What a store's key may read through the query API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreReads {
    /// Nothing: every read needs a reader key.
    None,
    /// The lines its own store sent, by invoice (`/v1/invoices/{no}` shows only those lines and
    /// answers 404 when there are none). Customers' histories, sales figures and the status
    /// span every store, so they need a reader key.
    Own,
    /// Everything a reader key reads.
    All,
}

/// Who a read request is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAccess {
    /// A reader key, or a store key where `auth.store_reads = "all"`: everything.
    Everything,
    /// A store key under `auth.store_reads = "own"`: that store's lines only.
    OwnStore(String),
}

/// Keys that end like this are the documented demo keys of `config/default.toml`.
const DEMO_KEY_SUFFIX: &str = "-change-me";

impl AuthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = BTreeMap::new();
        let all = self
            .stores
            .iter()
            .map(|(name, key)| ("auth.stores", "store", name, key))
            .chain(
                self.readers
                    .iter()
                    .map(|(name, key)| ("auth.readers", "reader", name, key)),
            );
        for (section, role, name, key) in all {
            if key.len() < 8 {
                return Err(ConfigError::BadValue {
                    key: section,
                    reason: format!("the key of {role} {name:?} is shorter than 8 characters"),
                });
            }
            if let Some((other_role, other)) = seen.insert(key.as_str(), (role, name.as_str())) {
                return Err(ConfigError::BadValue {
                    key: section,
                    reason: format!(
                        "{other_role} {other:?} and {role} {name:?} share one key; every key must name one store or reader"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The store a bearer key belongs to.
    pub fn store_for_key(&self, key: &str) -> Option<&str> {
        find_key(&self.stores, key)
    }

    /// What a bearer key may read, or `None` for a key that is neither a reader's nor a store's,
    /// or a store key under `store_reads = "none"`. `Err` carries the store of a key that is
    /// known but may not read.
    pub fn read_access(&self, key: &str) -> Result<ReadAccess, Option<String>> {
        if find_key(&self.readers, key).is_some() {
            return Ok(ReadAccess::Everything);
        }
        match (self.store_for_key(key), self.store_reads) {
            (None, _) => Err(None),
            (Some(store), StoreReads::None) => Err(Some(store.to_owned())),
            (Some(store), StoreReads::Own) => Ok(ReadAccess::OwnStore(store.to_owned())),
            (Some(_), StoreReads::All) => Ok(ReadAccess::Everything),
        }
    }

    /// Removes the demo keys (those ending in `-change-me`, as `config/default.toml` ships them)
    /// and returns the entries removed, as `auth.stores.demo`. `serve` calls it when it listens
    /// beyond loopback: a key printed in the README must never open a reachable server.
    pub fn drop_demo_keys(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        for (section, map) in [("stores", &mut self.stores), ("readers", &mut self.readers)] {
            map.retain(|name, key| {
                let demo = key.ends_with(DEMO_KEY_SUFFIX);
                if demo {
                    dropped.push(format!("auth.{section}.{name}"));
                }
                !demo
            });
        }
        dropped
    }
}

fn find_key<'a>(keys: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    // Every entry is compared, so the time taken does not say which one matched.
    keys.iter().fold(None, |found, (name, k)| {
        if constant_time_eq(k.as_bytes(), key.as_bytes()) {
            Some(name.as_str())
        } else {
            found
        }
    })
}

/// Per-store limits on how fast lines may be sent: a token bucket of lines per store key,
/// answered 429 with `Retry-After` when empty (distinct from the 503 of a busy server).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Lines a second each store may send on average; 0 turns the limit off.
    pub lines_per_second: u32,
    /// Lines a store may send at once on top of the rate (the bucket's size). At least
    /// `server.max_lines_per_request`, so that any request the server accepts can pass.
    pub burst_lines: u32,
    /// Limits of single stores, `[rate_limits.stores.<store id>]`, over the ones above.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreRate>,
}

/// One store's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreRate {
    pub lines_per_second: u32,
    pub burst_lines: u32,
}

impl RateLimitConfig {
    /// The limit of `store`, or `None` when it may send as fast as it likes.
    pub fn for_store(&self, store: &str) -> Option<StoreRate> {
        let rate = self.stores.get(store).copied().unwrap_or(StoreRate {
            lines_per_second: self.lines_per_second,
            burst_lines: self.burst_lines,
        });
        (rate.lines_per_second > 0).then_some(rate)
    }

    pub fn validate(
        &self,
        auth: &AuthConfig,
        max_lines_per_request: usize,
    ) -> Result<(), ConfigError> {
        if let Some(store) = self.stores.keys().find(|s| !auth.stores.contains_key(*s)) {
            return Err(ConfigError::BadValue {
                key: "rate_limits.stores",
                reason: format!(
                    "store {store:?} has a rate limit but no key in auth.stores; check its spelling"
                ),
            });
        }
        let stores = std::iter::once(None).chain(self.stores.keys().map(Some));
        for store in stores {
            let rate = match store {
                None if self.lines_per_second > 0 => StoreRate {
                    lines_per_second: self.lines_per_second,
                    burst_lines: self.burst_lines,
                },
                None => continue,
                Some(s) => match self.for_store(s) {
                    Some(r) => r,
                    None => continue,
                },
            };
            if (rate.burst_lines as usize) < max_lines_per_request {
                let whose = store.map_or("every store".to_owned(), |s| format!("store {s:?}"));
                return Err(ConfigError::BadValue {
                    key: "rate_limits.burst_lines",
                    reason: format!(
                        "the burst of {whose} ({}) is below server.max_lines_per_request ({max_lines_per_request}), so a full request could never pass; raise it",
                        rate.burst_lines
                    ),
                });
            }
        }
        Ok(())
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
