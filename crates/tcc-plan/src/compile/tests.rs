//! What each cache policy compiles to, cell by cell.

use std::path::{Path, PathBuf};

use tcc_core::{Branch, CalibMethod, CfgOrder, ModelFamily, SamplerKind};

use super::*;
use crate::plan::Action;

const TINY: &str = "[model]\nname = \"tiny\"\n[sampler]\nsteps = 10\n";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn try_plan(text: &str) -> Result<Plan, String> {
    let s = tcc_schedule::parse("t.sched", text).map_err(|d| d.render("t.sched", text))?;
    compile(&s, Path::new("base")).map_err(|d| d.render("t.sched", text))
}

fn plan(text: &str) -> Plan {
    try_plan(text).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    match try_plan(text) {
        Ok(_) => panic!("compiled, but should not have:\n{text}"),
        Err(e) => e,
    }
}

/// One character per step: `C` all computed, `R` every cell reused,
/// `m` mixed.
fn step_kinds(p: &Plan) -> String {
    p.steps
        .iter()
        .map(|s| {
            let all = s.actions.iter().flatten();
            if s.is_full() {
                'C'
            } else if all.clone().all(|a| matches!(a, Action::Reuse { .. })) {
                'R'
            } else {
                'm'
            }
        })
        .collect()
}

const A: Branch = Branch::Attn;
const M: Branch = Branch::Mlp;

fn reuse(from: usize) -> Action {
    Action::Reuse { from, prior: false }
}

#[test]
fn no_rules_compute_everything() {
    let p = plan(TINY);
    assert_eq!(p.steps.len(), 10);
    assert_eq!(step_kinds(&p), "CCCCCCCCCC");
    assert_eq!(p.steps[3].actions.len(), 6);
    assert_eq!(p.steps[3].actions[0].len(), 2);
    let t: Vec<u32> = p.steps.iter().map(|s| s.timestep).collect();
    assert_eq!(t, p.sampler.timesteps());
    assert_eq!(p.source, "t.sched");
    assert_eq!(p.weights, None);
}

#[test]
fn fora_integer_interval_reuses_from_the_last_refresh() {
    let p = plan(&format!("{TINY}[[cache]]\nrefresh = \"every 3\"\n"));
    assert_eq!(step_kinds(&p), "CRRCRRCRRC");
    for (step, from) in [(1, 0), (2, 0), (4, 3), (5, 3), (7, 6), (8, 6)] {
        for block in [0, 5] {
            for b in [A, M] {
                assert_eq!(
                    p.action(step, block, b),
                    Some(reuse(from)),
                    "{step} {block} {b}"
                );
            }
        }
    }
}

#[test]
fn fora_fractional_interval_rounds_offsets() {
    // round(k * 2.5) = 0, 3 (2.5 rounds up), 5, 8 (7.5 rounds up)
    let p = plan(&format!("{TINY}[[cache]]\nrefresh = \"every 2.5\"\n"));
    assert_eq!(step_kinds(&p), "CRRCRCRRCR");
    assert_eq!(p.action(4, 2, A), Some(reuse(3)));
    assert_eq!(p.action(9, 2, M), Some(reuse(8)));
}

#[test]
fn fora_on_pixart_reuses_cross_attention_too() {
    let p = plan("[model]\nname = \"pixart-alpha-256\"\n[[cache]]\nrefresh = \"every 2\"\n");
    assert_eq!(p.branches(), &[A, Branch::Cross, M]);
    assert_eq!(p.action(1, 27, Branch::Cross), Some(reuse(0)));
    assert_eq!(p.action(2, 27, Branch::Cross), Some(Action::Compute));
}

#[test]
fn branches_and_blocks_limit_a_rule() {
    let p = plan(&format!(
        "{TINY}[[cache]]\nreuse = \"1..3\"\nbranches = \"mlp\"\nblocks = \"block >= 4\"\n"
    ));
    assert_eq!(p.action(1, 4, M), Some(reuse(0)));
    assert_eq!(p.action(2, 5, M), Some(reuse(0)));
    assert_eq!(p.action(1, 4, A), Some(Action::Compute));
    assert_eq!(p.action(1, 3, M), Some(Action::Compute));
    assert_eq!(p.action(3, 4, M), Some(Action::Compute));
}

