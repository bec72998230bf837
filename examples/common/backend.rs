//! `--backend ndarray|flex|wgpu`, shared by the examples: runs a job generic over the backend on the
//! one named.

use burn::tensor::backend::Backend;
use topk_sae::{Error, Result};

/// Work that runs on any backend.
pub trait Job {
    /// Runs on backend `B` and its `device`.
    fn run<B: Backend>(self, device: &B::Device) -> Result<()>;
}

/// Runs `job` on the backend called `name` (`ndarray`, or `flex` and `wgpu` when built with
/// those features).
pub fn run_on(name: &str, job: impl Job) -> Result<()> {
    match name {
        "ndarray" => job.run::<topk_sae::backend::NdArray<f32>>(&Default::default()),
        #[cfg(feature = "flex")]
        "flex" => job.run::<topk_sae::backend::Flex>(&Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            let device = Default::default();
            // burn-wgpu panics on finding no adapter: say so first, and what it runs on.
            let adapter = topk_sae::backend::wgpu_adapter(&device)?;
            eprintln!("burn-wgpu runs on {adapter}");
            let result = job.run::<topk_sae::backend::Wgpu>(&device);
            warn_failed_kernels(topk_sae::backend::gpu_kernels::<topk_sae::backend::Wgpu>(
                &device,
                &kernel_options(),
            ));
            result
        }
        other => Err(Error::InvalidConfig {
            field: "backend",
            value: other.to_owned(),
            reason: backend_choices(),
        }),
    }
}

/// Which of the crate's GPU kernels the examples' models use: the defaults, changed by the
/// variables the benchmark script (`scripts/gpu_bench.sh`) sets to time a kernel against the
/// portable path: `TOPK_SAE_DEVICE_{TOPK,SPARSE,UPDATE,PACK,READ}=0` and
/// `TOPK_SAE_TOPK_FILTER=0` leave one out, `TOPK_SAE_DEVICE_{LOSS,STEP_READ}=1` add an opt-in
/// one.
pub fn kernel_options() -> topk_sae::backend::KernelOptions {
    let var = |name: &str| std::env::var(name).ok();
    let off = |name: &str| var(name).is_some_and(|v| v == "0");
    let on = |name: &str| var(name).is_some_and(|v| v == "1");
    let mut options = topk_sae::backend::KernelOptions::default();
    options.top_k &= !off("TOPK_SAE_DEVICE_TOPK");
    options.top_k_filter &= !off("TOPK_SAE_TOPK_FILTER");
    options.sparse &= !off("TOPK_SAE_DEVICE_SPARSE");
    options.update &= !off("TOPK_SAE_DEVICE_UPDATE");
    options.pack &= !off("TOPK_SAE_DEVICE_PACK");
    options.issued_reads &= !off("TOPK_SAE_DEVICE_READ");
    options.loss |= on("TOPK_SAE_DEVICE_LOSS");
    options.issued_step_reads |= on("TOPK_SAE_DEVICE_STEP_READ");
    options
}

/// What `--backend` accepts in this build, and how to get the others.
fn backend_choices() -> String {
    let (mut built, mut missing) = (vec!["ndarray"], Vec::new());
    for (name, on) in [
        ("flex", cfg!(feature = "flex")),
        ("wgpu", cfg!(feature = "wgpu")),
    ] {
        if on {
            built.push(name);
        } else {
            missing.push(format!("{name} needs a build with --features {name}"));
        }
    }
    if missing.is_empty() {
        format!("must be {}", built.join(" or "))
    } else {
        format!("must be {} ({})", built.join(" or "), missing.join("; "))
    }
}

/// Says on stderr which of the crate's GPU kernels failed their first-use check on this device
/// (the library only logs it).
#[cfg(feature = "wgpu")]
fn warn_failed_kernels(kernels: topk_sae::backend::GpuKernels) {
    use topk_sae::backend::KernelStatus;
    for (name, status) in [
        ("top-k", kernels.top_k),
        ("sparse", kernels.sparse),
        ("optimiser update", kernels.update),
        ("concatenation", kernels.pack),
        ("loss statistics", kernels.loss),
    ] {
        if status == KernelStatus::FailedCheck {
            eprintln!(
                "warning: the GPU {name} kernel gave a wrong answer in its first-use check on \
                 this device; the portable path ran instead (slower, same results)"
            );
        }
    }
}

/// Defines `main` for an example whose `run::<B>(&Args, &B::Device)` is generic over the backend:
/// parses `Args`, runs on `args.backend`, prints an error and exits with 1 on failure.
macro_rules! backend_main {
    ($args:ty, $run:ident) => {
        /// `$run` as a job for `--backend`.
        struct Main<'a>(&'a $args);

        impl backend::Job for Main<'_> {
            fn run<B: burn::tensor::backend::Backend>(self, device: &B::Device) -> Result<()> {
                $run::<B>(self.0, device)
            }
        }

        fn main() {
            let args = <$args as clap::Parser>::parse();
            if let Err(e) = backend::run_on(&args.backend, Main(&args)) {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    };
}
pub(crate) use backend_main;
