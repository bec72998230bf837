//! Training (SPEC §3): [`TrainConfig`], the [`Trainer`] and its step.
//!
//! Each step, in order: forward and loss with the hand-derived gradient ([`crate::loss`]);
//! remove from each decoder row's gradient its component along the row; clip the global
//! gradient norm; Adam; renormalise every decoder row to unit norm; update the dead-latent
//! counters (counted in samples).

mod init;
mod state;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::checkpoint::{self, CheckpointPolicy};
use crate::data::{Embeddings, Normalizer};
use crate::error::{Error, Result};
use crate::host::HostState;
use crate::loss::{Candidates, Evaluated, LossParts, SaeLoss};
use crate::ops::transfer::{HostCopies, ReadFor, to_host};
use crate::ops::update::{AdamState, update};
use crate::profile::mark;
use crate::recipe::ONE_ROW;
use crate::sae::TopKSae;

pub use crate::ops::update::{AdamConfig, normalize_rows, project_rows};
pub use crate::recipe::{StepEngine, TrainConfig};

/// What the trainer reports after each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Steps done, this one included (1-based).
    pub step: u64,
    /// Zero-based epoch of this step.
    pub epoch: usize,
    /// Rows in this step's batch.
    pub batch: usize,
    /// Loss terms of this step (before the update).
    pub loss: LossParts,
    /// Fraction of latents dead after this step.
    pub dead_frac: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// How long the host waited for this step's results (its loss and gradient norm, read back
    /// from the device). On a GPU backend, the device's work the host did not overlap with its
    /// own: compared with the step's time, it says whether the device or the host sets the
    /// pace. Zero with [`StepEngine::Host`]. A timing, so it differs between runs that
    /// otherwise report the same.
    pub device_wait: Duration,
}

/// Dead-latent counters (samples since each latent last fired) on the device, clamped just
/// past `threshold`, which changes no comparison with it; `None` when `threshold` or
/// `largest_batch` is above [`DEVICE_COUNTER_MAX`].
///
/// # Shapes
/// - returns `[since.len()]`
fn counters_to_device<B: Backend>(
    since: &[u64],
    threshold: u64,
    largest_batch: usize,
    device: &B::Device,
) -> Option<Tensor<B, 1, Int>> {
    if threshold > DEVICE_COUNTER_MAX || largest_batch as u64 > DEVICE_COUNTER_MAX {
        return None;
    }
    let clamped: Vec<i32> = since
        .iter()
        .map(|&s| i32::try_from(s.min(threshold + 1)).expect("clamped to at most 2^30"))
        .collect();
    let len = clamped.len();
    Some(Tensor::from_data(TensorData::new(clamped, [len]), device))
}

/// The dead-latent candidates (1, else 0) of a step of `batch` rows, from the counters before
/// it: the latents past `threshold` once the batch is counted, as the host's
/// `Trainer::dead_candidates` has them.
///
/// # Shapes
/// - `since`: `[d_sae]`; returns `[d_sae]`
fn candidates_from<B: Backend>(
    since: Tensor<B, 1, Int>,
    batch: usize,
    threshold: u64,
) -> Tensor<B, 1, Int> {
    since
        .add_scalar(batch as i64)
        .greater_elem(threshold as i64)
        .int()
}

/// The counters after a step of `batch` rows that fired the latents where `fired` is 1.0: 0
/// for those, the batch added for the rest, clamped just past `threshold`.
///
/// # Shapes
/// - `since`, `fired`: `[d_sae]`; returns `[d_sae]`
fn counters_after<B: Backend>(
    since: Tensor<B, 1, Int>,
    fired: Tensor<B, 1>,
    batch: usize,
    threshold: u64,
) -> Tensor<B, 1, Int> {
    since
        .add_scalar(batch as i64)
        .clamp_max((threshold + 1) as i64)
        .mask_fill(fired.greater_elem(0.5), 0)
}

/// A step of the tensor engine queued on the device and not read back yet
/// ([`Trainer::submit`], [`Trainer::complete`]).
struct Pending<B: Backend> {
    /// Its number (1-based), for a divergence error.
    step: u64,
    /// The epoch its batch belongs to.
    epoch: usize,
    /// Rows in its batch.
    batch: usize,
    /// `[terms + 4 (+ d_sae)]`: the loss terms, the squared gradient norms, and the fired
    /// latents when they are on the device; on their way to the host.
    read_back: HostCopies<B, 1>,
    /// `[d_sae]`, 1.0 for the latents that fired, when on the device.
    fired: Option<Tensor<B, 1>>,
    /// `[d_sae]`: the samples since each latent last fired after it (clamped just past the dead
    /// threshold), when kept on the device.
    since: Option<Tensor<B, 1, Int>>,
    out: Evaluated<B>,
    /// The model and optimiser state after it.
    model: TopKSae<B>,
    adam: AdamState<B>,
}

/// Where the live parameters and the optimiser state are.
#[derive(Debug)]
enum Engine<B: Backend> {
    /// In `Trainer::model`, updated with tensor operations.
    Tensor(AdamState<B>),
    /// On the host; `Trainer::model` only supplies the parameter ids.
    Host(Box<HostState>),
}

