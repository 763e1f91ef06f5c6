//! The parser: what a schedule's text becomes, and where its errors point.

use tcc_core::{
    Branch, CalibMethod, CalibMode, CfgHalf, CfgOrder, Pooling, PriorKind, SamplerKind,
};
use tcc_schedule::eval::eval_selector;
use tcc_schedule::*;

fn parse_ok(text: &str) -> Schedule {
    parse("t.sched", text).unwrap_or_else(|d| panic!("{}", d.render("t.sched", text)))
}

fn parse_err(text: &str) -> Diagnostics {
    match parse("t.sched", text) {
        Ok(s) => panic!("parsed, but should not have: {s:?}"),
        Err(d) => d,
    }
}

/// The selector of a one-rule `reuse = "..."` schedule.
fn sel(text: &str) -> Selector {
    let s = parse_ok(&format!(
        "[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"{text}\"\n"
    ));
    match &s.cache[0].value.action.value {
        RuleAction::Reuse(sel) => sel.clone(),
        other => panic!("{other:?}"),
    }
}

/// The steps of 0..len a selector picks.
fn steps(text: &str, len: usize) -> Vec<usize> {
    let picked = eval_selector(&sel(text), IndexKind::Step, len).unwrap();
    (0..len).filter(|&i| picked[i]).collect()
}

fn node(n: SelNode) -> Selector {
    Spanned::unplaced(n)
}

fn idx(i: u64) -> Selector {
    node(SelNode::Index(i))
}

#[test]
fn a_full_schedule() {
    let text = r#"
# comment
[model]
name = "dit-xl-2-256"
weights = "w/DiT-XL-2-256x256.pt"

[sampler]
kind = "dpm-solver++"
steps = 25
guidance = 4
eta = 0.0
cfg-order = "uncond-first"
guided-channels = "all"

[[cache]]
refresh = "every 2.5"
branches = "all except cross"

[[cache]]
reuse-delta = "1..=9"
blocks = "20..28"

[[cache]]
mask = "fast"

[limits]
warmup = 2
cutoff = 1
max-reuse = 3

[calibration]
method = "tcc"
mode = "one-shot"
steps = "1, 3"
alpha = 1.75
prior = "scale-shift"
pooling = "conditions"
pooled-half = "uncond"
samples = 128
seed = 7
"#;
    let s = parse_ok(text);
    assert_eq!(s.source_name, "t.sched");
    assert_eq!(
        s.model.value.source.value,
        ModelSource::Preset("dit-xl-2-256".into())
    );
    assert_eq!(
        s.model.value.weights.as_ref().unwrap().value,
        "w/DiT-XL-2-256x256.pt"
    );
    let sampler = &s.sampler.as_ref().unwrap().value;
    assert_eq!(sampler.kind.unwrap().value, SamplerKind::DpmSolverPp);
    assert_eq!(sampler.steps.unwrap().value, 25);
    assert_eq!(sampler.guidance.unwrap().value, 4.0);
    assert_eq!(sampler.eta.unwrap().value, 0.0);
    assert_eq!(sampler.cfg_order.unwrap().value, CfgOrder::UncondFirst);
    assert_eq!(sampler.guided_channels.unwrap().value, GuidedChannels::All);

    assert_eq!(s.cache.len(), 3);
    let r0 = &s.cache[0].value;
    assert_eq!(
        r0.action.value,
        RuleAction::Refresh(node(SelNode::Every { n: 2.5, from: None }))
    );
    let br = &r0.branches.as_ref().unwrap().value;
    assert_eq!(br.include[0].value, BranchItem::All);
    assert_eq!(br.except[0].value, BranchItem::One(Branch::Cross));
    let r1 = &s.cache[1].value;
    assert_eq!(
        r1.action.value,
        RuleAction::ReuseDelta(node(SelNode::Range {
            start: Some(1),
            end: Some(9),
            inclusive: true
        }))
    );
    assert_eq!(
        r1.blocks.as_ref().unwrap().value,
        SelNode::Range {
            start: Some(20),
            end: Some(28),
            inclusive: false
        }
    );
    assert_eq!(
        s.cache[2].value.action.value,
        RuleAction::Mask(Mask::Preset(Spanned::unplaced("fast".into())))
    );

    let l = &s.limits.as_ref().unwrap().value;
    assert_eq!(
        (
            l.warmup.unwrap().value,
            l.cutoff.unwrap().value,
            l.max_reuse.unwrap().value
        ),
        (2, 1, 3)
    );
    let c = &s.calibration.as_ref().unwrap().value;
    assert_eq!(c.method.unwrap().value, CalibMethod::Tcc);
    assert_eq!(c.mode.unwrap().value, CalibMode::OneShot);
    assert_eq!(
        c.steps.as_ref().unwrap().value,
        SelNode::Union(vec![idx(1), idx(3)])
    );
    assert_eq!(c.alpha.unwrap().value, 1.75);
    assert_eq!(c.prior.unwrap().value, PriorKind::ScaleShift);
    assert_eq!(c.pooling.unwrap().value, Pooling::Conditions);
    assert_eq!(c.pooled_half.unwrap().value, CfgHalf::Uncond);
    assert_eq!((c.samples.unwrap().value, c.seed.unwrap().value), (128, 7));

    // Spans point at the text.
    assert_eq!(&text[s.model.value.source.span.range()], "\"dit-xl-2-256\"");
    assert_eq!(&text[r1.blocks.as_ref().unwrap().span.range()], "20..28");
    assert_eq!(&text[s.cache[1].span.range()], "[[cache]]");
}

