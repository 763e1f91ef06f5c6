//! `tcc quantize-t5`: a pipeline's T5 encoder to a block-quantized GGUF file,
//! read back by `--text-dtype q8_0` / `q4_0`.

use std::path::PathBuf;

use tcc_text::{Quant, TextError};

use crate::error::{CliError, Io};
use crate::hub::{self, HubSource, Need};
use crate::runtime::progress;

const EXAMPLES: &str = "\
Examples:
  tcc quantize-t5 PixArt-XL-2-256x256                 # writes text_encoder/model.q8_0.gguf
  tcc quantize-t5 PixArt-XL-2-256x256 --type q4_0
  tcc quantize-t5 hf:PixArt-alpha/PixArt-XL-2-256x256  # into the Hub cache's snapshot
  tcc sample pixart.sched --text-dtype q8_0 --prompt \"a red cube\" --grid out.png

The linear layers' weights become q8_0 (8.5 bits per weight; T5-XXL's
encoder ~5 GB) or q4_0 (4.5 bits; ~2.7 GB) blocks; embeddings, the position
bias and layer norms stay f32. Quantizing memory-maps the f32/bf16
safetensors and holds the quantized tensors in memory while writing (for
T5-XXL in q8_0, ~5.5 GB by size). The file is written to a temporary file,
loaded back as an encoder, then renamed into place. docs/pixart.md gives the speed and accuracy measured per type.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// A diffusers pipeline folder, its `text_encoder/` folder, or an
    /// `hf:ORG/NAME[@REVISION]` pipeline (downloaded first; the file is
    /// written into its snapshot in the Hugging Face cache, where
    /// `--model hf:... --text-dtype TYPE` finds it).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The block quantization.
    #[arg(long = "type", value_name = "TYPE", default_value = "q8_0", value_parser = ["q8_0", "q4_0"])]
    quant: String,
    /// Where to write the GGUF file (default: `text_encoder/model.<TYPE>.gguf`,
    /// where `--text-dtype <TYPE>` looks for it).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    let quant: Quant = args.quant.parse().map_err(CliError::input)?;
    let root = match HubSource::parse(&args.dir.to_string_lossy()) {
        Some(source) => {
            let source = source.map_err(CliError::input)?;
            hub::resolve(&source, Need::Pipeline, io.err)?
        }
        None => args.dir,
    };
    let nested = root.join("text_encoder");
    let dir = if nested.is_dir() { nested } else { root };
    if !dir.join("config.json").is_file() {
        return Err(CliError::input(format!(
            "{}: no config.json: expected a diffusers pipeline folder or its text_encoder/ folder",
            dir.display()
        )));
    }
    let flag = if args.out.is_some() {
        "--out"
    } else {
        "the GGUF file"
    };
    let out = args.out.unwrap_or_else(|| dir.join(quant.file_name()));
    crate::limits::check_output(flag, &out, tcc_fs::OutputKind::File)?;
    let bar = progress(&format!("quantize {}", quant.as_str()), 0);
    let report = tcc_text::quantize_encoder(&dir, quant, &out, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    // An input that cannot be read is bad input (2); an output that cannot
    // be written a failure (1), as for every command.
    let report = report.map_err(|e| match e {
        TextError::Write { .. } | TextError::Candle(_) => CliError::Failure(e.to_string()),
        _ => CliError::input(e),
    })?;
    writeln!(
        io.out,
        "wrote {} ({:.1}M parameters, {} linear weights as {}, {} tensors kept f32, {:.1} MB)",
        report.path.display(),
        report.parameters as f64 / 1e6,
        report.quantized,
        quant.as_str(),
        report.kept_f32,
        report.bytes as f64 / 1e6
    )?;
    Ok(())
}
