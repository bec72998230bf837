//! Property tests (64 cases each): invariants of top-k encoding, the training step and metrics.

use proptest::prelude::*;
use topk_sae::metrics::MetricsAccumulator;
use topk_sae::sae::to_host_vec;
use topk_sae::train::{normalize_rows, project_rows};
use topk_sae::{TopKSaeConfig, TrainConfig, Trainer};

use crate::reference::NaiveSae;
use crate::{random_model, random_rows, tensor};

fn dims() -> impl Strategy<Value = (usize, usize, usize, usize, u64)> {
    (1usize..12, 1usize..40, 1usize..8, any::<u64>()).prop_flat_map(|(d_in, d_sae, batch, seed)| {
        (Just(d_in), Just(d_sae), 1..=d_sae, Just(batch), Just(seed))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encode_keeps_at_most_k_nonnegative_values_at_the_largest_pre_activations(
        (d_in, d_sae, k, batch, seed) in dims()
    ) {
        let model = random_model(d_in, d_sae, k, seed);
        let x = random_rows(batch, d_in, seed ^ 1);
        let dense = to_host_vec(model.encode(tensor(&x, d_in)));
        let naive = NaiveSae::from_model(&model);
        for b in 0..batch {
            let row = &dense[b * d_sae..(b + 1) * d_sae];
            prop_assert!(row.iter().filter(|v| **v != 0.0).count() <= k);
            prop_assert!(row.iter().all(|v| *v >= 0.0));
            // Every kept (non-zero) latent is among the k largest pre-activations.
            let pre = naive.pre(&x[b * d_in..(b + 1) * d_in]);
            let top = NaiveSae::topk(&pre, k, None);
            for (j, v) in row.iter().enumerate() {
                if *v != 0.0 {
                    prop_assert!(top.contains(&j), "latent {j} kept but not in the top {k}");
                }
            }
        }
    }

    #[test]
    fn encode_keeps_exactly_k_when_pre_activations_are_positive_and_distinct(
        (d_in, d_sae, k, batch, seed) in dims()
    ) {
        // b_enc far above any |(x - b_dec) @ w_enc| (at most 1.2 * sqrt(d_in) < 5) makes every
        // pre-activation positive and distinct, 10 apart.
        let base = random_model(d_in, d_sae, k, seed);
        let b_enc: Vec<f32> = (0..d_sae).map(|j| 100.0 + j as f32 * 10.0).collect();
        let model = topk_sae::TopKSae::from_parts(
            base.w_enc.val(),
            burn::tensor::Tensor::from_data(b_enc.as_slice(), &Default::default()),
            base.w_dec.val(),
            base.b_dec.val(),
            k,
        );
        let out = model.forward(tensor(&random_rows(batch, d_in, seed ^ 2), d_in));
        let values = to_host_vec(out.values);
        let indices: Vec<i64> = out.indices.into_data().convert::<i64>().into_vec().unwrap();
        for b in 0..batch {
            prop_assert!(values[b * k..(b + 1) * k].iter().all(|v| *v > 0.0));
            let mut row: Vec<i64> = indices[b * k..(b + 1) * k].to_vec();
            // b_enc dominates: the top k are the k highest-biased latents.
            row.sort_unstable();
            let want: Vec<i64> = ((d_sae - k) as i64..d_sae as i64).collect();
            prop_assert_eq!(row, want);
        }
    }

    #[test]
    fn a_training_step_leaves_unit_norm_decoder_rows(
        (d_in, d_sae, k, batch, seed) in dims()
    ) {
        prop_assume!(d_in >= 2);
        let config = TrainConfig::new(TopKSaeConfig::new(d_in, d_sae, k).with_seed(seed))
            .with_optimizer(topk_sae::AdamConfig::new().with_lr(1e-2));
        let model = random_model(d_in, d_sae, k, seed);
        let mut trainer = Trainer::from_model(config, model, topk_sae::Normalizer::identity(), &Default::default()).unwrap();
        trainer.step(tensor(&random_rows(batch.max(2), d_in, seed ^ 3), d_in)).unwrap();
        let w = to_host_vec(trainer.model().w_dec.val());
        for row in w.chunks_exact(d_in) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            prop_assert!((norm - 1.0).abs() < 1e-5, "row norm {norm}");
        }
    }

    #[test]
    fn projected_gradients_are_orthogonal_to_their_rows(
        d_sae in 1usize..20, d_in in 1usize..20, seed in any::<u64>()
    ) {
        let w = normalize_rows(tensor(&random_rows(d_sae, d_in, seed), d_in));
        let g = project_rows(tensor(&random_rows(d_sae, d_in, seed ^ 4), d_in), &w);
        let (w, g) = (to_host_vec(w), to_host_vec(g));
        for (wr, gr) in w.chunks_exact(d_in).zip(g.chunks_exact(d_in)) {
            let dot: f32 = wr.iter().zip(gr).map(|(a, b)| a * b).sum();
            prop_assert!(dot.abs() < 1e-5, "dot {dot}");
        }
    }

    #[test]
    fn mean_predictor_scores_nmse_one_and_ev_is_one_minus_nmse(
        rows in 2usize..40, d_in in 1usize..10, seed in any::<u64>()
    ) {
        let x = random_rows(rows, d_in, seed);
        let mean: Vec<f32> = (0..d_in).map(|i| (0..rows).map(|r| x[r * d_in + i]).sum::<f32>() / rows as f32).collect();
        let x_hat: Vec<f32> = (0..rows).flat_map(|_| mean.clone()).collect();
        let mut acc = MetricsAccumulator::new(d_in, 3, 1);
        acc.update(&x, &x_hat, &vec![0; rows], &vec![0.5; rows]);
        let m = acc.finish();
        prop_assert!((m.nmse - 1.0).abs() < 1e-5, "nmse {}", m.nmse);
        prop_assert!((m.explained_variance - (1.0 - m.nmse)).abs() < 1e-12);
        // A perturbed predictor: EV is still exactly 1 - NMSE.
        let noisy: Vec<f32> = x.iter().zip(random_rows(rows, d_in, seed ^ 5)).map(|(a, n)| a + 0.1 * n).collect();
        let mut acc = MetricsAccumulator::new(d_in, 3, 1);
        acc.update(&x, &noisy, &vec![0; rows], &vec![0.5; rows]);
        let m = acc.finish();
        prop_assert!((m.explained_variance - (1.0 - m.nmse)).abs() < 1e-12);
    }

    #[test]
    fn train_config_json_round_trips(
        d_in in 1usize..5000, d_sae in 1usize..50_000, k in 1usize..256, lr in 1e-6f64..1.0,
        batch in 1usize..4096, k_aux in proptest::option::of(1usize..512), seed in any::<u64>(),
        multi_k in any::<bool>(), max_steps in proptest::option::of(1u64..1_000_000)
    ) {
        let config = TrainConfig::new(TopKSaeConfig::new(d_in, d_sae, k).with_seed(seed))
            .with_loss(topk_sae::SaeLossConfig::new().with_k_aux(k_aux).with_multi_k(multi_k))
            .with_optimizer(topk_sae::AdamConfig::new().with_lr(lr))
            .with_batch_size(batch)
            .with_max_steps(max_steps)
            .with_normalization(topk_sae::NormalizationKind::Center)
            .with_seed(seed);
        let text = serde_json::to_string(&config).unwrap();
        let back: TrainConfig = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, config);
    }
}

