//! Properties of the parser and the printer over generated schedules:
//! printing then parsing is the identity, and no input makes the parser
//! panic.

use proptest::prelude::*;
use tcc_core::{
    Branch, CalibMethod, CalibMode, CfgHalf, CfgOrder, Pooling, PriorKind, RatioSchedule,
    SamplerKind, Selection, TokenScore,
};
use tcc_schedule::*;

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::unplaced(v)
}

/// Non-negative integers a TOML file can hold (TOML integers are i64).
fn toml_uint() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..40, 0..=i64::MAX as u64]
}

fn toml_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        -10.0f64..10.0,
        any::<f64>().prop_filter("not NaN", |x| !x.is_nan()),
        Just(f64::INFINITY),
        Just(0.5),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9./_-]{0,12}",
        any::<String>(),
        Just("a \"quoted\" \\ path\n\t\u{7f}".to_string()),
    ]
}

/// `every N` numbers: non-negative, written in decimal by the printer.
fn every_n() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u32..50).prop_map(f64::from),
        (0u32..500).prop_map(|k| f64::from(k) / 10.0),
        0.0f64..1e6,
    ]
}

fn leaf() -> impl Strategy<Value = SelNode> {
    let cmp = prop_oneof![
        Just(CmpOp::Lt),
        Just(CmpOp::Le),
        Just(CmpOp::Gt),
        Just(CmpOp::Ge),
        Just(CmpOp::Eq),
        Just(CmpOp::Ne),
    ];
    prop_oneof![
        Just(SelNode::All),
        Just(SelNode::None),
        any::<u64>().prop_map(SelNode::Index),
        (
            proptest::option::of(0u64..30),
            proptest::option::of(0u64..30)
        )
            .prop_map(|(start, end)| SelNode::Range {
                start,
                end,
                inclusive: false
            }),
        (proptest::option::of(0u64..30), 0u64..30).prop_map(|(start, end)| SelNode::Range {
            start,
            end: Some(end),
            inclusive: true
        }),
        (every_n(), proptest::option::of(0u64..30))
            .prop_map(|(n, from)| SelNode::Every { n, from }),
        (0u64..30).prop_map(SelNode::First),
        (0u64..30).prop_map(SelNode::Last),
        (cmp, any::<u64>()).prop_map(|(op, value)| SelNode::Compare { op, value }),
        (0u64..10, 0u64..10, any::<bool>()).prop_map(|(modulus, remainder, equal)| {
            SelNode::Modulo {
                modulus,
                remainder,
                equal,
            }
        }),
    ]
}

pub fn selector() -> impl Strategy<Value = Selector> {
    leaf().prop_map(sp).prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 2..4).prop_map(SelNode::Union),
            proptest::collection::vec(inner.clone(), 2..4).prop_map(SelNode::Intersect),
            (inner.clone(), inner).prop_map(|(base, removed)| SelNode::Except {
                base: Box::new(base),
                removed: Box::new(removed),
            }),
        ]
        .prop_map(sp)
    })
}

fn branch_item() -> impl Strategy<Value = Spanned<BranchItem>> {
    prop_oneof![
        Just(BranchItem::All),
        Just(BranchItem::One(Branch::Attn)),
        Just(BranchItem::One(Branch::Cross)),
        Just(BranchItem::One(Branch::Mlp)),
    ]
    .prop_map(sp)
}

fn rule() -> impl Strategy<Value = Spanned<CacheRule>> {
    let cell = prop_oneof![Just(Cell::Compute), Just(Cell::Reuse), Just(Cell::Keep)];
    let row =
        proptest::collection::vec(cell.prop_map(sp), 0..8).prop_map(|cells| sp(TableRow { cells }));
    let action = prop_oneof![
        selector().prop_map(RuleAction::Compute),
        selector().prop_map(RuleAction::Reuse),
        selector().prop_map(RuleAction::Refresh),
        selector().prop_map(RuleAction::ReuseDelta),
        proptest::collection::vec(any::<bool>().prop_map(sp), 1..30)
            .prop_map(|bits| RuleAction::Mask(Mask::Bits(bits))),
        "[a-zA-Z][a-zA-Z0-9_-]{0,8}".prop_map(|n| RuleAction::Mask(Mask::Preset(sp(n)))),
        proptest::collection::vec(row, 0..5).prop_map(RuleAction::Table),
        selector().prop_map(RuleAction::Partial),
    ];
    let branches = (
        proptest::collection::vec(branch_item(), 1..3),
        proptest::collection::vec(branch_item(), 0..3),
    )
        .prop_map(|(include, except)| sp(BranchSelector { include, except }));
    let schedules =
        proptest::option::of(proptest::sample::select(RatioSchedule::ALL).prop_map(|(_, r)| sp(r)));
    (
        action,
        proptest::option::of(selector()),
        proptest::option::of(branches),
        (0u32..=1000).prop_map(|m| f64::from(m) / 1000.0),
        schedules,
    )
        .prop_map(|(action, blocks, branches, ratio, schedule)| {
            let partial = matches!(action, RuleAction::Partial(_));
            sp(CacheRule {
                action: sp(action),
                blocks,
                branches,
                fresh_ratio: partial.then(|| sp(ratio)),
                ratio_schedule: schedule.filter(|_| partial),
            })
        })
}

