//! `tcc check`: validate schedules without running anything.

use std::path::PathBuf;

use tcc_plan::PlanCost;

use crate::common::load_plan_with;
use crate::error::{CliError, Io};
use crate::hub::Need;

const EXAMPLES: &str = "\
Examples:
  tcc check schedules/fora3.sched
  tcc check schedules/*.sched

Prints `ok: FILE (N steps, speedup X.XXx)` on stdout for every valid schedule
and the diagnostics of every invalid one on stderr; the exit status is 2 if
any schedule is invalid.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Schedule files (.sched) to validate; all are checked.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    let mut failed = 0usize;
    for path in &args.files {
        match load_plan_with(path, None, None, Need::Config, io.err) {
            Ok(plan) => {
                let cost = PlanCost::of(&plan);
                let speedup = if cost.saturated() {
                    "unknown: MAC counts beyond 2^64".to_string()
                } else {
                    format!("{:.2}x", cost.speedup())
                };
                writeln!(
                    io.out,
                    "ok: {} ({} steps, speedup {speedup})",
                    path.display(),
                    plan.steps.len()
                )?;
            }
            Err(CliError::Input(text)) => {
                failed += 1;
                io.err.write_all(text.as_bytes())?;
            }
            Err(other) => return Err(other),
        }
    }
    io.out.flush()?;
    if failed == 0 {
        return Ok(());
    }
    let summary = if args.files.len() == 1 {
        String::new()
    } else {
        format!(
            "error: {failed} of {} schedules are invalid\n",
            args.files.len()
        )
    };
    Err(CliError::Input(summary))
}
