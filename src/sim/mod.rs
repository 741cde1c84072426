//! Tools that stand in for the outside world, for demos, load tests and benchmarks: they use the
//! domain model and the HTTP API, and nothing in the pipeline uses them.
//!
//! - [`generate`]: a synthetic Online Retail export (seeded, realistic catalogue, calendar and
//!   customers), written as CSV in the real export's formats.
//! - [`replay`]: the store simulator that sends a CSV export to `POST /v1/invoices` as stores
//!   would, and measures what came back.

pub mod generate;
pub mod replay;
