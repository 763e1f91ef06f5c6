//! Fused CPU kernels for the linear layers and the element-wise parts of a
//! DiT block (the attention kernel is in [`crate::attention`]).
//!
//! candle's `Tensor::gelu` runs on one thread and its broadcast ops make a
//! pass per operation; these kernels are parallel (rayon) and fused. On other
//! devices they fall back to candle's composed operations, with the same
//! formulas.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D,
};
use gemm::{gemm, Parallelism};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::vmath;

/// Elements per parallel work item of the element-wise kernels.
const CHUNK: usize = 4096;

/// A float element type the kernels compute on in f32.
trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Elem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Elem for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

fn contiguous<'a, T>(src: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&src[a..b]),
        None => candle_core::bail!("{what}: input has to be contiguous"),
    }
}

/// tanh-approximate GELU, `0.5 x (1 + tanh(z)) = x * sigmoid(2z)` with
/// `z = sqrt(2/pi) (x + 0.044715 x^3)`.
#[inline]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let z = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x / (1.0 + vmath::exp(-2.0 * z))
}

struct FastGelu;

impl CustomOp1 for FastGelu {
    fn name(&self) -> &'static str {
        "fast-gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(src: &[T], layout: &Layout) -> Result<Vec<T>> {
            let src = contiguous(src, layout, "fast-gelu")?;
            let mut dst: Vec<T> = src.to_vec();
            dst.par_chunks_mut(CHUNK).for_each(|c| {
                vmath::with_simd(|| {
                    for v in c {
                        *v = T::from_f32(gelu_tanh(v.to_f32()));
                    }
                })
            });
            Ok(dst)
        }
        let out = match storage {
            CpuStorage::F32(s) => CpuStorage::F32(run(s, layout)?),
            CpuStorage::F16(s) => CpuStorage::F16(run(s, layout)?),
            CpuStorage::BF16(s) => CpuStorage::BF16(run(s, layout)?),
            s => candle_core::bail!("fast-gelu: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }
}

fn fast_path(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// tanh-approximate GELU (PyTorch's `gelu(approximate="tanh")`): a parallel
/// CPU kernel, `Tensor::gelu` (the same approximation) elsewhere.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) {
        x.contiguous()?.apply_op1_no_bwd(&FastGelu)
    } else {
        x.gelu()
    }
}

/// `x + b` with `b` broadcast over the rows of `x` (its last dim), optionally
/// followed by the GELU.
struct BiasAct {
    gelu: bool,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        if self.gelu {
            "bias-gelu"
        } else {
            "bias-add"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = l2.shape().elem_count();
        let gelu = self.gelu;
        fn run<T: Elem>(x: &[T], b: &[T], gelu: bool) -> Vec<T> {
            let n = b.len();
            let mut dst = vec![T::from_f32(0.0); x.len()];
            let rows = (CHUNK / n).max(1);
            dst.par_chunks_mut(rows * n)
                .zip(x.par_chunks(rows * n))
                .for_each(|(out, x)| {
                    vmath::with_simd(|| {
                        for (out, x) in out.chunks_mut(n).zip(x.chunks(n)) {
                            for i in 0..n {
                                let v = x[i].to_f32() + b[i].to_f32();
                                out[i] = T::from_f32(if gelu { gelu_tanh(v) } else { v });
                            }
                        }
                    })
                });
            dst
        }
        if l1.dims().last() != Some(&n) {
            candle_core::bail!("bias-add: input {:?}, bias of {n}", l1.dims());
        }
        let what = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(b)) => CpuStorage::F32(run(
                contiguous(x, l1, what)?,
                contiguous(b, l2, what)?,
                gelu,
            )),
            (CpuStorage::F16(x), CpuStorage::F16(b)) => CpuStorage::F16(run(
                contiguous(x, l1, what)?,
                contiguous(b, l2, what)?,
                gelu,
            )),
            (CpuStorage::BF16(x), CpuStorage::BF16(b)) => CpuStorage::BF16(run(
                contiguous(x, l1, what)?,
                contiguous(b, l2, what)?,
                gelu,
            )),
            _ => candle_core::bail!(
                "{what}: unsupported dtypes {:?}, {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }
}

fn bias_act(x: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
    if fast_path(x) && b.dtype() == x.dtype() && b.rank() == 1 {
        x.contiguous()?
            .apply_op2_no_bwd(&b.contiguous()?, &BiasAct { gelu })
    } else {
        let y = x.broadcast_add(b)?;
        if gelu {
            y.gelu()
        } else {
            Ok(y)
        }
    }
}

/// `x + b`, `b` `[N]` broadcast over `x` `[..., N]` (parallel on the CPU).
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    bias_act(x, b, false)
}

