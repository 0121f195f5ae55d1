//! A linear layer that is frozen, fully trainable, or frozen with a LoRA adapter, plus the
//! seeded dropout the adapters use in training.

use std::sync::Mutex;

use candle_core::{DType, Result, Tensor, Var};

use crate::kernels::matmul::matmul;
use crate::lora::LoraAdapter;
use crate::rng::{SplitMix, derive};

/// Reproducible dropout: masks are a pure function of (seed, call counter). The trainer sets a
/// fresh seed per micro-batch; `None` switches dropout off (evaluation, generation).
#[derive(Debug, Default)]
pub struct DropoutCtl {
    state: Mutex<Option<(u64, u64)>>,
}

/// A dropout mask from uniform draws in [0, 1): 0 where a draw is below `p`, else 1/(1 − p)
/// (f32, on the draws' device).
fn mask_from_uniform(uniform: &Tensor, p: f64) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - p);
    uniform.ge(p)?.to_dtype(DType::F32)?.affine(keep, 0.0)
}

impl DropoutCtl {
    /// Turns dropout on with a seed (counter reset) or off.
    pub fn set(&self, seed: Option<u64>) {
        if let Ok(mut s) = self.state.lock() {
            *s = seed.map(|s| (s, 0));
        }
    }

    /// Applies dropout with probability `p` to `x` when on.
    fn apply(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if !x.device().is_cpu() {
            let Some(seed) = self.device_seed(p) else {
                return Ok(x.clone());
            };
            // The first mask of a micro-batch reseeds the device's generator; later ones
            // continue its stream, so a micro-batch's masks are a pure function of its seed
            // (as on the CPU) without a host round trip per mask.
            if let Some(seed) = seed {
                x.device().set_seed(seed)?;
            }
            let uniform = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
            return x.mul(&mask_from_uniform(&uniform, p)?.to_dtype(x.dtype())?);
        }
        match self.mask(x.elem_count(), p) {
            Some(mask) => {
                let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
                x.mul(&mask)
            }
            None => Ok(x.clone()),
        }
    }

    /// For masks drawn on a GPU: `None` when dropout is off; else `Some(Some(seed))` for the
    /// first mask since [`Self::set`] (the device generator's seed) and `Some(None)` after.
    fn device_seed(&self, p: f64) -> Option<Option<u64>> {
        if p <= 0.0 {
            return None;
        }
        let mut state = self.state.lock().ok()?;
        let (seed, counter) = state.as_mut()?;
        *counter += 1;
        Some((*counter == 1).then(|| derive(*seed, &[0xdec1ce])))
    }

    /// The next dropout mask for `n` elements (0 or 1/(1 − p) each), or `None` when dropout is
    /// off or `p` is 0. Each call advances the counter, so callers must draw masks in the
    /// same order as the forward pass does (`pub(crate)` for the hand-written training pass).
    pub(crate) fn mask(&self, n: usize, p: f64) -> Option<Vec<f32>> {
        if p <= 0.0 {
            return None;
        }
        let seed = match self.state.lock() {
            Ok(mut s) => s.as_mut().map(|(seed, counter)| {
                *counter += 1;
                derive(*seed, &[*counter])
            }),
            Err(_) => None,
        }?;
        let mut rng = SplitMix::new(seed);
        let keep = (1.0 / (1.0 - p)) as f32;
        Some(
            (0..n)
                .map(|_| if rng.next_f64() < p { 0.0 } else { keep })
                .collect(),
        )
    }
}

/// How a weight takes part in training.
#[derive(Clone, Debug)]
pub enum Weight {
    /// Not trained (plain tensor in the compute dtype).
    Frozen(Tensor),
    /// Trained (an f32 master [`Var`], cast to the compute dtype on use).
    Trained(Var),
}

impl Weight {
    /// The tensor as stored (the Var's tensor for trained weights).
    pub fn tensor(&self) -> &Tensor {
        match self {
            Weight::Frozen(t) => t,
            Weight::Trained(v) => v.as_tensor(),
        }
    }

    /// The tensor in `dtype` (a differentiable cast for trained weights).
    pub fn as_dtype(&self, dtype: DType) -> Result<Tensor> {
        let t = self.tensor();
        if t.dtype() == dtype {
            Ok(t.clone())
        } else {
            t.to_dtype(dtype)
        }
    }
}

/// `y = x Wᵀ (+ b) (+ LoRA)`, W: (out, in).
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weight.
    pub weight: Weight,
    /// Optional bias (out).
    pub bias: Option<Weight>,
    /// Optional adapter.
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    /// Applies the layer to `x` (..., in).
    pub fn forward(&self, x: &Tensor, dropout: &DropoutCtl) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_f = *dims.last().unwrap_or(&0);
        let x2 = x.reshape(((), in_f))?;
        let w = self.weight.as_dtype(x.dtype())?;
        // A frozen weight tracks no gradient, so the product's backward skips dL/dW.
        let mut y = matmul(&x2, &w.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.as_dtype(x.dtype())?)?;
        }
        if let Some(l) = &self.lora {
            let xd = dropout.apply(&x2, l.dropout)?;
            let a = l.a.as_tensor().to_dtype(x.dtype())?;
            // The scale goes on B (out × r), not on the (tokens × out) product.
            let b = l.b.as_tensor().to_dtype(x.dtype())?.affine(l.scale, 0.0)?;
            let u = matmul(&matmul(&xd, &a.t()?)?, &b.t()?)?;
            y = (y + u)?;
        }
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = y.dim(1)?;
        }
        y.reshape(out)
    }

    /// (out, in).
    pub fn dims(&self) -> Result<(usize, usize)> {
        self.weight.tensor().dims2()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn uniform_draws_below_p_are_dropped_and_the_rest_scaled() {
        let u = Tensor::new(&[0.0f32, 0.09, 0.1, 0.5, 0.99], &Device::Cpu).expect("u");
        let m = mask_from_uniform(&u, 0.1)
            .expect("mask")
            .to_vec1::<f32>()
            .expect("values");
        let keep = (1.0 / 0.9) as f32;
        assert_eq!(m, vec![0.0, 0.0, keep, keep, keep]);
    }

    #[test]
    fn device_masks_reseed_once_per_micro_batch() {
        let d = DropoutCtl::default();
        assert_eq!(d.device_seed(0.1), None, "off until a seed is set");
        d.set(Some(7));
        assert_eq!(d.device_seed(0.0), None, "p = 0 draws nothing");
        let first = d.device_seed(0.1).expect("on").expect("first mask seeds");
        assert_eq!(
            d.device_seed(0.1),
            Some(None),
            "later masks continue the stream"
        );
        d.set(Some(7));
        assert_eq!(
            d.device_seed(0.1),
            Some(Some(first)),
            "same micro-batch, same seed"
        );
        d.set(Some(8));
        let other = d.device_seed(0.1).expect("on").expect("seeds");
        assert_ne!(other, first);
        d.set(None);
        assert_eq!(d.device_seed(0.1), None);
    }
}
