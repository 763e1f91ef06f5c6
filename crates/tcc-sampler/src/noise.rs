//! Seeded, portable standard-normal noise.
//!
//! candle's `Tensor::randn` cannot be seeded portably, so the samplers draw
//! their noise here. The generator is counter based and fully specified, so
//! any language can reproduce it (`tools/golden/samplers.py` does, in numpy):
//!
//! - `key = mix(seed)`; the j-th pair of uniforms drawn from a generator uses
//!   `a = mix(key + (2j + 1) * G)` and `b = mix(key + (2j + 2) * G)` (wrapping
//!   u64 arithmetic, `G = 0x9E3779B97F4A7C15`, `mix` is SplitMix64's output
//!   function);
//! - `u1 = ((a >> 11) + 1) / 2^53` in (0, 1], `u2 = (b >> 11) / 2^53` in [0, 1);
//! - Box-Muller in f64: `r = sqrt(-2 ln u1)`, values `r cos(2 pi u2)` then
//!   `r sin(2 pi u2)`, rounded to f32.
//!
//! A call for `n` values consumes `ceil(n / 2)` pairs (an odd call drops the
//! last sine), and the next call continues with the next pair.

use candle_core::{Device, Shape, Tensor};

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A reproducible source of standard-normal f32 values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoiseRng {
    key: u64,
    /// Pairs drawn so far.
    pairs: u64,
}

impl NoiseRng {
    pub fn new(seed: u64) -> Self {
        NoiseRng {
            key: mix(seed),
            pairs: 0,
        }
    }

    fn uniform_pair(&mut self) -> (f64, f64) {
        let j = self.pairs;
        self.pairs += 1;
        self.uniform_pair_at(j)
    }

    /// The `j`-th pair of uniforms of this generator's stream.
    fn uniform_pair_at(&self, j: u64) -> (f64, f64) {
        let a = mix(self
            .key
            .wrapping_add((2 * j + 1).wrapping_mul(GOLDEN_GAMMA)));
        let b = mix(self
            .key
            .wrapping_add((2 * j + 2).wrapping_mul(GOLDEN_GAMMA)));
        let scale = 1.0 / (1u64 << 53) as f64;
        (((a >> 11) + 1) as f64 * scale, (b >> 11) as f64 * scale)
    }

    /// Fill `out` with standard-normal values.
    pub fn fill(&mut self, out: &mut [f32]) {
        for chunk in out.chunks_mut(2) {
            let (u1, u2) = self.uniform_pair();
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            chunk[0] = (r * theta.cos()) as f32;
            if let Some(v) = chunk.get_mut(1) {
                *v = (r * theta.sin()) as f32;
            }
        }
    }

    /// Values `start..start + out.len()` of the stream that one `fill` call
    /// on a fresh generator of this seed gives (value `k` is the cosine of
    /// pair `k / 2` if `k` is even, else its sine), bit for bit; drawn
    /// without computing what comes before. Leaves `self` as it is.
    pub fn fill_at(&self, start: u64, out: &mut [f32]) {
        let mut k = start;
        let mut i = 0;
        while i < out.len() {
            let (u1, u2) = self.uniform_pair_at(k / 2);
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            if k.is_multiple_of(2) {
                out[i] = (r * theta.cos()) as f32;
                i += 1;
                k += 1;
                if i == out.len() {
                    break;
                }
            }
            out[i] = (r * theta.sin()) as f32;
            i += 1;
            k += 1;
        }
    }

    /// A standard-normal f32 tensor of `shape` (filled in row-major order).
    pub fn randn<S: Into<Shape>>(
        &mut self,
        shape: S,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let mut v = vec![0f32; shape.elem_count()];
        self.fill(&mut v);
        Tensor::from_vec(v, shape, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_calls_continue() {
        let mut a = NoiseRng::new(42);
        let mut b = NoiseRng::new(42);
        let mut x = [0f32; 7];
        let mut y = [0f32; 7];
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        a.fill(&mut x);
        assert_ne!(x, y, "a second call must continue the stream");
        assert_ne!(
            NoiseRng::new(43)
                .randn(7, &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            y.to_vec()
        );
    }

    #[test]
    fn any_part_of_a_stream_is_drawn_alone_bit_for_bit() {
        let mut whole = vec![0f32; 101];
        NoiseRng::new(9).fill(&mut whole);
        let rng = NoiseRng::new(9);
        for (start, len) in [
            (0, 101),
            (0, 1),
            (1, 1),
            (1, 6),
            (7, 30),
            (50, 51),
            (100, 1),
        ] {
            let mut part = vec![0f32; len];
            rng.fill_at(start as u64, &mut part);
            let want: Vec<u32> = whole[start..start + len]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let got: Vec<u32> = part.iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want, "values {start}..{}", start + len);
        }
    }

    #[test]
    fn moments_and_tails_look_standard_normal() {
        let mut rng = NoiseRng::new(7);
        let mut v = vec![0f32; 200_000];
        rng.fill(&mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n / (var * var);
        // Standard errors: mean 1/sqrt(n) = 0.0022, var sqrt(2/n) = 0.0032,
        // kurtosis sqrt(24/n) = 0.011; bounds are ~5 standard errors.
        assert!(mean.abs() < 0.012, "mean {mean}");
        assert!((var - 1.0).abs() < 0.016, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.06, "kurtosis {kurt}");
        // P(|z| > 2) = 0.0455.
        let tail = v.iter().filter(|x| x.abs() > 2.0).count() as f64 / n;
        assert!((tail - 0.0455).abs() < 0.003, "tail {tail}");
    }
}
