//! One test for every error path a user can hit: bad files, bad data, bad configs.

use std::io::Write;

use topk_sae::{Embeddings, Error, TopKSaeConfig, TrainConfig, Trainer};

use crate::TestBackend;

fn npy_bytes(descr: &str, shape: &str, fortran: bool, data: &[u8]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn reads_f32_f16_and_f64_npy() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "a.npy",
        &npy_bytes(
            "<f4",
            "(2, 3)",
            false,
            &f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        ),
    );
    let e = Embeddings::from_npy(&p).unwrap();
    assert_eq!(
        (e.rows(), e.d_in(), e.row(1)),
        (2, 3, &[4.0f32, 5.0, 6.0][..])
    );
    let halfs: Vec<u8> = [1.0f32, -2.5, 0.125, 8.0]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let p = write(&dir, "h.npy", &npy_bytes("<f2", "(2, 2)", false, &halfs));
    assert_eq!(
        Embeddings::from_npy(&p).unwrap().as_slice(),
        &[1.0, -2.5, 0.125, 8.0]
    );
    // float64, either byte order, rounded to the nearest float32.
    let doubles = [0.1f64, -3.0, 1e-3, 2.5e10];
    let rounded: Vec<f32> = doubles.iter().map(|&v| v as f32).collect();
    let le: Vec<u8> = doubles.iter().flat_map(|v| v.to_le_bytes()).collect();
    let be: Vec<u8> = doubles.iter().flat_map(|v| v.to_be_bytes()).collect();
    for (name, descr, bytes) in [("d.npy", "<f8", le), ("dbe.npy", ">f8", be)] {
        let p = write(&dir, name, &npy_bytes(descr, "(2, 2)", false, &bytes));
        assert_eq!(
            Embeddings::from_npy(&p).unwrap().as_slice(),
            &rounded[..],
            "{name}"
        );
    }
    // Round trip through our writer.
    let out = dir.path().join("out.npy");
    e.write_npy(&out).unwrap();
    assert_eq!(Embeddings::from_npy(&out).unwrap().as_slice(), e.as_slice());
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let err = Embeddings::from_npy("/nonexistent/emb.npy").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/emb.npy"));
}

#[test]
fn garbage_file_is_a_format_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "bad.npy", b"this is not numpy at all, just text");
    let err = Embeddings::from_npy(&p).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    assert!(err.to_string().contains("bad.npy"));
}

#[test]
fn truncated_file_is_a_format_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "t.npy",
        &npy_bytes("<f4", "(1000, 3)", false, &f32_bytes(&[1.0, 2.0])),
    );
    let err = Embeddings::from_npy(&p).unwrap_err();
    assert!(
        matches!(err, Error::Format { ref reason, .. } if reason.contains("truncated")),
        "{err:?}"
    );
}

#[test]
fn other_dtypes_orders_and_ranks_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "c8.npy",
            npy_bytes("<c8", "(1, 2)", false, &[0; 16]),
            "dtype",
        ),
        (
            "f8_too_large.npy",
            npy_bytes(
                "<f8",
                "(2, 2)",
                false,
                &[1.0f64, 2.0, 3.0, -1e300]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
            "row 1 holds -1e300, beyond float32's range",
        ),
        (
            "i4.npy",
            npy_bytes("<i4", "(1, 2)", false, &[0; 8]),
            "dtype",
        ),
        (
            "fortran.npy",
            npy_bytes("<f4", "(2, 2)", true, &[0; 16]),
            "Fortran",
        ),
        (
            "rank1.npy",
            npy_bytes("<f4", "(4,)", false, &[0; 16]),
            "2-D",
        ),
    ];
    for (name, bytes, needle) in cases {
        let err = Embeddings::from_npy(write(&dir, name, &bytes)).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }
}

