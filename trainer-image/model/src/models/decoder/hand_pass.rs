//! The decoder's training pass written out by hand, for f32 on the CPU: a forward pass that
//! keeps what the backward pass needs, then the backward pass layer by layer into one gradient
//! buffer per trainable tensor.
//!
//! Why not candle's autograd here: it gives every node of the graph, reshapes and transposes
//! included, a zero-filled gradient buffer and then adds into it on one thread; on the ~25M
//! benchmark config that was about a tenth of a step (BENCHMARKS.md). Here the residual
//! stream's gradient is one buffer updated in place, products accumulate into their
//! destination (gemm's beta), attention runs per head on strided views instead of transposed
//! copies, and the logits' buffer becomes their gradient. The kernels are the ones the autograd
//! path uses, in their slice form. Gemma 3's extra norms (q/k head norms, norms on the
//! attention and MLP outputs) run forward and backward the same way, their weights trained
//! under full fine-tuning. [`CausalLm::hand_pass_supported`] says when it applies;
//! elsewhere (CUDA, bf16/f16) the trainer uses autograd. The tests check loss and
//! every gradient against autograd's.

use std::collections::HashMap;
use std::ops::Deref;
use std::ops::Range;

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, TensorId};

use super::{Attention, CausalLm, Layer, Linear, Mlp, Weight};
use crate::kernels::cross_entropy::loss_and_grad_in_place;
use crate::kernels::geglu::{geglu_grad_into, geglu_into};
use crate::kernels::matmul::{Mat, gemm_into, gemm_serial};
use crate::kernels::rms_norm::{rms_norm_grad_into, rms_norm_into};
use crate::kernels::rope::rope_move_into;
use crate::kernels::swiglu::{swiglu_grad_into, swiglu_into};
use crate::kernels::{SharedOut, math, par_blocks, run_chunked};
use crate::models::Activation;

/// One micro-batch for [`CausalLm::hand_loss_and_grads`]: right-padded ids and the positions
/// whose next token is a loss target (as `crate::train::data::make_batch` builds them).
pub struct HandBatch<'a> {
    /// (batch, seq) token ids, row-major.
    pub input_ids: &'a [u32],
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Flat positions (row · seq + col) that predict a target.
    pub positions: &'a [u32],
    /// The target id of each position.
    pub targets: &'a [u32],
}

/// Read access to the f32 data of the model's tensors for the length of one pass.
#[derive(Default)]
struct Data<'m> {
    // candle's storage lock guards, by what they deref to (their type is candle's choice).
    guards: Vec<(Box<dyn Deref<Target = Storage> + 'm>, Range<usize>)>,
    handles: HashMap<TensorId, usize>,
}

impl<'m> Data<'m> {
    /// Registers `t` (CPU, f32, contiguous) and returns its handle; a tensor registered twice
    /// (a tied lm_head) keeps its one lock guard, since a second read lock on it from this
    /// thread could wait behind a writer.
    fn add(&mut self, t: &'m Tensor) -> Result<usize> {
        if let Some(h) = self.handles.get(&t.id()) {
            return Ok(*h);
        }
        let (guard, layout) = t.storage_and_layout();
        let range = match (&*guard, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(_)), Some((a, b))) => a..b,
            _ => candle_core::bail!("hand training pass: contiguous f32 CPU tensors expected"),
        };
        self.guards.push((Box::new(guard), range));
        self.handles.insert(t.id(), self.guards.len() - 1);
        Ok(self.guards.len() - 1)
    }

    fn get(&self, i: usize) -> &[f32] {
        let (guard, range) = &self.guards[i];
        match &***guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[range.clone()],
            // `add` admits f32 CPU storages only.
            _ => &[],
        }
    }
}

/// A weight: its data handle and, when trained, its gradient's index in `trainable()`.
#[derive(Clone, Copy)]
struct W {
    data: usize,
    grad: Option<usize>,
}

struct LoraRef {
    a: W,
    b: W,
    rank: usize,
    scale: f32,
    dropout: f64,
}

struct LinRef {
    w: W,
    bias: Option<W>,
    lora: Option<LoraRef>,
    out_f: usize,
    in_f: usize,
}

struct LayerRef {
    input_norm: W,
    post_norm: W,
    attn_out_norm: Option<W>,
    mlp_out_norm: Option<W>,
    q_norm: Option<W>,
    k_norm: Option<W>,
    /// The layer's RoPE table.
    rope: usize,
    q: LinRef,
    k: LinRef,
    v: LinRef,
    o: LinRef,
    gate: LinRef,
    up: LinRef,
    down: LinRef,
}

