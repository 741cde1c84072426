//! # shopstream
//!
//! Moves a retailer's invoice lines from its stores to the people who use them.
//!
//! ```text
//!  stores ──POST /v1/invoices──▶ web (actix-web) ──validate──▶ stream (embedded log | Kinesis)
//!                                                                   │ one reader per shard and sink,
//!                                                                   │ each with its own checkpoint
//!                                     ┌─────────────────────────────┼──────────────────────────┐
//!                                     ▼                             ▼                          ▼
//!                              raw archiver               operational writer         warehouse forwarder
//!                       gzip NDJSON (folder | S3)     invoices, customers          `sales` fact table
//!                                                     (SQLite | DynamoDB)      (SQLite | Firehose→Redshift)
//!  bulk CSV dumps ──import (batch)──────────────────────────────────────────────────────────▲
//! ```
//!
//! Modules, in the order data flows through them:
//!
//! - [`model`]: the typed [`InvoiceLine`](model::InvoiceLine) every stage carries, its stable
//!   [`LineId`](model::LineId), and the parsers for JSON, NDJSON and CSV in the real export formats.
//! - [`config`]: layered settings (defaults, file, environment), validated at start; each stage's
//!   AWS settings sit with the stage (`[stream.kinesis]`, `[archive.s3]`, ...).
//! - [`web`]: the actix-web API: ingest, invoice and customer look-ups, dashboard, metrics, health,
//!   and its OpenAPI document (`web/openapi.json`, served at `/openapi.json`).
//! - [`stream`]: the durable, sharded log between ingest and sinks ([`Stream`](stream::Stream)),
//!   its record format (`stream::record`, encoded and decoded there only), which shards this
//!   instance reads ([`ShardOwnership`](stream::ShardOwnership)), and the checkpoints of the sinks.
//! - [`object_store`]: objects in a folder or S3, for the archive, dead letters and bulk sources.
//! - [`store`]: the operational store ([`OperationalStore`](store::OperationalStore): SQLite or
//!   DynamoDB) and the warehouse ([`Warehouse`](store::Warehouse): SQLite or Firehose, with bulk
//!   loads and their ledger), with one error type ([`StoreError`](store::StoreError)).
//! - [`actors`]: supervised actix actors: shard readers and thin sink adapters onto the object
//!   store and the stores, with retry, backpressure and dead letters.
//! - [`batch`]: bulk CSV import through the store traits.
//! - [`app`]: assembles the backends, the actors and the API from the settings.
//! - [`sim`]: tools that stand in for the outside world: the data generator and the store
//!   simulator that sends a CSV export as stores would.
//! - [`metrics`]: every Prometheus series, declared once.
//! - [`sqlite`]: how the embedded backends open SQLite files and run SQLite off the async runtime.
//! - [`aws`]: SDK clients and the retry of partial batch failures shared by the AWS backends.
//! - [`retry`]: the one jittered exponential backoff, for the sink actors and the AWS backends.
//! - [`cli`]: the `shopstream` command line.

pub mod actors;
pub mod allocator;
pub mod app;
pub mod aws;
pub mod batch;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod model;
pub mod object_store;
pub mod retry;
pub mod sim;
pub mod sqlite;
pub mod store;
pub mod stream;
pub mod web;