#[test]
fn selector_precedence() {
    // except < `,` < and
    assert_eq!(
        sel("0..10, 15 except 3").value,
        SelNode::Except {
            base: Box::new(node(SelNode::Union(vec![
                node(SelNode::Range {
                    start: Some(0),
                    end: Some(10),
                    inclusive: false
                }),
                idx(15)
            ]))),
            removed: Box::new(idx(3)),
        }
    );
    assert_eq!(
        sel("1 and 2, 3").value,
        SelNode::Union(vec![node(SelNode::Intersect(vec![idx(1), idx(2)])), idx(3)])
    );
    assert_eq!(
        sel("1 and (2, 3)").value,
        SelNode::Intersect(vec![idx(1), node(SelNode::Union(vec![idx(2), idx(3)]))])
    );
    // A leading `except` means `all except`; chains are left-associative.
    assert_eq!(
        sel("except 1 except 2").value,
        SelNode::Except {
            base: Box::new(node(SelNode::Except {
                base: Box::new(node(SelNode::All)),
                removed: Box::new(idx(1)),
            })),
            removed: Box::new(idx(2)),
        }
    );
    assert_eq!(sel("(((4)))").value, SelNode::Index(4));
}

#[test]
fn selector_atoms() {
    assert_eq!(
        sel("every 3 from 1").value,
        SelNode::Every {
            n: 3.0,
            from: Some(1)
        }
    );
    assert_eq!(
        sel("step >= 12").value,
        SelNode::Compare {
            op: CmpOp::Ge,
            value: 12
        }
    );
    assert_eq!(
        sel("step % 4 != 0").value,
        SelNode::Modulo {
            modulus: 4,
            remainder: 0,
            equal: false
        }
    );
    assert_eq!(sel("first 3").value, SelNode::First(3));
    assert_eq!(sel("last 2").value, SelNode::Last(2));
    assert_eq!(sel("none").value, SelNode::None);
    assert_eq!(
        sel("..5").value,
        SelNode::Range {
            start: None,
            end: Some(5),
            inclusive: false
        }
    );
    assert_eq!(
        sel("..=5").value,
        SelNode::Range {
            start: None,
            end: Some(5),
            inclusive: true
        }
    );
}

