//! The key/value cache for incremental decoding: per layer, the keys and values (after RoPE)
//! of every position seen so far, shape (batch, kv_heads, positions, head_dim).

use candle_core::{Result, Tensor};

/// Keys and values of the positions already processed. Create one per generation with
/// [`KvCache::new`], pass it to every forward call of that generation, [`KvCache::reset`] to
/// reuse it.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
        }
    }

    /// Positions cached (the `start_pos` of the next forward call).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops everything cached.
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Appends this call's keys/values of layer `i` and returns all keys/values so far.
    pub(crate) fn append(&mut self, i: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let Some(slot) = self.layers.get_mut(i) else {
            candle_core::bail!("kv cache has {} layers, layer {i} asked", self.layers.len());
        };
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, k], 2)?, Tensor::cat(&[&pv, v], 2)?),
            None => (k.contiguous()?, v.contiguous()?),
        };
        *slot = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Records that `n` more positions were processed (after all layers appended).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
