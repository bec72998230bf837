//! Dataset-level metrics (SPEC §4): NMSE, explained variance, Log FD, Act Mean, L0, dead and
//! dense fractions, cosine similarity.
//!
//! [`MetricsAccumulator`] folds batches in; [`evaluate`] runs a model over a whole data set.

use std::fmt;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::data::{Embeddings, Normalizer};
use crate::pass::Outputs;
use crate::sae::TopKSae;

/// Floor added to densities before `log10`, so a dead latent scores -10.
pub const LOG_FD_EPS: f64 = 1e-10;

/// Density above which a latent counts as dense.
pub const DENSE_THRESHOLD: f64 = 0.2;

/// Metrics of a model over a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows evaluated.
    pub rows: u64,
    /// Active latents per row.
    pub k: usize,
    /// Number of latents.
    pub d_sae: usize,
    /// `sum ||x_hat - x||^2 / sum ||x - mean(x)||^2` over the data set.
    pub nmse: f64,
    /// `1 - nmse`.
    pub explained_variance: f64,
    /// Mean over latents of `log10(density + 1e-10)`.
    pub log_fd: f64,
    /// Mean post-ReLU value over all `rows * k` top-k slots.
    pub act_mean: f64,
    /// Mean number of non-zero latents per row (after ReLU).
    pub l0: f64,
    /// Fraction of latents that never fired.
    pub dead_frac: f64,
    /// Fraction of latents with density above [`DENSE_THRESHOLD`].
    pub dense_frac: f64,
    /// Mean cosine similarity of `x_hat` and `x`.
    pub cosine: f64,
    /// Per latent: fraction of rows whose top-k holds it (`d_sae` entries).
    #[serde(skip)]
    pub density: Vec<f64>,
    /// Per latent: mean post-ReLU value over the rows where it fired (0 when it never fired).
    #[serde(skip)]
    pub mean_activation: Vec<f64>,
}

impl Metrics {
    /// Per-latent `log10(density + 1e-10)`.
    pub fn log_densities(&self) -> Vec<f64> {
        self.density
            .iter()
            .map(|d| (d + LOG_FD_EPS).log10())
            .collect()
    }

    /// Histogram of per-latent Log FD over `bins` equal bins spanning `[-10, 0]`; returns the
    /// count in each bin (dead latents land in the first).
    pub fn log_fd_histogram(&self, bins: usize) -> Vec<usize> {
        let mut counts = vec![0; bins.max(1)];
        let n = counts.len();
        for v in self.log_densities() {
            let i = (((v + 10.0) / 10.0) * n as f64)
                .floor()
                .clamp(0.0, (n - 1) as f64) as usize;
            counts[i] += 1;
        }
        counts
    }

    /// The header line of [`Metrics`]' table row (`Display`).
    pub fn table_header() -> &'static str {
        "|    k |  d_sae |   NMSE |      EV |   Log FD | Act Mean |     L0 |  dead | dense |  cosine |\n\
         |-----:|-------:|-------:|--------:|---------:|---------:|-------:|------:|------:|--------:|"
    }
}

impl fmt::Display for Metrics {
    /// One row of the paper's table, extended: `| k | d_sae | NMSE | EV | Log FD | Act Mean | L0 |
    /// dead | dense | cosine |`. Print [`Metrics::table_header`] above it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "| {:>4} | {:>6} | {:>6.4} | {:>7.4} | {:>8.4} | {:>8.4} | {:>6.2} | {:>5.3} | {:>5.3} | {:>7.4} |",
            self.k,
            self.d_sae,
            self.nmse,
            self.explained_variance,
            self.log_fd,
            self.act_mean,
            self.l0,
            self.dead_frac,
            self.dense_frac,
            self.cosine
        )
    }
}

/// Folds batches of inputs, reconstructions and top-k latents into [`Metrics`], in `f64`.
#[derive(Debug, Clone)]
pub struct MetricsAccumulator {
    d_in: usize,
    d_sae: usize,
    k: usize,
    rows: u64,
    fired: Vec<u64>,
    activation_sum: Vec<f64>,
    squared_error: f64,
    sum_x: Vec<f64>,
    sum_x2: Vec<f64>,
    nonzero: u64,
    value_sum: f64,
    cosine_sum: f64,
}

impl MetricsAccumulator {
    /// An empty accumulator for a model of these dimensions.
    pub fn new(d_in: usize, d_sae: usize, k: usize) -> Self {
        Self {
            d_in,
            d_sae,
            k,
            rows: 0,
            fired: vec![0; d_sae],
            activation_sum: vec![0.0; d_sae],
            squared_error: 0.0,
            sum_x: vec![0.0; d_in],
            sum_x2: vec![0.0; d_in],
            nonzero: 0,
            value_sum: 0.0,
            cosine_sum: 0.0,
        }
    }

