//! Forward pass against the naive f64 reference (tolerance 1e-5 absolute on values of order 1).

use approx::assert_abs_diff_eq;
use burn::tensor::Tensor;
use topk_sae::sae::to_host_vec;

use crate::reference::NaiveSae;
use crate::{TestBackend, random_model, random_rows, tensor};

const TOL: f64 = 1e-5;

fn ints(t: Tensor<crate::TestBackend, 2, burn::tensor::Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().into_vec().unwrap()
}

/// Both decoders of `forward` on the CPU backends: a batch of 9 rows has 45 active entries, at
/// least `d_sae` (40), and is decoded by the host kernels; 7 rows (35) by burn's gather.
#[test]
fn forward_matches_naive_reference() {
    for batch in [9, 7] {
        forward_matches_naive_reference_at(batch);
    }
}

fn forward_matches_naive_reference_at(batch: usize) {
    let (d_in, d_sae, k) = (12, 40, 5);
    let model = random_model(d_in, d_sae, k, 3);
    let naive = NaiveSae::from_model(&model);
    let x = random_rows(batch, d_in, 4);
    let out = model.forward(tensor(&x, d_in));
    let (idx, vals, recon) = (
        ints(out.indices),
        to_host_vec(out.values),
        to_host_vec(out.reconstruction),
    );
    for b in 0..batch {
        let pre = naive.pre(&x[b * d_in..(b + 1) * d_in]);
        let top = NaiveSae::topk(&pre, k, None);
        let want_idx: Vec<i64> = top.iter().map(|&j| j as i64).collect();
        assert_eq!(&idx[b * k..(b + 1) * k], &want_idx[..], "row {b}");
        for (slot, &j) in top.iter().enumerate() {
            assert_abs_diff_eq!(
                f64::from(vals[b * k + slot]),
                pre[j].max(0.0),
                epsilon = TOL
            );
        }
        let want = naive.decode(&pre, &top, true);
        for i in 0..d_in {
            assert_abs_diff_eq!(f64::from(recon[b * d_in + i]), want[i], epsilon = TOL);
        }
    }
}

/// On the CPU backends, an index outside `0..d_sae` on the host decoder is a panic that names it,
/// not a read out of bounds.
#[cfg(not(feature = "test-wgpu"))]
#[test]
#[should_panic(expected = "latent index 40 is outside 0..40")]
fn an_index_out_of_range_panics_on_the_host_decoder() {
    let model = random_model(4, 40, 5, 3);
    let indices = Tensor::<TestBackend, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new((0..45i64).collect::<Vec<_>>(), [9, 5]),
        &Default::default(),
    );
    let values = tensor(&[1.0; 45], 5);
    let _ = model.decode_sparse(indices, values);
}

/// `decode_sparse` of f64 values on an f64 model stays in f64: the f32 host decoder is not used
/// for it, even for a batch that would take it in f32 (45 active entries, `d_sae` 40). burn 0.21
/// creates tensors in the device's default dtype (f32 once an f32 backend has used the device),
/// so every tensor here is made f64 explicitly.
#[test]
fn f64_values_are_decoded_in_f64() {
    type F64 = burn_ndarray::NdArray<f64>;
    let (d_in, d_sae, k, batch) = (12, 40, 5, 9);
    let data = |v: Vec<f64>, shape: Vec<usize>| {
        Tensor::<F64, 2>::from_data(
            burn::tensor::TensorData::new(v, shape),
            burn::tensor::TensorCreationOptions::<F64>::float(),
        )
    };
    let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    let model = topk_sae::TopKSae::<F64>::from_parts(
        data(widen(random_rows(d_in, d_sae, 1)), vec![d_in, d_sae]),
        data(vec![0.01; d_sae], vec![1, d_sae]).reshape([d_sae]),
        data(widen(random_rows(d_sae, d_in, 2)), vec![d_sae, d_in]),
        data(vec![0.1; d_in], vec![1, d_in]).reshape([d_in]),
        k,
    );
    // Row b uses latents (7b + 3s) mod 40, s = 0..5, with values 0.1 + s / 3.
    let mut z = vec![0f64; batch * d_sae];
    let (mut indices, mut values) = (Vec::new(), Vec::new());
    for b in 0..batch {
        for s in 0..k {
            let j = (7 * b + 3 * s) % d_sae;
            let v = 0.1 + s as f64 / 3.0;
            indices.push(j as i64);
            values.push(v);
            z[b * d_sae + j] += v;
        }
    }
    let indices = Tensor::<F64, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(indices, [batch, k]),
        &Default::default(),
    );
    let sparse = model.decode_sparse(indices, data(values, vec![batch, k]));
    assert_eq!(sparse.dtype(), burn::tensor::DType::F64);
    let dense = model.decode(data(z, vec![batch, d_sae]));
    let (sparse, dense): (Vec<f64>, Vec<f64>) = (
        sparse.into_data().into_vec().unwrap(),
        dense.into_data().into_vec().unwrap(),
    );
    for (a, b) in dense.iter().zip(&sparse) {
        assert_abs_diff_eq!(a, b, epsilon = 1e-12);
    }
}

