//! Host buffers reused from one SAE step to the next. A fresh multi-megabyte buffer is fresh
//! memory from the OS each time (the allocator returns large blocks), and its page faults cost
//! as much as the arithmetic done in it; the step's buffers come from this per-thread pool
//! instead and go back to it when the step is done.

use std::cell::RefCell;

/// Buffers kept per thread at most; more are dropped.
const KEEP: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` floats whose contents are unspecified (the caller overwrites every
/// element): the smallest pooled one that holds `len` without growing, else a new one.
pub(crate) fn take(len: usize) -> Vec<f32> {
    let mut buffer = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let best = (0..pool.len())
            .filter(|&i| pool[i].capacity() >= len)
            .min_by_key(|&i| pool[i].capacity());
        best.map(|i| pool.swap_remove(i)).unwrap_or_default()
    });
    buffer.resize(len, 0.0);
    buffer
}

/// Returns `buffer` to this thread's pool.
pub(crate) fn give(buffer: Vec<f32>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < KEEP {
            pool.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    // A returned buffer is handed out again (same allocation) for a request it holds, and the
    // smallest one that fits is chosen.
    #[test]
    fn buffers_are_reused_best_fit() {
        let big = take(1000);
        let small = take(10);
        let (big_ptr, small_ptr) = (big.as_ptr(), small.as_ptr());
        give(big);
        give(small);
        let again = take(8);
        assert_eq!(again.as_ptr(), small_ptr);
        assert_eq!(again.len(), 8);
        let large = take(500);
        assert_eq!(large.as_ptr(), big_ptr);
        assert_eq!(large.len(), 500);
    }
}