#[test]
fn later_rules_override_earlier_ones() {
    let p = plan(&format!(
        "{TINY}[[cache]]\nreuse = \"1..\"\n[[cache]]\ncompute = \"4\"\nblocks = \"0..2\"\n"
    ));
    assert_eq!(p.action(4, 1, A), Some(Action::Compute));
    assert_eq!(p.action(4, 2, A), Some(reuse(0)));
    // Block 1 reads step 4 from then on, block 2 still step 0.
    assert_eq!(p.action(5, 1, A), Some(reuse(4)));
    assert_eq!(p.action(5, 2, A), Some(reuse(0)));
}

#[test]
fn mask_bits_and_presets() {
    let p = plan(&format!("{TINY}[[cache]]\nmask = \"11010 0_1|101\"\n"));
    assert_eq!(step_kinds(&p), "CCRCRRCCRC");
    assert_eq!(p.action(5, 0, A), Some(reuse(3)));
    let preset = plan(&format!("{TINY}[[cache]]\nmask = \"fast\"\n"));
    let expected: String = tcc_schedule::mask_preset("fast", 10)
        .unwrap()
        .iter()
        .map(|&c| if c { 'C' } else { 'R' })
        .collect();
    assert_eq!(step_kinds(&preset), expected);
}

#[test]
fn l2c_table_sets_each_cell_and_dot_keeps() {
    let text = format!(
        "{TINY}[[cache]]\nreuse = \"5\"\n[[cache]]\nbranches = \"attn\"\ntable = [\n{}]\n",
        [
            "111111", "011111", "101101", "111111", "111111", "1..... ", "111111", "111111",
            "111111", "000000",
        ]
        .iter()
        .map(|r| format!("  \"{r}\",\n"))
        .collect::<String>()
    );
    let p = plan(&text);
    assert_eq!(p.action(1, 0, A), Some(reuse(0)));
    assert_eq!(p.action(1, 1, A), Some(Action::Compute));
    assert_eq!(p.action(2, 1, A), Some(reuse(1)));
    assert_eq!(p.action(2, 4, A), Some(reuse(1)));
    assert_eq!(p.action(2, 0, A), Some(Action::Compute));
    // Row 5: block 0 computed by the table, blocks 1..6 keep the earlier
    // rule's reuse; mlp is untouched by the table.
    assert_eq!(p.action(5, 0, A), Some(Action::Compute));
    assert_eq!(p.action(5, 3, A), Some(reuse(4)));
    assert_eq!(p.action(5, 3, M), Some(reuse(4)));
    assert_eq!(p.action(9, 2, A), Some(reuse(8)));
    assert_eq!(p.action(9, 2, M), Some(Action::Compute));
}

#[test]
fn table_over_selected_blocks_only() {
    let rows = "  \"11\",\n".to_string() + &"  \"01\",\n".repeat(9);
    let p = plan(&format!(
        "{TINY}[[cache]]\nblocks = \"2, 4\"\ntable = [\n{rows}]\n"
    ));
    assert_eq!(p.action(3, 2, A), Some(reuse(0)));
    assert_eq!(p.action(3, 2, M), Some(reuse(0)));
    assert_eq!(p.action(3, 4, A), Some(Action::Compute));
    assert_eq!(p.action(3, 3, A), Some(Action::Compute));
}

#[test]
fn delta_dit_links_to_the_last_step_computing_the_whole_range() {
    // Step 1 reuses block 4's attention, so step 1 did not compute the whole
    // range 3..6: the delta at step 2 must read step 0.
    let p = plan(&format!(
        "{TINY}[[cache]]\nreuse = \"1\"\nblocks = \"4\"\nbranches = \"attn\"\n\
         [[cache]]\nreuse-delta = \"2, 4\"\nblocks = \"3..6\"\n\
         [[cache]]\nreuse-delta = \"7..\"\nblocks = \"..=1\"\n"
    ));
    let delta = |start, end, from| Action::ReuseDelta { start, end, from };
    for block in 3..6 {
        for b in [A, M] {
            assert_eq!(p.action(2, block, b), Some(delta(3, 6, 0)));
            assert_eq!(p.action(4, block, b), Some(delta(3, 6, 3)));
        }
    }
    assert_eq!(p.action(2, 2, A), Some(Action::Compute));
    assert_eq!(p.action(7, 0, M), Some(delta(0, 2, 6)));
    assert_eq!(p.action(9, 1, A), Some(delta(0, 2, 6)));
    assert_eq!(p.action(9, 2, A), Some(Action::Compute));
}

