//! The training objective (SPEC §2) and its hand-derived gradient.
//!
//! `L = nmse(x_hat, x) + aux_coef * nmse(e_hat, e) + multi_k_coef * nmse(x_hat_mk, x)` where
//! `e = x - x_hat` is a constant (no gradient flows through it), `e_hat` decodes the top
//! `k_aux` *dead* latents without `b_dec`, and `x_hat_mk` decodes the top `multi_k_factor * k`
//! latents (off by default). Top-k selection is piecewise constant, so gradients flow through the
//! selected values only, exactly as autodiff through `gather` would give.

use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use crate::error::{Error, Result};
use crate::sae::{Selected, TopKSae, decode_rows, to_host};

/// Normalised MSE of a batch, `mean((a - x)^2) / mean((x - mean_over_batch(x))^2)`, means over
/// all elements.
///
/// # Shapes
/// - `a`, `x`: `[batch, d_in]` → `[1]`
pub fn nmse<B: Backend>(a: Tensor<B, 2>, x: Tensor<B, 2>) -> Tensor<B, 1> {
    let centred = x.clone() - x.clone().mean_dim(0);
    (a - x).powi_scalar(2).mean() / centred.powi_scalar(2).mean()
}

/// Configuration of the loss. Defaults are the reference recipe.
#[derive(Config, Debug, PartialEq)]
pub struct SaeLossConfig {
    /// Weight of the AuxK term.
    #[config(default = 0.03125)]
    pub aux_coef: f32,
    /// Dead latents decoded by the AuxK term; `None` means `2 * k`.
    #[config(default = "None")]
    pub k_aux: Option<usize>,
    /// Adds the multi-k term (off in the reference recipe).
    #[config(default = false)]
    pub multi_k: bool,
    /// The multi-k term decodes `multi_k_factor * k` latents (capped at `d_sae`).
    #[config(default = 4)]
    pub multi_k_factor: usize,
    /// Weight of the multi-k term.
    #[config(default = 0.125)]
    pub multi_k_coef: f32,
}

impl SaeLossConfig {
    /// Checks every field against a model with `d_sae` latents.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad field.
    pub fn validate(&self, d_sae: usize) -> Result<()> {
        if !(self.aux_coef.is_finite() && self.aux_coef >= 0.0) {
            return Err(Error::invalid(
                "aux_coef",
                self.aux_coef,
                "must be finite and >= 0",
            ));
        }
        if let Some(k_aux) = self.k_aux
            && !(1..=d_sae).contains(&k_aux)
        {
            return Err(Error::invalid(
                "k_aux",
                k_aux,
                format!("must be in 1..=d_sae ({d_sae})"),
            ));
        }
        if self.multi_k_factor == 0 {
            return Err(Error::invalid(
                "multi_k_factor",
                self.multi_k_factor,
                "must be >= 1",
            ));
        }
        if !(self.multi_k_coef.is_finite() && self.multi_k_coef >= 0.0) {
            return Err(Error::invalid(
                "multi_k_coef",
                self.multi_k_coef,
                "must be finite and >= 0",
            ));
        }
        Ok(())
    }

    /// The loss for a model with `k` active latents.
    ///
    /// # Errors
    /// The errors of [`SaeLossConfig::validate`].
    pub fn init(&self, k: usize, d_sae: usize) -> Result<SaeLoss> {
        self.validate(d_sae)?;
        Ok(SaeLoss {
            config: self.clone(),
            k_aux: self.k_aux.unwrap_or(2 * k).min(d_sae),
        })
    }
}

/// The loss, ready to evaluate; built by [`SaeLossConfig::init`].
#[derive(Debug, Clone)]
pub struct SaeLoss {
    config: SaeLossConfig,
    k_aux: usize,
}

/// The value of each loss term for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossParts {
    /// `recon + aux_coef * aux + multi_k_coef * multi_k`.
    pub total: f32,
    /// Batch NMSE of the reconstruction.
    pub recon: f32,
    /// NMSE of the dead latents' reconstruction of the residual (0 when nothing is dead).
    pub aux: f32,
    /// Batch NMSE of the multi-k reconstruction (0 when disabled).
    pub multi_k: f32,
}

