//! Backends re-exported for convenience, each behind its feature, and which of the crate's own
//! GPU kernels run.

#[cfg(feature = "flex")]
pub use burn_flex::Flex;
#[cfg(feature = "ndarray")]
pub use burn_ndarray::NdArray;
#[cfg(feature = "wgpu")]
pub use burn_wgpu::{Wgpu, WgpuDevice};

pub use crate::ops::KernelStatus;
pub use crate::ops::engine::KernelOptions;
#[cfg(feature = "wgpu")]
pub use crate::ops::gpu::adapter::WgpuAdapter;

/// Which of this crate's GPU kernels run (docs/decisions.md says what each replaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GpuKernels {
    /// Row-wise top-k on the device; without it the pre-activations are read back and
    /// selected on the host.
    pub top_k: KernelStatus,
    /// Sparse decode and gradient (grouped row sums, gathered dot products); without it
    /// burn's gather and scatter-add run.
    pub sparse: KernelStatus,
    /// The optimiser's update (decoder gradient projection, clipping, Adam, decoder
    /// renormalisation) in six kernel launches; without it burn's tensor operations run.
    pub update: KernelStatus,
    /// Concatenation of a step's small pieces (losses, norms, the gradient's inputs) in one
    /// launch; without it burn's `cat` runs, a launch per piece.
    pub pack: KernelStatus,
    /// The loss's batch statistics (the residual, the centred variances, the main term's
    /// NMSE, the AuxK candidates left) and the AuxK term in four launches; without it
    /// burn's tensor operations run. Opt-in ([`KernelOptions::loss`]): on an H200 it made
    /// the large step slower.
    pub loss: KernelStatus,
}

/// The adapter burn-wgpu will run on for `device`, found the way burn-wgpu finds it, without
/// starting burn-wgpu. Call it before the first tensor on a [`Wgpu`] device: where burn-wgpu
/// finds no adapter (a machine without a GPU driver) it panics on that first tensor, while
/// this returns an error that says what to install. A device made from the caller's own
/// wgpu setup (`WgpuDevice::Existing`) is taken as it is; the `CUBECL_WGPU_DEFAULT_DEVICE`
/// override of the default device is not looked at (burn-wgpu's own message covers it).
///
/// # Errors
/// [`Error::NoDevice`](crate::Error::NoDevice) when there is no such adapter: for the
/// default device, none at all on the graphics API burn-wgpu uses (Vulkan, or Metal on
/// macOS); for `DiscreteGpu(n)` and the other kinds, fewer than `n + 1` of that kind.
///
/// ```no_run
/// use topk_sae::backend::wgpu_adapter;
/// match wgpu_adapter(&Default::default()) {
///     Ok(adapter) => println!("training on {adapter}"),
///     Err(e) => eprintln!("{e}"),
/// }
/// ```
#[cfg(feature = "wgpu")]
pub fn wgpu_adapter(device: &WgpuDevice) -> crate::Result<WgpuAdapter> {
    crate::ops::gpu::adapter::find(device)
}

/// Which of the crate's GPU kernels run for backend `B` on `device` under `options` (a
/// model's are [`TopKSae::kernels`](crate::TopKSae::kernels)). On burn-wgpu (feature `wgpu`)
/// each one does when the options allow it and its first-use check passed: the first time a
/// kernel is needed it runs once on a small problem with a known answer, and a wrong answer (a
/// driver that miscompiles it) switches it off for the process, with a `log` warning. Other
/// backends run none. Results are the same either way; only the speed differs.
///
/// ```
/// # #[cfg(feature = "ndarray")] {
/// use topk_sae::backend::{KernelOptions, KernelStatus, NdArray, gpu_kernels};
/// let kernels = gpu_kernels::<NdArray<f32>>(&Default::default(), &KernelOptions::default());
/// assert_eq!(kernels.top_k, KernelStatus::Unavailable);
/// assert_eq!(kernels.sparse, KernelStatus::Unavailable);
/// assert_eq!(kernels.update, KernelStatus::Unavailable);
/// assert_eq!(kernels.pack, KernelStatus::Unavailable);
/// assert_eq!(kernels.loss, KernelStatus::Unavailable);
/// # }
/// ```
pub fn gpu_kernels<B: burn::tensor::backend::Backend>(
    device: &B::Device,
    options: &KernelOptions,
) -> GpuKernels {
    #[cfg(feature = "wgpu")]
    {
        GpuKernels {
            top_k: crate::ops::gpu::topk::status::<B>(options, device),
            sparse: crate::ops::gpu::sparse::status::<B>(options, device),
            update: crate::ops::gpu::update::status::<B>(options, device),
            pack: crate::ops::gpu::pack::status::<B>(options, device),
            loss: crate::ops::gpu::stats::status::<B>(options, device),
        }
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = (device, options);
        GpuKernels::default()
    }
}
