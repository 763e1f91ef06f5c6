//! Where and in which precision a command runs its models: `--device` and
//! `--dtype`, resolved once per command into a [`Runtime`] that every model,
//! input, prior hook, VAE, text encoder and classifier of the run is built
//! with. Nothing below the CLI chooses a device.

use candle_core::{DType, Device};

use crate::error::CliError;

/// `--device` and `--dtype`, shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Where to run: cpu, cuda (the first GPU) or cuda:N. Default: the
    /// first CUDA GPU when this build has CUDA support (`--features cuda`,
    /// docs/gpu.md) and one is visible, else the CPU.
    #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
    pub device: Option<DeviceChoice>,
    /// Precision of the diffusion transformer and the VAE. Latents, the
    /// sampler, the priors and the calibration statistics stay in f32;
    /// the text encoder has --text-dtype.
    #[arg(long, value_name = "DTYPE", value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

/// A device named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    /// The CUDA GPU of this ordinal.
    Cuda(usize),
}

/// `--dtype`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

pub(crate) fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    let bad = || format!("`{s}` is not a device: use cpu, cuda or cuda:N");
    match s {
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda(0)),
        _ => {
            let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
            // Ordinals are small: refuse "cuda:+1" and absurd values alike.
            if n.is_empty() || n.len() > 3 || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            n.parse().map(DeviceChoice::Cuda).map_err(|_| bad())
        }
    }
}

/// The device and model precision of one command.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub device: Device,
    /// The diffusion transformer's dtype (and the VAE's, see
    /// [`Runtime::vae_dtype`]).
    pub dtype: DType,
    /// Why the default device is the CPU, when CUDA was looked for.
    note: Option<String>,
}

impl Runtime {
    /// The runtime of `args`: refuses (exit status 2) a CUDA device that
    /// this build or this machine cannot give.
    pub fn from_args(args: &RuntimeArgs) -> Result<Runtime, CliError> {
        Runtime::new(args.device, args.dtype.dtype())
    }

    /// `device` (or the default) with models in `dtype`.
    pub fn new(device: Option<DeviceChoice>, dtype: DType) -> Result<Runtime, CliError> {
        Runtime::resolve(
            device,
            dtype,
            candle_core::utils::cuda_is_available(),
            Device::new_cuda,
        )
    }

    /// [`Runtime::from_args`] with the build's CUDA support and the way to
    /// open a GPU given, so the refusals can be tested on any build.
    fn resolve(
        choice: Option<DeviceChoice>,
        dtype: DType,
        built_with_cuda: bool,
        open_cuda: impl Fn(usize) -> candle_core::Result<Device>,
    ) -> Result<Runtime, CliError> {
        let one_line = |e: candle_core::Error| one_line(&e);
        let (device, note) = match choice {
            Some(DeviceChoice::Cpu) => (Device::Cpu, None),
            Some(DeviceChoice::Cuda(n)) if !built_with_cuda => {
                return Err(CliError::input(format!(
                    "--device cuda:{n}: this tcc was built without CUDA support; build it with `--features cuda` (tools/cuda/build.sh, docs/gpu.md)"
                )))
            }
            Some(DeviceChoice::Cuda(n)) => match open_cuda(n) {
                Ok(d) => (d, None),
                Err(e) => {
                    return Err(CliError::input(format!(
                        "--device cuda:{n}: no usable CUDA GPU: {}",
                        one_line(e)
                    )))
                }
            },
            // As candle's examples do: the GPU when the build has CUDA and
            // one is visible.
            None if built_with_cuda => match open_cuda(0) {
                Ok(d) => (d, None),
                Err(e) => (
                    Device::Cpu,
                    Some(format!("no usable CUDA GPU ({})", one_line(e))),
                ),
            },
            None => (Device::Cpu, None),
        };
        Ok(Runtime {
            device,
            dtype,
            note,
        })
    }

    /// The VAE's dtype: the model's, but f32 for f16, as diffusers upcasts
    /// the SD VAE (`force_upcast`): its decoder overflows in f16.
    pub fn vae_dtype(&self) -> DType {
        match self.dtype {
            DType::F16 => DType::F32,
            d => d,
        }
    }

