//! The optimiser's update, every engine side by side: the decoder gradient's projection onto
//! the rows' tangent space, clipping of the global gradient norm (PyTorch's
//! `clip_grad_norm_`), Adam (PyTorch's formula) and the decoder rows' renormalisation. The host
//! engine's pass and burn's tensor operations are here; our kernels, which fuse the whole update
//! into six launches, are in `gpu/update.rs` and take their settings from [`AdamStep`].

use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::ops::engine::KernelOptions;
use crate::ops::linalg::{axpy, dot, normalize_row};

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

/// One update's settings, for every engine: Adam's hyper-parameters, the bias corrections `c1`,
/// `c2` (`1 - beta^t`) of step `t`, and the largest global gradient norm (`None`: no clipping).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamStep {
    pub(crate) beta_1: f64,
    pub(crate) beta_2: f64,
    pub(crate) lr: f64,
    pub(crate) epsilon: f64,
    pub(crate) c1: f64,
    pub(crate) c2: f64,
    pub(crate) max_norm: Option<f64>,
}

impl AdamStep {
    /// Step `t` (1-based) of `opt`, clipping the global gradient norm to `max_norm`.
    pub(crate) fn new(opt: &AdamConfig, t: u64, max_norm: Option<f64>) -> Self {
        let (c1, c2) = opt.bias_corrections(t);
        Self {
            beta_1: opt.beta_1,
            beta_2: opt.beta_2,
            lr: opt.lr,
            epsilon: opt.epsilon,
            c1,
            c2,
            max_norm,
        }
    }

    /// The factor the gradients are scaled by, given their global norm (PyTorch's
    /// `clip_grad_norm_`: `max_norm / (norm + 1e-6)` where that is below 1, else exactly 1).
    pub(crate) fn clip_factor(&self, norm: f64) -> f64 {
        self.max_norm
            .map_or(1.0, |max| (max / (norm + 1e-6)).min(1.0))
    }
}

// ---- The host engine (the CPU backends' training step) ----

/// An update's settings in `f32`, as the host engine applies them, with the gradients' clipping
/// factor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamScalars {
    b1: f32,
    b2: f32,
    c1: f32,
    c2: f32,
    eps: f32,
    lr: f32,
    clip: f32,
}

impl AdamScalars {
    /// `step`'s settings with the gradients scaled by `clip`.
    pub(crate) fn new(step: &AdamStep, clip: f32) -> Self {
        Self {
            b1: step.beta_1 as f32,
            b2: step.beta_2 as f32,
            c1: step.c1 as f32,
            c2: step.c2 as f32,
            eps: step.epsilon as f32,
            lr: step.lr as f32,
            clip,
        }
    }

    /// Adam on `p` (and its moments `m`, `v`) with gradient `g`, `per_task` elements a task.
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

    /// Adam on one decoder row (and its moments), then the row back to unit norm.
    pub(crate) fn update_row(&self, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        self.update_chunk(w, m, v, g);
        normalize_row(w);
    }
}

/// Removes from decoder row gradient `g` its component along the (unit-norm) row `w`.
pub(crate) fn project_row(g: &mut [f32], w: &[f32]) {
    let along = dot(g, w);
    axpy(g, -along, w);
}

// ---- burn's tensor operations (any backend) ----

/// The four parameters, or their gradients, in the model's order.
#[derive(Debug, Clone)]
pub(crate) struct Params<B: Backend> {
    /// `[d_in, d_sae]`.
    pub(crate) w_enc: Tensor<B, 2>,
    /// `[d_sae]`.
    pub(crate) b_enc: Tensor<B, 1>,
    /// `[d_sae, d_in]`.
    pub(crate) w_dec: Tensor<B, 2>,
    /// `[d_in]`.
    pub(crate) b_dec: Tensor<B, 1>,
}

/// Adam's first and second moments of one parameter.
#[derive(Debug, Clone)]
pub(crate) struct Moments<B: Backend, const D: usize> {
    pub(crate) m: Tensor<B, D>,
    pub(crate) v: Tensor<B, D>,
}

