//! Giving freed memory back to the OS. glibc's malloc keeps what the broker
//! frees for reuse: in its arenas (released by `trim`) and in a small cache
//! per thread (released by `release_thread_cache` on each runtime worker).
//! Without both, a deleted backlog left RSS above the memory watermark, and
//! 9,000 closed connections left ~0.75 MiB pinned by the workers' caches.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Returns the arenas' free memory to the OS (glibc `malloc_trim`: every
/// arena, free pages in the middle of the heap too).
pub fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // lists; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc's per-thread cache (tcache) holds up to `TCACHE_COUNT` freed chunks
/// of each of its `TCACHE_BINS` sizes (requests of 24 + 16 × bin bytes, up
/// to 1,032). Chunks in it count as in use, so `trim` cannot release the
/// page each one sits on: after a wave of connections closed, the last ones
/// freed on each worker were scattered over ~90 pages per worker.
const TCACHE_BINS: usize = 64;
const TCACHE_COUNT: usize = 7;

/// Empties the calling thread's cache. glibc has no call for it, but a
/// thread's cache goes back to the arenas when the thread exits: so take
/// every cached chunk out (allocating each size twice the cache's depth,
/// since an allocation that misses the cache may refill it from the arena)
/// and free them on a short-lived thread. The next `trim` releases their
/// pages. Costs ~900 allocations and a thread start. Returns the thread
/// that frees them.
pub fn release_thread_cache() -> Option<std::thread::JoinHandle<()>> {
    let mut taken: Vec<usize> = Vec::with_capacity(TCACHE_BINS * TCACHE_COUNT * 2);
    for bin in 0..TCACHE_BINS {
        for _ in 0..TCACHE_COUNT * 2 {
            // SAFETY: a plain allocation, freed below with `free`.
            let p = unsafe { libc::malloc(24 + 16 * bin) };
            if !p.is_null() {
                taken.push(p as usize);
            }
        }
    }
    let free_all = |taken: Vec<usize>| {
        for p in taken {
            // SAFETY: each pointer came from `malloc` above and is freed
            // exactly once.
            unsafe { libc::free(p as *mut libc::c_void) };
        }
    };
    let (tx, rx) = std::sync::mpsc::channel::<Vec<usize>>();
    let spawned = std::thread::Builder::new().name("warren-heap".into()).stack_size(64 * 1024).spawn(move || {
        if let Ok(taken) = rx.recv() {
            free_all(taken);
        }
    });
    match spawned {
        Ok(thread) => {
            let _ = tx.send(taken);
            Some(thread)
        }
        // No thread to free them on: freeing them here only puts them
        // back in this thread's cache, which is where they were.
        Err(_) => {
            free_all(taken);
            None
        }
    }
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
        let _ = release_thread_cache();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_in_use() -> u64 {
        crate::resources::heap_usage().0
    }

    /// Chunks a thread freed into its cache count as in use until
    /// `release_thread_cache` hands them back to the arena. Measured in a
    /// child process running only this test, so that no other test's
    /// allocations move the figures.
    #[test]
    fn releasing_the_cache_returns_its_chunks() {
        if std::env::var_os("WARREN_HEAP_TEST_CHILD").is_some() {
            let (cached, released) = std::thread::spawn(|| {
                // Fill this thread's cache: 7 chunks of each of the 64 sizes.
                let mut chunks = Vec::with_capacity(TCACHE_BINS * TCACHE_COUNT);
                for bin in 0..TCACHE_BINS {
                    for _ in 0..TCACHE_COUNT {
                        // SAFETY: a plain allocation, freed just below.
                        chunks.push(unsafe { libc::malloc(24 + 16 * bin) } as usize);
                    }
                }
                let before = heap_in_use();
                for &p in &chunks {
                    // SAFETY: allocated above, freed once.
                    unsafe { libc::free(p as *mut libc::c_void) };
                }
                let cached = heap_in_use();
                assert_eq!(cached, before, "freed chunks went to the thread's cache");
                release_thread_cache().expect("a thread to free them on").join().unwrap();
                let released = heap_in_use();
                drop(chunks);
                (cached, released)
            })
            .join()
            .unwrap();
            // 7 chunks of 32, 48, ... 1,040 bytes: 240,128 bytes. Not all
            // need come back (a few may be refilled from the arena while
            // the cache is emptied, and the freeing thread allocates too),
            // but without the release none would.
            let expected = (0..TCACHE_BINS).map(|bin| TCACHE_COUNT * (32 + 16 * bin)).sum::<usize>() as u64;
            assert!(
                cached.saturating_sub(released) >= expected * 9 / 10,
                "released {} of the {expected} cached bytes",
                cached.saturating_sub(released)
            );
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "heap::tests::releasing_the_cache_returns_its_chunks", "--test-threads=1"])
            .env("WARREN_HEAP_TEST_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }
}