    /// Adds one batch, all buffers row-major.
    ///
    /// # Shapes
    /// - `x`, `x_hat`: `[batch, d_in]`; `indices`, `values`: `[batch, k]`
    ///
    /// # Panics
    /// If the lengths disagree with the dimensions or an index is out of `0..d_sae`.
    pub fn update(&mut self, x: &[f32], x_hat: &[f32], indices: &[i64], values: &[f32]) {
        let batch = x.len() / self.d_in;
        assert_eq!(x.len(), batch * self.d_in, "x must be [batch, d_in]");
        assert_eq!(x_hat.len(), x.len(), "x_hat must be shaped like x");
        assert_eq!(indices.len(), batch * self.k, "indices must be [batch, k]");
        assert_eq!(values.len(), indices.len(), "values must be [batch, k]");
        for (row, row_hat) in x.chunks_exact(self.d_in).zip(x_hat.chunks_exact(self.d_in)) {
            let (mut dot, mut nx, mut nh) = (0.0f64, 0.0f64, 0.0f64);
            for (i, (&a, &b)) in row.iter().zip(row_hat).enumerate() {
                let (a, b) = (f64::from(a), f64::from(b));
                self.squared_error += (b - a).powi(2);
                self.sum_x[i] += a;
                self.sum_x2[i] += a * a;
                dot += a * b;
                nx += a * a;
                nh += b * b;
            }
            let denom = (nx * nh).sqrt();
            self.cosine_sum += if denom > 0.0 { dot / denom } else { 0.0 };
        }
        for (&j, &v) in indices.iter().zip(values) {
            let j = usize::try_from(j).expect("latent index is non-negative");
            self.fired[j] += 1;
            self.activation_sum[j] += f64::from(v);
            self.value_sum += f64::from(v);
            self.nonzero += u64::from(v > 0.0);
        }
        self.rows += batch as u64;
    }

    /// The metrics of everything added so far.
    pub fn finish(&self) -> Metrics {
        let n = self.rows.max(1) as f64;
        let total_var: f64 = self
            .sum_x
            .iter()
            .zip(&self.sum_x2)
            .map(|(s, s2)| (s2 - s * s / n).max(0.0))
            .sum();
        let nmse = if total_var > 0.0 {
            self.squared_error / total_var
        } else {
            f64::NAN
        };
        let density: Vec<f64> = self.fired.iter().map(|&c| c as f64 / n).collect();
        let log_fd = density
            .iter()
            .map(|d| (d + LOG_FD_EPS).log10())
            .sum::<f64>()
            / self.d_sae as f64;
        let mean_activation = self
            .fired
            .iter()
            .zip(&self.activation_sum)
            .map(|(&c, &s)| if c > 0 { s / c as f64 } else { 0.0 })
            .collect();
        let d_sae = self.d_sae as f64;
        Metrics {
            rows: self.rows,
            k: self.k,
            d_sae: self.d_sae,
            nmse,
            explained_variance: 1.0 - nmse,
            log_fd,
            act_mean: self.value_sum / (n * self.k as f64),
            l0: self.nonzero as f64 / n,
            dead_frac: self.fired.iter().filter(|&&c| c == 0).count() as f64 / d_sae,
            dense_frac: density.iter().filter(|&&d| d > DENSE_THRESHOLD).count() as f64 / d_sae,
            cosine: self.cosine_sum / n,
            density,
            mean_activation,
        }
    }
}

/// Runs `model` over every row of `data` (after `normalizer`) in batches of `batch_size` and
/// returns the metrics, measured in the normalised space the model works in. On a GPU, batches
/// are made smaller where their `[batch_size, d_sae]` pre-activations would not fit in the
/// device's largest buffer. [`evaluate_with_progress`] reports the rows done.
///
/// # Errors
/// [`crate::Error::WidthMismatch`] when the data's width is not the model's `d_in`;
/// [`crate::Error::InvalidArgument`] when `batch_size` is 0; [`crate::Error::InvalidConfig`] when
/// `normalizer` does not fit the model ([`Normalizer::check`]).
pub fn evaluate<B: Backend>(
    model: &TopKSae<B>,
    data: &Embeddings,
    normalizer: &Normalizer,
    batch_size: usize,
    device: &B::Device,
) -> crate::Result<Metrics> {
    evaluate_with_progress(model, data, normalizer, batch_size, device, |_| {})
}

