//! The shared trainable decoder of the Llama family: embedding, N × (RMSNorm → GQA attention
//! with RoPE → residual → RMSNorm → gated MLP → residual), final RMSNorm, lm_head. Family
//! differences are the flags of [`Flavor`] (Gemma 3 adds q/k head norms, norms on the
//! attention and MLP outputs, and a RoPE per layer kind); tensor names are those of Hugging
//! Face checkpoints.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarBuilder;

use super::kv_cache::KvCache;
use super::linear::{DropoutCtl, Linear, Weight};
use super::ops::{rms_norm, rope_heads_first, softmax_last, swiglu};
use super::{Activation, Flavor, LoadOptions, Trainable};
use crate::config::ModelConfig;
use crate::kernels::matmul::matmul;
use crate::lora::LoraAdapter;

mod hand_pass;
pub use hand_pass::HandBatch;

/// Additive mask value for keys a query must not see (finite, so fully masked pad rows give a
/// uniform softmax instead of NaN).
const MASKED: f32 = -1e9;

/// Collects weights from a VarBuilder, making them frozen or trainable as asked.
struct Builder<'a, 'b> {
    vb: VarBuilder<'a>,
    opts: &'b LoadOptions,
    device: Device,
    weights: Vec<(String, Weight)>,
    trainable: Vec<(String, Var)>,
    adapters: Vec<(String, LoraAdapter)>,
}

impl Builder<'_, '_> {
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Weight> {
        let t = self.vb.get(shape, name)?;
        let w = match self.opts.trainable {
            Trainable::Full => {
                let v = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
                self.trainable.push((name.to_string(), v.clone()));
                Weight::Trained(v)
            }
            _ => Weight::Frozen(t.to_dtype(self.opts.dtype)?),
        };
        self.weights.push((name.to_string(), w.clone()));
        Ok(w)
    }

