//! The shard worker: one actor per (sink, shard) reads that shard for that sink from the sink's
//! own checkpoint, and writes what it reads with retry, dead letters and checkpoints.
//!
//! One worker per (sink, shard) is what keeps the sinks independent: a slow or failing warehouse
//! lags on its own checkpoint while the archive and the operational store go on. Memory is bounded
//! by one read batch (plus, for the archive, one object's worth of lines); everything not yet
//! checkpointed stays in the durable stream, and ingest pushes back once a backlog passes the
//! high-water mark.
//!
//! The loop itself is [`core::ShardLoop`], a plain type; [`ShardSink`] is the actor that runs it
//! under actix's [`Supervisor`](actix::Supervisor): a run that fails or panics stops the actor,
//! and the supervisor starts it again from the durable checkpoint after a capped backoff.

mod core;
pub mod dedup;
#[cfg(test)]
mod tests;

pub use self::core::{ShardSinkParts, ShardSinkSettings};

use actix::prelude::*;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::watch;

use self::core::{panic_message, RunError, ShardLoop};
use crate::retry::Backoff;

/// Runs one (sink, shard) worker. Start it under [`actix::Supervisor`]: when a run fails or
/// panics the actor stops itself, and the supervisor starts it again, which reloads the checkpoint.
pub struct ShardSink {
    parts: Arc<ShardSinkParts>,
    /// Set once by [`Shutdown`]: finish the unit at hand, checkpoint, and end.
    stop: watch::Sender<bool>,
    /// Set when the worker has ended for good (stopped, or the shard is finished).
    finished: watch::Sender<bool>,
    /// The delay before the next restart: doubles with failed runs in a row up to
    /// `sinks.retry.max_backoff`, starts over after a run that saved a checkpoint.
    restart_backoff: Backoff,
    restarting: bool,
}

impl ShardSink {
    pub fn new(parts: ShardSinkParts) -> Self {
        let restart_backoff = Backoff::new(&parts.settings.retry);
        ShardSink {
            parts: Arc::new(parts),
            stop: watch::channel(false).0,
            finished: watch::channel(false).0,
            restart_backoff,
            restarting: false,
        }
    }
}

impl Actor for ShardSink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let parts = self.parts.clone();
        let stop = self.stop.subscribe();
        let delay = if std::mem::take(&mut self.restarting) {
            self.restart_backoff.next_delay()
        } else {
            std::time::Duration::ZERO
        };
        let run = async move {
            let mut core = ShardLoop::new(parts, stop.clone());
            let mut stop = stop;
            // Wait before a restart, so a run that fails at once does not turn into a hot loop.
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return (Err(RunError::Stopped), false),
            }
            let result = AssertUnwindSafe(core.run())
                .catch_unwind()
                .await
                .unwrap_or_else(|payload| Err(RunError::Panicked(panic_message(payload.as_ref()))));
            (result, core.progressed())
        };
        ctx.spawn(
            run.into_actor(self)
                .map(|(result, progressed), act, ctx| match result {
                    Ok(()) => {
                        act.finished.send_replace(true);
                    }
                    Err(_) if *act.stop.borrow() => {
                        act.finished.send_replace(true);
                    }
                    Err(e) => {
                        let p = &act.parts;
                        if progressed {
                            act.restart_backoff.reset();
                        }
                        tracing::error!(sink = %p.sink.kind(), shard = %p.shard, error = %e, "The shard worker failed; restarting it from its checkpoint.");
                        p.progress
                            .record_failing(p.sink.kind(), &p.shard, Some(e.to_string()));
                        ctx.stop();
                    }
                }),
        );
    }
}

impl Supervised for ShardSink {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.restarting = true;
        let p = &self.parts;
        crate::metrics::SINK_RESTARTS
            .with_label_values(&[p.sink.kind().as_str()])
            .inc();
        p.progress.record_restart(p.sink.kind(), &p.shard);
    }
}

/// Asks the worker to write what it holds, checkpoint and end; answers when it has.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for ShardSink {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.stop.send_replace(true);
        let mut finished = self.finished.subscribe();
        Box::pin(async move {
            let _ = finished.wait_for(|done| *done).await;
        })
    }
}