/// Most bytes of training rows [`Trainer::fit`] keeps on a GPU: 4 GiB, 699,050 rows of 1536
/// floats. Larger sets are uploaded batch by batch.
const RESIDENT_MAX_BYTES: u64 = 4 << 30;

/// Rows per upload when the training rows are moved to the device.
const RESIDENT_PIECE_ROWS: usize = 16_384;

/// The largest dead threshold (in samples), and batch size, for which `fit` keeps the
/// dead-latent counters on the device, as 32-bit integers clamped just past the threshold: a
/// counter of at most 2^30 plus a batch stays within `i32`. Above it, each queued step uploads
/// its candidates from the host's counters instead.
const DEVICE_COUNTER_MAX: u64 = (1 << 30) - 1;

/// Trains a [`TopKSae`] with the hand-derived gradient. Generic over any backend: no autodiff
/// is involved.
#[derive(Debug)]
pub struct Trainer<B: Backend> {
    config: TrainConfig,
    model: TopKSae<B>,
    loss: SaeLoss,
    engine: Engine<B>,
    normalizer: Normalizer,
    since_fired: Vec<u64>,
    step: u64,
    samples_seen: u64,
    epoch: usize,
    /// This epoch's row order (empty before the first epoch starts).
    order: Vec<usize>,
    /// Index in `order` of the next batch's first row.
    position: usize,
    /// Shuffles drawn from `rng` so far (replayed on resume).
    shuffles: u64,
    rng: ChaCha8Rng,
    checkpoints: Option<CheckpointPolicy>,
    /// [`Embeddings::fingerprint`] of the rows this run trains on, once known.
    data_fingerprint: Option<u64>,
    device: B::Device,
}

/// A trained model with what is needed to use it, and to save it: [`Trained::save`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Trained<B: Backend> {
    /// The model.
    pub model: TopKSae<B>,
    /// The normalisation to apply to every input before the model.
    pub normalizer: Normalizer,
    /// The configuration it was trained with.
    pub config: TrainConfig,
    /// Steps done in all, from the start of the run (a resumed run's earlier steps included).
    pub steps: u64,
    /// Steps this call ran: fewer than `steps` for a resumed run.
    pub steps_run: u64,
    /// Training rows seen in all.
    pub samples_seen: u64,
}

impl<B: Backend> Trained<B> {
    /// Saves the model with its normaliser, configuration, step and samples seen as a native
    /// checkpoint (loadable with [`checkpoint::load`] and [`checkpoint::load_any`]), with the
    /// rules of [`checkpoint::save`]: `dir` is new, empty, or a checkpoint this crate wrote.
    /// It holds no optimiser state: to train further after a crash, use a
    /// [`CheckpointPolicy`].
    ///
    /// ```
    /// # use topk_sae::prelude::*;
    /// # fn main() -> topk_sae::Result<()> {
    /// # type B = topk_sae::backend::NdArray<f32>;
    /// # let data = topk_sae::data::synthetic(&topk_sae::data::SyntheticConfig::new()
    /// #     .with_rows(300).with_d_in(8).with_n_directions(10))?.embeddings;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let device = Default::default();
    /// let config = TrainConfig::new(TopKSaeConfig::new(8, 16, 2)).with_batch_size(100);
    /// let trained = train::<B>(config, &data, &device, |_| {})?;
    /// trained.save(dir.path().join("sae"))?;
    /// let loaded = checkpoint::load::<B>(dir.path().join("sae"), &device)?;
    /// assert_eq!((loaded.meta.step, loaded.meta.samples_seen), (3, 300));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The errors of [`checkpoint::save`].
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        checkpoint::save(
            dir,
            &self.model,
            &self.normalizer,
            Some(&self.config),
            self.steps,
            self.samples_seen,
        )
    }
}

impl<B: Backend> Trainer<B> {
    /// Validates `config`, fits the normalisation on `data` and initialises the model from it.
    ///
    /// # Errors
    /// The errors of [`TrainConfig::validate`]; [`Error::WidthMismatch`] when `data` is not
    /// `model.d_in` wide.
    pub fn new(config: TrainConfig, data: &Embeddings, device: &B::Device) -> Result<Self> {
        config.validate()?;
        data.check_width(config.model.d_in)?;
        let normalizer = Normalizer::fit(config.normalization, data);
        let head_rows = data.rows().min(config.model.b_dec_init_rows);
        let mut head = data.as_slice()[..head_rows * data.d_in()].to_vec();
        normalizer.apply_rows(&mut head, data.d_in());
        let head = Embeddings::from_vec(head, head_rows, data.d_in())?;
        let model = config.model.try_init_from_data::<B>(&head, device)?;
        let mut trainer = Self::from_model(config, model, normalizer, device)?;
        trainer.data_fingerprint = Some(data.fingerprint());
        Ok(trainer)
    }

