//! Fused multi-head self-attention on the CPU, read straight from the packed
//! `qkv` projection.
//!
//! The composed form (`reshape`, `permute`, `contiguous`, `q * scale`,
//! `q kᵀ`, softmax, `p v`, `transpose`, `reshape`) copies Q, K and V once,
//! makes a pass per step, runs 2 x B x H small batched matmuls and calls
//! libm's scalar `expf` per score. Here each work item is one (batch, head,
//! query block): `scale q kᵀ` by one gemm reading Q and K in place (strided),
//! the softmax on the block's scores while they are in cache (vectorised
//! `exp`, see [`crate::vmath`]), `p v` by one gemm writing the head's
//! columns of the output `[B, T, D]` directly, then the rows scaled by
//! 1 / (sum of exps). Work items run in parallel (rayon), each gemm on one
//! thread.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::vmath;

/// Query rows per work item: its scores (`QBLOCK x T` f32, 128 KiB at 256
/// tokens) stay in L2, and DiT-XL/2-256 at batch 2 gives 64 work items.
const QBLOCK: usize = 128;

/// The output buffer, written by the work items at disjoint places.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each work item writes only its own (rows, head columns) block.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `OutPtr`).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `softmax(q kᵀ / sqrt(hd)) v` per head from `qkv` `[B, T, 3 D]` (Q, K, V
/// each `[T, H, hd]` along the last dim, as DiT's and PixArt's fused `qkv`
/// linear makes them); output `[B, T, D]`. With `received`, the output is
/// flat: the `B T D` attention values, then `[B, T]`: the probabilities
/// summed over queries and averaged over heads (what each key receives).
struct PackedSelfAttention {
    heads: usize,
    received: bool,
}

