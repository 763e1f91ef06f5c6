//! One type for "whichever model the plan names", so callers that serve
//! both families (the CLI) stay generic without boxing.

use candle_core::{Result, Tensor};
use tcc_core::Branch;

use crate::{BlockModel, Conditioning, Dit, Modulation, PixArt};

/// A DiT or a PixArt-α transformer.
pub enum AnyModel {
    Dit(Dit),
    PixArt(PixArt),
}

macro_rules! each {
    ($self:ident, $m:ident => $e:expr) => {
        match $self {
            AnyModel::Dit($m) => $e,
            AnyModel::PixArt($m) => $e,
        }
    };
}

impl BlockModel for AnyModel {
    fn depth(&self) -> usize {
        each!(self, m => m.depth())
    }

    fn branches(&self) -> &'static [Branch] {
        each!(self, m => m.branches())
    }

    fn embed(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        cond_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Conditioning)> {
        each!(self, m => m.embed(x, t, cond, cond_mask))
    }

    fn modulation(&self, block: usize, cond: &Conditioning) -> Result<Modulation> {
        each!(self, m => m.modulation(block, cond))
    }

    fn modulated_input(&self, block: usize, x: &Tensor, md: &Modulation) -> Result<Tensor> {
        each!(self, m => m.modulated_input(block, x, md))
    }

    fn branch(
        &self,
        block: usize,
        branch: Branch,
        x: &Tensor,
        md: &Modulation,
        cond: &Conditioning,
    ) -> Result<Tensor> {
        each!(self, m => m.branch(block, branch, x, md, cond))
    }

    fn attention_received(
        &self,
        block: usize,
        x: &Tensor,
        md: &Modulation,
        cond: &Conditioning,
    ) -> Result<(Tensor, Option<Tensor>)> {
        each!(self, m => m.attention_received(block, x, md, cond))
    }

    fn add_branch(
        &self,
        branch: Branch,
        x: &Tensor,
        md: &Modulation,
        out: &Tensor,
    ) -> Result<Tensor> {
        each!(self, m => m.add_branch(branch, x, md, out))
    }

    fn finish(&self, x: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        each!(self, m => m.finish(x, cond))
    }
}

impl From<Dit> for AnyModel {
    fn from(m: Dit) -> Self {
        AnyModel::Dit(m)
    }
}

impl From<PixArt> for AnyModel {
    fn from(m: PixArt) -> Self {
        AnyModel::PixArt(m)
    }
}