    /// `cuda:0, bf16` or `cpu (8 threads), f32`.
    pub fn describe(&self) -> String {
        let dtype = match self.dtype {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            _ => "f32",
        };
        match self.device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}, {dtype}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}, {dtype}"),
            candle_core::DeviceLocation::Cpu => format!(
                "cpu ({} threads), {dtype}",
                candle_core::utils::get_num_threads()
            ),
        }
    }

    /// Says on `err` where the run goes, once its inputs are checked.
    pub fn announce(&self, err: &mut dyn std::io::Write) -> Result<(), CliError> {
        match &self.note {
            Some(note) => writeln!(err, "running on {} ({note})", self.describe())?,
            None => writeln!(err, "running on {}", self.describe())?,
        }
        Ok(())
    }

    /// Waits for the work queued on the device (GPU kernels run
    /// asynchronously): call before reading a clock.
    pub fn synchronize(&self) -> Result<(), CliError> {
        self.device
            .synchronize()
            .map_err(|e| CliError::Failure(e.to_string()))
    }
}

/// The error without candle's backtrace (captured under RUST_BACKTRACE),
/// on one line.
fn one_line(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => one_line(inner),
        e => e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_gpu(_: usize) -> candle_core::Result<Device> {
        // As candle reports it with RUST_BACKTRACE set: the backtrace after
        // the message, which the refusal leaves out.
        Err(candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_NO_DEVICE,\n\"no CUDA-capable device is detected\")".into(),
        )
        .bt())
    }

    fn refusal(r: Result<Runtime, CliError>) -> String {
        match r {
            Err(CliError::Input(text)) => text,
            other => panic!("expected bad input (exit 2), got {other:?}"),
        }
    }

    #[test]
    fn devices_parse_and_bad_names_are_refused() {
        assert_eq!(parse_device("cpu"), Ok(DeviceChoice::Cpu));
        assert_eq!(parse_device("cuda"), Ok(DeviceChoice::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Ok(DeviceChoice::Cuda(3)));
        for bad in [
            "gpu",
            "cuda:",
            "cuda:x",
            "cuda:+1",
            "cuda:-1",
            "cuda:99999",
            "CPU",
        ] {
            assert!(parse_device(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cuda_without_the_feature_is_one_line_of_bad_input() {
        let text = refusal(Runtime::resolve(
            Some(DeviceChoice::Cuda(0)),
            DType::F32,
            false,
            |_| panic!("a build without CUDA must not open a GPU"),
        ));
        assert!(text.starts_with("error: --device cuda:0: this tcc was built without CUDA support"));
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(CliError::Input(text).exit_code(), 2);
    }

    #[test]
    fn cuda_without_a_gpu_is_one_line_of_bad_input() {
        let text = refusal(Runtime::resolve(
            Some(DeviceChoice::Cuda(1)),
            DType::BF16,
            true,
            no_gpu,
        ));
        assert!(
            text.starts_with(
                "error: --device cuda:1: no usable CUDA GPU: DriverError(CUDA_ERROR_NO_DEVICE"
            ),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.ends_with("is detected\")\n"), "{text}");
    }

    #[test]
    fn the_default_is_the_gpu_only_when_one_opens() {
        // No CUDA in the build: the CPU, and no GPU is looked for.
        let rt = Runtime::resolve(None, DType::F32, false, |_| panic!("not looked for")).unwrap();
        assert!(rt.device.is_cpu() && rt.note.is_none());
        // CUDA built in but no GPU: the CPU, and the announcement says why.
        let rt = Runtime::resolve(None, DType::F16, true, no_gpu).unwrap();
        assert!(rt.device.is_cpu());
        let mut said = Vec::new();
        rt.announce(&mut said).unwrap();
        let said = String::from_utf8(said).unwrap();
        assert!(said.starts_with("running on cpu ("), "{said}");
        assert!(
            said.contains(", f16 (no usable CUDA GPU (DriverError"),
            "{said}"
        );
        assert_eq!(said.lines().count(), 1);
        // The GPU opens: it is taken (a CPU device stands in for it here).
        let rt = Runtime::resolve(None, DType::BF16, true, |n| {
            assert_eq!(n, 0);
            Ok(Device::Cpu)
        })
        .unwrap();
        assert!(rt.note.is_none() && rt.dtype == DType::BF16);
        // An explicit CPU never looks for a GPU.
        let rt = Runtime::resolve(Some(DeviceChoice::Cpu), DType::F32, true, |_| {
            panic!("not looked for")
        })
        .unwrap();
        assert!(rt.device.is_cpu());
    }

    #[test]
    fn the_vae_runs_f16_models_in_f32() {
        let mut rt = Runtime::resolve(Some(DeviceChoice::Cpu), DType::F32, false, no_gpu).unwrap();
        for (model, vae) in [
            (DType::F32, DType::F32),
            (DType::F16, DType::F32),
            (DType::BF16, DType::BF16),
        ] {
            rt.dtype = model;
            assert_eq!(rt.vae_dtype(), vae);
        }
    }
}
