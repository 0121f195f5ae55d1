//! Fused CPU kernels for training and inference, as candle custom ops with hand-written
//! backward passes.
//!
//! Why: candle composes RMSNorm, softmax, SwiGLU, RoPE and cross-entropy from 5–15 elementwise
//! ops each, and its backprop adds a zero-filled buffer and an extra add for every gradient it
//! accumulates, so a small model spends more time streaming activations through memory than
//! multiplying matrices. Each kernel here is one pass forward and one pass backward, spread over
//! the crate's own thread pool ([`pool`]; [`crate::threads`] says why candle's pool is kept to
//! the calling thread).
//!
//! Every public function takes the fused path only for contiguous f32 tensors on the CPU and
//! otherwise falls back to the composed candle ops in [`crate::models::ops`] (CUDA, bf16/f16),
//! so callers never choose. The tests compare each kernel and its gradients with the composed
//! version.

use std::ops::Range;

use candle_core::{CpuStorage, Layout, Result, Tensor};

pub mod adamw;
pub mod cross_entropy;
pub mod geglu;
pub mod grad_norm;
pub mod math;
pub mod matmul;
pub mod pool;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;

/// Which threads run the kernels' parallel loops (see [`pool`] and [`crate::threads`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPool {
    /// [`pool::global`]: spin, then yield, then park; the default.
    Llamaduo,
    /// rayon's global pool (workers sleep quickly), for comparison.
    Rayon,
    /// candle's barrier pool (spins without yielding), for comparison.
    Candle,
}

/// The pool chosen by `LLAMADUO_CPU_POOL` (`llamaduo`, the default, `rayon` or `candle`), read
/// once.
pub fn cpu_pool() -> CpuPool {
    static POOL: std::sync::OnceLock<CpuPool> = std::sync::OnceLock::new();
    *POOL.get_or_init(|| match std::env::var("LLAMADUO_CPU_POOL").as_deref() {
        Ok("candle") => CpuPool::Candle,
        Ok("rayon") => CpuPool::Rayon,
        _ => CpuPool::Llamaduo,
    })
}

/// Threads of the chosen pool (the calling thread included where it takes part).
pub(crate) fn pool_threads() -> usize {
    match cpu_pool() {
        CpuPool::Llamaduo => pool::global().threads(),
        CpuPool::Rayon => rayon::current_num_threads(),
        CpuPool::Candle => candle_core::utils::barrier_pool().n_workers() + 1,
    }
}

/// Runs `f` on ranges covering `0..n` (each index once) on the chosen pool, a few ranges per
/// thread so a slow thread's share can be taken over by the others.
pub(crate) fn run_chunked(n: usize, f: impl Fn(Range<usize>) + Sync) {
    match cpu_pool() {
        CpuPool::Llamaduo => pool::global().run_chunked(n, f),
        CpuPool::Rayon => {
            use rayon::prelude::*;
            let chunk = n.div_ceil(pool_threads() * 8).max(1);
            (0..n.div_ceil(chunk))
                .into_par_iter()
                .for_each(|c| f(c * chunk..n.min((c + 1) * chunk)));
        }
        CpuPool::Candle => candle_core::utils::barrier_pool().execute_chunked(n, f),
    }
}

/// Runs `f` over `0..n` in blocks of at least `min_block` items, spread over the pool when
/// there is more than one block.
pub(crate) fn par_blocks(n: usize, min_block: usize, f: impl Fn(Range<usize>) + Sync) {
    if n == 0 {
        return;
    }
    let threads = pool_threads();
    let block = n.div_ceil(threads * 4).max(min_block.max(1));
    let blocks = n.div_ceil(block);
    if threads == 1 || blocks == 1 {
        f(0..n);
        return;
    }
    run_chunked(blocks, |range| {
        for b in range {
            f(b * block..n.min((b + 1) * block));
        }
    });
}

/// A pointer to an output buffer that the pool's threads fill in disjoint ranges.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<T>(*mut T);
// SAFETY: users hand each thread a disjoint range (see `range_mut`).
unsafe impl<T> Send for SharedOut<T> {}
unsafe impl<T> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    pub(crate) fn new(buf: &mut [T]) -> Self {
        Self(buf.as_mut_ptr())
    }

    /// The unused capacity of `buf`, for writers that fill it before `set_len`.
    pub(crate) fn spare_capacity(buf: &mut Vec<T>) -> Self {
        Self(buf.spare_capacity_mut().as_mut_ptr().cast::<T>())
    }

    /// A raw pointer to element `offset`, for writers such as gemm that take one (a method,
    /// so closures capture the Sync wrapper and not the raw field).
    ///
    /// # Safety
    /// `offset` lies inside the buffer.
    pub(crate) unsafe fn at(&self, offset: usize) -> *mut T {
        // SAFETY: guaranteed by the caller.
        unsafe { self.0.add(offset) }
    }

    /// The elements `range` of the buffer.
    ///
    /// # Safety
    /// `range` lies inside the buffer, the buffer outlives the returned slice, and no other
    /// live slice overlaps it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range_mut(&self, range: Range<usize>) -> &mut [T] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(range.start), range.len()) }
    }
}

/// The elements of a contiguous layout, or `None` when the layout is strided.
pub(crate) fn contiguous<'a, T>(data: &'a [T], l: &Layout) -> Option<&'a [T]> {
    l.contiguous_offsets().map(|(a, b)| &data[a..b])
}

/// A contiguous f32 storage as a slice, or the op's f32-only error.
pub(crate) fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => contiguous(v, l).map_or_else(|| f32_only(op), Ok),
        _ => f32_only(op),
    }
}

/// [`f32_slice`] for the storage an in-place op writes.
pub(crate) fn f32_slice_mut<'a>(
    op: &str,
    s: &'a mut CpuStorage,
    l: &Layout,
) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => f32_only(op),
    }
}

/// Two contiguous f32 storages as slices, or the op's f32-only error.
pub(crate) fn two_f32<'a>(
    op: &str,
    a: &'a CpuStorage,
    al: &Layout,
    b: &'a CpuStorage,
    bl: &Layout,
) -> Result<(&'a [f32], &'a [f32])> {
    Ok((f32_slice(op, a, al)?, f32_slice(op, b, bl)?))
}

/// Whether the fused f32 CPU path applies to all of `ts`.
pub(crate) fn fusable(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous())
}

/// Maximum absolute difference of two tensors (tests).
#[cfg(test)]
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap_or(f32::INFINITY)
}

/// A bail with the op's name, for the f32-only CPU paths.
pub(crate) fn f32_only<T>(op: &str) -> Result<T> {
    candle_core::bail!("{op}: the fused CPU kernel takes contiguous f32 tensors")
}