fn opt<T: std::fmt::Debug>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<Spanned<T>>> {
    proptest::option::of(s.prop_map(sp))
}

fn sampler() -> impl Strategy<Value = SamplerSection> {
    (
        opt(prop_oneof![
            Just(SamplerKind::Ddpm),
            Just(SamplerKind::Ddim),
            Just(SamplerKind::DpmSolverPp)
        ]),
        opt(toml_uint()),
        opt(toml_float()),
        opt(toml_float()),
        opt(prop_oneof![
            Just(CfgOrder::CondFirst),
            Just(CfgOrder::UncondFirst)
        ]),
        opt(prop_oneof![
            Just(GuidedChannels::All),
            toml_uint().prop_map(GuidedChannels::First)
        ]),
    )
        .prop_map(
            |(kind, steps, guidance, eta, cfg_order, guided_channels)| SamplerSection {
                kind,
                steps,
                guidance,
                eta,
                cfg_order,
                guided_channels,
            },
        )
}

/// Boxed: the value tree of this many settings is large, and unboxed it
/// overflows the test thread's stack in an unoptimised build.
fn calibration() -> BoxedStrategy<CalibrationSection> {
    let kind =
        || proptest::sample::select(PriorKind::ALL.iter().map(|&(_, k)| k).collect::<Vec<_>>());
    let list = |s: BoxedStrategy<f64>| {
        proptest::option::of(proptest::collection::vec(s.prop_map(sp), 1..4).prop_map(sp))
    };
    let settings = (
        opt(prop_oneof![Just(CalibMethod::None), Just(CalibMethod::Tcc)]),
        opt(prop_oneof![
            Just(CalibMode::Consistent),
            Just(CalibMode::OneShot)
        ]),
        proptest::option::of(selector()),
        opt(toml_float()),
        opt(kind()),
        opt(proptest::sample::select(
            Pooling::ALL.iter().map(|&(_, p)| p).collect::<Vec<_>>(),
        )),
        opt(proptest::sample::select(
            CfgHalf::ALL.iter().map(|&(_, h)| h).collect::<Vec<_>>(),
        )),
        opt(toml_uint()),
        opt(toml_uint()),
    );
    let selection = (
        opt(prop_oneof![
            Just(Selection::Fixed),
            Just(Selection::Validated)
        ]),
        proptest::option::of(proptest::collection::vec(kind().prop_map(sp), 1..4).prop_map(sp)),
        list(toml_float().boxed()),
        list(toml_float().boxed()),
        opt(toml_uint()),
        opt(toml_uint()),
        opt(toml_uint()),
    );
    (settings, selection)
        .prop_map(
            |(
                (method, mode, steps, alpha, prior, pooling, pooled_half, samples, seed),
                (select, candidates, alphas, ridge, rank, validation_samples, validation_seed),
            )| CalibrationSection {
                method,
                mode,
                steps,
                alpha,
                prior,
                pooling,
                pooled_half,
                samples,
                seed,
                select,
                candidates,
                alphas,
                ridge,
                rank,
                validation_samples,
                validation_seed,
            },
        )
        .boxed()
}

fn schedule() -> impl Strategy<Value = Schedule> {
    let model = (
        prop_oneof![
            text().prop_map(ModelSource::Preset),
            text().prop_map(ModelSource::Path)
        ],
        proptest::option::of(text().prop_map(sp)),
    )
        .prop_map(|(source, weights)| {
            sp(ModelSection {
                source: sp(source),
                weights,
            })
        });
    let limits = (opt(toml_uint()), opt(toml_uint()), opt(toml_uint())).prop_map(
        |(warmup, cutoff, max_reuse)| LimitsSection {
            warmup,
            cutoff,
            max_reuse,
        },
    );
    (
        model,
        proptest::option::of(sampler().prop_map(sp)),
        proptest::collection::vec(rule(), 0..4),
        proptest::option::of(limits.prop_map(sp)),
        proptest::option::of(toca().prop_map(sp)),
        proptest::option::of(calibration().prop_map(sp)),
        proptest::option::of(dynamic().prop_map(sp)),
    )
        .prop_map(
            |(model, sampler, cache, limits, toca, calibration, dynamic)| Schedule {
                source_name: "p.sched".into(),
                model,
                sampler,
                cache,
                limits,
                toca,
                calibration,
                dynamic,
            },
        )
}

