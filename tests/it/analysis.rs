//! Corpus encoding, statistics, labels, families, steered search and matching.

use topk_sae::analysis::{
    self, CorpusCodes, FamilyConfig, FeatureEdit, FeatureStats, LabelConfig, Metric, encode_corpus,
    encode_corpus_with_progress, families, feature_stats,
};
use topk_sae::data::{SyntheticConfig, synthetic};
use topk_sae::sae::to_host_vec;
use topk_sae::{
    AdamConfig, Embeddings, Error, MetricsAccumulator, Normalizer, TopKSaeConfig, TrainConfig,
    evaluate_with_progress, train,
};

use topk_sae::backend::NdArray;

use crate::{TestBackend, on_test_backend, random_model, random_rows};

/// Runs `f` on 50 rows with a progress callback, and checks that it reported them in chunks of
/// 16.
fn in_chunks_of_16<T>(f: impl FnOnce(&mut dyn FnMut(usize)) -> T) -> T {
    let mut calls = Vec::new();
    let out = f(&mut |n| calls.push(n));
    assert_eq!(calls, vec![16, 32, 48, 50]);
    out
}

/// An int tensor's values, row-major.
fn int_rows(t: burn::tensor::Tensor<TestBackend, 2, burn::tensor::Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().into_vec::<i64>().unwrap()
}

#[test]
fn corpus_codes_match_forward_and_round_trip_through_npy() {
    let model = random_model(8, 30, 3, 2);
    let data = Embeddings::from_vec(random_rows(50, 8, 3), 50, 8).unwrap();
    let codes = in_chunks_of_16(|progress| {
        encode_corpus_with_progress(
            &model,
            &data,
            &Normalizer::identity(),
            16,
            &Default::default(),
            progress,
        )
    })
    .unwrap();
    let out = model.forward(crate::tensor(data.as_slice(), 8));
    let idx: Vec<u32> = int_rows(out.indices).iter().map(|&i| i as u32).collect();
    assert_eq!(codes.indices, idx);
    assert_eq!(codes.values, to_host_vec(out.values));
    let dir = tempfile::tempdir().unwrap();
    let (i, v) = (dir.path().join("i.npy"), dir.path().join("v.npy"));
    codes.save_npy(&i, &v).unwrap();
    assert_eq!(CorpusCodes::load_npy(&i, &v, 30).unwrap(), codes);
    assert!(
        CorpusCodes::load_npy(&i, &v, 10).is_err(),
        "indices >= d_sae must be rejected"
    );
}

/// `evaluate` in chunks (on a GPU, each chunk's outputs are read back while the next is
/// uploaded) gives the metrics of one accumulation over the model's outputs for every row.
#[test]
fn evaluate_in_chunks_matches_one_pass_over_forward() {
    let model = random_model(8, 30, 3, 5);
    let x = random_rows(50, 8, 6);
    let data = Embeddings::from_vec(x.clone(), 50, 8).unwrap();
    let chunked = in_chunks_of_16(|progress| {
        evaluate_with_progress(
            &model,
            &data,
            &Normalizer::identity(),
            16,
            &Default::default(),
            progress,
        )
    })
    .unwrap();
    let out = model.forward(crate::tensor(&x, 8));
    let indices = int_rows(out.indices);
    let mut acc = MetricsAccumulator::new(8, 30, 3);
    acc.update(
        &x,
        &to_host_vec(out.reconstruction),
        &indices,
        &to_host_vec(out.values),
    );
    let whole = acc.finish();
    // On CPU backends `evaluate` decodes with the host kernels, which add in another order
    // than `forward`: f32 rounding (5e-9 relative seen). A chunk paired with another's outputs
    // would be off by far more.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
    assert!(
        close(chunked.nmse, whole.nmse),
        "{} vs {}",
        chunked.nmse,
        whole.nmse
    );
    assert!(close(chunked.cosine, whole.cosine));
    assert!(close(chunked.act_mean, whole.act_mean));
    assert_eq!(chunked.density, whole.density);
    assert_eq!(chunked.rows, 50);
}

