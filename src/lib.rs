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
//! - `report` (default): [`report`], the analysis as an HTML page and a JSON file (pulls in
//!   plotters for the SVG plots).
//! - `wgpu`: the GPU backend, re-exported as `backend::Wgpu`, with our GPU kernels; which of
//!   them a model may use is its [`backend::KernelOptions`] ([`TopKSae::with_kernels`]).
//!
//! The library reads no environment variable and prints nothing: what it decides is in its
//! arguments (configs, options), and what it reports is in its return values (a GPU kernel
//! that fails its first-use check is also a `log` warning).
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
mod pass;
pub mod prelude;
#[cfg(feature = "profile")]
pub mod profile;
#[cfg(not(feature = "profile"))]
mod profile;
mod recipe;
#[cfg(feature = "report")]
pub mod report;
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

pub mod backend;

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
