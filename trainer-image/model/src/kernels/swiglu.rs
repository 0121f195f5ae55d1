//! The gated MLP's activation, `silu(gate) · up`, with its backward pass: one pass each way
//! instead of silu's composed backward (sigmoid, products, sums) plus the product's.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{SharedOut, f32_only, f32_slice, fusable, math, par_blocks, two_f32};

/// Elements per block handed to one thread.
const BLOCK: usize = 8 * 1024;

/// `silu(gate) · up` for contiguous f32 CPU tensors of one shape (`crate::models::ops::swiglu`
/// dispatches).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !fusable(&[gate, up]) || gate.shape() != up.shape() {
        candle_core::bail!("fused swiglu: contiguous f32 gate and up of one shape expected");
    }
    let op = SwiGlu {
        grad_gate: gate.track_op(),
        grad_up: up.track_op(),
    };
    if op.grad_gate || op.grad_up {
        gate.apply_op2(up, op)
    } else {
        gate.apply_op2_no_bwd(up, &op)
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + math::exp(-x))
}

/// Slice form of [`swiglu`]: `y = silu(gate) · up`, all of one length.
pub(crate) fn swiglu_into(gate: &[f32], up: &[f32], y: &mut [f32]) {
    let out = SharedOut::new(y);
    par_blocks(gate.len(), BLOCK, |r| {
        // SAFETY: par_blocks hands out disjoint ranges.
        let y = unsafe { out.range_mut(r.clone()) };
        for ((y, a), u) in y.iter_mut().zip(&gate[r.clone()]).zip(&up[r]) {
            *y = a * sigmoid(*a) * u;
        }
    });
}

/// Slice form of the backward pass: the gradients of gate and up written into `dg`, `du`.
pub(crate) fn swiglu_grad_into(
    gate: &[f32],
    up: &[f32],
    g: &[f32],
    dg: &mut [f32],
    du: &mut [f32],
) {
    let (og, ou) = (SharedOut::new(dg), SharedOut::new(du));
    par_blocks(gate.len(), BLOCK, |r| {
        // SAFETY: par_blocks hands out disjoint ranges of each output.
        let (dg, du) = unsafe { (og.range_mut(r.clone()), ou.range_mut(r.clone())) };
        for i in 0..r.len() {
            let (a, u, g) = (gate[r.start + i], up[r.start + i], g[r.start + i]);
            let s = sigmoid(a);
            du[i] = g * a * s;
            dg[i] = g * u * s * (1.0 + a * (1.0 - s));
        }
    });
}

/// The two operands as slices of one length.
fn two<'a>(
    op: &str,
    a: &'a CpuStorage,
    al: &Layout,
    b: &'a CpuStorage,
    bl: &Layout,
) -> Result<(&'a [f32], &'a [f32])> {
    let (a, b) = two_f32(op, a, al, b, bl)?;
    if a.len() != b.len() {
        return f32_only(op);
    }
    Ok((a, b))
}

#[derive(Clone, Copy)]
struct SwiGlu {
    grad_gate: bool,
    grad_up: bool,
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gl: &Layout,
        up: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gate, up) = two(self.name(), gate, gl, up, ul)?;
        let mut y = vec![0f32; gate.len()];
        swiglu_into(gate, up, &mut y);
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let packed = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluGrad)?;
        let gg = if self.grad_gate {
            Some(packed.narrow(0, 0, n)?.reshape(gate.shape())?)
        } else {
            None
        };
        let gu = if self.grad_up {
            Some(packed.narrow(0, n, n)?.reshape(up.shape())?)
        } else {
            None
        };
        Ok((gg, gu))
    }
}

/// (gate, up, g) → [d gate | d up], with silu'(a) = σ(a)·(1 + a·(1 − σ(a))).
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gl: &Layout,
        up: &CpuStorage,
        ul: &Layout,
        g: &CpuStorage,
        grl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (gate, up) = two(self.name(), gate, gl, up, ul)?;
        let g = f32_slice(self.name(), g, grl)?;
        let n = gate.len();
        let mut packed = vec![0f32; 2 * n];
        let (dg, du) = packed.split_at_mut(n);
        swiglu_grad_into(gate, up, g, dg, du);
        Ok((CpuStorage::F32(packed), Shape::from(2 * n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn values_and_gradients_match_silu_times_up() -> Result<()> {
        let dev = Device::Cpu;
        let gate = Var::from_tensor(&Tensor::randn(0f32, 3.0, (70, 130), &dev)?)?;
        let up = Var::from_tensor(&Tensor::randn(0f32, 1.0, (70, 130), &dev)?)?;
        let target = Tensor::randn(0f32, 1.0, (70, 130), &dev)?;
        let ours = swiglu(gate.as_tensor(), up.as_tensor())?;
        let theirs = (gate.as_tensor().silu()? * up.as_tensor())?;
        assert!(max_diff(&ours, &theirs) < 1e-5);
        let g1 = (ours * &target)?.sum_all()?.backward()?;
        let g2 = (theirs * &target)?.sum_all()?.backward()?;
        for v in [&gate, &up] {
            let (a, b) = (g1.get(v).expect("ours"), g2.get(v).expect("theirs"));
            assert!(max_diff(a, b) < 1e-4, "{}", max_diff(a, b));
        }
        Ok(())
    }
}
