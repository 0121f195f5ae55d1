//! Matrix products with a backward pass that computes only the gradients some input needs,
//! on the kernels' thread pool.
//!
//! Why not `Tensor::matmul`: its backward pass always computes both operand gradients (wasted
//! for a frozen weight, in LoRA every base matmul), it refuses batch layouts that do not
//! collapse, and it zero-fills every output before gemm overwrites it. Here gemm runs
//! single-threaded per block of rows (or per matrix of a batch) and the blocks are spread over
//! the pool of [`super::run_chunked`], the same threads as every other kernel.
//!
//! On other devices, or for dtypes gemm does not take here, [`matmul`] is `Tensor::matmul`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};

use super::SharedOut;

/// Work (m·n·k multiply-adds) below which threading costs more than it saves.
const SERIAL_WORK: usize = 64 * 64 * 64;

/// `a (.., m, k) @ b (.., k, n)` with equal leading (batch) dims, as `Tensor::matmul`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let supported = a.device().is_cpu()
        && matches!(a.dtype(), DType::F32 | DType::F64)
        && a.dtype() == b.dtype()
        && a.rank() >= 2
        && a.rank() == b.rank()
        && a.dims()[..a.rank() - 2] == b.dims()[..b.rank() - 2]
        && a.dim(a.rank() - 1)? == b.dim(b.rank() - 2)?;
    if !supported {
        return a.matmul(b);
    }
    let a = batchable(a)?;
    let b = batchable(b)?;
    let op = PoolMatmul {
        grad_a: a.track_op(),
        grad_b: b.track_op(),
    };
    if op.grad_a || op.grad_b {
        a.apply_op2(&b, op)
    } else {
        a.apply_op2_no_bwd(&b, &op)
    }
}

