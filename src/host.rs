//! The training step on the host, for CPU backends: one dense GEMM (the encoder), everything else
//! `O(batch * k * d_in)` or one pass over the parameters (Adam).
//!
//! Same mathematics as [`crate::loss::SaeLoss::evaluate`] followed by the trainer's update
//! (projection, clipping, Adam, renormalisation); `tests/it/gradients.rs`
//! (`full_step_matches_reference_*`) and `tests/it/training.rs`
//! (`step_engines_agree_over_a_short_run`) compare the two.
//! Why a host path exists at all, with the measurements, is in `docs/decisions.md`.
//!
//! Layout: the encoder is stored transposed, `[d_sae, d_in]`, like the decoder, so that the
//! gradient of both touches whole rows, one per latent that fired, and so that every latent's
//! update is independent work (parallel over latents, no atomics, the same sums in the same order
//! whatever the thread count).

use rayon::prelude::*;

use crate::loss::{LossParts, SaeLoss};
use crate::ops::ROWS_PER_TASK;
use crate::ops::linalg::{axpy, dot, encode_into, sum_sq, transpose};
use crate::ops::sparse::{decode_sparse, group_by_latent};
use crate::ops::stats::{centred_variance, residual_term};
use crate::ops::topk::select_topk;
use crate::ops::transfer::to_host;
use crate::ops::update::{AdamConfig, AdamScalars, AdamStep, project_row};

/// Latents per parallel task in the per-latent passes.
const LATENTS_PER_TASK: usize = 64;
/// Elements per parallel task in the Adam pass over the biases and the encoder.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// Parameters and Adam moments on the host.
#[derive(Debug, Clone)]
pub(crate) struct HostState {
    pub d_in: usize,
    pub d_sae: usize,
    pub k: usize,
    /// The encoder, transposed: `[d_sae, d_in]`.
    pub w_enc_t: Vec<f32>,
    pub b_enc: Vec<f32>,
    /// `[d_sae, d_in]`, unit rows.
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
    /// Adam step count.
    pub adam_step: u64,
    /// First and second moments, in the order and layout of the parameters above.
    pub m: [Vec<f32>; 4],
    pub v: [Vec<f32>; 4],
    scratch: Scratch,
}

/// Buffers reused from step to step.
#[derive(Debug, Clone, Default)]
struct Scratch {
    xc: Vec<f32>,
    pre: Vec<f32>,
    grads: [Vec<f32>; 4],
}

/// What a step reports back to the trainer.
#[derive(Debug, Clone)]
pub(crate) struct HostStepOut {
    pub parts: LossParts,
    /// `[batch, k]` latents of the main top-k.
    pub indices: Vec<u32>,
    pub grad_norm: f64,
}

/// Why a step was refused (the state is then unchanged).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NonFinite {
    pub quantity: &'static str,
    pub value: f64,
}

/// One decoded term of the loss.
struct Term {
    k: usize,
    indices: Vec<u32>,
    /// ReLU'd values, `[batch, k]`.
    values: Vec<f32>,
    /// `dL/dx_hat` for the term, `[batch, d_in]`.
    grad_out: Vec<f32>,
    with_bias: bool,
}

impl HostState {
    /// Takes the parameters (`w_enc` as `[d_in, d_sae]`, row-major) with zero moments.
    pub fn new(k: usize, w_enc: &[f32], b_enc: Vec<f32>, w_dec: Vec<f32>, b_dec: Vec<f32>) -> Self {
        let (d_in, d_sae) = (b_dec.len(), b_enc.len());
        let w_enc_t = transpose(w_enc, d_in, d_sae);
        let zeros = |n: usize| vec![0.0f32; n];
        let sizes = [d_sae * d_in, d_sae, d_sae * d_in, d_in];
        Self {
            d_in,
            d_sae,
            k,
            w_enc_t,
            b_enc,
            w_dec,
            b_dec,
            adam_step: 0,
            m: sizes.map(zeros),
            v: sizes.map(zeros),
            scratch: Scratch::default(),
        }
    }

    /// The encoder as `[d_in, d_sae]`, row-major.
    pub fn w_enc(&self) -> Vec<f32> {
        transpose(&self.w_enc_t, self.d_sae, self.d_in)
    }

