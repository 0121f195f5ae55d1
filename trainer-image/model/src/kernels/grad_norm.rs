//! Σx² of a tensor in one parallel pass without a temporary, for gradient clipping (the
//! composed `sqr().sum_all()` writes a squared copy of every gradient, serially).

use std::sync::Mutex;

use candle_core::{CpuStorage, Result, Storage, Tensor};

use super::{fusable, math, par_blocks};

/// Elements per block handed to one thread.
const BLOCK: usize = 32 * 1024;

/// Σx² in f64 for a contiguous f32 CPU tensor; `None` for others (compose it instead).
pub fn sum_squares(t: &Tensor) -> Result<Option<f64>> {
    if !fusable(&[t]) {
        return Ok(None);
    }
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) =
        (&*storage, layout.contiguous_offsets())
    else {
        return Ok(None);
    };
    let xs = &data[a..b];
    // Summed in block order, not in the order workers finish, so the norm (and the clipping
    // it decides) is the same on every run.
    let parts = Mutex::new(Vec::new());
    par_blocks(xs.len(), BLOCK, |r| {
        let part = math::dot(&xs[r.clone()], &xs[r.clone()]) as f64;
        if let Ok(mut p) = parts.lock() {
            p.push((r.start, part));
        }
    });
    let mut parts = parts
        .into_inner()
        .map_err(|_| candle_core::Error::Msg("sum of squares: a worker panicked".into()))?;
    parts.sort_by_key(|(start, _)| *start);
    Ok(Some(parts.into_iter().map(|(_, p)| p).sum()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn matches_the_composed_sum_and_declines_what_it_cannot_read() -> Result<()> {
        let dev = Device::Cpu;
        let t = Tensor::randn(0f32, 1.0, (300, 1001), &dev)?;
        let want = t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        let got = sum_squares(&t)?.expect("fused");
        assert!((got - want).abs() / want < 1e-5, "{got} vs {want}");
        assert!(sum_squares(&t.t()?)?.is_none());
        assert!(sum_squares(&t.to_dtype(DType::F64)?)?.is_none());
        Ok(())
    }
}
