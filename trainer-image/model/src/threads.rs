//! How a training or serving process uses the CPU's cores.
//!
//! candle 0.11 runs its elementwise ops on its own "barrier pool", whose threads spin between
//! ops and whose caller spins until they finish, while gemm runs on rayon's pool. Two pools on
//! the same cores oversubscribe them, and a spinning pool collapses when the cores are shared
//! (a busy node, a container CPU limit): a thread spins on a core while the thread it waits for
//! cannot get one. Measured on 2 cores with a concurrent build (BENCHMARKS.md): training dropped
//! to a seventh of its idle speed.
//!
//! So binaries call [`use_one_pool`] first thing: candle's elementwise ops then run on the
//! calling thread (`CANDLE_NUM_THREADS=1`, unless the user set it) and every parallel loop
//! (matmul blocks, fused kernels) on [`crate::kernels::pool`], which yields and parks instead.

/// Sets `CANDLE_NUM_THREADS=1` unless it is set; returns the value in force.
///
/// # Safety
/// Must be called before any other thread of the process exists (first thing in a sync
/// `main`, before an async runtime starts): it writes the environment.
pub unsafe fn use_one_pool() -> String {
    const VAR: &str = "CANDLE_NUM_THREADS";
    match std::env::var(VAR) {
        Ok(v) => v,
        Err(_) => {
            // SAFETY: the caller guarantees the process is still single-threaded.
            unsafe { std::env::set_var(VAR, "1") };
            "1".to_string()
        }
    }
}