    /// A moment of the encoder as `[d_in, d_sae]` (`which` 0: first, 1: second).
    pub fn w_enc_moment(&self, which: usize) -> Vec<f32> {
        let m = if which == 0 { &self.m[0] } else { &self.v[0] };
        transpose(m, self.d_sae, self.d_in)
    }

    /// Sets a moment of the encoder from `[d_in, d_sae]` values.
    pub fn set_w_enc_moment(&mut self, which: usize, values: &[f32]) {
        let t = transpose(values, self.d_in, self.d_sae);
        if which == 0 {
            self.m[0] = t;
        } else {
            self.v[0] = t;
        }
    }

    /// One training step on the normalised batch `x` (`[batch, d_in]`). `dead` marks the latents
    /// that count as dead once this batch is seen (those firing in it are excluded here).
    pub fn step(
        &mut self,
        x: &[f32],
        dead: &[bool],
        loss: &SaeLoss,
        opt: &AdamConfig,
        clip: Option<f64>,
    ) -> Result<HostStepOut, NonFinite> {
        let batch = x.len() / self.d_in;
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.step_with(&mut scratch, x, batch, dead, loss, opt, clip);
        self.scratch = scratch;
        result
    }

    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    fn step_with(
        &mut self,
        s: &mut Scratch,
        x: &[f32],
        batch: usize,
        dead: &[bool],
        loss: &SaeLoss,
        opt: &AdamConfig,
        clip: Option<f64>,
    ) -> Result<HostStepOut, NonFinite> {
        let out = self.loss_and_grads(s, x, batch, dead, loss)?;
        let step = AdamStep::new(opt, self.adam_step + 1, clip);
        self.adam(
            s,
            &AdamScalars::new(&step, step.clip_factor(out.grad_norm) as f32),
        );
        Ok(out)
    }

