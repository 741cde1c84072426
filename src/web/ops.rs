//! Operations: Prometheus metrics, liveness, readiness and the pipeline's progress.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

use super::AppState;

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/v1/status", web::get().to(status));
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
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
    for sink in &state.sinks {
        let result = tokio::time::timeout(CHECK_TIMEOUT, sink.health()).await;
        checks.insert(sink.kind().to_string(), outcome(result));
    }
    let result = tokio::time::timeout(CHECK_TIMEOUT, state.dead_letter_store.health()).await;
    checks.insert(
        "dead_letter".to_owned(),
        outcome(result.map(|r| r.map_err(|e| e.to_string()))),
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

async fn status(state: web::Data<AppState>) -> HttpResponse {
    let shards = state.progress.snapshot();
    let caught_up = shards.iter().all(|s| s.backlog_records == 0);
    HttpResponse::Ok().json(serde_json::json!({
        "instance": state.instance,
        "caught_up": caught_up,
        "max_backlog_records": shards.iter().map(|s| s.backlog_records).max().unwrap_or(0),
        "high_water_records": state.limits.backlog_high_water_records,
        "shards": shards,
    }))
}