#[test]
fn nan_row_is_reported_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = vec![0.5f32; 12];
    v[7] = f32::NAN;
    let p = write(
        &dir,
        "nan.npy",
        &npy_bytes("<f4", "(4, 3)", false, &f32_bytes(&v)),
    );
    let err = Embeddings::from_npy(&p).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFinite {
                row: 2,
                what: "NaN",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 2 of") && err.to_string().contains("nan.npy"));
    let err = Embeddings::from_vec(vec![1.0, f32::INFINITY], 1, 2).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFinite {
                row: 0,
                what: "an infinite value",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn empty_data_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for (name, shape, want) in [
        ("empty.npy", "(0, 3)", (0, 3)),
        ("narrow.npy", "(5, 0)", (5, 0)),
    ] {
        let p = write(&dir, name, &npy_bytes("<f4", shape, false, &[]));
        let err = Embeddings::from_npy(&p).unwrap_err();
        assert!(
            matches!(err, Error::EmptyData { rows, cols, .. } if (rows, cols) == want),
            "{err:?}"
        );
        let message = format!(
            "{name} holds no data: its shape is [{}, {}]",
            want.0, want.1
        );
        assert!(err.to_string().ends_with(&message), "{err}");
    }
    assert!(matches!(
        Embeddings::from_vec(vec![], 0, 3).unwrap_err(),
        Error::EmptyData { .. }
    ));
    assert!(matches!(
        Embeddings::from_vec(vec![1.0; 5], 2, 3).unwrap_err(),
        Error::ShapeMismatch { .. }
    ));
}

#[test]
fn wrong_width_is_rejected_with_both_widths() {
    let data = Embeddings::from_vec(vec![0.1; 20], 4, 5).unwrap();
    let config = TrainConfig::new(TopKSaeConfig::new(6, 12, 2));
    let err = Trainer::<TestBackend>::new(config, &data, &Default::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WidthMismatch {
                expected: 6,
                actual: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "input has width 5, but the model expects d_in = 6"
    );
}

/// A normaliser that does not fit the model (built by hand or read from elsewhere) is an error
/// from every function that applies one, not a panic half-way through (or, for the SAELens
/// export, weights folded with the wrong mean).
#[test]
fn a_normaliser_that_does_not_fit_the_model_is_an_error() {
    use topk_sae::{NormalizationKind, Normalizer, analysis, evaluate};
    let device = Default::default();
    let model = crate::random_model(4, 8, 2, 1);
    let data = Embeddings::from_vec(crate::random_rows(6, 4, 2), 6, 4).unwrap();
    let cases = [
        (
            Normalizer {
                kind: NormalizationKind::Center,
                mean: vec![0.0; 3],
                scale: 1.0,
            },
            "invalid config: normalizer.mean (3 values) must hold d_in = 4 values",
        ),
        (
            Normalizer {
                kind: NormalizationKind::Center,
                mean: vec![0.0, f32::NAN, 0.0, 0.0],
                scale: 1.0,
            },
            "invalid config: normalizer.mean (entry 1 = NaN) must be finite",
        ),
        (
            Normalizer {
                kind: NormalizationKind::ScaleToDIn,
                mean: vec![],
                scale: -2.0,
            },
            "invalid config: normalizer.scale (-2) must be finite and > 0",
        ),
    ];
    for (normalizer, want) in cases {
        assert_eq!(normalizer.check(4).unwrap_err().to_string(), want);
        let err = evaluate(&model, &data, &normalizer, 4, &device).unwrap_err();
        assert_eq!(err.to_string(), want);
        let err = analysis::encode_corpus(&model, &data, &normalizer, 4, &device).unwrap_err();
        assert_eq!(err.to_string(), want);
        let dir = tempfile::tempdir().unwrap();
        let err = topk_sae::checkpoint::export_saelens(dir.path().join("out"), &model, &normalizer)
            .unwrap_err();
        assert_eq!(err.to_string(), want);
        let config = TrainConfig::new(TopKSaeConfig::new(4, 8, 2));
        let err = Trainer::from_model(config, model.clone(), normalizer, &device).unwrap_err();
        assert_eq!(err.to_string(), want);
    }
    for kind in [
        NormalizationKind::None,
        NormalizationKind::Center,
        NormalizationKind::ScaleToDIn,
    ] {
        Normalizer::fit(kind, &data).check(4).unwrap();
    }
}

/// NaN or infinite queries, steering values and weights are errors: a NaN query would otherwise
/// rank arbitrary documents first with NaN scores.
#[test]
fn non_finite_queries_and_edits_are_errors() {
    use topk_sae::analysis::{self, FeatureEdit, Metric};
    let device = Default::default();
    let model = crate::random_model(4, 8, 2, 1);
    let corpus = Embeddings::from_vec(crate::random_rows(6, 4, 2), 6, 4).unwrap();
    let good = [0.1f32, 0.2, 0.3, 0.4];
    let mut queries = good.repeat(3);
    queries[2 * 4 + 1] = f32::NAN;
    let err =
        analysis::search::<TestBackend>(&corpus, &queries, 3, Metric::Dot, 4, &device).unwrap_err();
    assert_eq!(err.to_string(), "row 2 of queries holds NaN");
    let inf_query = [0.1, f32::INFINITY, 0.3, 0.4];
    let err = analysis::steer(&model, &inf_query, &[], &device).unwrap_err();
    assert_eq!(err.to_string(), "row 0 of query holds an infinite value");
    let err = analysis::add_decoder_rows(&model, &inf_query, &[]).unwrap_err();
    assert_eq!(err.to_string(), "row 0 of query holds an infinite value");
    for edit in [
        FeatureEdit::Set {
            latent: 1,
            value: f32::NAN,
        },
        FeatureEdit::Add {
            latent: 1,
            value: f32::NEG_INFINITY,
        },
        FeatureEdit::Scale {
            latent: 1,
            factor: f32::INFINITY,
        },
    ] {
        let err = analysis::steer(&model, &good, &[edit], &device).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { name: "edit", .. }),
            "{edit:?}: {err:?}"
        );
    }
    let err = analysis::add_decoder_rows(&model, &good, &[(1, f32::NAN)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid argument: weight (NaN) must be finite"
    );
    let mut larger = good.repeat(2);
    larger[5] = f32::NAN;
    let err = analysis::match_features::<TestBackend>(&larger, &good, 4, &device).unwrap_err();
    assert_eq!(err.to_string(), "row 1 of larger holds NaN");
    // The finite versions of the same calls work.
    assert_eq!(
        analysis::search::<TestBackend>(&corpus, &good.repeat(3), 3, Metric::Dot, 4, &device)
            .unwrap()
            .len(),
        3
    );
    analysis::steer(
        &model,
        &good,
        &[FeatureEdit::Add {
            latent: 1,
            value: 0.5,
        }],
        &device,
    )
    .unwrap();
}

#[test]
fn k_zero_and_k_above_d_sae_are_invalid() {
    let err = TopKSaeConfig::new(8, 16, 0).validate().unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfig { field: "k", .. }),
        "{err:?}"
    );
    let err = TopKSaeConfig::new(8, 16, 40)
        .try_init::<TestBackend>(&Default::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid config: k (40) must be <= d_sae (16)"
    );
}