/// What a LoRA adapter's backward pass needs: the (dropped-out) input and x·Aᵀ.
struct LoraActs {
    mask: Option<Vec<f32>>,
    dropped: Option<Vec<f32>>,
    xa: Vec<f32>,
}

/// The activations one layer's backward pass needs.
struct LayerActs {
    x: Vec<f32>,
    h1: Vec<f32>,
    /// q and k before their head norms (with `Flavor::qk_norm`).
    q_raw: Option<Vec<f32>>,
    k_raw: Option<Vec<f32>>,
    /// The attention and MLP outputs before their output norms (`Flavor::sandwich_norms`).
    a_raw: Option<Vec<f32>>,
    y_raw: Option<Vec<f32>>,
    qh: Vec<f32>,
    kh: Vec<f32>,
    vh: Vec<f32>,
    probs: Vec<f32>,
    attn: Vec<f32>,
    x2: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    /// Per linear, in forward order: q, k, v, o, gate, up, down.
    lora: [Option<LoraActs>; 7],
}

/// Shapes of one pass.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    s: usize,
    h: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
}

impl Dims {
    fn t(&self) -> usize {
        self.b * self.s
    }
}

/// The pass over one model and its trainable tensors.
struct Pass<'m> {
    model: &'m CausalLm,
    data: Data<'m>,
    grad_of: HashMap<TensorId, usize>,
    grads: Vec<Vec<f32>>,
}

impl CausalLm {
    /// Whether [`Self::hand_loss_and_grads`] can train this model: CPU and f32, and not
    /// switched off with `LLAMADUO_TRAIN_PASS=autograd`.
    pub fn hand_pass_supported(&self) -> bool {
        std::env::var("LLAMADUO_TRAIN_PASS").as_deref() != Ok("autograd")
            && self.device.is_cpu()
            && self.dtype == DType::F32
            && self
                .weights
                .iter()
                .all(|(_, w)| w.tensor().dtype() == DType::F32)
    }

    /// The mean cross-entropy over the batch's targets and its gradient for every tensor of
    /// [`Self::trainable`] (same order), as `loss.backward()` on the autograd path gives them.
    /// Dropout masks are drawn in the autograd path's order, so both paths train alike.
    pub fn hand_loss_and_grads(&self, batch: &HandBatch) -> Result<(f32, Vec<Tensor>)> {
        if !self.hand_pass_supported() {
            candle_core::bail!(
                "hand training pass: not supported for this model (see hand_pass_supported)"
            );
        }
        let mut pass = Pass::new(self)?;
        let loss = pass.run(batch)?;
        let grads = pass
            .grads
            .into_iter()
            .zip(&self.trainable)
            .map(|(g, (_, v))| Tensor::from_vec(g, v.shape(), &self.device))
            .collect::<Result<Vec<_>>>()?;
        Ok((loss, grads))
    }
}

impl<'m> Pass<'m> {
    fn new(model: &'m CausalLm) -> Result<Self> {
        let grad_of = model
            .trainable
            .iter()
            .enumerate()
            .map(|(i, (_, v))| (v.as_tensor().id(), i))
            .collect();
        let grads = model
            .trainable
            .iter()
            .map(|(_, v)| vec![0f32; v.elem_count()])
            .collect();
        Ok(Self {
            model,
            data: Data::default(),
            grad_of,
            grads,
        })
    }

    fn weight(&mut self, w: &'m Weight) -> Result<W> {
        let t = w.tensor();
        Ok(W {
            data: self.data.add(t)?,
            grad: self.grad_of.get(&t.id()).copied(),
        })
    }

    fn linear(&mut self, l: &'m Linear) -> Result<LinRef> {
        let (out_f, in_f) = l.dims()?;
        let w = self.weight(&l.weight)?;
        let bias = match &l.bias {
            Some(b) => Some(self.weight(b)?),
            None => None,
        };
        let lora = match &l.lora {
            Some(a) => {
                let (at, bt) = (a.a.as_tensor(), a.b.as_tensor());
                Some(LoraRef {
                    a: W {
                        data: self.data.add(at)?,
                        grad: self.grad_of.get(&at.id()).copied(),
                    },
                    b: W {
                        data: self.data.add(bt)?,
                        grad: self.grad_of.get(&bt.id()).copied(),
                    },
                    rank: at.dim(0)?,
                    scale: a.scale as f32,
                    dropout: a.dropout,
                })
            }
            None => None,
        };
        Ok(LinRef {
            w,
            bias,
            lora,
            out_f,
            in_f,
        })
    }