impl<B: Backend, const D: usize> Moments<B, D> {
    /// The moments `m` and `v` (as saved) on `device`.
    pub(crate) fn from_data(m: TensorData, v: TensorData, device: &B::Device) -> Self {
        Self {
            m: Tensor::from_data(m, device),
            v: Tensor::from_data(v, device),
        }
    }

    fn zeros_like(t: &Tensor<B, D>) -> Self {
        Self {
            m: t.zeros_like(),
            v: t.zeros_like(),
        }
    }

    /// One Adam update of `param` with `grad`.
    fn update(&mut self, param: Tensor<B, D>, grad: Tensor<B, D>, s: &AdamStep) -> Tensor<B, D> {
        let (b1, b2) = (s.beta_1, s.beta_2);
        self.m = self.m.clone().mul_scalar(b1) + grad.clone().mul_scalar(1.0 - b1);
        self.v = self.v.clone().mul_scalar(b2) + grad.powi_scalar(2).mul_scalar(1.0 - b2);
        let denom = self.v.clone().div_scalar(s.c2).sqrt().add_scalar(s.epsilon);
        param - self.m.clone().div_scalar(s.c1).div(denom).mul_scalar(s.lr)
    }
}

/// The optimiser's state on the device: the steps taken and every parameter's moments.
#[derive(Debug, Clone)]
pub(crate) struct AdamState<B: Backend> {
    pub(crate) step: u64,
    pub(crate) w_enc: Moments<B, 2>,
    pub(crate) b_enc: Moments<B, 1>,
    pub(crate) w_dec: Moments<B, 2>,
    pub(crate) b_dec: Moments<B, 1>,
}

impl<B: Backend> AdamState<B> {
    /// No step taken: every moment zero, shaped as `params`.
    pub(crate) fn zeros_like(params: &Params<B>) -> Self {
        Self {
            step: 0,
            w_enc: Moments::zeros_like(&params.w_enc),
            b_enc: Moments::zeros_like(&params.b_enc),
            w_dec: Moments::zeros_like(&params.w_dec),
            b_dec: Moments::zeros_like(&params.b_dec),
        }
    }
}

/// One update of `params` with the gradients `grads`: the decoder gradient's projection,
/// clipping (to `max_norm`), Adam (step `state.step + 1` of `opt`) and the decoder's
/// renormalisation. Returns the parameters, the state after it and the four squared gradient
/// norms (`[4]`: `w_enc`, `b_enc`, `w_dec`, `b_dec`; the decoder's after the projection, all
/// before clipping). Our kernels run it where they can (six launches instead of 26), else
/// burn's tensor operations; the results agree to float rounding.
pub(crate) fn update<B: Backend>(
    options: &KernelOptions,
    params: &Params<B>,
    grads: Params<B>,
    state: &AdamState<B>,
    opt: &AdamConfig,
    max_norm: Option<f64>,
) -> (Params<B>, AdamState<B>, Tensor<B, 1>) {
    let step = AdamStep::new(opt, state.step + 1, max_norm);
    #[cfg(feature = "wgpu")]
    if let Some(done) = update_gpu(options, params, &grads, state, &step) {
        return done;
    }
    #[cfg(not(feature = "wgpu"))]
    let _ = options;
    let (grads, squares) = project_and_clip(params, grads, &step);
    let mut state = state.clone();
    state.step += 1;
    let next = Params {
        w_enc: state.w_enc.update(params.w_enc.clone(), grads.w_enc, &step),
        b_enc: state.b_enc.update(params.b_enc.clone(), grads.b_enc, &step),
        w_dec: normalize_rows(state.w_dec.update(params.w_dec.clone(), grads.w_dec, &step)),
        b_dec: state.b_dec.update(params.b_dec.clone(), grads.b_dec, &step),
    };
    (next, state, squares)
}

