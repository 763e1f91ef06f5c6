//! The `tcc` command-line interface.

use std::process::ExitCode;

use clap::Parser;

/// Cache-accelerated Diffusion Transformer sampling with Trajectory-Consistent Calibration.
#[derive(Parser, Debug)]
#[command(name = "tcc", version, about)]
struct Cli {}

pub fn main() -> ExitCode {
    let _cli = Cli::parse();
    ExitCode::SUCCESS
}
