//! Differentiable building blocks. candle-nn 0.11.1's fused `rms_norm`, `softmax_last_dim` and
//! `rope` kernels have no backward pass and silently cut gradients, so everything here is
//! composed from elementary ops that do. `FrozenMatmul` is the one custom op: a matmul against
//! a frozen weight whose backward returns only dL/dx (candle's own matmul backward also
//! computes the weight gradient, wasted work for frozen weights).

use candle_core::{CpuStorage, CustomOp2, D, DType, Layout, Result, Shape, Tensor};

/// RMSNorm computed in f32: `x / sqrt(mean(x²) + eps) * w`, or `* (1 + w)` for Gemma.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, one_plus: bool) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_mul(&var.affine(1.0, eps)?.sqrt()?.recip()?)?;
    if one_plus {
        // Gemma: (1 + w) applied in f32, then cast (as transformers does).
        let w = weight.to_dtype(DType::F32)?.affine(1.0, 1.0)?;
        normed.broadcast_mul(&w)?.to_dtype(dtype)
    } else {
        // Llama: cast back first, then scale by the weight in the activation dtype.
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&weight.to_dtype(dtype)?)
    }
}

/// Softmax over the last dimension. The max is detached: softmax is invariant to the shift,
/// so its gradient through the max is exactly zero and need not be computed.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Rotary embedding in the Hugging Face (rotate-half) layout. `x`: (b, h, s, d);
/// `cos`/`sin`: (b or 1, 1, s, d/2).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[&r1, &r2], D::Minus1)
}

/// `x (n, in) @ wᵀ` for a weight `w (out, in)` that never needs a gradient.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let w = w.detach();
    let y = x.detach().matmul(&w.t()?)?;
    if !x.track_op() {
        return Ok(y);
    }
    // Attach y to x's graph through an op whose forward is y itself and whose backward is
    // grad @ w: the weight gradient is never computed.
    x.apply_op2(&y, FrozenMatmul { w })
}

/// See [`frozen_matmul`].
struct FrozenMatmul {
    w: Tensor,
}

fn pass_through_check(l: &Layout) -> Result<()> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("frozen matmul: the product is expected fresh and contiguous");
    }
    Ok(())
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _lx: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        pass_through_check(ly)?;
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _x: &candle_core::CudaStorage,
        _lx: &Layout,
        y: &candle_core::CudaStorage,
        ly: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        pass_through_check(ly)?;
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&self.w)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn frozen_matmul_matches_matmul_and_its_input_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 3), &dev)?)?;
        let w = Tensor::randn(0f32, 1.0, (4, 3), &dev)?;
        let y1 = frozen_matmul(x.as_tensor(), &w)?;
        let y2 = x.as_tensor().matmul(&w.t()?)?;
        let diff = (&y1 - &y2)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        let g1 = y1.sqr()?.sum_all()?.backward()?;
        let g2 = y2.sqr()?.sum_all()?.backward()?;
        let (a, b) = (g1.get(&x).expect("grad"), g2.get(&x).expect("grad"));
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn softmax_and_rms_norm_pass_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 6), &dev)?)?;
        let w = Var::from_tensor(&Tensor::ones(6, DType::F32, &dev)?)?;
        let y = softmax_last(&rms_norm(x.as_tensor(), w.as_tensor(), 1e-6, false)?)?;
        let sums = y.sum(D::Minus1)?.to_vec1::<f32>()?;
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
        let target = Tensor::randn(0f32, 1.0, (2, 6), &dev)?;
        let g = (y * target)?.sum_all()?.backward()?;
        for v in [&x, &w] {
            let n = g
                .get(v)
                .expect("grad")
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?;
            assert!(n > 0.0);
        }
        Ok(())
    }
}
