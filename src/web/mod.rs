//! The HTTP API (actix-web): ingest, look-ups, dashboard, metrics, health. Each route group is a
//! file with a `config` function; errors become answers in one place ([`error::ApiError`]).

pub mod access;
pub mod admission;
pub mod dashboard;
pub mod error;
pub mod ingest;
mod line_identity;
pub mod openapi;
pub mod ops;
pub mod query;

/// Declares a route group's routes once: its `ROUTES` table (method and path, as
/// `src/web/openapi.json` spells them) and its `config` function, both from the same lines, so
/// the table that `tests/openapi.rs` holds against the document cannot drift from what is served.
macro_rules! route_group {
    ($($method:ident $path:literal => $handler:expr),+ $(,)?) => {
        /// The routes of this group: (method, path).
        pub const ROUTES: &[$crate::web::Route] = &[$($crate::web::Route {
            method: stringify!($method),
            path: $path,
        }),+];

        /// Registers the routes of this group; another method on one of its paths is a 405.
        pub fn config(cfg: &mut actix_web::web::ServiceConfig) {
            $(cfg.service(
                actix_web::web::resource($path)
                    .route(actix_web::web::$method().to($handler))
                    .default_service(actix_web::web::to(|| async {
                        Err::<actix_web::HttpResponse, _>(
                            $crate::web::error::ApiError::MethodNotAllowed {
                                allowed: stringify!($method),
                            },
                        )
                    })),
            );)+
        }
    };
}
pub(crate) use route_group;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpServer};
use futures::FutureExt;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actors::progress::Progress;
use crate::actors::sink::SinkWriter;
use crate::config::{AuthConfig, Settings};
use crate::model::DateOrder;
use crate::object_store::ObjectStore;
use crate::store::{OperationalStore, Warehouse};
use crate::stream::line_index::LineIndex;
use crate::stream::Stream;
use error::ApiError;

/// Limits and policies of the API, from the settings.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_lines_per_request: usize,
    pub request_timeout: Duration,
    pub backlog_high_water_records: u64,
    pub max_lag: Duration,
    pub date_order: DateOrder,
    pub max_inflight_ingest: usize,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Self {
        Limits {
            max_body_bytes: s.server.max_body_bytes,
            max_lines_per_request: s.server.max_lines_per_request,
            request_timeout: s.server.request_timeout,
            backlog_high_water_records: s.sinks.backlog_high_water_records,
            max_lag: s.sinks.max_lag,
            date_order: s.server.date_order,
            max_inflight_ingest: s.server.max_inflight_ingest,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// This instance's name (its lease owner name on Kinesis), shown by `/v1/status`.
    pub instance: String,
    pub stream: Arc<dyn Stream>,
    /// The line-id index and idempotency keys beside the stream (docs/line-identity.md).
    pub line_index: Arc<dyn LineIndex>,
    pub operational: Arc<dyn OperationalStore>,
    pub warehouse: Arc<dyn Warehouse>,
    /// The sinks, for readiness.
    pub sinks: Vec<Arc<dyn SinkWriter>>,
    pub dead_letter_store: Arc<dyn ObjectStore>,
    pub progress: Arc<Progress>,
    pub auth: AuthConfig,
    /// Per-store token buckets of lines (`rate_limits`).
    pub rate_limits: access::RateLimits,
    pub limits: Limits,
    /// Appends waiting for the stream right now.
    pub inflight_appends: AtomicUsize,
    /// Ingest requests being parsed or appended right now (`server.max_inflight_ingest` permits).
    pub ingest_permits: Arc<tokio::sync::Semaphore>,
    /// Request bodies being read: per-store slots, the body timeout and the byte budget.
    pub bodies: Arc<admission::BodyGate>,
    /// Whether appends to the stream succeed, for readiness.
    pub appends: AppendHealth,
}

/// How long a failed append keeps readiness false when no append succeeds after it: a
/// load balancer that stops sending requests to a not-ready instance sends it none that could
/// succeed, so the failure is then asked again through new requests.
pub const APPEND_FAILURE_HOLD: Duration = Duration::from_secs(30);

/// Whether the stream takes appends, as ingest last saw it. The stream's health check is a read,
/// which passes while writes fail (another process numbering the same log, a full disk, a
/// revoked write permission); readiness asks this too, so an instance whose appends fail is
/// taken out of rotation whatever the cause.
#[derive(Debug, Default)]
pub struct AppendHealth {
    /// The last failure and when it happened; cleared by the next append that succeeds.
    failure: std::sync::Mutex<Option<(Instant, String)>>,
}

impl AppendHealth {
    /// Takes note of one append's outcome. A saturated stream (it works, and asks stores to slow
    /// down) and a record too large (the client's fault) say nothing about the stream's health;
    /// any other error, and no answer within `server.request_timeout`, is a failure.
    pub fn observe<T, E>(&self, outcome: &Result<Result<T, crate::stream::StreamError>, E>) {
        use crate::stream::StreamError;
        let failure = match outcome {
            // Lines another request already holds: the stream answered, and works.
            Ok(Ok(_) | Err(StreamError::LinesTaken(_))) => None,
            Ok(Err(StreamError::Saturated(_) | StreamError::RecordTooLarge { .. })) => return,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("an append was not confirmed within server.request_timeout".to_owned()),
        };
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) =
            failure.map(|f| (Instant::now(), f));
    }

    /// Why appends fail, when the last one failed less than [`APPEND_FAILURE_HOLD`] ago and none
    /// succeeded since.
    pub fn failing(&self) -> Option<String> {
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure
            .as_ref()
            .filter(|(at, _)| at.elapsed() < APPEND_FAILURE_HOLD)
            .map(|(at, reason)| format!("appends fail: {reason} ({}s ago)", at.elapsed().as_secs()))
    }
}

