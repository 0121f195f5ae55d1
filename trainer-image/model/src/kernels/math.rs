//! Scalar math written so LLVM vectorizes it: `exp` without a libm call (a libm `expf` per
//! element kept the softmax and loss kernels scalar), and sums over eight independent lanes
//! (one f32 accumulator is a serial dependency chain the compiler may not reorder).

/// Lanes of the reductions (one AVX register of f32).
const LANES: usize = 8;

/// e^x with about 1 ulp error for x in [−87, 88] (Cephes' `expf` polynomial after reducing to
/// 2^n·e^r, |r| ≤ ln2/2); 0 below −87.3 (where the true value is subnormal), and e^88 above 88.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by adding and subtracting 1.5·2²³ (exact for |v| < 2²²): plain float
    // adds, where `round`/`floor` would be a libm call on baseline x86-64 (no SSE4.1) and
    // keep the loop scalar.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.0);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { e * scale }
}

/// Σ xs.
#[inline]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ a·b.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ a·b·c.
#[inline]
pub fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tail: f32 = (ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder()))
    .map(|((x, y), z)| x * y * z)
    .sum();
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i] * z[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ e^(x − shift).
#[inline]
pub fn sum_exp(xs: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|x| exp(x - shift)).sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += exp(x - shift);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// max xs (−∞ for an empty slice).
#[inline]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.max(*x);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_its_range() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "max relative error {worst}");
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(1e9).is_finite());
    }

    #[test]
    fn reductions_match_the_plain_loops() {
        let xs: Vec<f32> = (0..1003)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 5.0)
            .collect();
        let ys: Vec<f32> = (0..1003).map(|i| ((i * 13) % 17) as f32 / 3.0).collect();
        let plain_sum: f64 = xs.iter().map(|x| *x as f64).sum();
        assert!((sum(&xs) as f64 - plain_sum).abs() < 1e-2);
        let plain_dot: f64 = xs.iter().zip(&ys).map(|(x, y)| (x * y) as f64).sum();
        assert!((dot(&xs, &ys) as f64 - plain_dot).abs() < 1e-1);
        assert_eq!(
            max(&xs),
            xs.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        );
        let plain_dot3: f64 = (xs.iter().zip(&ys).zip(&xs))
            .map(|((x, y), z)| (x * y * z) as f64)
            .sum();
        assert!((dot3(&xs, &ys, &xs) as f64 - plain_dot3).abs() < 1.0);
        let plain_se: f64 = xs.iter().map(|x| ((x - 2.0) as f64).exp()).sum();
        assert!((sum_exp(&xs, 2.0) as f64 - plain_se).abs() / plain_se < 1e-5);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(sum(&xs[..5]), xs[..5].iter().sum::<f32>());
    }
}