    /// The loss terms and the gradient (decoder rows projected) into `s.grads`, in the order
    /// and layout of the parameters; refuses a non-finite loss or gradient norm.
    fn loss_and_grads(
        &self,
        s: &mut Scratch,
        x: &[f32],
        batch: usize,
        dead: &[bool],
        loss: &SaeLoss,
    ) -> Result<HostStepOut, NonFinite> {
        let (d_in, d_sae) = (self.d_in, self.d_sae);
        // pre = (x - b_dec) @ w_enc + b_enc: the one dense product.
        centre(x, &self.b_dec, &mut s.xc);
        s.pre.resize(batch * d_sae, 0.0);
        encode_into(&s.xc, &self.w_enc_t, d_in, d_sae, &mut s.pre);

        let var_x = centred_variance(x, d_in);
        let scale = 2.0 / (batch * d_in) as f64;
        let (recon, main, x_hat) = self.term(&s.pre, self.k, None, x, var_x, scale, true);
        let mut parts = LossParts {
            recon: recon as f32,
            ..LossParts::default()
        };
        let mut total = recon;
        let fired = main.indices.clone();
        let mut terms = vec![main];

        // AuxK over the dead latents that did not fire in this batch.
        let mut dead = dead.to_vec();
        for &j in &fired {
            dead[j as usize] = false;
        }
        let n_dead = dead.iter().filter(|d| **d).count();
        let k_aux = loss.k_aux().min(n_dead);
        let config = loss.config();
        if k_aux > 0 {
            let e: Vec<f32> = x.iter().zip(&x_hat).map(|(a, b)| a - b).collect();
            let var_e = centred_variance(&e, d_in).max(1e-20);
            let coef = f64::from(config.aux_coef);
            let (aux, term, _) =
                self.term(&s.pre, k_aux, Some(&dead), &e, var_e, scale * coef, false);
            parts.aux = aux as f32;
            total += coef * aux;
            terms.push(term);
        }
        if config.multi_k {
            let k_mk = (config.multi_k_factor * self.k).min(d_sae);
            let coef = f64::from(config.multi_k_coef);
            let (mk, term, _) = self.term(&s.pre, k_mk, None, x, var_x, scale * coef, true);
            parts.multi_k = mk as f32;
            total += coef * mk;
            terms.push(term);
        }
        parts.total = total as f32;
        if !parts.total.is_finite() {
            return Err(NonFinite {
                quantity: "loss",
                value: total,
            });
        }

        let norm_sq = self.backward(s, &terms, batch);
        let grad_norm = norm_sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(NonFinite {
                quantity: "gradient norm",
                value: grad_norm,
            });
        }
        Ok(HostStepOut {
            parts,
            indices: fired,
            grad_norm,
        })
    }

    /// One decoded term: the top `k` of `pre + b_enc` (restricted to `allowed`), decoded (with
    /// `b_dec` when `with_bias`) against `target`. Returns the term's NMSE, the term with its
    /// output gradient `grad_scale * (recon - target) / var`, and the reconstruction.
    #[allow(clippy::too_many_arguments)]
    fn term(
        &self,
        pre: &[f32],
        k: usize,
        allowed: Option<&[bool]>,
        target: &[f32],
        var: f64,
        grad_scale: f64,
        with_bias: bool,
    ) -> (f64, Term, Vec<f32>) {
        let (indices, values) = select_topk(pre, &self.b_enc, k, allowed);
        let recon = decode_sparse(
            &self.w_dec,
            self.d_in,
            with_bias.then_some(&self.b_dec[..]),
            &indices,
            &values,
            k,
        );
        let (nmse, grad_out) = residual_term(&recon, target, var, grad_scale);
        let term = Term {
            k,
            indices,
            values,
            grad_out,
            with_bias,
        };
        (nmse, term, recon)
    }

    fn dec_row(&self, j: u32) -> &[f32] {
        let j = j as usize;
        &self.w_dec[j * self.d_in..(j + 1) * self.d_in]
    }

    /// Gradients of all terms into `s.grads` (decoder gradient already projected); returns the
    /// squared global norm.
    fn backward(&self, s: &mut Scratch, terms: &[Term], batch: usize) -> f64 {
        let (d_in, d_sae) = (self.d_in, self.d_sae);
        // dL/dvalue[b, j] = g[b] . w_dec[idx[b, j]], zero where ReLU clipped the value.
        let grad_values: Vec<Vec<f32>> = terms
            .iter()
            .map(|t| {
                let mut gv = vec![0f32; batch * t.k];
                gv.par_chunks_mut(t.k * ROWS_PER_TASK)
                    .enumerate()
                    .for_each(|(task, gv)| {
                        for (r, gv) in gv.chunks_exact_mut(t.k).enumerate() {
                            let b = task * ROWS_PER_TASK + r;
                            let g = &t.grad_out[b * d_in..(b + 1) * d_in];
                            for (j, out) in gv.iter_mut().enumerate() {
                                let at = b * t.k + j;
                                if t.values[at] > 0.0 {
                                    *out = dot(g, self.dec_row(t.indices[at]));
                                }
                            }
                        }
                    });
                gv
            })
            .collect();

        let lists: Vec<&[u32]> = terms.iter().map(|t| t.indices.as_slice()).collect();
        let (starts, entries) = group_by_latent(&lists, d_sae, |j| j as usize);

        let [g_w_enc_t, g_b_enc, g_w_dec, g_b_dec] = &mut s.grads;
        g_w_enc_t.resize(d_sae * d_in, 0.0);
        g_w_dec.resize(d_sae * d_in, 0.0);
        g_b_enc.resize(d_sae, 0.0);
        let xc = &s.xc;
        let chunk = LATENTS_PER_TASK;
        let norm_sq: f64 = g_w_enc_t
            .par_chunks_mut(d_in * chunk)
            .zip(g_w_dec.par_chunks_mut(d_in * chunk))
            .zip(g_b_enc.par_chunks_mut(chunk))
            .enumerate()
            .map(|(task, ((ge, gd), gb))| {
                let mut sq = 0.0f64;
                for (l, ((ge, gd), gb)) in ge
                    .chunks_exact_mut(d_in)
                    .zip(gd.chunks_exact_mut(d_in))
                    .zip(gb.iter_mut())
                    .enumerate()
                {
                    let j = task * chunk + l;
                    ge.fill(0.0);
                    gd.fill(0.0);
                    *gb = 0.0;
                    let mine = &entries[starts[j]..starts[j + 1]];
                    if mine.is_empty() {
                        continue;
                    }
                    for &(ti, at) in mine {
                        let (t, at) = (&terms[ti as usize], at as usize);
                        let b = at / t.k;
                        let v = t.values[at];
                        if v != 0.0 {
                            axpy(gd, v, &t.grad_out[b * d_in..(b + 1) * d_in]);
                        }
                        let gv = grad_values[ti as usize][at];
                        if gv != 0.0 {
                            axpy(ge, gv, &xc[b * d_in..(b + 1) * d_in]);
                            *gb += gv;
                        }
                    }
                    // Keep the unit-norm rows on the sphere: drop the component along the row.
                    project_row(gd, self.dec_row(j as u32));
                    sq += sum_sq(ge) + sum_sq(gd) + f64::from(*gb) * f64::from(*gb);
                }
                sq
            })
            .sum();

        // b_dec: the with-bias terms' output gradients, minus what flows back through
        // pre = (x - b_dec) @ w_enc: -(sum_j dL/db_enc[j] * w_enc[:, j]).
        g_b_dec.clear();
        g_b_dec.resize(d_in, 0.0);
        for t in terms.iter().filter(|t| t.with_bias) {
            for row in t.grad_out.chunks_exact(d_in) {
                g_b_dec.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
        }
        for (j, &gb) in g_b_enc.iter().enumerate() {
            if gb != 0.0 {
                axpy(g_b_dec, -gb, &self.w_enc_t[j * d_in..(j + 1) * d_in]);
            }
        }
        norm_sq + sum_sq(g_b_dec)
    }

    /// Adam (step `self.adam_step + 1`, settings `c`) on every parameter with the gradients in
    /// `s.grads`, then the decoder rows back to unit norm.
    fn adam(&mut self, s: &Scratch, c: &AdamScalars) {
        self.adam_step += 1;
        let [m0, m1, m2, m3] = &mut self.m;
        let [v0, v1, v2, v3] = &mut self.v;
        let [g0, g1, g2, g3] = &s.grads;
        c.update(&mut self.w_enc_t, m0, v0, g0, ELEMENTS_PER_TASK);
        c.update(&mut self.b_enc, m1, v1, g1, ELEMENTS_PER_TASK);
        c.update(&mut self.b_dec, m3, v3, g3, ELEMENTS_PER_TASK);
        let d_in = self.d_in;
        self.w_dec
            .par_chunks_mut(d_in)
            .zip(m2.par_chunks_mut(d_in))
            .zip(v2.par_chunks_mut(d_in))
            .zip(g2.par_chunks(d_in))
            .with_min_len(LATENTS_PER_TASK)
            .for_each(|(((w, m), v), g)| c.update_row(w, m, v, g));
    }
}

