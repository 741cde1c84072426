//! Operations: Prometheus metrics, liveness, readiness and the pipeline's progress.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

use super::error::ApiError;
use super::AppState;

super::route_group! {
    get "/v1/status" => status,
}

/// Liveness and readiness: on the main port, where the load balancer asks, and on
/// `server.ops_port` when set.
pub mod health {
    crate::web::route_group! {
        get "/health/live" => super::live,
        get "/health/ready" => super::ready,
    }
}

/// `GET /metrics`: on `server.ops_port` only when that is set, so a load balancer in front of
/// the main port never exposes it; on the main port otherwise.
pub mod metrics {
    crate::web::route_group! {
        get "/metrics" => super::scrape,
    }
}

async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    // Backlog gauges are computed on demand so a scrape always sees the current figures.
    state.progress.snapshot();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "live" }))
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    /// Each backend: "ok" or why it is not usable.
    checks: BTreeMap<String, String>,
}

/// How long one backend may take to answer its health check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let mut checks = BTreeMap::new();
    let stream = tokio::time::timeout(CHECK_TIMEOUT, state.stream.health()).await;
    let stream = match state.appends.failing() {
        Some(failing) => failing,
        None => outcome(stream.map(|r| r.map_err(|e| e.to_string()))),
    };
    checks.insert("stream".to_owned(), stream);
    let progress = state.progress.snapshot();
    for sink in &state.sinks {
        let result = tokio::time::timeout(CHECK_TIMEOUT, sink.health()).await;
        let mut check = outcome(result);
        // A health check is a read: it passes while writes are locked or throttled. A write the
        // sink is retrying right now makes it not ready too.
        if let Some(s) = progress
            .iter()
            .find(|s| s.sink == sink.kind() && s.failing.is_some())
        {
            if check == "ok" {
                check = format!(
                    "failing on shard {}: {}",
                    s.shard,
                    s.failing.as_deref().unwrap_or_default()
                );
            }
        }
        checks.insert(sink.kind().to_string(), check);
    }
    let result = tokio::time::timeout(CHECK_TIMEOUT, state.dead_letter_store.health()).await;
    checks.insert(
        "dead_letter".to_owned(),
        outcome(result.map(|r| r.map_err(|e| e.to_string()))),
    );
    // A sink too far behind makes ingest refuse lines: the instance is not ready for them.
    let pressure = state.progress.pressure();
    checks.insert(
        "lag".to_owned(),
        state
            .limits
            .over(&pressure)
            .unwrap_or_else(|| "ok".to_owned()),
    );
    let ok = checks.values().all(|v| v == "ok");
    let body = Readiness {
        status: if ok { "ready" } else { "not ready" },
        checks,
    };
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

fn outcome(result: Result<Result<(), String>, tokio::time::error::Elapsed>) -> String {
    match result {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e,
        Err(_) => format!("no answer within {CHECK_TIMEOUT:?}"),
    }
}

async fn status(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.authorize_read_all(&req, "the pipeline's status")?;
    let shards = state.progress.snapshot();
    let caught_up = shards.iter().all(|s| !s.behind);
    let max_lag = shards.iter().map(|s| s.lag_seconds).fold(0.0, f64::max);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "instance": state.instance,
        "caught_up": caught_up,
        "max_backlog_records": shards.iter().filter_map(|s| s.backlog_records).max().unwrap_or(0),
        "high_water_records": state.limits.backlog_high_water_records,
        "max_lag_seconds": max_lag,
        "lag_limit_seconds": state.limits.max_lag.as_secs_f64(),
        "shards": shards,
    })))
}