#[test]
fn every_config_field_is_checked() {
    let base = || TrainConfig::new(TopKSaeConfig::new(8, 16, 2));
    let cases: Vec<(TrainConfig, &str)> = vec![
        (TrainConfig::new(TopKSaeConfig::new(0, 16, 2)), "d_in"),
        (TrainConfig::new(TopKSaeConfig::new(8, 0, 2)), "d_sae"),
        (
            TrainConfig::new(TopKSaeConfig::new(8, 16, 2).with_b_dec_init_rows(0)),
            "b_dec_init_rows",
        ),
        (base().with_batch_size(0), "batch_size"),
        (base().with_batch_size(1), "batch_size"),
        (base().with_epochs(0), "epochs"),
        (base().with_max_steps(Some(0)), "max_steps"),
        (base().with_clip_grad_norm(Some(-1.0)), "clip_grad_norm"),
        (
            base().with_optimizer(topk_sae::AdamConfig::new().with_lr(0.0)),
            "optimizer.lr",
        ),
        (
            base().with_optimizer(topk_sae::AdamConfig::new().with_beta_1(1.0)),
            "optimizer.beta_1",
        ),
        (
            base().with_optimizer(topk_sae::AdamConfig::new().with_beta_2(-0.1)),
            "optimizer.beta_2",
        ),
        (
            base().with_optimizer(topk_sae::AdamConfig::new().with_epsilon(0.0)),
            "optimizer.epsilon",
        ),
        (
            base().with_loss(topk_sae::SaeLossConfig::new().with_k_aux(Some(17))),
            "k_aux",
        ),
        (
            base().with_loss(topk_sae::SaeLossConfig::new().with_aux_coef(f32::NAN)),
            "aux_coef",
        ),
        (
            base().with_loss(topk_sae::SaeLossConfig::new().with_multi_k_factor(0)),
            "multi_k_factor",
        ),
        (
            base().with_loss(topk_sae::SaeLossConfig::new().with_multi_k_coef(-1.0)),
            "multi_k_coef",
        ),
    ];
    for (config, field) in cases {
        match config.validate() {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
    }
    assert!(base().validate().is_ok());
}

/// The synthetic generators check their noise and weights: an infinite noise level used to panic
/// inside the normal distribution, and a NaN or negative one was silently taken as 0.
#[test]
fn synthetic_configs_are_checked() {
    use topk_sae::data::{FamilySyntheticConfig, SyntheticConfig, synthetic, synthetic_families};
    let small = || {
        SyntheticConfig::new()
            .with_rows(10)
            .with_d_in(8)
            .with_n_directions(4)
    };
    for (config, field) in [
        (small().with_noise(f32::INFINITY), "noise"),
        (small().with_noise(f32::NAN), "noise"),
        (small().with_noise(-0.1), "noise"),
        (small().with_mean_weight(f32::NAN), "mean_weight"),
        (small().with_mean_weight(-1.0), "mean_weight"),
    ] {
        match synthetic(&config) {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!(
                "{field}: expected InvalidConfig, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    assert!(synthetic(&small()).is_ok());
    let families = || FamilySyntheticConfig::new().with_rows(10).with_d_in(64);
    for noise in [f32::INFINITY, f32::NAN, -0.1] {
        match synthetic_families(&families().with_noise(noise)) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "noise"),
            other => panic!(
                "noise {noise}: expected InvalidConfig, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    assert!(synthetic_families(&families()).is_ok());
}

/// The loss divides by a batch's variance: data of one row, or of copies of one row, is an
/// error naming it before any step (it used to stop at step 1 as a NaN loss), and so is a
/// one-row batch given to `Trainer::step`.
#[test]
fn data_without_variance_is_rejected_before_training() {
    let device = Default::default();
    let config = || TrainConfig::new(TopKSaeConfig::new(4, 8, 2)).with_batch_size(4);
    let row = [0.5f32, -1.0, 2.0, 0.25];
    let one = Embeddings::from_vec(row.to_vec(), 1, 4).unwrap();
    let copies = Embeddings::from_vec(row.repeat(6), 6, 4).unwrap();
    for (data, what) in [(&one, "1 row"), (&copies, "6 rows")] {
        let trainer = Trainer::<TestBackend>::new(config(), data, &device).unwrap();
        match trainer.fit(data, |_| panic!("no step may run")) {
            Err(Error::InvalidArgument { name, value, .. }) => {
                assert_eq!((name, value.as_str()), ("data", what));
            }
            other => panic!(
                "{what}: expected InvalidArgument, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    let varied = Embeddings::from_vec(crate::random_rows(6, 4, 2), 6, 4).unwrap();
    let trainer = Trainer::<TestBackend>::new(config(), &varied, &device).unwrap();
    assert_eq!(trainer.fit(&varied, |_| {}).unwrap().steps, 2);

    let mut trainer = Trainer::<TestBackend>::new(config(), &varied, &device).unwrap();
    let err = trainer
        .step(crate::tensor(&crate::random_rows(1, 4, 1), 4))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "x", .. }),
        "{err:?}"
    );
    assert_eq!(trainer.steps_done(), 0);
}

#[test]
fn nan_loss_stops_training_naming_the_step() {
    // A model whose weights hold NaN produces a NaN loss at the first step.
    let device = Default::default();
    let model = TopKSaeConfig::new(4, 8, 2).init::<TestBackend>(&device);
    let model = topk_sae::TopKSae::from_parts(
        model.w_enc.val().mul_scalar(f32::NAN),
        model.b_enc.val(),
        model.w_dec.val(),
        model.b_dec.val(),
        2,
    );
    let config = TrainConfig::new(TopKSaeConfig::new(4, 8, 2));
    let mut trainer =
        Trainer::from_model(config, model, topk_sae::Normalizer::identity(), &device).unwrap();
    let err = trainer
        .step(crate::tensor(&crate::random_rows(5, 4, 1), 4))
        .unwrap_err();
    assert!(matches!(err, Error::Diverged { step: 1, .. }), "{err:?}");
    assert_eq!(trainer.steps_done(), 0);
}

#[test]
fn malformed_npy_headers_are_rejected_without_hanging_or_panicking() {
    // Found by fuzzing: headers on which a general Python-literal parser backtracks for minutes.
    let dir = tempfile::tempdir().unwrap();
    let long_escapes = format!(
        "{{'descr': '<f4{}', 'fortran_order': False, 'shape': (1, 1), }}",
        "\\\\'".repeat(2000)
    );
    let cases = [
        long_escapes,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), 'extra': 1}".to_owned(),
        "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}".to_owned(),
        format!("{{'descr': '<f4', 'shape': ({}), }}", "(".repeat(3000)),
    ];
    // Found by fuzzing: a shape whose element count overflows u64 made npyz panic.
    let overflow = "{'descr': '<f4', 'fortran_order': False, 'shape': ( 000000000000000000000000014768985186602436379,6, )}".to_owned();
    let cases: Vec<String> = cases.into_iter().chain([overflow]).collect();
    for (i, header) in cases.iter().enumerate() {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let err = Embeddings::from_npy(write(&dir, &format!("h{i}.npy"), &bytes)).unwrap_err();
        assert!(
            matches!(err, Error::Format { ref reason, .. } if reason.starts_with("not a valid .npy file")),
            "case {i}: {err}"
        );
    }
}

/// burn-wgpu panics inside cubecl on a buffer larger than the device's largest storage binding
/// (at most 4 GiB on any wgpu device), after which the process hung or ran out of memory. A
/// model's weights and a training batch's pre-activations that would be larger are refused
/// before anything is allocated, naming the field to lower. (Evaluation and encoding make their
/// chunks smaller instead: `metrics::wgpu_tests`.)
#[cfg(feature = "test-wgpu")]
#[test]
fn tensors_past_the_gpus_largest_buffer_are_refused() {
    let device = Default::default();
    let too_large = |err: Error, want: &str| match err {
        Error::InvalidConfig { field, reason, .. } => {
            assert_eq!(field, want, "{reason}");
            assert!(reason.contains("too large for this GPU"), "{reason}");
        }
        other => panic!("expected InvalidConfig naming {want}, got {other:?}"),
    };
    // Weights [2, 2^29 + 1]: just over 4 GiB.
    let err = TopKSaeConfig::new(2, (1 << 29) + 1, 1)
        .try_init::<TestBackend>(&device)
        .unwrap_err();
    too_large(err, "d_sae");

    // Weights [2, 2^20] fit; pre-activations [1025, 2^20] (batches of 1,024 where an epoch's
    // last row joins the batch before it) are just over 4 GiB.
    let rows = 1_025;
    let data = Embeddings::from_vec(crate::random_rows(rows, 2, 0), rows, 2).unwrap();
    let config = TrainConfig::new(TopKSaeConfig::new(2, 1 << 20, 1)).with_batch_size(1_024);
    let trainer = Trainer::<TestBackend>::new(config.clone(), &data, &device).unwrap();
    too_large(
        trainer
            .fit(&data, |_| panic!("no step may run"))
            .map(|_| ())
            .unwrap_err(),
        "batch_size",
    );
    let mut trainer = Trainer::<TestBackend>::new(config, &data, &device).unwrap();
    too_large(
        trainer.step(crate::tensor(data.as_slice(), 2)).unwrap_err(),
        "x",
    );
    assert_eq!(trainer.steps_done(), 0);
}

/// burn-wgpu panics on its first tensor where it finds no adapter; `wgpu_adapter` says so first.
/// The default device finds one wherever these tests run (lavapipe in CI), and a device that no
/// machine has is refused, listing what there is.
#[cfg(feature = "test-wgpu")]
#[test]
fn wgpu_adapter_finds_the_default_and_refuses_a_missing_one() {
    use topk_sae::backend::wgpu_adapter;

    let adapter = wgpu_adapter(&Default::default()).unwrap();
    assert!(!adapter.name.is_empty(), "{adapter:?}");
    match wgpu_adapter(&topk_sae::backend::WgpuDevice::DiscreteGpu(1_000)) {
        Err(Error::NoDevice { wanted, found, .. }) => {
            assert!(
                wanted.ends_with("discrete GPU number 1000 (counting from 0)"),
                "{wanted}"
            );
            assert!(found.contains(&adapter.name), "{found} lacks {adapter:?}");
        }
        other => panic!("expected NoDevice, got {other:?}"),
    }
}

/// On a machine without a GPU driver (here: the Vulkan loader pointed at no driver, in a child
/// process of this test binary so the other tests keep theirs), `wgpu_adapter` is an error that
/// says what to install, not burn-wgpu's panic.
#[cfg(all(feature = "test-wgpu", not(target_os = "macos")))]
#[test]
fn no_gpu_driver_is_an_error_not_a_panic() {
    const CHILD: &str = "TOPK_SAE_TEST_NO_DRIVER";
    if std::env::var_os(CHILD).is_some() {
        match topk_sae::backend::wgpu_adapter(&Default::default()) {
            Err(Error::NoDevice { found, hint, .. }) => {
                assert_eq!(found, "none");
                assert!(hint.contains("mesa-vulkan-drivers"), "{hint}");
            }
            other => panic!("expected NoDevice, got {other:?}"),
        }
        return;
    }
    let name = "errors::no_gpu_driver_is_an_error_not_a_panic";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads", "1"])
        .env(CHILD, "1")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A folder given as a `.npy` file says so; row subsets check their indices and ranges.
#[test]
fn folders_and_row_subsets_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Embeddings::from_npy(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::Format { .. }) && err.to_string().contains("is a folder"),
        "{err}"
    );
    let data = Embeddings::from_vec((0..20).map(|v| v as f32).collect(), 5, 4).unwrap();
    assert_eq!(data.select_rows(&[4, 4, 0]).unwrap().rows(), 3);
    assert_eq!(
        data.slice_rows(1..3).unwrap().as_slice(),
        &data.as_slice()[4..12]
    );
    for err in [
        data.select_rows(&[5]).unwrap_err(),
        data.slice_rows(2..6).unwrap_err(),
        data.slice_rows(3..3).unwrap_err(),
    ] {
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
    assert!(matches!(
        data.select_rows(&[]).unwrap_err(),
        Error::EmptyData { rows: 0, .. }
    ));
}