    fn opt_weight(&mut self, w: &'m Option<Weight>) -> Result<Option<W>> {
        w.as_ref().map(|w| self.weight(w)).transpose()
    }

    fn layer(&mut self, l: &'m Layer) -> Result<LayerRef> {
        let Layer {
            input_norm,
            post_norm,
            attn_out_norm,
            mlp_out_norm,
            attn:
                Attention {
                    q,
                    k,
                    v,
                    o,
                    q_norm,
                    k_norm,
                    ..
                },
            mlp: Mlp { gate, up, down },
            rope,
        } = l;
        Ok(LayerRef {
            input_norm: self.weight(input_norm)?,
            post_norm: self.weight(post_norm)?,
            attn_out_norm: self.opt_weight(attn_out_norm)?,
            mlp_out_norm: self.opt_weight(mlp_out_norm)?,
            q_norm: self.opt_weight(q_norm)?,
            k_norm: self.opt_weight(k_norm)?,
            rope: *rope,
            q: self.linear(q)?,
            k: self.linear(k)?,
            v: self.linear(v)?,
            o: self.linear(o)?,
            gate: self.linear(gate)?,
            up: self.linear(up)?,
            down: self.linear(down)?,
        })
    }

    fn run(&mut self, batch: &HandBatch) -> Result<f32> {
        let m = self.model;
        let cfg = &m.cfg;
        let d = Dims {
            b: batch.batch,
            s: batch.seq,
            h: cfg.hidden_size,
            nh: cfg.num_attention_heads,
            nkv: cfg.num_kv_heads(),
            hd: cfg.head_dim(),
        };
        let (t, vocab) = (d.t(), cfg.vocab_size);
        if batch.input_ids.len() != t || batch.positions.len() != batch.targets.len() {
            candle_core::bail!(
                "hand training pass: batch of {} ids for {}x{}",
                batch.input_ids.len(),
                d.b,
                d.s
            );
        }
        if let Some(bad) = batch.input_ids.iter().find(|&&i| i as usize >= vocab) {
            candle_core::bail!(
                "hand training pass: token id {bad} outside a vocabulary of {vocab}"
            );
        }
        if let Some(bad) = batch.positions.iter().find(|&&p| p as usize >= t) {
            candle_core::bail!("hand training pass: position {bad} outside a batch of {t} tokens");
        }
        let embed = self.weight(&m.embed)?;
        let layers = m
            .layers
            .iter()
            .map(|l| self.layer(l))
            .collect::<Result<Vec<_>>>()?;
        let norm = self.weight(&m.norm)?;
        let lm_head = self.linear(&m.lm_head)?;
        let ropes = (0..m.rope_freqs.len())
            .map(|i| RopeTables::new(m, d, i))
            .collect::<Result<Vec<_>>>()?;
        let (eps, one_plus) = (cfg.rms_norm_eps, m.flavor.gemma_norm);
        let embed_scale = if m.flavor.embed_scale {
            (d.h as f32).sqrt()
        } else {
            1.0
        };

        // Forward.
        let mut x = vec![0f32; t * d.h];
        let e = self.data.get(embed.data);
        for (row, id) in x.chunks_exact_mut(d.h).zip(batch.input_ids) {
            let src = &e[*id as usize * d.h..(*id as usize + 1) * d.h];
            row.iter_mut()
                .zip(src)
                .for_each(|(x, e)| *x = e * embed_scale);
        }
        let mut acts = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            let (a, next) = self.layer_forward(l, x, d, &ropes[l.rope], m.flavor.window(i))?;
            acts.push(a);
            x = next;
        }
        let mut hn = vec![0f32; t * d.h];
        rms_norm_into(&x, self.data.get(norm.data), eps, one_plus, &mut hn);
        let n = batch.positions.len();
        let mut hp = vec![0f32; n * d.h];
        for (row, p) in hp.chunks_exact_mut(d.h).zip(batch.positions) {
            row.copy_from_slice(&hn[*p as usize * d.h..(*p as usize + 1) * d.h]);
        }
        let (mut logits, _) = self.linear_forward(&lm_head, &hp, n)?;
        let scale = 1.0 / n.max(1) as f32;
        let loss_sum = loss_and_grad_in_place(&mut logits, vocab, batch.targets, scale)?;
        let loss = if n == 0 {
            f32::NAN
        } else {
            (loss_sum / n as f64) as f32
        };

