//! `tcc convert`: an original-layout DiT checkpoint (`.pt`) to safetensors.

use std::path::PathBuf;

use crate::common::{CliError, Io};

const EXAMPLES: &str = "\
Examples:
  tcc convert DiT-XL-2-256x256.pt DiT-XL-2-256x256.safetensors

The tensors keep their names (the original DiT layout), become contiguous
and keep their dtypes; a state dict nested under `ema`, `model` or
`state_dict` is unwrapped. Point a schedule's `weights` at the output: it
loads without PyTorch's pickle format, and faster. The output is written to a
temporary file and renamed, so it never exists half-written.";

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
    if args.output.exists() && args.output.is_dir() {
        return Err(CliError::input(format!(
            "{}: is a directory, expected a file path",
            args.output.display()
        )));
    }
    let report =
        tcc_model::convert_checkpoint(&args.input, &args.output).map_err(CliError::input)?;
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