fn codes(rows: &[&[(u32, f32)]], d_sae: usize) -> CorpusCodes {
    let k = rows[0].len();
    CorpusCodes {
        rows: rows.len(),
        k,
        d_sae,
        indices: rows.iter().flat_map(|r| r.iter().map(|e| e.0)).collect(),
        values: rows.iter().flat_map(|r| r.iter().map(|e| e.1)).collect(),
    }
}

#[test]
fn feature_statistics_by_hand() {
    let c = codes(
        &[
            &[(0, 0.5), (1, 0.2)],
            &[(0, 1.5), (2, 0.0)],
            &[(1, 0.4), (0, 1.0)],
        ],
        4,
    );
    let s = feature_stats(&c, 2, 2);
    assert_eq!(s[0].density, 1.0);
    assert!((s[0].mean_activation - 1.0).abs() < 1e-12);
    assert_eq!(s[0].max_activation, 1.5);
    assert_eq!(s[0].top_documents, vec![(1, 1.5), (2, 1.0)]);
    // Values 0.5 / 1.5 -> bin 0; 1.5 -> bin 1 (top edge); 1.0 / 1.5 -> bin 1.
    assert_eq!(s[0].histogram, vec![1, 2]);
    assert!(
        (s[2].density - 1.0 / 3.0).abs() < 1e-12,
        "a zero value still counts as fired"
    );
    assert_eq!((s[3].density, s[3].top_documents.len()), (0.0, 0));
    assert_eq!(
        analysis::cooccurring_latents(&c, 0, 5),
        vec![(1, 2), (2, 1)]
    );
}

#[test]
fn nearest_latents_by_decoder_cosine() {
    let w = [1.0, 0.0, 0.0, 1.0, 0.8, 0.6, -1.0, 0.0];
    assert_eq!(
        analysis::nearest_latents(&w, 2, 0, 2),
        vec![(2, 0.8), (1, 0.0)]
    );
}

/// Planted hierarchy: `groups` parents, each with `children` children. Every document holds one
/// parent, one of its children and one of two dense background latents (a corpus-wide topic), so
/// children co-occur with their parent but never with each other, and the backgrounds are the
/// densest latents: the first round roots at them, the next rounds find the planted groups.
fn planted_codes(
    groups: usize,
    children: usize,
    docs_per_child: usize,
) -> (CorpusCodes, Vec<Vec<usize>>) {
    let d_sae = groups * (children + 1) + 2;
    let background = (groups * (children + 1)) as u32;
    let mut rows = Vec::new();
    let mut planted = Vec::new();
    for g in 0..groups {
        let parent = (g * (children + 1)) as u32;
        planted.push((1..=children).map(|c| parent as usize + c).collect());
        for c in 1..=children as u32 {
            for i in 0..docs_per_child as u32 {
                rows.push(vec![
                    (parent, 1.0),
                    (parent + c, 0.8),
                    (background + i % 2, 0.3),
                ]);
            }
        }
    }
    let refs: Vec<&[(u32, f32)]> = rows.iter().map(Vec::as_slice).collect();
    (codes(&refs, d_sae), planted)
}

/// For each planted group of latents, the best Jaccard between it and any family's children;
/// returns the mean over groups and the per-group values.
fn mean_best_jaccard(
    planted: &[Vec<usize>],
    found: &[topk_sae::analysis::Family],
) -> (f64, Vec<f64>) {
    let best: Vec<f64> = planted
        .iter()
        .map(|g| {
            found
                .iter()
                .map(|f| {
                    let inter = g.iter().filter(|x| f.children.contains(x)).count() as f64;
                    inter / ((g.len() + f.children.len()) as f64 - inter)
                })
                .fold(0.0, f64::max)
        })
        .collect();
    (best.iter().sum::<f64>() / best.len() as f64, best)
}

