//! The `tcc` command-line interface.
//!
//! Every subcommand lives in its own module with an `Args` struct (clap
//! derive) and a `run(args, &mut Io) -> Result<(), CliError>` function; to
//! add one, add a variant to [`Command`] and a match arm in [`run`].
//! Subcommands write their results to `io.out` and diagnostics to `io.err`,
//! and report failure through [`CliError`], which carries the exit status.
//!
//! Exit status: 0 on success, 2 on invalid input (command line, schedule
//! syntax or semantics, input files, output paths that cannot be written,
//! runs that would not fit in memory; all checked before the work starts;
//! the diagnostics go to stderr), 1 on any other failure (a failure to
//! write an output, results that are not finite). docs/reliability.md
//! states the rules.

mod bench;
mod calibrate;
mod check;
mod common;
mod convert;
mod device;
mod error;
mod eval;
mod eval_partial;
mod golden;
mod hub;
mod limits;
mod merge;
#[cfg(feature = "mpi")]
mod mpi;
mod npz;
mod output;
mod plan;
mod quantize;
mod realised;
mod runtime;
mod sample;
mod scoring;
mod sweep;
mod teacache_fit;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use common::load_plan;
pub use error::{CliError, Io};

const ABOUT: &str =
    "Cache-accelerated Diffusion Transformer sampling with Trajectory-Consistent Calibration";

const LONG_ABOUT: &str = "\
Cache-accelerated Diffusion Transformer sampling with Trajectory-Consistent Calibration.

A schedule file (.sched) says which model and sampler to use, which branch \
outputs (attention, cross-attention, MLP) of which blocks are reused from an \
earlier step instead of computed, and how the reuses are calibrated. tcc \
compiles it into a plan: the table step x block x branch -> compute or \
reuse, with the cost of every step and the predicted speedup over full \
computation.

Start by looking at a plan with `tcc plan --show`, then validate your own \
schedules with `tcc check`. The schedule language is described in \
docs/schedule-language.md, the plan and its cost model in docs/plan.md.";

const EXAMPLES: &str = "\
Examples:
  tcc plan --show schedules/fora3.sched        what is computed, reused and what it costs
  tcc plan --emit json schedules/fora3.sched   the compiled plan, its hash and costs
  tcc plan --diff schedules/fora2.sched schedules/fora3.sched
  tcc check schedules/*.sched                  validate schedules
  tcc sample schedules/fora3.sched --device cuda --dtype bf16
  tcc sweep schedules/fbcache.sched --param threshold --values 0,0.05,0.1,inf
  tcc bench schedules/dit-xl2-fora3.sched --random-weights 0

Exit status: 0 success, 2 invalid input (diagnostics on stderr), 1 other failure.";

#[derive(Parser, Debug)]
#[command(
    name = "tcc",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compile a schedule and show, emit or compare its plan.
    Plan(plan::Args),
    /// Validate schedules: compile them and report errors, run nothing.
    Check(check::Args),
    /// Generate samples with a schedule's plan (and TCC priors, if given).
    Sample(sample::Args),
    /// Fit the TCC priors of a schedule's calibrated steps.
    Calibrate(calibrate::Args),
    /// Measure full vs cache vs cache + priors on held-out seeds.
    Eval(eval::Args),
    /// Measure one setting of a schedule (threshold, fresh ratio, refresh
    /// interval) at several values against full computation.
    Sweep(sweep::Args),
    /// Join the partial results of shards (--shard I/N): samples,
    /// calibration statistics or evaluations.
    Merge(merge::Args),
    /// Time a schedule's plan against full computation on this device.
    Bench(bench::Args),
    /// Convert an original DiT checkpoint (.pt) to safetensors.
    Convert(convert::Args),
    /// Fit TeaCache's rescale polynomial for a schedule's model from
    /// full-computation runs.
    #[command(name = "teacache-fit")]
    TeacacheFit(teacache_fit::Args),
    /// Quantize a pipeline's T5 text encoder to a GGUF file (q8_0, q4_0).
    #[command(name = "quantize-t5")]
    QuantizeT5(quantize::Args),
    /// Diagnostic: DiT and PixArt-α forward passes against the committed
    /// diffusers fixtures on a device (tools/cuda/check.sh).
    #[command(hide = true)]
    Golden(golden::Args),
}

/// Runs `tcc` with the process's arguments and standard streams.
pub fn main() -> ExitCode {
    remove_temp_files_on_signals();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut io = Io {
        out: &mut stdout.lock(),
        err: &mut stderr.lock(),
    };
    ExitCode::from(run(std::env::args_os(), &mut io))
}

/// On SIGINT, SIGTERM or SIGHUP (Ctrl-C during a long calibration), the
/// temporary files of outputs being written are removed, then the process
/// ends as the signal would have ended it. The cleanup runs on an ordinary
/// thread that signal-hook wakes, not inside the signal handler, where
/// removing files is not safe.
fn remove_temp_files_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tcc_fs::remove_pending_for_exit();
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            std::process::exit(128 + signal);
        }
    });
}

/// Runs `tcc` with the given arguments (the first is the program name) and
/// returns the exit status.
pub fn run<I, T>(args: I, io: &mut Io) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version come here too, with exit status 0.
            let text = e.render().to_string();
            let stream: &mut dyn Write = if e.use_stderr() { io.err } else { io.out };
            let _ = stream.write_all(text.as_bytes());
            return e.exit_code().clamp(0, 255) as u8;
        }
    };
    let result = match cli.command {
        Command::Plan(args) => plan::run(args, io),
        Command::Check(args) => check::run(args, io),
        Command::Sample(args) => sample::run(args, io),
        Command::Calibrate(args) => calibrate::run(args, io),
        Command::Eval(args) => eval::run(args, io),
        Command::Sweep(args) => sweep::run(args, io),
        Command::Merge(args) => merge::run(args, io),
        Command::Bench(args) => bench::run(args, io),
        Command::Convert(args) => convert::run(args, io),
        Command::TeacacheFit(args) => teacache_fit::run(args, io),
        Command::QuantizeT5(args) => quantize::run(args, io),
        Command::Golden(args) => golden::run(args, io),
    };
    match result {
        Ok(()) => 0,
        Err(e) => e.report(io),
    }
}