/// Gradients of the loss with respect to the four parameters, shaped like them.
#[derive(Debug, Clone)]
pub struct SaeGradients<B: Backend> {
    /// `[d_in, d_sae]`.
    pub w_enc: Tensor<B, 2>,
    /// `[d_sae]`.
    pub b_enc: Tensor<B, 1>,
    /// `[d_sae, d_in]`.
    pub w_dec: Tensor<B, 2>,
    /// `[d_in]`.
    pub b_dec: Tensor<B, 1>,
}

/// Everything one evaluation of the loss produces.
#[derive(Debug, Clone)]
pub struct LossOutput<B: Backend> {
    /// Term values.
    pub parts: LossParts,
    /// Gradients, when asked for.
    pub grads: Option<SaeGradients<B>>,
    /// Row-major `[batch, k]` indices of the main top-k (for dead-latent tracking).
    pub indices: Vec<i64>,
    /// How many latents the AuxK term decoded per row (0 when it was skipped).
    pub k_aux_used: usize,
}

/// One decoded term: which latents, their values, and `dL/dx_hat` for the term.
struct Term<B: Backend> {
    selected: Selected<B>,
    grad_out: Tensor<B, 2>,
    with_bias: bool,
}

impl SaeLoss {
    /// The AuxK width in use (`k_aux`, or `2k` by default, capped at `d_sae`).
    pub fn k_aux(&self) -> usize {
        self.k_aux
    }

    /// The configuration this loss was built from.
    pub fn config(&self) -> &SaeLossConfig {
        &self.config
    }

    /// Evaluates the loss on a batch, and its gradient when `with_grads`.
    ///
    /// `dead` marks the latents the AuxK term may use (`[d_sae]`), less those that fire in this
    /// batch's top-k; `None`, or no such latent left, skips that term.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]`; `dead`: `d_sae` entries
    ///
    /// # Panics
    /// If `x` is not `[batch, d_in]` or `dead` is not `d_sae` long.
    pub fn evaluate<B: Backend>(
        &self,
        model: &TopKSae<B>,
        x: Tensor<B, 2>,
        dead: Option<&[bool]>,
        with_grads: bool,
    ) -> LossOutput<B> {
        let [batch, d_in] = x.dims();
        let (d_sae, k) = (model.d_sae(), model.k());
        let w_dec = model.w_dec.val();
        let b_dec = model.b_dec.val().unsqueeze_dim::<2>(0);
        let scale = 2.0 / (batch * d_in) as f32;

        let xc = x.clone() - b_dec.clone();
        let pre = model.pre_activations_for_topk(xc.clone());

        let centred = x.clone() - x.clone().mean_dim(0);
        let var_x = centred.powi_scalar(2).mean().unsqueeze_dim::<2>(0);

        let mut main = pre.select(d_sae, k, None);
        let x_hat = decode_rows(&w_dec, main.indices.clone(), main.values.clone()) + b_dec.clone();
        let diff = x_hat.clone() - x.clone();
        let recon = diff.clone().powi_scalar(2).mean() / var_x.clone().reshape([1]);
        let indices = main.take_host_indices();
        let mut terms = vec![Term {
            selected: main,
            grad_out: diff.mul_scalar(scale) / var_x.clone(),
            with_bias: true,
        }];
        let mut losses = vec![recon];
        let mut coefs = vec![1.0f32];

        // Latents that fire in this batch are never treated as dead.
        let dead: Option<Vec<bool>> = dead.map(|d| {
            assert_eq!(
                d.len(),
                d_sae,
                "dead mask must have d_sae = {d_sae} entries"
            );
            let mut d = d.to_vec();
            for &j in &indices {
                d[j as usize] = false;
            }
            d
        });
        let dead = dead.as_deref();
        let n_dead = dead.map_or(0, |d| d.iter().filter(|v| **v).count());
        let k_aux_used = self.k_aux.min(n_dead);
        let aux_index = (k_aux_used > 0).then(|| {
            let e = x.clone() - x_hat.clone();
            let centred_e = e.clone() - e.clone().mean_dim(0);
            // Guard a perfect reconstruction (zero residual variance) against 0/0.
            let var_e = centred_e
                .powi_scalar(2)
                .mean()
                .clamp_min(1e-20)
                .unsqueeze_dim::<2>(0);
            let aux = pre.select(d_sae, k_aux_used, dead);
            let e_hat = decode_rows(&w_dec, aux.indices.clone(), aux.values.clone());
            let diff = e_hat - e;
            losses.push(diff.clone().powi_scalar(2).mean() / var_e.clone().reshape([1]));
            coefs.push(self.config.aux_coef);
            terms.push(Term {
                selected: aux,
                grad_out: diff.mul_scalar(scale * self.config.aux_coef) / var_e,
                with_bias: false,
            });
            losses.len() - 1
        });

        let multi_index = self.config.multi_k.then(|| {
            let k_mk = (self.config.multi_k_factor * k).min(d_sae);
            let mk = pre.select(d_sae, k_mk, None);
            let x_hat_mk =
                decode_rows(&w_dec, mk.indices.clone(), mk.values.clone()) + b_dec.clone();
            let diff = x_hat_mk - x.clone();
            losses.push(diff.clone().powi_scalar(2).mean() / var_x.clone().reshape([1]));
            coefs.push(self.config.multi_k_coef);
            terms.push(Term {
                selected: mk,
                grad_out: diff.mul_scalar(scale * self.config.multi_k_coef) / var_x.clone(),
                with_bias: true,
            });
            losses.len() - 1
        });

        let values = to_host(Tensor::cat(losses, 0));
        let recon = values[0];
        let aux = aux_index.map_or(0.0, |i| values[i]);
        let multi_k = multi_index.map_or(0.0, |i| values[i]);
        let total = values.iter().zip(&coefs).map(|(v, c)| v * c).sum();
        let parts = LossParts {
            total,
            recon,
            aux,
            multi_k,
        };

        let grads = with_grads.then(|| backward(model, xc, &terms));
        LossOutput {
            parts,
            grads,
            indices,
            k_aux_used,
        }
    }
}