/// Each group of [`planted_codes`] (5 children) is found exactly, under its parent.
fn assert_groups_found_with_their_parents(
    planted: &[Vec<usize>],
    found: &[topk_sae::analysis::Family],
) {
    for (g, f) in planted.iter().zip(0..) {
        assert!(
            found
                .iter()
                .any(|fam| fam.parent == f * 6 && fam.children == *g),
            "group {f} {g:?} in {found:?}"
        );
    }
}

#[test]
fn families_recover_planted_groups() {
    let (c, planted) = planted_codes(4, 5, 20);
    let found = families(&c, &FamilyConfig::default()).unwrap();
    // Measure: for each planted group, the best Jaccard between its children and any family's.
    let (mean, _) = mean_best_jaccard(&planted, &found);
    assert!(mean >= 0.8, "mean best Jaccard {mean}: {found:?}");
    assert_groups_found_with_their_parents(&planted, &found);
}

#[test]
fn families_reject_thresholds_that_would_silently_find_nothing() {
    let (c, _) = planted_codes(4, 5, 20);
    for (config, field) in [
        (
            FamilyConfig {
                min_density: 2.0,
                ..FamilyConfig::default()
            },
            "min_density",
        ),
        (
            FamilyConfig {
                min_cooccurrence: f64::NAN,
                ..FamilyConfig::default()
            },
            "min_cooccurrence",
        ),
        (
            FamilyConfig {
                max_jaccard: -0.5,
                ..FamilyConfig::default()
            },
            "max_jaccard",
        ),
        (
            FamilyConfig {
                rounds: 0,
                ..FamilyConfig::default()
            },
            "rounds",
        ),
    ] {
        match families(&c, &config) {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
    }
}

/// A latent that fired three times, each time beside parent 0 and its first child, joins that
/// family with the paper's thresholds (`M = 3 / (3 + 1)`); `min_density` leaves it out and the
/// planted families are found as before.
#[test]
fn families_min_density_leaves_rare_latents_out() {
    let (c, planted) = planted_codes(4, 5, 20);
    let rare = c.d_sae as u32;
    let mut rows: Vec<Vec<(u32, f32)>> = (0..c.rows)
        .map(|d| c.row(d).map(|(j, v)| (j as u32, v)).collect())
        .collect();
    rows.extend((0..3).map(|_| vec![(0, 1.0), (1, 0.8), (rare, 0.3)]));
    let refs: Vec<&[(u32, f32)]> = rows.iter().map(Vec::as_slice).collect();
    let c = codes(&refs, c.d_sae + 1);
    let in_a_family =
        |f: &[topk_sae::analysis::Family]| f.iter().any(|f| f.children.contains(&(rare as usize)));
    assert!(in_a_family(
        &families(&c, &FamilyConfig::default()).unwrap()
    ));
    // 3 of 403 documents is below 1%.
    let config = FamilyConfig {
        min_density: 0.01,
        ..FamilyConfig::default()
    };
    let found = families(&c, &config).unwrap();
    assert!(!in_a_family(&found), "{found:?}");
    assert_groups_found_with_their_parents(&planted, &found);
}

/// The planted directions of `synthetic_families` are orthonormal and orthogonal to the mean, so
/// every row carries the same weight of the mean; rows are unit norm; too few dimensions for the
/// directions is an error.
#[test]
fn synthetic_families_are_orthogonal_with_a_fixed_mean_weight() {
    use approx::assert_abs_diff_eq;
    use topk_sae::data::{FamilySyntheticConfig, synthetic_families};
    let config = FamilySyntheticConfig::new()
        .with_rows(500)
        .with_d_in(40)
        .with_noise(0.0);
    let planted = synthetic_families(&config).unwrap();
    let d_in = 40;
    let dirs: Vec<&[f32]> = planted.set.directions.chunks_exact(d_in).collect();
    assert_eq!(dirs.len(), 36);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for (i, a) in dirs.iter().enumerate() {
        for (j, b) in dirs.iter().enumerate() {
            let want = if i == j { 1.0 } else { 0.0 };
            assert_abs_diff_eq!(dot(a, b), want, epsilon = 1e-5);
        }
    }
    // Without noise each row is `w m + sqrt(1 - w^2) u` with `u` in the span of the directions,
    // so its component outside that span is `w m` for every row.
    let rows = planted.set.embeddings.as_slice();
    let mut outside: Vec<Vec<f32>> = Vec::new();
    for r in rows.chunks_exact(d_in) {
        assert_abs_diff_eq!(dot(r, r), 1.0, epsilon = 1e-5);
        let mut rest = r.to_vec();
        for d in &dirs {
            let along = dot(&rest, d);
            rest.iter_mut().zip(*d).for_each(|(x, y)| *x -= along * y);
        }
        assert_abs_diff_eq!(dot(&rest, &rest).sqrt(), 0.4, epsilon = 1e-4);
        outside.push(rest);
    }
    for o in &outside[1..] {
        for (a, b) in o.iter().zip(&outside[0]) {
            assert_abs_diff_eq!(a, b, epsilon = 1e-4);
        }
    }
    let err = synthetic_families(&config.clone().with_d_in(36)).unwrap_err();
    assert!(err.to_string().contains("d_in"), "{err}");
}

#[test]
fn search_matches_brute_force_for_any_chunk_size() {
    let corpus = Embeddings::from_vec(random_rows(37, 5, 7), 37, 5).unwrap();
    let queries = random_rows(3, 5, 8);
    let device = Default::default();
    for metric in [Metric::Dot, Metric::Cosine] {
        let mut want = Vec::new();
        for q in queries.chunks(5) {
            let mut scored: Vec<(usize, f32)> = (0..37)
                .map(|d| {
                    let r = corpus.row(d);
                    let dot: f32 = r.iter().zip(q).map(|(a, b)| a * b).sum();
                    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    (
                        d,
                        if metric == Metric::Cosine {
                            dot / (norm(r) * norm(q))
                        } else {
                            dot
                        },
                    )
                })
                .collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1));
            want.push(scored.iter().take(4).map(|s| s.0).collect::<Vec<_>>());
        }
        for chunk in [1, 7, 37, 100] {
            let got = analysis::search::<TestBackend>(&corpus, &queries, 4, metric, chunk, &device)
                .unwrap();
            let got: Vec<Vec<usize>> = got
                .iter()
                .map(|r| r.iter().map(|x| x.document).collect())
                .collect();
            assert_eq!(got, want, "{metric:?}, chunk {chunk}");
        }
    }
}

