//! # topk-sae
//!
//! Train, evaluate and use **top-k sparse autoencoders** (SAEs) on dense embeddings, such as
//! sentence embeddings of scientific abstracts, on any [burn](https://burn.dev) backend:
//! CPU through `burn-ndarray` (feature `ndarray`, the default) or `burn-flex` (feature `flex`),
//! GPU through `burn-wgpu` (feature `wgpu`).
//!
//! The default recipe is the one of "Disentangling Dense Embeddings with Sparse Autoencoders"
//! (O'Neill et al., 2024): `pre = (x - b_dec) @ w_enc + b_enc`, keep each row's `k` largest
//! pre-activations and apply ReLU to them, decode with unit-norm decoder rows; loss = normalised
//! MSE + AuxK on dead latents; Adam at 1e-4 with decoder-gradient projection, global-norm
//! clipping and decoder renormalisation.
//!
//! ## Quick start
//! ```
//! use topk_sae::prelude::*;
//! use topk_sae::data::{synthetic, SyntheticConfig};
//! # fn main() -> topk_sae::Result<()> {
//! type B = burn_ndarray::NdArray<f32>;
//! let device = Default::default();
//!
//! // 2,000 unit-norm rows of width 32 mixing 64 planted directions.
//! let data = synthetic(&SyntheticConfig::new().with_rows(2_000).with_d_in(32).with_n_directions(64))?
//!     .embeddings;
//!
//! let config = TrainConfig::new(TopKSaeConfig::new(32, 128, 4))
//!     .with_batch_size(256)
//!     .with_epochs(2)
//!     .with_optimizer(AdamConfig::new().with_lr(1e-3));
//! let trained = train::<B>(config, &data, &device, |_report| {})?;
//!
//! let metrics = evaluate(&trained.model, &data, &trained.normalizer, 1024, &device)?;
//! assert!(metrics.nmse < 1.0 && metrics.l0 <= 4.0);
//! println!("{}\n{metrics}", Metrics::table_header());
//! # Ok(()) }
//! ```
//!
//! ## Concepts
//! - [`TopKSaeConfig`] → [`TopKSae`]: the model, a burn [`Module`](burn::module::Module) with
//!   parameters `w_enc [d_in, d_sae]`, `b_enc [d_sae]`, `w_dec [d_sae, d_in]`, `b_dec [d_in]`.
//!   Inference needs only `B: Backend`.
//! - [`loss`]: the objective and its hand-derived gradient; training needs no autodiff backend.
//! - [`train`](mod@train): [`TrainConfig`], [`Trainer`], per-step reports through a callback.
//! - [`metrics`]: dataset NMSE, explained variance, Log FD, Act Mean, L0, dead and dense fractions.
//! - [`data`]: `.npy` reading, validation, input normalisation ([`Normalizer`]), synthetic data.
//!
//! Top-k selection runs on the host by partial selection (O(d_sae) per row, ties keep the lower
//! latent index); see `docs/architecture.md` for the equations and data flow.
//!
//! ## Errors and panics
//! One policy for wrong input, wrong widths included:
//! - Functions that take data a user brings (files, [`Embeddings`], host slices, configs,
//!   folders to write: [`evaluate`], [`analysis::encode_corpus`], [`analysis::steer`],
//!   [`analysis::search`], [`train()`], [`checkpoint::save`], ...) return an [`Error`] naming
//!   the field, file, row or width at fault. They never panic on such input.
//! - The tensor methods of [`TopKSae`] ([`TopKSae::forward`], [`TopKSae::encode_topk`], ...) and
//!   [`Trainer::step`] treat a tensor's shape as part of the call, as burn's own operations do:
//!   a wrong width panics with a message naming `d_in` (each says so under `# Panics`).
//!   [`TopKSae::check_width`] turns that into an [`Error::WidthMismatch`] first, for tensors
//!   that come from elsewhere.
//!
//! ## Features
//! - `ndarray` (default): the CPU backend, re-exported as [`backend::NdArray`].
//! - `flex`: burn's newer CPU backend, re-exported as `backend::Flex`.
//! - `wgpu`: the GPU backend, re-exported as `backend::Wgpu`.
//!
//! ## Stability
//! Pre-1.0: minor versions may change the API; every change is listed in `CHANGELOG.md`.

pub mod analysis;
pub mod checkpoint;
pub mod data;
pub mod error;
mod host;
pub mod loss;
pub mod metrics;
mod ops;
pub mod prelude;
mod profile;
mod recipe;
pub mod sae;
pub mod train;

/// Row-wise top-k selection, on the host by partial selection ([`topk::topk_rows`]) and for
/// device tensors ([`topk::topk_tensor`], one GPU kernel on burn-wgpu).
pub mod topk {
    pub use crate::ops::topk::{topk_rows, topk_tensor};
}

/// The backend the crate's unit tests run on: burn-wgpu with feature `test-wgpu` (lavapipe in
/// CI), burn-ndarray otherwise.
#[cfg(all(test, not(feature = "test-wgpu")))]
pub(crate) type TestBackend = backend::NdArray<f32>;
#[cfg(all(test, feature = "test-wgpu"))]
pub(crate) type TestBackend = backend::Wgpu;

