//! `tcc merge`: joins the partial results of shards (`--shard I/N`) into
//! the whole run's result: samples, calibration statistics or evaluations.

use std::path::PathBuf;

use tcc_calib::{fit_merged, CalibError, PriorSet, StatsFile};

use crate::error::{CliError, Io};
use crate::limits::check_output;

const EXAMPLES: &str = "\
Examples:
  tcc merge --out full.npz part0.npz part1.npz            samples of `tcc sample --shard I/N --npz`
  tcc merge --out fora3.priors.safetensors fora3.stats-*.safetensors   statistics of `tcc calibrate --shard I/N`
  tcc merge --out eval.json fora3.eval-*.safetensors      evaluations of `tcc eval --shard I/N`

Every shard 0/N .. N-1/N of one run must be given, once, in any order.
Samples: the merged .npz equals the unsharded run's, byte for byte.
Statistics: the sums are added in shard order and the priors fitted as
`tcc calibrate` fits them (one-shot mode), then written as a priors file.
Evaluations: the sums are added in shard order and the report that
`tcc eval` prints is printed (tables, or JSON with --json), its JSON
written to --out and its plot to --plot.
Shards of different runs (another plan, seed, sample count, batch size or
priors), duplicate and missing shards are refused with exit status 2,
before anything is written; the output appears only once complete.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The partial files: all `.npz` samples or all statistics files.
    #[arg(value_name = "PARTS", required = true)]
    parts: Vec<PathBuf>,
    /// Where to write the merged result.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Evaluations: print the report as JSON on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Evaluations: where to write the deviation plot (default: --out with
    /// the extension `.png`).
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
}

/// What kind of partial a file is, from its first bytes.
fn is_zip(path: &std::path::Path) -> Result<bool, CliError> {
    use std::io::Read;
    let mut head = [0u8; 4];
    tcc_fs::check_input_file(path)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    let mut f = std::fs::File::open(path)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    let n = f
        .read(&mut head)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    Ok(n == 4 && &head == b"PK\x03\x04")
}

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    let zips = args
        .parts
        .iter()
        .map(|p| is_zip(p))
        .collect::<Result<Vec<_>, _>>()?;
    if args.parts.iter().any(|p| p == &args.out) {
        return Err(CliError::input(format!(
            "--out {} is one of the parts: write the merged file elsewhere",
            args.out.display()
        )));
    }
    check_output("--out", &args.out, tcc_fs::OutputKind::File)?;
    if zips.iter().all(|&z| z) {
        let n = crate::npz::merge(&args.parts, &args.out)?;
        writeln!(
            io.out,
            "merged {} shards ({n} samples) into {}",
            args.parts.len(),
            args.out.display()
        )?;
        return Ok(());
    }
    if zips.iter().any(|&z| z) {
        return Err(CliError::input(
            "the parts mix sample files (.npz) and statistics files: merge one kind at a time",
        ));
    }
    let evals: Vec<bool> = args
        .parts
        .iter()
        .map(|p| crate::eval_partial::is_eval_partial(p))
        .collect();
    if evals.iter().all(|&e| e) {
        return merge_evals(&args, io);
    }
    if evals.iter().any(|&e| e) {
        return Err(CliError::input(
            "the parts mix eval partials and statistics files: merge one kind at a time",
        ));
    }
    if args.json || args.plot.is_some() {
        return Err(CliError::input(
            "--json and --plot apply to eval partials (`tcc eval --shard`)",
        ));
    }
    let files = args
        .parts
        .iter()
        .map(|p| {
            StatsFile::load(p)
                .map(|f| (p.display().to_string(), f))
                .map_err(CliError::input)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shards = files.len();
    let merged = StatsFile::merge(files).map_err(CliError::input)?;
    let result = fit_merged(&merged).map_err(|e| match e {
        CalibError::Binding(_) | CalibError::Empty(_) => CliError::input(e),
        e => CliError::Failure(e.to_string()),
    })?;
    let m = &merged.meta;
    let cal = &m.calibration;
    let mut report = result.report();
    report.insert("merged_shards".into(), shards.into());
    let set = PriorSet::fitted(m.plan_hash, &m.model, cal, m.mode, &result, report);
    set.save(&args.out)
        .map_err(|e| CliError::Failure(e.to_string()))?;
    writeln!(io.out, "step  sites    rows   dim  fit before   after")?;
    for s in &result.steps {
        writeln!(
            io.out,
            "{:>4}  {:>5}  {:>6}  {:>4}  {:>10.4}  {:>6.4}",
            s.step, s.sites, s.rows, s.dim, s.rel_before, s.rel_after
        )?;
    }
    writeln!(
        io.out,
        "merged the statistics of {shards} shards ({} calibration samples) and wrote {} priors ({} calibrated sites) to {}",
        m.cost.samples,
        set.priors.len(),
        set.sites().len(),
        args.out.display()
    )?;
    Ok(())
}

/// Eval partials: the whole run's report, printed and written to `--out`
/// (JSON) and `--plot`.
fn merge_evals(args: &Args, io: &mut Io) -> Result<(), CliError> {
    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| args.out.with_extension("png"));
    if args.parts.contains(&plot) || plot == args.out {
        return Err(CliError::input(format!(
            "the plot {} would overwrite --out or a part: give another --plot",
            plot.display()
        )));
    }
    check_output("--plot", &plot, tcc_fs::OutputKind::File)?;
    let merged = crate::eval_partial::merge(&args.parts)?;
    let context = &merged.run.context;
    let scorer = match merged.sums.sets[0].variants[0].features {
        Some(_) => Some(
            crate::scoring::TestbedScorer::for_model(&context.model, &candle_core::Device::Cpu)?
                .ok_or_else(|| {
                    CliError::input(format!(
                        "the partials hold classifier features, but `{}` is no testbed model of this tcc",
                        context.model
                    ))
                })?,
        ),
        None => None,
    };
    let report = merged
        .sums
        .report(
            scorer.as_ref().map(tcc_eval::Scorer::reference),
            &context.test_pairs(),
        )
        .map_err(|e| CliError::Failure(e.to_string()))?;
    let doc = crate::eval::print_report(io, context, &report, &merged.terms, &plot, args.json)?;
    let text = serde_json::to_string_pretty(&doc).map_err(|e| CliError::Failure(e.to_string()))?;
    tcc_fs::write_atomically(&args.out, format!("{text}\n").as_bytes())
        .map_err(|e| CliError::Failure(format!("{}: {e}", args.out.display())))?;
    let log: &mut dyn std::io::Write = if args.json { io.err } else { io.out };
    writeln!(
        log,
        "merged {} shards ({} samples in each of {} seed sets) and wrote the report to {}",
        args.parts.len(),
        merged.run.n,
        context.seeds.len(),
        args.out.display()
    )?;
    Ok(())
}