#[test]
fn matching_a_permuted_model_recovers_the_permutation() {
    let model = random_model(6, 12, 2, 9);
    let w = to_host_vec(model.w_dec.val());
    let perm: Vec<usize> = (0..12).map(|i| (i * 5) % 12).collect();
    let permuted: Vec<f32> = perm
        .iter()
        .flat_map(|&p| w[p * 6..(p + 1) * 6].to_vec())
        .collect();
    let m = analysis::match_features::<TestBackend>(&permuted, &w, 6, &Default::default()).unwrap();
    for (i, (j, cos)) in m.iter().enumerate() {
        assert_eq!(*j, perm[i]);
        assert!((cos - 1.0).abs() < 1e-5);
    }
}

/// 40 documents: the first 5 are `galaxy(i)` and fire latent 1 alone, the other 35 are about
/// neural networks and fire latent 0. Returns the texts and the statistics (top 5 documents).
fn galaxy_corpus(galaxy: impl Fn(usize) -> String) -> (Vec<String>, Vec<FeatureStats>) {
    let texts: Vec<String> = (0..40)
        .map(|i| {
            if i < 5 {
                galaxy(i)
            } else {
                format!("neural network training loss number {i}")
            }
        })
        .collect();
    let c = codes(
        &(0..40)
            .map(|i| {
                if i < 5 {
                    &[(1u32, 1.0f32)][..]
                } else {
                    &[(0u32, 1.0f32)][..]
                }
            })
            .collect::<Vec<_>>(),
        2,
    );
    let stats = feature_stats(&c, 5, 4);
    (texts, stats)
}