/// [`evaluate`], calling `progress` with the rows done so far after each batch.
///
/// # Errors
/// The errors of [`evaluate`].
pub fn evaluate_with_progress<B: Backend>(
    model: &TopKSae<B>,
    data: &Embeddings,
    normalizer: &Normalizer,
    batch_size: usize,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> crate::Result<Metrics> {
    let mut acc = MetricsAccumulator::new(model.d_in(), model.d_sae(), model.k());
    crate::pass::run(
        model,
        data,
        normalizer,
        batch_size,
        device,
        Outputs::Reconstructions,
        |chunk| {
            let indices: Vec<i64> = chunk.indices.iter().map(|&j| i64::from(j)).collect();
            acc.update(&chunk.x, &chunk.recon, &indices, &chunk.values);
            progress(chunk.rows.end);
        },
    )?;
    Ok(acc.finish())
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    fn row(k: usize, d_sae: usize, signed: f64) -> Metrics {
        Metrics {
            rows: 8,
            k,
            d_sae,
            nmse: 1.0126,
            explained_variance: -0.0126 * signed,
            log_fd: -10.0 * signed,
            act_mean: 12.3456,
            l0: 128.0,
            dead_frac: 1.0,
            dense_frac: 0.0,
            cosine: -0.6941 * signed,
            density: Vec::new(),
            mean_activation: Vec::new(),
        }
    }

    fn cell_widths(line: &str) -> Vec<usize> {
        line.split('|').map(|c| c.chars().count()).collect()
    }

    #[test]
    fn table_rows_line_up_with_the_header_for_negative_and_wide_values() {
        let mut lines = Metrics::table_header().lines();
        let header = cell_widths(lines.next().unwrap());
        assert_eq!(cell_widths(lines.next().unwrap()), header);
        for m in [
            row(1024, 131_072, 1.0),
            row(4, 64, -1.0),
            row(32, 3072, 0.5),
        ] {
            assert_eq!(cell_widths(&m.to_string()), header, "{m}");
        }
    }
}

/// Chunk sizes on burn-wgpu: evaluation, encoding and search keep their tensors within the
/// device's largest buffer.
#[cfg(all(test, feature = "test-wgpu"))]
mod wgpu_tests {
    use crate::analysis::encode_corpus;
    use crate::{Embeddings, Normalizer, TopKSaeConfig};

    type B = crate::backend::Wgpu;

    /// Chunks whose `[rows, d_sae]` pre-activations would not fit in the device's largest buffer
    /// are made smaller (burn-wgpu panics on such a buffer): asked for one chunk one row larger
    /// than fits, evaluation and encoding give what batches of 256 give.
    #[test]
    fn chunks_past_the_largest_buffer_are_made_smaller() {
        let device = Default::default();
        let d_sae = 1 << 15;
        let max = crate::ops::gpu::max_buffer_bytes::<B>(&device).expect("a wgpu device");
        let d_in = 3;
        let model = TopKSaeConfig::new(d_in, d_sae, 4)
            .with_seed(1)
            .init::<B>(&device);
        let fits = model.max_batch_rows();
        assert_eq!(fits as u64, max / (4 * d_sae as u64));
        let rows = fits + 1;
        let values: Vec<f32> = (0..rows * d_in)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let data = Embeddings::from_vec(values, rows, d_in).unwrap();
        let identity = Normalizer::identity();
        let whole = super::evaluate(&model, &data, &identity, rows, &device).unwrap();
        let small = super::evaluate(&model, &data, &identity, 256, &device).unwrap();
        approx::assert_relative_eq!(whole.nmse, small.nmse, max_relative = 1e-5);
        approx::assert_relative_eq!(whole.l0, small.l0, max_relative = 1e-9);
        let whole = encode_corpus(&model, &data, &identity, rows, &device).unwrap();
        let small = encode_corpus(&model, &data, &identity, 256, &device).unwrap();
        assert_eq!(whole.indices, small.indices);
        for (a, b) in whole.values.iter().zip(&small.values) {
            approx::assert_relative_eq!(a, b, max_relative = 1e-5);
        }
    }

    /// `search` scores `[n_queries, chunk]` at a time: with more queries than a chunk of 4,096
    /// rows' scores fit for, its chunks are made smaller, and it ranks as with chunks of 256.
    #[test]
    fn search_chunks_past_the_largest_buffer_are_made_smaller() {
        use crate::analysis::{Metric, search};
        let device = Default::default();
        let chunk = 4_096;
        let n_queries = crate::ops::device_rows_cap::<B>(&device, chunk) + 1;
        let d_in = 3;
        let pattern = |n: usize, seed: usize| -> Vec<f32> {
            (0..n * d_in)
                .map(|i| (((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let corpus = Embeddings::from_vec(pattern(chunk, 0), chunk, d_in).unwrap();
        let queries = pattern(n_queries, 17);
        let whole = search::<B>(&corpus, &queries, 3, Metric::Dot, chunk, &device).unwrap();
        let small = search::<B>(&corpus, &queries, 3, Metric::Dot, 256, &device).unwrap();
        assert_eq!(whole.len(), n_queries);
        assert_eq!(whole, small);
    }
}
