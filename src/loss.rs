//! The training objective (SPEC §2) and its hand-derived gradient.
//!
//! `L = nmse(x_hat, x) + aux_coef * nmse(e_hat, e) + multi_k_coef * nmse(x_hat_mk, x)` where
//! `e = x - x_hat` is a constant (no gradient flows through it), `e_hat` decodes the top
//! `k_aux` *dead* latents without `b_dec`, and `x_hat_mk` decodes the top `multi_k_factor * k`
//! latents (off by default). Top-k selection is piecewise constant, so gradients flow through the
//! selected values only, exactly as autodiff through `gather` would give.

use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::ops::engine::KernelOptions;
use crate::ops::sparse::{decode_rows, gather_rows};
use crate::ops::stats::{BatchStats, scaled_residual};
use crate::ops::topk::{PreActivations, Selected};
use crate::ops::transfer::to_host;
use crate::profile::mark;
use crate::sae::TopKSae;

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

impl<B: Backend> SaeGradients<B> {
    /// The four gradients as the optimiser's update takes them.
    pub(crate) fn into_params(self) -> crate::ops::update::Params<B> {
        crate::ops::update::Params {
            w_enc: self.w_enc,
            b_enc: self.b_enc,
            w_dec: self.w_dec,
            b_dec: self.b_dec,
        }
    }
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

/// [`SaeLoss::evaluate`]'s results before the term values are read back.
pub(crate) struct Evaluated<B: Backend> {
    /// `[1]` each: the main term's NMSE, then AuxK's and multi-k's when they ran (kept apart
    /// so that a read-back joins them with what else it carries in one concatenation).
    pub losses: Vec<Tensor<B, 1>>,
    coefs: Vec<f32>,
    aux_index: Option<usize>,
    multi_index: Option<usize>,
    /// Gradients, when asked for.
    pub grads: Option<SaeGradients<B>>,
    /// Row-major `[batch, k]` indices of the main top-k; empty when `fired` is given.
    pub indices: Vec<i64>,
    /// `[d_sae]`, 1.0 for the latents the main top-k selected: on the device, in place of
    /// `indices`, when the evaluation was deferred (see [`SaeLoss::evaluate_on_device`]).
    pub fired: Option<Tensor<B, 1>>,
    /// Deferred: the main top-k's indices on the device, `[batch, k]`.
    pub device_indices: Option<Tensor<B, 2, Int>>,
    /// Deferred with an AuxK term: `[1]`, how many candidates were left for it.
    pub left: Option<Tensor<B, 1>>,
    /// How many latents the AuxK term decoded per row (0 when it was skipped; deferred, how
    /// many it may decode, the rest zeros).
    pub k_aux_used: usize,
}

/// The latents that count as dead before a batch (the AuxK term's candidates, less those
/// that fire in the batch).
pub(crate) enum Candidates<'a, B: Backend> {
    /// On the host, `d_sae` entries.
    Host(&'a [bool]),
    /// On the device (`[d_sae]`, 1 for a candidate), with a bound on their count known on the
    /// host (the AuxK term's width is `min(k_aux, bound)`; a bound of 0 skips it).
    Device(Tensor<B, 1, Int>, usize),
}

impl<B: Backend> Candidates<'_, B> {
    /// How many (host), or at most how many (device).
    ///
    /// # Panics
    /// If a host mask is not `d_sae` long.
    fn count(&self, d_sae: usize) -> usize {
        match self {
            Self::Host(d) => {
                assert_eq!(
                    d.len(),
                    d_sae,
                    "dead mask must have d_sae = {d_sae} entries"
                );
                d.iter().filter(|v| **v).count()
            }
            Self::Device(_, bound) => *bound,
        }
    }

    /// The mask on the device (uploaded from the host).
    fn on_device(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        match self {
            Self::Host(d) => {
                let v: Vec<i32> = d.iter().map(|&c| i32::from(c)).collect();
                Tensor::from_data(TensorData::new(v, [d.len()]), device)
            }
            Self::Device(t, _) => t.clone(),
        }
    }

    /// The mask on the host (read back from the device).
    fn on_host(&self) -> Vec<bool> {
        match self {
            Self::Host(d) => d.to_vec(),
            Self::Device(t, _) => crate::ops::transfer::int_to_host(t.clone())
                .iter()
                .map(|&v| v != 0)
                .collect(),
        }
    }
}

