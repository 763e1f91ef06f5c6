//! Paired second moments of rows, kept as sums so that shards merge exactly.
//!
//! Where [`crate::PairStats`] keeps one mean per row key (a condition or a
//! token position) and pairs the rows at fit time, `Moments` sees the
//! reference row `a` and the accelerated row `b` of each contribution
//! together and keeps only their sums: `n`, `Σa`, `Σb`, `Σ||a||²`, `Σ bᵀb`
//! and `Σ bᵀa` (`D x D`). That is everything a linear prior `B M + c` needs,
//! to be fitted (every family) or to be measured (its squared error), and its
//! size does not grow with the number of rows: every token of every sample
//! can be a row.

use candle_core::{DType, Tensor};
use faer::MatRef;

use crate::codec::{Reader, Writer};
use crate::{CalibError, FoldedPrior};

/// Per-token-position first sums: what a prior with one mean per token
/// position (`conditions` pooling) needs to be measured.
#[derive(Clone, Debug, PartialEq)]
struct PositionSums {
    /// Rows added per position.
    count: u64,
    /// `T x D` row-major.
    sum_a: Vec<f64>,
    sum_b: Vec<f64>,
}

/// Borrowed sums of [`Moments`]: `n`, `Σa`, `Σb`, `Σ bᵀb`, `Σ bᵀa`.
pub(crate) struct Sums<'a> {
    pub n: f64,
    pub sum_a: &'a [f64],
    pub sum_b: &'a [f64],
    pub bb: &'a [f64],
    pub ba: &'a [f64],
}

/// Paired second moments of rows `a` (reference) and `b` (accelerated).
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    dim: usize,
    n: u64,
    sum_a: Vec<f64>,
    sum_b: Vec<f64>,
    aa: f64,
    /// `Σ bᵀ b`, `D x D` row-major.
    bb: Vec<f64>,
    /// `Σ bᵀ a`, `D x D` row-major: entry `(j, k)` is `Σ b_j a_k`.
    ba: Vec<f64>,
    positions: Option<PositionSums>,
}

fn candle(e: candle_core::Error) -> CalibError {
    CalibError::Numerics(e.to_string())
}

fn add_into(acc: &mut [f64], t: &Tensor) -> Result<(), CalibError> {
    let v: Vec<f64> = t.flatten_all().map_err(candle)?.to_vec1().map_err(candle)?;
    if v.len() != acc.len() {
        return Err(CalibError::Shape(format!(
            "moment of {} values, expected {}",
            v.len(),
            acc.len()
        )));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(CalibError::NonFinite(format!(
            "a statistic has a non-finite value at {i}"
        )));
    }
    for (s, x) in acc.iter_mut().zip(v) {
        *s += x;
    }
    Ok(())
}