/// `decode(z)` against `decode_sparse` through `forward`, with 6 rows (24 active entries: burn's
/// gather on the CPU backends) and 10 (40, at least `d_sae`: the host kernels there).
#[test]
fn dense_and_sparse_paths_agree() {
    for rows in [6, 10] {
        dense_and_sparse_paths_agree_at(rows);
    }
}

fn dense_and_sparse_paths_agree_at(rows: usize) {
    let (d_in, d_sae, k) = (8, 32, 4);
    let model = random_model(d_in, d_sae, k, 5);
    let x = tensor(&random_rows(rows, d_in, 6), d_in);
    let out = model.forward_with_latents(x.clone());
    let dense = out.latents.expect("latents were requested");
    assert_eq!(to_host_vec(dense.clone()), to_host_vec(model.encode(x)));
    let via_dense = to_host_vec(model.decode(dense));
    let via_sparse = to_host_vec(out.reconstruction);
    for (a, b) in via_dense.iter().zip(&via_sparse) {
        assert_abs_diff_eq!(a, b, epsilon = 1e-5);
    }
}

#[test]
fn init_follows_the_reference_recipe() {
    let (d_in, d_sae) = (6, 20);
    // 5 rows: the median of each column is the 3rd smallest value.
    let rows: Vec<f32> = (0..5)
        .flat_map(|r| (0..d_in).map(move |c| ((r * 7 + c * 3) % 5) as f32 - (c as f32)))
        .collect();
    let data = topk_sae::Embeddings::from_vec(rows.clone(), 5, d_in).unwrap();
    let model = topk_sae::TopKSaeConfig::new(d_in, d_sae, 3)
        .try_init_from_data::<crate::TestBackend>(&data, &Default::default())
        .unwrap();
    let b_dec = to_host_vec(model.b_dec.val());
    for c in 0..d_in {
        let mut col: Vec<f32> = (0..5).map(|r| rows[r * d_in + c]).collect();
        col.sort_by(f32::total_cmp);
        assert_eq!(b_dec[c], col[2], "column {c}");
    }
    let w_dec = to_host_vec(model.w_dec.val());
    let w_enc = to_host_vec(model.w_enc.val());
    let bound = (6.0f32 / (d_in + d_sae) as f32).sqrt();
    for j in 0..d_sae {
        let row = &w_dec[j * d_in..(j + 1) * d_in];
        assert_abs_diff_eq!(row.iter().map(|v| v * v).sum::<f32>(), 1.0, epsilon = 1e-5);
        for i in 0..d_in {
            assert_eq!(
                w_enc[i * d_sae + j],
                row[i],
                "encoder is the decoder's transpose"
            );
        }
    }
    // Rows were Xavier-uniform before scaling: not all of one sign, and the scaling factor
    // (1 / norm of a Xavier row) is at least 1 / (bound * sqrt(d_in)).
    assert!(w_dec.iter().any(|v| *v < 0.0) && w_dec.iter().any(|v| *v > 0.0));
    assert!(w_dec.iter().all(|v| v.abs() <= 1.0 && v.is_finite()) && bound > 0.0);
    assert!(to_host_vec(model.b_enc.val()).iter().all(|v| *v == 0.0));
}

