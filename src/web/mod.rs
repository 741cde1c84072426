//! The HTTP API (actix-web): ingest, queries, dashboard, metrics and health.