        // Backward: the logits' buffer now holds their gradient.
        let mut dhp = vec![0f32; n * d.h];
        self.linear_backward(&lm_head, &hp, n, &logits, None, Some((&mut dhp, false)))?;
        drop(logits);
        let mut dhn = vec![0f32; t * d.h];
        for (row, p) in dhp.chunks_exact(d.h).zip(batch.positions) {
            dhn[*p as usize * d.h..(*p as usize + 1) * d.h]
                .iter_mut()
                .zip(row)
                .for_each(|(d, g)| *d += g);
        }
        let mut dx = vec![0f32; t * d.h];
        self.norm_backward(norm, &x, &dhn, &mut dx, true)?;
        drop((dhn, dhp, hn, x));
        for (i, (l, a)) in layers.iter().zip(acts).enumerate().rev() {
            self.layer_backward(l, a, &mut dx, d, &ropes[l.rope], m.flavor.window(i))?;
        }
        if let Some(g) = embed.grad {
            let de = &mut self.grads[g];
            for (row, id) in dx.chunks_exact(d.h).zip(batch.input_ids) {
                de[*id as usize * d.h..(*id as usize + 1) * d.h]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(d, g)| *d += g * embed_scale);
            }
        }
        Ok(loss)
    }

    /// One layer forward from its input `x`; returns its activations and its output.
    fn layer_forward(
        &mut self,
        l: &LayerRef,
        x: Vec<f32>,
        d: Dims,
        rope: &RopeTables,
        window: Option<usize>,
    ) -> Result<(LayerActs, Vec<f32>)> {
        let m = self.model;
        let (t, eps, one_plus) = (d.t(), m.cfg.rms_norm_eps, m.flavor.gemma_norm);
        let mut h1 = vec![0f32; t * d.h];
        rms_norm_into(&x, self.data.get(l.input_norm.data), eps, one_plus, &mut h1);
        let (q, lq) = self.linear_forward(&l.q, &h1, t)?;
        let (k, lk) = self.linear_forward(&l.k, &h1, t)?;
        let (v, lv) = self.linear_forward(&l.v, &h1, t)?;
        let (q, q_raw) = self.maybe_norm(l.q_norm, q);
        let (k, k_raw) = self.maybe_norm(l.k_norm, k);
        let scale = m.flavor.attn_scale as f32;
        let qh = to_heads(&q, d, d.nh, rope, true, scale);
        let kh = to_heads(&k, d, d.nkv, rope, true, 1.0);
        let vh = to_heads(&v, d, d.nkv, rope, false, 1.0);
        drop((q, k, v));
        let (probs, attn) = attention_forward(&qh, &kh, &vh, d, window);
        let (a, lo) = self.linear_forward(&l.o, &attn, t)?;
        let (mut x2, a_raw) = self.maybe_norm(l.attn_out_norm, a);
        x2.iter_mut().zip(&x).for_each(|(a, x)| *a += x);
        let mut h2 = vec![0f32; t * d.h];
        rms_norm_into(&x2, self.data.get(l.post_norm.data), eps, one_plus, &mut h2);
        let (gate, lg) = self.linear_forward(&l.gate, &h2, t)?;
        let (up, lu) = self.linear_forward(&l.up, &h2, t)?;
        let mut act = vec![0f32; gate.len()];
        match m.flavor.activation {
            Activation::Silu => swiglu_into(&gate, &up, &mut act),
            Activation::GeluTanh => geglu_into(&gate, &up, &mut act),
        }
        let (y, ld) = self.linear_forward(&l.down, &act, t)?;
        let (mut x3, y_raw) = self.maybe_norm(l.mlp_out_norm, y);
        x3.iter_mut().zip(&x2).for_each(|(y, x)| *y += x);
        let acts = LayerActs {
            x,
            h1,
            q_raw,
            k_raw,
            a_raw,
            y_raw,
            qh,
            kh,
            vh,
            probs,
            attn,
            x2,
            h2,
            gate,
            up,
            act,
            lora: [lq, lk, lv, lo, lg, lu, ld],
        };
        Ok((acts, x3))
    }

    /// One layer backward: `dx` holds the gradient of the layer's output on entry and of its
    /// input on return; weight gradients go into `self.grads`.
    fn layer_backward(
        &mut self,
        l: &LayerRef,
        a: LayerActs,
        dx: &mut [f32],
        d: Dims,
        rope: &RopeTables,
        window: Option<usize>,
    ) -> Result<()> {
        let m = self.model;
        let t = d.t();
        let [lq, lk, lv, lo, lg, lu, ld] = a.lora;
        // MLP: x3 = x2 + [norm](down(act(gate(h2)) · up(h2))), h2 = norm(x2).
        let mut dact = vec![0f32; a.act.len()];
        let dy = self.out_norm_backward(l.mlp_out_norm, a.y_raw.as_deref(), dx)?;
        self.linear_backward(
            &l.down,
            &a.act,
            t,
            dy.as_deref().unwrap_or(dx),
            ld.as_ref(),
            Some((&mut dact, false)),
        )?;
        drop(dy);
        let (mut dgate, mut dup) = (vec![0f32; dact.len()], vec![0f32; dact.len()]);
        match m.flavor.activation {
            Activation::Silu => swiglu_grad_into(&a.gate, &a.up, &dact, &mut dgate, &mut dup),
            Activation::GeluTanh => geglu_grad_into(&a.gate, &a.up, &dact, &mut dgate, &mut dup),
        }
        drop(dact);
        let mut dh = vec![0f32; t * d.h];
        self.linear_backward(
            &l.gate,
            &a.h2,
            t,
            &dgate,
            lg.as_ref(),
            Some((&mut dh, false)),
        )?;
        self.linear_backward(&l.up, &a.h2, t, &dup, lu.as_ref(), Some((&mut dh, true)))?;
        drop((dgate, dup));
        self.norm_backward(l.post_norm, &a.x2, &dh, dx, true)?;
        // Attention: x2 = x + [norm](o(attn(rope([norm](q(h1))), rope([norm](k(h1))), v(h1)))),
        // h1 = norm(x).
        let mut dattn = vec![0f32; a.attn.len()];
        let da = self.out_norm_backward(l.attn_out_norm, a.a_raw.as_deref(), dx)?;
        self.linear_backward(
            &l.o,
            &a.attn,
            t,
            da.as_deref().unwrap_or(dx),
            lo.as_ref(),
            Some((&mut dattn, false)),
        )?;
        drop(da);
        let (dqh, dkh, dvh) = attention_backward(&a.qh, &a.kh, &a.vh, &a.probs, &dattn, d, window);
        drop(dattn);
        let scale = m.flavor.attn_scale as f32;
        let dq = from_heads(&dqh, d, d.nh, rope, true, scale);
        let dk = from_heads(&dkh, d, d.nkv, rope, true, 1.0);
        let dv = from_heads(&dvh, d, d.nkv, rope, false, 1.0);
        drop((dqh, dkh, dvh));
        let dq = self.head_norm_backward(l.q_norm, a.q_raw.as_deref(), dq)?;
        let dk = self.head_norm_backward(l.k_norm, a.k_raw.as_deref(), dk)?;
        self.linear_backward(&l.q, &a.h1, t, &dq, lq.as_ref(), Some((&mut dh, false)))?;
        self.linear_backward(&l.k, &a.h1, t, &dk, lk.as_ref(), Some((&mut dh, true)))?;
        self.linear_backward(&l.v, &a.h1, t, &dv, lv.as_ref(), Some((&mut dh, true)))?;
        self.norm_backward(l.input_norm, &a.x, &dh, dx, true)
    }

    /// `norm(x)` with weight `w` when there is one, keeping `x` for the backward pass:
    /// returns (the output, `x` when it was normed).
    fn maybe_norm(&self, w: Option<W>, x: Vec<f32>) -> (Vec<f32>, Option<Vec<f32>>) {
        let Some(w) = w else { return (x, None) };
        let m = self.model;
        let mut y = vec![0f32; x.len()];
        rms_norm_into(
            &x,
            self.data.get(w.data),
            m.cfg.rms_norm_eps,
            m.flavor.gemma_norm,
            &mut y,
        );
        (y, Some(x))
    }

    /// The gradient before an output norm (`w`, input `x`) given `dy` after it, or `None`
    /// without a norm (the gradient passes unchanged).
    fn out_norm_backward(
        &mut self,
        w: Option<W>,
        x: Option<&[f32]>,
        dy: &[f32],
    ) -> Result<Option<Vec<f32>>> {
        let (Some(w), Some(x)) = (w, x) else {
            return Ok(None);
        };
        let mut d = vec![0f32; x.len()];
        self.norm_backward(w, x, dy, &mut d, false)?;
        Ok(Some(d))
    }

    /// [`Self::out_norm_backward`] for a head norm, taking and returning the gradient buffer.
    fn head_norm_backward(
        &mut self,
        w: Option<W>,
        x: Option<&[f32]>,
        g: Vec<f32>,
    ) -> Result<Vec<f32>> {
        Ok(self.out_norm_backward(w, x, &g)?.unwrap_or(g))
    }

    /// `dx (+)= d(norm(x))/dx · dh` (added to `dx` when `add`), and the norm weight's gradient
    /// when it is trained. The norm's rows are as wide as its weight.
    fn norm_backward(
        &mut self,
        w: W,
        x: &[f32],
        dh: &[f32],
        dx: &mut [f32],
        add: bool,
    ) -> Result<()> {
        let m = self.model;
        let mut dw = w.grad.map(|g| std::mem::take(&mut self.grads[g]));
        let r = rms_norm_grad_into(
            x,
            self.data.get(w.data),
            dh,
            m.cfg.rms_norm_eps,
            m.flavor.gemma_norm,
            Some((dx, add)),
            dw.as_deref_mut(),
        );
        if let (Some(g), Some(buf)) = (w.grad, dw) {
            self.grads[g] = buf;
        }
        r
    }

    /// `y = x Wᵀ (+ b) (+ scale · dropout(x) Aᵀ Bᵀ)` for `rows` rows of `x`; returns `y` and
    /// what the adapter's backward pass needs. Draws the dropout mask as `Linear::forward` does.
    fn linear_forward(
        &self,
        l: &LinRef,
        x: &[f32],
        rows: usize,
    ) -> Result<(Vec<f32>, Option<LoraActs>)> {
        let mut y = vec![0f32; rows * l.out_f];
        let w = self.data.get(l.w.data);
        gemm_into(
            &mut y,
            false,
            1.0,
            Mat::new(x, rows, l.in_f),
            Mat::new(w, l.out_f, l.in_f).t(),
        )?;
        if let Some(b) = l.bias {
            let b = self.data.get(b.data);
            par_rows(&mut y, l.out_f, |_, row| {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b)
            });
        }
        let Some(lora) = &l.lora else {
            return Ok((y, None));
        };
        let mask = self.model.dropout.mask(x.len(), lora.dropout);
        let dropped = mask
            .as_ref()
            .map(|m| x.iter().zip(m).map(|(x, m)| x * m).collect::<Vec<f32>>());
        let xd = dropped.as_deref().unwrap_or(x);
        let (a, b) = (self.data.get(lora.a.data), self.data.get(lora.b.data));
        let mut xa = vec![0f32; rows * lora.rank];
        gemm_into(
            &mut xa,
            false,
            1.0,
            Mat::new(xd, rows, l.in_f),
            Mat::new(a, lora.rank, l.in_f).t(),
        )?;
        gemm_into(
            &mut y,
            true,
            lora.scale,
            Mat::new(&xa, rows, lora.rank),
            Mat::new(b, l.out_f, lora.rank).t(),
        )?;
        Ok((y, Some(LoraActs { mask, dropped, xa })))
    }

    /// The backward pass of [`Self::linear_forward`] given `dy`: weight, bias and adapter
    /// gradients added to `self.grads`; the input gradient written to `dx` (added to it when
    /// its flag is set).
    fn linear_backward(
        &mut self,
        l: &LinRef,
        x: &[f32],
        rows: usize,
        dy: &[f32],
        lora_acts: Option<&LoraActs>,
        dx: Option<(&mut [f32], bool)>,
    ) -> Result<()> {
        let dy_m = Mat::new(dy, rows, l.out_f);
        if let Some(g) = l.w.grad {
            gemm_into(
                &mut self.grads[g],
                true,
                1.0,
                dy_m.t(),
                Mat::new(x, rows, l.in_f),
            )?;
        }
        if let Some(W { grad: Some(g), .. }) = l.bias {
            let db = &mut self.grads[g];
            for row in dy.chunks_exact(l.out_f) {
                db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
            }
        }
        let mut dx = dx;
        if let Some((dx, add)) = dx.as_mut() {
            let w = self.data.get(l.w.data);
            gemm_into(dx, *add, 1.0, dy_m, Mat::new(w, l.out_f, l.in_f))?;
        }
        let (Some(lora), Some(acts)) = (&l.lora, lora_acts) else {
            return Ok(());
        };
        let r = lora.rank;
        let xd = acts.dropped.as_deref().unwrap_or(x);
        let xa = Mat::new(&acts.xa, rows, r);
        if let Some(g) = lora.b.grad {
            gemm_into(&mut self.grads[g], true, lora.scale, dy_m.t(), xa)?;
        }
        let mut dxa = vec![0f32; rows * r];
        let b = self.data.get(lora.b.data);
        gemm_into(&mut dxa, false, lora.scale, dy_m, Mat::new(b, l.out_f, r))?;
        let dxa_m = Mat::new(&dxa, rows, r);
        if let Some(g) = lora.a.grad {
            gemm_into(
                &mut self.grads[g],
                true,
                1.0,
                dxa_m.t(),
                Mat::new(xd, rows, l.in_f),
            )?;
        }
        if let Some((dx, _)) = dx {
            let a = self.data.get(lora.a.data);
            let a_m = Mat::new(a, r, l.in_f);
            match &acts.mask {
                None => gemm_into(dx, true, 1.0, dxa_m, a_m)?,
                Some(mask) => {
                    let mut dxd = vec![0f32; rows * l.in_f];
                    gemm_into(&mut dxd, false, 1.0, dxa_m, a_m)?;
                    dx.iter_mut()
                        .zip(&dxd)
                        .zip(mask)
                        .for_each(|((d, g), m)| *d += g * m);
                }
            }
        }
        Ok(())
    }
}

