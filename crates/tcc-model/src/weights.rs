//! How a model asks for its tensors. A model's constructor names every
//! tensor once, in both checkpoint layouts (original, diffusers), with the
//! shape it expects; everything else is derived from running it:
//!
//! - recording ([`expected`]): the names, shapes and random-initialisation
//!   rule of every tensor the constructor asks for, in one layout, with
//!   placeholder tensors that take no memory. Checkpoints are validated
//!   against this list, and [`random`] draws weights from it;
//! - loading ([`build_from`]): the constructor takes validated checkpoint
//!   tensors by the same names, cast to the model's dtype and moved to its
//!   device.
//!
//! So there is no separate list of names and no renaming step: a model
//! reads either layout directly.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::layers::{self, Linear};
use crate::load::WeightsLayout;

/// A name (of a tensor, or a prefix) in the two checkpoint layouts:
/// (original, diffusers).
pub(crate) type Names<'a> = (&'a str, &'a str);

/// How [`random`] draws a tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    /// N(0, (gain / sqrt(fan in))^2), the fan in being the product of all
    /// dimensions but the first.
    FanIn(f64),
    /// N(0, std^2).
    Normal(f64),
}

/// One tensor a constructor asked for.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Param {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) init: Init,
}

enum Mode {
    Record(RefCell<Vec<Param>>),
    Load(RefCell<HashMap<String, Tensor>>),
}

/// The tensors behind a [`Weights`]: recorded or loaded.
struct Store {
    mode: Mode,
    layout: WeightsLayout,
    dtype: DType,
    device: Device,
}

impl Store {
    fn recorder(layout: WeightsLayout) -> Store {
        Store {
            mode: Mode::Record(RefCell::new(Vec::new())),
            layout,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }

    /// Refuses model dtypes other than f32, f16 and bf16.
    fn loader(
        tensors: HashMap<String, Tensor>,
        layout: WeightsLayout,
        dtype: DType,
        device: &Device,
    ) -> Result<Store> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::Config(format!(
                "unsupported model dtype {dtype:?} (f32, f16, bf16)"
            )));
        }
        Ok(Store {
            mode: Mode::Load(RefCell::new(tensors)),
            layout,
            dtype,
            device: device.clone(),
        })
    }

    fn root(&self) -> Weights<'_> {
        Weights {
            store: self,
            prefix: String::new(),
        }
    }
}

/// A view of the tensors under a name prefix, in one layout; what a model's
/// constructor takes its tensors from.
#[derive(Clone)]
pub(crate) struct Weights<'s> {
    store: &'s Store,
    /// The prefix in the store's layout, empty or ending in `.`.
    prefix: String,
}

impl<'s> Weights<'s> {
    pub(crate) fn layout(&self) -> WeightsLayout {
        self.store.layout
    }

    /// Whether tensors are only being recorded (placeholders, no values).
    pub(crate) fn recording(&self) -> bool {
        matches!(self.store.mode, Mode::Record(_))
    }

    pub(crate) fn dtype(&self) -> DType {
        self.store.dtype
    }

    pub(crate) fn device(&self) -> &Device {
        &self.store.device
    }