#[test]
fn selector_sets() {
    assert_eq!(steps("all", 4), vec![0, 1, 2, 3]);
    assert_eq!(steps("none", 4), Vec::<usize>::new());
    assert_eq!(steps("0..28", 28).len(), 28);
    assert_eq!(steps("12..=18", 20), vec![12, 13, 14, 15, 16, 17, 18]);
    assert_eq!(steps("1, 3, 5", 6), vec![1, 3, 5]);
    assert_eq!(steps("every 3", 10), vec![0, 3, 6, 9]);
    assert_eq!(steps("every 2.5", 20), vec![0, 3, 5, 8, 10, 13, 15, 18]);
    assert_eq!(steps("every 4 from 1", 12), vec![1, 5, 9]);
    assert_eq!(steps("except every 3", 7), vec![1, 2, 4, 5]);
    assert_eq!(steps("5..", 8), vec![5, 6, 7]);
    assert_eq!(steps("..=2", 8), vec![0, 1, 2]);
    assert_eq!(steps("step < 3", 8), vec![0, 1, 2]);
    assert_eq!(steps("step % 3 == 1", 8), vec![1, 4, 7]);
    assert_eq!(steps("first 2, last 2", 8), vec![0, 1, 6, 7]);
    assert_eq!(
        steps("..10 and step % 2 == 1 except 5", 20),
        vec![1, 3, 7, 9]
    );
    assert_eq!(steps("(1, 2) and (2, 3)", 5), vec![2]);
}

#[test]
fn branch_selectors() {
    let branches = |text: &str| {
        let s = parse_ok(&format!(
            "[model]\nname = \"x\"\n[[cache]]\nreuse = \"1\"\nbranches = \"{text}\"\n"
        ));
        let b = s.cache[0].value.branches.clone().unwrap();
        let pick = |model: &[Branch]| eval::eval_branches(&b, model, "m");
        (
            pick(&[Branch::Attn, Branch::Mlp]),
            pick(&[Branch::Attn, Branch::Cross, Branch::Mlp]),
        )
    };
    let (dit, pixart) = branches("attn, mlp");
    assert_eq!(dit.unwrap(), vec![Branch::Attn, Branch::Mlp]);
    assert_eq!(pixart.unwrap(), vec![Branch::Attn, Branch::Mlp]);
    let (dit, pixart) = branches("except mlp");
    assert_eq!(dit.unwrap(), vec![Branch::Attn]);
    assert_eq!(pixart.unwrap(), vec![Branch::Attn, Branch::Cross]);
    let (dit, pixart) = branches("cross");
    assert!(dit.unwrap_err().message.contains("no `cross` branch"));
    assert_eq!(pixart.unwrap(), vec![Branch::Cross]);
}

#[test]
fn masks_and_table_rows() {
    let s = parse_ok(
        "[model]\nname = \"tiny\"\n[[cache]]\nmask = \"10 01_1|0\"\n[[cache]]\ntable = [\"1.0 1\", \"\"]\n",
    );
    let RuleAction::Mask(Mask::Bits(bits)) = &s.cache[0].value.action.value else {
        panic!()
    };
    let bits: Vec<bool> = bits.iter().map(|b| b.value).collect();
    assert_eq!(bits, vec![true, false, false, true, true, false]);
    let RuleAction::Table(rows) = &s.cache[1].value.action.value else {
        panic!()
    };
    let cells: Vec<Cell> = rows[0].value.cells.iter().map(|c| c.value).collect();
    assert_eq!(
        cells,
        vec![Cell::Compute, Cell::Keep, Cell::Reuse, Cell::Compute]
    );
    assert!(rows[1].value.cells.is_empty());
}

/// The text a diagnostic's span covers.
fn pointed<'a>(text: &'a str, d: &Diagnostics) -> &'a str {
    &text[d.iter().next().unwrap().span.range()]
}

#[test]
fn selector_errors_point_inside_the_string() {
    let text = "[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"1, 3 x\"\n";
    let d = parse_err(text);
    assert_eq!(pointed(text, &d), "x");
    let rendered = d.render("t.sched", text);
    assert!(rendered.contains("--> t.sched:4:15"), "{rendered}");

    // Multi-line and literal strings map too.
    let text = "[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"\"\"\n1,\n  2 3\"\"\"\n";
    let d = parse_err(text);
    assert_eq!(pointed(text, &d), "3");
    assert!(d.render("t.sched", text).contains("--> t.sched:6:5"));
    let text = "[model]\nname = \"tiny\"\n[[cache]]\nblocks = 'block < 2 or 3'\nreuse = \"1\"\n";
    assert_eq!(pointed(text, &parse_err(text)), "or");

    // With an escape in the string, the whole string is pointed at.
    let text = "[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"1,\\t?\"\n";
    assert_eq!(pointed(text, &parse_err(text)), "\"1,\\t?\"");
}

