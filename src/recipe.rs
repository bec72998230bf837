//! The recipe: everything that defines a training run ([`TrainConfig`]: the model, the loss, the
//! optimiser, batches, when to stop, normalisation, seed) and which engine runs its steps
//! ([`StepEngine`]). Checkpoints store it; [`crate::train`] runs it.

use burn::config::Config;
use burn::tensor::backend::Backend;

use crate::data::NormalizationKind;
use crate::error::{Error, Result};
use crate::loss::SaeLossConfig;
use crate::ops::update::AdamConfig;
use crate::sae::TopKSaeConfig;

/// Which implementation runs the training step. Both compute the same loss, gradient and update
/// (compared in `tests/it/gradients.rs` and `tests/it/training.rs`); they differ in where the work
/// happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum StepEngine {
    /// [`StepEngine::Host`] on CPU backends (burn-ndarray, Flex), [`StepEngine::Tensor`] on the
    /// others (GPUs).
    #[default]
    Auto,
    /// Burn tensor operations on the model's backend: generic, the path for GPUs.
    Tensor,
    /// Host kernels on `f32` buffers: one dense GEMM (ndarray's, multi-threaded), the sparse
    /// decode and its gradient in `O(batch * k * d_in)`, a fused Adam, parallel with rayon. The
    /// parameters stay on the host between steps; [`crate::Trainer::model`] uploads them.
    Host,
}

impl StepEngine {
    /// Whether this choice runs on the host for backend `B` (on any of its devices: `Auto`
    /// picks the host engine for the CPU backends, burn-ndarray and Flex).
    pub fn is_host<B: Backend>(self, device: &B::Device) -> bool {
        let _ = device;
        match self {
            Self::Host => true,
            Self::Tensor => false,
            Self::Auto => crate::ops::engine::Engine::is_host::<B>(),
        }
    }
}

/// Everything that defines a training run. Defaults are the reference recipe.
#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    /// The model to train.
    pub model: TopKSaeConfig,
    /// The loss.
    #[config(default = "SaeLossConfig::new()")]
    pub loss: SaeLossConfig,
    /// The optimiser.
    #[config(default = "AdamConfig::new()")]
    pub optimizer: AdamConfig,
    /// Rows per step, at least 2; the last partial batch of an epoch is kept, except a last
    /// batch of one row, which joins the batch before it (the loss divides by a batch's
    /// variance, which one row does not have).
    #[config(default = 1024)]
    pub batch_size: usize,
    /// Passes over the data; training stops after `epochs` or `max_steps`, whichever comes first.
    #[config(default = 1)]
    pub epochs: usize,
    /// Optional cap on the number of steps.
    #[config(default = "None")]
    pub max_steps: Option<u64>,
    /// Clip the global gradient L2 norm to this value (`None`: no clipping).
    #[config(default = "Some(1.0)")]
    pub clip_grad_norm: Option<f64>,
    /// A latent is dead once it has not fired for more than this many samples.
    #[config(default = 272_384)]
    pub dead_threshold_samples: u64,
    /// Input normalisation fitted on the training data and kept with the model.
    #[config(default = "NormalizationKind::None")]
    pub normalization: NormalizationKind,
    /// Seed of the per-epoch shuffles.
    #[config(default = 0)]
    pub seed: u64,
    /// Which implementation runs the training step (same mathematics either way).
    #[config(default = "StepEngine::Auto")]
    pub engine: StepEngine,
}

impl TrainConfig {
    /// Checks every field, the model's and the loss's included.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.loss.validate(self.model.d_sae)?;
        let opt = &self.optimizer;
        if !(opt.lr.is_finite() && opt.lr > 0.0) {
            return Err(Error::invalid(
                "optimizer.lr",
                opt.lr,
                "must be finite and > 0",
            ));
        }
        for (field, beta) in [
            ("optimizer.beta_1", opt.beta_1),
            ("optimizer.beta_2", opt.beta_2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::invalid(field, beta, "must be in [0, 1)"));
            }
        }
        if !(opt.epsilon.is_finite() && opt.epsilon > 0.0) {
            return Err(Error::invalid(
                "optimizer.epsilon",
                opt.epsilon,
                "must be finite and > 0",
            ));
        }
        if self.batch_size < 2 {
            return Err(Error::invalid("batch_size", self.batch_size, ONE_ROW));
        }
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", self.epochs, "must be >= 1"));
        }
        if self.max_steps == Some(0) {
            return Err(Error::invalid("max_steps", 0, "must be >= 1 when given"));
        }
        if let Some(clip) = self.clip_grad_norm
            && !(clip.is_finite() && clip > 0.0)
        {
            return Err(Error::invalid(
                "clip_grad_norm",
                clip,
                "must be finite and > 0 when given",
            ));
        }
        Ok(())
    }

    /// Steps a run over `rows` rows takes: `epochs` times the batches of an epoch
    /// (`ceil(rows / batch_size)`, less one when the last would hold a single row: it joins the
    /// one before), capped by `max_steps`.
    pub fn total_steps(&self, rows: usize) -> u64 {
        let batch = self.batch_size.max(1);
        let mut per_epoch = rows.div_ceil(batch) as u64;
        if folds_last_row(rows, batch) {
            per_epoch -= 1;
        }
        let steps = per_epoch.saturating_mul(self.epochs as u64);
        self.max_steps.map_or(steps, |m| steps.min(m))
    }

    /// The largest batch a run takes: `batch_size`, or one more where an epoch's last row joins
    /// the batch before it.
    pub(crate) fn largest_batch(&self) -> usize {
        self.batch_size.saturating_add(1)
    }

    /// The largest batch a run over `rows` rows takes: `batch_size` capped at `rows` (one more
    /// where an epoch's last row joins the batch before it). What memory estimates should use.
    pub fn largest_batch_of(&self, rows: usize) -> usize {
        if folds_last_row(rows, self.batch_size) {
            self.largest_batch()
        } else {
            self.batch_size.min(rows)
        }
    }
}

/// Whether an epoch of `rows` rows in batches of `batch` ends on a single row, which then joins
/// the batch before it.
pub(crate) fn folds_last_row(rows: usize, batch: usize) -> bool {
    rows > batch && rows % batch == 1
}

/// Why a batch needs two rows: what `batch_size`'s check, the trainer's data check and
/// [`crate::Trainer::step`] say.
pub(crate) const ONE_ROW: &str = "must hold at least 2 rows: the loss divides by a batch's variance, which one row does not have";