impl Moments {
    pub fn new(dim: usize) -> Moments {
        Moments {
            dim,
            n: 0,
            sum_a: vec![0.0; dim],
            sum_b: vec![0.0; dim],
            aa: 0.0,
            bb: vec![0.0; dim * dim],
            ba: vec![0.0; dim * dim],
            positions: None,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of rows added.
    pub fn rows(&self) -> u64 {
        self.n
    }

    /// `Σ ||a||²`.
    pub fn norm_a(&self) -> f64 {
        self.aa
    }

    /// Adds every row of `a` and `b` (`[R, D]`, paired row by row). The
    /// products are formed on the tensors' device in f64 and added here in
    /// f64.
    pub fn add_rows(&mut self, a: &Tensor, b: &Tensor) -> Result<(), CalibError> {
        let (r, d) = a.dims2().map_err(candle)?;
        if b.dims2().map_err(candle)? != (r, d) || d != self.dim {
            return Err(CalibError::Shape(format!(
                "paired rows {:?} and {:?}, expected width {}",
                a.dims(),
                b.dims(),
                self.dim
            )));
        }
        if r == 0 {
            return Ok(());
        }
        let a = a.to_dtype(DType::F64).map_err(candle)?;
        let b = b.to_dtype(DType::F64).map_err(candle)?;
        let bt = b.t().map_err(candle)?;
        add_into(&mut self.bb, &bt.matmul(&b).map_err(candle)?)?;
        add_into(&mut self.ba, &bt.matmul(&a).map_err(candle)?)?;
        add_into(&mut self.sum_a, &a.sum(0).map_err(candle)?)?;
        add_into(&mut self.sum_b, &b.sum(0).map_err(candle)?)?;
        let mut aa = [0.0];
        add_into(
            &mut aa,
            &a.sqr().map_err(candle)?.sum_all().map_err(candle)?,
        )?;
        self.aa += aa[0];
        self.n += r as u64;
        Ok(())
    }

    /// Adds every token of `a` and `b` (`[S, T, D]`) as a row, and keeps
    /// per-position sums (every call must then have the same `T`).
    pub fn add_tokens(&mut self, a: &Tensor, b: &Tensor) -> Result<(), CalibError> {
        let (s, t, d) = a.dims3().map_err(candle)?;
        if b.dims3().map_err(candle)? != (s, t, d) {
            return Err(CalibError::Shape(format!(
                "paired tokens {:?} and {:?}",
                a.dims(),
                b.dims()
            )));
        }
        let pos = self.positions.get_or_insert_with(|| PositionSums {
            count: 0,
            sum_a: vec![0.0; t * d],
            sum_b: vec![0.0; t * d],
        });
        if pos.sum_a.len() != t * d {
            return Err(CalibError::Shape(format!(
                "sequences of {t} tokens added to statistics of {} tokens",
                pos.sum_a.len() / d.max(1)
            )));
        }
        let a64 = a.to_dtype(DType::F64).map_err(candle)?;
        let b64 = b.to_dtype(DType::F64).map_err(candle)?;
        add_into(&mut pos.sum_a, &a64.sum(0).map_err(candle)?)?;
        add_into(&mut pos.sum_b, &b64.sum(0).map_err(candle)?)?;
        pos.count += s as u64;
        self.add_rows(
            &a.reshape((s * t, d)).map_err(candle)?,
            &b.reshape((s * t, d)).map_err(candle)?,
        )
    }

    /// Adds rows given on the host (`n x D` row-major each).
    pub fn add_host_rows(&mut self, a: &[f64], b: &[f64]) -> Result<(), CalibError> {
        let d = self.dim;
        if a.len() != b.len() || d == 0 || !a.len().is_multiple_of(d) {
            return Err(CalibError::Shape(format!(
                "{} and {} values for rows of width {d}",
                a.len(),
                b.len()
            )));
        }
        for (ra, rb) in a.chunks_exact(d).zip(b.chunks_exact(d)) {
            for j in 0..d {
                self.sum_a[j] += ra[j];
                self.sum_b[j] += rb[j];
                self.aa += ra[j] * ra[j];
                let (row_bb, row_ba) = (
                    &mut self.bb[j * d..(j + 1) * d],
                    &mut self.ba[j * d..(j + 1) * d],
                );
                for k in 0..d {
                    row_bb[k] += rb[j] * rb[k];
                    row_ba[k] += rb[j] * ra[k];
                }
            }
            self.n += 1;
        }
        Ok(())
    }

    /// Adds another shard's sums: the result equals one pass over both
    /// shards' rows (up to f64 summation order).
    pub fn merge(&mut self, other: &Moments) -> Result<(), CalibError> {
        if other.dim != self.dim {
            return Err(CalibError::Shape(format!(
                "cannot merge moments of width {} into width {}",
                other.dim, self.dim
            )));
        }
        let add = |x: &mut [f64], y: &[f64]| x.iter_mut().zip(y).for_each(|(p, q)| *p += q);
        add(&mut self.sum_a, &other.sum_a);
        add(&mut self.sum_b, &other.sum_b);
        add(&mut self.bb, &other.bb);
        add(&mut self.ba, &other.ba);
        self.aa += other.aa;
        self.n += other.n;
        match (&mut self.positions, &other.positions) {
            (_, None) => {}
            (None, Some(p)) => self.positions = Some(p.clone()),
            (Some(mine), Some(theirs)) => {
                if mine.sum_a.len() != theirs.sum_a.len() {
                    return Err(CalibError::Shape(
                        "cannot merge moments of different sequence lengths".into(),
                    ));
                }
                add(&mut mine.sum_a, &theirs.sum_a);
                add(&mut mine.sum_b, &theirs.sum_b);
                mine.count += theirs.count;
            }
        }
        Ok(())
    }

    /// Writes the sums under `prefix`.
    pub(crate) fn encode(&self, prefix: &str, w: &mut Writer) {
        let d = self.dim;
        w.u64(format!("{prefix}.n"), vec![1], &[self.n]);
        w.f64(format!("{prefix}.sum_a"), vec![d], &self.sum_a);
        w.f64(format!("{prefix}.sum_b"), vec![d], &self.sum_b);
        w.f64(format!("{prefix}.aa"), vec![1], &[self.aa]);
        w.f64(format!("{prefix}.bb"), vec![d, d], &self.bb);
        w.f64(format!("{prefix}.ba"), vec![d, d], &self.ba);
        if let Some(p) = &self.positions {
            let t = p.sum_a.len() / d.max(1);
            w.u64(format!("{prefix}.positions.count"), vec![1], &[p.count]);
            w.f64(format!("{prefix}.positions.sum_a"), vec![t, d], &p.sum_a);
            w.f64(format!("{prefix}.positions.sum_b"), vec![t, d], &p.sum_b);
        }
    }

    /// Reads what [`Moments::encode`] wrote under `prefix`.
    pub(crate) fn decode(prefix: &str, r: &Reader) -> Result<Moments, CalibError> {
        let (s, sum_a) = r.f64(&format!("{prefix}.sum_a"))?;
        let d = sum_a.len();
        if s != [d] || d == 0 {
            return Err(r.bad(format!(
                "tensor `{prefix}.sum_a` has shape {s:?}, expected [D] with D > 0"
            )));
        }
        let aa = r.f64_shaped(&format!("{prefix}.aa"), &[1])?[0];
        let positions = if r.has(&format!("{prefix}.positions.count")) {
            let (ps, pa) = r.f64(&format!("{prefix}.positions.sum_a"))?;
            if ps.len() != 2 || ps[1] != d {
                return Err(r.bad(format!(
                    "tensor `{prefix}.positions.sum_a` has shape {ps:?}, expected [T, {d}]"
                )));
            }
            Some(PositionSums {
                count: r.u64_scalar(&format!("{prefix}.positions.count"))?,
                sum_b: r.f64_shaped(&format!("{prefix}.positions.sum_b"), &ps)?,
                sum_a: pa,
            })
        } else {
            None
        };
        Ok(Moments {
            dim: d,
            n: r.u64_scalar(&format!("{prefix}.n"))?,
            sum_b: r.f64_shaped(&format!("{prefix}.sum_b"), &[d])?,
            sum_a,
            aa,
            bb: r.f64_shaped(&format!("{prefix}.bb"), &[d, d])?,
            ba: r.f64_shaped(&format!("{prefix}.ba"), &[d, d])?,
            positions,
        })
    }

    /// The sums a fit reads.
    pub(crate) fn sums(&self) -> Sums<'_> {
        Sums {
            n: self.n as f64,
            sum_a: &self.sum_a,
            sum_b: &self.sum_b,
            bb: &self.bb,
            ba: &self.ba,
        }
    }

    /// `Σ ||a - b||²`: the error of reusing without a prior.
    pub fn error_identity(&self) -> f64 {
        let d = self.dim;
        let (mut tr_ba, mut tr_bb) = (0.0, 0.0);
        for j in 0..d {
            tr_ba += self.ba[j * d + j];
            tr_bb += self.bb[j * d + j];
        }
        (self.aa - 2.0 * tr_ba + tr_bb).max(0.0)
    }

    /// The error of a prior as a function of its blend: with `W` the
    /// prior's linear map and `c0` its bias at alpha = 1, the blended output
    /// is `b + alpha * (b (W - I) + c0)`, and
    /// `Σ ||a - out||² = e0 - 2 alpha e1 + alpha² e2`. Returns `(e0, e1, e2)`.
    /// `folded` must be the prior folded at alpha = 1.
    pub fn error_terms(&self, folded: &FoldedPrior) -> Result<(f64, f64, f64), CalibError> {
        let d = self.dim;
        if folded.dim != d {
            return Err(CalibError::Shape(format!(
                "a prior of width {} measured on statistics of width {d}",
                folded.dim
            )));
        }
        // V = W - I.
        let mut v = folded.m.clone();
        for j in 0..d {
            v[j * d + j] -= 1.0;
        }
        let rows = folded.c.len() / d.max(1);
        let e0 = self.error_identity();
        // Σ (a - b)·(b V) = tr(Vᵀ (Σbᵀa - Σbᵀb)) = Σ_jk V_jk (ba - bb)_jk.
        let mut e1: f64 = v
            .iter()
            .zip(self.ba.iter().zip(&self.bb))
            .map(|(v, (ba, bb))| v * (ba - bb))
            .sum();
        // Σ ||b V||² = tr(Vᵀ (Σbᵀb) V) = Σ_jk V_jk (Σbᵀb V)_jk: the one
        // D³ product, through faer's (multi-threaded) matmul.
        let bb = MatRef::from_row_major_slice(&self.bb, d, d);
        let vm = MatRef::from_row_major_slice(&v, d, d);
        let bbv = bb * vm;
        let mut e2 = 0.0;
        for j in 0..d {
            for k in 0..d {
                e2 += vm[(j, k)] * bbv[(j, k)];
            }
        }
        // The bias: one row for every token, or one per token position.
        let (count, sum_a, sum_b): (f64, Vec<&[f64]>, Vec<&[f64]>) = if rows == 1 {
            (self.n as f64, vec![&self.sum_a[..]], vec![&self.sum_b[..]])
        } else {
            let pos = self.positions.as_ref().ok_or_else(|| {
                CalibError::Shape(
                    "a prior with per-token means needs statistics with token positions".into(),
                )
            })?;
            if pos.sum_a.len() != rows * d {
                return Err(CalibError::Shape(format!(
                    "a prior with {rows} token rows measured on sequences of {} tokens",
                    pos.sum_a.len() / d
                )));
            }
            (
                pos.count as f64,
                pos.sum_a.chunks_exact(d).collect(),
                pos.sum_b.chunks_exact(d).collect(),
            )
        };
        for (r, c) in folded.c.chunks_exact(d).enumerate() {
            let (sa, sb) = (sum_a[r], sum_b[r]);
            // Σ (a - b)·c0 and Σ (b V)·c0 = (Σb V)·c0.
            let mut sbv_c = 0.0;
            for (j, &sbj) in sb.iter().enumerate() {
                if sbj != 0.0 {
                    let vrow = &v[j * d..(j + 1) * d];
                    sbv_c += sbj * vrow.iter().zip(c).map(|(p, q)| p * q).sum::<f64>();
                }
            }
            let diff_c: f64 = sa
                .iter()
                .zip(sb)
                .zip(c)
                .map(|((x, y), z)| (x - y) * z)
                .sum();
            let c2: f64 = c.iter().map(|x| x * x).sum();
            e1 += diff_c;
            e2 += 2.0 * sbv_c + count * c2;
        }
        Ok((e0, e1, e2.max(0.0)))
    }
}

/// `e0 - 2 alpha e1 + alpha² e2`, never below 0.
pub fn blended_error((e0, e1, e2): (f64, f64, f64), alpha: f64) -> f64 {
    (e0 - 2.0 * alpha * e1 + alpha * alpha * e2).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    }

