//! End-to-end training on the synthetic set, determinism, epochs and normalisation.

use topk_sae::data::{SyntheticConfig, synthetic};
use topk_sae::sae::to_host_vec;
use topk_sae::{AdamConfig, NormalizationKind, TopKSaeConfig, TrainConfig, evaluate, train};

use crate::TestBackend;

fn small_set() -> topk_sae::data::Synthetic {
    synthetic(
        &SyntheticConfig::new()
            .with_rows(4_000)
            .with_d_in(32)
            .with_n_directions(48)
            .with_active(3)
            .with_seed(1),
    )
    .unwrap()
}

fn small_config() -> TrainConfig {
    TrainConfig::new(TopKSaeConfig::new(32, 128, 4))
        .with_batch_size(256)
        .with_epochs(30)
        .with_optimizer(AdamConfig::new().with_lr(2e-3))
}

#[test]
fn training_recovers_planted_directions() {
    let set = small_set();
    let device = Default::default();
    let mut reports = Vec::new();
    let trained = train::<TestBackend>(small_config(), &set.embeddings, &device, |r| {
        reports.push(*r);
    })
    .unwrap();
    // 4000 rows / 256 = 15.6: 16 steps per epoch, the last one partial (160 rows).
    assert_eq!(trained.steps, 30 * 16);
    assert_eq!(reports.len(), 480);
    assert_eq!(reports[15].batch, 4_000 - 15 * 256);
    assert_eq!((reports[15].epoch, reports[16].epoch), (0, 1));
    let metrics = evaluate(
        &trained.model,
        &set.embeddings,
        &trained.normalizer,
        1000,
        &device,
    )
    .unwrap();
    let recovered = set.recovered_fraction(&to_host_vec(trained.model.w_dec.val()), 0.9);
    assert!(metrics.nmse < 0.2, "nmse {}", metrics.nmse);
    assert!(recovered >= 0.9, "recovered {recovered}");
}

#[test]
fn same_seed_same_data_same_weights() {
    let set = synthetic(
        &SyntheticConfig::new()
            .with_rows(600)
            .with_d_in(16)
            .with_n_directions(20),
    )
    .unwrap();
    let config = TrainConfig::new(TopKSaeConfig::new(16, 40, 3))
        .with_batch_size(128)
        .with_epochs(3)
        .with_seed(9);
    let run = |config: TrainConfig| {
        let t = train::<TestBackend>(config, &set.embeddings, &Default::default(), |_| {}).unwrap();
        (
            to_host_vec(t.model.w_enc.val()),
            to_host_vec(t.model.w_dec.val()),
            to_host_vec(t.model.b_dec.val()),
        )
    };
    let a = run(config.clone());
    assert_eq!(a, run(config.clone()));
    assert_ne!(
        a,
        run(config.with_seed(10)),
        "another shuffle seed must give another model"
    );
}

#[test]
fn max_steps_caps_training() {
    let set = synthetic(
        &SyntheticConfig::new()
            .with_rows(500)
            .with_d_in(8)
            .with_n_directions(10),
    )
    .unwrap();
    let config = TrainConfig::new(TopKSaeConfig::new(8, 16, 2))
        .with_batch_size(100)
        .with_epochs(10)
        .with_max_steps(Some(7));
    let t = train::<TestBackend>(config, &set.embeddings, &Default::default(), |_| {}).unwrap();
    assert_eq!(t.steps, 7);
}

#[test]
fn dead_latents_are_counted_in_samples() {
    // With a threshold of 0 samples, latents that did not fire in a batch are dead at once.
    let set = synthetic(
        &SyntheticConfig::new()
            .with_rows(64)
            .with_d_in(8)
            .with_n_directions(6),
    )
    .unwrap();
    let config = TrainConfig::new(TopKSaeConfig::new(8, 64, 1))
        .with_batch_size(64)
        .with_dead_threshold_samples(0);
    let mut dead = Vec::new();
    train::<TestBackend>(config.clone(), &set.embeddings, &Default::default(), |r| {
        dead.push((r.dead_frac, r.loss.aux));
    })
    .unwrap();
    assert!(dead[0].0 > 0.5 && dead[0].1 > 0.0, "{dead:?}");
    // With the default threshold (272,384 samples) nothing is dead after 64.
    let config = config.with_dead_threshold_samples(272_384);
    train::<TestBackend>(config, &set.embeddings, &Default::default(), |r| {
        dead.push((r.dead_frac, r.loss.aux));
    })
    .unwrap();
    assert_eq!(dead[1], (0.0, 0.0));
}

