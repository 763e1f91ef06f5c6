//! `tcc convert`: an original-layout DiT checkpoint (`.pt`) to safetensors.

use std::path::PathBuf;

use crate::error::{CliError, Io};

const EXAMPLES: &str = "\
Examples:
  tcc convert DiT-XL-2-256x256.pt DiT-XL-2-256x256.safetensors

The tensors keep their names (the original DiT layout), become contiguous
and keep their dtypes; a state dict nested under `ema`, `model` or
`state_dict` is unwrapped. Point a schedule's `weights` at the output: it
loads without PyTorch's pickle format, and faster. The CRC-32 of every zip
entry of the checkpoint is checked. The output is written to a temporary
file and renamed, so it never exists half-written; the same checkpoint gives
the same bytes.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The original checkpoint (`.pt` / `.pth`).
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// The safetensors file to write.
    #[arg(value_name = "OUT")]
    output: PathBuf,
}

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    crate::limits::check_output("OUT", &args.output, tcc_fs::OutputKind::File)?;
    // A bad checkpoint is bad input (2); failing to write the output is a
    // failure (1), as for every command.
    let report = tcc_model::convert_checkpoint(&args.input, &args.output).map_err(|e| match e {
        tcc_model::Error::Write { .. } => CliError::Failure(e.to_string()),
        e => CliError::input(e),
    })?;
    writeln!(
        io.out,
        "wrote {} tensors ({:.1}M parameters{}) to {}",
        report.tensors,
        report.parameters as f64 / 1e6,
        report
            .nested_key
            .as_ref()
            .map(|k| format!(", unwrapped from `{k}`"))
            .unwrap_or_default(),
        args.output.display()
    )?;
    Ok(())
}
