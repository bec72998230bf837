//! Criterion benches: top-k alone, encode, forward and a full training step, at the sizes in the
//! bench ids (`d_in x d_sae, k, batch`), on burn-ndarray (group `sae`) and, with `--features
//! flex`, on burn-flex (group `sae_flex`); co-occurrence counts and feature families over a
//! corpus's codes. Inputs are built outside the timer; every timed closure reads its result back
//! to the host, so lazy or asynchronous backends are synchronised.

// criterion_main! writes an undocumented `main`.
#![allow(missing_docs)]

use burn::tensor::backend::Backend;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use topk_sae::sae::to_host_vec;
use topk_sae::train::StepEngine;
use topk_sae::{TopKSaeConfig, TrainConfig, Trainer};

const SIZES: [(usize, usize, usize, usize); 2] = [(384, 3072, 32, 1024), (1536, 12288, 64, 1024)];

fn rows(n: usize, d: usize) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn input<B: Backend>(batch: usize, d_in: usize) -> burn::tensor::Tensor<B, 2> {
    burn::tensor::Tensor::from_data(
        burn::tensor::TensorData::new(rows(batch, d_in), [batch, d_in]),
        &Default::default(),
    )
}

/// `out = a @ b_t^T` (`a`: `[m, k]`, `b_t`: `[n, k]`) through ndarray, like the host engine.
fn gemm(a: &[f32], b_t: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    let a = ndarray::ArrayView2::from_shape((m, k), a).expect("a is [m, k]");
    let b = ndarray::ArrayView2::from_shape((n, k), b_t).expect("b_t is [n, k]");
    let mut c = ndarray::ArrayViewMut2::from_shape((m, n), out).expect("out is [m, n]");
    ndarray::linalg::general_mat_mul(1.0, &a, &b.t(), 0.0, &mut c);
}

fn benches(c: &mut Criterion) {
    backend_benches::<topk_sae::backend::NdArray<f32>>(c, "sae", true);
    #[cfg(feature = "flex")]
    backend_benches::<topk_sae::backend::Flex>(c, "sae_flex", false);
}

/// The model's benches on backend `B`, in group `name`; `host_kernels`: also the ones that do not
/// depend on the backend (the GEMMs and the top-k on host memory).
fn backend_benches<B: Backend>(c: &mut Criterion, name: &str, host_kernels: bool) {
    let device = Default::default();
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    if host_kernels {
        // This machine's practical peak: a large square product (2 * 2048^3 FLOP per iteration).
        let (a, b) = (rows(2048, 2048), rows(2048, 2048));
        let mut out = vec![0f32; 2048 * 2048];
        group.bench_function("gemm_square_2048", |bench| {
            bench.iter(|| gemm(&a, &b, 2048, 2048, 2048, &mut out));
        });
    }
    for (d_in, d_sae, k, batch) in SIZES {
        let id = format!("{d_in}x{d_sae}_k{k}_b{batch}");
        let model = TopKSaeConfig::new(d_in, d_sae, k).init::<B>(&device);
        let x = input::<B>(batch, d_in);
        if host_kernels {
            // The encoder product alone, as the host engine runs it: the one-GEMM floor of a
            // step.
            let pre = rows(batch, d_sae);
            let w_t = rows(d_sae, d_in);
            let xs = rows(batch, d_in);
            let mut out = vec![0f32; batch * d_sae];
            group.bench_function(BenchmarkId::new("gemm_encoder", &id), |b| {
                b.iter(|| gemm(&xs, &w_t, batch, d_in, d_sae, &mut out));
            });
            group.bench_function(BenchmarkId::new("topk", &id), |b| {
                b.iter(|| topk_sae::topk::topk_rows(&pre, d_sae, k, None));
            });
        }
        group.bench_function(BenchmarkId::new("encode", &id), |b| {
            b.iter(|| to_host_vec(model.encode_topk(x.clone()).values));
        });
        let corpus = topk_sae::Embeddings::from_vec(rows(4 * batch, d_in), 4 * batch, d_in)
            .expect("finite rows");
        let identity = topk_sae::Normalizer::identity();
        group.bench_function(BenchmarkId::new("encode_corpus_4x_batch", &id), |b| {
            b.iter(|| {
                topk_sae::analysis::encode_corpus(&model, &corpus, &identity, 4 * batch, &device)
                    .expect("valid corpus")
            });
        });
        group.bench_function(BenchmarkId::new("forward", &id), |b| {
            b.iter(|| to_host_vec(model.forward(x.clone()).reconstruction));
        });
        for engine in [StepEngine::Host, StepEngine::Tensor] {
            let config = TrainConfig::new(TopKSaeConfig::new(d_in, d_sae, k)).with_engine(engine);
            let mut trainer = Trainer::from_model(
                config,
                model.clone(),
                topk_sae::Normalizer::identity(),
                &device,
            )
            .expect("valid config");
            let name = format!("train_step_{engine:?}").to_lowercase();
            group.bench_function(BenchmarkId::new(name, &id), |b| {
                b.iter(|| {
                    let report = trainer.step(x.clone()).expect("finite loss");
                    // The host engine has finished when `step` returns; the tensor engine's
                    // parameters are read back so that lazy backends finish too.
                    if engine == StepEngine::Tensor {
                        to_host_vec(trainer.model().b_dec.val());
                    }
                    report
                });
            });
        }
    }
    group.finish();
}

/// Codes of `rows` documents with `k` distinct latents each out of `d_sae`, drawn with a
/// Zipf-like frequency (latent `j` about as often as `1 / j`), like a trained SAE's.
fn zipf_codes(rows: usize, k: usize, d_sae: usize) -> topk_sae::analysis::CorpusCodes {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut indices = Vec::with_capacity(rows * k);
    for _ in 0..rows {
        let start = indices.len();
        while indices.len() - start < k {
            let j = ((d_sae as f64).powf(rng.random::<f64>()) as u32).min(d_sae as u32 - 1);
            if !indices[start..].contains(&j) {
                indices.push(j);
            }
        }
    }
    topk_sae::analysis::CorpusCodes {
        rows,
        k,
        d_sae,
        values: vec![1.0; rows * k],
        indices,
    }
}

/// Feature families over a corpus the size of the development set's larger cousins: 50,000
/// documents of a saerch-sized SAE (`k` 64, `d_sae` 9216).
fn analysis_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("analysis");
    group.sample_size(10);
    let (rows, k, d_sae) = (50_000, 64, 9216);
    let codes = zipf_codes(rows, k, d_sae);
    let id = format!("docs{rows}_k{k}_dsae{d_sae}");
    group.bench_function(BenchmarkId::new("cooccurrence", &id), |b| {
        b.iter(|| topk_sae::analysis::cooccurrence(&codes).pair_count());
    });
    let config = topk_sae::analysis::FamilyConfig::default();
    group.bench_function(BenchmarkId::new("families", &id), |b| {
        b.iter(|| topk_sae::analysis::families(&codes, &config).expect("valid config"));
    });
    group.finish();
}

criterion_group!(sae, benches, analysis_benches);
criterion_main!(sae);
