//! The seam between a model and whoever drives it block by block.
//!
//! A model exposes its forward pass as parts: embed the input, then for every
//! block compute the modulation (adaLN) and each branch's *pre-gate* output,
//! and add the gated output to the residual stream; finally the output layer.
//! The plain forward pass is built from the same parts, so a driver that
//! computes every branch reproduces it bit for bit. The model knows nothing
//! about caching: the executor decides which branch to compute or reuse.

use candle_core::{Result, Tensor};
use tcc_core::Branch;

/// Per-sample conditioning shared by all blocks of one forward pass.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// The adaLN input, `[B, D]` (DiT: t_emb + y_emb; PixArt: the shared
    /// timestep embedding).
    pub c: Tensor,
    /// Per-block adaLN inputs `[B, D]`, when the model's blocks have their
    /// own embedders (diffusers DiT weights may); `c` then feeds the final
    /// layer only.
    pub per_block: Option<Vec<Tensor>>,
    /// Cross-attention context `[B, L, D]` and its key mask `[B, L]`
    /// (1 = attend), for models with a `cross` branch.
    pub context: Option<(Tensor, Option<Tensor>)>,
}

/// The six adaLN modulation vectors of one block, each `[B, D]`.
#[derive(Clone, Debug)]
pub struct Modulation {
    pub shift_msa: Tensor,
    pub scale_msa: Tensor,
    pub gate_msa: Tensor,
    pub shift_mlp: Tensor,
    pub scale_mlp: Tensor,
    pub gate_mlp: Tensor,
}

impl Modulation {
    /// The six vectors from `chunk(i)`, `i` = 0..6 in the order of the
    /// fields (shift, scale, gate of `msa`, then of `mlp`).
    pub(crate) fn from_chunks(chunk: impl Fn(usize) -> Result<Tensor>) -> Result<Modulation> {
        Ok(Modulation {
            shift_msa: chunk(0)?,
            scale_msa: chunk(1)?,
            gate_msa: chunk(2)?,
            shift_mlp: chunk(3)?,
            scale_mlp: chunk(4)?,
            gate_mlp: chunk(5)?,
        })
    }
}

/// Block `block` of `blocks`; `model` names the model in the error.
pub(crate) fn nth_block<'a, B>(blocks: &'a [B], block: usize, model: &str) -> Result<&'a B> {
    match blocks.get(block) {
        Some(b) => Ok(b),
        None => candle_core::bail!(
            "block {block} out of range (the {model} has {} blocks)",
            blocks.len()
        ),
    }
}

/// Refuses a branch output `out` whose shape is not that of the residual
/// stream `x`.
pub(crate) fn check_branch_output(branch: Branch, x: &Tensor, out: &Tensor) -> Result<()> {
    if out.dims() != x.dims() {
        candle_core::bail!(
            "{branch} branch output is {:?}, the residual stream {:?}",
            out.dims(),
            x.dims()
        );
    }
    Ok(())
}

/// A transformer that can be run block by block and branch by branch.
pub trait BlockModel {
    /// Number of blocks.
    fn depth(&self) -> usize;

    /// The branches of every block, in execution order.
    fn branches(&self) -> &'static [Branch];

    /// Patchify and embed: `x` is `[B, C, H, W]`, `t` the timesteps `[B]`
    /// (f32), `cond` the condition (class ids `[B]` u32 for DiT, caption
    /// embeddings `[B, L, C]` for PixArt). Returns the tokens `[B, T, D]`.
    fn embed(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        cond_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Conditioning)>;

    /// The modulation vectors of block `block`.
    fn modulation(&self, block: usize, cond: &Conditioning) -> Result<Modulation>;

    /// The input of `block`'s self-attention after its adaLN modulation,
    /// `LayerNorm(x) * (1 + scale_msa) + shift_msa` (DiT's `modulate(norm1(x),
    /// ...)`, PixArt-α's `t2i_modulate(norm1(x), ...)` with its adaLN-single
    /// vectors), exactly as the `attn` branch computes it: TeaCache's change
    /// indicator.
    fn modulated_input(&self, block: usize, x: &Tensor, m: &Modulation) -> Result<Tensor>;

    /// The pre-gate output of `branch` of `block` for residual stream `x`.
    fn branch(
        &self,
        block: usize,
        branch: Branch,
        x: &Tensor,
        m: &Modulation,
        cond: &Conditioning,
    ) -> Result<Tensor>;

    /// The `attn` branch of `block` (as [`BlockModel::branch`] computes it,
    /// bit for bit) and the attention each token receives: for every
    /// token, its self-attention probabilities as a key summed over the
    /// queries and averaged over the heads, `[B, T]` f32. `None` when the
    /// model cannot report it (the default).
    fn attention_received(
        &self,
        block: usize,
        x: &Tensor,
        m: &Modulation,
        cond: &Conditioning,
    ) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.branch(block, Branch::Attn, x, m, cond)?, None))
    }

    /// `x + gate * out` (or `x + out` for an ungated branch).
    fn add_branch(
        &self,
        branch: Branch,
        x: &Tensor,
        m: &Modulation,
        out: &Tensor,
    ) -> Result<Tensor>;

    /// Final layer and unpatchify: tokens `[B, T, D]` -> `[B, C_out, H, W]`.
    fn finish(&self, x: &Tensor, cond: &Conditioning) -> Result<Tensor>;

    /// The plain forward pass, built from the parts above.
    fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        cond_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (mut h, c) = self.embed(x, t, cond, cond_mask)?;
        for block in 0..self.depth() {
            let m = self.modulation(block, &c)?;
            for &b in self.branches() {
                let out = self.branch(block, b, &h, &m, &c)?;
                h = self.add_branch(b, &h, &m, &out)?;
            }
        }
        self.finish(&h, &c)
    }
}
