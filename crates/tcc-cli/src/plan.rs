//! `tcc plan`: compile a schedule and show, emit or compare its plan.

use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{CommandFactory, ValueEnum};
use tcc_plan::{Format, PlanDiff, PlanDocument};

use crate::common::load_plan_with;
use crate::error::{CliError, Io};
use crate::hub::Need;

const EXAMPLES: &str = "\
Examples:
  tcc plan --show schedules/fora3.sched
      The step x block grid: C compute, r reuse, R reuse with a TCC prior,
      d reuse-delta; MACs per step, calibrated steps marked *, totals and
      the predicted speedup over full computation.
  tcc plan schedules/fora3.sched
      The same (--show is the default).
  tcc plan --emit toml schedules/fora3.sched > fora3.plan.toml
      The compiled plan with its content hash and cost summary.
  tcc plan --diff schedules/fora2.sched schedules/fora3.sched
      The cells whose action differs (. where equal), and the cost of each.

docs/plan.md explains the grid, the cost model and the hash.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES, group = clap::ArgGroup::new("mode").multiple(false))]
pub struct Args {
    /// Print the plan as a step x block grid with costs (the default).
    #[arg(long, group = "mode")]
    show: bool,

    /// Print the compiled plan, its hash and its cost summary as FORMAT.
    #[arg(long, value_name = "FORMAT", group = "mode")]
    emit: Option<EmitFormat>,

    /// Compare the plans of two schedules, A then B.
    #[arg(long, group = "mode")]
    diff: bool,

    /// The schedule file (.sched); with --diff, two: A and B.
    #[arg(value_name = "FILE", required = true, num_args = 1..=2)]
    files: Vec<PathBuf>,

    /// Take the model from SOURCE instead of the schedule's [model]
    /// location: a diffusers folder, a checkpoint file, or hf:ORG/NAME[@REV]
    /// (only its config.json is downloaded). With --diff, for both.
    #[arg(long = "model", value_name = "SOURCE")]
    model: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EmitFormat {
    Toml,
    Json,
}

impl From<EmitFormat> for Format {
    fn from(f: EmitFormat) -> Format {
        match f {
            EmitFormat::Toml => Format::Toml,
            EmitFormat::Json => Format::Json,
        }
    }
}

fn usage(message: &str) -> CliError {
    let mut root = crate::Cli::command();
    // Building sets the subcommand's display name to `tcc plan`.
    root.build();
    let error = match root.find_subcommand_mut("plan") {
        Some(plan) => plan.error(ErrorKind::WrongNumberOfValues, message),
        None => root.error(ErrorKind::WrongNumberOfValues, message),
    };
    CliError::Usage(error)
}

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    let want = if args.diff { 2 } else { 1 };
    if args.files.len() != want {
        return Err(usage(if args.diff {
            "--diff compares two schedules: tcc plan --diff A B"
        } else {
            "give one schedule file (two only with --diff)"
        }));
    }

    if args.diff {
        let mut load =
            |file| load_plan_with(file, args.model.as_deref(), None, Need::Config, io.err);
        let a = load(&args.files[0]);
        let b = load(&args.files[1]);
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                // Report the errors of both files, not only the first.
                let mut text = String::new();
                for e in [a.err(), b.err()].into_iter().flatten() {
                    if let CliError::Input(t) = e {
                        text.push_str(&t);
                    } else {
                        return Err(e);
                    }
                }
                return Err(CliError::Input(text));
            }
        };
        io.out
            .write_all(PlanDiff::new(&a, &b).render().as_bytes())?;
        return Ok(io.out.flush()?);
    }

    let plan = load_plan_with(
        &args.files[0],
        args.model.as_deref(),
        None,
        Need::Config,
        io.err,
    )?;
    let text = match args.emit {
        Some(format) => PlanDocument::new(plan)
            .render(format.into())
            .map_err(CliError::input)?,
        None => plan.show(),
    };
    io.out.write_all(text.as_bytes())?;
    Ok(io.out.flush()?)
}
