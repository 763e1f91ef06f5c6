//! Vectorisable f32 math for the CPU kernels.
//!
//! libm's `expf` is a scalar call per element; in a DiT step it ran ~4.5 M
//! times per block (softmax and GELU) and took 6% of the step. [`exp`] is
//! branch-free (range reduction, a polynomial, selects), so loops over it
//! vectorise; [`with_simd`] runs a loop with AVX2 enabled when the CPU has
//! it (8 lanes instead of SSE2's 4). No fused multiply-adds are used, so the
//! results are the same bits with and without AVX2.

/// Above this, [`exp`] returns +inf (the true overflow point is 88.72; the
/// range reduction below needs `n <= 127`).
const EXP_HI: f32 = 88.37;
/// Below this, [`exp`] returns 0 (no subnormal results).
const EXP_LO: f32 = -87.33;

/// `e^x` for f32, within 2 ulp of the exact value on [-87.33, 88.37]
/// (tested against f64); 0 below that range, +inf above, NaN for NaN.
///
/// `x = n ln2 + r` with `n` rounded to nearest (`|r| <= ln2 / 2`, ln 2 split
/// in two constants so `r` is exact to f32), `e^r` by Cephes' `expf`
/// polynomial, `2^n` from the exponent bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(EXP_LO, EXP_HI);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * scale;
    if x > EXP_HI {
        f32::INFINITY
    } else if x < EXP_LO {
        0.0
    } else {
        y
    }
}

/// The largest element of `xs` (-inf when empty; NaNs are skipped), in
/// eight independent lanes so that the loop vectorises.
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for a in acc {
        m = m.max(a);
    }
    m
}

/// Replaces every `v` of `xs` by `exp(v - sub)` and returns their sum
/// (summed in eight lanes, then the lanes and the tail in order: the same
/// bits on every CPU).
#[inline(always)]
pub(crate) fn exp_sub_sum(xs: &mut [f32], sub: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp(c[i] - sub);
            acc[i] += c[i];
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v - sub);
        sum += *v;
    }
    acc.iter().sum::<f32>() + sum
}

/// Runs `f` in a function compiled for AVX2 when the CPU has it (the
/// `#[inline(always)]` kernels above, called from `f`, are then vectorised
/// with 8 lanes); otherwise calls it plainly.
#[inline(always)]
pub(crate) fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error of `exp` against f64's, in units of f32 epsilon.
    fn ulps(x: f32) -> f64 {
        let want = (x as f64).exp();
        ((exp(x) as f64 - want) / want).abs() / f32::EPSILON as f64
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = (0.0, 0f32);
        let n = 400_000;
        for i in 0..=n {
            let x = (EXP_LO + (EXP_HI - EXP_LO) * i as f32 / n as f32).clamp(EXP_LO, EXP_HI);
            let u = ulps(x);
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2.0, "{} ulp at {}", worst.0, worst.1);
        for x in [0.0f32, 1.0, -1.0, 1e-8, -1e-8, 0.346, -0.347, 20.5, -20.5] {
            assert!(ulps(x) <= 2.0, "{x}: {} ulp", ulps(x));
        }
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_saturates_and_propagates_nan() {
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn lane_reductions_match_plain_loops() {
        for len in [0usize, 1, 7, 8, 9, 37, 256] {
            let v: Vec<f32> = (0..len).map(|i| (i as f32 * 0.91).sin() * 5.0).collect();
            let want_max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(with_simd(|| max(&v)), want_max, "{len}");
            let mut e = v.clone();
            let sum = with_simd(|| exp_sub_sum(&mut e, want_max));
            let want: Vec<f64> = v.iter().map(|&x| ((x - want_max) as f64).exp()).collect();
            for (a, b) in e.iter().zip(&want) {
                assert!((*a as f64 - b).abs() <= 3e-7 * b.max(1e-30), "{a} vs {b}");
            }
            let want_sum: f64 = want.iter().sum();
            assert!(
                (sum as f64 - want_sum).abs() <= 1e-6 * want_sum.max(1.0),
                "{len}"
            );
            // The same bits without AVX2.
            let mut e2 = v.clone();
            assert_eq!(exp_sub_sum(&mut e2, want_max).to_bits(), sum.to_bits());
            assert_eq!(e, e2);
        }
    }
}
