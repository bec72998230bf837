//! The loss's batch statistics, every engine side by side: the centred variance of a batch,
//! the residual after the decode and a term's NMSE with its output gradient. The host engine's
//! passes (in `f64`) and burn's tensor operations are here; our kernels, which compute the
//! residual, both variances and the main term in one launch and each AuxK-like term in one more,
//! are in `gpu/stats.rs` (opt-in: [`crate::backend::GpuKernels::loss`]) and are checked against
//! the host passes.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::ops::engine::KernelOptions;

// ---- The host engine ----

/// NMSE of `recon` against `target` and its gradient `scale * (recon - target) / var`.
pub(crate) fn residual_term(
    recon: &[f32],
    target: &[f32],
    var: f64,
    scale: f64,
) -> (f64, Vec<f32>) {
    let n = recon.len() as f64;
    let sq: f64 = recon
        .iter()
        .zip(target)
        .map(|(a, b)| f64::from(a - b) * f64::from(a - b))
        .sum();
    let factor = (scale / var) as f32;
    let grad = recon
        .iter()
        .zip(target)
        .map(|(a, b)| (a - b) * factor)
        .collect();
    (sq / n / var, grad)
}

/// `mean((x - mean_over_rows(x))^2)` over all elements.
pub(crate) fn centred_variance(x: &[f32], d_in: usize) -> f64 {
    let rows = x.len() / d_in;
    let mut mean = vec![0f64; d_in];
    for row in x.chunks_exact(d_in) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += f64::from(*v));
    }
    for m in &mut mean {
        *m /= rows as f64;
    }
    let sq: f64 = x
        .chunks_exact(d_in)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(v, m)| (f64::from(*v) - m).powi(2))
                .sum::<f64>()
        })
        .sum();
    sq / x.len() as f64
}

// ---- burn's tensor operations, or our kernels on burn-wgpu ----

/// A batch's residual after the main decode, and the statistics the loss takes from it: our
/// two kernels on burn-wgpu (`crate::ops::gpu::stats`), else burn's tensor operations.
pub(crate) struct BatchStats<B: Backend> {
    /// `x - x_hat`, `[batch, d_in]`.
    pub(crate) e: Tensor<B, 2>,
    /// The centred variance of `x`, `[1, 1]`.
    pub(crate) var_x: Tensor<B, 2>,
    /// The main term's NMSE, `[1]`.
    pub(crate) recon: Tensor<B, 1>,
    /// With an AuxK term: the centred variance of `e`, at least `1e-20`, `[1, 1]`.
    pub(crate) var_e: Option<Tensor<B, 2>>,
    /// With candidates on the device: how many are left, `[1]`.
    pub(crate) left: Option<Tensor<B, 1>>,
    /// With candidates on the device: `min(left, 1)`, `[1]`.
    pub(crate) live: Option<Tensor<B, 1>>,
}

impl<B: Backend> BatchStats<B> {
    /// The statistics of `x` (`[batch, d_in]`) against `x_hat = dec + b_dec`; `var_e` with
    /// `aux`, `left` and `live` with `allowed` (`[d_sae]`).
    pub(crate) fn new(
        options: &KernelOptions,
        x: Tensor<B, 2>,
        dec: Tensor<B, 2>,
        b_dec: Tensor<B, 1>,
        allowed: Option<Tensor<B, 1, Int>>,
        aux: bool,
    ) -> Self {
        #[cfg(not(feature = "wgpu"))]
        let _ = options;
        #[cfg(feature = "wgpu")]
        {
            let with_left = allowed.is_some();
            if let Some(r) = crate::ops::gpu::stats::residual(
                options,
                x.clone(),
                dec.clone(),
                b_dec.clone(),
                allowed.clone(),
            ) {
                return Self {
                    e: r.e,
                    var_x: r.var_x.unsqueeze_dim(0),
                    recon: r.recon,
                    var_e: aux.then(|| r.var_e.unsqueeze_dim(0)),
                    left: with_left.then_some(r.left),
                    live: with_left.then_some(r.live),
                };
            }
        }
        let var_x = centred_variance_tensor(x.clone());
        let e = x - (dec + b_dec.unsqueeze_dim(0));
        let recon = e.clone().powi_scalar(2).mean() / var_x.clone().reshape([1]);
        // Guard a perfect reconstruction (zero residual variance) against 0/0.
        let var_e = aux.then(|| centred_variance_tensor(e.clone()).clamp_min(1e-20));
        let left = allowed.map(|a| a.sum().float());
        let live = left.as_ref().map(|n| n.clone().clamp_max(1.0));
        Self {
            e,
            var_x,
            recon,
            var_e,
            left,
            live,
        }
    }
}

/// A term's NMSE and output gradient from its decode `a` and target `b`: `(mean((a - b)^2) /
/// var * live, (a - b) * factor / var)`; our two kernels on burn-wgpu (`crate::ops::gpu::stats`),
/// else burn's tensor operations.
///
/// # Shapes
/// - `a`, `b`: `[batch, d_in]`, `var`: `[1, 1]`, `live`: `[1]` → `[1]` and `[batch, d_in]`
pub(crate) fn scaled_residual<B: Backend>(
    options: &KernelOptions,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    var: Tensor<B, 2>,
    live: Option<Tensor<B, 1>>,
    factor: f32,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    #[cfg(not(feature = "wgpu"))]
    let _ = options;
    #[cfg(feature = "wgpu")]
    if let Some(found) = crate::ops::gpu::stats::scaled_residual(
        options,
        a.clone(),
        b.clone(),
        var.clone().reshape([1]),
        live.clone(),
        factor,
    ) {
        return found;
    }
    let diff = a - b;
    let mut loss = diff.clone().powi_scalar(2).mean() / var.clone().reshape([1]);
    if let Some(live) = live {
        loss = loss * live;
    }
    (loss, diff.mul_scalar(factor) / var)
}

/// `mean((a - mean_over_batch(a))^2)` over all elements, `[1, 1]`.
pub(crate) fn centred_variance_tensor<B: Backend>(a: Tensor<B, 2>) -> Tensor<B, 2> {
    let centred = a.clone() - a.mean_dim(0);
    centred.powi_scalar(2).mean().unsqueeze_dim(0)
}