/// `gelu(x + b)` (tanh approximation), `b` `[N]` broadcast over `x` `[..., N]`.
pub fn bias_gelu(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    bias_act(x, b, true)
}

/// `x Wᵀ + b`, optionally followed by the GELU: `x` `[rows, k]`, `w`
/// `[n, k]`, `b` `[n]`, f32. The output starts as the bias rows and one
/// gemm (on all rayon threads) accumulates `x Wᵀ` onto it: no zero fill, no
/// second buffer and no separate bias pass; the GELU then runs in place.
struct LinearOp {
    gelu: bool,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        if self.gelu {
            "linear-gelu"
        } else {
            "linear"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let what = self.name();
        let (rows, k) = l1.shape().dims2()?;
        let (n, k_w) = l2.shape().dims2()?;
        if k_w != k || l3.dims() != [n] {
            candle_core::bail!(
                "{what}: input {:?}, weight {:?}, bias {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let (x, w, b) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => (
                contiguous(x, l1, what)?,
                contiguous(w, l2, what)?,
                contiguous(b, l3, what)?,
            ),
            _ => candle_core::bail!("{what}: needs f32 inputs"),
        };
        let mut dst: Vec<f32> = Vec::with_capacity(rows * n);
        if n > 0 {
            dst.spare_capacity_mut()[..rows * n]
                .par_chunks_mut(n)
                .for_each(|row| {
                    for (o, &v) in row.iter_mut().zip(b) {
                        o.write(v);
                    }
                });
        }
        // SAFETY: the loop above wrote all rows * n elements.
        unsafe { dst.set_len(rows * n) };
        let threads = rayon::current_num_threads();
        let par = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        // SAFETY: dst is rows x n (row stride n), x rows x k (row stride k),
        // and Wᵀ is k x n with element (i, j) = w[j k + i].
        unsafe {
            gemm(
                rows,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        if self.gelu {
            dst.par_chunks_mut(CHUNK).for_each(|c| {
                vmath::with_simd(|| {
                    for v in c {
                        *v = gelu_tanh(*v);
                    }
                })
            });
        }
        Ok((CpuStorage::F32(dst), Shape::from((rows, n))))
    }
}

/// `x Wᵀ + b` over the last dim of `x` `[..., k]`, `w` `[n, k]`, `b` `[n]`,
/// followed by the tanh GELU when `gelu`: one fused pass after the matmul on
/// the CPU in f32, [`linear_composed`] otherwise.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
    let (k, lead) = match x.dims().split_last() {
        Some((k, lead)) => (*k, lead.to_vec()),
        None => candle_core::bail!("linear: scalar input"),
    };
    let (n, k_w) = w.dims2()?;
    if k_w != k || b.dims() != [n] {
        candle_core::bail!(
            "linear: input {:?}, weight {:?}, bias {:?}",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    let fast =
        matches!(x.device(), Device::Cpu) && [x, w, b].iter().all(|t| t.dtype() == DType::F32);
    if !fast {
        return linear_composed(x, w, b, gelu);
    }
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, k))?.contiguous()?.apply_op3_no_bwd(
        &w.contiguous()?,
        &b.contiguous()?,
        &LinearOp { gelu },
    )?;
    let mut out = lead;
    out.push(n);
    y.reshape(out)
}

/// The composed form of [`linear`]: candle's matmul, then [`bias_add`] or
/// [`bias_gelu`] (any device and dtype).
pub fn linear_composed(x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
    let dims = x.dims();
    let (k, lead) = match dims.split_last() {
        Some((k, lead)) => (*k, lead),
        None => candle_core::bail!("linear: scalar input"),
    };
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, k))?.matmul(&w.t()?)?;
    let mut out = lead.to_vec();
    out.push(w.dim(0)?);
    let y = y.reshape(out)?;
    if gelu {
        bias_gelu(&y, b)
    } else {
        bias_add(&y, b)
    }
}

/// `x + out * gate`, `x` and `out` `[B, T, D]`, `gate` `[B, D]`.
struct GatedAdd;

