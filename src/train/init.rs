//! A model's initialisation from training data (SPEC §1): `b_dec` from the first rows, by
//! coordinate median (the reference recipe), mean or geometric median.

use burn::tensor::backend::Backend;

use crate::data::Embeddings;
use crate::error::Result;
use crate::sae::{DecoderBiasInit, TopKSae, TopKSaeConfig};

impl TopKSaeConfig {
    /// Initialises a model as the reference recipe does, with `b_dec` computed from the first
    /// `b_dec_init_rows` rows of `data` by `b_dec_init`.
    ///
    /// # Errors
    /// The errors of [`TopKSaeConfig::try_init`];
    /// [`Error::WidthMismatch`](crate::Error::WidthMismatch) when the data's width is not `d_in`.
    pub fn try_init_from_data<B: Backend>(
        &self,
        data: &Embeddings,
        device: &B::Device,
    ) -> Result<TopKSae<B>> {
        self.validate()?;
        data.check_width(self.d_in)?;
        self.check_fits::<B>(device)?;
        let rows = data.rows().min(self.b_dec_init_rows);
        let head = &data.as_slice()[..rows * self.d_in];
        let b_dec = match self.b_dec_init {
            DecoderBiasInit::Median => coordinate_median(head, self.d_in),
            DecoderBiasInit::Mean => coordinate_mean(head, self.d_in),
            DecoderBiasInit::GeometricMedian => geometric_median(head, self.d_in),
            DecoderBiasInit::Zeros => vec![0.0; self.d_in],
        };
        Ok(self.build(b_dec, device))
    }
}

/// Each coordinate's median over the rows (the lower middle for an even count, as
/// `torch.median` takes it).
fn coordinate_median(rows: &[f32], d_in: usize) -> Vec<f32> {
    let n = rows.len() / d_in;
    let mut column = Vec::with_capacity(n);
    (0..d_in)
        .map(|i| {
            column.clear();
            column.extend(rows.iter().skip(i).step_by(d_in).copied());
            // Lower middle for an even count, as torch.median does.
            let mid = (n - 1) / 2;
            *column.select_nth_unstable_by(mid, f32::total_cmp).1
        })
        .collect()
}

/// Each coordinate's mean over the rows, summed in `f64`.
fn coordinate_mean(rows: &[f32], d_in: usize) -> Vec<f32> {
    let n = (rows.len() / d_in) as f64;
    let mut sum = vec![0.0f64; d_in];
    for row in rows.chunks_exact(d_in) {
        sum.iter_mut()
            .zip(row)
            .for_each(|(s, v)| *s += f64::from(*v));
    }
    sum.into_iter().map(|s| (s / n) as f32).collect()
}

/// Weiszfeld's algorithm, started at the mean, at most 100 iterations or until the estimate
/// moves less than 1e-7 (relative).
fn geometric_median(rows: &[f32], d_in: usize) -> Vec<f32> {
    let mut estimate: Vec<f64> = coordinate_mean(rows, d_in)
        .into_iter()
        .map(f64::from)
        .collect();
    for _ in 0..100 {
        let mut numerator = vec![0.0f64; d_in];
        let mut denominator = 0.0f64;
        for row in rows.chunks_exact(d_in) {
            let dist = row
                .iter()
                .zip(&estimate)
                .map(|(v, m)| (f64::from(*v) - m).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            numerator
                .iter_mut()
                .zip(row)
                .for_each(|(s, v)| *s += f64::from(*v) / dist);
            denominator += 1.0 / dist;
        }
        let next: Vec<f64> = numerator.iter().map(|s| s / denominator).collect();
        let shift: f64 = next
            .iter()
            .zip(&estimate)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>();
        let scale: f64 = next.iter().map(|a| a * a).sum::<f64>().max(1e-30);
        estimate = next;
        if shift.sqrt() < 1e-7 * scale.sqrt() {
            break;
        }
    }
    estimate.into_iter().map(|v| v as f32).collect()
}
