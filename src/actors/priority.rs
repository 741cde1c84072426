//! The sinks' threads run below ingest's CPU priority.
//!
//! On a machine where ingest and the sinks share the cores, an acknowledgement should not wait
//! behind a sink's batch: a store waits for its acknowledgement, while the sinks only have to
//! catch up. So each sink's arbiter thread, and the blocking threads its runtime starts (where
//! the stores' SQLite writes, the archive's files and the stream's reads run), take a lower
//! priority (`sinks.cpu_class`):
//!
//! - `idle` (the default): Linux's `SCHED_IDLE` class. A sink's thread runs only on a core no
//!   thread of the normal class wants, and a woken ingest thread takes the core from it at once.
//!   (Before the sinks' checkpoints became jobs of the stream's writer, a sink in this class could
//!   hold the stream file's write lock while starved, and acknowledgements waited up to 146 ms;
//!   now no lock of ingest's path is held by a sink's thread for longer than a memory operation.)
//! - `nice`: the normal class, `sinks.nice` steps below ingest. A nice-10 thread still gets about
//!   a tenth of a contended core, and with a dozen sink threads runnable that adds up.
//!
//! Either way the sinks take every core ingest leaves idle (it waits for fsyncs and for its
//! clients), and they cannot fall behind for good: past `sinks.backlog_high_water_records` or
//! `sinks.max_lag` ingest answers 503, which leaves the cores to them.
//!
//! Linux only: there the scheduling class and nice value belong to a thread. Elsewhere (where
//! they would change the whole process) the threads keep the process's priority.

use actix::Arbiter;

/// The name of the sinks' blocking threads (where their SQLite writes and files run), so that
/// `top -H` and `/proc/PID/task` tell them apart from ingest's.
pub const BLOCKING_THREAD_NAME: &str = "sink-blocking";

/// The name each sink's arbiter thread takes (actix names them `actix-rt|system:0|arbiter:N`,
/// which the kernel cuts to `actix-rt|system`, the HTTP workers' name), so that the sinks' actors
/// show apart from ingest's threads too.
pub const ARBITER_THREAD_NAME: &str = "sink-arbiter";

/// Where the sinks' threads stand for CPU against ingest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkPriority {
    /// Linux's `SCHED_IDLE` class: only CPU that no thread of the normal class wants.
    Idle,
    /// The normal class, this many nice steps below the thread that starts the sinks (0: the
    /// same priority).
    Nice(i32),
}

/// What a sink's thread sets itself to, resolved once on the thread that starts the sinks.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Leave the thread as it is (the priority cannot be read, or not per thread).
    Keep,
    Idle,
    /// An absolute nice value.
    Nice(i32),
}

/// An arbiter whose thread and blocking threads run at `priority`.
///
/// # Panics
/// When the operating system refuses a new thread or runtime (as `Arbiter::new` does).
pub fn arbiter_with_priority(priority: SinkPriority) -> Arbiter {
    let target = match priority {
        SinkPriority::Idle => Target::Idle,
        // Absolute, not a step from each thread's own: a blocking thread starts with the nice
        // value of the thread that spawned it, which may already be lowered.
        SinkPriority::Nice(steps) => {
            this_thread_nice().map_or(Target::Keep, |base| Target::Nice((base + steps).min(19)))
        }
    };
    let arbiter = Arbiter::with_tokio_rt(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(BLOCKING_THREAD_NAME)
            .on_thread_start(move || become_sink_thread(target))
            .build()
            .expect("cannot start a sink's runtime")
    });
    arbiter.spawn_fn(move || {
        name_this_thread(ARBITER_THREAD_NAME);
        become_sink_thread(target);
    });
    arbiter
}

/// What every sink thread (the arbiter's and its blocking threads) does first: take the sinks'
/// CPU priority, and allocate in the sinks' arena so that a sink preempted inside the allocator
/// holds no lock an ingest thread waits for ([`crate::allocator`]).
fn become_sink_thread(target: Target) {
    set_this_thread(target);
    crate::allocator::use_sinks_arena();
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

/// Renames the calling thread as `top -H` and `/proc/PID/task/TID/comm` show it (at most 15 bytes
/// are kept).
fn name_this_thread(name: &str) {
    #[cfg(target_os = "linux")]
    {
        let name = std::ffi::CString::new(name).expect("a thread name has no NUL byte");
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes (longer ones are
        // cut) for the calling thread; `name` outlives the call.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// Sets the calling thread's scheduling class or nice value to `target`.
fn set_this_thread(target: Target) {
    #[cfg(target_os = "linux")]
    {
        let (result, what) = match target {
            Target::Keep => return,
            // SAFETY: sched_setscheduler only changes the calling thread's scheduling class (pid 0
            // is the calling thread on Linux); the parameter outlives the call. SCHED_IDLE takes
            // priority 0 and needs no privilege.
            Target::Idle => (
                unsafe {
                    libc::sched_setscheduler(
                        0,
                        libc::SCHED_IDLE,
                        &libc::sched_param { sched_priority: 0 },
                    )
                },
                "SCHED_IDLE".to_owned(),
            ),
            // SAFETY: setpriority only sets the calling thread's scheduling priority (`who` 0 is
            // the calling thread on Linux); no memory is involved.
            Target::Nice(nice) => (
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) },
                format!("nice {nice}"),
            ),
        };
        if result != 0 {
            tracing::warn!(
                priority = %what,
                error = %std::io::Error::last_os_error(),
                "Cannot lower a sink thread's CPU priority; it runs at ingest's priority."
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = target;
}