impl AppState {
    /// The store id of the request's bearer key.
    pub fn authenticate(&self, req: &HttpRequest) -> Result<String, ApiError> {
        let key = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or(ApiError::Unauthorized)?;
        self.auth
            .store_for_key(key)
            .map(str::to_owned)
            .ok_or(ApiError::Unauthorized)
    }

    /// Takes one of the ingest permits, or answers 503 when all are taken.
    pub fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.ingest_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Busy {
                reason: format!(
                    "{} ingest requests are in progress already",
                    self.limits.max_inflight_ingest
                ),
                retry_after_secs: 1,
            })
    }

    /// Refuses new lines while a sink is too far behind: the stream is durable, but a backlog
    /// that only grows means a sink is down or too slow, and stores should hold their lines
    /// rather than the stream, which drops them after its retention.
    pub fn check_backpressure(&self) -> Result<(), ApiError> {
        let pressure = self.progress.pressure_recent(Duration::from_millis(100));
        if let Some(reason) = self.limits.over(&pressure) {
            return Err(ApiError::Busy {
                reason,
                retry_after_secs: BACKPRESSURE_RETRY_AFTER_SECS,
            });
        }
        Ok(())
    }
}

/// What a 503 for a sink too far behind asks stores to wait before sending again: long enough
/// for a backlog to shrink, short enough that lines do not pile up at the stores.
pub const BACKPRESSURE_RETRY_AFTER_SECS: u64 = 10;

