//! What the agent gives back once start-up is over: the heap that held the first listings and
//! dumps. The binary's own code pages stay mapped as they are (they are shared, clean file pages
//! the kernel reclaims under pressure anyway); docs/benchmarks.md reports memory as private
//! (anonymous) and file-backed parts for that reason.

/// Hands the heap freed after start-up back to the kernel: the lease listings and the first
/// kernel dump of thousands of peers are transient, and glibc would otherwise keep their pages.
/// musl's allocator (the static release binary) returns freed spans on its own.
pub(crate) fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
