//! The optimiser's update: Adam (PyTorch's formula) with its settings. The host engine's pass
//! is here; the tensor engine's is in `train.rs` and the GPU kernel's in `gpu/update.rs`.

use burn::config::Config;
use rayon::prelude::*;

/// Adam hyper-parameters (PyTorch's formula: bias-corrected moments, `eps` outside the root).
#[derive(Config, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    #[config(default = 1e-4)]
    pub lr: f64,
    /// First-moment decay.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Second-moment decay.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to the root of the second moment.
    #[config(default = 1e-8)]
    pub epsilon: f64,
}

impl AdamConfig {
    /// Adam's bias corrections `(1 - beta_1^t, 1 - beta_2^t)` at step `t` (1-based).
    pub(crate) fn bias_corrections(&self, t: u64) -> (f64, f64) {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        (1.0 - self.beta_1.powi(t), 1.0 - self.beta_2.powi(t))
    }
}

/// Adam's settings for one step (`c1`, `c2` the bias corrections) and the clipping factor of the
/// gradients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamScalars {
    pub(crate) b1: f32,
    pub(crate) b2: f32,
    pub(crate) c1: f32,
    pub(crate) c2: f32,
    pub(crate) eps: f32,
    pub(crate) lr: f32,
    pub(crate) clip: f32,
}

impl AdamScalars {
    /// The settings of step `t` (1-based) of `opt`, with gradients scaled by `clip`.
    pub(crate) fn for_step(opt: &AdamConfig, t: u64, clip: f32) -> Self {
        let (c1, c2) = opt.bias_corrections(t);
        Self {
            b1: opt.beta_1 as f32,
            b2: opt.beta_2 as f32,
            c1: c1 as f32,
            c2: c2 as f32,
            eps: opt.epsilon as f32,
            lr: opt.lr as f32,
            clip,
        }
    }

    pub(crate) fn update(
        &self,
        p: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        g: &[f32],
        per_task: usize,
    ) {
        p.par_chunks_mut(per_task)
            .zip(m.par_chunks_mut(per_task))
            .zip(v.par_chunks_mut(per_task))
            .zip(g.par_chunks(per_task))
            .for_each(|(((p, m), v), g)| self.update_chunk(p, m, v, g));
    }

    /// PyTorch's Adam: `p -= lr * (m / c1) / (sqrt(v / c2) + eps)`.
    pub(crate) fn update_chunk(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        for (((p, m), v), g) in p.iter_mut().zip(m).zip(v).zip(g) {
            let g = g * self.clip;
            *m = *m * self.b1 + g * (1.0 - self.b1);
            *v = *v * self.b2 + g * g * (1.0 - self.b2);
            let denom = (*v / self.c2).sqrt() + self.eps;
            *p -= *m / self.c1 / denom * self.lr;
        }
    }
}