#[test]
fn normalisation_is_fitted_and_kept_with_the_model() {
    let set = synthetic(
        &SyntheticConfig::new()
            .with_rows(300)
            .with_d_in(8)
            .with_n_directions(10),
    )
    .unwrap();
    for kind in [NormalizationKind::Center, NormalizationKind::ScaleToDIn] {
        let config = TrainConfig::new(TopKSaeConfig::new(8, 16, 2))
            .with_batch_size(100)
            .with_normalization(kind);
        let t = train::<TestBackend>(config, &set.embeddings, &Default::default(), |_| {}).unwrap();
        assert_eq!(t.normalizer.kind, kind);
        let mut normalised = set.embeddings.clone();
        normalised.normalize(&t.normalizer);
        let rows = normalised.rows() as f64;
        if kind == NormalizationKind::Center {
            for i in 0..8 {
                let mean: f64 = (0..normalised.rows())
                    .map(|r| f64::from(normalised.row(r)[i]))
                    .sum::<f64>()
                    / rows;
                assert!(mean.abs() < 1e-6, "column {i} mean {mean}");
            }
        } else {
            let msn: f64 = normalised
                .as_slice()
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                / rows;
            assert!((msn - 8.0).abs() < 1e-3, "mean squared norm {msn}");
        }
        // The tensor form applies and inverts the same map.
        let x = crate::tensor(set.embeddings.as_slice(), 8);
        let there = to_host_vec(t.normalizer.apply(x.clone()));
        for (a, b) in there.iter().zip(normalised.as_slice()) {
            assert!((a - b).abs() < 1e-6);
        }
        let back = to_host_vec(t.normalizer.invert(t.normalizer.apply(x)));
        for (a, b) in back.iter().zip(set.embeddings.as_slice()) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}

/// The host and tensor step engines run the same recipe: over a 3-epoch run with AuxK active
/// (a dead threshold of one batch), every step's loss agrees to 1e-4 relative and the trained
/// models' held-out NMSE to 1e-3. (Float sums are ordered differently, so weights drift apart
/// slowly; the gap is measured, not assumed to be zero.)
#[test]
fn step_engines_agree_over_a_short_run() {
    use topk_sae::train::StepEngine;
    let set = small_set();
    let device = Default::default();
    let run = |engine: StepEngine| {
        let mut losses = Vec::new();
        let mut waited = Vec::new();
        let config = small_config()
            .with_epochs(3)
            .with_dead_threshold_samples(256)
            .with_engine(engine);
        let t = train::<TestBackend>(config, &set.embeddings, &device, |r| {
            losses.push((r.loss, r.dead_frac));
            waited.push(r.device_wait);
        })
        .unwrap();
        // Only the tensor engine reads its steps back from the device.
        let any_wait = waited.iter().any(|w| !w.is_zero());
        assert_eq!(
            any_wait,
            engine == StepEngine::Tensor,
            "{engine:?}: {waited:?}"
        );
        let nmse = evaluate(&t.model, &set.embeddings, &t.normalizer, 512, &device)
            .unwrap()
            .nmse;
        (losses, nmse)
    };
    let (host, host_nmse) = run(StepEngine::Host);
    let (tensor, tensor_nmse) = run(StepEngine::Tensor);
    assert_eq!(host.len(), tensor.len());
    assert!(
        host.iter().any(|(l, _)| l.aux > 0.0),
        "AuxK must be exercised"
    );
    for (step, ((h, _), (t, _))) in host.iter().zip(&tensor).enumerate() {
        for (name, a, b) in [
            ("total", h.total, t.total),
            ("recon", h.recon, t.recon),
            ("aux", h.aux, t.aux),
        ] {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1e-3),
                "step {step} {name}: host {a} tensor {b}"
            );
        }
    }
    assert!(
        (host_nmse - tensor_nmse).abs() <= 1e-3,
        "{host_nmse} vs {tensor_nmse}"
    );
}