pub use data::{Embeddings, NormalizationKind, Normalizer};
pub use error::{Error, Result};
pub use loss::{LossParts, SaeLoss, SaeLossConfig, nmse};
pub use metrics::{Metrics, MetricsAccumulator, evaluate, evaluate_with_progress};
pub use sae::{DecoderBiasInit, HostCodes, SaeOutput, TopKLatents, TopKSae, TopKSaeConfig};
pub use train::{AdamConfig, StepReport, TrainConfig, Trained, Trainer, train};

/// Backends re-exported for convenience, each behind its feature, and which of the crate's own
/// GPU kernels run.
pub mod backend {
    #[cfg(feature = "flex")]
    pub use burn_flex::Flex;
    #[cfg(feature = "ndarray")]
    pub use burn_ndarray::NdArray;
    #[cfg(feature = "wgpu")]
    pub use burn_wgpu::{Wgpu, WgpuDevice};

    /// Whether one of this crate's GPU kernels runs, and if not, why.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    #[non_exhaustive]
    pub enum KernelStatus {
        /// It runs.
        Runs,
        /// Not this backend: the kernels are burn-wgpu's (feature `wgpu`).
        #[default]
        Unavailable,
        /// Switched off by its environment variable set to `0`.
        SwitchedOff,
        /// It gave a wrong answer (or panicked) in its first-use check on this device, so the
        /// portable path runs: slower, same results.
        FailedCheck,
    }

    impl KernelStatus {
        /// A short name: `runs`, `unavailable`, `switched_off` or `failed_check`.
        pub fn name(self) -> &'static str {
            match self {
                Self::Runs => "runs",
                Self::Unavailable => "unavailable",
                Self::SwitchedOff => "switched_off",
                Self::FailedCheck => "failed_check",
            }
        }
    }

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
        /// burn's tensor operations run. Opt-in (`TOPK_SAE_DEVICE_LOSS=1`): on an H200 it made
        /// the large step slower.
        pub loss: KernelStatus,
    }

    /// The adapter (GPU, or software driver) burn-wgpu runs on for a device, from
    /// [`wgpu_adapter`].
    #[cfg(feature = "wgpu")]
    #[derive(Debug, Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct WgpuAdapter {
        /// The adapter's name as its driver gives it, e.g. `NVIDIA H200` or
        /// `llvmpipe (LLVM 15.0.6, 256 bits)`.
        pub name: String,
        /// The graphics API: `Vulkan`, `Metal`, `Dx12` or `Gl`.
        pub api: String,
        /// A software driver on the CPU (Mesa's lavapipe, say): the results are right, and a
        /// CPU backend computes them faster.
        pub software: bool,
    }

    #[cfg(feature = "wgpu")]
    impl std::fmt::Display for WgpuAdapter {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} ({}", self.name, self.api)?;
            if self.software {
                write!(f, ", a software driver on the CPU")?;
            }
            write!(f, ")")
        }
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

    /// Which of the crate's GPU kernels run for backend `B` on `device`. On burn-wgpu (feature
    /// `wgpu`) each one does unless its environment variable (`TOPK_SAE_DEVICE_TOPK`,
    /// `TOPK_SAE_DEVICE_SPARSE`, `TOPK_SAE_DEVICE_UPDATE`, `TOPK_SAE_DEVICE_PACK`,
    /// `TOPK_SAE_DEVICE_LOSS`; that one is opt-in, on only with `1`) is `0` or its first-use
    /// check failed: the first time a kernel
    /// is needed it runs once on a small problem with a known answer, and a wrong answer (a
    /// driver that miscompiles it) switches it off for the process, with a `log` warning. Other
    /// backends run none. Results are the same either way; only the speed differs.
    ///
    /// ```
    /// # #[cfg(feature = "ndarray")] {
    /// use topk_sae::backend::{KernelStatus, NdArray, gpu_kernels};
    /// let kernels = gpu_kernels::<NdArray<f32>>(&Default::default());
    /// assert_eq!(kernels.top_k, KernelStatus::Unavailable);
    /// assert_eq!(kernels.sparse, KernelStatus::Unavailable);
    /// assert_eq!(kernels.update, KernelStatus::Unavailable);
    /// assert_eq!(kernels.pack, KernelStatus::Unavailable);
    /// assert_eq!(kernels.loss, KernelStatus::Unavailable);
    /// # }
    /// ```
    pub fn gpu_kernels<B: burn::tensor::backend::Backend>(device: &B::Device) -> GpuKernels {
        #[cfg(feature = "wgpu")]
        {
            GpuKernels {
                top_k: crate::ops::gpu::topk::status::<B>(device),
                sparse: crate::ops::gpu::sparse::status::<B>(device),
                update: crate::ops::gpu::update::status::<B>(device),
                pack: crate::ops::gpu::pack::status::<B>(device),
                loss: crate::ops::gpu::stats::status::<B>(device),
            }
        }
        #[cfg(not(feature = "wgpu"))]
        {
            let _ = device;
            GpuKernels::default()
        }
    }
}

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