    fn linear(&mut self, prefix: &str, out_f: usize, in_f: usize, bias: bool) -> Result<Linear> {
        let weight = self.weight(&format!("{prefix}.weight"), &[out_f, in_f])?;
        let bias = if bias {
            Some(self.weight(&format!("{prefix}.bias"), &[out_f])?)
        } else {
            None
        };
        let module = prefix.rsplit('.').next().unwrap_or(prefix);
        let lora = match &self.opts.trainable {
            Trainable::Lora(cfg) if cfg.targets(module) => {
                let a = LoraAdapter::init(cfg, prefix, out_f, in_f, self.opts.seed, &self.device)?;
                self.trainable
                    .push((format!("{prefix}.lora_A.weight"), a.a.clone()));
                self.trainable
                    .push((format!("{prefix}.lora_B.weight"), a.b.clone()));
                self.adapters.push((prefix.to_string(), a.clone()));
                Some(a)
            }
            _ => None,
        };
        Ok(Linear { weight, bias, lora })
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Per-head norms of queries and keys (`Flavor::qk_norm`).
    q_norm: Option<Weight>,
    k_norm: Option<Weight>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Layer {
    input_norm: Weight,
    /// The MLP's input norm: `post_attention_layernorm`, or `pre_feedforward_layernorm` with
    /// sandwich norms.
    post_norm: Weight,
    /// `post_attention_layernorm` on the attention output (`Flavor::sandwich_norms`).
    attn_out_norm: Option<Weight>,
    /// `post_feedforward_layernorm` on the MLP output (`Flavor::sandwich_norms`).
    mlp_out_norm: Option<Weight>,
    attn: Attention,
    mlp: Mlp,
    /// Index of this layer's RoPE table in `CausalLm::rope_freqs`.
    rope: usize,
}

/// Per-call inputs shared by all layers.
struct Step<'a> {
    /// (cos, sin) of each RoPE table, for the positions of this call.
    rope: Vec<(Tensor, Tensor)>,
    /// The mask of full-attention layers.
    mask: Option<Tensor>,
    /// The mask of sliding-window layers (only built when some layer has a window).
    window_mask: Option<Tensor>,
    dropout: &'a DropoutCtl,
}

/// A trainable Llama-family causal language model (see the module docs of [`super`]).
pub struct CausalLm {
    cfg: ModelConfig,
    flavor: Flavor,
    dtype: DType,
    device: Device,
    embed: Weight,
    layers: Vec<Layer>,
    norm: Weight,
    lm_head: Linear,
    dropout: DropoutCtl,
    /// The distinct RoPE inverse frequencies (one table, or Gemma 3's global and local).
    rope_freqs: Vec<Vec<f32>>,
    weights: Vec<(String, Weight)>,
    trainable: Vec<(String, Var)>,
    adapters: Vec<(String, LoraAdapter)>,
}

impl CausalLm {
    /// Builds the model from the tensors of `vb` (names as in a Hugging Face checkpoint; any
    /// stored dtype, cast to `opts.dtype`). LoRA adapters are created fresh from `opts.seed`.
    pub fn load(cfg: &ModelConfig, vb: VarBuilder, opts: &LoadOptions) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        if let Trainable::Lora(l) = &opts.trainable {
            l.validate().map_err(candle_core::Error::wrap)?;
        }
        let flavor = Flavor::of(cfg).map_err(candle_core::Error::wrap)?;
        let device = vb.device().clone();
        let mut b = Builder {
            vb,
            opts,
            device: device.clone(),
            weights: Vec::new(),
            trainable: Vec::new(),
            adapters: Vec::new(),
        };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let (nh, nkv, hd, inter) = (
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
            cfg.head_dim(),
            cfg.intermediate_size,
        );
        // Base and scaling of each layer's RoPE (validated above), as distinct tables.
        let mut rope_freqs: Vec<Vec<f32>> = Vec::new();
        let mut layer_rope = Vec::with_capacity(cfg.num_hidden_layers);
        for rope in cfg.layer_ropes().map_err(candle_core::Error::wrap)? {
            let f: Vec<f32> = rope.inv_freq(hd).into_iter().map(|f| f as f32).collect();
            let at = match rope_freqs.iter().position(|t| *t == f) {
                Some(at) => at,
                None => {
                    rope_freqs.push(f);
                    rope_freqs.len() - 1
                }
            };
            layer_rope.push(at);
        }
        let embed = b.weight("model.embed_tokens.weight", &[v, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for (i, rope) in layer_rope.into_iter().enumerate() {
            let p = format!("model.layers.{i}");
            let input_norm = b.weight(&format!("{p}.input_layernorm.weight"), &[h])?;
            let qb = flavor.qkv_bias;
            let q = b.linear(&format!("{p}.self_attn.q_proj"), nh * hd, h, qb)?;
            let k = b.linear(&format!("{p}.self_attn.k_proj"), nkv * hd, h, qb)?;
            let v = b.linear(&format!("{p}.self_attn.v_proj"), nkv * hd, h, qb)?;
            let o = b.linear(&format!("{p}.self_attn.o_proj"), h, nh * hd, flavor.o_bias)?;
            let (q_norm, k_norm) = if flavor.qk_norm {
                (
                    Some(b.weight(&format!("{p}.self_attn.q_norm.weight"), &[hd])?),
                    Some(b.weight(&format!("{p}.self_attn.k_norm.weight"), &[hd])?),
                )
            } else {
                (None, None)
            };
            let attn = Attention {
                q,
                k,
                v,
                o,
                q_norm,
                k_norm,
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
            };
            let (post_norm, attn_out_norm) = if flavor.sandwich_norms {
                let out = b.weight(&format!("{p}.post_attention_layernorm.weight"), &[h])?;
                let pre = b.weight(&format!("{p}.pre_feedforward_layernorm.weight"), &[h])?;
                (pre, Some(out))
            } else {
                let post = b.weight(&format!("{p}.post_attention_layernorm.weight"), &[h])?;
                (post, None)
            };
            let mb = flavor.mlp_bias;
            let mlp = Mlp {
                gate: b.linear(&format!("{p}.mlp.gate_proj"), inter, h, mb)?,
                up: b.linear(&format!("{p}.mlp.up_proj"), inter, h, mb)?,
                down: b.linear(&format!("{p}.mlp.down_proj"), h, inter, mb)?,
            };
            let mlp_out_norm = if flavor.sandwich_norms {
                Some(b.weight(&format!("{p}.post_feedforward_layernorm.weight"), &[h])?)
            } else {
                None
            };
            layers.push(Layer {
                input_norm,
                post_norm,
                attn_out_norm,
                mlp_out_norm,
                attn,
                mlp,
                rope,
            });
        }
        let norm = b.weight("model.norm.weight", &[h])?;
        let lm_head = if cfg.tied_embeddings() {
            Linear {
                weight: embed.clone(),
                bias: None,
                lora: None,
            }
        } else {
            Linear {
                weight: b.weight("lm_head.weight", &[v, h])?,
                bias: None,
                lora: None,
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            flavor,
            dtype: opts.dtype,
            device,
            embed,
            layers,
            norm,
            lm_head,
            dropout: DropoutCtl::default(),
            rope_freqs,
            weights: b.weights,
            trainable: b.trainable,
            adapters: b.adapters,
        })
    }

    /// Builds the model from named tensors (e.g. a loaded safetensors file).
    pub fn from_tensors(
        cfg: &ModelConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let vb = VarBuilder::from_tensors(tensors, opts.dtype, device);
        Self::load(cfg, vb, opts)
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The trained tensors by name: HF names for full fine-tuning; for LoRA the PEFT names
    /// without the `base_model.model.` prefix (`model.layers.0.self_attn.q_proj.lora_A.weight`).
    pub fn trainable(&self) -> &[(String, Var)] {
        &self.trainable
    }

    /// Every base weight by its checkpoint name (frozen ones in the compute dtype, trained ones
    /// as their f32 master). A tied lm_head is not listed separately.
    pub fn weights(&self) -> &[(String, Weight)] {
        &self.weights
    }

    /// The LoRA adapters by module prefix (`model.layers.0.self_attn.q_proj`).
    pub fn adapters(&self) -> &[(String, LoraAdapter)] {
        &self.adapters
    }

    /// Switches adapter dropout on with a seed (training) or off (`None`).
    pub fn set_dropout_seed(&self, seed: Option<u64>) {
        self.dropout.set(seed);
    }

    /// Logits for every position: (batch, seq, vocab) in the compute dtype. `input_ids`
    /// (batch, seq) u32; `start_pos` the number of positions already in `cache` (0 without).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        start_pos: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, start_pos, None, cache)?;
        self.logits(&h)
    }

    /// [`Self::forward`] for a left-padded batch: row r starts with `left_pad[r]` pad tokens
    /// (counted from position 0 of the whole sequence, cache included). Pads are masked as
    /// keys and real tokens get positions 0, 1, ... from their first real token.
    pub fn forward_padded(
        &self,
        input_ids: &Tensor,
        start_pos: usize,
        left_pad: &[usize],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, start_pos, Some(left_pad), cache)?;
        self.logits(&h)
    }