/// The same seed and data give the same model quality on burn-ndarray (host engine) and on the
/// test backend (burn-wgpu with `--features test-wgpu`: the tensor engine on the GPU path;
/// burn-flex with `--features test-flex`: the host engine fed through Flex's tensors).
#[cfg(any(feature = "test-wgpu", feature = "test-flex"))]
#[test]
fn ndarray_and_the_test_backend_agree_after_a_short_run() {
    type Cpu = topk_sae::backend::NdArray<f32>;
    let set = small_set();
    let config = || small_config().with_epochs(3);
    let cpu_device = Default::default();
    let gpu_device = Default::default();
    let cpu = train::<Cpu>(config(), &set.embeddings, &cpu_device, |_| {}).unwrap();
    let gpu = train::<TestBackend>(config(), &set.embeddings, &gpu_device, |_| {}).unwrap();
    let nmse_cpu = evaluate(
        &cpu.model,
        &set.embeddings,
        &cpu.normalizer,
        512,
        &cpu_device,
    )
    .unwrap()
    .nmse;
    let nmse_gpu = evaluate(
        &gpu.model,
        &set.embeddings,
        &gpu.normalizer,
        512,
        &gpu_device,
    )
    .unwrap()
    .nmse;
    assert!(
        (nmse_cpu - nmse_gpu).abs() <= 1e-3,
        "ndarray {nmse_cpu} vs the test backend {nmse_gpu}"
    );
}

/// On a GPU, `fit` queues each step before it reads the one before back, and works the next
/// step's dead-latent candidates out on the device; a checkpoint due after every step makes it
/// go one step at a time. Both must give the same reports (numbers, epochs, batches, losses,
/// dead fractions, gradient norms) and the same weights, to the bit: a queued step may give
/// AuxK more zero-valued padding latents (its bound on the candidates is looser), which must
/// change no sum. On CPU backends both runs go one step at a time. A dead threshold above
/// 2^30 samples, whose counters `fit` does not keep on the device, takes the path that uploads
/// each step's candidates instead (no latent is dead in so short a run).
#[test]
fn queued_steps_match_one_step_at_a_time() {
    use topk_sae::Trainer;
    use topk_sae::checkpoint::CheckpointPolicy;
    use topk_sae::train::StepEngine;
    let set = small_set();
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let run = |every: Option<u64>, threshold: u64| {
        // 16 steps an epoch (the last of 160 rows), AuxK candidates after two quiet batches.
        let config = small_config()
            .with_epochs(2)
            .with_dead_threshold_samples(threshold)
            .with_engine(StepEngine::Tensor);
        let mut trainer = Trainer::<TestBackend>::new(config, &set.embeddings, &device)
            .unwrap()
            .with_kernels(crate::kernels());
        if let Some(every) = every {
            trainer = trainer.with_checkpoints(CheckpointPolicy::new(dir.path(), every));
        }
        let mut reports = Vec::new();
        let trained = trainer.fit(&set.embeddings, |r| reports.push(*r)).unwrap();
        let weights = [
            to_host_vec(trained.model.w_enc.val()),
            to_host_vec(trained.model.w_dec.val()),
            to_host_vec(trained.model.b_enc.val()),
            to_host_vec(trained.model.b_dec.val()),
        ];
        (reports, weights)
    };
    // Everything but the timings.
    let untimed = |reports: Vec<topk_sae::StepReport>| {
        reports
            .into_iter()
            .map(|r| topk_sae::StepReport {
                device_wait: std::time::Duration::ZERO,
                ..r
            })
            .collect::<Vec<_>>()
    };
    for threshold in [512, (1 << 30) + 1] {
        let (queued, queued_weights) = run(None, threshold);
        let (single, single_weights) = run(Some(1), threshold);
        assert_eq!(queued.len(), 32);
        assert_eq!(
            single.iter().any(|r| r.loss.aux > 0.0),
            threshold == 512,
            "AuxK must run with the threshold of 512 only"
        );
        assert_eq!(untimed(queued), untimed(single), "threshold {threshold}");
        assert!(
            queued_weights == single_weights,
            "threshold {threshold}: the weights differ"
        );
    }
}