impl CustomOp3 for GatedAdd {
    fn name(&self) -> &'static str {
        "gated-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, t, d) = l1.shape().dims3()?;
        fn run<T: Elem>(x: &[T], out: &[T], gate: &[T], t: usize, d: usize) -> Vec<T> {
            let mut dst = vec![T::from_f32(0.0); x.len()];
            dst.par_chunks_mut(d)
                .zip(x.par_chunks(d).zip(out.par_chunks(d)))
                .enumerate()
                .for_each(|(row, (dst, (x, out)))| {
                    let b = row / t;
                    let gate = &gate[b * d..(b + 1) * d];
                    for i in 0..d {
                        // Two roundings, as `x + out * gate` with candle ops.
                        let g = T::from_f32(out[i].to_f32() * gate[i].to_f32());
                        dst[i] = T::from_f32(x[i].to_f32() + g.to_f32());
                    }
                });
            dst
        }
        let what = "gated-add";
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(o), CpuStorage::F32(g)) => CpuStorage::F32(run(
                contiguous(x, l1, what)?,
                contiguous(o, l2, what)?,
                contiguous(g, l3, what)?,
                t,
                d,
            )),
            (CpuStorage::F16(x), CpuStorage::F16(o), CpuStorage::F16(g)) => CpuStorage::F16(run(
                contiguous(x, l1, what)?,
                contiguous(o, l2, what)?,
                contiguous(g, l3, what)?,
                t,
                d,
            )),
            (CpuStorage::BF16(x), CpuStorage::BF16(o), CpuStorage::BF16(g)) => {
                CpuStorage::BF16(run(
                    contiguous(x, l1, what)?,
                    contiguous(o, l2, what)?,
                    contiguous(g, l3, what)?,
                    t,
                    d,
                ))
            }
            _ => candle_core::bail!(
                "gated-add: unsupported dtypes {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// `x + out * gate` (the gated residual update), `x` and `out` `[B, T, D]`,
/// `gate` `[B, D]`. Bit-identical to
/// `x + out.broadcast_mul(gate.unsqueeze(1))` with candle's ops.
pub fn gated_add(x: &Tensor, out: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    if out.dims() != [b, t, d] || gate.dims() != [b, d] {
        candle_core::bail!(
            "gated-add: residual {:?}, branch output {:?}, gate {:?}",
            x.dims(),
            out.dims(),
            gate.dims()
        );
    }
    if fast_path(x) && out.dtype() == x.dtype() && gate.dtype() == x.dtype() {
        x.contiguous()?
            .apply_op3_no_bwd(&out.contiguous()?, &gate.contiguous()?, &GatedAdd)
    } else {
        x + out.broadcast_mul(&gate.unsqueeze(1)?)?
    }
}

/// `LayerNorm(x) * (1 + scale) + shift` over the last dim, without affine
/// weights; `x` is `[B, T, D]`, `shift` and `scale` are `[B, D]`.
struct LnModulate {
    eps: f32,
}

impl CustomOp3 for LnModulate {
    fn name(&self) -> &'static str {
        "layer-norm-modulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let eps = self.eps;
        let (_, t, d) = l1.shape().dims3()?;
        fn run<T: Elem>(x: &[T], shift: &[T], scale: &[T], t: usize, d: usize, eps: f32) -> Vec<T> {
            let mut dst = vec![T::from_f32(0.0); x.len()];
            dst.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .enumerate()
                .for_each(|(row, (out, x))| {
                    let b = row / t;
                    let shift = &shift[b * d..(b + 1) * d];
                    let scale = &scale[b * d..(b + 1) * d];
                    // Two passes: the centred variance does not cancel.
                    let mean = x.iter().map(|v| v.to_f32()).sum::<f32>() / d as f32;
                    let var = x
                        .iter()
                        .map(|v| {
                            let c = v.to_f32() - mean;
                            c * c
                        })
                        .sum::<f32>()
                        / d as f32;
                    let rstd = 1.0 / (var + eps).sqrt();
                    for i in 0..d {
                        let n = (x[i].to_f32() - mean) * rstd;
                        out[i] = T::from_f32(n * (1.0 + scale[i].to_f32()) + shift[i].to_f32());
                    }
                });
            dst
        }
        let what = "layer-norm-modulate";
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(run(
                contiguous(x, l1, what)?,
                contiguous(a, l2, what)?,
                contiguous(b, l3, what)?,
                t,
                d,
                eps,
            )),
            (CpuStorage::F16(x), CpuStorage::F16(a), CpuStorage::F16(b)) => CpuStorage::F16(run(
                contiguous(x, l1, what)?,
                contiguous(a, l2, what)?,
                contiguous(b, l3, what)?,
                t,
                d,
                eps,
            )),
            (CpuStorage::BF16(x), CpuStorage::BF16(a), CpuStorage::BF16(b)) => {
                CpuStorage::BF16(run(
                    contiguous(x, l1, what)?,
                    contiguous(a, l2, what)?,
                    contiguous(b, l3, what)?,
                    t,
                    d,
                    eps,
                ))
            }
            _ => candle_core::bail!(
                "layer-norm-modulate: unsupported dtypes {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// `LayerNorm(x) * (1 + scale) + shift` (LayerNorm without affine weights),
/// computed in f32 whatever the dtype. `x` is `[B, T, D]`, `shift` and
/// `scale` are `[B, D]`.
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    let (b, _, d) = x.dims3()?;
    for (name, v) in [("shift", shift), ("scale", scale)] {
        if v.dims() != [b, d] || v.dtype() != x.dtype() {
            candle_core::bail!(
                "layer-norm-modulate: {name} is {:?} {:?}, expected [{b}, {d}] {:?}",
                v.dims(),
                v.dtype(),
                x.dtype()
            );
        }
    }
    if fast_path(x) {
        x.contiguous()?.apply_op3_no_bwd(
            &shift.contiguous()?,
            &scale.contiguous()?,
            &LnModulate { eps: eps as f32 },
        )
    } else {
        layer_norm_modulate_composed(x, shift, scale, eps)
    }
}

/// The composed-operations form of [`layer_norm_modulate`] (any device).
pub fn layer_norm_modulate_composed(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let c = x.broadcast_sub(&mean)?;
    let var = c.sqr()?.mean_keepdim(D::Minus1)?;
    let n = c.broadcast_div(&(var + eps)?.sqrt()?)?;
    let scale = (scale.to_dtype(DType::F32)? + 1.0)?.unsqueeze(1)?;
    let shift = shift.to_dtype(DType::F32)?.unsqueeze(1)?;
    n.broadcast_mul(&scale)?
        .broadcast_add(&shift)?
        .to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-amp, amp].
    fn wave(shape: (usize, usize, usize), amp: f32, phase: f32) -> Tensor {
        let n = shape.0 * shape.1 * shape.2;
        let v: Vec<f32> = (0..n)
            .map(|i| amp * (i as f32 * 0.737 + phase).sin())
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
        d.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn gelu_matches_candle_tanh_gelu() {
        let x = (Tensor::arange(-4000f32, 4000f32, &Device::Cpu).unwrap() / 500.0).unwrap();
        let x = x.reshape((4, 2000)).unwrap();
        let err = max_abs_diff(&gelu(&x).unwrap(), &x.gelu().unwrap());
        assert!(err < 1e-5, "{err}");
        // Non-contiguous input and half precision.
        let xt = x.t().unwrap();
        assert!(max_abs_diff(&gelu(&xt).unwrap(), &xt.gelu().unwrap()) < 1e-5);
        for dt in [DType::F16, DType::BF16] {
            let xh = x.to_dtype(dt).unwrap();
            let err = max_abs_diff(
                &gelu(&xh).unwrap(),
                &xh.to_dtype(DType::F32).unwrap().gelu().unwrap(),
            );
            assert!(err < 3e-2, "{dt:?}: {err}");
        }
        // Extreme inputs stay finite: gelu(x) -> x for large x, -> 0 for very negative x.
        let big = Tensor::new(&[-1e4f32, -50.0, 50.0, 1e4], &Device::Cpu).unwrap();
        let v = gelu(&big).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![-0.0, -0.0, 50.0, 1e4]);
    }

    #[test]
    fn bias_and_gated_add_match_candle_ops() {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let x = wave((3, 7, 40), 2.0, 0.3).to_dtype(dt).unwrap();
            let b = wave((1, 1, 40), 1.0, 1.1)
                .flatten_all()
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let want = x.broadcast_add(&b).unwrap();
            assert_eq!(
                max_abs_diff(&bias_add(&x, &b).unwrap(), &want),
                0.0,
                "{dt:?}"
            );
            let tol = if dt == DType::F32 { 1e-5 } else { 3e-2 };
            let err = max_abs_diff(
                &bias_gelu(&x, &b).unwrap(),
                &want.to_dtype(DType::F32).unwrap().gelu().unwrap(),
            );
            assert!(err < tol, "{dt:?}: {err}");
            // Bit-identical to the composed candle form, in every dtype.
            let out = wave((3, 7, 40), 1.0, 2.2).to_dtype(dt).unwrap();
            let gate = wave((1, 3, 40), 0.5, 0.7)
                .squeeze(0)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let want = (&x + out.broadcast_mul(&gate.unsqueeze(1).unwrap()).unwrap()).unwrap();
            let got = gated_add(&x, &out, &gate).unwrap();
            assert_eq!(max_abs_diff(&got, &want), 0.0, "{dt:?}");
            assert!(gated_add(&x, &out.narrow(1, 0, 3).unwrap(), &gate).is_err());
        }
    }

    /// The fused linear layer against candle's matmul + bias (+ GELU),
    /// within 1e-5 in f32 (outputs of order 1); other dtypes take the
    /// composed path.
    #[test]
    fn linear_matches_composed_ops() {
        for (b, t, k, n) in [(1, 1, 1, 1), (2, 7, 40, 33), (3, 50, 96, 130)] {
            let x = wave((b, t, k), 1.0, 0.1);
            let w = (wave((1, n, k), 1.0, 0.9).squeeze(0).unwrap() / (k as f64).sqrt()).unwrap();
            let bias = wave((1, 1, n), 0.5, 0.4).flatten_all().unwrap();
            for gelu in [false, true] {
                let fast = linear(&x, &w, &bias, gelu).unwrap();
                let slow = linear_composed(&x, &w, &bias, gelu).unwrap();
                assert_eq!(fast.dims(), [b, t, n]);
                let err = max_abs_diff(&fast, &slow);
                assert!(err <= 1e-5, "{b}x{t}x{k} -> {n}, gelu {gelu}: {err}");
            }
            // Transposed (non-contiguous) input.
            let xt = wave((b, k, t), 1.0, 0.2).transpose(1, 2).unwrap();
            let err = max_abs_diff(
                &linear(&xt, &w, &bias, true).unwrap(),
                &linear_composed(&xt, &w, &bias, true).unwrap(),
            );
            assert!(err <= 1e-5, "transposed: {err}");
            let xh = x.to_dtype(DType::BF16).unwrap();
            let [wh, bh] = [&w, &bias].map(|v| v.to_dtype(DType::BF16).unwrap());
            assert_eq!(linear(&xh, &wh, &bh, false).unwrap().dtype(), DType::BF16);
        }
        let x = wave((1, 2, 8), 1.0, 0.1);
        let w = wave((1, 3, 8), 1.0, 0.1).squeeze(0).unwrap();
        let bias = wave((1, 1, 4), 1.0, 0.1).flatten_all().unwrap();
        assert!(linear(&x, &w, &bias, false).is_err());
        assert!(linear(
            &x,
            &w.narrow(1, 0, 7).unwrap(),
            &bias.narrow(0, 0, 3).unwrap(),
            false
        )
        .is_err());
    }

    #[test]
    fn layer_norm_modulate_matches_composed_form() {
        let dev = Device::Cpu;
        // A large common offset: the one-pass variance E[x^2] - E[x]^2 would cancel.
        let x = (wave((2, 5, 64), 1.5, 0.0) + 1000.0).unwrap();
        let shift = wave((1, 2, 64), 1.0, 1.0).squeeze(0).unwrap();
        let scale = wave((1, 2, 64), 1.0, 2.0).squeeze(0).unwrap();
        let fast = layer_norm_modulate(&x, &shift, &scale, 1e-6).unwrap();
        let slow = layer_norm_modulate_composed(&x, &shift, &scale, 1e-6).unwrap();
        let err = max_abs_diff(&fast, &slow);
        assert!(err < 1e-3, "{err}");
        // Each row of the normalised part has mean 0, variance 1 when scale = shift = 0.
        let zero = Tensor::zeros((2, 64), DType::F32, &dev).unwrap();
        let n = layer_norm_modulate(&x, &zero, &zero, 1e-6).unwrap();
        let mean = n
            .mean_keepdim(D::Minus1)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        let var = n.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let var_err = (var - 1.0).unwrap().abs().unwrap().max_all().unwrap();
        // f32 at offset 1000 resolves 6e-5: the row mean is exact to ~1e-4.
        assert!(mean.to_scalar::<f32>().unwrap() < 1e-3);
        assert!(var_err.to_scalar::<f32>().unwrap() < 1e-3);
        // Half precision: compare with the f32 computation on the same rounded input.
        let x0 = wave((2, 5, 64), 3.0, 0.5);
        for dt in [DType::F16, DType::BF16] {
            let [xh, sh, sc] = [&x0, &shift, &scale].map(|v| v.to_dtype(dt).unwrap());
            let h = layer_norm_modulate(&xh, &sh, &sc, 1e-6).unwrap();
            assert_eq!(h.dtype(), dt);
            let [xf, shf, scf] = [&xh, &sh, &sc].map(|v| v.to_dtype(DType::F32).unwrap());
            let want = layer_norm_modulate_composed(&xf, &shf, &scf, 1e-6).unwrap();
            let err = max_abs_diff(&h, &want);
            assert!(err < 5e-2, "{dt:?}: {err}");
        }
        let bad = layer_norm_modulate(&x, &shift.narrow(1, 0, 32).unwrap(), &scale, 1e-6);
        assert!(bad.unwrap_err().to_string().contains("shift"));
    }
}
