//! The allocator the `sae` and `xtask` binaries install: mimalloc, told to keep the memory
//! that is freed for reuse instead of returning it to the OS. Burn allocates a fresh tensor per
//! op and the SAE step's kernels use multi-megabyte buffers; memory handed back to the OS comes
//! back as fresh pages whose faults cost a fifth of a model's forward pass on CPU (the same
//! effect that PyTorch users remove with glibc's malloc tunables). Peak memory is unchanged;
//! the process's resident size stays at its peak.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: sae_core::allocator::MiMalloc = sae_core::allocator::MiMalloc;
//!
//! fn main() {
//!     sae_core::allocator::keep_freed_memory();
//! }
//! ```

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in `mimalloc.h` (its index in mimalloc 2 and 3 alike).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc keep freed memory (`MIMALLOC_PURGE_DELAY=-1`, which still takes precedence
/// when set in the environment). Does nothing with a mimalloc whose options this does not know.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: plain FFI calls on mimalloc's option table; `mi_option_set` is not thread safe,
    // so binaries call this first thing in `main`, before any thread starts.
    unsafe {
        if matches!(libmimalloc_sys::mi_version() / 10000, 2 | 3) {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}