/// Which latents the AuxK term may select.
enum AuxLatents<B: Backend> {
    /// The dead latents, on the host, and how many the term takes (no more than there are).
    Host {
        dead: Option<Vec<bool>>,
        k_aux: usize,
    },
    /// The candidates left after this batch, on the device (`[d_sae]`, 1 where allowed), and
    /// how many the term takes: at most `k_aux` and the candidates before this batch, which
    /// may be more than are left.
    Device {
        allowed: Tensor<B, 1, Int>,
        k_aux: usize,
    },
}

impl<B: Backend> AuxLatents<B> {
    fn k_aux(&self) -> usize {
        match self {
            Self::Host { k_aux, .. } | Self::Device { k_aux, .. } => *k_aux,
        }
    }

    /// The candidates left on the device, when the term selects there.
    fn device_allowed(&self) -> Option<Tensor<B, 1, Int>> {
        match self {
            Self::Host { .. } => None,
            Self::Device { allowed, .. } => Some(allowed.clone()),
        }
    }

    /// The term's top-k of `pre` (after ReLU).
    fn select(self, options: &KernelOptions, pre: &PreActivations<B>, d_sae: usize) -> Selected<B> {
        match self {
            Self::Host { dead, k_aux } => pre.select(options, d_sae, k_aux, dead.as_deref()),
            Self::Device { allowed, k_aux } => {
                let pre = pre
                    .device()
                    .expect("deferred only with device pre-activations");
                let (indices, values) = crate::ops::topk::masked_topk(options, pre, k_aux, allowed)
                    .expect("deferred only where the masked top-k runs");
                Selected {
                    indices,
                    values,
                    host_indices: None,
                }
            }
        }
    }
}