#[test]
fn labels_pick_the_distinctive_words() {
    let (texts, stats) =
        galaxy_corpus(|i| format!("galaxy cluster lensing survey of galaxy clusters {i}"));
    let labels = analysis::label_features(&stats, &texts, &LabelConfig::default()).unwrap();
    let galaxy = labels.iter().find(|l| l.latent == 1).unwrap();
    let top: Vec<&str> = galaxy.terms.iter().map(|t| t.0.as_str()).collect();
    assert!(top.contains(&"galaxy"), "{top:?}");
    // Every label term comes from the galaxy abstracts, none from the rest of the corpus.
    assert!(
        top.iter()
            .all(|t| t.split(' ').all(|w| texts[0].contains(w))),
        "{top:?}"
    );
}

/// A term must be in `min_top_share` of a latent's top documents: "quasar" is in 2 of the 5
/// galaxy abstracts (and in 2 other documents, so it passes `min_document_frequency`).
#[test]
fn labels_keep_only_terms_in_min_top_share_of_the_top_documents() {
    let (mut texts, stats) = galaxy_corpus(|i| {
        let extra = if i < 2 { "quasar" } else { "" };
        format!("galaxy cluster lensing survey {extra}")
    });
    texts[30].push_str(" quasar");
    texts[31].push_str(" quasar");
    let words_of = |share: f64| {
        let config = LabelConfig {
            words: 50,
            bigrams: false,
            min_top_share: share,
            ..LabelConfig::default()
        };
        let labels = analysis::label_features(&stats, &texts, &config).unwrap();
        let galaxy = labels.iter().find(|l| l.latent == 1).unwrap();
        galaxy.terms.iter().map(|t| t.0.clone()).collect::<Vec<_>>()
    };
    // 2 of 5 is 40%: kept at the default 20%, dropped at 50%; the words in all 5 stay.
    assert!(
        words_of(0.2).contains(&"quasar".to_owned()),
        "{:?}",
        words_of(0.2)
    );
    let strict = words_of(0.5);
    assert!(!strict.contains(&"quasar".to_owned()), "{strict:?}");
    assert!(strict.contains(&"galaxy".to_owned()), "{strict:?}");
    // Settings that would quietly give empty or meaningless labels are errors.
    for (config, field) in [
        (
            LabelConfig {
                words: 0,
                ..LabelConfig::default()
            },
            "words",
        ),
        (
            LabelConfig {
                prior_strength: f64::NAN,
                ..LabelConfig::default()
            },
            "prior_strength",
        ),
        (
            LabelConfig {
                min_top_share: 1.5,
                ..LabelConfig::default()
            },
            "min_top_share",
        ),
    ] {
        let err = analysis::label_features(&stats, &texts, &config).unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig { field: f, .. } if f == field),
            "{err:?}"
        );
    }
}

