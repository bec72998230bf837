//! The `train` example's timings, which the benchmark scripts read from its `--json`
//! (`scripts/compare_torch.sh`, `scripts/gpu_bench.sh`): each step's time and device wait, the
//! steps with a live AuxK term, corpus encoding timed on its own, and which GPU kernels ran.

use std::time::Instant;

use burn::tensor::backend::Backend;
use topk_sae::prelude::*;
use topk_sae::{StepReport, Trained};

use crate::progress;

/// Times of a training run's steps, recorded from its step callback.
pub struct StepTimes {
    started: Instant,
    last: Instant,
    seconds: f64,
    step_ms: Vec<f64>,
    wait_ms: Vec<f64>,
    aux_steps: u64,
}

impl StepTimes {
    /// Starts timing a run of up to `steps` steps.
    pub fn start(steps: u64) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            seconds: f64::NAN,
            step_ms: Vec::with_capacity(usize::try_from(steps).unwrap_or(0).min(1 << 20)),
            wait_ms: Vec::new(),
            aux_steps: 0,
        }
    }

    /// Records the step `report` ends.
    pub fn record(&mut self, report: &StepReport) {
        self.step_ms.push(self.last.elapsed().as_secs_f64() * 1e3);
        self.wait_ms.push(report.device_wait.as_secs_f64() * 1e3);
        self.last = Instant::now();
        self.aux_steps += u64::from(report.loss.aux > 0.0);
    }

    /// Ends the run's timing.
    pub fn finish(&mut self) {
        self.seconds = self.started.elapsed().as_secs_f64();
    }

    /// Seconds from [`StepTimes::start`] to [`StepTimes::finish`].
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Steps recorded.
    pub fn steps(&self) -> usize {
        self.step_ms.len()
    }

    /// The median step, in milliseconds.
    pub fn median_ms(&self) -> f64 {
        median_of(&self.step_ms)
    }

    /// Of a step, the median time the host waited for the device's results (GPU backends; 0 on
    /// the host engine), in milliseconds.
    pub fn wait_median_ms(&self) -> f64 {
        median_of(&self.wait_ms)
    }

    /// The fields the benchmark scripts read. The first step includes kernel compilation and
    /// autotuning on GPU backends; the steps in their order say when a process still autotuning
    /// settles.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "train_seconds": self.seconds,
            "ms_per_step_median": self.median_ms(),
            "device_wait_ms_median": self.wait_median_ms(),
            "first_step_ms": self.step_ms.first().copied().unwrap_or(f64::NAN),
            "step_ms": self.step_ms,
            "aux_steps": self.aux_steps,
        })
    }
}

/// Corpus encoding timed on its own, best of `passes` (the side-by-side script compares it with
/// PyTorch's, measured the same way): seconds, NaN when `passes` is 0.
pub fn timed_encoding<B: Backend>(
    trained: &Trained<B>,
    data: &Embeddings,
    passes: u32,
    quiet: bool,
    device: &B::Device,
) -> Result<f64> {
    let mut best = f64::NAN;
    for pass in 1..=passes {
        let what = format!("encoding (timed, pass {pass}/{passes})");
        let bar = progress::rows_bar(&what, data.rows(), quiet);
        let started = Instant::now();
        let codes = topk_sae::analysis::encode_corpus_with_progress(
            &trained.model,
            data,
            &trained.normalizer,
            4096,
            device,
            |done| bar.set_position(done as u64),
        )?;
        best = best.min(started.elapsed().as_secs_f64());
        bar.finish_and_clear();
        drop(codes);
    }
    Ok(best)
}

/// Which of the crate's GPU kernels ran for `model` (none off burn-wgpu), so that timings say
/// what they measured.
pub fn gpu_kernels_json<B: Backend>(model: &TopKSae<B>, device: &B::Device) -> serde_json::Value {
    let kernels = topk_sae::backend::gpu_kernels::<B>(device, &model.kernels());
    serde_json::json!({
        "top_k": kernels.top_k.name(),
        "sparse": kernels.sparse.name(),
        "update": kernels.update.name(),
        "pack": kernels.pack.name(),
        "loss": kernels.loss.name(),
    })
}

/// The median of `values` (the upper one of an even count; NaN when there are none).
fn median_of(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}