/// A model's weights on the host, for encoding and decoding many batches (corpus encoding,
/// evaluation) with the host kernels.
#[derive(Debug, Clone)]
pub(crate) struct HostCodec {
    d_in: usize,
    d_sae: usize,
    k: usize,
    w_enc_t: Vec<f32>,
    b_enc: Vec<f32>,
    w_dec: Vec<f32>,
    b_dec: Vec<f32>,
}

impl HostCodec {
    /// Copies the weights of `model` to the host.
    pub fn new<B: burn::tensor::backend::Backend>(model: &crate::TopKSae<B>) -> Self {
        let (d_in, d_sae) = (model.d_in(), model.d_sae());
        Self {
            d_in,
            d_sae,
            k: model.k(),
            w_enc_t: transpose(&to_host(model.w_enc.val()), d_in, d_sae),
            b_enc: to_host(model.b_enc.val()),
            w_dec: to_host(model.w_dec.val()),
            b_dec: to_host(model.b_dec.val()),
        }
    }

    /// Top-k indices and ReLU'd values of the rows `x` (`[batch, d_in]`), `[batch, k]` each;
    /// `pre` is scratch space.
    pub fn encode(&self, x: &[f32], pre: &mut Vec<f32>) -> (Vec<u32>, Vec<f32>) {
        let (d_in, d_sae) = (self.d_in, self.d_sae);
        let mut xc = Vec::new();
        centre(x, &self.b_dec, &mut xc);
        // One product for the whole batch: every product packs the whole encoder again, and
        // splitting 4096 rows into cache-sized blocks was slower at both bench sizes (1536 x
        // 12288: 1.44 s against 1.18 s).
        pre.resize(xc.len() / d_in * d_sae, 0.0);
        encode_into(&xc, &self.w_enc_t, d_in, d_sae, pre);
        select_topk(pre, &self.b_enc, self.k, None)
    }