#[test]
fn boosting_a_planted_feature_moves_results_towards_it() {
    let set = synthetic(
        &SyntheticConfig::new()
            .with_rows(3_000)
            .with_d_in(32)
            .with_n_directions(24)
            .with_active(2)
            .with_seed(3),
    )
    .unwrap();
    let config = TrainConfig::new(TopKSaeConfig::new(32, 64, 3))
        .with_batch_size(200)
        .with_epochs(20)
        .with_optimizer(AdamConfig::new().with_lr(3e-3));
    let device = Default::default();
    // Trained on the CPU: what is tested is steering and search on the test backend.
    let trained = train::<NdArray<f32>>(config, &set.embeddings, &Default::default(), |_| {});
    let model = on_test_backend(&trained.unwrap().model);
    let w_dec = to_host_vec(model.w_dec.val());
    let contains = |doc: usize, dir: u32| set.active[doc * 2..doc * 2 + 2].contains(&dir);
    // The planted direction a query lacks, and the latent that learned it.
    let query_doc = 0;
    let target = (0..24u32).find(|d| !contains(query_doc, *d)).unwrap();
    let dir = &set.directions[target as usize * 32..(target as usize + 1) * 32];
    let latent = (0..64)
        .max_by(|&a, &b| {
            let cos = |j: usize| {
                w_dec[j * 32..(j + 1) * 32]
                    .iter()
                    .zip(dir)
                    .map(|(x, y)| x * y)
                    .sum::<f32>()
            };
            cos(a).total_cmp(&cos(b))
        })
        .unwrap();
    let query = set.embeddings.row(query_doc).to_vec();
    let share = |q: &[f32]| {
        let hits =
            analysis::search::<TestBackend>(&set.embeddings, q, 20, Metric::Cosine, 512, &device)
                .unwrap();
        hits[0]
            .iter()
            .filter(|r| contains(r.document, target))
            .count()
    };
    let before = share(&query);
    let steered = analysis::steer(
        &model,
        &query,
        &[FeatureEdit::Set { latent, value: 1.0 }],
        &device,
    )
    .unwrap();
    assert!(
        steered
            .latents
            .iter()
            .any(|(j, v)| *j == latent && *v == 1.0)
    );
    let after = share(&steered.embedding);
    let added = analysis::add_decoder_rows(&model, &query, &[(latent, 1.0)]).unwrap();
    assert!(
        after >= 10 && after > before,
        "top-20 holding the boosted direction: {before} -> {after}"
    );
    assert!(share(&added) > before);
    // Removing a latent that is active takes it out.
    let active = analysis::steer(&model, &query, &[], &device)
        .unwrap()
        .latents;
    let removed = analysis::steer(
        &model,
        &query,
        &[FeatureEdit::Remove {
            latent: active[0].0,
        }],
        &device,
    )
    .unwrap();
    assert_eq!(removed.latents.len(), active.len() - 1);
}

