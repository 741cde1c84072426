//! The actors that read the stream and feed the sinks, and their supervision.

pub mod operational;
pub mod warehouse;
