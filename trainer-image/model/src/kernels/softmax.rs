//! Softmax over the last dimension with its backward pass, `dx = y·(g − Σ g·y)`: one pass each
//! way instead of five ops forward (max, subtract, exp, sum, divide) and their backward passes.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Layout, Result, Shape, Tensor};

use super::{SharedOut, f32_only, f32_slice, fusable, math, par_blocks, two_f32};

/// Softmax of a contiguous f32 CPU tensor over its last dimension (`crate::models::ops::
/// softmax_last` dispatches).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !fusable(&[x]) || x.dim(D::Minus1)? == 0 {
        candle_core::bail!("fused softmax: a contiguous f32 tensor with a last dim expected");
    }
    if x.track_op() {
        x.apply_op1(Softmax)
    } else {
        x.apply_op1_no_bwd(&Softmax)
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some(n) = xl.dims().last().copied() else {
            return f32_only(self.name());
        };
        let x = f32_slice(self.name(), x, xl)?;
        let mut y = vec![0f32; x.len()];
        let out = SharedOut::new(&mut y);
        par_blocks(x.len() / n, 32, |rows| {
            for r in rows {
                let row = &x[r * n..(r + 1) * n];
                // SAFETY: par_blocks hands out disjoint row ranges.
                let y = unsafe { out.range_mut(r * n..(r + 1) * n) };
                let max = math::max(row);
                for (y, x) in y.iter_mut().zip(row) {
                    *y = math::exp(x - max);
                }
                let inv = 1.0 / math::sum(y);
                y.iter_mut().for_each(|y| *y *= inv);
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// (y, g) → y·(g − Σ g·y) per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        yl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Some(n) = yl.dims().last().copied() else {
            return f32_only(self.name());
        };
        let (y, g) = two_f32(self.name(), y, yl, g, gl)?;
        let mut dx = vec![0f32; y.len()];
        let out = SharedOut::new(&mut dx);
        par_blocks(y.len() / n, 32, |rows| {
            for r in rows {
                let (yr, gr) = (&y[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
                let dot = math::dot(yr, gr);
                // SAFETY: par_blocks hands out disjoint row ranges.
                let d = unsafe { out.range_mut(r * n..(r + 1) * n) };
                for ((d, y), g) in d.iter_mut().zip(yr).zip(gr) {
                    *d = y * (g - dot);
                }
            }
        });
        Ok((CpuStorage::F32(dx), yl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_diff;
    use crate::models::ops::softmax_composed;
    use candle_core::{Device, Var};

    #[test]
    fn values_and_gradients_match_the_composed_softmax() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 3.0, (4, 50, 33), &dev)?)?;
        let target = Tensor::randn(0f32, 1.0, (4, 50, 33), &dev)?;
        let ours = softmax_last(x.as_tensor())?;
        let theirs = softmax_composed(x.as_tensor())?;
        assert!(max_diff(&ours, &theirs) < 1e-6);
        let g1 = (ours * &target)?.sum_all()?.backward()?;
        let g2 = (theirs * &target)?.sum_all()?.backward()?;
        let (a, b) = (g1.get(&x).expect("ours"), g2.get(&x).expect("theirs"));
        assert!(max_diff(a, b) < 1e-5, "{}", max_diff(a, b));
        Ok(())
    }
}