#[test]
fn metrics_on_a_hand_computed_example() {
    // 2 rows, d_in 2, d_sae 3, k 2. x = [[1, 0], [3, 2]] (mean [2, 1], total variance 4),
    // x_hat = [[1, 1], [3, 2]] (squared error 1): NMSE 0.25.
    let mut acc = MetricsAccumulator::new(2, 3, 2);
    acc.update(
        &[1.0, 0.0, 3.0, 2.0],
        &[1.0, 1.0, 3.0, 2.0],
        &[0, 1, 0, 2],
        &[0.5, 0.0, 1.5, 1.0],
    );
    let m = acc.finish();
    assert!((m.nmse - 0.25).abs() < 1e-12);
    // Densities 1, 0.5, 0.5 (latent 1 fired with value 0: still counts).
    assert_eq!(m.density, vec![1.0, 0.5, 0.5]);
    let log_fd = ((1.0f64 + 1e-10).log10() + 2.0 * (0.5f64 + 1e-10).log10()) / 3.0;
    assert!((m.log_fd - log_fd).abs() < 1e-12);
    assert!((m.act_mean - 3.0 / 4.0).abs() < 1e-12);
    assert!((m.l0 - 1.5).abs() < 1e-12);
    assert_eq!((m.dead_frac, m.dense_frac), (0.0, 1.0));
}