/// Back-propagates the terms' output gradients to the parameters.
fn backward<B: Backend>(
    model: &TopKSae<B>,
    xc: Tensor<B, 2>,
    terms: &[Term<B>],
) -> SaeGradients<B> {
    let device = xc.device();
    let [batch, d_in] = xc.dims();
    let d_sae = model.d_sae();
    let w_dec = model.w_dec.val();
    let mut grad_w_dec = Tensor::<B, 2>::zeros([d_sae, d_in], &device);
    let mut grad_pre = Tensor::<B, 2>::zeros([batch, d_sae], &device);
    let mut grad_b_dec = Tensor::<B, 1>::zeros([d_in], &device);
    for term in terms {
        let indices: Tensor<B, 2, Int> = term.selected.indices.clone();
        let values = term.selected.values.clone();
        let [_, k] = indices.dims();
        let flat = indices.clone().reshape([batch * k]);
        let g = term.grad_out.clone();
        // dL/dw_dec[idx[b, j]] += values[b, j] * g[b]
        let contrib = (values.clone().unsqueeze_dim::<3>(2) * g.clone().unsqueeze_dim::<3>(1))
            .reshape([batch * k, d_in]);
        grad_w_dec = grad_w_dec.select_assign(0, flat.clone(), contrib, IndexingUpdateOp::Add);
        // dL/dvalue[b, j] = g[b] . w_dec[idx[b, j]], zero where ReLU clipped the value.
        let rows = w_dec.clone().select(0, flat).reshape([batch, k, d_in]);
        let grad_values = (rows * g.clone().unsqueeze_dim::<3>(1))
            .sum_dim(2)
            .reshape([batch, k]);
        let grad_values = grad_values * values.greater_elem(0.0).float();
        grad_pre = grad_pre.scatter(1, indices, grad_values, IndexingUpdateOp::Add);
        if term.with_bias {
            grad_b_dec = grad_b_dec + g.sum_dim(0).reshape([d_in]);
        }
    }
    let grad_b_enc = grad_pre.clone().sum_dim(0);
    // pre = (x - b_dec) @ w_enc + b_enc, so b_dec also receives -(dL/dpre summed) @ w_enc^T.
    let through_encoder =
        crate::sae::matmul(grad_b_enc.clone(), model.w_enc.val().transpose()).reshape([d_in]);
    SaeGradients {
        w_enc: crate::sae::matmul(xc.transpose(), grad_pre),
        b_enc: grad_b_enc.reshape([d_sae]),
        w_dec: grad_w_dec,
        b_dec: grad_b_dec - through_encoder,
    }
}