/// One rotary table at positions 0..s, (s, d/2) each, from `CausalLm::rope_tables` (training
/// has no left padding), and an identity pair that moves v's heads without rotating them.
struct RopeTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    ones: Vec<f32>,
    zeros: Vec<f32>,
}

impl RopeTables {
    fn new(model: &CausalLm, d: Dims, table: usize) -> Result<Self> {
        let (cos, sin) = model.rope_tables(table, d.s, 0, None)?;
        let cos = cos.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            sin: sin.flatten_all()?.to_vec1::<f32>()?,
            ones: vec![1.0; cos.len()],
            zeros: vec![0.0; cos.len()],
            cos,
        })
    }

    /// (cos, sin): the rotation, or the identity when `rotate` is false.
    fn pick(&self, rotate: bool) -> (&[f32], &[f32]) {
        if rotate {
            (&self.cos, &self.sin)
        } else {
            (&self.ones, &self.zeros)
        }
    }
}

/// `f(row index, row)` over the `width`-long rows of `buf`, spread over the pool.
fn par_rows(buf: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let out = SharedOut::new(buf);
    par_blocks(buf.len() / width.max(1), 16, |rows| {
        for r in rows {
            // SAFETY: par_blocks hands out disjoint row ranges.
            f(r, unsafe { out.range_mut(r * width..(r + 1) * width) });
        }
    });
}

