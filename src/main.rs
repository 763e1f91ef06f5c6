//! The `tcc` command-line tool. All of it lives in the `tcc-cli` crate.

/// Sampling allocates and frees many tensors of a few MB per step. glibc's
/// malloc hands allocations that large straight back to the kernel, so every
/// step paid for fresh zeroed pages (sys time was 40% of a testbed run);
/// mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tcc_cli::main()
}
