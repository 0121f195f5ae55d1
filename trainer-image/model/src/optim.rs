//! AdamW (decoupled weight decay, bias correction; PyTorch's update rule) over named f32
//! [`Var`]s, global-norm gradient clipping, and gradient accumulation. The optimizer state
//! (moments and step) saves to and loads from safetensors for checkpoints.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};

use crate::kernels::adamw::{AdamWScalars, adamw_in_place};
use crate::kernels::grad_norm::sum_squares;

/// AdamW hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay λ (θ ← θ − lr·λ·θ).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over named parameters.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl AdamW {
    /// An optimizer for `params` (moments start at zero).
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        // Separate buffers for m and v: the fused update writes them in place.
        let zeros = || {
            params
                .iter()
                .map(|(_, p)| Tensor::zeros(p.shape(), DType::F32, p.device()))
                .collect::<Result<Vec<_>>>()
        };
        let (m, v) = (zeros()?, zeros()?);
        Ok(Self {
            cfg,
            params,
            m,
            v,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The parameters.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr` from `grads` (one per parameter, same order as
    /// [`Self::params`]; a missing gradient counts as zero).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let scalars = AdamWScalars {
            lr,
            beta1: b1,
            beta2: b2,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
            bias_correction1: bc1,
            bias_correction2: bc2,
        };
        for (i, (_, p)) in self.params.iter().enumerate() {
            let g = match grads.get(i).and_then(|g| g.as_ref()) {
                Some(g) => g.to_dtype(DType::F32)?,
                None => Tensor::zeros(p.shape(), DType::F32, p.device())?,
            };
            if adamw_in_place(p.as_tensor(), &self.m[i], &self.v[i], &g, &scalars)? {
                continue;
            }
            // The composed update (other devices, or layouts the in-place kernel does not take).
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.cfg.eps)?)?;
            let theta = p.as_tensor();
            let decayed = if self.cfg.weight_decay != 0.0 {
                (theta * (1.0 - lr * self.cfg.weight_decay))?
            } else {
                theta.clone()
            };
            p.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Writes the moments and the step count to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            map.insert(format!("m.{name}"), self.m[i].clone());
            map.insert(format!("v.{name}"), self.v[i].clone());
        }
        let step = Tensor::new(&[self.step as i64], &Device::Cpu)?;
        map.insert("step".into(), step);
        candle_core::safetensors::save(&map, path)
    }

    /// Restores what [`Self::save`] wrote (same parameter names and shapes).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let device = self
            .params
            .first()
            .map(|(_, p)| p.device().clone())
            .unwrap_or(Device::Cpu);
        let map = candle_core::safetensors::load(path, &device)?;
        let get = |k: &str| {
            map.get(k)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks {k}")))
        };
        for (i, (name, p)) in self.params.iter().enumerate() {
            let m = get(&format!("m.{name}"))?;
            let v = get(&format!("v.{name}"))?;
            if m.shape() != p.shape() || v.shape() != p.shape() {
                candle_core::bail!("optimizer state for {name} has the wrong shape");
            }
            self.m[i] = m;
            self.v[i] = v;
        }
        let step = get("step")?.to_device(&Device::Cpu)?.to_vec1::<i64>()?;
        self.step = step.first().copied().unwrap_or(0).max(0) as u64;
        Ok(())
    }
}

/// Sums gradients over micro-batches, then averages them for one optimizer step.
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
    micro_batches: usize,
}

impl GradAccumulator {
    /// An empty accumulator for `n` parameters.
    pub fn new(n: usize) -> Self {
        Self {
            sums: vec![None; n],
            micro_batches: 0,
        }
    }

    /// Adds one micro-batch's gradients of `params`.
    pub fn add(&mut self, params: &[(String, Var)], grads: &GradStore) -> Result<()> {
        for (i, (_, p)) in params.iter().enumerate() {
            if let Some(g) = grads.get(p) {
                self.add_one(i, g.to_dtype(DType::F32)?)?;
            }
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// Adds one micro-batch's gradients given in parameter order (the hand-written training
    /// pass's output).
    pub fn add_in_order(&mut self, grads: Vec<Tensor>) -> Result<()> {
        if grads.len() != self.sums.len() {
            candle_core::bail!(
                "{} gradients for {} parameters",
                grads.len(),
                self.sums.len()
            );
        }
        for (i, g) in grads.into_iter().enumerate() {
            self.add_one(i, g)?;
        }
        self.micro_batches += 1;
        Ok(())
    }

    fn add_one(&mut self, i: usize, g: Tensor) -> Result<()> {
        self.sums[i] = Some(match self.sums[i].take() {
            Some(s) => (s + g)?,
            None => g,
        });
        Ok(())
    }

    /// Micro-batches added since the last [`Self::take_mean`].
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The mean gradients, resetting the accumulator.
    pub fn take_mean(&mut self) -> Result<Vec<Option<Tensor>>> {
        let n = self.micro_batches.max(1) as f64;
        self.micro_batches = 0;
        self.sums
            .iter_mut()
            // One micro-batch: the sum is the mean, no pass over the gradients needed.
            .map(|s| {
                s.take()
                    .map(|g| if n == 1.0 { Ok(g) } else { g / n })
                    .transpose()
            })
            .collect()
    }
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping (as PyTorch's `clip_grad_norm_`).
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        total += match sum_squares(g)? {
            Some(s) => s,
            None => g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?,
        };
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            if let Some(t) = g.take() {
                *g = Some((t * factor)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_matches_hand_computed_steps() -> Result<()> {
        let dev = Device::Cpu;
        let p = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &dev)?)?;
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg)?;
        let g = Tensor::new(&[0.5f32, -0.25], &dev)?;
        opt.step(&[Some(g.clone())], 0.01)?;
        // Step 1: m̂ = g, v̂ = g², update = g/(|g|+eps) = sign(g);
        // θ = θ(1 − lr·λ) − lr·sign(g).
        let got = p.as_tensor().to_vec1::<f32>()?;
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // Step 2 with gradient 2g: m = 0.9·0.1g·... computed in f64 by hand.
        let g2 = (&g * 2.0)?;
        opt.step(&[Some(g2)], 0.01)?;
        let gv = [0.5f64, -0.25];
        for (i, th1) in want.iter().enumerate() {
            let (g1, g2) = (gv[i], 2.0 * gv[i]);
            let m = 0.9 * (0.1 * g1) + 0.1 * g2;
            let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
            let (mh, vh) = (m / (1.0 - 0.81), v / (1.0 - 0.999f64.powi(2)));
            let want2 = th1 * (1.0 - 0.001) - 0.01 * mh / (vh.sqrt() + 1e-8);
            let got2 = p.as_tensor().to_vec1::<f32>()?[i] as f64;
            assert!((got2 - want2).abs() < 1e-6, "{got2} vs {want2}");
        }
        assert_eq!(opt.step_count(), 2);
        Ok(())
    }

    #[test]
    fn state_round_trips_through_a_file() -> Result<()> {
        let dev = Device::Cpu;
        let p = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0, 3.0], &dev)?)?;
        let mut a = AdamW::new(vec![("w".into(), p.clone())], AdamWConfig::default())?;
        a.step(&[Some(Tensor::new(&[0.1f32, 0.2, 0.3], &dev)?)], 0.1)?;
        let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
        let f = dir.path().join("opt.safetensors");
        a.save(&f)?;
        let mut b = AdamW::new(vec![("w".into(), p.clone())], AdamWConfig::default())?;
        b.load(&f)?;
        assert_eq!(b.step_count(), 1);
        assert_eq!(b.m[0].to_vec1::<f32>()?, a.m[0].to_vec1::<f32>()?);
        assert_eq!(b.v[0].to_vec1::<f32>()?, a.v[0].to_vec1::<f32>()?);
        Ok(())
    }

    #[test]
    fn clipping_scales_to_the_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let mut g = vec![Some(Tensor::new(&[3.0f32, 4.0], &dev)?), None];
        let n = clip_grad_norm(&mut g, 1.0)?;
        assert!((n - 5.0).abs() < 1e-9);
        let v = g[0].as_ref().expect("grad").to_vec1::<f32>()?;
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
        Ok(())
    }
}