/// (b, s, heads, hd) → (b, heads, s, hd), rotated (when `rotate`) and scaled: the RoPE
/// kernel's forward half.
fn to_heads(
    x: &[f32],
    d: Dims,
    heads: usize,
    rope: &RopeTables,
    rotate: bool,
    scale: f32,
) -> Vec<f32> {
    move_heads(x, d, heads, rope.pick(rotate), scale, false)
}

/// The backward pass of [`to_heads`]: (b, heads, s, hd) → (b, s, heads, hd), rotated back.
fn from_heads(
    g: &[f32],
    d: Dims,
    heads: usize,
    rope: &RopeTables,
    rotate: bool,
    scale: f32,
) -> Vec<f32> {
    move_heads(g, d, heads, rope.pick(rotate), scale, true)
}

fn move_heads(
    x: &[f32],
    d: Dims,
    heads: usize,
    (cos, sin): (&[f32], &[f32]),
    scale: f32,
    backward: bool,
) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    rope_move_into(
        x,
        (d.b, d.s, heads, d.hd),
        cos,
        sin,
        scale,
        backward,
        &mut y,
    );
    y
}

/// The visible keys of query `i`: causal, within the sliding window when there is one.
fn visible(i: usize, window: Option<usize>) -> Range<usize> {
    let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
    lo..i + 1
}

