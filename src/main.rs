fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    match shopstream::cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates its own malloc arena (up to 8 per core), and memory
/// freed in one arena is not reused by the others: with actix's workers, the arbiters and the
/// blocking pool, peak RSS of a full-dataset replay was half again what the pipeline holds.
/// Two arenas keep it close to the real use at no measurable cost in throughput (figures in
/// docs/benchmarks.md). `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only adjusts allocator parameters; called first thing in main, before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
