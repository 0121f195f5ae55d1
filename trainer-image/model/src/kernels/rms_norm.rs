//! RMSNorm over the last dimension, `x / sqrt(mean(x²) + eps) · w` (Gemma: `· (1 + w)`), with
//! its backward pass: one pass each way instead of about eight ops forward and fifteen back.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, Layout, Result, Shape, Tensor};

use super::{SharedOut, f32_slice, fusable, math, par_blocks, two_f32};

/// RMSNorm of `x` (..., h) with weight `w` (h), both contiguous f32 on the CPU (see
/// [`super::fusable`]; `crate::models::ops::rms_norm` dispatches).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, one_plus: bool) -> Result<Tensor> {
    let h = x.dim(D::Minus1)?;
    if !fusable(&[x, w]) || w.dims() != [h] || h == 0 {
        candle_core::bail!("fused rms norm: contiguous f32 x (.., {h}) and w ({h}) expected");
    }
    let op = RmsNorm {
        eps: eps as f32,
        one_plus,
        grad_x: x.track_op(),
        grad_w: w.track_op(),
    };
    if op.grad_x || op.grad_w {
        x.apply_op2(w, op)
    } else {
        x.apply_op2_no_bwd(w, &op)
    }
}

#[derive(Clone, Copy)]
struct RmsNorm {
    eps: f32,
    one_plus: bool,
    grad_x: bool,
    grad_w: bool,
}

impl RmsNorm {
    /// The weight as applied (1 + w for Gemma).
    fn scale(&self, w: &[f32]) -> Vec<f32> {
        w.iter()
            .map(|w| if self.one_plus { 1.0 + w } else { *w })
            .collect()
    }

    /// 1 / sqrt(mean(x²) + eps) of one row.
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let ms = math::dot(row, row) / row.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }

    /// The forward pass over slices: rows of `x` (each `w.len()` long) into `y`.
    fn forward_into(&self, x: &[f32], w: &[f32], y: &mut [f32]) {
        let h = w.len();
        let scale = self.scale(w);
        let out = SharedOut::new(y);
        par_blocks(x.len() / h, 16, |rows| {
            for r in rows {
                let row = &x[r * h..(r + 1) * h];
                let inv = self.inv_rms(row);
                // SAFETY: par_blocks hands out disjoint row ranges.
                let y = unsafe { out.range_mut(r * h..(r + 1) * h) };
                for ((y, x), s) in y.iter_mut().zip(row).zip(&scale) {
                    *y = x * inv * s;
                }
            }
        });
    }

    /// The backward pass over slices, given the output gradient `g`: `dx` written (or added to,
    /// with its flag set), `dw` added to.
    fn backward_into(
        &self,
        x: &[f32],
        w: &[f32],
        g: &[f32],
        dx: Option<(&mut [f32], bool)>,
        dw: Option<&mut [f32]>,
    ) -> Result<()> {
        let h = w.len();
        let rows = x.len() / h;
        let scale = self.scale(w);
        let (want_dx, add_dx) = (dx.is_some(), dx.as_ref().is_some_and(|d| d.1));
        let out = dx.map(|(d, _)| SharedOut::new(d));
        let want_dw = dw.is_some();
        // Each block's dw, tagged with its first row: summed in row order below, so the
        // result does not depend on which worker finished first (f32 addition is not
        // associative; a full fine-tune would otherwise differ run to run in its last bits,
        // and a resumed run would not match an uninterrupted one).
        let partials: Mutex<Vec<(usize, Vec<f32>)>> = Mutex::new(Vec::new());
        par_blocks(rows, 16, |block| {
            let first = block.start;
            let mut dw_part = if want_dw { vec![0f32; h] } else { Vec::new() };
            for r in block {
                let (xr, gr) = (&x[r * h..(r + 1) * h], &g[r * h..(r + 1) * h]);
                let inv = self.inv_rms(xr);
                if want_dw {
                    for ((d, x), g) in dw_part.iter_mut().zip(xr).zip(gr) {
                        *d += g * x * inv;
                    }
                }
                if let (true, Some(out)) = (want_dx, &out) {
                    let dot = math::dot3(xr, gr, &scale);
                    let c = dot * inv * inv / h as f32;
                    // SAFETY: par_blocks hands out disjoint row ranges.
                    let d = unsafe { out.range_mut(r * h..(r + 1) * h) };
                    let rows = d.iter_mut().zip(xr).zip(gr).zip(&scale);
                    if add_dx {
                        rows.for_each(|(((d, x), g), s)| *d += inv * (g * s - x * c));
                    } else {
                        rows.for_each(|(((d, x), g), s)| *d = inv * (g * s - x * c));
                    }
                }
            }
            if want_dw && let Ok(mut p) = partials.lock() {
                p.push((first, dw_part));
            }
        });
        let mut partials = partials
            .into_inner()
            .map_err(|_| candle_core::Error::Msg("rms norm grad: a worker panicked".into()))?;
        partials.sort_by_key(|(first, _)| *first);
        if let Some(dw) = dw {
            for (_, part) in partials {
                dw.iter_mut().zip(&part).for_each(|(d, p)| *d += p);
            }
        }
        Ok(())
    }
}