    /// Hidden states after the final norm: (batch, seq, hidden).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        start_pos: usize,
        left_pad: Option<&[usize]>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        if let Some(c) = cache.as_deref() {
            if c.len() != start_pos {
                candle_core::bail!("start_pos {start_pos} but the kv cache holds {}", c.len());
            }
            if c.num_layers() != self.layers.len() {
                candle_core::bail!("kv cache made for {} layers", c.num_layers());
            }
        }
        if let Some(p) = left_pad
            && p.len() != b
        {
            candle_core::bail!("left_pad has {} entries for a batch of {b}", p.len());
        }
        let ids = input_ids.flatten_all()?.to_dtype(DType::U32)?;
        let embed = self.embed.as_dtype(self.dtype)?;
        let mut x = embed
            .index_select(&ids, 0)?
            .reshape((b, s, self.cfg.hidden_size))?;
        if self.flavor.embed_scale {
            x = x.affine((self.cfg.hidden_size as f64).sqrt(), 0.0)?;
        }
        let rope = (0..self.rope_freqs.len())
            .map(|t| self.rope_tables(t, s, start_pos, left_pad))
            .collect::<Result<Vec<_>>>()?;
        let window_mask = match self.flavor.any_window() {
            Some(w) => self.mask(s, start_pos, left_pad, Some(w))?,
            None => None,
        };
        let step = Step {
            rope,
            mask: self.mask(s, start_pos, left_pad, None)?,
            window_mask,
            dropout: &self.dropout,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let mask = if self.flavor.window(i).is_some() {
                step.window_mask.as_ref()
            } else {
                step.mask.as_ref()
            };
            x = self.layer_forward(layer, &x, &step, mask, cache.as_deref_mut().map(|c| (c, i)))?;
        }
        if let Some(c) = cache {
            c.advance(s);
        }
        self.norm_fwd(&x, &self.norm)
    }