impl<B: Backend> Evaluated<B> {
    /// The loss parts from the term values, read back.
    pub fn parts(&self, values: &[f32]) -> LossParts {
        LossParts {
            total: values.iter().zip(&self.coefs).map(|(v, c)| v * c).sum(),
            recon: values[0],
            aux: self.aux_index.map_or(0.0, |i| values[i]),
            multi_k: self.multi_index.map_or(0.0, |i| values[i]),
        }
    }
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
        let evaluated =
            self.evaluate_on_device(model, x, dead.map(Candidates::Host), with_grads, true);
        let mut values = evaluated.losses.clone();
        values.extend(evaluated.left.clone());
        let host = to_host(crate::ops::linalg::concat(&model.kernels(), values));
        let terms = evaluated.losses.len();
        let parts = evaluated.parts(&host[..terms]);
        // Deferred: the main indices, and how many candidates were left, come back now.
        let (indices, k_aux_used) = match (&evaluated.device_indices, host.get(terms)) {
            (Some(indices), left) => (
                crate::ops::transfer::int_to_host(indices.clone()),
                left.map_or(0, |&n| evaluated.k_aux_used.min(n as usize)),
            ),
            (None, _) => (evaluated.indices, evaluated.k_aux_used),
        };
        LossOutput {
            parts,
            grads: evaluated.grads,
            indices,
            k_aux_used,
        }
    }

    /// What the AuxK term may select, once the main top-k is known. With `defer`, where the
    /// kernels run, the latents that fired and the candidates left are worked out on the device:
    /// nothing is read back (the trainer reads the fired latents back with the loss). Else on
    /// the host, from the main indices read back. Returns the main indices on the host (empty
    /// when deferred), the fired latents on the device (when deferred), and the AuxK latents.
    fn aux_latents<B: Backend>(
        &self,
        options: &KernelOptions,
        pre: &PreActivations<B>,
        main: &mut Selected<B>,
        dead: Option<Candidates<'_, B>>,
        d_sae: usize,
        defer: bool,
    ) -> (Vec<i64>, Option<Tensor<B, 1>>, AuxLatents<B>) {
        let device = main.indices.device();
        let n_candidates = dead.as_ref().map_or(0, |d| d.count(d_sae));
        let k_aux = self.k_aux.min(n_candidates);
        let deferred = (defer && main.host_indices.is_none())
            .then(|| pre.device())
            .flatten()
            .filter(|pre| crate::ops::topk::masked_topk_runs(options, pre, k_aux.max(1)))
            .and_then(|_| {
                let candidates = match &dead {
                    Some(d) => d.on_device(&device),
                    None => Tensor::zeros([d_sae], &device),
                };
                crate::ops::topk::fired_latents(options, main.indices.clone(), candidates)
            });
        if let Some((allowed, fired)) = deferred {
            return (
                Vec::new(),
                Some(fired),
                AuxLatents::Device { allowed, k_aux },
            );
        }
        let indices = main.take_host_indices();
        // Latents that fire in this batch are never treated as dead.
        let dead: Option<Vec<bool>> = dead.map(|d| {
            let mut d = d.on_host();
            for &j in &indices {
                d[j as usize] = false;
            }
            d
        });
        let n_dead = dead
            .as_ref()
            .map_or(0, |d| d.iter().filter(|v| **v).count());
        let k_aux = self.k_aux.min(n_dead);
        (indices, None, AuxLatents::Host { dead, k_aux })
    }

    /// [`SaeLoss::evaluate`] with the term values left on the device, so that the trainer reads
    /// them back with the gradient norm, in one transfer.
    ///
    /// With `defer`, where our GPU kernels run, nothing is read back at all: the main term's
    /// indices stay on the device ([`Evaluated::fired`] says which latents fired), the AuxK
    /// term takes `min(k_aux, candidates)` latents among the candidates left on the device
    /// (when fewer are left, the rest are padding with value 0, which changes no sum; when none
    /// are, its loss is multiplied by 0), and the gradient is grouped by latent there. The
    /// loss and gradient are the same as without it.
    ///
    /// `dead` may be on the device ([`Candidates::Device`]); without deferral it is then read
    /// back.
    pub(crate) fn evaluate_on_device<B: Backend>(
        &self,
        model: &TopKSae<B>,
        x: Tensor<B, 2>,
        dead: Option<Candidates<'_, B>>,
        with_grads: bool,
        defer: bool,
    ) -> Evaluated<B> {
        let [batch, d_in] = x.dims();
        let (d_sae, k) = (model.d_sae(), model.k());
        let options = &model.kernels();
        let w_dec = model.w_dec.val();
        let b_dec = model.b_dec.val().unsqueeze_dim::<2>(0);
        let scale = 2.0 / (batch * d_in) as f32;

        let xc = x.clone() - b_dec.clone();
        let pre = model.pre_activations_for_topk(xc.clone());
        let device = x.device();
        mark::<B>(&device, "encoder matmul");

        let mut main = pre.select(options, d_sae, k, None);
        mark::<B>(&device, "top-k (main)");
        let dec = decode_rows(options, &w_dec, main.indices.clone(), main.values.clone());
        mark::<B>(&device, "decode (main)");
        let (indices, fired, aux) = self.aux_latents(options, &pre, &mut main, dead, d_sae, defer);
        let device_indices = fired.as_ref().map(|_| main.indices.clone());
        mark::<B>(&device, "indices read-back or fired latents (main)");
        let k_aux_used = aux.k_aux();
        let stats = BatchStats::new(
            options,
            x.clone(),
            dec,
            model.b_dec.val(),
            aux.device_allowed().filter(|_| k_aux_used > 0),
            k_aux_used > 0,
        );
        mark::<B>(&device, "residual, variances");
        let mut terms = vec![Term {
            selected: main,
            // dL/dx_hat = scale (x_hat - x) / var_x, and x_hat - x = -e.
            grad_out: stats.e.clone().mul_scalar(-scale) / stats.var_x.clone(),
            with_bias: true,
        }];
        let mut losses = vec![stats.recon.clone()];
        let mut coefs = vec![1.0f32];

        let aux_index = (k_aux_used > 0).then(|| {
            let e = stats.e.clone();
            let var_e = stats.var_e.clone().expect("computed with an AuxK term");
            let aux = aux.select(options, &pre, d_sae);
            // Fewer candidates left than the width: the padding decodes zeros. None left: the
            // term is 0, as when it is skipped.
            let live = stats.live.clone();
            mark::<B>(&device, "top-k (aux)");
            let e_hat = decode_rows(options, &w_dec, aux.indices.clone(), aux.values.clone());
            let (loss, grad_out) =
                scaled_residual(options, e_hat, e, var_e, live, scale * self.config.aux_coef);
            losses.push(loss);
            mark::<B>(&device, "decode (aux)");
            coefs.push(self.config.aux_coef);
            terms.push(Term {
                selected: aux,
                grad_out,
                with_bias: false,
            });
            losses.len() - 1
        });
        let left = aux_index.and(stats.left);
        let var_x = stats.var_x;

        let multi_index = self.config.multi_k.then(|| {
            let k_mk = (self.config.multi_k_factor * k).min(d_sae);
            let mk = pre.select(options, d_sae, k_mk, None);
            let x_hat_mk =
                decode_rows(options, &w_dec, mk.indices.clone(), mk.values.clone()) + b_dec.clone();
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

        let main_indices = fired.is_none().then_some(indices.as_slice());
        let grads = with_grads.then(|| backward(model, xc, &mut terms, main_indices));
        Evaluated {
            losses,
            coefs,
            aux_index,
            multi_index,
            grads,
            indices,
            fired,
            device_indices,
            left,
            k_aux_used,
        }
    }
}

/// Back-propagates the terms' output gradients to the parameters. `main_indices` are the main
/// term's indices when they are on the host already.
fn backward<B: Backend>(
    model: &TopKSae<B>,
    xc: Tensor<B, 2>,
    terms: &mut [Term<B>],
    main_indices: Option<&[i64]>,
) -> SaeGradients<B> {
    let [_, d_in] = xc.dims();
    let w_dec = model.w_dec.val();
    let options = model.kernels();
    // dL/dvalue[b, j] = g[b] . w_dec[idx[b, j]], zero where ReLU clipped the value.
    let grad_values: Vec<Tensor<B, 2>> = terms
        .iter()
        .map(|t| {
            gated_dots(
                &options,
                t.selected.indices.clone(),
                &w_dec,
                t.grad_out.clone(),
                &t.selected.values,
            )
        })
        .collect();
    mark::<B>(&w_dec.device(), "value grads (gathered dots)");
    let (w_enc, b_enc, w_dec_grad) =
        match grouped_gradients(model, &xc, terms, &grad_values, main_indices) {
            Some(grads) => grads,
            None => scattered_gradients(model, xc, terms, grad_values),
        };
    let b_dec = decoder_bias_gradient(model, terms, &b_enc, d_in);
    mark::<B>(&w_dec.device(), "bias grads");
    SaeGradients {
        w_enc,
        b_enc,
        w_dec: w_dec_grad,
        b_dec,
    }
}

/// `b_dec`'s gradient: the output gradients of the terms that decode with it (the main and
/// multi-k terms; the AuxK term, the residual's, does not), summed over the batch, less
/// `w_enc @ grad_b_enc`: `pre = (x - b_dec) @ w_enc + b_enc`, so `b_dec` also receives
/// `-(dL/dpre summed) @ w_enc^T`.
fn decoder_bias_gradient<B: Backend>(
    model: &TopKSae<B>,
    terms: &[Term<B>],
    grad_b_enc: &Tensor<B, 1>,
    d_in: usize,
) -> Tensor<B, 1> {
    let with_bias: Vec<&Term<B>> = terms.iter().filter(|t| t.with_bias).collect();
    let down = with_bias
        .iter()
        .map(|t| t.grad_out.clone().sum_dim(0).reshape([d_in]))
        .reduce(|a, b| a + b)
        .expect("the main term decodes with the bias");
    let through_encoder = crate::ops::linalg::matmul(
        grad_b_enc.clone().unsqueeze_dim::<2>(0),
        model.w_enc.val().transpose(),
    )
    .reshape([d_in]);
    down - through_encoder
}

/// `out[b, j] = w_dec[indices[b, j]] . g[b]` where `values[b, j] > 0` (ReLU's derivative), else
/// 0: our kernel on burn-wgpu, else a gather of the `[batch, k, d_in]` rows.
fn gated_dots<B: Backend>(
    options: &KernelOptions,
    indices: Tensor<B, 2, Int>,
    w_dec: &Tensor<B, 2>,
    g: Tensor<B, 2>,
    values: &Tensor<B, 2>,
) -> Tensor<B, 2> {
    #[cfg(not(feature = "wgpu"))]
    let _ = options;
    #[cfg(feature = "wgpu")]
    if let Some(dots) = crate::ops::gpu::sparse::gathered_dots(
        options,
        indices.clone(),
        w_dec.clone(),
        g.clone(),
        values.clone(),
    ) {
        return dots;
    }
    let [batch, k] = indices.dims();
    let dots = (gather_rows(w_dec, indices) * g.unsqueeze_dim::<3>(1))
        .sum_dim(2)
        .reshape([batch, k]);
    dots * values.clone().greater_elem(0.0).float()
}

/// The gradients of `w_enc`, `b_enc` and `w_dec` with burn's tensor operations: the decoder's
/// by a row scatter-add (`select_assign`), the encoder's through the dense `dL/dpre`.
fn scattered_gradients<B: Backend>(
    model: &TopKSae<B>,
    xc: Tensor<B, 2>,
    terms: &[Term<B>],
    grad_values: Vec<Tensor<B, 2>>,
) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 2>) {
    let device = xc.device();
    let [batch, d_in] = xc.dims();
    let d_sae = model.d_sae();
    let mut grad_w_dec = Tensor::<B, 2>::zeros([d_sae, d_in], &device);
    let mut grad_pre = Tensor::<B, 2>::zeros([batch, d_sae], &device);
    for (term, grad_values) in terms.iter().zip(grad_values) {
        let indices: Tensor<B, 2, Int> = term.selected.indices.clone();
        let [_, k] = indices.dims();
        // dL/dw_dec[idx[b, j]] += values[b, j] * g[b]
        let contrib = (term.selected.values.clone().unsqueeze_dim::<3>(2)
            * term.grad_out.clone().unsqueeze_dim::<3>(1))
        .reshape([batch * k, d_in]);
        let flat = indices.clone().reshape([batch * k]);
        grad_w_dec = grad_w_dec.select_assign(0, flat, contrib, IndexingUpdateOp::Add);
        grad_pre = grad_pre.scatter(1, indices, grad_values, IndexingUpdateOp::Add);
    }
    let grad_b_enc = grad_pre.clone().sum_dim(0).reshape([d_sae]);
    (
        crate::ops::linalg::matmul(xc.transpose(), grad_pre),
        grad_b_enc,
        grad_w_dec,
    )
}

