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
//! - [`config`]: layered settings (defaults, file, environment), validated at start.
//! - [`web`]: the actix-web API: ingest, invoice and customer look-ups, dashboard, metrics, health.
//! - [`stream`]: the durable, sharded log between ingest and sinks ([`Stream`](stream::Stream)),
//!   and the checkpoints of the sinks.
//! - [`object_store`]: objects in a folder or S3, for the archive, dead letters and bulk sources.
//! - [`actors`]: supervised actix actors: shard readers and the three sinks, with retry,
//!   backpressure and dead letters.
//! - [`batch`]: bulk CSV import with a ledger of what was loaded.
//! - [`metrics`]: every Prometheus series, declared once.
//! - [`sqlite`]: how the embedded backends open SQLite files and run SQLite off the async runtime.
//! - [`cli`]: the `shopstream` command line.

pub mod actors;
pub mod batch;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod model;
pub mod object_store;
pub mod sqlite;
pub mod stream;
pub mod web;