/// `t` itself when its batch dims collapse into one stride, else a contiguous copy.
fn batchable(t: &Tensor) -> Result<Tensor> {
    if batch_stride(t.layout()).is_some() {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// The distance between consecutive matrices of a (.., rows, cols) layout when its leading
/// dims collapse into one (size-1 dims are free); `None` when they do not.
fn batch_stride(l: &Layout) -> Option<usize> {
    let rank = l.dims().len();
    if rank <= 2 {
        return Some(0);
    }
    let lead: Vec<(usize, usize)> = l.dims()[..rank - 2]
        .iter()
        .zip(&l.stride()[..rank - 2])
        .filter(|(d, _)| **d != 1)
        .map(|(d, s)| (*d, *s))
        .collect();
    for w in lead.windows(2) {
        if w[0].1 != w[1].1 * w[1].0 {
            return None;
        }
    }
    Some(lead.last().map_or(0, |(_, s)| *s))
}

/// A strided f32 matrix over a slice, for hand-written passes: element (i, j) at
/// `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major (rows, cols) matrix.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A matrix with the given row and column strides.
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The transposed view.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = a·b`, or `dst += scale·a·b` with `accumulate`; `dst` row-major with row stride
/// `ld`. Single-threaded, for callers that spread their own loops over the pool.
///
/// # Safety
/// `dst` is valid for writes of `a.rows` rows of stride `ld` holding `b.cols` elements each, no
/// other thread touches them, and `a`, `b` are in bounds with `a.cols == b.rows`.
pub(crate) unsafe fn gemm_serial(
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    scale: f32,
    a: Mat,
    b: Mat,
) {
    if a.rows == 0 || b.cols == 0 {
        return;
    }
    if a.cols == 0 {
        if !accumulate {
            for r in 0..a.rows {
                // SAFETY: the caller guarantees the rows of dst.
                unsafe { std::slice::from_raw_parts_mut(dst.add(r * ld), b.cols).fill(0.0) };
            }
        }
        return;
    }
    // SAFETY: the caller guarantees the operands' bounds and the destination; with read_dst
    // gemm computes dst = 1·dst + scale·a·b, without it dst = scale·a·b.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            1,
            ld as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// [`gemm_serial`] into a row-major `dst` (a.rows, b.cols), spread over the pool in blocks of
/// rows; the shapes and bounds are checked.
pub(crate) fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    scale: f32,
    a: Mat,
    b: Mat,
) -> Result<()> {
    let (m, n) = (a.rows, b.cols);
    if a.cols != b.rows || !a.in_bounds() || !b.in_bounds() || dst.len() != m * n {
        candle_core::bail!(
            "gemm: ({}, {}) @ ({}, {}) into {} elements",
            a.rows,
            a.cols,
            b.rows,
            b.cols,
            dst.len()
        );
    }
    let out = SharedOut::new(dst);
    let rows = |r0: usize, r1: usize| {
        let block = Mat {
            data: &a.data[r0 * a.rs..],
            rows: r1 - r0,
            ..a
        };
        // SAFETY: rows [r0, r1) of dst belong to this call alone; bounds checked above.
        unsafe { gemm_serial(out.at(r0 * n), n, accumulate, scale, block, b) }
    };
    let threads = super::pool_threads();
    if threads == 1 || m * n * a.cols < SERIAL_WORK || m < 32 {
        rows(0, m);
    } else {
        let block = m.div_ceil(threads * 2).max(16);
        super::run_chunked(m.div_ceil(block), |range| {
            for j in range {
                rows(j * block, m.min((j + 1) * block));
            }
        });
    }
    Ok(())
}

/// The op behind [`matmul`]; the flags say which input gradients the backward pass makes.
struct PoolMatmul {
    grad_a: bool,
    grad_b: bool,
}

/// One operand: its data from the layout's offset, row/column strides and batch stride.
struct Operand<'a, T> {
    data: &'a [T],
    rs: isize,
    cs: isize,
    batch: usize,
}

impl<'a, T> Operand<'a, T> {
    fn new(data: &'a [T], l: &Layout) -> Result<Self> {
        let rank = l.dims().len();
        let st = l.stride();
        let Some(batch) = batch_stride(l) else {
            candle_core::bail!("pool matmul: batch dims of {:?} do not collapse", l.dims());
        };
        Ok(Self {
            data: &data[l.start_offset()..],
            rs: st[rank - 2] as isize,
            cs: st[rank - 1] as isize,
            batch,
        })
    }
}

fn pool_gemm<T: WithDType>(a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Result<(Vec<T>, Shape)> {
    let dims = la.dims();
    let rank = dims.len();
    let (m, k) = (dims[rank - 2], dims[rank - 1]);
    let n = lb.dims()[rank - 1];
    let batch: usize = dims[..rank - 2].iter().product();
    let mut out_dims = dims.to_vec();
    out_dims[rank - 1] = n;
    let len = batch * m * n;
    if k == 0 {
        return Ok((vec![T::zero(); len], Shape::from(out_dims)));
    }
    let (a, b) = (Operand::new(a, la)?, Operand::new(b, lb)?);
    let mut out: Vec<T> = Vec::with_capacity(len);
    // The blocks below write disjoint rows of the output's (uninitialized) capacity.
    let dst = SharedOut::spare_capacity(&mut out);
    // Rows [r0, r1) of matrix `bi`: one single-threaded gemm writing exactly those rows.
    let rows = |bi: usize, r0: usize, r1: usize| {
        // SAFETY: the offsets stay inside the operands (their layouts were checked by candle
        // against the dims) and inside the output's capacity; gemm with read_dst = false writes
        // every element of the block without reading it.
        unsafe {
            gemm::gemm(
                r1 - r0,
                n,
                k,
                dst.at(bi * m * n + r0 * n),
                1,
                n as isize,
                false,
                a.data.as_ptr().add(bi * a.batch).offset(r0 as isize * a.rs),
                a.cs,
                a.rs,
                b.data.as_ptr().add(bi * b.batch),
                b.cs,
                b.rs,
                T::zero(),
                T::one(),
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    let threads = super::pool_threads();
    if threads == 1 || len == 0 || batch * m * n * k < SERIAL_WORK {
        (0..batch).for_each(|bi| rows(bi, 0, m));
    } else if batch >= threads {
        super::run_chunked(batch, |range| range.for_each(|bi| rows(bi, 0, m)));
    } else {
        // Few large matrices: split rows, a few blocks per thread so a slow thread's share
        // can be taken over.
        let block = m.div_ceil(threads * 2).max(16);
        let blocks = m.div_ceil(block);
        super::run_chunked(batch * blocks, |range| {
            for i in range {
                let (bi, j) = (i / blocks, i % blocks);
                rows(bi, j * block, m.min((j + 1) * block));
            }
        });
    }
    // SAFETY: every row of every matrix was written above.
    unsafe { out.set_len(len) };
    Ok((out, Shape::from(out_dims)))
}

impl CustomOp2 for PoolMatmul {
    fn name(&self) -> &'static str {
        "pool-matmul"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match (a, b) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                let (v, s) = pool_gemm(a, la, b, lb)?;
                Ok((CpuStorage::F32(v), s))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                let (v, s) = pool_gemm(a, la, b, lb)?;
                Ok((CpuStorage::F64(v), s))
            }
            _ => candle_core::bail!(
                "pool matmul: f32 or f64 operands of one dtype expected, got {:?} and {:?}",
                a.dtype(),
                b.dtype()
            ),
        }
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ga = if self.grad_a {
            Some(matmul(grad, &b.t()?)?)
        } else {
            None
        };
        let gb = if self.grad_b {
            Some(matmul(&a.t()?, grad)?)
        } else {
            None
        };
        Ok((ga, gb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn products_match_candle_for_plain_transposed_and_batched_operands() -> Result<()> {
        let dev = Device::Cpu;
        // Large enough to be split over the pool's threads, with rows that do not divide
        // evenly into blocks.
        let a = Tensor::randn(0f32, 1.0, (203, 96), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (77, 96), &dev)?;
        assert!(max_diff(&matmul(&a, &w.t()?)?, &a.matmul(&w.t()?)?) < 1e-4);
        // Batched, with a transposed rhs as in attention scores.
        let q = Tensor::randn(0f32, 1.0, (2, 3, 40, 16), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (2, 3, 50, 16), &dev)?;
        assert!(max_diff(&matmul(&q, &k.t()?)?, &q.matmul(&k.t()?)?) < 1e-4);
        // Batch dims that do not collapse (a transposed view of the batch axes), which
        // candle's matmul refuses: copied first.
        let x = Tensor::randn(0f32, 1.0, (3, 2, 40, 16), &dev)?.transpose(0, 1)?;
        let y = Tensor::randn(0f32, 1.0, (2, 3, 16, 8), &dev)?;
        assert!(max_diff(&matmul(&x, &y)?, &x.contiguous()?.matmul(&y)?) < 1e-4);
        // An empty inner dimension gives zeros, as candle does.
        let e = matmul(
            &Tensor::zeros((4, 0), DType::F32, &dev)?,
            &Tensor::zeros((0, 5), DType::F32, &dev)?,
        )?;
        assert_eq!(e.dims(), &[4, 5]);
        assert_eq!(e.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn gradients_match_candle_and_frozen_inputs_get_none() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (130, 48), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (70, 48), &dev)?)?;
        let target = Tensor::randn(0f32, 1.0, (130, 70), &dev)?;
        let ours = (matmul(x.as_tensor(), &w.as_tensor().t()?)? * &target)?
            .sum_all()?
            .backward()?;
        let theirs = (x.as_tensor().matmul(&w.as_tensor().t()?)? * &target)?
            .sum_all()?
            .backward()?;
        for v in [&x, &w] {
            let (a, b) = (ours.get(v).expect("ours"), theirs.get(v).expect("theirs"));
            assert!(max_diff(a, b) < 1e-3, "{}", max_diff(a, b));
        }
        // A frozen (plain tensor) weight: only the input gets a gradient.
        let frozen = w.as_tensor().detach();
        let g = (matmul(x.as_tensor(), &frozen.t()?)? * &target)?
            .sum_all()?
            .backward()?;
        assert!(g.get(&frozen).is_none());
        let (a, b) = (g.get(&x).expect("x"), theirs.get(&x).expect("x"));
        assert!(max_diff(a, b) < 1e-3);
        Ok(())
    }
}
