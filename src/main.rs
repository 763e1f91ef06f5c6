//! The `tcc` command-line tool. All of it lives in the `tcc-cli` crate.

fn main() -> std::process::ExitCode {
    tcc_cli::main()
}
