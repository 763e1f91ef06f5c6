//! The parsed schedule: what a `.sched` file says, with where it says it.
//!
//! Settings a file leaves out are `None` here; the plan compiler fills them
//! from the model family's defaults. Nothing here depends on the model.

use tcc_core::{
    Branch, CalibMethod, CalibMode, CfgHalf, CfgOrder, DynamicPolicy, Pooling, PriorKind,
    RatioSchedule, SamplerKind, Selection, TokenScore,
};

use crate::span::Spanned;

/// A whole `.sched` file.
///
/// Spans of sections point at their `[header]`. Equality ignores spans
/// (see [`Spanned`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The file name it was parsed from (carried into the plan for display).
    pub source_name: String,
    pub model: Spanned<ModelSection>,
    pub sampler: Option<Spanned<SamplerSection>>,
    /// `[[cache]]` rules, applied in order: later rules override earlier ones.
    pub cache: Vec<Spanned<CacheRule>>,
    /// Applied after every cache rule.
    pub limits: Option<Spanned<LimitsSection>>,
    /// How `partial` rules choose their fresh tokens.
    pub toca: Option<Spanned<TocaSection>>,
    pub calibration: Option<Spanned<CalibrationSection>>,
    /// A run-time policy instead of a fixed table.
    pub dynamic: Option<Spanned<DynamicSection>>,
}

/// `[model]`
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSection {
    pub source: Spanned<ModelSource>,
    /// `weights = "..."`: a checkpoint file or a diffusers model directory,
    /// relative to the schedule's directory.
    pub weights: Option<Spanned<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// `name = "dit-xl-2-256"`: one of [`tcc_core::ModelShape::PRESETS`].
    Preset(String),
    /// `path = "models/DiT-XL-2-256"`: a diffusers-layout model directory
    /// (its `config.json`, or `transformer/config.json`, fixes the shape).
    Path(String),
}

/// `[sampler]`
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplerSection {
    pub kind: Option<Spanned<SamplerKind>>,
    pub steps: Option<Spanned<u64>>,
    /// Classifier-free guidance scale.
    pub guidance: Option<Spanned<f64>>,
    pub eta: Option<Spanned<f64>>,
    pub cfg_order: Option<Spanned<CfgOrder>>,
    pub guided_channels: Option<Spanned<GuidedChannels>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuidedChannels {
    /// `guided-channels = "all"`
    All,
    /// `guided-channels = 3`: guide the first N latent channels.
    First(u64),
}

/// One `[[cache]]` rule: an action over a set of (step, block, branch)
/// cells. `blocks` and `branches` default to all of the model's.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheRule {
    pub action: Spanned<RuleAction>,
    pub blocks: Option<Selector>,
    pub branches: Option<Spanned<BranchSelector>>,
    /// `fresh-ratio = r` (with `partial` only): the base fraction of the
    /// tokens recomputed, in [0, 1].
    pub fresh_ratio: Option<Spanned<f64>>,
    /// `ratio-schedule = "toca"` (with `partial` only): how the ratio
    /// varies over steps, blocks and branches; default `constant`.
    pub ratio_schedule: Option<Spanned<RatioSchedule>>,
}

/// The action key of a rule (exactly one per rule). The span of the
/// `Spanned<RuleAction>` is the key.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleAction {
    /// `compute = STEPS`: compute the cells at these steps.
    Compute(Selector),
    /// `reuse = STEPS`: reuse the cells at these steps.
    Reuse(Selector),
    /// `refresh = STEPS`: compute at these steps, reuse at every other step.
    Refresh(Selector),
    /// `reuse-delta = STEPS`: skip the (contiguous) `blocks` range at these
    /// steps and add its cached residual delta (Δ-DiT).
    ReuseDelta(Selector),
    /// `mask = "1001..."` or a preset name: one digit per step, 1 = compute,
    /// 0 = reuse.
    Mask(Mask),
    /// `table = ["1101...", ...]`: one row per step, one cell per selected
    /// block (a Learning-to-Cache router's output).
    Table(Vec<Spanned<TableRow>>),
    /// `partial = STEPS`: at these steps recompute a fraction of the tokens
    /// (the rule's `fresh-ratio`) and reuse the cached rows of the others
    /// (ToCa).
    Partial(Selector),
}

