//! Gemma's gated MLP activation, `gelu_tanh(gate) · up`, in slice form for the hand-written
//! training pass (the autograd path composes candle's `gelu` and a product). GELU's tanh
//! approximation, as candle's `gelu` and PyTorch's `gelu(approximate="tanh")`, written as
//! `x · σ(2z)` with `z = √(2/π)(x + 0.044715x³)` (the same function: 1 + tanh z = 2σ(2z)) so
//! that it runs on the vectorizable [`math::exp`] instead of libm's scalar `tanhf`, which made
//! Gemma's training step a third slower than Llama's on the tiny benchmark config.

use super::{SharedOut, math, par_blocks};

/// Elements per block handed to one thread.
const BLOCK: usize = 8 * 1024;
/// √(2/π).
const C: f32 = 0.797_884_6;
/// The cubic term's coefficient.
const A: f32 = 0.044_715;

/// σ(2z) = (1 + tanh z) / 2 for GELU's inner argument z of `x`.
#[inline(always)]
fn half_one_plus_tanh(x: f32) -> f32 {
    let z = C * (x + A * x * x * x);
    1.0 / (1.0 + math::exp(-2.0 * z))
}

/// `y = gelu_tanh(gate) · up`, all of one length.
pub(crate) fn geglu_into(gate: &[f32], up: &[f32], y: &mut [f32]) {
    let out = SharedOut::new(y);
    par_blocks(gate.len(), BLOCK, |r| {
        // SAFETY: par_blocks hands out disjoint ranges.
        let y = unsafe { out.range_mut(r.clone()) };
        for ((y, x), u) in y.iter_mut().zip(&gate[r.clone()]).zip(&up[r]) {
            *y = x * half_one_plus_tanh(*x) * u;
        }
    });
}

/// The backward pass: the gradients of gate and up written into `dg`, `du`.
pub(crate) fn geglu_grad_into(gate: &[f32], up: &[f32], g: &[f32], dg: &mut [f32], du: &mut [f32]) {
    let (og, ou) = (SharedOut::new(dg), SharedOut::new(du));
    par_blocks(gate.len(), BLOCK, |r| {
        // SAFETY: par_blocks hands out disjoint ranges of each output.
        let (dg, du) = unsafe { (og.range_mut(r.clone()), ou.range_mut(r.clone())) };
        for i in 0..r.len() {
            let (x, u, g) = (gate[r.start + i], up[r.start + i], g[r.start + i]);
            let s = half_one_plus_tanh(x);
            du[i] = g * x * s;
            // d/dx of x·σ(2z): σ(2z) + x · 2σ(2z)(1 − σ(2z)) · dz/dx.
            let dgelu = s + 2.0 * x * s * (1.0 - s) * C * (1.0 + 3.0 * A * x * x);
            dg[i] = g * u * dgelu;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_diff;
    use candle_core::{Device, Result, Tensor, Var};

    #[test]
    fn values_and_gradients_match_candles_gelu_times_up() -> Result<()> {
        let dev = Device::Cpu;
        let n = 3 * BLOCK + 17;
        let gate = Var::from_tensor(&Tensor::randn(0f32, 2.0, n, &dev)?)?;
        let up = Var::from_tensor(&Tensor::randn(0f32, 1.0, n, &dev)?)?;
        let g = Tensor::randn(0f32, 1.0, n, &dev)?;
        let theirs = (gate.as_tensor().gelu()? * up.as_tensor())?;
        let (gv, uv, grad) = (
            gate.to_vec1::<f32>()?,
            up.to_vec1::<f32>()?,
            g.to_vec1::<f32>()?,
        );
        let mut y = vec![0f32; n];
        geglu_into(&gv, &uv, &mut y);
        assert!(max_diff(&Tensor::new(y, &dev)?, &theirs) < 1e-5);
        let grads = (theirs * &g)?.sum_all()?.backward()?;
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        geglu_grad_into(&gv, &uv, &grad, &mut dg, &mut du);
        let (eg, eu) = (grads.get(&gate).expect("gate"), grads.get(&up).expect("up"));
        assert!(max_diff(&Tensor::new(dg, &dev)?, eg) < 1e-4);
        assert!(max_diff(&Tensor::new(du, &dev)?, eu) < 1e-4);
        Ok(())
    }

    #[test]
    fn saturates_like_tanh_far_from_zero() {
        let xs = [-200.0f32, -30.0, -9.0, -1e-3, 0.0, 1e-3, 9.0, 30.0, 200.0];
        let ones = vec![1f32; xs.len()];
        let mut y = vec![0f32; xs.len()];
        geglu_into(&xs, &ones, &mut y);
        let (mut dg, mut du) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
        geglu_grad_into(&xs, &ones, &ones, &mut dg, &mut du);
        for (i, &x) in xs.iter().enumerate() {
            let x64 = f64::from(x);
            let t = ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3))).tanh();
            let want = 0.5 * x64 * (1.0 + t);
            assert!(
                (f64::from(y[i]) - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{x}: {}",
                y[i]
            );
            assert!(dg[i].is_finite() && du[i].is_finite(), "{x}");
        }
    }
}
