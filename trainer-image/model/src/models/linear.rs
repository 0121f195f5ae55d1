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

impl DropoutCtl {
    /// Turns dropout on with a seed (counter reset) or off.
    pub fn set(&self, seed: Option<u64>) {
        if let Ok(mut s) = self.state.lock() {
            *s = seed.map(|s| (s, 0));
        }
    }

    /// Applies dropout with probability `p` to `x` when on.
    fn apply(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        match self.mask(x.elem_count(), p) {
            Some(mask) => {
                let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
                x.mul(&mask)
            }
            None => Ok(x.clone()),
        }
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
