//! The hand-derived gradient against burn's autodiff (in f64) on tiny problems, for every loss
//! term, and one full training step against a host f64 re-implementation of SPEC §3.
//!
//! Tolerance: max |analytic - autodiff| <= 1e-4 * max(1, max |autodiff|) per parameter (the
//! analytic side runs in f32).

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorCreationOptions, TensorData};
use topk_sae::loss::SaeLossConfig;
use topk_sae::sae::to_host_vec;
use topk_sae::train::StepEngine;
use topk_sae::{TopKSae, TopKSaeConfig, TrainConfig, Trainer};

use crate::reference::NaiveSae;
use crate::{TestBackend, random_model, random_rows, tensor};

type Ad = burn_autodiff::Autodiff<burn_ndarray::NdArray<f64>>;

/// Creation options that keep f64 (the device default would be f32).
fn f64s() -> TensorCreationOptions<Ad> {
    TensorCreationOptions::float()
}

fn ad2(v: &[f64], shape: [usize; 2]) -> Tensor<Ad, 2> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), f64s()).require_grad()
}

fn ad1(v: &[f64]) -> Tensor<Ad, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), f64s()).require_grad()
}

fn idx_tensor(rows: &[Vec<usize>]) -> Tensor<Ad, 2, Int> {
    let k = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().map(|&j| j as i64).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), k]), &Default::default())
}

fn nmse_ad(a: Tensor<Ad, 2>, x: Tensor<Ad, 2>) -> Tensor<Ad, 1> {
    let centred = x.clone() - x.clone().mean_dim(0);
    (a - x).powi_scalar(2).mean() / centred.powi_scalar(2).mean()
}

/// Gradients of the full loss by autodiff: gather + dense scatter + matmul, independent of the
/// crate's gather-rows decode and hand-written backward.
struct AdResult {
    total: f64,
    recon: f64,
    aux: f64,
    multi_k: f64,
    grads: [Vec<f64>; 4],
}

fn autodiff_loss(
    naive: &NaiveSae,
    x: &[f32],
    dead: Option<&[bool]>,
    k_aux: usize,
    multi_k: Option<usize>,
) -> AdResult {
    let (d_in, d_sae, k) = (naive.d_in, naive.d_sae, naive.k);
    let batch = x.len() / d_in;
    let w_enc = ad2(&naive.w_enc, [d_in, d_sae]);
    let b_enc = ad1(&naive.b_enc);
    let w_dec = ad2(&naive.w_dec, [d_sae, d_in]);
    let b_dec = ad1(&naive.b_dec);
    let xs: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
    let xt: Tensor<Ad, 2> = Tensor::from_data(TensorData::new(xs.clone(), [batch, d_in]), f64s());
    let pre = (xt.clone() - b_dec.clone().unsqueeze_dim(0)).matmul(w_enc.clone())
        + b_enc.clone().unsqueeze_dim(0);
    let pres: Vec<Vec<f64>> = (0..batch)
        .map(|b| naive.pre(&x[b * d_in..(b + 1) * d_in]))
        .collect();
    let decode = |idx: Vec<Vec<usize>>, bias: bool| {
        let idx = idx_tensor(&idx);
        let vals = pre.clone().gather(1, idx.clone()).clamp_min(0.0);
        let z = Tensor::<Ad, 2>::zeros([batch, d_sae], f64s()).scatter(
            1,
            idx,
            vals,
            IndexingUpdateOp::Add,
        );
        let out = z.matmul(w_dec.clone());
        if bias {
            out + b_dec.clone().unsqueeze_dim(0)
        } else {
            out
        }
    };
    let main: Vec<Vec<usize>> = pres.iter().map(|p| NaiveSae::topk(p, k, None)).collect();
    let x_hat = decode(main.clone(), true);
    let recon = nmse_ad(x_hat.clone(), xt.clone());
    let mut total = recon.clone();
    let mut aux_v = 0.0;
    if let Some(dead) = dead {
        // Latents that fire in this batch are never dead.
        let mut allowed = dead.to_vec();
        main.iter().flatten().for_each(|&j| allowed[j] = false);
        let n = allowed.iter().filter(|a| **a).count().min(k_aux);
        if n > 0 {
            let idx: Vec<Vec<usize>> = pres
                .iter()
                .map(|p| NaiveSae::topk(p, n, Some(&allowed)))
                .collect();
            let e = (xt.clone() - x_hat.clone()).detach();
            let aux = nmse_ad(decode(idx, false), e);
            aux_v = aux.clone().into_scalar();
            total = total + aux.mul_scalar(1.0 / 32.0);
        }
    }
    let mut mk_v = 0.0;
    if let Some(kk) = multi_k {
        let idx: Vec<Vec<usize>> = pres.iter().map(|p| NaiveSae::topk(p, kk, None)).collect();
        let mk = nmse_ad(decode(idx, true), xt.clone());
        mk_v = mk.clone().into_scalar();
        total = total + mk.mul_scalar(1.0 / 8.0);
    }
    let total_v = total.clone().into_scalar();
    let grads = total.backward();
    let get2 = |t: &Tensor<Ad, 2>| {
        t.grad(&grads)
            .unwrap()
            .into_data()
            .into_vec::<f64>()
            .unwrap()
    };
    let get1 = |t: &Tensor<Ad, 1>| {
        t.grad(&grads)
            .unwrap()
            .into_data()
            .into_vec::<f64>()
            .unwrap()
    };
    AdResult {
        total: total_v,
        recon: recon.into_scalar(),
        aux: aux_v,
        multi_k: mk_v,
        grads: [get2(&w_enc), get1(&b_enc), get2(&w_dec), get1(&b_dec)],
    }
}

