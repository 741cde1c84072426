//! The actors that read the stream and feed the sinks, and their supervision.
//!
//! - [`shard`]: one supervised actor per (sink, shard) reads from that sink's checkpoint and writes
//!   with retry, dead letters and checkpoints; [`sink`] is what it needs of a sink.
//! - [`archive`], [`operational`], [`warehouse`]: the three sinks, each a folder with its backend
//!   trait, its backends and its [`sink::SinkWriter`].
//! - [`pipeline`]: starts the actors for every shard, keeps retention and metrics going, and stops
//!   everything in order on shutdown.
//! - [`dead_letter`], [`retry`], [`progress`]: the pieces they share.

pub mod archive;
pub mod dead_letter;
pub mod operational;
pub mod pipeline;
pub mod progress;
pub mod retry;
pub mod shard;
pub mod sink;
pub mod warehouse;