/// Slice form of [`rms_norm`] for hand-written passes: rows of `x` normalized into `y`.
pub(crate) fn rms_norm_into(x: &[f32], w: &[f32], eps: f64, one_plus: bool, y: &mut [f32]) {
    RmsNorm {
        eps: eps as f32,
        one_plus,
        grad_x: false,
        grad_w: false,
    }
    .forward_into(x, w, y)
}

/// Slice form of the backward pass of [`rms_norm`]: `dx` written (added to when its flag is
/// set), `dw` added to; either may be left out.
pub(crate) fn rms_norm_grad_into(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f64,
    one_plus: bool,
    dx: Option<(&mut [f32], bool)>,
    dw: Option<&mut [f32]>,
) -> Result<()> {
    RmsNorm {
        eps: eps as f32,
        one_plus,
        grad_x: dx.is_some(),
        grad_w: dw.is_some(),
    }
    .backward_into(x, w, g, dx, dw)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = two_f32(self.name(), x, xl, w, wl)?;
        let mut y = vec![0f32; x.len()];
        self.forward_into(x, w, &mut y);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let packed = x.apply_op3_no_bwd(w, &grad, &RmsNormGrad(*self))?;
        let n = x.elem_count();
        let gx = if self.grad_x {
            Some(packed.narrow(0, 0, n)?.reshape(x.shape())?)
        } else {
            None
        };
        let gw = if self.grad_w {
            let h = w.elem_count();
            let at = if self.grad_x { n } else { 0 };
            Some(packed.narrow(0, at, h)?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// The backward pass: dx (if wanted) then dw (if wanted), packed into one flat tensor.
/// With x̂ = x·r and s the applied weight: dx = r·(g·s − x̂·mean(g·s·x̂)), dw = Σ_rows g·x̂.
struct RmsNormGrad(RmsNorm);

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let (x, w) = two_f32(self.name(), x, xl, w, wl)?;
        let g = f32_slice(self.name(), g, gl)?;
        let dx_len = if op.grad_x { x.len() } else { 0 };
        let mut packed = vec![0f32; dx_len + if op.grad_w { w.len() } else { 0 }];
        let (dx, dw) = packed.split_at_mut(dx_len);
        op.backward_into(
            x,
            w,
            g,
            op.grad_x.then_some((dx, false)),
            op.grad_w.then_some(dw),
        )?;
        let len = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_diff;
    use crate::models::ops::rms_norm_composed;
    use candle_core::{DType, Device, Var};

    #[test]
    fn values_and_gradients_match_the_composed_norm() -> Result<()> {
        let dev = Device::Cpu;
        for one_plus in [false, true] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 70, 48), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 48, &dev)?)?;
            let target = Tensor::randn(0f32, 1.0, (3, 70, 48), &dev)?;
            let ours = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5, one_plus)?;
            let theirs = rms_norm_composed(x.as_tensor(), w.as_tensor(), 1e-5, one_plus)?;
            assert!(max_diff(&ours, &theirs) < 1e-5);
            let g1 = (ours * &target)?.sum_all()?.backward()?;
            let g2 = (theirs * &target)?.sum_all()?.backward()?;
            for v in [&x, &w] {
                let (a, b) = (g1.get(v).expect("ours"), g2.get(v).expect("theirs"));
                assert!(max_diff(a, b) < 1e-3, "{one_plus} {}", max_diff(a, b));
            }
        }
        Ok(())
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (40, 16), &dev)?)?;
        let w = Tensor::ones(16, DType::F32, &dev)?;
        let y = rms_norm(x.as_tensor(), &w, 1e-6, false)?;
        let g = y.sqr()?.sum_all()?.backward()?;
        assert!(g.get(&w).is_none());
        assert!(g.get(&x).is_some());
        Ok(())
    }
}