/// Values drawn from a small set so that ties are common, with NaN and infinities mixed in.
fn tricky_rows() -> impl Strategy<Value = (Vec<f32>, usize, usize, Vec<bool>)> {
    let value = prop_oneof![
        8 => (-3i8..4).prop_map(f32::from),
        1 => Just(f32::NAN),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::INFINITY),
        1 => Just(-0.0f32),
    ];
    // Short rows with any k, and long rows with a small k (the block-maxima fast path).
    let shapes = prop_oneof![
        (1usize..6, 1usize..70).prop_flat_map(|(r, c)| (Just(r), Just(c), 1..=c)),
        (1usize..4, 64usize..400).prop_flat_map(|(r, c)| (Just(r), Just(c), 1usize..=4)),
    ];
    shapes.prop_flat_map(move |(rows, cols, k)| {
        (
            proptest::collection::vec(value.clone(), rows * cols),
            Just(cols),
            Just(k),
            proptest::collection::vec(any::<bool>(), cols),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `topk_rows` equals a full stable sort by (value descending, NaN lowest), ties by the lower
    /// column, with and without a mask.
    #[test]
    fn topk_rows_equals_a_full_sort((data, cols, k, mask) in tricky_rows()) {
        let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
        let allowed = mask.iter().filter(|m| **m).count();
        for use_mask in [false, true] {
            if use_mask && allowed < k {
                continue;
            }
            let m = use_mask.then_some(&mask[..]);
            let (idx, val) = topk_sae::topk::topk_rows(&data, cols, k, m);
            for (r, row) in data.chunks_exact(cols).enumerate() {
                let mut order: Vec<usize> = (0..cols).filter(|&j| m.is_none_or(|m| m[j])).collect();
                order.sort_by(|&a, &b| key(row[b]).total_cmp(&key(row[a])).then(a.cmp(&b)));
                let want: Vec<i64> = order[..k].iter().map(|&j| j as i64).collect();
                prop_assert_eq!(&idx[r * k..(r + 1) * k], &want[..]);
                for (j, v) in idx[r * k..(r + 1) * k].iter().zip(&val[r * k..(r + 1) * k]) {
                    prop_assert_eq!(v.to_bits(), row[*j as usize].to_bits());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `topk_tensor` on the test backend (on wgpu: the GPU kernel) returns exactly what
    /// `topk_rows` does: the same indices in the same order and the same value bits.
    #[test]
    fn topk_tensor_equals_topk_rows((data, cols, k, mask) in tricky_rows()) {
        let allowed = mask.iter().filter(|m| **m).count();
        for use_mask in [false, true] {
            if use_mask && allowed < k {
                continue;
            }
            let m = use_mask.then_some(&mask[..]);
            let want = topk_sae::topk::topk_rows(&data, cols, k, m);
            let (idx, val) = topk_sae::topk::topk_tensor(tensor(&data, cols), k, m);
            let idx: Vec<i64> = idx.into_data().convert::<i64>().into_vec().unwrap();
            let val = to_host_vec(val);
            prop_assert_eq!(&idx, &want.0);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&val), bits(&want.1));
        }
    }
}

/// Above the GPU kernel's largest `k` (1,024), `topk_tensor` falls back to the host selection,
/// with the same result as `topk_rows`.
#[test]
fn topk_tensor_beyond_the_kernel_k_equals_topk_rows() {
    let cols = 1200;
    let data = random_rows(2, cols, 11);
    for k in [1024, 1100] {
        let want = topk_sae::topk::topk_rows(&data, cols, k, None);
        let (idx, val) = topk_sae::topk::topk_tensor(tensor(&data, cols), k, None);
        let idx: Vec<i64> = idx.into_data().convert::<i64>().into_vec().unwrap();
        assert_eq!(idx, want.0, "k = {k}");
        assert_eq!(to_host_vec(val), want.1, "k = {k}");
    }
}

/// Random top-k codes: `rows` documents of `k` latents below `d_sae`, repeats within a document
/// allowed (hand-built codes may hold them).
fn random_codes() -> impl Strategy<Value = topk_sae::analysis::CorpusCodes> {
    (0usize..40, 1usize..6, 1usize..20).prop_flat_map(|(rows, k, d_sae)| {
        proptest::collection::vec(0..d_sae as u32, rows * k).prop_map(move |indices| {
            topk_sae::analysis::CorpusCodes {
                rows,
                k,
                d_sae,
                values: vec![1.0; rows * k],
                indices,
            }
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `cooccurrence` equals counting every document's distinct latent pairs in a map:
    /// `C_ii` per latent, `C_ij` for `i < j` through `pairs` (ascending) and `get` (symmetric).
    #[test]
    fn cooccurrence_equals_counting_pairs_in_a_map(codes in random_codes()) {
        let mut want = std::collections::BTreeMap::<(u32, u32), u32>::new();
        for doc in 0..codes.rows {
            let mut row = codes.indices[doc * codes.k..(doc + 1) * codes.k].to_vec();
            row.sort_unstable();
            row.dedup();
            for (a, &i) in row.iter().enumerate() {
                for &j in &row[a..] {
                    *want.entry((i, j)).or_default() += 1;
                }
            }
        }
        let c = topk_sae::analysis::cooccurrence(&codes);
        let diag: Vec<u32> = (0..codes.d_sae as u32)
            .map(|i| want.get(&(i, i)).copied().unwrap_or(0))
            .collect();
        prop_assert_eq!(c.counts(), &diag[..]);
        let pairs: Vec<(u32, u32, u32)> = want
            .iter()
            .filter(|((i, j), _)| i != j)
            .map(|(&(i, j), &n)| (i, j, n))
            .collect();
        prop_assert_eq!(c.pairs().collect::<Vec<_>>(), pairs.clone());
        prop_assert_eq!(c.pair_count(), pairs.len());
        for i in 0..codes.d_sae {
            for j in 0..codes.d_sae {
                let key = (i.min(j) as u32, i.max(j) as u32);
                prop_assert_eq!(c.get(i, j), want.get(&key).copied().unwrap_or(0));
            }
        }
    }
}