#[test]
fn median_of_an_even_count_is_the_lower_middle() {
    let data = topk_sae::Embeddings::from_vec(vec![4.0, 1.0, 3.0, 2.0], 4, 1).unwrap();
    let model = topk_sae::TopKSaeConfig::new(1, 2, 1)
        .try_init_from_data::<crate::TestBackend>(&data, &Default::default())
        .unwrap();
    assert_eq!(to_host_vec(model.b_dec.val()), vec![2.0]);
}

#[test]
fn mean_and_geometric_median_options() {
    use topk_sae::DecoderBiasInit;
    // Three points on a line and one far outlier: the geometric median stays near the cluster.
    let data = topk_sae::Embeddings::from_vec(vec![0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 100.0, 0.0], 4, 2)
        .unwrap();
    let init = |how| {
        let m = topk_sae::TopKSaeConfig::new(2, 4, 1)
            .with_b_dec_init(how)
            .try_init_from_data::<crate::TestBackend>(&data, &Default::default())
            .unwrap();
        to_host_vec(m.b_dec.val())
    };
    assert_abs_diff_eq!(init(DecoderBiasInit::Mean)[0], 25.75, epsilon = 1e-5);
    let gm = init(DecoderBiasInit::GeometricMedian);
    // Any point in [1, 2] minimises the sum of distances of {0, 1, 2, 100} on a line.
    assert!((1.0..=2.0).contains(&gm[0]), "geometric median {gm:?}");
    assert_eq!(init(DecoderBiasInit::Zeros), vec![0.0, 0.0]);
}

#[test]
fn loss_terms_match_naive_reference() {
    use crate::reference::nmse;
    let (d_in, d_sae, k, batch) = (10, 30, 4, 8);
    let model = random_model(d_in, d_sae, k, 31);
    let naive = NaiveSae::from_model(&model);
    let x = random_rows(batch, d_in, 32);
    // Every odd latent is a dead candidate; the loss drops those firing in this batch.
    let dead: Vec<bool> = (0..d_sae).map(|j| j % 2 == 1).collect();
    let loss = topk_sae::SaeLossConfig::new()
        .with_k_aux(Some(3))
        .init(k, d_sae)
        .unwrap();
    let out = loss.evaluate(&model, tensor(&x, d_in), Some(&dead), false);

    let rows: Vec<Vec<f64>> = x
        .chunks(d_in)
        .map(|r| r.iter().map(|v| f64::from(*v)).collect())
        .collect();
    let pres: Vec<Vec<f64>> = x.chunks(d_in).map(|r| naive.pre(r)).collect();
    let mains: Vec<Vec<usize>> = pres.iter().map(|p| NaiveSae::topk(p, k, None)).collect();
    let x_hat: Vec<Vec<f64>> = pres
        .iter()
        .zip(&mains)
        .map(|(p, i)| naive.decode(p, i, true))
        .collect();
    let recon = nmse(&x_hat, &rows);
    let mut allowed = dead.clone();
    mains.iter().flatten().for_each(|&j| allowed[j] = false);
    let residual: Vec<Vec<f64>> = rows
        .iter()
        .zip(&x_hat)
        .map(|(a, b)| a.iter().zip(b).map(|(p, q)| p - q).collect())
        .collect();
    let e_hat: Vec<Vec<f64>> = pres
        .iter()
        .map(|p| naive.decode(p, &NaiveSae::topk(p, 3, Some(&allowed)), false))
        .collect();
    let aux = nmse(&e_hat, &residual);
    assert_abs_diff_eq!(
        f64::from(out.parts.recon),
        recon,
        epsilon = 1e-5 * recon.max(1.0)
    );
    assert_abs_diff_eq!(f64::from(out.parts.aux), aux, epsilon = 1e-5 * aux.max(1.0));
    assert_abs_diff_eq!(
        f64::from(out.parts.total),
        recon + aux / 32.0,
        epsilon = 1e-5 * recon.max(1.0)
    );
}