#[test]
fn a_later_rule_may_replace_a_whole_delta_range() {
    let p = plan(&format!(
        "{TINY}[[cache]]\nreuse-delta = \"1\"\nblocks = \"2..4\"\n[[cache]]\ncompute = \"1\"\n"
    ));
    assert!(p.steps[1].is_full());
    let e = error(&format!(
        "{TINY}[[cache]]\nreuse-delta = \"1\"\nblocks = \"2..4\"\n[[cache]]\ncompute = \"1\"\nblocks = \"3\"\n"
    ));
    assert!(
        e.contains("overrides part of the delta range 2..4 at step 1"),
        "{e}"
    );
}

#[test]
fn limits_warmup_cutoff_and_max_reuse() {
    let p = plan(&format!(
        "{TINY}[[cache]]\nreuse = \"1..\"\n[limits]\nwarmup = 2\ncutoff = 1\nmax-reuse = 3\n"
    ));
    assert_eq!(step_kinds(&p), "CCRRRCRRRC");
    assert_eq!(p.action(8, 0, A), Some(reuse(5)));
    let none = plan(&format!(
        "{TINY}[[cache]]\nreuse = \"1..\"\n[limits]\nmax-reuse = 0\n"
    ));
    assert_eq!(step_kinds(&none), "CCCCCCCCCC");
}

#[test]
fn max_reuse_forces_a_whole_delta_range() {
    // Block 3 is also reused on its own at step 1, so its run is one longer
    // than block 4's: at step 3 it alone exceeds max-reuse 2, and the whole
    // delta range 3..5 is computed there.
    let p = plan(&format!(
        "{TINY}[[cache]]\nreuse = \"1\"\nblocks = \"3\"\n[[cache]]\nreuse-delta = \"2..5\"\nblocks = \"3..5\"\n\
         [limits]\nmax-reuse = 2\n"
    ));
    for block in 3..5 {
        assert_eq!(p.action(3, block, A), Some(Action::Compute), "{block}");
    }
    assert_eq!(
        p.action(4, 4, M),
        Some(Action::ReuseDelta {
            start: 3,
            end: 5,
            from: 3
        })
    );
}

#[test]
fn tcc_marks_priors_on_calibrated_reuse_steps_only() {
    let p = plan(&format!(
        "{TINY}[[cache]]\nrefresh = \"every 3\"\n[calibration]\nsteps = \"1, 5\"\nalpha = 1.75\n"
    ));
    assert_eq!(p.calibration.method, CalibMethod::Tcc);
    assert_eq!(p.calibration.steps, vec![1, 5]);
    assert_eq!(p.calibration.alpha, 1.75);
    assert_eq!(
        p.action(1, 2, A),
        Some(Action::Reuse {
            from: 0,
            prior: true
        })
    );
    assert_eq!(
        p.action(5, 2, M),
        Some(Action::Reuse {
            from: 3,
            prior: true
        })
    );
    assert_eq!(p.action(2, 2, A), Some(reuse(0)));
    let calibrated: Vec<usize> = p
        .steps
        .iter()
        .filter(|s| s.is_calibrated())
        .map(|s| s.step)
        .collect();
    assert_eq!(calibrated, vec![1, 5]);
}

#[test]
fn calibration_defaults_to_every_reuse_step() {
    let p = plan(&format!(
        "{TINY}[[cache]]\nrefresh = \"every 4\"\n[calibration]\n"
    ));
    assert_eq!(p.calibration.steps, vec![1, 2, 3, 5, 6, 7, 9]);
    let none = plan(&format!(
        "{TINY}[[cache]]\nrefresh = \"every 4\"\n[calibration]\nmethod = \"none\"\nsteps = \"1\"\n"
    ));
    assert!(none.calibration.steps.is_empty());
    assert!(none.steps.iter().all(|s| !s.is_calibrated()));
    assert_eq!(plan(TINY).calibration, tcc_core::CalibrationSpec::default());
}

