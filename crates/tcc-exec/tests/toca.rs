//! ToCa's token-wise compute in the executor: the extreme ratios against
//! full computation and FORA (bit for bit), the partial branch against a
//! hand-written per-sample loop over random token subsets, and what a
//! partial step leaves in the cache.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use tcc_core::{Branch, ModelShape};
use tcc_exec::{toca, BranchSite, Hooks, NoHooks, SampleBatch, Trajectory};
use tcc_model::{BlockModel, Dit, Modulation};
use tcc_plan::{Action, Plan};
use tcc_sampler::NoiseRng;

mod common;
use common::{batch, bits, model};

const HEAD: &str =
    "[model]\nname = \"tiny\"\n\n[sampler]\nkind = \"ddim\"\nsteps = 6\nguidance = 1.5\n\n";

fn compile(text: &str) -> Plan {
    let s = tcc_schedule::parse("test.sched", text).unwrap();
    tcc_plan::compile(&s, std::path::Path::new(".")).unwrap()
}

fn run(m: &Dit, p: &Plan, b: &SampleBatch, hooks: &mut dyn Hooks) -> Tensor {
    Trajectory::new(m, p, b).unwrap().run(hooks).unwrap()
}

/// The plan with every `Partial` replaced by a partial of `fresh` tokens.
fn with_fresh(p: &Plan, fresh: usize) -> Plan {
    let mut q = p.clone();
    for a in q.steps.iter_mut().flat_map(|s| &mut s.actions).flatten() {
        if let Action::Partial { from, prior, .. } = *a {
            *a = Action::Partial { from, fresh, prior };
        }
    }
    q
}

const FORA: &str = "[[cache]]\nrefresh = \"every 3\"\n";
const TOCA: &str = "[[cache]]\nrefresh = \"every 3\"\n\n[[cache]]\npartial = \"except every 3\"\nfresh-ratio = 0.25\n";

/// Fresh ratio 1 compiles to full computation; a partial action of all
/// tokens, run as such, is full computation bit for bit too.
#[test]
fn all_tokens_fresh_is_full_computation() {
    let full = compile(HEAD);
    assert_eq!(
        compile(&format!("{HEAD}{}", TOCA.replace("0.25", "1"))).steps,
        full.steps
    );
    let toca = compile(&format!("{HEAD}{TOCA}"));
    let all = with_fresh(&toca, toca.model.tokens());
    let sh = &toca.model;
    let m = model(sh, 3);
    let b = batch(sh, 2, 5);
    assert_eq!(
        bits(&run(&m, &all, &b, &mut NoHooks)),
        bits(&run(&m, &full, &b, &mut NoHooks))
    );
}

/// Fresh ratio 0 compiles to FORA; a partial action of no token, run as
/// such, is FORA bit for bit too.
#[test]
fn no_token_fresh_is_fora() {
    let fora = compile(&format!("{HEAD}{FORA}"));
    assert_eq!(
        compile(&format!("{HEAD}{}", TOCA.replace("0.25", "0"))).steps,
        fora.steps
    );
    let toca = compile(&format!("{HEAD}{TOCA}"));
    let none = with_fresh(&toca, 0);
    let sh = &toca.model;
    let m = model(sh, 3);
    let b = batch(sh, 2, 5);
    let fora_out = bits(&run(&m, &fora, &b, &mut NoHooks));
    assert_eq!(bits(&run(&m, &none, &b, &mut NoHooks)), fora_out);
    // And a real ToCa run is neither.
    let toca_out = bits(&run(&m, &toca, &b, &mut NoHooks));
    assert_ne!(toca_out, fora_out);
    assert_ne!(toca_out, bits(&run(&m, &compile(HEAD), &b, &mut NoHooks)));
    // Deterministic.
    assert_eq!(toca_out, bits(&run(&m, &toca, &b, &mut NoHooks)));
}

/// Records every pre-gate branch output with its site and fresh tokens.
#[derive(Default)]
struct Record(HashMap<(usize, usize, Branch), (Action, Tensor)>);

