//! Who may do what: the bearer key of a read request ([`AppState::authorize_read`]), and the
//! per-store rate limits of ingest ([`RateLimits`]).
//!
//! Stores write with their store key (`auth.stores`); people and tools read with a reader key
//! (`auth.readers`). A store key reads only what `auth.store_reads` allows (by default the lines
//! of its own invoices). `/health/*` and `/metrics` stay open: load balancers and Prometheus
//! reach them without keys, and they show no sales data.

use actix_web::http::header;
use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;

use super::error::ApiError;
use super::AppState;
use crate::config::{AuthConfig, RateLimitConfig, ReadAccess, StoreRate};

impl AppState {
    /// What the request's bearer key may read: 401 without a known key, 403 for a store key that
    /// may not read `what` (named in the answer).
    pub fn authorize_read(&self, req: &HttpRequest, what: &str) -> Result<ReadAccess, ApiError> {
        let key = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(super::bearer_token)
            .ok_or(ApiError::ReaderUnauthorized)?;
        self.auth.read_access(key).map_err(|store| match store {
            None => ApiError::ReaderUnauthorized,
            Some(store) => ApiError::Forbidden(format!(
                "the key of store {store:?} may not read {what} (auth.store_reads = \"none\"); use a reader key"
            )),
        })
    }

    /// Like [`authorize_read`](Self::authorize_read) for figures that span every store (sales,
    /// customers' histories, the pipeline's status): a store key limited to its own lines gets
    /// 403.
    pub fn authorize_read_all(&self, req: &HttpRequest, what: &str) -> Result<(), ApiError> {
        match self.authorize_read(req, what)? {
            ReadAccess::Everything => Ok(()),
            ReadAccess::OwnStore(store) => Err(ApiError::Forbidden(format!(
                "{what} span every store, and the key of store {store:?} reads only its own invoices (auth.store_reads = \"own\"); use a reader key"
            ))),
        }
    }
}

/// One token bucket of lines per store that has a limit.
pub struct RateLimits {
    buckets: HashMap<String, (StoreRate, DefaultDirectRateLimiter)>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig, auth: &AuthConfig) -> Self {
        let buckets = auth
            .stores
            .keys()
            .filter_map(|store| {
                let rate = config.for_store(store)?;
                let quota = Quota::per_second(NonZeroU32::new(rate.lines_per_second)?)
                    .allow_burst(NonZeroU32::new(rate.burst_lines.max(1))?);
                Some((store.clone(), (rate, RateLimiter::direct(quota))))
            })
            .collect();
        RateLimits {
            buckets,
            clock: DefaultClock::default(),
        }
    }

    /// Takes `lines` from `store`'s bucket, or answers 429 with the time until they are there.
    /// Nothing is taken from a request that is turned away.
    pub fn check(&self, store: &str, lines: usize) -> Result<(), ApiError> {
        let Some((rate, bucket)) = self.buckets.get(store) else {
            return Ok(());
        };
        let Some(n) = u32::try_from(lines).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        let refused = |retry_after_secs: u64| ApiError::RateLimited {
            store: store.to_owned(),
            lines,
            rate: *rate,
            retry_after_secs,
        };
        match bucket.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(refused(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)))
            }
            // More lines than the bucket holds: configuration keeps the burst at least
            // max_lines_per_request, so this request is over that limit too.
            Err(_) => Err(refused(
                u64::from(rate.burst_lines / rate.lines_per_second.max(1)).max(1),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn auth() -> AuthConfig {
        AuthConfig {
            stores: BTreeMap::from([
                ("leeds".into(), "leeds-secret".into()),
                ("york".into(), "york-secret1".into()),
            ]),
            readers: BTreeMap::new(),
            store_reads: crate::config::StoreReads::Own,
        }
    }

    #[test]
    fn a_store_over_its_bucket_is_told_when_to_come_back_and_others_are_not_held() {
        let config = RateLimitConfig {
            lines_per_second: 10,
            burst_lines: 100,
            stores: BTreeMap::from([(
                "york".into(),
                StoreRate {
                    lines_per_second: 1000,
                    burst_lines: 1000,
                },
            )]),
        };
        let limits = RateLimits::new(&config, &auth());
        assert!(limits.check("leeds", 100).is_ok());
        match limits.check("leeds", 50) {
            Err(ApiError::RateLimited {
                retry_after_secs, ..
            }) => assert!((4..=6).contains(&retry_after_secs), "{retry_after_secs}"),
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(
            limits.check("york", 1000).is_ok(),
            "york has its own bucket"
        );
        assert!(
            limits.check("unknown", 1_000_000).is_ok(),
            "no bucket, no limit"
        );
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let config = RateLimitConfig {
            lines_per_second: 0,
            burst_lines: 1,
            stores: BTreeMap::new(),
        };
        let limits = RateLimits::new(&config, &auth());
        for _ in 0..10 {
            assert!(limits.check("leeds", 50_000).is_ok());
        }
    }
}
