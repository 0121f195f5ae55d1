//! Rotary position embedding (Hugging Face rotate-half layout) fused with the move of the head
//! axis in front of the sequence axis and an optional scale: x (b, s, h, d) → (b, h, s, d),
//! ready for the attention matmuls. The composed version narrows, multiplies, adds and
//! concatenates (about ten ops each way) and then needs a transposing copy.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{SharedOut, f32_slice, fusable, par_blocks, two_f32};

/// `rope(x)·scale` with the heads moved first: `x` (b, s, h, d), `cos`/`sin` (b or 1, 1, s,
/// d/2); all contiguous f32 on the CPU (`crate::models::ops::rope_heads_first` dispatches).
pub fn rope_heads_first(x: &Tensor, cos: &Tensor, sin: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, s, _, d) = x.dims4()?;
    let (cb, _, cs, half) = cos.dims4()?;
    if !fusable(&[x, cos, sin])
        || cos.shape() != sin.shape()
        || !(cb == 1 || cb == b)
        || cs != s
        || 2 * half != d
    {
        candle_core::bail!(
            "fused rope: x (b, s, h, d) {:?} and cos/sin (b|1, 1, s, d/2) {:?} expected",
            x.dims(),
            cos.dims()
        );
    }
    let op = Rope {
        scale: scale as f32,
        backward: false,
    };
    if x.track_op() {
        x.apply_op3(cos, sin, op)
    } else {
        x.apply_op3_no_bwd(cos, sin, &op)
    }
}

/// Slice form of the op, for hand-written passes: `x` holds (b, s, h, d) rows (forward, rotated
/// by +θ into `y` as (b, h, s, d)) or (b, h, s, d) rows (`backward`: rotated by −θ into `y` as
/// (b, s, h, d)), times `scale`; `cos`/`sin` are (s, d/2) tables, or one per batch row.
pub(crate) fn rope_move_into(
    x: &[f32],
    (b, s, h, d): (usize, usize, usize, usize),
    cos: &[f32],
    sin: &[f32],
    scale: f32,
    backward: bool,
    y: &mut [f32],
) {
    let half = d / 2;
    let per_batch_tables = cos.len() == b * s * half;
    let out = SharedOut::new(y);
    par_blocks(b * s * h, 64, |range| {
        for o in range {
            // o indexes output rows: forward (b, h, s), backward (b, s, h).
            let (bi, hi, si) = if backward {
                (o / (s * h), o % h, (o / h) % s)
            } else {
                (o / (h * s), (o / s) % h, o % s)
            };
            let src = if backward {
                ((bi * h + hi) * s + si) * d
            } else {
                ((bi * s + si) * h + hi) * d
            };
            let t = ((if per_batch_tables { bi } else { 0 }) * s + si) * half;
            let (c, sn) = (&cos[t..t + half], &sin[t..t + half]);
            let (x1, x2) = (&x[src..src + half], &x[src + half..src + d]);
            // SAFETY: par_blocks hands out disjoint output rows.
            let dst = unsafe { out.range_mut(o * d..(o + 1) * d) };
            let (y1, y2) = dst.split_at_mut(half);
            for i in 0..half {
                // The inverse rotation is the rotation by −θ: sin changes sign.
                let sn = if backward { -sn[i] } else { sn[i] };
                y1[i] = (x1[i] * c[i] - x2[i] * sn) * scale;
                y2[i] = (x2[i] * c[i] + x1[i] * sn) * scale;
            }
        }
    });
}

/// Forward: (b, s, h, d) → (b, h, s, d), rotate by +θ. Backward (`backward`): the gradient
/// (b, h, s, d) → (b, s, h, d), rotate by −θ.
#[derive(Clone, Copy)]
struct Rope {
    scale: f32,
    backward: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        if self.backward {
            "fused-rope-grad"
        } else {
            "fused-rope"
        }
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        cos: &CpuStorage,
        cl: &Layout,
        sin: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), x, xl)?;
        let (cos, sin) = two_f32(self.name(), cos, cl, sin, sl)?;
        // Input dims: forward (b, s, h, d), backward (b, h, s, d).
        let (b, d0, d1, d) = xl.shape().dims4()?;
        let (s, h) = if self.backward { (d1, d0) } else { (d0, d1) };
        let mut y = vec![0f32; x.len()];
        rope_move_into(x, (b, s, h, d), cos, sin, self.scale, self.backward, &mut y);
        let shape = if self.backward {
            Shape::from((b, s, h, d))
        } else {
            Shape::from((b, h, s, d))
        };
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = Rope {
            scale: self.scale,
            backward: true,
        };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &op)?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_diff;
    use crate::models::ops::apply_rope;
    use candle_core::{Device, Var};

    #[test]
    fn values_and_gradients_match_the_composed_rope() -> Result<()> {
        let dev = Device::Cpu;
        for table_rows in [1, 2] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 7, 3, 8), &dev)?)?;
            let cos = Tensor::randn(0f32, 1.0, (table_rows, 1, 7, 4), &dev)?;
            let sin = Tensor::randn(0f32, 1.0, (table_rows, 1, 7, 4), &dev)?;
            let target = Tensor::randn(0f32, 1.0, (2, 3, 7, 8), &dev)?;
            let ours = rope_heads_first(x.as_tensor(), &cos, &sin, 0.5)?;
            let theirs = (apply_rope(&x.as_tensor().transpose(1, 2)?, &cos, &sin)? * 0.5)?;
            assert!(max_diff(&ours, &theirs) < 1e-5);
            let g1 = (ours * &target)?.sum_all()?.backward()?;
            let g2 = (theirs * &target)?.sum_all()?.backward()?;
            let (a, b) = (g1.get(&x).expect("ours"), g2.get(&x).expect("theirs"));
            assert!(max_diff(a, b) < 1e-5, "{}", max_diff(a, b));
        }
        Ok(())
    }
}