impl Limits {
    /// Why ingest should refuse lines under `pressure`, if it should: a sink further behind
    /// than `sinks.max_lag`, or more records behind than `sinks.backlog_high_water_records`.
    pub fn over(&self, pressure: &crate::actors::progress::Pressure) -> Option<String> {
        if pressure.max_lag > self.max_lag {
            let at = pressure
                .max_lag_at
                .as_ref()
                .map_or_else(String::new, |(sink, shard)| format!(" ({sink} on {shard})"));
            return Some(format!(
                "a sink{at} is {}s behind the stream, over sinks.max_lag of {}",
                pressure.max_lag.as_secs(),
                humantime::format_duration(self.max_lag)
            ));
        }
        if pressure.max_backlog_records > self.backlog_high_water_records {
            return Some(format!(
                "a sink is {} records behind the stream, over the high-water mark of {}",
                pressure.max_backlog_records, self.backlog_high_water_records
            ));
        }
        None
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme name is case-insensitive
/// (RFC 7235 section 2.1), so `bearer` and `BEARER` are the same scheme.
fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_start();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// One route: its HTTP method in lower case (`get`, `post`) and its path pattern
/// (`/v1/invoices/{invoice_no}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
}

/// A route group: how it registers its routes, and which they are.
type Group = (fn(&mut web::ServiceConfig), &'static [Route]);

/// The route groups of the main port, but `/metrics`.
const GROUPS: &[Group] = &[
    (ingest::config, ingest::ROUTES),
    (query::config, query::ROUTES),
    (ops::config, ops::ROUTES),
    (ops::health::config, ops::health::ROUTES),
    (openapi::config, openapi::ROUTES),
    (dashboard::config, dashboard::ROUTES),
];

/// `/metrics`: on the main port unless `server.ops_port` is set.
const METRICS: Group = (ops::metrics::config, ops::metrics::ROUTES);

/// The route groups of `server.ops_port`: metrics and health, nothing that reads sales data.
const OPS_GROUPS: &[Group] = &[METRICS, (ops::health::config, ops::health::ROUTES)];

/// The groups the main port serves: every route, `/metrics` only without an ops port.
fn main_groups(ops_port: bool) -> impl Iterator<Item = &'static Group> {
    GROUPS.iter().chain((!ops_port).then_some(&METRICS))
}

/// Every route the main port registers without `server.ops_port` (the default), for the test
/// that holds the OpenAPI document to them.
pub fn route_table() -> Vec<Route> {
    main_groups(false)
        .flat_map(|(_, r)| r.iter().copied())
        .collect()
}

/// The HTTP servers, bound and not yet running: the API, and the ops server of
/// `server.ops_port` when that is set.
pub struct Servers {
    pub api: actix_web::dev::Server,
    /// Where the API listens.
    pub addrs: Vec<std::net::SocketAddr>,
    /// The ops server (`/metrics`, `/health/*`) and where it listens, when `server.ops_port` is
    /// set. It has a worker of its own, so a scrape is answered while the API is flooded.
    pub ops: Option<(actix_web::dev::Server, Vec<std::net::SocketAddr>)>,
}

/// Middleware of both ports: counts each answer in `shopstream_http_requests_total` by route
/// pattern and status, and times it in `shopstream_http_request_duration_seconds`.
fn counted<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    let started = Instant::now();
    srv.call(req).map(move |res| {
        if let Ok(res) = &res {
            let route = res
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_owned());
            crate::metrics::HTTP_REQUESTS
                .with_label_values(&[&route, res.status().as_str()])
                .inc();
            crate::metrics::HTTP_REQUEST_DURATION
                .with_label_values(&[&route])
                .observe(started.elapsed().as_secs_f64());
        }
        res
    })
}

/// Builds the HTTP servers (not yet running) and the addresses they are bound to. Signals are
/// left to the caller, which stops the servers first and the pipeline after them.
///
/// # Errors
/// When an address cannot be bound (in use, no permission); the error names the setting.
pub fn server(state: Arc<AppState>, settings: &Settings) -> std::io::Result<Servers> {
    let data = web::Data::from(state);
    let ops_port = settings.server.ops_port;
    let ops = match ops_port {
        None => None,
        Some(port) => {
            let data = data.clone();
            let server = HttpServer::new(move || {
                OPS_GROUPS.iter().fold(
                    App::new().app_data(data.clone()).wrap_fn(counted),
                    |app, (config, _)| app.configure(config),
                )
            })
            .workers(1)
            .disable_signals()
            .bind((settings.server.bind.as_str(), port))
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen on {}:{port} (server.bind, server.ops_port): {e}",
                        settings.server.bind
                    ),
                )
            })?;
            let addrs = server.addrs();
            Some((server.run(), addrs))
        }
    };
    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    // Half the shutdown deadline for requests in flight; the rest is the sinks'.
    let grace = (settings.server.shutdown_deadline / 2).as_secs().max(1);
    let server =
        HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::BadInput(format!("bad query string: {e}")).into()
                }))
                .app_data(
                    web::PathConfig::default()
                        .error_handler(|e, _| ApiError::BadInput(format!("bad path: {e}")).into()),
                )
                .wrap_fn(counted)
                .configure(|cfg| {
                    for (config, _) in main_groups(ops_port.is_some()) {
                        config(cfg);
                    }
                })
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(grace)
        .bind((settings.server.bind.as_str(), settings.server.port))
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {}:{} (server.bind, server.port): {e}",
                    settings.server.bind, settings.server.port
                ),
            )
        })?;
    let addrs = server.addrs();
    Ok(Servers {
        api: server.run(),
        addrs,
        ops,
    })
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer k1",
            "bearer k1",
            "BEARER k1",
            "BeArEr   k1 ",
            "bearer\tk1",
        ] {
            assert_eq!(bearer_token(v), Some("k1"), "{v:?}");
        }
        for v in ["Bearerk1", "Basic k1", "Bearer ", "Bearer", "k1"] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
