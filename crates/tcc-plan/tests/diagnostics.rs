//! The rendered diagnostic of every bad schedule in `tests/bad/`, as insta
//! snapshots (`tests/snapshots/diagnostics__*.snap`), one test per file so
//! that one failure hides no other. Each file starts with a comment saying
//! what is wrong with it; review a changed snapshot against that comment.
//! Accept new ones with `INSTA_UPDATE=always cargo test -p tcc-plan --test
//! diagnostics` (or `cargo insta review`). A new bad schedule needs its line
//! in `bad_schedules!` (a test checks that every file has one).

use std::path::Path;

/// Compiles `tests/bad/NAME.sched`, which must be rejected, and snapshots
/// the rendered diagnostic.
fn check(name: &str) {
    // A relative path (cargo runs tests from the package root), so that
    // the snapshots do not depend on the checkout.
    let rel = Path::new("tests/bad").join(format!("{name}.sched"));
    let err = match tcc_plan::compile_file(&rel) {
        Ok(_) => panic!("{} compiled, but it is meant to be rejected", rel.display()),
        Err(e) => e,
    };
    let rendered = err.render();
    assert!(rendered.starts_with("error: "), "{rendered}");
    assert!(
        rendered.contains(&format!("--> {}:", rel.display())),
        "{rendered}"
    );
    insta::assert_snapshot!(name, rendered);
}

/// One test per bad schedule: `test_name => "file stem"`.
macro_rules! bad_schedules {
    ($($test:ident => $name:literal),+ $(,)?) => {
        $(
            #[test]
            fn $test() {
                check($name);
            }
        )+

        const LISTED: &[&str] = &[$($name),+];
    };
}

bad_schedules! {
    alpha_inf => "alpha-inf",
    alpha_nan => "alpha-nan",
    bad_selector => "bad-selector",
    block_out_of_range => "block-out-of-range",
    cache_single_table => "cache-single-table",
    calibration_compute_step => "calibration-compute-step",
    cross_on_dit => "cross-on-dit",
    delta_gap => "delta-gap",
    delta_overlap => "delta-overlap",
    duplicate_key => "duplicate-key",
    dynamic_threshold_negative => "dynamic-threshold-negative",
    dynamic_threshold_nan => "dynamic-threshold-nan",
    dynamic_policy_typo => "dynamic-policy-typo",
    dynamic_rescale_empty => "dynamic-rescale-empty",
    dynamic_rescale_not_finite => "dynamic-rescale-not-finite",
    dynamic_rescale_not_list => "dynamic-rescale-not-list",
    dynamic_rescale_on_first_block => "dynamic-rescale-on-first-block",
    dynamic_rescale_too_many => "dynamic-rescale-too-many",
    dynamic_teacache_no_threshold => "dynamic-teacache-no-threshold",
    dynamic_unknown_key => "dynamic-unknown-key",
    dynamic_with_cache => "dynamic-with-cache",
    eta_with_dpm => "eta-with-dpm",
    every_too_small => "every-too-small",
    fresh_ratio_above_one => "fresh-ratio-above-one",
    fresh_ratio_missing => "fresh-ratio-missing",
    fresh_ratio_negative => "fresh-ratio-negative",
    fresh_ratio_on_reuse => "fresh-ratio-on-reuse",
    mask_length => "mask-length",
    mask_nothing_cached => "mask-nothing-cached",
    missing_model => "missing-model",
    model_dir_missing => "model-dir-missing",
    partial_nothing_cached => "partial-nothing-cached",
    reuse_nothing_cached => "reuse-nothing-cached",
    selector_ends_early => "selector-ends-early",
    selector_with_escape => "selector-with-escape",
    step_beyond_sampler => "step-beyond-sampler",
    syntax_error => "syntax-error",
    table_row_length => "table-row-length",
    toca_bad_interval => "toca-bad-interval",
    toca_conditions_pooling => "toca-conditions-pooling",
    toca_without_partial => "toca-without-partial",
    two_actions => "two-actions",
    unknown_branch => "unknown-branch",
    unknown_key => "unknown-key",
    unknown_model => "unknown-model",
    unknown_section => "unknown-section",
    unknown_value => "unknown-value",
    unquoted_string => "unquoted-string",
    wrong_variable => "wrong-variable",
}

#[test]
fn every_bad_schedule_has_a_test() {
    let mut files: Vec<String> = std::fs::read_dir("tests/bad")
        .expect("tests/bad exists (cargo runs tests from the package root)")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sched"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut listed: Vec<String> = LISTED.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed, "tests/bad and bad_schedules! differ");
}

#[test]
fn unreadable_file_names_the_file() {
    let err = tcc_plan::compile_file(Path::new("tests/bad/no-such-file.sched")).unwrap_err();
    let text = err.render();
    assert!(
        text.starts_with("error: cannot read tests/bad/no-such-file.sched: "),
        "{text}"
    );
}
