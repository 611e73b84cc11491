//! The broker's allocator, and giving freed memory back to the OS.
//!
//! Warren allocates with mimalloc (built in, not the system's malloc). On
//! the per-message path a message is allocated on the publisher's thread
//! and freed on the consumer's. glibc's malloc then took the publisher
//! arena's lock for every free that missed the freeing thread's small
//! cache, and the two threads waited on each other: about a tenth of the
//! broker's CPU in the transient 16 B benchmark went to futex waits and
//! wake-ups (`perf record`, docs/benchmarks.md). mimalloc frees a block of
//! another thread's page onto that page's own list, without a lock.
//!
//! mimalloc keeps freed pages for reuse for a while. `trim` and
//! `release_thread_cache` (on each runtime worker as it parks) collect the
//! calling thread's heap and give its free pages back to the OS. Without
//! them a deleted backlog left RSS above the memory watermark, and closed
//! connections left memory pinned.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for the process. mimalloc asks the
/// kernel for them (`madvise`); then each thread's first pages and every
/// partly used region count 2 MiB to RSS: a fresh broker stood at ~19 MiB
/// instead of ~11, which is memory alarm headroom gone, for no throughput
/// measurable on the per-message path (docs/benchmarks.md). Call it first:
/// it applies to pages touched from then on.
pub fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE sets a flag on this process; no memory
    // is passed.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Bytes the allocator has committed from the OS: what the program uses,
/// plus free pages it has not given back yet. (Pages committed but never
/// touched are not resident, so this may exceed RSS.)
pub fn committed() -> u64 {
    let mut v = [0usize; 8];
    let [elapsed, user, system, rss, peak_rss, commit, peak_commit, faults] = &mut v;
    // SAFETY: each pointer is to a usize that mi_process_info writes.
    unsafe { libmimalloc_sys::mi_process_info(elapsed, user, system, rss, peak_rss, commit, peak_commit, faults) };
    v[5] as u64
}

/// Gives the calling thread's free pages back to the OS, and collects the
/// heaps of threads that have exited; asks the runtime workers to do the
/// same for theirs as they next park.
pub fn trim() {
    // SAFETY: mi_collect only works on mimalloc's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) };
    request_release();
}

/// Gives the calling thread's free pages back to the OS (its heap,
/// including blocks other threads freed into it).
pub fn release_thread_cache() {
    // SAFETY: as in `trim`.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Bumped by the resource timer before each trim; a runtime worker that
/// parks and has not released its cache since the last bump does so (see
/// `on_worker_park`).
static RELEASE_EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The epoch this thread last released its cache in.
    static RELEASED: Cell<u64> = const { Cell::new(0) };
}

/// Asks every runtime worker to release its cache when it next parks.
pub fn request_release() {
    RELEASE_EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// The runtime's `on_thread_park` hook: a worker going idle releases its
/// cache once per `request_release` (one atomic load otherwise).
pub fn on_worker_park() {
    let epoch = RELEASE_EPOCH.load(Ordering::Relaxed);
    if RELEASED.get() != epoch {
        RELEASED.set(epoch);
        release_thread_cache();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss() -> u64 {
        crate::resources::rss_bytes().unwrap()
    }

    /// Freed memory goes back to the OS once collected. Measured in a
    /// child process running only this test, so that no other test's
    /// allocations move the figures.
    #[test]
    fn collecting_returns_freed_memory() {
        if std::env::var_os("WARREN_HEAP_TEST_CHILD").is_some() {
            const MIB: u64 = 1 << 20;
            let before = rss();
            // 64 MiB in 1 KiB chunks, allocated and freed on this thread.
            let chunks: Vec<Box<[u8; 1024]>> = (0..65_536).map(|_| Box::new([1u8; 1024])).collect();
            let full = rss();
            assert!(full >= before + 60 * MIB, "allocated: {before} -> {full} bytes resident");
            drop(chunks);
            release_thread_cache();
            trim();
            let after = rss();
            assert!(after < before + 16 * MIB, "freed and collected: {full} -> {after} bytes resident");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "heap::tests::collecting_returns_freed_memory", "--test-threads=1"])
            .env("WARREN_HEAP_TEST_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }
}