    /// Starts training an existing model (fresh optimiser state and dead-latent counters).
    ///
    /// # Errors
    /// The errors of [`TrainConfig::validate`]; [`Error::InvalidArgument`] naming `model` when
    /// its dimensions differ from `config.model`; [`Error::InvalidConfig`] when `normalizer`
    /// does not fit them ([`Normalizer::check`]).
    pub fn from_model(
        config: TrainConfig,
        model: TopKSae<B>,
        normalizer: Normalizer,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        let m = &config.model;
        normalizer.check(m.d_in)?;
        if (model.d_in(), model.d_sae(), model.k()) != (m.d_in, m.d_sae, m.k) {
            return Err(Error::argument(
                "model",
                format!(
                    "[d_in {}, d_sae {}, k {}]",
                    model.d_in(),
                    model.d_sae(),
                    model.k()
                ),
                format!(
                    "must match the config's [d_in {}, d_sae {}, k {}]",
                    m.d_in, m.d_sae, m.k
                ),
            ));
        }
        let loss = config.loss.init(m.k, m.d_sae)?;
        let engine = if config.engine.is_host::<B>(device) {
            Engine::Host(Box::new(HostState::new(
                m.k,
                &to_host(model.w_enc.val()),
                to_host(model.b_enc.val()),
                to_host(model.w_dec.val()),
                to_host(model.b_dec.val()),
            )))
        } else {
            Engine::Tensor(AdamState::zeros_like(&model.params()))
        };
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            since_fired: vec![0; m.d_sae],
            loss,
            engine,
            normalizer,
            model,
            step: 0,
            samples_seen: 0,
            epoch: 0,
            order: Vec::new(),
            position: 0,
            shuffles: 0,
            checkpoints: None,
            data_fingerprint: None,
            device: device.clone(),
            config,
        })
    }

    /// Saves a checkpoint every `policy.every_steps` steps and at the end of [`Trainer::fit`].
    /// A trainer from [`Trainer::resume`] already keeps the policy of the run it resumes; this
    /// replaces it.
    #[must_use]
    pub fn with_checkpoints(mut self, policy: CheckpointPolicy) -> Self {
        self.checkpoints = Some(policy);
        self
    }

    /// Saves no checkpoints (a resumed run's policy included).
    #[must_use]
    pub fn without_checkpoints(mut self) -> Self {
        self.checkpoints = None;
        self
    }

    /// Trains with `options` deciding which of this crate's GPU kernels the steps may use (the
    /// model's own, [`TopKSae::kernels`], otherwise: the defaults for [`Trainer::new`] and
    /// [`Trainer::resume`]). Results are the same to float rounding; only the speed differs.
    #[must_use]
    pub fn with_kernels(mut self, options: crate::ops::engine::KernelOptions) -> Self {
        self.model = self.model.with_kernels(options);
        self
    }

    /// Where and how often checkpoints are saved, if they are.
    pub fn checkpoints(&self) -> Option<&CheckpointPolicy> {
        self.checkpoints.as_ref()
    }

    /// Changes when training stops: after `epochs` passes over the data, or `max_steps` steps,
    /// both counted from the start of the run (the steps already done included), whichever
    /// comes first. For training a resumed run further: no step depends on these, so it
    /// continues as a run started with them would have, to the bit. Checkpoints saved later
    /// record the new values.
    ///
    /// ```
    /// # use topk_sae::prelude::*;
    /// use topk_sae::{Trainer, checkpoint::CheckpointPolicy};
    /// # fn main() -> topk_sae::Result<()> {
    /// # type B = topk_sae::backend::NdArray<f32>;
    /// # let data = topk_sae::data::synthetic(&topk_sae::data::SyntheticConfig::new()
    /// #     .with_rows(300).with_d_in(8).with_n_directions(10))?.embeddings;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let config = TrainConfig::new(TopKSaeConfig::new(8, 16, 2)).with_batch_size(100);
    /// let device = Default::default();
    /// let policy = CheckpointPolicy::new(dir.path(), 100);
    /// Trainer::<B>::new(config, &data, &device)?
    ///     .with_checkpoints(policy.clone())
    ///     .fit(&data, |_| {})?; // 1 epoch of 300 rows: 3 steps, saved at the end
    /// let more = Trainer::<B>::resume(policy.step_dir(3), &device)?
    ///     .with_stop(4, None)?
    ///     .fit(&data, |_| {})?;
    /// assert_eq!(more.steps, 12);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `epochs` is 0 or `max_steps` is `Some(0)`.
    pub fn with_stop(mut self, epochs: usize, max_steps: Option<u64>) -> Result<Self> {
        let config = self
            .config
            .clone()
            .with_epochs(epochs)
            .with_max_steps(max_steps);
        config.validate()?;
        self.config = config;
        Ok(self)
    }

    /// The model as trained so far (with [`StepEngine::Host`], its parameters are uploaded from
    /// the host copy: call it when needed, not every step).
    pub fn model(&self) -> TopKSae<B> {
        match &self.engine {
            Engine::Tensor(_) => self.model.clone(),
            Engine::Host(h) => {
                let m = &self.model;
                let upload2 = |v: Vec<f32>, dims: [usize; 2]| {
                    Tensor::<B, 2>::from_data(TensorData::new(v, dims), &self.device)
                };
                let upload1 = |v: Vec<f32>| {
                    let n = v.len();
                    Tensor::<B, 1>::from_data(TensorData::new(v, [n]), &self.device)
                };
                let mut out = m.clone();
                out.w_enc = Param::initialized(m.w_enc.id, upload2(h.w_enc(), [h.d_in, h.d_sae]));
                out.b_enc = Param::initialized(m.b_enc.id, upload1(h.b_enc.clone()));
                out.w_dec =
                    Param::initialized(m.w_dec.id, upload2(h.w_dec.clone(), [h.d_sae, h.d_in]));
                out.b_dec = Param::initialized(m.b_dec.id, upload1(h.b_dec.clone()));
                out
            }
        }
    }

    /// Which engine runs the steps: [`StepEngine::Host`] or [`StepEngine::Tensor`].
    pub fn engine(&self) -> StepEngine {
        match self.engine {
            Engine::Tensor(_) => StepEngine::Tensor,
            Engine::Host(_) => StepEngine::Host,
        }
    }

    /// The fitted input normalisation.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps done.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Which latents are dead now (not fired for more than the threshold), `d_sae` entries.
    pub fn dead_mask(&self) -> Vec<bool> {
        self.since_fired
            .iter()
            .map(|&s| s > self.config.dead_threshold_samples)
            .collect()
    }

    /// Trains for `epochs` passes (or until `max_steps`), reshuffling every epoch, calling
    /// `on_step` after each step. Returns the trained model.
    ///
    /// On a GPU backend the normalised rows are copied to the device once, for the whole call,
    /// when they take at most 4 GiB (and fit the device's largest buffer), and each batch is
    /// gathered there; larger sets are uploaded batch by batch. Either way the batches, and so
    /// the results, are the same. With the rows on the device, each step is queued before the
    /// one before it is read back, so that the host prepares a step while the GPU runs the
    /// last: `on_step` then sees a step's report once the next step is queued (the reports and
    /// the model are those of one step at a time, to the bit). A step after which a checkpoint
    /// is due is read back before the next is queued.
    ///
    /// # Errors
    /// [`Error::WidthMismatch`] when `data` is not `d_in` wide; [`Error::InvalidArgument`]
    /// naming `data` when it holds fewer than 2 rows or only copies of one row (the loss
    /// divides by a batch's variance); [`Error::InvalidConfig`] naming `batch_size` on a GPU whose largest buffer
    /// cannot hold a batch's `[rows, d_sae]` pre-activations; [`Error::Diverged`] naming the step
    /// whose loss or gradient was NaN or infinite.
    pub fn fit(
        mut self,
        data: &Embeddings,
        mut on_step: impl FnMut(&StepReport),
    ) -> Result<Trained<B>> {
        self.check_data(data)?;
        if let Some(policy) = &self.checkpoints {
            policy.check(self.step)?;
        }
        self.data_fingerprint = Some(data.fingerprint());
        let first_step = self.step;
        let n = data.rows();
        let total = self.config.total_steps(n);
        let d_in = data.d_in();
        let resident = self.resident_rows(data);
        let mut last_saved = None;
        // On a GPU (rows on the device), each step is queued before the one before it is read
        // back, so that the host prepares a step while the device still runs the last one. The
        // next step's dead-latent candidates are then worked out on the device
        // (`candidates_after`); the results are the same as one step at a time.
        let mut pending: Option<Pending<B>> = None;
        // With resident rows: the order of the current epoch on the device, and its shuffle.
        let mut order_on_device: Option<(u64, Tensor<B, 1, Int>)> = None;
        loop {
            let queued = self.step + u64::from(pending.is_some());
            let more = queued < total && self.epoch < self.config.epochs;
            // The pending step is completed first when there is no next step, when a
            // checkpoint is due after it (which records the order and position as of that
            // step), or when its fired latents are not on the device.
            if let Some(p) = pending.take() {
                let due = self
                    .checkpoints
                    .as_ref()
                    .is_some_and(|c| (self.step + 1).is_multiple_of(c.every_steps));
                if more && !due && p.fired.is_some() {
                    pending = Some(p);
                } else {
                    let report = self.complete(p)?;
                    on_step(&report);
                    self.checkpoint_if_due(&mut last_saved)?;
                }
            }
            if !more {
                break;
            }
            let end = self.next_batch(n);
            let rows = &self.order[self.position..end];
            if let (Some(resident), Engine::Tensor(adam)) = (&resident, &self.engine) {
                // The epoch's order goes to the device once an epoch, and each step slices its
                // batch out of it: an upload makes cubecl submit the work queued before it.
                if order_on_device
                    .as_ref()
                    .is_none_or(|(shuffle, _)| *shuffle != self.shuffles)
                {
                    let all: Vec<i64> = self.order.iter().map(|&r| r as i64).collect();
                    let all =
                        Tensor::<B, 1, Int>::from_data(TensorData::new(all, [n]), &self.device);
                    order_on_device = Some((self.shuffles, all));
                }
                let (_, order) = order_on_device.as_ref().expect("uploaded above");
                let at = order.clone().narrow(0, self.position, end - self.position);
                let x = resident.clone().select(0, at);
                // After a pending step, the candidates are worked out on the device, without
                // reading it back; else from the host's counters.
                let host_candidates;
                let candidates = if let Some(p) = &pending {
                    self.candidates_after(p, rows.len())
                } else {
                    host_candidates = self.dead_candidates(rows.len());
                    Candidates::Host(&host_candidates)
                };
                let (model, adam) = pending
                    .as_ref()
                    .map_or((&self.model, adam), |p| (&p.model, &p.adam));
                let mut next = self.submit(model, adam, x, candidates, queued + 1);
                next.since = self.counters_after(pending.as_ref(), &next);
                self.advance(end, n);
                if let Some(p) = pending.take() {
                    let report = self.complete(p)?;
                    on_step(&report);
                    self.checkpoint_if_due(&mut last_saved)?;
                }
                pending = Some(next);
            } else {
                let report = if matches!(self.engine, Engine::Host(_)) {
                    let buf = data.normalized_gather(rows, &self.normalizer);
                    self.step_host(&buf)?
                } else {
                    let x = crate::ops::transfer::upload_rows::<B>(
                        rows.len(),
                        d_in,
                        &self.device,
                        |piece| data.normalized_gather(&rows[piece], &self.normalizer),
                    );
                    self.step(x)?
                };
                // Before the checkpoint, which records where the next batch starts.
                self.advance(end, n);
                on_step(&report);
                self.checkpoint_if_due(&mut last_saved)?;
            }
        }
        if let Some(policy) = &self.checkpoints
            && last_saved != Some(self.step)
        {
            self.save_checkpoint(policy.step_dir(self.step))?;
            policy.prune()?;
        }
        Ok(Trained {
            model: self.model(),
            normalizer: self.normalizer,
            steps: self.step,
            steps_run: self.step - first_step,
            samples_seen: self.samples_seen,
            config: self.config,
        })
    }

    /// Where the next batch of the order ends (it starts at the position): `batch_size` rows
    /// on, or the end of the order when that is at most one row further (a last row alone
    /// would be a batch without variance). At the start of an epoch the order of the `n` rows
    /// is shuffled first.
    fn next_batch(&mut self, n: usize) -> usize {
        if self.position == 0 {
            if self.order.len() != n {
                self.order = (0..n).collect();
            }
            self.order.shuffle(&mut self.rng);
            self.shuffles += 1;
        }
        let end = self.position.saturating_add(self.config.batch_size);
        if end + 1 >= n { n } else { end }
    }

    /// Moves the position past a batch that ended at `end` of the `n` rows (to the next epoch
    /// at the end of the order).
    fn advance(&mut self, end: usize, n: usize) {
        self.position = end;
        if end == n {
            self.position = 0;
            self.epoch += 1;
        }
    }

    /// Saves a checkpoint when the policy says one is due after the step just done.
    fn checkpoint_if_due(&mut self, last_saved: &mut Option<u64>) -> Result<()> {
        if let Some(policy) = &self.checkpoints
            && self.step.is_multiple_of(policy.every_steps)
        {
            self.save_checkpoint(policy.step_dir(self.step))?;
            policy.prune()?;
            *last_saved = Some(self.step);
        }
        Ok(())
    }

    /// Checks `data` as [`Trainer::fit`] does before its first step, so that a caller can
    /// refuse wrong data before anything else (a resumed run's data in particular). Other rows
    /// of the same shape are told apart by a digest of up to 256 rows spread over the matrix,
    /// the first and last included: a change confined to rows it does not read passes.
    ///
    /// # Errors
    /// [`Error::WidthMismatch`] when `data` is not `d_in` wide; [`Error::InvalidArgument`]
    /// naming `data` when it holds fewer than 2 rows or only copies of one row, or, for a
    /// resumed run, when it is not the data the run was checkpointed with (another row count,
    /// or other rows); [`Error::InvalidConfig`] naming `batch_size` on a GPU whose largest buffer cannot hold a batch's
    /// `[rows, d_sae]` pre-activations.
    pub fn check_data(&self, data: &Embeddings) -> Result<()> {
        data.check_width(self.config.model.d_in)?;
        check_rows_vary(data)?;
        let n = data.rows();
        self.check_batch_fits(
            "batch_size",
            self.config.batch_size,
            self.config.largest_batch_of(n),
        )?;
        if !self.order.is_empty() && self.order.len() != n {
            return Err(Error::argument(
                "data",
                format!("{n} rows"),
                format!(
                    "must be the {} rows this run was checkpointed with",
                    self.order.len()
                ),
            ));
        }
        if !self.order.is_empty()
            && let Some(saved) = self.data_fingerprint
            && saved != data.fingerprint()
        {
            return Err(Error::argument(
                "data",
                data.name(),
                format!(
                    "must be the rows this run was checkpointed with: it has the same {n} rows \
                     and width, but other values"
                ),
            ));
        }
        Ok(())
    }

    /// Whether batches of up to `rows` rows fit the device's buffers on the tensor engine
    /// ([`crate::ops::check_fits_device`]), naming `field` (holding `value`) when not.
    fn check_batch_fits(&self, field: &'static str, value: usize, rows: usize) -> Result<()> {
        if matches!(self.engine, Engine::Host(_)) {
            return Ok(());
        }
        crate::ops::check_fits_device::<B>(
            &self.device,
            field,
            value,
            "a batch's pre-activations",
            [rows, self.config.model.d_sae],
        )
    }

    /// The normalised training rows on the device, for the tensor engine on a GPU backend: each
    /// step then gathers its batch there instead of uploading it. One upload in place of one per
    /// step, which on the H200 machine of `docs/benchmarks.md` cost more than the step's
    /// arithmetic (6 MB a step at 1024 x 1536; host-to-GPU writes ran at about 0.6 GB/s there).
    /// `None` on the host engine, on CPU backends, and when the rows would take more than
    /// [`RESIDENT_MAX_BYTES`] or the largest buffer the device allocates; the batches are then
    /// uploaded step by step, as before.
    fn resident_rows(&self, data: &Embeddings) -> Option<Tensor<B, 2>> {
        if matches!(self.engine, Engine::Host(_)) || crate::ops::engine::Engine::is_host::<B>() {
            return None;
        }
        let (n, d_in) = (data.rows(), data.d_in());
        let bytes = (n as u64).saturating_mul(d_in as u64).saturating_mul(4);
        #[cfg(feature = "wgpu")]
        let limit = crate::ops::gpu::max_buffer_bytes::<B>(&self.device)
            .map_or(RESIDENT_MAX_BYTES, |max| max.min(RESIDENT_MAX_BYTES));
        #[cfg(not(feature = "wgpu"))]
        let limit = RESIDENT_MAX_BYTES;
        if bytes > limit {
            return None;
        }
        // Uploaded in pieces, so that a normalised copy of the whole set is never on the host.
        let pieces = crate::ops::transfer::batch_ranges(n, RESIDENT_PIECE_ROWS)
            .expect("the piece size is not 0")
            .map(|range| {
                let start = range.start;
                crate::ops::transfer::upload_rows::<B>(range.len(), d_in, &self.device, |piece| {
                    let rows = start + piece.start..start + piece.end;
                    data.normalized_rows(rows, &self.normalizer)
                })
            })
            .collect();
        Some(Tensor::cat(pieces, 0))
    }

    /// One training step on an already normalised batch.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]`
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `x` when it holds fewer than 2 rows (the loss divides
    /// by the batch's variance); [`Error::InvalidConfig`] naming `x` on a GPU whose largest
    /// buffer cannot hold its `[batch, d_sae]` pre-activations; [`Error::Diverged`] when the loss or the gradient norm is NaN or
    /// infinite (a batch of copies of one row gives that too). Either way the model and the
    /// trainer's state are unchanged.
    ///
    /// # Panics
    /// If `x` is not `[batch, d_in]`.
    pub fn step(&mut self, x: Tensor<B, 2>) -> Result<StepReport> {
        let [batch, d_in] = x.dims();
        assert_eq!(
            d_in, self.config.model.d_in,
            "x must be [batch, d_in] with d_in = {}",
            self.config.model.d_in
        );
        if batch < 2 {
            let rows = if batch == 1 { "1 row" } else { "0 rows" };
            return Err(Error::argument("x", rows, ONE_ROW));
        }
        self.check_batch_fits("x", batch, batch)?;
        let Engine::Tensor(adam) = &self.engine else {
            return self.step_host(&to_host(x));
        };
        let candidates = self.dead_candidates(batch);
        let pending = self.submit(
            &self.model,
            adam,
            x,
            Candidates::Host(&candidates),
            self.step + 1,
        );
        self.complete(pending)
    }

    /// Queues one step of the tensor engine on the device, from `model` and `adam` (the
    /// trainer's, or those of a step still pending), and returns it without reading anything
    /// back: [`Trainer::complete`] reads its loss back, checks it and applies it.
    fn submit(
        &self,
        model: &TopKSae<B>,
        adam: &AdamState<B>,
        x: Tensor<B, 2>,
        candidates: Candidates<'_, B>,
        step: u64,
    ) -> Pending<B> {
        let batch = x.dims()[0];
        let mut out = self
            .loss
            .evaluate_on_device(model, x, Some(candidates), true, true);
        let grads = out.grads.take().expect("gradients were requested");
        // The update is computed before the loss and the gradient norm are read back, in one
        // transfer (each read-back waits for the device), and kept only if both are finite.
        let (params, adam, squares) = update(
            &model.kernels(),
            &model.params(),
            grads.into_params(),
            adam,
            &self.config.optimizer,
            self.config.clip_grad_norm,
        );
        let model = model.with_params(params);
        mark::<B>(&self.device, "projection, clipping, adam, renorm");
        // With the fired latents when they are on the device (`[d_sae]`, after the squares).
        let fired = out.fired.take();
        let mut parts = out.losses.clone();
        parts.push(squares);
        parts.extend(fired.clone());
        Pending {
            step,
            epoch: self.epoch,
            batch,
            read_back: HostCopies::issue(
                &model.kernels(),
                vec![crate::ops::linalg::concat(&model.kernels(), parts)],
                vec![],
                ReadFor::Step,
            ),
            fired,
            since: None,
            out,
            model,
            adam,
        }
    }

    /// Reads a submitted step's loss and gradient norm back and, when both are finite, makes
    /// its model and optimiser state the trainer's and counts it.
    ///
    /// # Errors
    /// [`Error::Diverged`], the trainer unchanged.
    fn complete(&mut self, pending: Pending<B>) -> Result<StepReport> {
        let Pending {
            step,
            epoch,
            batch,
            read_back,
            out,
            model,
            adam,
            ..
        } = pending;
        let terms = out.losses.len();
        let waiting = Instant::now();
        let host = read_back.collect().0.swap_remove(0);
        let device_wait = waiting.elapsed();
        mark::<B>(&self.device, "read-back");
        let parts = out.parts(&host[..terms]);
        if !parts.total.is_finite() {
            return Err(Error::Diverged {
                step,
                quantity: "loss",
                value: f64::from(parts.total),
            });
        }
        let grad_norm = host[terms..terms + 4]
            .iter()
            .map(|v| f64::from(*v))
            .sum::<f64>()
            .sqrt();
        if !grad_norm.is_finite() {
            return Err(Error::Diverged {
                step,
                quantity: "gradient norm",
                value: grad_norm,
            });
        }
        self.model = model;
        self.engine = Engine::Tensor(adam);
        let fired: Vec<usize> = if host.len() > terms + 4 {
            let mask = &host[terms + 4..];
            (0..mask.len()).filter(|&j| mask[j] > 0.5).collect()
        } else {
            out.indices.iter().map(|&j| j as usize).collect()
        };
        let mut report = self.finish_step(batch, fired.into_iter(), parts, grad_norm);
        // Completed later than it was queued, when the position may have moved on.
        report.epoch = epoch;
        report.device_wait = device_wait;
        mark::<B>(&self.device, "counters (host)");
        Ok(report)
    }

    /// The dead-latent counters after `step` on the device, when its fired latents are on the
    /// device and the threshold and batch size are at most [`DEVICE_COUNTER_MAX`]; else
    /// `None`. From the counters after `before`, the pending step it follows, or, when there is
    /// none, the host's (uploaded: the host has counted every step before `step`).
    ///
    /// # Shapes
    /// - returns `[d_sae]`
    fn counters_after(
        &self,
        before: Option<&Pending<B>>,
        step: &Pending<B>,
    ) -> Option<Tensor<B, 1, Int>> {
        let threshold = self.config.dead_threshold_samples;
        let fired = step.fired.clone()?;
        let since = match before {
            Some(p) => p.since.clone()?,
            None => counters_to_device(
                &self.since_fired,
                threshold,
                self.config.largest_batch(),
                &self.device,
            )?,
        };
        Some(counters_after(since, fired, step.batch, threshold))
    }

    /// The dead-latent candidates of the step after `pending`, of `next` rows, on the device,
    /// without reading `pending` back. A latent is a candidate when its samples since it last
    /// fired pass the threshold after that step: `since + pending.batch + next` for those
    /// `pending` did not fire and `next` for those it did. From `pending`'s counters when it
    /// has them on the device; else from the host's counters, which do not count `pending` yet,
    /// uploaded (thresholds or batch sizes above [`DEVICE_COUNTER_MAX`]). The bound on their
    /// count comes from the host's counters: every latent when `next` alone passes the
    /// threshold, else those past it after both batches (a latent `pending` fires only leaves
    /// them).
    ///
    /// # Panics
    /// If `pending`'s fired latents are not on the device (such a step is completed before the
    /// next is queued).
    fn candidates_after(&self, pending: &Pending<B>, next: usize) -> Candidates<'static, B> {
        let threshold = self.config.dead_threshold_samples;
        let next_passes = next as u64 > threshold;
        // The host's rule over both batches: past the threshold unless `pending` fired them.
        let quiet = self.dead_candidates(pending.batch + next);
        let d_sae = quiet.len();
        let bound = if next_passes {
            d_sae
        } else {
            quiet.iter().filter(|&&q| q).count()
        };
        if let Some(since) = &pending.since {
            return Candidates::Device(candidates_from(since.clone(), next, threshold), bound);
        }
        let fired = pending
            .fired
            .clone()
            .expect("kept pending only with its fired latents on the device");
        let quiet: Vec<f32> = quiet.into_iter().map(|q| f32::from(u8::from(q))).collect();
        let quiet = Tensor::<B, 1>::from_data(TensorData::new(quiet, [d_sae]), &self.device);
        let mut candidates = quiet * fired.clone().neg().add_scalar(1.0);
        if next_passes {
            candidates = candidates + fired;
        }
        Candidates::Device(candidates.int(), bound)
    }

    /// [`Trainer::step`] on the host engine, from a row-major `[batch, d_in]` buffer.
    fn step_host(&mut self, x: &[f32]) -> Result<StepReport> {
        let batch = x.len() / self.config.model.d_in;
        let step = self.step + 1;
        let candidates = self.dead_candidates(batch);
        let Engine::Host(host) = &mut self.engine else {
            unreachable!("step_host runs on the host engine only")
        };
        let out = host
            .step(
                x,
                &candidates,
                &self.loss,
                &self.config.optimizer,
                self.config.clip_grad_norm,
            )
            .map_err(|e| Error::Diverged {
                step,
                quantity: e.quantity,
                value: e.value,
            })?;
        let fired = out.indices.iter().map(|&j| j as usize);
        Ok(self.finish_step(batch, fired, out.parts, out.grad_norm))
    }

    /// Latents that will be past the dead threshold once a batch of `batch` rows is counted;
    /// those that fire in the batch are excluded by the loss.
    fn dead_candidates(&self, batch: usize) -> Vec<bool> {
        self.since_fired
            .iter()
            .map(|&s| s + batch as u64 > self.config.dead_threshold_samples)
            .collect()
    }

    /// Counters and the report after an applied step.
    fn finish_step(
        &mut self,
        batch: usize,
        fired: impl Iterator<Item = usize>,
        loss: LossParts,
        grad_norm: f64,
    ) -> StepReport {
        self.since_fired.iter_mut().for_each(|s| *s += batch as u64);
        for j in fired {
            self.since_fired[j] = 0;
        }
        self.step += 1;
        self.samples_seen += batch as u64;
        let dead = self.dead_mask().iter().filter(|d| **d).count();
        StepReport {
            step: self.step,
            epoch: self.epoch,
            batch,
            loss,
            dead_frac: dead as f64 / self.since_fired.len() as f64,
            grad_norm,
            device_wait: Duration::ZERO,
        }
    }
}