    fn pick<'a>(&self, names: Names<'a>) -> &'a str {
        match self.store.layout {
            WeightsLayout::Original => names.0,
            WeightsLayout::Diffusers => names.1,
        }
    }

    /// The view under `names`; an empty name adds no level in its layout.
    pub(crate) fn pp(&self, names: Names) -> Weights<'s> {
        let part = self.pick(names);
        let prefix = if part.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{part}.", self.prefix)
        };
        Weights {
            store: self.store,
            prefix,
        }
    }

    /// The view of transformer block `i` (both models name blocks alike).
    pub(crate) fn block(&self, i: usize) -> Weights<'s> {
        self.pp((&format!("blocks.{i}"), &format!("transformer_blocks.{i}")))
    }

    /// The tensor `name` (full name under the prefix, in this layout).
    fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let name = format!("{}{name}", self.prefix);
        match &self.store.mode {
            Mode::Record(params) => {
                params.borrow_mut().push(Param {
                    name,
                    shape: shape.to_vec(),
                    init,
                });
                placeholder(shape)
            }
            Mode::Load(tensors) => {
                let t = tensors
                    .borrow_mut()
                    .remove(&name)
                    .ok_or_else(|| Error::Config(format!("internal: tensor `{name}` missing")))?;
                if t.dims() != shape {
                    return Err(Error::Config(format!(
                        "internal: tensor `{name}` is {:?}, expected {shape:?}",
                        t.dims()
                    )));
                }
                Ok(t.to_dtype(self.store.dtype)?
                    .to_device(&self.store.device)?)
            }
        }
    }

    /// The tensor named `names`, of `shape`.
    pub(crate) fn tensor(&self, names: Names, shape: &[usize], init: Init) -> Result<Tensor> {
        self.get(self.pick(names), shape, init)
    }

    /// The tensor `name` that only checkpoints of `layout` hold; `None` for
    /// the other layout.
    pub(crate) fn only_in(
        &self,
        layout: WeightsLayout,
        name: &str,
        shape: &[usize],
        init: Init,
    ) -> Result<Option<Tensor>> {
        if self.layout() == layout {
            self.get(name, shape, init).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The linear layer `{name}.weight` (of `weight_shape`, whose first
    /// dimension is the output width; drawn with `gain`) and `{name}.bias`.
    pub(crate) fn linear_of(
        &self,
        names: Names,
        weight_shape: &[usize],
        gain: f64,
    ) -> Result<Linear> {
        let name = self.pick(names);
        Ok(Linear {
            w: self.get(&format!("{name}.weight"), weight_shape, Init::FanIn(gain))?,
            b: self.get(
                &format!("{name}.bias"),
                &weight_shape[..1],
                Init::Normal(BIAS_STD),
            )?,
        })
    }

    /// The linear layer `names` mapping `inp` to `out` features.
    pub(crate) fn linear(&self, names: Names, out: usize, inp: usize) -> Result<Linear> {
        self.linear_of(names, &[out, inp], 1.0)
    }

    /// A linear layer of `parts.len()` projections of `out` features each
    /// with their rows stacked: the original layout stores it fused as
    /// `original`, diffusers as one layer per part.
    pub(crate) fn fused_linear(
        &self,
        original: &str,
        parts: &[&str],
        out: usize,
        inp: usize,
    ) -> Result<Linear> {
        let n = parts.len();
        match self.layout() {
            WeightsLayout::Original => self.linear((original, ""), n * out, inp),
            WeightsLayout::Diffusers => {
                let layers = parts
                    .iter()
                    .map(|p| self.linear(("", p), out, inp))
                    .collect::<Result<Vec<_>>>()?;
                if self.recording() {
                    return Ok(Linear {
                        w: placeholder(&[n * out, inp])?,
                        b: placeholder(&[n * out])?,
                    });
                }
                let ws: Vec<&Tensor> = layers.iter().map(|l| &l.w).collect();
                let bs: Vec<&Tensor> = layers.iter().map(|l| &l.b).collect();
                Ok(Linear {
                    w: Tensor::cat(&ws, 0)?,
                    b: Tensor::cat(&bs, 0)?,
                })
            }
        }
    }
}

/// A recorded tensor: a broadcast zero, of the right shape without memory.
fn placeholder(shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(shape)?)
}

/// Standard deviation of random biases.
const BIAS_STD: f64 = 0.02;

/// The tensors `build` asks for in `layout`, in the order it asks.
pub(crate) fn expected<M>(
    layout: WeightsLayout,
    build: impl FnOnce(&Weights) -> Result<M>,
) -> Result<Vec<Param>> {
    let store = Store::recorder(layout);
    build(&store.root())?;
    match store.mode {
        Mode::Record(params) => Ok(params.into_inner()),
        Mode::Load(_) => unreachable!("a recorder records"),
    }
}

/// The names and shapes of the tensors `build` asks for in `layout`.
pub(crate) fn shapes<M>(
    layout: WeightsLayout,
    build: impl FnOnce(&Weights) -> Result<M>,
) -> Result<Vec<(String, Vec<usize>)>> {
    Ok(expected(layout, build)?
        .into_iter()
        .map(|p| (p.name, p.shape))
        .collect())
}

/// Runs `build` on `tensors` (validated against [`expected`]), cast to
/// `dtype` on `device`; every tensor must be taken.
pub(crate) fn build_from<M>(
    tensors: HashMap<String, Tensor>,
    layout: WeightsLayout,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(&Weights) -> Result<M>,
) -> Result<M> {
    let store = Store::loader(tensors, layout, dtype, device)?;
    let model = build(&store.root())?;
    if let Mode::Load(left) = &store.mode {
        if let Some(name) = left.borrow().keys().min() {
            return Err(Error::Config(format!(
                "internal: tensor `{name}` was not used"
            )));
        }
    }
    Ok(model)
}

/// `build` on seeded random weights drawn as [`expected`] says (see
/// [`layers::random_tensors`]).
pub(crate) fn random<M>(
    layout: WeightsLayout,
    seed: u64,
    dtype: DType,
    device: &Device,
    build: impl Fn(&Weights) -> Result<M>,
) -> Result<M> {
    let params = expected(layout, &build)?;
    let tensors = layers::random_tensors(&params, seed)?;
    build_from(tensors, layout, dtype, device, build)
}