#[test]
fn one_latent_or_one_input_dimension_matches_naive_reference() {
    // Products with a single output column: `x @ w_enc` when d_sae = 1, `z @ w_dec` when
    // d_in = 1. burn-wgpu 0.21 returned wrong rows for `[m, k] @ [k, 1]` with odd k > 1 (burn
    // issue #5122), which the crate's products route around.
    for (d_in, d_sae) in [(3, 1), (5, 1), (9, 1), (1, 3), (1, 5), (1, 9)] {
        let batch = 4;
        let model = random_model(d_in, d_sae, 1, 11);
        let naive = NaiveSae::from_model(&model);
        let x = random_rows(batch, d_in, 12);
        let pre = to_host_vec(model.pre_activations(tensor(&x, d_in)));
        let latents = model.encode(tensor(&x, d_in));
        let dense = to_host_vec(latents.clone());
        let decoded = to_host_vec(model.decode(latents));
        for b in 0..batch {
            let want = naive.pre(&x[b * d_in..(b + 1) * d_in]);
            for j in 0..d_sae {
                assert_abs_diff_eq!(f64::from(pre[b * d_sae + j]), want[j], epsilon = TOL);
            }
            let top = NaiveSae::topk(&want, 1, None);
            let want_dense = want[top[0]].max(0.0);
            assert_abs_diff_eq!(
                f64::from(dense[b * d_sae + top[0]]),
                want_dense,
                epsilon = TOL
            );
            let want_x = naive.decode(&want, &top, true);
            for i in 0..d_in {
                assert_abs_diff_eq!(f64::from(decoded[b * d_in + i]), want_x[i], epsilon = TOL);
            }
        }
    }
}

/// The crate's GPU kernels pass their first-use checks and run on burn-wgpu (lavapipe in CI), so
/// the wgpu tests exercise them rather than the fallbacks; other backends run none.
#[test]
fn gpu_kernels_run_on_wgpu_and_only_there() {
    use topk_sae::backend::KernelStatus;
    let options = crate::kernels();
    let kernels = topk_sae::backend::gpu_kernels::<TestBackend>(&Default::default(), &options);
    let want = if cfg!(feature = "test-wgpu") {
        KernelStatus::Runs
    } else {
        KernelStatus::Unavailable
    };
    // The loss statistics are opt-in (CI's lavapipe run opts in: `crate::kernels`).
    let want_loss = if want == KernelStatus::Runs && !options.loss {
        KernelStatus::SwitchedOff
    } else {
        want
    };
    assert_eq!(
        (
            kernels.top_k,
            kernels.sparse,
            kernels.update,
            kernels.pack,
            kernels.loss
        ),
        (want, want, want, want, want_loss)
    );
    // Options that leave every kernel out switch every kernel off.
    let none = topk_sae::backend::gpu_kernels::<TestBackend>(
        &Default::default(),
        &topk_sae::backend::KernelOptions::none(),
    );
    let want_none = if want == KernelStatus::Runs {
        KernelStatus::SwitchedOff
    } else {
        want
    };
    assert_eq!(
        (none.top_k, none.sparse, none.update, none.pack, none.loss),
        (want_none, want_none, want_none, want_none, want_none)
    );
}

/// Host copies of the top-k read the same on every backend: `to_host` and `codes_to_host`
/// equal the tensors read back, and a wrong width is an error from `check_width`.
#[test]
fn host_codes_equal_the_tensors_and_widths_are_checked() {
    let model = random_model(6, 24, 4, 3);
    let x = tensor(&random_rows(5, 6, 2), 6);
    let latents = model.encode_topk(x.clone());
    let codes = latents.to_host();
    assert_eq!((codes.rows, codes.k), (5, 4));
    let want: Vec<u32> = ints(latents.indices.clone())
        .into_iter()
        .map(|j| j as u32)
        .collect();
    assert_eq!(codes.indices, want);
    assert_eq!(codes.values, to_host_vec(latents.values.clone()));
    assert_eq!(
        topk_sae::sae::int_to_host_vec(latents.indices),
        ints(model.encode_topk(x.clone()).indices)
    );
    let out = model.forward(x.clone());
    assert_eq!(out.codes_to_host(), codes);
    assert_eq!(codes.row(1).count(), 4);
    model.check_width(&x).unwrap();
    let err = model
        .check_width(&tensor(&random_rows(5, 7, 2), 7))
        .unwrap_err();
    assert!(
        matches!(
            err,
            topk_sae::Error::WidthMismatch {
                expected: 6,
                actual: 7,
                ..
            }
        ),
        "{err}"
    );
}
