//! One integration-test binary (burn links once). Each module tests one topic.

// Exact float comparisons here check values that are copied, not computed.
#![allow(clippy::float_cmp)]

mod analysis;
mod checkpoints;
mod errors;
mod forward;
mod gradients;
mod outputs;
mod properties;
mod reference;
mod training;

/// Backend the integration tests run on: burn-ndarray, burn-wgpu with `--features test-wgpu`, or
/// burn-flex with `--features test-flex`.
#[cfg(not(any(feature = "test-wgpu", feature = "test-flex")))]
pub type TestBackend = topk_sae::backend::NdArray<f32>;
/// Backend the integration tests run on: burn-ndarray, burn-wgpu with `--features test-wgpu`, or
/// burn-flex with `--features test-flex`.
#[cfg(feature = "test-wgpu")]
pub type TestBackend = topk_sae::backend::Wgpu;
/// Backend the integration tests run on: burn-ndarray, burn-wgpu with `--features test-wgpu`, or
/// burn-flex with `--features test-flex`.
#[cfg(all(feature = "test-flex", not(feature = "test-wgpu")))]
pub type TestBackend = topk_sae::backend::Flex;

/// The GPU kernel options the tests run with: the defaults, with the opt-in kernels added when
/// `TOPK_SAE_DEVICE_LOSS=1` (the loss statistics) or `TOPK_SAE_DEVICE_STEP_READ=1` (a queued
/// step's read issued at once) are set, as CI's lavapipe run does. These variables are the
/// tests' own: the library reads none.
pub fn kernels() -> topk_sae::backend::KernelOptions {
    let on = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    let mut options = topk_sae::backend::KernelOptions::default();
    options.loss = on("TOPK_SAE_DEVICE_LOSS");
    options.issued_step_reads = on("TOPK_SAE_DEVICE_STEP_READ");
    options
}

/// A small model with random (seeded) weights and a non-zero `b_enc`/`b_dec`, so every term of
/// the forward pass matters, with the tests' [`kernels`].
pub fn random_model(
    d_in: usize,
    d_sae: usize,
    k: usize,
    seed: u64,
) -> topk_sae::TopKSae<TestBackend> {
    use burn::tensor::{Distribution, Tensor};
    let device = Default::default();
    let model = topk_sae::TopKSaeConfig::new(d_in, d_sae, k)
        .with_seed(seed)
        .init::<TestBackend>(&device);
    <TestBackend as burn::tensor::backend::Backend>::seed(&device, seed);
    let b_enc = Tensor::random([d_sae], Distribution::Uniform(-0.1, 0.1), &device);
    let b_dec = Tensor::random([d_in], Distribution::Uniform(-0.2, 0.2), &device);
    topk_sae::TopKSae::from_parts(model.w_enc.val(), b_enc, model.w_dec.val(), b_dec, k)
        .with_kernels(kernels())
}

/// `model` on the test backend, with the tests' [`kernels`]: for tests whose subject is what a
/// trained model does (search, steering), trained on burn-ndarray where training on the test
/// backend would only add minutes on CI's software GPU (training itself is compared across
/// backends in `training`).
pub fn on_test_backend(
    model: &topk_sae::TopKSae<topk_sae::backend::NdArray<f32>>,
) -> topk_sae::TopKSae<TestBackend> {
    use burn::tensor::Tensor;
    let device = Default::default();
    let to2 = |t: Tensor<topk_sae::backend::NdArray<f32>, 2>| {
        Tensor::<TestBackend, 2>::from_data(t.into_data(), &device)
    };
    let to1 = |t: Tensor<topk_sae::backend::NdArray<f32>, 1>| {
        Tensor::<TestBackend, 1>::from_data(t.into_data(), &device)
    };
    topk_sae::TopKSae::from_parts(
        to2(model.w_enc.val()),
        to1(model.b_enc.val()),
        to2(model.w_dec.val()),
        to1(model.b_dec.val()),
        model.k(),
    )
    .with_kernels(kernels())
}

/// `rows x d_in` standard-normal values, seeded.
pub fn random_rows(rows: usize, d_in: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..rows * d_in)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect()
}

/// Uploads a row-major buffer as a `[rows, d_in]` tensor.
pub fn tensor(data: &[f32], d_in: usize) -> burn::tensor::Tensor<TestBackend, 2> {
    burn::tensor::Tensor::from_data(
        burn::tensor::TensorData::new(data.to_vec(), [data.len() / d_in, d_in]),
        &Default::default(),
    )
}
