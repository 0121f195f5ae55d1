//! AdamW's update of one f32 parameter, in place: the two moments, then the parameter, each
//! one pass over memory with no allocation (the composed update makes about a dozen passes
//! and as many fresh buffers per parameter per step).

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Storage, Tensor};

use super::{SharedOut, f32_slice, f32_slice_mut, fusable, par_blocks, two_f32};

/// Elements per block handed to one thread.
const BLOCK: usize = 16 * 1024;

/// The scalars of one update (bias corrections precomputed for the step).
#[derive(Clone, Copy, Debug)]
pub struct AdamWScalars {
    /// Learning rate.
    pub lr: f64,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay λ.
    pub weight_decay: f64,
    /// 1 − β1^t.
    pub bias_correction1: f64,
    /// 1 − β2^t.
    pub bias_correction2: f64,
}

/// Updates `theta`, `m` and `v` in place from the gradient `g` when all four are contiguous
/// f32 CPU tensors of one shape with their own storage; returns `false` (nothing changed)
/// otherwise, for the caller's composed path.
pub fn adamw_in_place(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    s: &AdamWScalars,
) -> Result<bool> {
    let same_shape = [m, v, g].iter().all(|t| t.shape() == theta.shape());
    let ptrs = [theta, m, v].map(storage_ptr);
    let distinct = ptrs[0] != ptrs[1] && ptrs[0] != ptrs[2] && ptrs[1] != ptrs[2];
    if !(fusable(&[theta, m, v, g]) && same_shape && distinct) {
        return Ok(false);
    }
    m.inplace_op2(
        g,
        &Moment {
            beta: s.beta1 as f32,
            square: false,
        },
    )?;
    v.inplace_op2(
        g,
        &Moment {
            beta: s.beta2 as f32,
            square: true,
        },
    )?;
    theta.inplace_op3(m, v, &Update(*s))?;
    Ok(true)
}

/// The address of a CPU tensor's buffer (tensors that share one, e.g. clones, are equal).
fn storage_ptr(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => v.as_ptr() as usize,
        _ => 0,
    }
}

/// `m ← β·m + (1 − β)·g` (or `g²`).
struct Moment {
    beta: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let g = f32_slice(self.name(), g, gl)?;
        let out = SharedOut::new(f32_slice_mut(self.name(), dst, dl)?);
        let (b, one_minus) = (self.beta, 1.0 - self.beta);
        par_blocks(g.len(), BLOCK, |r| {
            // SAFETY: par_blocks hands out disjoint ranges of 0..len.
            let dst = unsafe { out.range_mut(r.clone()) };
            let g = &g[r];
            if self.square {
                dst.iter_mut()
                    .zip(g)
                    .for_each(|(m, g)| *m = b * *m + one_minus * g * g);
            } else {
                dst.iter_mut()
                    .zip(g)
                    .for_each(|(m, g)| *m = b * *m + one_minus * g);
            }
        });
        Ok(())
    }
}

/// `θ ← θ·(1 − lr·λ) − lr · m̂ / (√v̂ + ε)`.
struct Update(AdamWScalars);

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        let (m, v) = two_f32(self.name(), m, ml, v, vl)?;
        let s = &self.0;
        let decay = (1.0 - s.lr * s.weight_decay) as f32;
        let step = (s.lr / s.bias_correction1) as f32;
        let inv_bc2 = (1.0 / s.bias_correction2) as f32;
        let eps = s.eps as f32;
        let out = SharedOut::new(f32_slice_mut(self.name(), dst, dl)?);
        par_blocks(m.len(), BLOCK, |r| {
            // SAFETY: par_blocks hands out disjoint ranges of 0..len.
            let theta = unsafe { out.range_mut(r.clone()) };
            for ((t, m), v) in theta.iter_mut().zip(&m[r.clone()]).zip(&v[r]) {
                *t = *t * decay - step * m / ((v * inv_bc2).sqrt() + eps);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_composed_update_and_skips_what_it_cannot_fuse() -> Result<()> {
        let dev = Device::Cpu;
        let s = AdamWScalars {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            bias_correction1: 1.0 - 0.9f64.powi(3),
            bias_correction2: 1.0 - 0.999f64.powi(3),
        };
        let theta0 = Tensor::randn(0f32, 1.0, (70_001,), &dev)?;
        let m0 = Tensor::randn(0f32, 0.1, (70_001,), &dev)?;
        let v0 = Tensor::randn(0f32, 0.1, (70_001,), &dev)?.abs()?;
        let g = Tensor::randn(0f32, 1.0, (70_001,), &dev)?;
        // Composed reference.
        let m1 = ((&m0 * s.beta1)? + (&g * (1.0 - s.beta1))?)?;
        let v1 = ((&v0 * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
        let upd = ((&m1 / s.bias_correction1)? / ((&v1 / s.bias_correction2)?.sqrt()? + s.eps)?)?;
        let theta1 = ((&theta0 * (1.0 - s.lr * s.weight_decay))? - (upd * s.lr)?)?;
        // Fused, on copies.
        let theta = Var::from_tensor(&theta0.copy()?)?;
        let (m, v) = (m0.copy()?, v0.copy()?);
        assert!(adamw_in_place(theta.as_tensor(), &m, &v, &g, &s)?);
        assert!(max_diff(&m, &m1) < 1e-6);
        assert!(max_diff(&v, &v1) < 1e-6);
        assert!(max_diff(theta.as_tensor(), &theta1) < 1e-5);
        // m and v sharing one buffer would update it twice: refused, nothing changed.
        let shared = m0.copy()?;
        let before = theta.as_tensor().copy()?;
        assert!(!adamw_in_place(
            theta.as_tensor(),
            &shared,
            &shared,
            &g,
            &s
        )?);
        assert_eq!(max_diff(theta.as_tensor(), &before), 0.0);
        Ok(())
    }
}
