//! Mean cross-entropy of logits (n, vocab) against target ids (n): one pass forward (max and
//! log-sum-exp per row), one pass backward (softmax minus the one-hot target). The composed
//! version (log-softmax, gather, mean) makes about ten passes over the logits, often the
//! largest activation of a small model, and as many vocab-sized buffers.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{SharedOut, contiguous, f32_only, f32_slice, fusable, math, par_blocks, two_f32};

/// Mean over rows of `logsumexp(logits[r]) − logits[r, targets[r]]`; `targets` u32 or i64.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let ids_ok = targets.device().is_cpu()
        && targets.is_contiguous()
        && matches!(
            targets.dtype(),
            candle_core::DType::U32 | candle_core::DType::I64
        );
    if !(fusable(&[logits]) && ids_ok && logits.rank() == 2) {
        return candle_nn::loss::cross_entropy(logits, targets);
    }
    let (n, _) = logits.dims2()?;
    if targets.dims() != [n] {
        candle_core::bail!(
            "cross entropy: {n} rows of logits but targets {:?}",
            targets.dims()
        );
    }
    if logits.track_op() {
        logits.apply_op2(targets, CrossEntropy)
    } else {
        logits.apply_op2_no_bwd(targets, &CrossEntropy)
    }
}

/// The target ids as usize, checked against the vocabulary.
fn ids(s: &CpuStorage, l: &Layout, vocab: usize) -> Result<Vec<usize>> {
    let ids: Vec<usize> = match s {
        CpuStorage::U32(v) => contiguous(v, l).map(|v| v.iter().map(|&i| i as usize).collect()),
        CpuStorage::I64(v) => contiguous(v, l).map(|v| v.iter().map(|&i| i as usize).collect()),
        _ => None,
    }
    .ok_or_else(|| candle_core::Error::Msg("cross entropy: targets must be u32 or i64".into()))?;
    if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
        candle_core::bail!("cross entropy: target id {bad} outside a vocabulary of {vocab}");
    }
    Ok(ids)
}

/// (max, log Σ exp(x − max)) of one row.
fn row_stats(row: &[f32]) -> (f32, f32) {
    let max = math::max(row);
    (max, math::sum_exp(row, max).ln())
}

/// Loss and gradient in one pass for hand-written training passes: returns the sum over rows
/// of the cross-entropy of `logits` (rows of `vocab`) against `targets`, and overwrites the
/// logits with its gradient, `(softmax − onehot) · scale`.
pub(crate) fn loss_and_grad_in_place(
    logits: &mut [f32],
    vocab: usize,
    targets: &[u32],
    scale: f32,
) -> Result<f64> {
    let n = targets.len();
    if logits.len() != n * vocab {
        candle_core::bail!(
            "cross entropy: {} logits for {n} rows of {vocab}",
            logits.len()
        );
    }
    if let Some(bad) = targets.iter().find(|&&i| i as usize >= vocab) {
        candle_core::bail!("cross entropy: target id {bad} outside a vocabulary of {vocab}");
    }
    let mut losses = vec![0f64; n];
    let (out, grads) = (SharedOut::new(&mut losses), SharedOut::new(logits));
    par_blocks(n, 1, |rows| {
        for r in rows {
            // SAFETY: par_blocks hands out disjoint rows of both buffers.
            let (loss, row) = unsafe {
                (
                    out.range_mut(r..r + 1),
                    grads.range_mut(r * vocab..(r + 1) * vocab),
                )
            };
            let t = targets[r] as usize;
            let (max, lse) = row_stats(row);
            let shift = max + lse;
            loss[0] = (shift - row[t]) as f64;
            row.iter_mut()
                .for_each(|x| *x = math::exp(*x - shift) * scale);
            row[t] -= scale;
        }
    });
    Ok(losses.iter().sum())
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        t: &CpuStorage,
        tl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = xl.shape().dims2()?;
        let x = f32_slice(self.name(), x, xl)?;
        let ids = ids(t, tl, v)?;
        let mut losses = vec![0f64; n];
        let out = SharedOut::new(&mut losses);
        par_blocks(n, 1, |rows| {
            // SAFETY: par_blocks hands out disjoint row ranges.
            let dst = unsafe { out.range_mut(rows.clone()) };
            for (d, r) in dst.iter_mut().zip(rows) {
                let row = &x[r * v..(r + 1) * v];
                let (max, lse) = row_stats(row);
                *d = (max + lse - row[ids[r]]) as f64;
            }
        });
        let mean = if n == 0 {
            f32::NAN
        } else {
            (losses.iter().sum::<f64>() / n as f64) as f32
        };
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = x.apply_op3_no_bwd(
            t,
            &grad.to_dtype(candle_core::DType::F32)?,
            &CrossEntropyGrad,
        )?;
        Ok((Some(g), None))
    }
}

/// d(mean loss)/d logits = (softmax(x) − onehot(target)) · grad / n.
struct CrossEntropyGrad;

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        t: &CpuStorage,
        tl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = xl.shape().dims2()?;
        let (x, g) = two_f32(self.name(), x, xl, g, gl)?;
        let Some(&g) = g.first() else {
            return f32_only(self.name());
        };
        let ids = ids(t, tl, v)?;
        let scale = g / n.max(1) as f32;
        let mut dx = vec![0f32; n * v];
        let out = SharedOut::new(&mut dx);
        par_blocks(n, 1, |rows| {
            for r in rows {
                let row = &x[r * v..(r + 1) * v];
                // SAFETY: par_blocks hands out disjoint row ranges.
                let d = unsafe { out.range_mut(r * v..(r + 1) * v) };
                let (max, lse) = row_stats(row);
                let shift = max + lse;
                d.iter_mut()
                    .zip(row)
                    .for_each(|(d, x)| *d = math::exp(x - shift) * scale);
                d[ids[r]] -= scale;
            }
        });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn loss_and_gradient_match_the_composed_cross_entropy() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (37, 301), &dev)?))?;
        let t = Tensor::from_vec(
            (0..37u32).map(|i| (i * 97) % 301).collect::<Vec<_>>(),
            37,
            &dev,
        )?;
        let ours = cross_entropy(x.as_tensor(), &t)?;
        let theirs = candle_nn::loss::cross_entropy(x.as_tensor(), &t)?;
        assert!(max_diff(&ours, &theirs) < 1e-5);
        // Scaled, so the incoming gradient is not 1.
        let g1 = (ours * 3.0)?.backward()?;
        let g2 = (theirs * 3.0)?.backward()?;
        let (a, b) = (g1.get(&x).expect("ours"), g2.get(&x).expect("theirs"));
        assert!(max_diff(a, b) < 1e-6, "{}", max_diff(a, b));
        Ok(())
    }

    #[test]
    fn out_of_vocabulary_targets_are_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 5), candle_core::DType::F32, &dev)?;
        let t = Tensor::from_vec(vec![1u32, 5], 2, &dev)?;
        let err = cross_entropy(&x, &t).expect_err("id 5 in a vocab of 5");
        assert!(
            err.to_string().contains("outside a vocabulary of 5"),
            "{err}"
        );
        Ok(())
    }
}