/// Causal attention per head on heads-first q (b, nh, s, hd), k and v (b, nkv, s, hd):
/// returns the probabilities (b, nh, s, s) and the output (b, s, nh·hd).
fn attention_forward(
    qh: &[f32],
    kh: &[f32],
    vh: &[f32],
    d: Dims,
    window: Option<usize>,
) -> (Vec<f32>, Vec<f32>) {
    let (s, hd, nh, nkv) = (d.s, d.hd, d.nh, d.nkv);
    let rep = nh / nkv;
    let mut probs = vec![0f32; d.b * nh * s * s];
    let mut out = vec![0f32; d.t() * nh * hd];
    let (po, oo) = (SharedOut::new(&mut probs), SharedOut::new(&mut out));
    run_chunked(d.b * nh, |units| {
        for u in units {
            let (bi, hi) = (u / nh, u % nh);
            let g = bi * nkv + hi / rep;
            let q = Mat::new(&qh[u * s * hd..(u + 1) * s * hd], s, hd);
            let k = Mat::new(&kh[g * s * hd..(g + 1) * s * hd], s, hd);
            let v = Mat::new(&vh[g * s * hd..(g + 1) * s * hd], s, hd);
            // SAFETY: unit u owns its (s, s) block of probs and the columns hi·hd.. of its
            // batch row's output rows; gemm's operands are exactly their (s, hd) blocks.
            unsafe {
                let p = po.range_mut(u * s * s..(u + 1) * s * s);
                gemm_serial(p.as_mut_ptr(), s, false, 1.0, q, k.t());
                for i in 0..s {
                    let row = &mut p[i * s..(i + 1) * s];
                    let vis = visible(i, window);
                    let max = math::max(&row[vis.clone()]);
                    let mut sum = 0.0;
                    for x in &mut row[vis.clone()] {
                        *x = math::exp(*x - max);
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    row[vis.clone()].iter_mut().for_each(|x| *x *= inv);
                    row[..vis.start].fill(0.0);
                    row[vis.end..].fill(0.0);
                }
                let p = Mat::new(p, s, s);
                gemm_serial(oo.at(bi * s * nh * hd + hi * hd), nh * hd, false, 1.0, p, v);
            }
        }
    });
    (probs, out)
}

/// The backward pass of [`attention_forward`] given the output's gradient (b, s, nh·hd):
/// the gradients of q, k and v, heads first.
fn attention_backward(
    qh: &[f32],
    kh: &[f32],
    vh: &[f32],
    probs: &[f32],
    dout: &[f32],
    d: Dims,
    window: Option<usize>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (s, hd, nh, nkv) = (d.s, d.hd, d.nh, d.nkv);
    let rep = nh / nkv;
    let mut dq = vec![0f32; qh.len()];
    let mut dk = vec![0f32; kh.len()];
    let mut dv = vec![0f32; vh.len()];
    let (qo, ko, vo) = (
        SharedOut::new(&mut dq),
        SharedOut::new(&mut dk),
        SharedOut::new(&mut dv),
    );
    // One unit per KV head: the query heads sharing it add into its dk and dv.
    run_chunked(d.b * nkv, |units| {
        let mut ds = vec![0f32; s * s];
        for g in units {
            let bi = g / nkv;
            let k = Mat::new(&kh[g * s * hd..(g + 1) * s * hd], s, hd);
            let v = Mat::new(&vh[g * s * hd..(g + 1) * s * hd], s, hd);
            for r in 0..rep {
                let hi = (g % nkv) * rep + r;
                let u = bi * nh + hi;
                let q = Mat::new(&qh[u * s * hd..(u + 1) * s * hd], s, hd);
                let p_data = &probs[u * s * s..(u + 1) * s * s];
                let p = Mat::new(p_data, s, s);
                let off = bi * s * nh * hd + hi * hd;
                let go = Mat::strided(&dout[off..], s, hd, nh * hd, 1);
                // SAFETY: unit g owns the (s, hd) blocks of dk and dv of KV head g and the dq
                // blocks of its query heads; ds is this thread's own buffer.
                unsafe {
                    gemm_serial(vo.at(g * s * hd), hd, r > 0, 1.0, p.t(), go);
                    gemm_serial(ds.as_mut_ptr(), s, false, 1.0, go, v.t());
                    for i in 0..s {
                        let vis = visible(i, window);
                        let pr = &p_data[i * s..(i + 1) * s];
                        let row = &mut ds[i * s..(i + 1) * s];
                        let dot = math::dot(&pr[vis.clone()], &row[vis.clone()]);
                        for j in vis.clone() {
                            row[j] = pr[j] * (row[j] - dot);
                        }
                        row[..vis.start].fill(0.0);
                        row[vis.end..].fill(0.0);
                    }
                    let dsm = Mat::new(&ds, s, s);
                    gemm_serial(qo.at(u * s * hd), hd, false, 1.0, dsm, k);
                    gemm_serial(ko.at(g * s * hd), hd, r > 0, 1.0, dsm.t(), q);
                }
            }
        }
    });
    (dq, dk, dv)
}