    fn data(s: usize, t: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut g = seed;
        let a: Vec<f32> = (0..s * t * d).map(|_| lcg(&mut g) as f32).collect();
        let b: Vec<f32> = a
            .iter()
            .map(|x| 0.9 * x + 0.1 + 0.05 * lcg(&mut g) as f32)
            .collect();
        (a, b)
    }

    #[test]
    fn error_terms_equal_the_direct_error_for_any_blend() {
        let (s, t, d) = (3, 5, 4);
        let (a, b) = data(s, t, d, 1);
        let dev = Device::Cpu;
        let at = Tensor::from_vec(a.clone(), (s, t, d), &dev).unwrap();
        let bt = Tensor::from_vec(b.clone(), (s, t, d), &dev).unwrap();
        let mut m = Moments::new(d);
        m.add_tokens(&at, &bt).unwrap();
        let mut g = 9;
        let w: Vec<f64> = (0..d * d)
            .map(|i| if i % (d + 1) == 0 { 1.0 } else { 0.0 } + 0.2 * lcg(&mut g))
            .collect();
        for rows in [1, t] {
            let c: Vec<f64> = (0..rows * d).map(|_| lcg(&mut g)).collect();
            let folded = FoldedPrior {
                dim: d,
                m: w.clone(),
                c: c.clone(),
            };
            let terms = m.error_terms(&folded).unwrap();
            for alpha in [0.0, 0.3, 1.0, 1.75] {
                let mut direct = 0.0;
                for i in 0..s * t {
                    let pos = i % t;
                    let row_b = &b[i * d..(i + 1) * d];
                    let row_a = &a[i * d..(i + 1) * d];
                    let cr = &c[(if rows == 1 { 0 } else { pos }) * d..][..d];
                    for k in 0..d {
                        let corr: f64 =
                            (0..d).map(|j| row_b[j] as f64 * w[j * d + k]).sum::<f64>() + cr[k];
                        let out = (1.0 - alpha) * row_b[k] as f64 + alpha * corr;
                        direct += (row_a[k] as f64 - out).powi(2);
                    }
                }
                let got = blended_error(terms, alpha);
                assert!(
                    (got - direct).abs() <= 1e-9 * (1.0 + direct),
                    "rows {rows}, alpha {alpha}: {got} vs {direct}"
                );
            }
        }
    }

