//! The sinks' threads run at a lower CPU priority than ingest.
//!
//! On a machine where ingest and the sinks share the cores, an acknowledgement should not wait
//! behind a sink's batch: a store waits for its acknowledgement, while the sinks only have to
//! catch up. So each sink's arbiter thread, and the blocking threads its runtime starts (where
//! the stores' SQLite writes, the archive's files and the stream's reads run), take a higher
//! nice value (`sinks.nice`). They still take every core ingest leaves idle, and they cannot fall
//! behind for good: past `sinks.backlog_high_water_records` or `sinks.max_lag` ingest answers
//! 503, which leaves the cores to them.
//!
//! Linux only: there the nice value belongs to a thread. Elsewhere (`setpriority` would change
//! the whole process) the threads keep the process's priority.

use actix::Arbiter;

/// The name of the sinks' blocking threads (where their SQLite writes and files run), so that
/// `top -H` and `/proc/PID/task` tell them apart from ingest's.
pub const BLOCKING_THREAD_NAME: &str = "sink-blocking";

/// An arbiter whose thread and blocking threads run `nice` steps below the calling thread (0:
/// the same priority).
///
/// # Panics
/// When the operating system refuses a new thread or runtime (as `Arbiter::new` does).
pub fn arbiter_with_nice(nice: i32) -> Arbiter {
    // Absolute, not a step from each thread's own: a blocking thread starts with the nice value
    // of the thread that spawned it, which may already be lowered.
    let target = this_thread_nice().map(|base| (base + nice).min(19));
    let arbiter = Arbiter::with_tokio_rt(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(BLOCKING_THREAD_NAME)
            .on_thread_start(move || set_this_thread_nice(target))
            .build()
            .expect("cannot start a sink's runtime")
    });
    arbiter.spawn_fn(move || set_this_thread_nice(target));
    arbiter
}

/// The calling thread's nice value, when the priority is per thread (Linux) and readable; `None`
/// means "leave priorities alone".
#[cfg(target_os = "linux")]
fn this_thread_nice() -> Option<i32> {
    // SAFETY: getpriority only reads the calling thread's priority (`who` 0 is the calling thread
    // on Linux). It may return -1 as a value, so errno is cleared first to tell a failure apart.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        (nice != -1 || *libc::__errno_location() == 0).then_some(nice)
    }
}

#[cfg(not(target_os = "linux"))]
fn this_thread_nice() -> Option<i32> {
    None
}

/// Sets the calling thread's nice value to `target` (from [`this_thread_nice`]).
fn set_this_thread_nice(target: Option<i32>) {
    #[cfg(target_os = "linux")]
    if let Some(target) = target {
        // SAFETY: setpriority only sets the calling thread's scheduling priority (`who` 0 is the
        // calling thread on Linux); no memory is involved.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) } != 0 {
            tracing::warn!(
                nice = target,
                error = %std::io::Error::last_os_error(),
                "Cannot lower a sink thread's CPU priority; it runs at ingest's priority."
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = target;
}