impl RuleAction {
    /// The key that introduces this action in a rule.
    pub fn key(&self) -> &'static str {
        match self {
            RuleAction::Compute(_) => "compute",
            RuleAction::Reuse(_) => "reuse",
            RuleAction::Refresh(_) => "refresh",
            RuleAction::ReuseDelta(_) => "reuse-delta",
            RuleAction::Mask(_) => "mask",
            RuleAction::Table(_) => "table",
            RuleAction::Partial(_) => "partial",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Mask {
    /// One entry per step, `true` = compute.
    Bits(Vec<Spanned<bool>>),
    /// A named preset, resolved for the sampler's step count by
    /// [`crate::mask_preset`].
    Preset(Spanned<String>),
}

/// One row of a table: one cell per selected block.
#[derive(Clone, Debug, PartialEq)]
pub struct TableRow {
    pub cells: Vec<Spanned<Cell>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// `1`
    Compute,
    /// `0`
    Reuse,
    /// `.`: left as earlier rules set it.
    Keep,
}

impl Cell {
    pub fn symbol(self) -> char {
        match self {
            Cell::Compute => '1',
            Cell::Reuse => '0',
            Cell::Keep => '.',
        }
    }
}

/// A set of step (or block) indices, written in the selector language.
pub type Selector = Spanned<SelNode>;

#[derive(Clone, Debug, PartialEq)]
pub enum SelNode {
    /// `all`
    All,
    /// `none`
    None,
    /// `7`
    Index(u64),
    /// `a..b`, `a..=b`, `a..`, `..b`
    Range {
        start: Option<u64>,
        end: Option<u64>,
        inclusive: bool,
    },
    /// `every N [from S]`: S + round(k * N) for k = 0, 1, ...; N may be
    /// fractional (`every 2.5` -> 0, 3, 5, 8, 10, ...; halves round away
    /// from zero).
    Every { n: f64, from: Option<u64> },
    /// `first N`
    First(u64),
    /// `last N`
    Last(u64),
    /// `step < 10` (or `block < 10` in a block selector)
    Compare { op: CmpOp, value: u64 },
    /// `step % M == R` / `step % M != R`
    Modulo {
        modulus: u64,
        remainder: u64,
        equal: bool,
    },
    /// `a, b, c`
    Union(Vec<Selector>),
    /// `a and b`
    Intersect(Vec<Selector>),
    /// `a except b` (a leading `except b` means `all except b`)
    Except {
        base: Box<Selector>,
        removed: Box<Selector>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }

    pub fn holds(self, lhs: u64, rhs: u64) -> bool {
        match self {
            CmpOp::Lt => lhs < rhs,
            CmpOp::Le => lhs <= rhs,
            CmpOp::Gt => lhs > rhs,
            CmpOp::Ge => lhs >= rhs,
            CmpOp::Eq => lhs == rhs,
            CmpOp::Ne => lhs != rhs,
        }
    }
}

/// What a selector's indices count, which names its predicates' variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    Step,
    Block,
}

impl IndexKind {
    pub fn var(self) -> &'static str {
        match self {
            IndexKind::Step => "step",
            IndexKind::Block => "block",
        }
    }
}

/// `branches = "attn, mlp"`, `"all"`, `"all except cross"`.
#[derive(Clone, Debug, PartialEq)]
pub struct BranchSelector {
    pub include: Vec<Spanned<BranchItem>>,
    pub except: Vec<Spanned<BranchItem>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchItem {
    /// Every branch the model has.
    All,
    One(Branch),
}

/// `[limits]`: applied after every cache rule, in this order: warm-up and
/// cut-off force computation, then runs of reuses longer than `max-reuse`
/// are broken by computing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitsSection {
    /// The first k steps always compute.
    pub warmup: Option<Spanned<u64>>,
    /// The last k steps always compute.
    pub cutoff: Option<Spanned<u64>>,
    /// At most k consecutive reuses of any (block, branch).
    pub max_reuse: Option<Spanned<u64>>,
}

/// `[toca]`: how `partial` rules choose their fresh tokens at run time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TocaSection {
    pub score: Option<Spanned<TokenScore>>,
    /// Weight of the staleness term.
    pub fresh_weight: Option<Spanned<f64>>,
    /// Bonus of the best token of each 2x2 patch, a fraction of its score.
    pub spread_bonus: Option<Spanned<f64>>,
    /// `N` of the staleness term; default: derived from the plan.
    pub interval: Option<Spanned<f64>>,
    /// Seed of the `random` score.
    pub seed: Option<Spanned<u64>>,
}

/// `[calibration]`. A present section defaults to `method = "tcc"`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CalibrationSection {
    pub method: Option<Spanned<CalibMethod>>,
    pub mode: Option<Spanned<CalibMode>>,
    /// Calibrated steps; default: every reuse step.
    pub steps: Option<Selector>,
    pub alpha: Option<Spanned<f64>>,
    pub prior: Option<Spanned<PriorKind>>,
    pub pooling: Option<Spanned<Pooling>>,
    pub pooled_half: Option<Spanned<CfgHalf>>,
    pub samples: Option<Spanned<u64>>,
    pub seed: Option<Spanned<u64>>,
    pub select: Option<Spanned<Selection>>,
    /// Prior kinds validated selection tries.
    pub candidates: Option<Spanned<Vec<Spanned<PriorKind>>>>,
    /// Blends validated selection tries.
    pub alphas: Option<Spanned<Vec<Spanned<f64>>>>,
    /// Ridge strengths of `affine` / `lowrank`.
    pub ridge: Option<Spanned<Vec<Spanned<f64>>>>,
    pub rank: Option<Spanned<u64>>,
    pub validation_samples: Option<Spanned<u64>>,
    pub validation_seed: Option<Spanned<u64>>,
}

/// `[dynamic]`: a cache policy decided per step while sampling.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DynamicSection {
    pub policy: Option<Spanned<DynamicPolicy>>,
    pub threshold: Option<Spanned<f64>>,
    pub warmup: Option<Spanned<u64>>,
    pub cutoff: Option<Spanned<u64>>,
    pub max_reuse: Option<Spanned<u64>>,
    /// TeaCache's rescaling polynomial, numpy `polyval` order.
    pub rescale: Option<Spanned<Vec<Spanned<f64>>>>,
}