/// Checks that `data` gives batches with a variance: at least 2 rows, not all the same row.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `data`.
fn check_rows_vary(data: &Embeddings) -> Result<()> {
    let n = data.rows();
    if n < 2 {
        return Err(Error::argument("data", format!("{n} row"), ONE_ROW));
    }
    let first = data.row(0);
    if (1..n).all(|i| data.row(i) == first) {
        return Err(Error::argument(
            "data",
            format!("{n} rows"),
            "are all the same row: the loss divides by a batch's variance, which is then 0",
        ));
    }
    Ok(())
}

/// Trains a model on `data` with `config`: [`Trainer::new`] then [`Trainer::fit`].
///
/// # Errors
/// The errors of [`Trainer::new`] and [`Trainer::fit`].
pub fn train<B: Backend>(
    config: TrainConfig,
    data: &Embeddings,
    device: &B::Device,
    on_step: impl FnMut(&StepReport),
) -> Result<Trained<B>> {
    Trainer::new(config, data, device)?.fit(data, on_step)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::TestBackend;

    /// The counters `fit` keeps on the device for queued steps give the host's candidates
    /// (`since + batch > threshold`) for counters just below, at and past the threshold, and
    /// the host's counters after a step, as far as the clamp keeps them.
    #[test]
    fn device_counters_follow_the_host_rule() {
        let device = Default::default();
        let threshold = 100u64;
        let since = [0u64, 1, 50, 97, 98, 99, 100, 101, 102, 5_000, u64::MAX / 2];
        let on_device = counters_to_device::<TestBackend>(&since, threshold, 101, &device)
            .expect("a threshold of 100 is kept on the device");
        let to_host = |t: Tensor<TestBackend, 1, Int>| crate::ops::transfer::int_to_host(t);
        for batch in [1usize, 2, 3, 100, 101] {
            let want: Vec<i64> = since
                .iter()
                .map(|&s| i64::from(s.saturating_add(batch as u64) > threshold))
                .collect();
            let got = to_host(candidates_from(on_device.clone(), batch, threshold));
            assert_eq!(got, want, "batch {batch}");
        }
        // Latents 0, 6 and 10 fire in a batch of 3.
        let fired: Vec<f32> = (0..since.len())
            .map(|j| if [0, 6, 10].contains(&j) { 1.0 } else { 0.0 })
            .collect();
        let fired =
            Tensor::<TestBackend, 1>::from_data(TensorData::new(fired, [since.len()]), &device);
        let after = to_host(counters_after(on_device, fired, 3, threshold));
        let want: Vec<i64> = since
            .iter()
            .enumerate()
            .map(|(j, &s)| {
                let host = if [0, 6, 10].contains(&j) {
                    0
                } else {
                    s.saturating_add(3)
                };
                host.min(threshold + 1) as i64
            })
            .collect();
        assert_eq!(after, want);
        // Past the limit, a counter plus a batch might not fit in an i32.
        let max = DEVICE_COUNTER_MAX;
        assert!(counters_to_device::<TestBackend>(&since, max, max as usize, &device).is_some());
        assert!(counters_to_device::<TestBackend>(&since, max + 1, 256, &device).is_none());
        assert!(
            counters_to_device::<TestBackend>(&since, 100, max as usize + 1, &device).is_none()
        );
    }
}