#[test]
fn schema_errors() {
    let cases = [
        (
            "[model]\nname = \"tiny\"\n[modle]\n",
            "unknown section `modle`",
            "modle",
        ),
        (
            "[model]\nname = \"tiny\"\nsize = 3\n",
            "unknown key `size` in [model]",
            "size",
        ),
        (
            "[model]\nname = \"tiny\"\n[sampler]\nsteps = 2\nsteps = 3\n",
            "duplicate key",
            "steps",
        ),
        (
            "[model]\nname = \"tiny\"\n[sampler]\nsteps = \"20\"\n",
            "expected an integer, found a string",
            "\"20\"",
        ),
        (
            "[model]\nname = \"tiny\"\n[sampler]\nsteps = -3\n",
            "expected a non-negative integer",
            "-3",
        ),
        (
            "[model]\nname = \"tiny\"\n[sampler]\nkind = \"dpm\"\n",
            "unknown value \"dpm\"",
            "\"dpm\"",
        ),
        (
            "[model]\nname = \"tiny\"\npath = \"x\"\n",
            "`path` given together with `name`",
            "path",
        ),
        (
            "[model]\nweights = \"w\"\n",
            "[model] names no model",
            "[model]",
        ),
        (
            "[model]\nname = \"tiny\"\n[[cache]]\nblocks = \"1\"\n",
            "cache rule without an action",
            "[[cache]]",
        ),
        (
            "[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"1\"\nmask = \"1\"\n",
            "a cache rule has one action, found `reuse` and `mask`",
            "mask",
        ),
        (
            "[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"block > 1\"\n",
            "`block` in a step selector",
            "block",
        ),
        (
            "[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"99999999999999999999\"\n",
            "number too large",
            "99999999999999999999",
        ),
        ("model = \"tiny\"\n", "`model` must be a section", "model"),
        ("[sampler]\nsteps = 3\n", "missing [model] section", ""),
    ];
    for (text, message, at) in cases {
        let d = parse_err(text);
        let first = d.iter().next().unwrap();
        assert!(first.message.contains(message), "{text}: {}", first.message);
        assert_eq!(pointed(text, &d), at, "{text}");
    }
}

#[test]
fn several_errors_are_reported_in_source_order() {
    let text = "[model]\nname = \"tiny\"\nfoo = 1\n[sampler]\nbar = 2\n[[cache]]\nreuse = \"x\"\n";
    let d = parse_err(text);
    let starts: Vec<usize> = d.iter().map(|d| d.span.start).collect();
    assert_eq!(d.len(), 3);
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
    let text = format!("[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"{deep}\"\n");
    let d = parse_err(&text);
    assert!(d
        .iter()
        .next()
        .unwrap()
        .message
        .contains("nested too deeply"));
    let chain = "1".to_string() + &" except 1".repeat(5000);
    let text = format!("[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"{chain}\"\n");
    parse_err(&text);
}

#[test]
fn render_matches_rustc_layout() {
    let text = "[model]\nname = \"tiny\"\n[[cache]]\nreuse = \"1, 3 x\"\n";
    let d = parse_err(text);
    assert_eq!(
        d.render("f.sched", text),
        "error: invalid step selector: unexpected `x`\n \
         --> f.sched:4:15\n  \
         |\n\
         4 | reuse = \"1, 3 x\"\n  \
         |               ^ expected end of text, `except`, `and`, `,`, `..=` or `..`\n"
    );
}

#[test]
fn printing_the_shipped_schedules_keeps_their_meaning() {
    fn walk(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "sched") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schedules"),
        &mut files,
    );
    assert!(files
        .iter()
        .any(|p| p.ends_with("study/fora3-affine.sched")));
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let s = parse_ok(&text);
        let printed = print(&s);
        assert_eq!(parse_ok(&printed), s, "{}", path.display());
        // Canonical: printing again changes nothing.
        assert_eq!(print(&parse_ok(&printed)), printed);
    }
}