impl CustomOp1 for PackedSelfAttention {
    fn name(&self) -> &'static str {
        "packed-self-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, t, d3) = layout.shape().dims3()?;
        let src = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((lo, hi))) => &v[lo..hi],
            _ => candle_core::bail!("packed-self-attention: needs a contiguous f32 input"),
        };
        let heads = self.heads;
        let d = d3 / 3;
        let hd = d / heads;
        // As the composed form: the scale rounded from f64.
        let scale = (hd as f64).powf(-0.5) as f32;
        let nqb = t.div_ceil(QBLOCK);
        let mut out = vec![0f32; b * t * d];
        let dst = OutPtr(out.as_mut_ptr());
        // Per work item, the column sums of its normalised probabilities.
        let items = b * heads * nqb;
        let mut colsums = vec![0f32; if self.received { items * t } else { 0 }];
        let col = OutPtr(colsums.as_mut_ptr());
        let received = self.received;
        (0..b * heads * nqb).into_par_iter().for_each_init(
            || vec![0f32; QBLOCK.min(t) * t],
            |scores, item| {
                let (bh, qb) = (item / nqb, item % nqb);
                let (bi, h) = (bh / heads, bh % heads);
                let r0 = qb * QBLOCK;
                let rows = QBLOCK.min(t - r0);
                let base = bi * t * d3 + h * hd;
                let q = &src[base + r0 * d3..];
                let k = &src[base + d..];
                let v = &src[base + 2 * d..];
                let s = &mut scores[..rows * t];
                // SAFETY: the gemm reads `rows x hd` of q (row stride 3D),
                // `t x hd` of k and v, all inside `src` (r0 + rows <= t),
                // and writes `rows x t` of `s`.
                unsafe {
                    gemm(
                        rows,
                        t,
                        hd,
                        s.as_mut_ptr(),
                        1,
                        t as isize,
                        false,
                        q.as_ptr(),
                        1,
                        d3 as isize,
                        // kᵀ: element (i, j) is k[j, i].
                        k.as_ptr(),
                        d3 as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                let mut inv = [0f32; QBLOCK];
                vmath::with_simd(|| {
                    for (row, inv) in s.chunks_exact_mut(t).zip(&mut inv) {
                        let m = vmath::max(row);
                        *inv = 1.0 / vmath::exp_sub_sum(row, m);
                    }
                });
                let o = dst.get();
                // SAFETY: writes rows r0..r0 + rows, columns h hd..(h + 1) hd
                // of batch bi of `out` (row stride D): this item's block only.
                unsafe {
                    let o = o.add((bi * t + r0) * d + h * hd);
                    gemm(
                        rows,
                        hd,
                        t,
                        o,
                        1,
                        d as isize,
                        false,
                        s.as_ptr(),
                        1,
                        t as isize,
                        v.as_ptr(),
                        1,
                        d3 as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    for (r, &inv) in inv[..rows].iter().enumerate() {
                        let row = std::slice::from_raw_parts_mut(o.add(r * d), hd);
                        for x in row {
                            *x *= inv;
                        }
                    }
                }
                if received {
                    // SAFETY: `t` values at slot `item` of `colsums`, this
                    // item's only.
                    let sums =
                        unsafe { std::slice::from_raw_parts_mut(col.get().add(item * t), t) };
                    for (row, &inv) in s.chunks_exact(t).zip(&inv[..rows]) {
                        for (acc, &p) in sums.iter_mut().zip(row) {
                            *acc += p * inv;
                        }
                    }
                }
            },
        );
        if !received {
            return Ok((CpuStorage::F32(out), Shape::from((b, t, d))));
        }
        // Items are ordered (batch, head, query block): add them up in that
        // fixed order, then average over heads.
        let mut recv = vec![0f32; b * t];
        for (item, sums) in colsums.chunks_exact(t).enumerate() {
            let bi = item / (heads * nqb);
            for (acc, &x) in recv[bi * t..(bi + 1) * t].iter_mut().zip(sums) {
                *acc += x;
            }
        }
        let scale = 1.0 / heads as f32;
        recv.iter_mut().for_each(|x| *x *= scale);
        out.extend_from_slice(&recv);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// The dimensions `(B, T, 3 D)` of a packed `qkv`, checked against `heads`.
fn check_qkv(qkv: &Tensor, heads: usize) -> Result<(usize, usize, usize)> {
    let (b, t, d3) = qkv.dims3()?;
    if heads == 0 || d3 % (3 * heads) != 0 {
        candle_core::bail!(
            "self-attention: qkv is {:?}, not [B, T, 3 D] with D divisible by {heads} heads",
            qkv.dims()
        );
    }
    Ok((b, t, d3))
}

/// Multi-head self-attention from the packed projection `qkv` `[B, T, 3 D]`
/// (Q, K, V, each `[T, H, hd]`): `softmax(q kᵀ / sqrt(hd)) v` per head, as
/// `[B, T, D]` (heads concatenated). The fused CPU kernel for f32 on the
/// CPU, [`packed_self_attention_composed`] otherwise.
pub fn packed_self_attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    check_qkv(qkv, heads)?;
    if matches!(qkv.device(), Device::Cpu) && qkv.dtype() == DType::F32 {
        qkv.contiguous()?.apply_op1_no_bwd(&PackedSelfAttention {
            heads,
            received: false,
        })
    } else {
        packed_self_attention_composed(qkv, heads)
    }
}

/// [`packed_self_attention`] and the attention each token receives: for
/// every key token, the softmax probabilities summed over the queries and
/// averaged over the heads, `[B, T]` f32 (ToCa's token importance). The
/// attention output is the same, bit for bit, as without it.
pub fn packed_self_attention_received(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor)> {
    let (b, t, d3) = check_qkv(qkv, heads)?;
    if matches!(qkv.device(), Device::Cpu) && qkv.dtype() == DType::F32 {
        let flat = qkv.contiguous()?.apply_op1_no_bwd(&PackedSelfAttention {
            heads,
            received: true,
        })?;
        let d = d3 / 3;
        let out = flat.narrow(0, 0, b * t * d)?.reshape((b, t, d))?;
        let recv = flat.narrow(0, b * t * d, b * t)?.reshape((b, t))?;
        Ok((out, recv))
    } else {
        packed_self_attention_received_composed(qkv, heads)
    }
}

/// The composed-operations form of [`packed_self_attention_received`].
pub fn packed_self_attention_received_composed(
    qkv: &Tensor,
    heads: usize,
) -> Result<(Tensor, Tensor)> {
    let (b, t, d3) = qkv.dims3()?;
    let hd = d3 / 3 / heads;
    let qkv = qkv
        .reshape((b, t, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
    let dtype = q.dtype();
    let q = (q * (hd as f64).powf(-0.5))?;
    let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    // [B, H, Tq, Tk] -> sum over queries -> mean over heads: [B, Tk].
    let recv = probs.sum(2)?.mean(1)?;
    let out = probs
        .to_dtype(dtype)?
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, t, heads * hd))?;
    Ok((out, recv))
}

/// The composed-operations form of [`packed_self_attention`] (any device
/// and dtype; softmax in f32).
pub fn packed_self_attention_composed(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, d3) = qkv.dims3()?;
    let hd = d3 / 3 / heads;
    let qkv = qkv
        .reshape((b, t, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    attend(&qkv.get(0)?, &qkv.get(1)?, &qkv.get(2)?, None)
}

/// Multi-head attention: `q` `[B, H, Tq, hd]`, `k`, `v` `[B, H, Tk, hd]`,
/// `bias` `[B, 1, 1, Tk]` f32 added to the scores. Softmax in f32 (a
/// half-precision sum over 256+ keys loses digits). Returns `[B, Tq, H hd]`.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (b, h, tq, hd) = q.dims4()?;
    let dtype = q.dtype();
    let q = (q * (hd as f64).powf(-0.5))?;
    let mut scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(v)?.transpose(1, 2)?.reshape((b, tq, h * hd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(shape: (usize, usize, usize), amp: f32, freq: f32) -> Tensor {
        let n = shape.0 * shape.1 * shape.2;
        let v: Vec<f32> = (0..n)
            .map(|i| amp * ((i as f32 * freq).sin() + 0.3 * (i as f32 * 0.013).cos()))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Against the composed candle ops, within 1e-5 in f32: several head
    /// sizes, token counts that are not multiples of the query block, and
    /// scores large enough that the softmax is peaked.
    #[test]
    fn fused_matches_composed_ops() {
        for (b, t, heads, hd, amp) in [
            (1, 1, 1, 4, 1.0),
            (2, 37, 3, 8, 2.0),
            (2, 130, 2, 72, 1.0),
            (1, 300, 4, 16, 3.0),
        ] {
            let qkv = wave((b, t, 3 * heads * hd), amp, 0.618);
            let fused = packed_self_attention(&qkv, heads).unwrap();
            let composed = packed_self_attention_composed(&qkv, heads).unwrap();
            assert_eq!(fused.dims(), [b, t, heads * hd]);
            let err = max_abs_diff(&fused, &composed);
            assert!(err <= 1e-5, "b {b} t {t} heads {heads} hd {hd}: {err}");
        }
    }

    /// The fused received-attention sums against the composed ops (2e-6
    /// per summed query, f32), and the attention
    /// output unchanged bit for bit by asking for them.
    #[test]
    fn received_attention_matches_composed_ops() {
        for (b, t, heads, hd, amp) in [(1, 1, 1, 4, 1.0), (2, 37, 3, 8, 2.0), (2, 130, 2, 16, 1.0)]
        {
            let qkv = wave((b, t, 3 * heads * hd), amp, 0.618);
            let (out, recv) = packed_self_attention_received(&qkv, heads).unwrap();
            let plain = packed_self_attention(&qkv, heads).unwrap();
            assert_eq!(
                out.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                plain.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            let (_, recv_c) = packed_self_attention_received_composed(&qkv, heads).unwrap();
            assert_eq!(recv.dims(), [b, t]);
            let err = max_abs_diff(&recv, &recv_c);
            assert!(err <= 2e-6 * t as f32, "b {b} t {t}: {err}");
            // Every query's probabilities sum to 1: the received total is T.
            let total: f32 = recv.sum_all().unwrap().to_scalar().unwrap();
            assert!(
                (total - (b * t) as f32).abs() < 1e-3 * (b * t) as f32,
                "{total}"
            );
        }
    }

    #[test]
    fn strided_input_and_bad_shapes() {
        // A non-contiguous input is made contiguous first.
        let qkv = wave((12, 2, 5), 1.0, 0.3).permute((1, 0, 2)).unwrap();
        let qkv = qkv.reshape((2, 12, 5)).unwrap().narrow(2, 0, 5).unwrap();
        let wide = Tensor::cat(&[&qkv, &qkv.affine(0.5, 0.1).unwrap()], 2).unwrap();
        let x = wide.narrow(2, 1, 6).unwrap();
        assert!(!x.is_contiguous());
        let err = max_abs_diff(
            &packed_self_attention(&x, 2).unwrap(),
            &packed_self_attention_composed(&x.contiguous().unwrap(), 2).unwrap(),
        );
        assert!(err <= 1e-5, "{err}");
        assert!(packed_self_attention(&x, 4).is_err());
        assert!(packed_self_attention(&x, 0).is_err());
    }
}
