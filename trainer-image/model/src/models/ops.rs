//! Differentiable building blocks of the decoder. Each takes the fused CPU kernel of
//! [`crate::kernels`] for contiguous f32 tensors on the CPU, and otherwise (CUDA, bf16/f16) the
//! version composed from elementary candle ops here. candle-nn 0.11.1's own fused `rms_norm`,
//! `softmax_last_dim` and `rope` have no backward pass and silently cut gradients, so they are
//! not used.

use candle_core::{D, DType, Result, Tensor};

use crate::kernels;

/// RMSNorm over the last dim: `x / sqrt(mean(x²) + eps) * w`, or `* (1 + w)` for Gemma.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, one_plus: bool) -> Result<Tensor> {
    if kernels::fusable(&[x, weight]) {
        kernels::rms_norm::rms_norm(x, weight, eps, one_plus)
    } else {
        rms_norm_composed(x, weight, eps, one_plus)
    }
}

/// [`rms_norm`] composed from candle ops, computed in f32 and cast back.
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64, one_plus: bool) -> Result<Tensor> {
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

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if kernels::fusable(&[x]) {
        kernels::softmax::softmax_last(x)
    } else {
        softmax_composed(x)
    }
}

/// [`softmax_last`] composed from candle ops. The max is detached: softmax is invariant to the
/// shift, so its gradient through the max is exactly zero and need not be computed.
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// `silu(gate) · up`, the gated MLP's activation.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if kernels::fusable(&[gate, up]) && gate.shape() == up.shape() {
        kernels::swiglu::swiglu(gate, up)
    } else {
        gate.silu()? * up
    }
}

/// Rotary embedding scaled by `scale`, with the heads moved in front of the sequence:
/// `x` (b, s, h, d) → (b, h, s, d); `cos`/`sin`: (b or 1, 1, s, d/2).
pub fn rope_heads_first(x: &Tensor, cos: &Tensor, sin: &Tensor, scale: f64) -> Result<Tensor> {
    if kernels::fusable(&[x, cos, sin]) {
        return kernels::rope::rope_heads_first(x, cos, sin, scale);
    }
    let y = apply_rope(&x.transpose(1, 2)?, cos, sin)?;
    if scale == 1.0 {
        Ok(y)
    } else {
        y.affine(scale, 0.0)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

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