/// Trains an SAE on rows with planted parent/child directions and checks that feature families
/// found from its codes recover the planted groups of children (measure: each planted child
/// direction is mapped to the latent with the largest decoder cosine; for each group, the best
/// Jaccard between those latents and any family's children; mean over groups >= 0.8).
///
/// Families are searched with the paper's thresholds plus `min_density` 0.01 (a planted child
/// fires on about 3% of rows): rows holding a parent alone leave the second of `k = 2` slots to
/// whichever latent answers to the noise, and a latent that fired a few dozen times that way
/// joins families at random. Seeds 1 to 20 give 0.81 to 1.0 (mean 0.96; without `min_density`,
/// 0.68 to 0.83); docs/analysis.md. The knobs are environment variables (`SEED`, `EPOCHS`,
/// `DIN`, `DSAE`, `LR`, `ALONE`, `PMIN`, `ROWS`, `P`, `C`, `MW`, `NOISE`, `MIN_DENSITY`) so the
/// experiment can be rerun with
/// `SEED=2 cargo test --test it families_recover_planted_child -- --nocapture`.
///
/// Not run on wgpu (1,880 steps take minutes on the software driver CI uses); the cross-backend
/// test checks that training agrees there.
#[test]
#[cfg_attr(
    feature = "test-wgpu",
    ignore = "1,880 training steps: minutes on lavapipe"
)]
fn families_recover_planted_child_directions_end_to_end() {
    use topk_sae::data::{FamilySyntheticConfig, synthetic_families};
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (parents, children) = (env("P", 6.0) as usize, env("C", 5.0) as usize);
    let d_in = env("DIN", 128.0) as usize;
    let planted = synthetic_families(
        &FamilySyntheticConfig::new()
            .with_rows(env("ROWS", 12_000.0) as usize)
            .with_d_in(d_in)
            .with_parents(parents)
            .with_children(children)
            .with_parent_alone(env("ALONE", 0.1))
            .with_mean_weight(env("MW", 0.4) as f32)
            .with_parent_min(env("PMIN", 0.1) as f32)
            .with_noise(env("NOISE", 0.01) as f32)
            .with_seed(env("SEED", 1.0) as u64),
    )
    .unwrap();
    let d_sae = env("DSAE", (parents * (children + 1)) as f64 * 1.5) as usize;
    let config = TrainConfig::new(TopKSaeConfig::new(d_in, d_sae, 2))
        .with_batch_size(256)
        .with_epochs(env("EPOCHS", 40.0) as usize)
        .with_optimizer(AdamConfig::new().with_lr(env("LR", 3e-3)));
    let device = Default::default();
    let data = &planted.set.embeddings;
    let t = train::<TestBackend>(config, data, &device, |_| {}).unwrap();
    let w_dec = to_host_vec(t.model.w_dec.val());
    let latent_of = |dir: usize| {
        let d = &planted.set.directions[dir * d_in..(dir + 1) * d_in];
        (0..d_sae)
            .map(|j| {
                let r = &w_dec[j * d_in..(j + 1) * d_in];
                let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                (r.iter().zip(d).map(|(a, b)| a * b).sum::<f32>() / n, j)
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap()
    };
    let codes = encode_corpus(&t.model, data, &Normalizer::identity(), 512, &device).unwrap();
    let found = families(
        &codes,
        &FamilyConfig {
            min_density: env("MIN_DENSITY", 0.01),
            ..FamilyConfig::default()
        },
    )
    .unwrap();
    let groups: Vec<Vec<usize>> = planted
        .groups
        .iter()
        .map(|(_, ch)| {
            let mut g: Vec<usize> = ch.iter().map(|&c| latent_of(c).1).collect();
            g.sort_unstable();
            g.dedup();
            g
        })
        .collect();
    let (mean, best) = mean_best_jaccard(&groups, &found);
    let cos: Vec<f32> = (0..planted.set.directions.len() / d_in)
        .map(|d| latent_of(d).0)
        .collect();
    eprintln!("best {best:?} mean {mean} cos {cos:?} families {found:?}");
    assert!(mean >= 0.8, "mean best Jaccard {mean}: {best:?}");
}

/// `steer_raw` and `search_normalized` on raw rows give what `steer` and `search` give on a
/// normalised copy of the corpus, for every normalisation.
#[test]
fn raw_steering_and_normalised_search_equal_the_normalised_copy_route() {
    use topk_sae::NormalizationKind;
    let rows = random_rows(60, 6, 11);
    let data = Embeddings::from_vec(rows, 60, 6).unwrap();
    let model = random_model(6, 12, 3, 4);
    let device = Default::default();
    for kind in [
        NormalizationKind::None,
        NormalizationKind::Center,
        NormalizationKind::ScaleToDIn,
    ] {
        let normalizer = Normalizer::fit(kind, &data);
        let mut copy = data.clone();
        copy.normalize(&normalizer);
        let edits = [FeatureEdit::Add {
            latent: 5,
            value: 0.7,
        }];
        let want = analysis::steer(&model, copy.row(3), &edits, &device).unwrap();
        let got = analysis::steer_raw(&model, &normalizer, data.row(3), &edits, &device).unwrap();
        assert_eq!(got, want, "{kind:?}");
        for metric in [Metric::Dot, Metric::Cosine] {
            let want =
                analysis::search::<TestBackend>(&copy, &want.embedding, 7, metric, 16, &device)
                    .unwrap();
            let got = analysis::search_normalized::<TestBackend>(
                &data,
                &normalizer,
                &got.embedding,
                7,
                metric,
                16,
                &device,
            )
            .unwrap();
            assert_eq!(got, want, "{kind:?} {metric:?}");
        }
        let err = analysis::steer_raw(&model, &normalizer, &[0.0; 5], &[], &device).unwrap_err();
        assert!(
            matches!(err, Error::WidthMismatch { actual: 5, .. }),
            "{err}"
        );
    }
}