/// The fresh tokens each recorded site reported.
type FreshOf = HashMap<(usize, usize, Branch), Option<Vec<Vec<usize>>>>;

#[derive(Default)]
struct RecordFresh(Record, FreshOf);

impl Hooks for Record {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        self.0.insert(
            (site.step, site.block, site.branch),
            (site.action, out.clone()),
        );
        Ok(None)
    }
}

impl Hooks for RecordFresh {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        self.1.insert(
            (site.step, site.block, site.branch),
            site.fresh.map(<[_]>::to_vec),
        );
        self.0.branch_output(site, out)
    }
}

/// Rows of `[rows, T, D]` that differ between `a` and `b`, per row.
fn changed_rows(a: &Tensor, b: &Tensor) -> Vec<Vec<usize>> {
    let (a, b) = (a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
    a.iter()
        .zip(&b)
        .map(|(ra, rb)| {
            ra.iter()
                .zip(rb)
                .enumerate()
                .filter(|(_, (x, y))| x.iter().zip(*y).any(|(p, q)| p.to_bits() != q.to_bits()))
                .map(|(i, _)| i)
                .collect()
        })
        .collect()
}

/// At a partial step, the cached output of the last full step keeps every
/// row but the fresh ones, bit for bit; consecutive partial steps chain
/// from the updated entry; both scores run.
#[test]
fn partial_steps_replace_fresh_rows_only() {
    for score in ["attention", "random"] {
        let toca = compile(&format!("{HEAD}{TOCA}\n[toca]\nscore = \"{score}\"\n"));
        let fresh = (0.25 * toca.model.tokens() as f64) as usize;
        let sh = &toca.model;
        let m = model(sh, 11);
        let b = batch(sh, 2, 13);
        let mut both = RecordFresh::default();
        run(&m, &toca, &b, &mut both);
        let RecordFresh(rec, reported) = both;
        for block in [0, 5] {
            let out = |s: usize| &rec.0[&(s, block, Branch::Mlp)];
            assert_eq!(
                out(1).0,
                Action::Partial {
                    from: 0,
                    fresh,
                    prior: false
                }
            );
            for (prev, s) in [(0, 1), (1, 2), (3, 4)] {
                let rows = changed_rows(&out(prev).1, &out(s).1);
                assert_eq!(rows.len(), 4, "{score}: CFG batch of 2 samples");
                for r in &rows {
                    assert_eq!(r.len(), fresh, "{score} step {s}");
                }
                // The hooks are told which tokens are fresh.
                let told = reported[&(s, block, Branch::Mlp)].as_ref();
                assert_eq!(told, Some(&rows), "{score} step {s}");
                // Staleness moves the choice on.
                if s == 2 {
                    let first = changed_rows(&out(0).1, &out(1).1);
                    assert_ne!(rows, first, "{score}: step 2 picked the tokens of step 1");
                }
            }
            // A constant ratio on every branch: attention is partial too.
            assert!(matches!(
                rec.0[&(1, block, Branch::Attn)].0,
                Action::Partial { .. }
            ));
            // Only partial computes report fresh tokens.
            assert_eq!(reported[&(0, block, Branch::Mlp)], None);
            assert_eq!(reported[&(3, block, Branch::Attn)], None);
        }
    }
}

fn rand(shape: &[usize], seed: u64) -> Tensor {
    NoiseRng::new(seed)
        .randn(shape.to_vec(), &Device::Cpu)
        .unwrap()
}

/// The modulation of sample `r` only.
fn row_of(m: &Modulation, r: usize) -> Modulation {
    let n = |t: &Tensor| t.narrow(0, r, 1).unwrap();
    Modulation {
        shift_msa: n(&m.shift_msa),
        scale_msa: n(&m.scale_msa),
        gate_msa: n(&m.gate_msa),
        shift_mlp: n(&m.shift_mlp),
        scale_mlp: n(&m.scale_mlp),
        gate_mlp: n(&m.gate_mlp),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// `partial_branch` against a hand-written loop: per sample, the fresh
    /// tokens one by one (in index order) into a tensor of their own, the
    /// branch on that, and every output row written into a copy of the
    /// cached rows. Stale rows bit for bit, fresh rows within 1e-5, for the
    /// MLP and for self-attention (which attends among the fresh tokens).
    #[test]
    fn partial_branch_is_the_token_wise_loop(
        subsets in proptest::collection::vec(proptest::sample::subsequence((0..64usize).collect::<Vec<_>>(), 5), 2),
        seed in 0u64..1000,
        attn in any::<bool>(),
    ) {
        let sh = tcc_testbed_free_shape();
        let m = model(&sh, seed);
        let t = sh.tokens();
        let d = sh.hidden;
        let x = rand(&[2, sh.in_channels, sh.input_size, sh.input_size], seed + 1);
        let ts = Tensor::new(&[500f32, 500.0], &Device::Cpu).unwrap();
        let y = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        let (h, c) = m.embed(&x, &ts, &y, None).unwrap();
        let md = m.modulation(0, &c).unwrap();
        let cached = rand(&[2, t, d], seed + 2);
        let branch = if attn { Branch::Attn } else { Branch::Mlp };
        let got = toca::partial_branch(&m, 0, branch, &h, &md, &c, &cached, &subsets).unwrap();

        let mut want = cached.to_vec3::<f32>().unwrap();
        for (r, idx) in subsets.iter().enumerate() {
            let rows: Vec<Tensor> = idx.iter().map(|&i| h.narrow(0, r, 1).unwrap().narrow(1, i, 1).unwrap()).collect();
            let xr = Tensor::cat(&rows, 1).unwrap();
            let cr = tcc_model::Conditioning { c: c.c.narrow(0, r, 1).unwrap(), per_block: None, context: None };
            let out = m.branch(0, branch, &xr, &row_of(&md, r), &cr).unwrap().to_vec3::<f32>().unwrap();
            for (j, &i) in idx.iter().enumerate() {
                want[r][i] = out[0][j].clone();
            }
        }
        let got = got.to_vec3::<f32>().unwrap();
        let mut worst = 0f32;
        for (r, idx) in subsets.iter().enumerate() {
            for i in 0..t {
                let (g, w) = (&got[r][i], &want[r][i]);
                if idx.contains(&i) {
                    for (a, b) in g.iter().zip(w) {
                        worst = worst.max((a - b).abs() / (1.0 + b.abs()));
                    }
                } else {
                    // Stale rows: the cached values, untouched.
                    let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                    prop_assert!(same, "sample {} token {} is stale but changed", r, i);
                }
            }
        }
        // Fresh rows: the loop runs one sample per call, the executor both
        // at once, so GEMM blocking may round differently: 1e-5.
        prop_assert!(worst <= 1e-5, "fresh rows differ by {}", worst);
        // The MLP is per token: its fresh rows are the rows of the branch
        // computed on every token.
        if !attn {
            let all = m.branch(0, branch, &h, &md, &c).unwrap().to_vec3::<f32>().unwrap();
            for (r, idx) in subsets.iter().enumerate() {
                for &i in idx {
                    for (a, b) in got[r][i].iter().zip(&all[r][i]) {
                        prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "token {}: {} vs {}", i, a, b);
                    }
                }
            }
        }
    }
}

/// A DiT of 64 tokens (8x8), 2 blocks, width 32.
fn tcc_testbed_free_shape() -> ModelShape {
    ModelShape {
        name: "test".into(),
        family: tcc_core::ModelFamily::Dit,
        depth: 2,
        hidden: 32,
        heads: 2,
        patch: 2,
        input_size: 16,
        in_channels: 4,
        out_channels: 4,
        mlp_ratio: 4.0,
        num_classes: 4,
        caption_tokens: 0,
        caption_dim: 0,
    }
}
