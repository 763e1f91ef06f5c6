//! How tcc reads its input files and writes its output files.
//!
//! - Inputs ([`read_input`], [`read_input_text`], [`check_input_file`]):
//!   only regular files (a FIFO or `/dev/zero` would block or never end),
//!   at most a given size, read before anything is parsed; text that is
//!   not UTF-8 is an error that says on which line and column.
//! - Outputs ([`AtomicFile`], [`write_atomically`]): written to a temporary
//!   file beside the target and renamed over it once complete, so a reader
//!   never sees a half-written file. Temporary files are named
//!   `.NAME.tcc-tmp-PID-N`: a later run that writes into the same folder
//!   removes those whose process is gone (a run killed with SIGKILL), and
//!   [`remove_pending_for_exit`] removes this process's own (the `tcc`
//!   command calls it on SIGINT / SIGTERM). Files are created with mode
//!   0666 less the umask, as `touch` would.
//! - [`check_output`]: whether a path can be written, asked before any
//!   expensive work.
//! - [`safetensors_bytes`]: safetensors whose bytes depend only on the
//!   tensors and metadata (the `safetensors` crate writes its metadata map
//!   in a random order).

mod input;
mod output;
mod tensors;

pub use input::{check_input_file, read_input, read_input_text};
pub use output::{
    check_output, remove_pending_for_exit, write_atomically, AtomicFile, OutputKind, TEMP_MARKER,
};
pub use tensors::safetensors_bytes;