#[test]
fn calibration_errors() {
    let e = error(&format!(
        "{TINY}[[cache]]\nrefresh = \"every 3\"\n[calibration]\nsteps = \"0..3\"\n"
    ));
    assert!(e.contains("calibration step 0 is not a reuse step"), "{e}");
    let e = error(&format!(
        "{TINY}[[cache]]\nreuse-delta = \"1\"\nblocks = \"0..2\"\n[calibration]\nsteps = \"1\"\n"
    ));
    assert!(e.contains("only reuses block-range deltas"), "{e}");
    let e = error(&format!("{TINY}[calibration]\nalpha = 0.5\n"));
    assert!(e.contains("nothing to calibrate"), "{e}");
    let e = error(&format!(
        "{TINY}[[cache]]\nrefresh = \"every 3\"\n[calibration]\nalpha = -inf\nsamples = 0\n"
    ));
    assert!(e.contains("alpha is not a finite number"), "{e}");
    assert!(e.contains("no calibration samples"), "{e}");
    let e = error(&format!(
        "{TINY}[[cache]]\nrefresh = \"every 3\"\n[calibration]\nalpha = 3e38\n"
    ));
    assert!(e.contains("alpha 3e38 is out of range"), "{e}");
}

#[test]
fn sampler_defaults_follow_the_model_family() {
    let tiny = plan("[model]\nname = \"tiny\"\n").sampler;
    assert_eq!(
        (
            tiny.kind,
            tiny.steps,
            tiny.guidance_scale,
            tiny.cfg_order,
            tiny.guided_channels
        ),
        (SamplerKind::Ddim, 20, 1.5, CfgOrder::CondFirst, None)
    );
    let dit = plan("[model]\nname = \"dit-xl-2-256\"\n").sampler;
    assert_eq!(
        (dit.kind, dit.guided_channels),
        (SamplerKind::Ddim, Some(3))
    );
    let pixart = plan("[model]\nname = \"pixart-alpha-256\"\n").sampler;
    assert_eq!(
        (
            pixart.kind,
            pixart.guidance_scale,
            pixart.cfg_order,
            pixart.guided_channels
        ),
        (SamplerKind::DpmSolverPp, 4.5, CfgOrder::UncondFirst, None)
    );
    let set = plan(
        "[model]\nname = \"dit-xl-2-256\"\n[sampler]\nkind = \"ddpm\"\nsteps = 50\nguidance = 4\n\
         cfg-order = \"uncond-first\"\nguided-channels = \"all\"\n",
    )
    .sampler;
    assert_eq!(
        (
            set.kind,
            set.steps,
            set.guidance_scale,
            set.cfg_order,
            set.guided_channels
        ),
        (SamplerKind::Ddpm, 50, 4.0, CfgOrder::UncondFirst, None)
    );
}

#[test]
fn sampler_errors() {
    for (settings, needle) in [
        ("steps = 0", "0 sampling steps"),
        ("steps = 1001", "1001 sampling steps"),
        ("guidance = nan", "guidance scale is not a finite number"),
        ("eta = -1.0", "eta = -1"),
        ("eta = 1e300", "eta = 1e300 is out of range"),
        ("guidance = 1e300", "guidance scale 1e300 is out of range"),
        ("guidance = -2", "guidance scale -2 is out of range"),
        ("guided-channels = 4", "4 guided channels"),
        (
            "kind = \"ddpm\"\neta = 0.0",
            "`eta` given for the ddpm sampler",
        ),
    ] {
        let e = error(&format!(
            "[model]\nname = \"tiny\"\n[sampler]\n{settings}\n"
        ));
        assert!(e.contains(needle), "{settings}: {e}");
    }
}

#[test]
fn rule_errors_point_at_their_text() {
    for (rule, needle) in [
        (
            "reuse = \"0..2\"",
            "reuse with nothing cached: block 0 `attn` at step 0",
        ),
        ("reuse = \"1\"\nblocks = \"6\"", "block 6 is out of range"),
        (
            "reuse = \"1\"\nbranches = \"cross\"",
            "model `tiny` has no `cross` branch",
        ),
        ("compute = \"10\"", "step 10 is out of range"),
        ("compute = \"3..2\"", "empty range"),
        ("compute = \"step % 0 == 1\"", "`step % 0`"),
        ("compute = \"first 11\"", "more steps than there are"),
        ("mask = \"101\"", "mask has 3 steps"),
        ("mask = \"turbo\"", "unknown mask preset `turbo`"),
        ("table = [\"111111\"]", "table has 1 rows"),
        (
            "reuse-delta = \"1\"\nbranches = \"attn\"",
            "`branches` in a reuse-delta rule",
        ),
        (
            "reuse-delta = \"1\"\nblocks = \"none\"",
            "reuse-delta needs one contiguous block range",
        ),
        (
            "reuse-delta = \"0\"\nblocks = \"1..3\"",
            "blocks 1..3 reuse their delta at step 0",
        ),
    ] {
        let e = error(&format!("{TINY}[[cache]]\n{rule}\n"));
        assert!(e.contains(needle), "{rule}: {e}");
        assert!(e.contains("--> t.sched:"), "{e}");
    }
    for (limits, needle) in [
        ("warmup = 11", "warm-up of 11 steps"),
        ("cutoff = 12", "cut-off of 12 steps"),
    ] {
        let e = error(&format!("{TINY}[limits]\n{limits}\n"));
        assert!(e.contains(needle), "{limits}: {e}");
    }
}