fn toca() -> impl Strategy<Value = TocaSection> {
    let num = |lo: u32| (lo..4000u32).prop_map(|m| f64::from(m) / 1000.0);
    (
        opt(proptest::sample::select(TokenScore::ALL).prop_map(|(_, s)| s)),
        opt(num(0)),
        opt(num(0)),
        opt(num(1000)),
        opt(toml_uint()),
    )
        .prop_map(
            |(score, fresh_weight, spread_bonus, interval, seed)| TocaSection {
                score,
                fresh_weight,
                spread_bonus,
                interval,
                seed,
            },
        )
}

fn dynamic() -> impl Strategy<Value = DynamicSection> {
    (
        opt(prop_oneof![
            Just(tcc_core::DynamicPolicy::FirstBlock),
            Just(tcc_core::DynamicPolicy::TeaCache)
        ]),
        opt(toml_float()),
        opt(toml_uint()),
        opt(toml_uint()),
        opt(toml_uint()),
        proptest::option::of(
            proptest::collection::vec(toml_float().prop_map(sp), 1..6).prop_map(sp),
        ),
    )
        .prop_map(
            |(policy, threshold, warmup, cutoff, max_reuse, rescale)| DynamicSection {
                policy,
                threshold,
                warmup,
                cutoff,
                max_reuse,
                rescale,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (1) print -> parse is the identity.
    #[test]
    fn print_then_parse_is_identity(s in schedule()) {
        let text = print(&s);
        let back = parse("p.sched", &text)
            .unwrap_or_else(|d| panic!("{}\n{text}", d.render("p.sched", &text)));
        prop_assert_eq!(&back, &s, "{}", text);
    }

    /// (6) arbitrary text never panics the parser (and rendering the
    /// errors never panics either).
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Err(d) = parse("x.sched", &text) {
            let _ = d.render("x.sched", &text);
        }
    }

    /// (6) nor does a valid schedule with a few bytes changed.
    #[test]
    fn mutated_schedules_never_panic(
        s in schedule(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..4, any::<char>()), 1..4),
    ) {
        let mut text = print(&s);
        for (at, len, c) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            let mut j = (i + len).min(text.len());
            while !text.is_char_boundary(j) {
                j -= 1;
            }
            text.replace_range(i..j, &c.to_string());
        }
        if let Err(d) = parse("x.sched", &text) {
            let _ = d.render("x.sched", &text);
        }
    }
}

/// Selector text built from the language's own tokens reaches deeper into
/// the grammar than random characters do.
fn selector_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("all"),
        Just("none"),
        Just("except"),
        Just("and"),
        Just("every"),
        Just("from"),
        Just("first"),
        Just("last"),
        Just("step"),
        Just("block"),
        Just("%"),
        Just("=="),
        Just("!="),
        Just("<"),
        Just("<="),
        Just(">"),
        Just(">="),
        Just(".."),
        Just("..="),
        Just(","),
        Just("("),
        Just(")"),
        Just("0"),
        Just("3"),
        Just("2.5"),
        Just("19"),
        Just("99999999999999999999999"),
        Just(" "),
        Just("attn"),
        Just("cross"),
        Just("mlp"),
    ];
    proptest::collection::vec(token, 0..12).prop_map(|t| t.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn selector_soup_never_panics(sel in selector_soup()) {
        for key in ["reuse", "blocks", "branches", "mask"] {
            let text = format!("[model]\nname = \"tiny\"\n[[cache]]\nrefresh = \"1\"\n{key} = \"{sel}\"\n");
            let text = text.replacen("refresh = \"1\"\nreuse", "reuse", 1);
            match parse("x.sched", &text) {
                Ok(s) => {
                    // What parses, prints and parses back the same.
                    let again = parse("x.sched", &print(&s)).expect("printed schedule parses");
                    prop_assert_eq!(again, s);
                }
                Err(d) => {
                    let _ = d.render("x.sched", &text);
                }
            }
        }
    }
}