    /// Reconstructions of rows coded as `indices`, `values` (`[batch, k]`): `[batch, d_in]`.
    pub fn decode(&self, indices: &[u32], values: &[f32]) -> Vec<f32> {
        decode_sparse(
            &self.w_dec,
            self.d_in,
            Some(&self.b_dec),
            indices,
            values,
            self.k,
        )
    }
}

/// `out = x - b_dec` row by row.
fn centre(x: &[f32], b_dec: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend_from_slice(x);
    for row in out.chunks_exact_mut(b_dec.len()) {
        for (v, b) in row.iter_mut().zip(b_dec) {
            *v -= b;
        }
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use crate::loss::SaeLossConfig;
    use crate::train::project_rows;
    use crate::{TopKSae, TopKSaeConfig};
    use burn::tensor::{Distribution, Tensor, TensorData};

    type B = burn_ndarray::NdArray<f32>;

    #[test]
    fn group_by_latent_is_a_stable_counting_sort() {
        // Two lists of [2, 2] latents over d_sae 4: latent 2 in list 0 at 1 and 2, list 1 at 0.
        let a: [u32; 4] = [0, 2, 2, 3];
        let b: [u32; 4] = [2, 0, 3, 0];
        let (starts, entries) = group_by_latent(&[&a, &b], 4, |j| j as usize);
        assert_eq!(starts, vec![0, 3, 3, 6, 8]);
        assert_eq!(
            entries,
            vec![
                (0, 0),
                (1, 1),
                (1, 3),
                (0, 1),
                (0, 2),
                (1, 0),
                (0, 3),
                (1, 2)
            ]
        );
    }

    /// The host gradient equals the tensor path's (itself checked against autodiff in
    /// `tests/it/gradients.rs`) for every parameter, with AuxK (every latent dead) and multi-k on,
    /// to 1e-5 relative to each gradient's largest entry.
    #[test]
    fn host_gradient_matches_the_tensor_path() {
        let (d_in, d_sae, k, batch) = (12, 48, 3, 9);
        let device = Default::default();
        let base = TopKSaeConfig::new(d_in, d_sae, k)
            .with_seed(4)
            .init::<B>(&device);
        <B as burn::tensor::backend::Backend>::seed(&device, 4);
        let model = TopKSae::from_parts(
            base.w_enc.val(),
            Tensor::random([d_sae], Distribution::Uniform(-0.1, 0.1), &device),
            base.w_dec.val(),
            Tensor::random([d_in], Distribution::Uniform(-0.2, 0.2), &device),
            k,
        );
        let x: Vec<f32> = (0..batch * d_in)
            .map(|i| ((i * 7919 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let loss = SaeLossConfig::new()
            .with_multi_k(true)
            .init(k, d_sae)
            .unwrap();
        let dead = vec![true; d_sae];
        let xt = Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [batch, d_in]), &device);
        let want = loss.evaluate(&model, xt, Some(&dead), true);
        let g = want.grads.unwrap();
        let want_grads = [
            to_host(g.w_enc),
            to_host(g.b_enc),
            to_host(project_rows(g.w_dec, &model.w_dec.val())),
            to_host(g.b_dec),
        ];
        let host = HostState::new(
            k,
            &to_host(model.w_enc.val()),
            to_host(model.b_enc.val()),
            to_host(model.w_dec.val()),
            to_host(model.b_dec.val()),
        );
        let mut s = Scratch::default();
        let got = host
            .loss_and_grads(&mut s, &x, batch, &dead, &loss)
            .unwrap();
        assert!(got.parts.aux > 0.0 && got.parts.multi_k > 0.0);
        for (name, a, b) in [
            ("total", got.parts.total, want.parts.total),
            ("recon", got.parts.recon, want.parts.recon),
            ("aux", got.parts.aux, want.parts.aux),
            ("multi_k", got.parts.multi_k, want.parts.multi_k),
        ] {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{name}: {a} vs {b}"
            );
        }
        let got_grads = [
            transpose(&s.grads[0], d_sae, d_in),
            s.grads[1].clone(),
            s.grads[2].clone(),
            s.grads[3].clone(),
        ];
        for (name, (got, want)) in ["w_enc", "b_enc", "w_dec", "b_dec"]
            .iter()
            .zip(got_grads.iter().zip(&want_grads))
        {
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{name}: the test must exercise this gradient");
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-5 * scale,
                "{name}: max error {worst:e} (scale {scale:e})"
            );
        }
    }
}