fn assert_close(name: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - w).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= 1e-4 * scale,
        "{name}: max error {worst:e} (scale {scale:e})"
    );
}

fn check(model: &TopKSae<TestBackend>, x: &[f32], dead: Option<&[bool]>, loss: &SaeLossConfig) {
    let d_in = model.d_in();
    let sae_loss = loss.init(model.k(), model.d_sae()).unwrap();
    let out = sae_loss.evaluate(model, tensor(x, d_in), dead, true);
    let naive = NaiveSae::from_model(model);
    let mk = loss
        .multi_k
        .then(|| (loss.multi_k_factor * model.k()).min(model.d_sae()));
    let want = autodiff_loss(&naive, x, dead, sae_loss.k_aux(), mk);
    let p = out.parts;
    for (name, got, w) in [
        ("total", p.total, want.total),
        ("recon", p.recon, want.recon),
        ("aux", p.aux, want.aux),
        ("multi_k", p.multi_k, want.multi_k),
    ] {
        assert!(
            (f64::from(got) - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{name}: {got} vs {w}"
        );
    }
    let g = out.grads.unwrap();
    assert_close("w_enc", &to_host_vec(g.w_enc), &want.grads[0]);
    assert_close("b_enc", &to_host_vec(g.b_enc), &want.grads[1]);
    assert_close("w_dec", &to_host_vec(g.w_dec), &want.grads[2]);
    assert_close("b_dec", &to_host_vec(g.b_dec), &want.grads[3]);
}

#[test]
fn recon_gradient_matches_autodiff() {
    let model = random_model(10, 48, 4, 11);
    check(&model, &random_rows(7, 10, 12), None, &SaeLossConfig::new());
}

#[test]
fn aux_gradient_matches_autodiff() {
    let model = random_model(10, 48, 4, 13);
    let dead: Vec<bool> = (0..48).map(|j| j % 3 != 0).collect();
    let loss = SaeLossConfig::new().with_k_aux(Some(6));
    check(&model, &random_rows(7, 10, 14), Some(&dead), &loss);
    let out = loss.init(4, 48).unwrap().evaluate(
        &model,
        tensor(&random_rows(7, 10, 14), 10),
        Some(&dead),
        false,
    );
    assert!(
        out.parts.aux > 0.0 && out.k_aux_used == 6,
        "the aux term must be active here"
    );
}

#[test]
fn multi_k_gradient_matches_autodiff() {
    let model = random_model(10, 48, 3, 15);
    let dead: Vec<bool> = (0..48).map(|j| j >= 40).collect();
    check(
        &model,
        &random_rows(5, 10, 16),
        Some(&dead),
        &SaeLossConfig::new().with_multi_k(true),
    );
}

/// Rows wider than a cube (burn-wgpu's kernels use up to 64 units for a dot product and 256
/// for a row sum, each unit striding over the columns), with AuxK on.
#[test]
fn gradient_matches_autodiff_on_rows_wider_than_a_cube() {
    let model = random_model(300, 40, 4, 21);
    let dead: Vec<bool> = (0..40).map(|j| j % 2 == 1).collect();
    let loss = SaeLossConfig::new().with_k_aux(Some(5));
    check(&model, &random_rows(6, 300, 22), Some(&dead), &loss);
}

/// More latents than one dispatch dimension holds (65,535 cubes): on burn-wgpu the grouped-sum
/// kernel's cube per latent then spreads over two dimensions, and most latents have no entries
/// (their gradient rows must come out exactly zero).
#[test]
fn gradient_matches_autodiff_past_one_dispatch_row() {
    let d_sae = 70_000;
    let model = random_model(3, d_sae, 2, 19);
    let dead: Vec<bool> = (0..d_sae).map(|j| j % 2 == 0).collect();
    let loss = SaeLossConfig::new().with_k_aux(Some(3));
    check(&model, &random_rows(4, 3, 20), Some(&dead), &loss);
}

/// Fewer AuxK candidates left than the term's width, and none left. On burn-wgpu the dead mask
/// is then worked out on the device, without knowing how many candidates fired: the term is
/// padded with zero-valued latents, and multiplied by 0 when none are left. Loss, gradient and
/// `k_aux_used` must be those of the host's rule (AuxK takes `min(k_aux, left)` latents).
#[test]
fn aux_gradient_matches_autodiff_with_few_or_no_candidates_left() {
    let (d_in, d_sae, k) = (10, 48, 4);
    let model = random_model(d_in, d_sae, k, 23);
    let x = random_rows(7, d_in, 24);
    let loss = SaeLossConfig::new().with_k_aux(Some(8));
    let sae_loss = loss.init(k, d_sae).unwrap();
    let fired = sae_loss
        .evaluate(&model, tensor(&x, d_in), None, false)
        .indices;
    let mut fires = vec![false; d_sae];
    for &j in &fired {
        fires[j as usize] = true;
    }
    // Three latents that fire and three that do not: 6 candidates, 3 left, k_aux 8.
    let pick = |firing: bool| {
        let fires = &fires;
        (0..d_sae).filter(move |&j| fires[j] == firing).take(3)
    };
    let mut few = vec![false; d_sae];
    pick(true).chain(pick(false)).for_each(|j| few[j] = true);
    check(&model, &x, Some(&few), &loss);
    let out = sae_loss.evaluate(&model, tensor(&x, d_in), Some(&few), false);
    assert!(out.parts.aux > 0.0, "the aux term must be active here");
    assert_eq!(out.k_aux_used, 3);
    // Every candidate fires: none left.
    let mut none_left = vec![false; d_sae];
    pick(true).for_each(|j| none_left[j] = true);
    check(&model, &x, Some(&none_left), &loss);
    let out = sae_loss.evaluate(&model, tensor(&x, d_in), Some(&none_left), false);
    assert_eq!((out.parts.aux, out.k_aux_used), (0.0, 0));
    assert_eq!(out.parts.total, out.parts.recon);
}

#[test]
fn aux_is_skipped_when_nothing_is_dead() {
    let model = random_model(8, 32, 4, 17);
    let loss = SaeLossConfig::new().init(4, 32).unwrap();
    let x = tensor(&random_rows(6, 8, 18), 8);
    let out = loss.evaluate(&model, x.clone(), Some(&[false; 32]), false);
    assert_eq!((out.parts.aux, out.k_aux_used), (0.0, 0));
    assert_eq!(out.parts.total, out.parts.recon);
}

/// One full step of the trainer against SPEC §3 done by hand in f64 from autodiff gradients:
/// project decoder gradient, clip the global norm, Adam (lr 1e-2 to make the step visible),
/// renormalise decoder rows. Run for both step engines, on the reconstruction loss alone and
/// with AuxK (every latent that does not fire counts as dead) plus the multi-k term.
fn full_step_matches_reference(engine: StepEngine, all_terms: bool) {
    let (d_in, d_sae, k, batch) = (8, 24, 3, 6);
    let x = random_rows(batch, d_in, 21);
    let model = random_model(d_in, d_sae, k, 20);
    let naive = NaiveSae::from_model(&model);
    let lr = 1e-2;
    let mut config = TrainConfig::new(TopKSaeConfig::new(d_in, d_sae, k))
        .with_optimizer(topk_sae::AdamConfig::new().with_lr(lr))
        .with_clip_grad_norm(Some(0.05))
        .with_engine(engine);
    if all_terms {
        config = config
            .with_dead_threshold_samples(0)
            .with_loss(SaeLossConfig::new().with_multi_k(true));
    }
    let device = Default::default();
    let mut trainer = Trainer::<TestBackend>::from_model(
        config,
        model,
        topk_sae::Normalizer::identity(),
        &device,
    )
    .unwrap();
    assert_eq!(trainer.engine(), engine);
    let report = trainer.step(tensor(&x, d_in)).unwrap();

    let all_dead = vec![true; d_sae];
    let want = if all_terms {
        autodiff_loss(&naive, &x, Some(&all_dead), 2 * k, Some(4 * k))
    } else {
        autodiff_loss(&naive, &x, None, 0, None)
    };
    for (name, got, w) in [
        ("total", report.loss.total, want.total),
        ("recon", report.loss.recon, want.recon),
        ("aux", report.loss.aux, want.aux),
        ("multi_k", report.loss.multi_k, want.multi_k),
    ] {
        assert!(
            (f64::from(got) - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{name}: {got} vs {w}"
        );
    }
    if all_terms {
        assert!(want.aux > 0.0 && want.multi_k > 0.0);
    }
    let mut g = want.grads;
    // Project each decoder row's gradient orthogonal to the row.
    for j in 0..d_sae {
        let w = &naive.w_dec[j * d_in..(j + 1) * d_in];
        let row = &mut g[2][j * d_in..(j + 1) * d_in];
        let along: f64 = w.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
        row.iter_mut().zip(w).for_each(|(r, w)| *r -= along * w);
    }
    let norm = g.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
    assert!(norm > 0.05, "the test must exercise clipping (norm {norm})");
    let coef = 0.05 / (norm + 1e-6);
    // First Adam step: m_hat = g, v_hat = g^2, update = lr * g / (|g| + eps).
    let params = [&naive.w_enc, &naive.b_enc, &naive.w_dec, &naive.b_dec];
    let mut want: Vec<Vec<f64>> = params
        .iter()
        .zip(&g)
        .map(|(p, g)| {
            p.iter()
                .zip(g)
                .map(|(p, g)| {
                    let g = g * coef;
                    p - lr * g / (g.abs() + 1e-8)
                })
                .collect()
        })
        .collect();
    for row in want[2].chunks_exact_mut(d_in) {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        for v in row.iter_mut() {
            *v /= n;
        }
    }
    let m = trainer.model();
    let got = [
        to_host_vec(m.w_enc.val()),
        to_host_vec(m.b_enc.val()),
        to_host_vec(m.w_dec.val()),
        to_host_vec(m.b_dec.val()),
    ];
    for (name, (got, want)) in ["w_enc", "b_enc", "w_dec", "b_dec"]
        .iter()
        .zip(got.iter().zip(&want))
    {
        // Parameters near zero gradient move by lr * g / (|g| + eps), sensitive to g's rounding: 1e-4 absolute.
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 1e-4, "{engine:?} {name}: max error {worst:e}");
    }
}

#[test]
fn full_step_matches_reference_host_engine() {
    full_step_matches_reference(StepEngine::Host, false);
    full_step_matches_reference(StepEngine::Host, true);
}

#[test]
fn full_step_matches_reference_tensor_engine() {
    full_step_matches_reference(StepEngine::Tensor, false);
    full_step_matches_reference(StepEngine::Tensor, true);
}