/// Which GPU kernels run changes no result beyond float rounding: the same run with every
/// kernel left out, with the defaults and with the opt-in ones added (the loss statistics, a
/// queued step's read issued at once) gives the same losses and weights, AuxK included. On the
/// CPU backends the options change nothing at all.
#[test]
fn kernel_options_change_no_result() {
    use topk_sae::Trainer;
    use topk_sae::backend::KernelOptions;
    use topk_sae::train::StepEngine;
    let set = small_set();
    let device = Default::default();
    let run = |options: KernelOptions| {
        // Two epochs of 16 steps, AuxK candidates after two quiet batches.
        let config = small_config()
            .with_epochs(2)
            .with_dead_threshold_samples(512)
            .with_engine(StepEngine::Tensor);
        let trainer = Trainer::<TestBackend>::new(config, &set.embeddings, &device)
            .unwrap()
            .with_kernels(options);
        let mut losses = Vec::new();
        let trained = trainer
            .fit(&set.embeddings, |r| losses.push((r.loss.recon, r.loss.aux)))
            .unwrap();
        assert_eq!(trained.model.kernels(), options);
        (losses, to_host_vec(trained.model.w_dec.val()))
    };
    let mut all = KernelOptions::default();
    all.loss = true;
    all.issued_step_reads = true;
    let (want_losses, want_w) = run(KernelOptions::none());
    assert!(want_losses.iter().any(|l| l.1 > 0.0), "AuxK must run");
    for options in [KernelOptions::default(), all] {
        let (losses, w) = run(options);
        assert_eq!(losses.len(), want_losses.len());
        for (got, want) in losses.iter().zip(&want_losses) {
            approx::assert_relative_eq!(got.0, want.0, max_relative = 1e-4);
            approx::assert_relative_eq!(got.1, want.1, max_relative = 1e-3, epsilon = 1e-6);
        }
        for (a, b) in w.iter().zip(&want_w) {
            approx::assert_abs_diff_eq!(a, b, epsilon = 1e-4);
        }
    }
}

/// A last batch of one row has no variance for the loss to divide by: it joins the batch
/// before it, on both engines, and `total_steps` counts the batches `fit` takes. Other partial
/// batches are kept as they are.
#[test]
fn an_epochs_last_row_joins_the_batch_before() {
    use topk_sae::train::StepEngine;
    let set = synthetic(
        &SyntheticConfig::new()
            .with_rows(9)
            .with_d_in(8)
            .with_n_directions(10)
            .with_seed(3),
    )
    .unwrap();
    for engine in [StepEngine::Host, StepEngine::Tensor] {
        for (batch, sizes) in [(4, vec![4, 5, 4, 5]), (8, vec![9, 9]), (3, vec![3; 6])] {
            let config = TrainConfig::new(TopKSaeConfig::new(8, 16, 2))
                .with_batch_size(batch)
                .with_epochs(2)
                .with_engine(engine);
            assert_eq!(config.total_steps(9), sizes.len() as u64, "batch {batch}");
            let mut seen = Vec::new();
            let trained = train::<TestBackend>(config, &set.embeddings, &Default::default(), |r| {
                assert!(r.loss.total.is_finite(), "{engine:?} batch {batch}: {r:?}");
                seen.push(r.batch);
            })
            .unwrap();
            assert_eq!(seen, sizes, "{engine:?} batch {batch}");
            assert_eq!(trained.steps, sizes.len() as u64);
        }
    }
    // A remainder of two rows is a batch of its own.
    let config = TrainConfig::new(TopKSaeConfig::new(8, 16, 2)).with_batch_size(4);
    assert_eq!(config.total_steps(10), 3);
    assert_eq!(config.total_steps(1025), 256);
    let config = config.with_batch_size(1024);
    assert_eq!(config.total_steps(1025), 1);
    assert_eq!(config.total_steps(2049), 2);
}