    /// lm_head on hidden states (..., hidden) -> (..., vocab).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden, &self.dropout)
    }

    fn norm_fwd(&self, x: &Tensor, w: &Weight) -> Result<Tensor> {
        rms_norm(x, w.tensor(), self.cfg.rms_norm_eps, self.flavor.gemma_norm)
    }

    /// cos/sin of RoPE table `table`, of shape (b or 1, 1, s, head_dim/2), for the positions
    /// of this call.
    fn rope_tables(
        &self,
        table: usize,
        s: usize,
        start: usize,
        left_pad: Option<&[usize]>,
    ) -> Result<(Tensor, Tensor)> {
        let inv_freq = &self.rope_freqs[table];
        let half = inv_freq.len();
        let rows: Vec<usize> = match left_pad {
            Some(p) => p.to_vec(),
            None => vec![0],
        };
        let mut cos = Vec::with_capacity(rows.len() * s * half);
        let mut sin = Vec::with_capacity(rows.len() * s * half);
        for pad in &rows {
            for j in 0..s {
                let pos = (start + j).saturating_sub(*pad) as f32;
                for f in inv_freq {
                    let a = pos * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let shape = (rows.len(), 1, s, half);
        Ok((
            Tensor::from_vec(cos, shape, &self.device)?.to_dtype(self.dtype)?,
            Tensor::from_vec(sin, shape, &self.device)?.to_dtype(self.dtype)?,
        ))
    }

    /// Additive mask (b or 1, 1, 1, s, t): causal, left pads, and `window` when given.
    fn mask(
        &self,
        s: usize,
        start: usize,
        left_pad: Option<&[usize]>,
        window: Option<usize>,
    ) -> Result<Option<Tensor>> {
        let t = start + s;
        let window = window.filter(|w| *w < t);
        let has_pad = left_pad.is_some_and(|p| p.iter().any(|x| *x > 0));
        if s == 1 && !has_pad && window.is_none() {
            return Ok(None);
        }
        let rows: Vec<usize> = match left_pad {
            Some(p) if has_pad => p.to_vec(),
            _ => vec![0],
        };
        let mut m = Vec::with_capacity(rows.len() * s * t);
        for pad in &rows {
            for i in 0..s {
                let q = start + i;
                for k in 0..t {
                    let visible = k <= q && k >= *pad && window.is_none_or(|w| q - k < w);
                    m.push(if visible { 0.0 } else { MASKED });
                }
            }
        }
        let mask = Tensor::from_vec(m, (rows.len(), 1, 1, s, t), &self.device)?;
        Ok(Some(mask.to_dtype(self.dtype)?))
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        step: &Step,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let h = self.norm_fwd(x, &layer.input_norm)?;
        let mut a = self.attention(&layer.attn, &h, step, layer.rope, mask, cache)?;
        if let Some(w) = &layer.attn_out_norm {
            a = self.norm_fwd(&a, w)?;
        }
        let x = (x + a)?;
        let h = self.norm_fwd(&x, &layer.post_norm)?;
        let m = &layer.mlp;
        let gate = m.gate.forward(&h, step.dropout)?;
        let up = m.up.forward(&h, step.dropout)?;
        let act = match self.flavor.activation {
            Activation::Silu => swiglu(&gate, &up)?,
            Activation::GeluTanh => (gate.gelu()? * up)?,
        };
        let mut y = m.down.forward(&act, step.dropout)?;
        if let Some(w) = &layer.mlp_out_norm {
            y = self.norm_fwd(&y, w)?;
        }
        x + y
    }

    fn attention(
        &self,
        at: &Attention,
        x: &Tensor,
        step: &Step,
        rope: usize,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (nh, nkv, hd) = (at.heads, at.kv_heads, at.head_dim);
        let rep = nh / nkv;
        let mut q = at.q.forward(x, step.dropout)?.reshape((b, s, nh, hd))?;
        let mut k = at.k.forward(x, step.dropout)?.reshape((b, s, nkv, hd))?;
        let v = at.v.forward(x, step.dropout)?.reshape((b, s, nkv, hd))?;
        if let (Some(qn), Some(kn)) = (&at.q_norm, &at.k_norm) {
            q = self.norm_fwd(&q, qn)?;
            k = self.norm_fwd(&k, kn)?;
        }
        // (b, heads, s, d), the queries pre-scaled by the attention scale.
        let (cos, sin) = &step.rope[rope];
        let q = rope_heads_first(&q, cos, sin, self.flavor.attn_scale)?;
        let k = rope_heads_first(&k, cos, sin, 1.0)?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = match cache {
            Some((c, i)) => c.append(i, &k, &v)?,
            None => (k, v),
        };
        let t = k.dim(2)?;
        // GQA without copying K/V: group the query heads that share a KV head along the
        // sequence axis, (b, kv, rep·s, d) × (b, kv, d, t).
        let q = q.reshape((b, nkv, rep * s, hd))?;
        let scores = matmul(&q, &k.t()?)?;
        let scores = match mask {
            Some(m) => scores.reshape((b, nkv, rep, s, t))?.broadcast_add(m)?,
            None => scores.reshape((b, nkv, rep, s, t))?,
        };
        let probs = softmax_last(&scores)?.reshape((b, nkv, rep * s, t))?;
        let out = matmul(&probs, &v)?
            .reshape((b, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((b, s, nh * hd))?;
        at.o.forward(&out, step.dropout)
    }
}

impl std::fmt::Debug for CausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalLm")
            .field("architectures", &self.cfg.architectures)
            .field("layers", &self.layers.len())
            .field("dtype", &self.dtype)
            .field("trainable", &self.trainable.len())
            .finish()
    }
}