/// The gradients projected (the decoder's) and clipped, and the four squared norms (`[4]`,
/// before clipping), on the device.
fn project_and_clip<B: Backend>(
    params: &Params<B>,
    mut g: Params<B>,
    step: &AdamStep,
) -> (Params<B>, Tensor<B, 1>) {
    g.w_dec = project_rows(g.w_dec, &params.w_dec);
    let squares = Tensor::cat(
        vec![
            g.w_enc.clone().powi_scalar(2).sum(),
            g.b_enc.clone().powi_scalar(2).sum(),
            g.w_dec.clone().powi_scalar(2).sum(),
            g.b_dec.clone().powi_scalar(2).sum(),
        ],
        0,
    );
    if let Some(max_norm) = step.max_norm {
        // [`AdamStep::clip_factor`] on the device.
        let coef = squares
            .clone()
            .sum()
            .sqrt()
            .add_scalar(1e-6)
            .recip()
            .mul_scalar(max_norm)
            .clamp_max(1.0);
        let coef2 = coef.clone().unsqueeze_dim::<2>(0);
        g.w_enc = g.w_enc * coef2.clone();
        g.b_enc = g.b_enc * coef.clone();
        g.w_dec = g.w_dec * coef2;
        g.b_dec = g.b_dec * coef;
    }
    (g, squares)
}

/// [`update`] by our kernels; `None` where they do not run.
#[cfg(feature = "wgpu")]
fn update_gpu<B: Backend>(
    options: &KernelOptions,
    params: &Params<B>,
    grads: &Params<B>,
    state: &AdamState<B>,
    step: &AdamStep,
) -> Option<(Params<B>, AdamState<B>, Tensor<B, 1>)> {
    use crate::ops::gpu::update::{Slot, adam_step};
    fn slot<B: Backend, const D: usize>(
        param: &Tensor<B, D>,
        grad: &Tensor<B, D>,
        moments: &Moments<B, D>,
    ) -> Slot<B, D> {
        Slot {
            param: param.clone(),
            grad: grad.clone(),
            m: moments.m.clone(),
            v: moments.v.clone(),
        }
    }
    let done = adam_step(
        options,
        &slot(&params.w_enc, &grads.w_enc, &state.w_enc),
        &slot(&params.b_enc, &grads.b_enc, &state.b_enc),
        &slot(&params.w_dec, &grads.w_dec, &state.w_dec),
        &slot(&params.b_dec, &grads.b_dec, &state.b_dec),
        step,
    )?;
    let state = AdamState {
        step: state.step + 1,
        w_enc: Moments {
            m: done.w_enc.m,
            v: done.w_enc.v,
        },
        b_enc: Moments {
            m: done.b_enc.m,
            v: done.b_enc.v,
        },
        w_dec: Moments {
            m: done.w_dec.m,
            v: done.w_dec.v,
        },
        b_dec: Moments {
            m: done.b_dec.m,
            v: done.b_dec.v,
        },
    };
    let params = Params {
        w_enc: done.w_enc.param,
        b_enc: done.b_enc.param,
        w_dec: done.w_dec.param,
        b_dec: done.b_dec.param,
    };
    Some((params, state, done.squares))
}

/// Removes from each row of `grad` its component along the matching (unit-norm) row of `w`:
/// `g_j -= (w_j . g_j) w_j`.
///
/// # Shapes
/// - `grad`, `w`: `[d_sae, d_in]` → `[d_sae, d_in]`
pub fn project_rows<B: Backend>(grad: Tensor<B, 2>, w: &Tensor<B, 2>) -> Tensor<B, 2> {
    let along = (grad.clone() * w.clone()).sum_dim(1);
    grad - w.clone() * along
}

/// Scales every row to unit L2 norm (rows of norm below 1e-12 are left as they are).
///
/// # Shapes
/// - `w`: `[d_sae, d_in]` → `[d_sae, d_in]`
pub fn normalize_rows<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = w.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    w / norm
}
