//! The actors that read the stream and feed the sinks, and their supervision.
//!
//! - [`shard`]: one supervised actor per (sink, shard) reads from that sink's checkpoint and writes
//!   with retry, dead letters and checkpoints; [`sink`] is what it needs of a sink.
//! - [`archive`], [`operational`], [`warehouse`]: the three sinks, each a [`sink::SinkWriter`]
//!   over its backend trait (the object store, and the stores of [`crate::store`]).
//! - [`pipeline`]: starts the actors for every shard, keeps retention and metrics going, and stops
//!   everything in order on shutdown.
//! - [`priority`]: the sinks' threads run below ingest's CPU priority.
//! - [`dead_letter`], [`progress`]: the pieces they share; their retry delay is
//!   [`crate::retry::Backoff`].

pub mod archive;
pub mod dead_letter;
pub mod operational;
pub mod pipeline;
pub mod priority;
pub mod progress;
pub mod shard;
pub mod sink;
pub mod warehouse;