#[test]
fn model_errors() {
    let e = error("[model]\nname = \"dit-xl-2\"\n");
    assert!(e.contains("unknown model `dit-xl-2`"), "{e}");
    let e = error("[model]\npath = \"nowhere\"\n");
    assert!(e.contains("cannot read the model at `nowhere`"), "{e}");
    assert!(e.contains("base/nowhere"), "{e}");
    assert!(!e.contains("hf:"), "{e}");
    // Hub sources are the `tcc` command's to download, not the compiler's.
    let e = error("[model]\npath = \"hf:org/name\"\n");
    assert!(e.contains("downloaded by the `tcc` command"), "{e}");
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The configs were written by diffusers' `save_config`
/// (fixtures/gen_configs.py): the shape read back must be the one the
/// script asked for.
#[test]
fn model_directories_in_diffusers_layout() {
    let text = "[model]\npath = \"dit-small\"\n[[cache]]\nrefresh = \"every 2\"\n";
    let s = tcc_schedule::parse("x.sched", text).unwrap();
    let p = compile(&s, &fixtures()).unwrap();
    let m = &p.model;
    assert_eq!(m.name, "dit-small");
    assert_eq!(m.family, ModelFamily::Dit);
    assert_eq!(
        (m.depth, m.hidden, m.heads, m.patch, m.input_size),
        (3, 16, 2, 2, 8)
    );
    assert_eq!(
        (m.in_channels, m.out_channels, m.num_classes, m.mlp_ratio),
        (4, 8, 10, 4.0)
    );
    assert_eq!(p.steps[1].actions.len(), 3);
    // A latent DiT guides 3 channels, like DiT's own sampler.
    assert_eq!(p.sampler.guided_channels, Some(3));
    // Without `weights`, the weights are the model directory's.
    assert_eq!(
        p.weights.as_deref(),
        Some(fixtures().join("dit-small").display().to_string().as_str())
    );

    let text = "[model]\npath = \"pixart-pipeline\"\nweights = \"w.safetensors\"\n";
    let s = tcc_schedule::parse("x.sched", text).unwrap();
    let p = compile(&s, &fixtures()).unwrap();
    let m = &p.model;
    assert_eq!(m.family, ModelFamily::Pixart);
    assert_eq!(
        (m.depth, m.hidden, m.heads, m.in_channels, m.out_channels),
        (2, 16, 2, 4, 8)
    );
    assert_eq!(
        (m.caption_dim, m.caption_tokens, m.num_classes),
        (12, 120, 0)
    );
    assert_eq!(p.branches(), &[A, Branch::Cross, M]);
    assert_eq!(
        p.weights.as_deref(),
        Some(
            fixtures()
                .join("w.safetensors")
                .display()
                .to_string()
                .as_str()
        )
    );
}

#[test]
fn compile_file_resolves_against_the_file_directory() {
    let dir = tempfile_dir();
    let path = dir.join("s.sched");
    std::fs::write(&path, "[model]\nname = \"tiny\"\nweights = \"w.pt\"\n").unwrap();
    let p = compile_file(&path).unwrap();
    assert_eq!(p.weights, Some(dir.join("w.pt").display().to_string()));
    assert_eq!(p.source, path.display().to_string());
    std::fs::write(
        &path,
        "[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"0\"\n",
    )
    .unwrap();
    let e = compile_file(&path).unwrap_err();
    assert!(matches!(e, CompileError::Invalid { .. }));
    assert!(
        e.to_string()
            .contains(&format!("--> {}:4:10", path.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcc-compile-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_shipped_schedule_compiles() {
    let dir = repo_root().join("schedules");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sched") {
            compile_file(&path).unwrap_or_else(|e| panic!("{}", e.render()));
            names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    for required in [
        "full",
        "fora2",
        "fora3",
        "fora2.5",
        "delta-dit",
        "l2c-example",
        "mask-fast",
        "dit-xl2-fora2-tcc",
        "dit-xl2-l2c-tcc",
        "pixart-fora3-tcc",
    ] {
        assert!(names.iter().any(|n| n == required), "missing {required}");
    }
}

#[test]
fn paper_presets_match_the_spec_settings() {
    let p = compile_file(&repo_root().join("schedules/dit-xl2-fora2-tcc.sched")).unwrap();
    assert_eq!(
        (p.model.depth, p.sampler.kind, p.sampler.steps),
        (28, SamplerKind::Ddim, 20)
    );
    assert_eq!((p.sampler.guidance_scale, p.sampler.eta), (1.5, 0.0));
    assert_eq!(step_kinds(&p), "CR".repeat(10));
    assert_eq!(p.calibration.steps, vec![1, 3, 5, 7]);
    assert_eq!(p.calibration.alpha, 1.75);

    let p = compile_file(&repo_root().join("schedules/pixart-fora3-tcc.sched")).unwrap();
    assert_eq!(p.sampler.kind, SamplerKind::DpmSolverPp);
    assert_eq!((p.sampler.steps, p.sampler.guidance_scale), (20, 4.5));
    assert_eq!(&step_kinds(&p)[..7], "CRRCRRC");
    assert_eq!(p.calibration.steps, vec![1, 2, 4, 5]);
    assert_eq!(p.calibration.alpha, 0.5);
    assert_eq!(p.calibration.pooled_half, tcc_core::CfgHalf::Uncond);
}

fn partial(from: usize, fresh: usize) -> Action {
    Action::Partial {
        from,
        fresh,
        prior: false,
    }
}

fn tiny_tokens() -> usize {
    tcc_core::ModelShape::preset("tiny").unwrap().tokens()
}

#[test]
fn partial_rule_computes_floor_of_ratio_times_tokens() {
    let t = tiny_tokens();
    let p = plan(&format!(
        "{TINY}[[cache]]\nrefresh = \"every 3\"\n[[cache]]\npartial = \"except every 3\"\nbranches = \"mlp\"\nfresh-ratio = 0.3\n"
    ));
    let fresh = (0.3 * t as f64).floor() as usize;
    assert_eq!(p.action(1, 0, M), Some(partial(0, fresh)));
    assert_eq!(p.action(2, 5, M), Some(partial(0, fresh)));
    assert_eq!(p.action(4, 2, M), Some(partial(3, fresh)));
    assert_eq!(p.action(1, 0, A), Some(reuse(0)));
    assert_eq!(p.action(3, 0, M), Some(Action::Compute));
    let toca = p.toca.as_ref().unwrap();
    assert_eq!(toca.score, tcc_core::TokenScore::Attention);
    assert_eq!((toca.fresh_weight, toca.spread_bonus), (0.25, 0.6));
    // Two cache steps after each refresh: N = 3.
    assert_eq!(toca.interval, 3.0);
    assert!(p.has_partial());
    // The attention of every block is summed at the refresh steps only.
    let scored = p.attention_score_steps();
    for (s, row) in scored.iter().enumerate() {
        assert!(
            row.iter().all(|&x| x == (s % 3 == 0 && s < 9)),
            "step {s}: {row:?}"
        );
    }
}

#[test]
fn fresh_ratio_one_compiles_to_full_computation_and_zero_to_fora() {
    let fora = format!("{TINY}[[cache]]\nrefresh = \"every 2\"\n");
    let with = |r: &str| {
        plan(&format!(
            "{fora}[[cache]]\npartial = \"except every 2\"\nfresh-ratio = {r}\n"
        ))
    };
    assert_eq!(with("0").steps, plan(&fora).steps);
    assert_eq!(with("0").toca, None);
    assert_eq!(with("1").steps, plan(TINY).steps);
    assert_eq!(with("1.0").toca, None);
    // Just below 1 leaves one token stale.
    let t = tiny_tokens();
    let r = 1.0 - 0.5 / t as f64;
    assert_eq!(
        with(&r.to_string()).action(1, 0, A),
        Some(partial(0, t - 1))
    );
}

#[test]
fn toca_ratio_schedule_varies_by_step_block_and_branch() {
    let t = tiny_tokens();
    let text = format!(
        "{TINY}[[cache]]\nrefresh = \"every 2\"\n[[cache]]\npartial = \"except every 2\"\nfresh-ratio = 0.1\nratio-schedule = \"toca\"\n"
    );
    let p = plan(&text);
    // Attention's module factor is 0: reused whole.
    assert_eq!(p.action(1, 0, A), Some(reuse(0)));
    let expect = |step: usize, block: usize| {
        let f = (1.4 - 0.8 * step as f64 / 10.0) * (1.8 - 1.6 * block as f64 / 5.0) * 2.5;
        ((0.1 * f).clamp(0.0, 1.0) * t as f64).floor() as usize
    };
    for (step, block) in [(1, 0), (1, 5), (9, 0), (9, 3)] {
        let want = expect(step, block);
        let got = p.action(step, block, M).unwrap();
        match want {
            0 => assert_eq!(got, reuse(step - 1)),
            k => assert_eq!(got, partial(step - 1, k), "step {step} block {block}"),
        }
    }
    // Counting down reverses the step factor.
    let down = plan(&text.replace("\"toca\"", "\"toca-countdown\""));
    let k = |p: &Plan, s| match p.action(s, 2, M).unwrap() {
        Action::Partial { fresh, .. } => fresh,
        _ => 0,
    };
    assert!(k(&p, 1) > k(&p, 9));
    assert!(k(&down, 1) < k(&down, 9));
    // 10 steps: sampling step 1 is step 8 counted down.
    assert_eq!(k(&down, 1), expect(8, 2));
}

#[test]
fn toca_settings_and_limits() {
    let p = plan(&format!(
        "{TINY}[[cache]]\nrefresh = \"every 4\"\n[[cache]]\npartial = \"except every 4\"\nfresh-ratio = 0.2\n[limits]\nmax-reuse = 1\n[toca]\nscore = \"random\"\nfresh-weight = 0.5\nspread-bonus = 0\ninterval = 2.5\nseed = 9\n"
    ));
    let t = p.toca.clone().unwrap();
    assert_eq!(t.score, tcc_core::TokenScore::Random);
    assert_eq!(
        (t.fresh_weight, t.spread_bonus, t.interval, t.seed),
        (0.5, 0.0, 2.5, 9)
    );
    // max-reuse counts partial steps: steps 1 partial, 2 computed, 3 partial.
    assert!(matches!(
        p.action(1, 0, M),
        Some(Action::Partial { from: 0, .. })
    ));
    assert_eq!(p.action(2, 0, M), Some(Action::Compute));
    assert!(matches!(
        p.action(3, 0, M),
        Some(Action::Partial { from: 2, .. })
    ));
    assert!(p
        .attention_score_steps()
        .iter()
        .all(|r| r.iter().all(|&x| !x)));
    // The plan's hash covers the ToCa settings; plans without keep theirs.
    let q = plan(&format!(
        "{TINY}[[cache]]\nrefresh = \"every 4\"\n[[cache]]\npartial = \"except every 4\"\nfresh-ratio = 0.2\n[limits]\nmax-reuse = 1\n[toca]\nscore = \"random\"\nfresh-weight = 0.5\nspread-bonus = 0\ninterval = 2.5\nseed = 10\n"
    ));
    assert_ne!(p.hash(), q.hash());
    let json = serde_json::to_string(&plan(TINY)).unwrap();
    assert!(!json.contains("toca"), "{json}");
}

#[test]
fn partial_rules_and_delta_ranges_do_not_mix() {
    let e = error(&format!(
        "{TINY}[[cache]]\nreuse-delta = \"except every 2\"\nblocks = \"1..4\"\n[[cache]]\npartial = \"1\"\nblocks = \"2\"\nfresh-ratio = 0.5\n"
    ));
    assert!(e.contains("overrides part of the delta range"), "{e}");
}

/// DiT-XL/2 with CFG, by hand: a partial cell costs the branch on its
/// fresh tokens plus gather, merge and scoring; the full attention whose
/// sums a later partial cell reads pays `heads T²` more.
#[test]
fn partial_cost_counts_fresh_tokens_and_overheads() {
    let p = plan("[model]\nname = \"dit-xl-2-256\"\n[sampler]\nsteps = 4\nguidance = 1.5\n[[cache]]\nrefresh = \"every 2\"\n[[cache]]\npartial = \"1\"\nfresh-ratio = 0.25\n");
    let cost = crate::PlanCost::of(&p);
    let (t, d, f, h, k) = (256u64, 1152u64, 4608u64, 16u64, 64u64);
    let over = k * d + t * d + 8 * t;
    let attn = |n: u64| 4 * n * d * d + 2 * n * n * d;
    assert_eq!(
        cost.steps[1].actions[0],
        vec![2 * (attn(k) + over), 2 * (2 * k * d * f + over)]
    );
    assert_eq!(cost.steps[0].actions[27][0], 2 * (attn(t) + h * t * t));
    // Step 3 reuses whole: nothing reads step 2's attention sums.
    assert_eq!(cost.steps[2].actions[0][0], 2 * attn(t));
    assert_eq!(cost.steps[3].actions[0], vec![0, 0]);
    assert!(p.show().contains("p partial"), "{}", p.show());
}

/// TCC on ToCa: the partial cells of the calibrated steps carry a prior
/// (on their stale tokens), like the whole reuses beside them; the prior
/// costs one GEMM per cell; plans without priors keep their serialised
/// form (and so their hash).
#[test]
fn tcc_on_toca_marks_the_partial_cells_of_calibrated_steps() {
    let toca = format!(
        "{TINY}[[cache]]\nrefresh = \"every 2\"\n[[cache]]\npartial = \"except every 2\"\nbranches = \"mlp\"\nfresh-ratio = 0.3\n"
    );
    let fresh = (0.3 * tiny_tokens() as f64).floor() as usize;
    let p = plan(&format!(
        "{toca}[calibration]\nsteps = \"1, 5\"\nalpha = 0.5\n"
    ));
    let with_prior = Action::Partial {
        from: 0,
        fresh,
        prior: true,
    };
    assert_eq!(p.action(1, 0, M), Some(with_prior));
    assert_eq!(
        p.action(1, 3, A),
        Some(Action::Reuse {
            from: 0,
            prior: true
        })
    );
    assert_eq!(p.action(3, 0, M), Some(partial(2, fresh)));
    assert!(with_prior.has_prior() && !partial(0, fresh).has_prior());
    assert_eq!(with_prior.without_prior(), partial(0, fresh));
    assert!(p.has_partial_prior());
    let shown = p.show();
    assert!(shown.contains("P partial + TCC prior"), "{shown}");
    assert!(shown.contains("partly computed (12 with prior)"), "{shown}");
    // The prior adds its GEMM to the partial cell's cost.
    let plain = plan(&toca);
    let (cost, plain_cost) = (crate::PlanCost::of(&p), crate::PlanCost::of(&plain));
    let unit = crate::cost::UnitCosts::new(&p.model, &p.sampler);
    assert_eq!(
        cost.steps[1].actions[0][1],
        plain_cost.steps[1].actions[0][1] + unit.prior
    );
    // Without `steps`, every partial step is calibrated.
    let all = plan(&format!("{toca}[calibration]\n"));
    assert_eq!(all.calibration.steps, vec![1, 3, 5, 7, 9]);
    // Uncalibrated partial cells serialise as before.
    let json = serde_json::to_string(&plain).unwrap();
    let reuses = plain
        .steps
        .iter()
        .flat_map(|s| &s.actions)
        .flatten()
        .filter(|a| matches!(a, Action::Reuse { .. }))
        .count();
    assert!(json.contains("\"partial\""), "{json}");
    assert_eq!(json.matches("\"prior\":false").count(), reuses, "{json}");
    assert!(serde_json::to_string(&p)
        .unwrap()
        .contains("\"prior\":true"));
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plain);
}

/// `conditions` pooling keeps a mean per token position, and ToCa's stale
/// set differs per sample: refused where a calibrated step has a partial
/// cell, allowed where the calibrated steps only reuse whole.
#[test]
fn conditions_pooling_is_refused_on_calibrated_partial_cells_only() {
    let toca = format!(
        "{TINY}[[cache]]\nrefresh = \"every 2\"\n[[cache]]\npartial = \"1\"\nfresh-ratio = 0.3\n"
    );
    let e = error(&format!(
        "{toca}[calibration]\npooling = \"conditions\"\nsteps = \"1, 3\"\n"
    ));
    assert!(e.contains("`conditions` pooling cannot calibrate"), "{e}");
    assert!(e.contains("calibrated step 1"), "{e}");
    let p = plan(&format!(
        "{toca}[calibration]\npooling = \"conditions\"\nsteps = \"3\"\n"
    ));
    assert_eq!(p.calibration.steps, vec![3]);
}