    #[test]
    fn shards_merge_to_one_pass_and_host_rows_match_device_rows() {
        let (s, t, d) = (4, 3, 3);
        let (a, b) = data(s, t, d, 5);
        let dev = Device::Cpu;
        let whole = |a: &[f32], b: &[f32], n: usize| {
            let mut m = Moments::new(d);
            m.add_tokens(
                &Tensor::from_vec(a.to_vec(), (n, t, d), &dev).unwrap(),
                &Tensor::from_vec(b.to_vec(), (n, t, d), &dev).unwrap(),
            )
            .unwrap();
            m
        };
        let one = whole(&a, &b, s);
        let split = t * d;
        let mut left = whole(&a[..split], &b[..split], 1);
        left.merge(&whole(&a[split..], &b[split..], s - 1)).unwrap();
        assert_eq!(left.n, one.n);
        for (x, y) in left.bb.iter().zip(&one.bb) {
            assert!((x - y).abs() < 1e-12);
        }
        let mut host = Moments::new(d);
        let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        let b64: Vec<f64> = b.iter().map(|&x| x as f64).collect();
        host.add_host_rows(&a64, &b64).unwrap();
        for (x, y) in host.ba.iter().zip(&one.ba) {
            assert!((x - y).abs() < 1e-12);
        }
        assert!((host.error_identity() - one.error_identity()).abs() < 1e-12);
    }

    #[test]
    fn non_finite_rows_are_errors() {
        let dev = Device::Cpu;
        let a = Tensor::from_vec(vec![1f32, f32::NAN], (1, 2), &dev).unwrap();
        let b = Tensor::from_vec(vec![1f32, 2.0], (1, 2), &dev).unwrap();
        assert!(matches!(
            Moments::new(2).add_rows(&a, &b),
            Err(CalibError::NonFinite(_))
        ));
        assert!(matches!(
            Moments::new(3).add_rows(&b, &b),
            Err(CalibError::Shape(_))
        ));
    }
}
