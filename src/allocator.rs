//! The process's memory allocator: jemalloc, with the sinks' threads in an arena of their own.
//!
//! The sinks' threads run below ingest's CPU priority ([`crate::actors::priority`]). An allocator
//! arena is a lock that every thread allocating in it takes, so a sink's thread preempted while it
//! holds one makes an HTTP worker or the stream's writer wait until the sink gets a core back,
//! which it does only when ingest leaves one idle. With glibc's malloc (arenas capped at two for
//! memory, and no way to choose a thread's arena), that was where ingest waited: off-CPU stacks
//! of a durable replay showed the HTTP workers blocked 869 ms on glibc's arena locks, the stream's
//! writer 311 ms, in about two seconds of ingest (docs/benchmarks.md); nearly all of it in
//! Rust's allocations and frees (a request's records, allocated by an HTTP worker, are freed by
//! the stream's writer). jemalloc serves most allocations from a cache per thread without a lock,
//! and lets a thread choose its arena: the sinks' threads share one that no ingest thread uses,
//! so the two never wait on each other's locks.
//!
//! jemalloc is Rust's global allocator only (`src/main.rs`); SQLite keeps glibc's `malloc`. Made
//! the `malloc` of the whole process, jemalloc held SQLite's page caches too, and the peak
//! resident memory of the pipeline bench rose from 155 to 193 MB (205 MB under 3x overload, over
//! the 200 MB target); SQLite's allocations were 2% of the lock waits.

/// Moves the calling thread's allocations to the sinks' arena, made on the first call. Where
/// jemalloc is not the allocator (MSVC builds) or refuses, the thread keeps its arena.
pub fn use_sinks_arena() {
    #[cfg(not(target_env = "msvc"))]
    {
        use std::sync::OnceLock;
        static SINKS_ARENA: OnceLock<Option<u32>> = OnceLock::new();
        let arena = SINKS_ARENA.get_or_init(|| {
            // SAFETY: `arenas.create` takes no input and returns the new arena's index, a u32.
            match unsafe { tikv_jemalloc_ctl::raw::read::<u32>(b"arenas.create\0") } {
                Ok(index) => {
                    // Pages the sinks free go back to the system at once rather than after the
                    // second the other arenas keep them (`src/main.rs`): the sinks' catch-up is
                    // where the peak resident memory is, and their threads have the CPU to spare.
                    let decay = format!("arena.{index}.dirty_decay_ms\0");
                    // SAFETY: `arena.<i>.dirty_decay_ms` takes a signed size (isize).
                    if let Err(e) = unsafe { tikv_jemalloc_ctl::raw::write(decay.as_bytes(), 0isize) } {
                        tracing::warn!(error = %e, "Cannot make the sinks' allocator arena return freed pages at once.");
                    }
                    Some(index)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot make an allocator arena for the sinks; they share ingest's.");
                    None
                }
            }
        });
        if let Some(index) = *arena {
            // SAFETY: `thread.arena` takes an unsigned arena index (u32) of an existing arena.
            if let Err(e) = unsafe { tikv_jemalloc_ctl::raw::write(b"thread.arena\0", index) } {
                tracing::warn!(error = %e, "Cannot move a sink thread to the sinks' allocator arena.");
            }
        }
    }
}

#[cfg(all(test, not(target_env = "msvc")))]
mod tests {
    use super::*;

    /// The arena the calling thread allocates in.
    fn this_thread_arena() -> Option<u32> {
        // SAFETY: `thread.arena` reads as the calling thread's arena index, a u32.
        unsafe { tikv_jemalloc_ctl::raw::read::<u32>(b"thread.arena\0") }.ok()
    }

    /// The number of arenas jemalloc made by itself; an arena made on request comes after them.
    fn automatic_arenas() -> u32 {
        // SAFETY: `opt.narenas` reads as an unsigned int.
        unsafe { tikv_jemalloc_ctl::raw::read::<u32>(b"opt.narenas\0") }.unwrap()
    }

    #[test]
    fn the_sinks_threads_allocate_in_an_arena_of_their_own() {
        let arena_of = |sink: bool| {
            std::thread::spawn(move || {
                if sink {
                    use_sinks_arena();
                }
                let held = std::hint::black_box(Box::new([0u8; 100]));
                (this_thread_arena(), held.len())
            })
            .join()
            .unwrap()
            .0
            .expect("jemalloc is the allocator")
        };
        let (first_sink, second_sink) = (arena_of(true), arena_of(true));
        assert_eq!(first_sink, second_sink, "one arena for every sink thread");
        assert!(
            first_sink >= automatic_arenas(),
            "arena {first_sink} is one of the {} that any thread may get",
            automatic_arenas()
        );
        for _ in 0..4 {
            assert_ne!(
                arena_of(false),
                first_sink,
                "another thread got the sinks' arena"
            );
        }
    }
}