/// The gradients of `w_enc`, `b_enc` and `w_dec` by our grouped-sum kernel on burn-wgpu
/// (`src/ops/gpu/sparse.rs`): the entries of every term grouped by latent on the host, then one
/// cube per latent sums its rows. `None` on other backends.
#[cfg(feature = "wgpu")]
fn grouped_gradients<B: Backend>(
    model: &TopKSae<B>,
    xc: &Tensor<B, 2>,
    terms: &mut [Term<B>],
    grad_values: &[Tensor<B, 2>],
    main_indices: Option<&[i64]>,
) -> Option<(Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 2>)> {
    use crate::ops::gpu::sparse::{Groups, sum_rows, sum_rows_and_weights, supports};
    use crate::ops::linalg::{concat, concat_rows};
    let options = &model.kernels();
    if !supports::<B>(options, &xc.device()) {
        return None;
    }
    let device = xc.device();
    let [batch, _] = xc.dims();
    let d_sae = model.d_sae();
    // Grouped on the device where its kernels run; else on the host, from the indices read back
    // (the main term's may be on the host already).
    let on_device: Vec<Tensor<B, 2, Int>> =
        terms.iter().map(|t| t.selected.indices.clone()).collect();
    let values: Vec<Tensor<B, 2>> = terms.iter().map(|t| t.selected.values.clone()).collect();
    let groups =
        Groups::by_latent_on_device(options, &on_device, &values, d_sae).or_else(|| {
            let skip = usize::from(main_indices.is_some());
            let read: Vec<Vec<i64>> = terms[skip..]
                .iter_mut()
                .map(|t| t.selected.take_host_indices())
                .collect();
            let lists: Vec<&[i64]> = main_indices
                .into_iter()
                .chain(read.iter().map(Vec::as_slice))
                .collect();
            Groups::by_latent(&lists, batch, d_sae, &device)
        })?;
    mark::<B>(&device, "grouping by latent");
    let flat = |t: &Tensor<B, 2>| {
        let [rows, k] = t.dims();
        t.clone().reshape([rows * k])
    };
    // dL/dw_dec[j] = sum of values * g over the (term, row) that selected j.
    let values = concat(
        options,
        terms.iter().map(|t| flat(&t.selected.values)).collect(),
    );
    let grad_out = concat_rows(options, terms.iter().map(|t| t.grad_out.clone()).collect());
    let grad_w_dec = sum_rows(options, &groups, values, grad_out, terms.len() * batch)?;
    mark::<B>(&device, "w_dec grad (grouped sums)");
    // dL/dw_enc[:, j] = sum of dL/dvalue * xc over the rows that selected j, and dL/db_enc[j]
    // the sum of dL/dvalue: one pass over [xc | 1].
    let weights = concat(options, grad_values.iter().map(flat).collect());
    let (enc, grad_b_enc) = sum_rows_and_weights(options, &groups, weights, xc.clone(), batch)?;
    let grad_w_enc = enc.transpose();
    mark::<B>(&device, "w_enc grad (grouped sums)");
    Some((grad_w_enc, grad_b_enc, grad_w_dec))
}

/// Without the `wgpu` feature there is no kernel: always `None`.
#[cfg(not(feature = "wgpu"))]
fn grouped_gradients<B: Backend>(
    _model: &TopKSae<B>,
    _xc: &Tensor<B, 2>,
    _terms: &mut [Term<B>],
    _grad_values: &[Tensor<B, 2>],
    _main_indices: Option<&[i64]>,
) -> Option<(Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 2>)> {
    None
}
