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

/// jemalloc for Rust's allocations; SQLite and the other C libraries keep glibc's `malloc` (see
/// `shopstream::allocator`).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the environment adds to them):
/// two automatic arenas (the sinks have one more of their own), and freed pages given back to the
/// system after about a second instead of ten, by a background thread rather than on the
/// allocating threads.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 53] = b"narenas:2,dirty_decay_ms:1000,background_thread:true\0";

/// glibc's malloc, which the C libraries (SQLite) still use, gives every thread that allocates its
/// own arena (up to 8 per core), and memory freed in one arena is not reused by the others: two
/// keep its share of the peak close to the real use. `MALLOC_ARENA_MAX` in the environment still
/// wins.
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
