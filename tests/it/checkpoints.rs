//! Native checkpoints (round trip, resume, bad input) and the foreign layouts against PyTorch's
//! reconstruction of the fixtures written by `scripts/make_fixtures.py` (tolerance 1e-5).

use std::path::{Path, PathBuf};

use topk_sae::checkpoint::{self, CheckpointPolicy, Format, LoadOptions};
use topk_sae::data::{SyntheticConfig, synthetic};
use topk_sae::sae::to_host_vec;
use topk_sae::train::StepEngine;
use topk_sae::{
    Embeddings, Error, NormalizationKind, Normalizer, TopKSaeConfig, TrainConfig, Trainer,
};

use crate::{TestBackend, random_model, tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn weights(m: &topk_sae::TopKSae<TestBackend>) -> [Vec<f32>; 4] {
    [
        to_host_vec(m.w_enc.val()),
        to_host_vec(m.b_enc.val()),
        to_host_vec(m.w_dec.val()),
        to_host_vec(m.b_dec.val()),
    ]
}

#[test]
fn native_round_trip_keeps_weights_config_and_normaliser() {
    let dir = tempfile::tempdir().unwrap();
    let model = random_model(6, 20, 3, 1);
    let normalizer = Normalizer {
        kind: NormalizationKind::Center,
        mean: vec![0.5; 6],
        scale: 1.0,
    };
    let train = TrainConfig::new(TopKSaeConfig::new(6, 20, 3)).with_batch_size(7);
    checkpoint::save(
        dir.path().join("c"),
        &model,
        &normalizer,
        Some(&train),
        42,
        4200,
    )
    .unwrap();
    let loaded =
        checkpoint::load::<TestBackend>(dir.path().join("c"), &Default::default()).unwrap();
    assert_eq!(weights(&loaded.model), weights(&model));
    assert_eq!(loaded.normalizer, normalizer);
    assert_eq!(loaded.config.train, Some(train));
    assert_eq!(
        (
            loaded.meta.step,
            loaded.meta.samples_seen,
            loaded.meta.format_version
        ),
        (42, 4200, 1)
    );
    assert_eq!(loaded.model.k(), 3);
}

fn run_config() -> TrainConfig {
    TrainConfig::new(TopKSaeConfig::new(8, 48, 2))
        .with_batch_size(70)
        .with_epochs(3)
        .with_dead_threshold_samples(70)
        .with_optimizer(topk_sae::AdamConfig::new().with_lr(3e-3))
        .with_seed(5)
}

#[test]
fn resuming_gives_bit_identical_weights() {
    // 500 rows in batches of 70: 8 steps per epoch (the last of 10 rows), 24 steps in all. 491
    // rows: 7 steps per epoch, the last of 71 (its last row joins it), 21 in all.
    for (rows, steps) in [(500, 24), (491, 21)] {
        assert_eq!(run_config().total_steps(rows), steps);
        resuming_gives_bit_identical_weights_with(StepEngine::Host, rows, steps);
        resuming_gives_bit_identical_weights_with(StepEngine::Tensor, rows, steps);
    }
}

fn resuming_gives_bit_identical_weights_with(engine: StepEngine, rows: usize, total: u64) {
    // A save every 5 steps lands mid-epoch. A dead threshold of one batch (70 samples) makes a
    // latent dead whenever it did not fire in the previous batch, so the AuxK term and its
    // counters are live.
    let data = synthetic(
        &SyntheticConfig::new()
            .with_rows(rows)
            .with_d_in(8)
            .with_n_directions(12),
    )
    .unwrap()
    .embeddings;
    let device = Default::default();
    let root = tempfile::tempdir().unwrap();
    let policy = CheckpointPolicy::new(root.path(), 5).with_keep_last(10);
    let mut aux_seen = false;
    let full = Trainer::<TestBackend>::new(run_config().with_engine(engine), &data, &device)
        .unwrap()
        .with_checkpoints(policy.clone())
        .fit(&data, |r| aux_seen |= r.loss.aux > 0.0)
        .unwrap();
    assert!(aux_seen, "the run must exercise the dead-latent state");
    assert_eq!(full.steps, total);
    let steps: Vec<u64> = checkpoint::list_steps(root.path())
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(steps, vec![5, 10, 15, 20, total]);
    for from in [5, 10, 20] {
        let resumed = Trainer::<TestBackend>::resume(policy.step_dir(from), &device).unwrap();
        assert_eq!(resumed.steps_done(), from);
        assert_eq!(resumed.engine(), engine);
        let mut remaining = 0;
        let done = resumed.fit(&data, |_| remaining += 1).unwrap();
        assert_eq!((done.steps, remaining), (total, total - from));
        assert_eq!(
            weights(&done.model),
            weights(&full.model),
            "{engine:?}, {rows} rows: resumed from step {from}"
        );
    }
}

/// A finished run, resumed and given more epochs and a step cap with `with_stop`, ends where a
/// run started with them ends, to the bit; a stop of 0 epochs or steps is refused.
#[test]
fn a_resumed_run_trained_further_matches_a_longer_run() {
    let data = synthetic(
        &SyntheticConfig::new()
            .with_rows(491)
            .with_d_in(8)
            .with_n_directions(12),
    )
    .unwrap()
    .embeddings;
    let device = Default::default();
    for engine in [StepEngine::Host, StepEngine::Tensor] {
        let root = tempfile::tempdir().unwrap();
        let policy = CheckpointPolicy::new(root.path(), 100);
        let short = run_config().with_engine(engine).with_epochs(1);
        let first = Trainer::<TestBackend>::new(short, &data, &device)
            .unwrap()
            .with_checkpoints(policy.clone())
            .fit(&data, |_| {})
            .unwrap();
        assert_eq!(first.steps, 7);
        // Three epochs would be 21 steps; the cap stops at 17, mid-epoch.
        let long = run_config().with_engine(engine).with_max_steps(Some(17));
        let whole = Trainer::<TestBackend>::new(long, &data, &device)
            .unwrap()
            .fit(&data, |_| {})
            .unwrap();
        let resumed = Trainer::<TestBackend>::resume(policy.step_dir(7), &device).unwrap();
        for (epochs, max_steps) in [(0, None), (3, Some(0))] {
            let stopped = Trainer::<TestBackend>::resume(policy.step_dir(7), &device)
                .unwrap()
                .with_stop(epochs, max_steps);
            assert!(
                matches!(stopped, Err(Error::InvalidConfig { .. })),
                "epochs {epochs}, max_steps {max_steps:?}: a stop of nothing is refused"
            );
        }
        let further = resumed
            .with_stop(3, Some(17))
            .unwrap()
            .with_checkpoints(policy.clone())
            .fit(&data, |_| {})
            .unwrap();
        assert_eq!((whole.steps, further.steps), (17, 17));
        assert_eq!(weights(&further.model), weights(&whole.model), "{engine:?}");
        // The new stop is saved with the later checkpoints.
        let saved = Trainer::<TestBackend>::resume(policy.step_dir(17), &device).unwrap();
        assert_eq!(
            (saved.config().epochs, saved.config().max_steps),
            (3, Some(17))
        );
    }
}

#[test]
fn checkpoints_keep_the_last_m() {
    let data = synthetic(
        &SyntheticConfig::new()
            .with_rows(300)
            .with_d_in(8)
            .with_n_directions(12),
    )
    .unwrap()
    .embeddings;
    let root = tempfile::tempdir().unwrap();
    let policy = CheckpointPolicy::new(root.path(), 2).with_keep_last(2);
    Trainer::<TestBackend>::new(run_config().with_epochs(2), &data, &Default::default())
        .unwrap()
        .with_checkpoints(policy)
        .fit(&data, |_| {})
        .unwrap();
    // 300 / 70: 5 steps per epoch, 10 steps; saves at 2, 4, 6, 8, 10, keeping 8 and 10.
    let steps: Vec<u64> = checkpoint::list_steps(root.path())
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(steps, vec![8, 10]);
    assert_eq!(
        checkpoint::latest(root.path())
            .unwrap()
            .unwrap()
            .file_name()
            .unwrap(),
        "step-0000000010"
    );
    // Loading the folder of checkpoints itself names the newest one to pass instead.
    let err = checkpoint::load_any::<TestBackend>(
        root.path(),
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap_err();
    assert_format_error(&err, "meta.json", "the newest is");
    assert!(err.to_string().ends_with("step-0000000010"), "{err}");
}

/// Trains two steps on 300 synthetic rows of width 8 with a checkpoint every step; returns the
/// data, the run's root folder and its latest checkpoint.
fn two_step_run() -> (Embeddings, tempfile::TempDir, PathBuf) {
    let data = synthetic(
        &SyntheticConfig::new()
            .with_rows(300)
            .with_d_in(8)
            .with_n_directions(12),
    )
    .unwrap()
    .embeddings;
    let root = tempfile::tempdir().unwrap();
    Trainer::<TestBackend>::new(
        run_config().with_max_steps(Some(2)),
        &data,
        &Default::default(),
    )
    .unwrap()
    .with_checkpoints(CheckpointPolicy::new(root.path(), 1))
    .fit(&data, |_| {})
    .unwrap();
    let latest = checkpoint::latest(root.path()).unwrap().unwrap();
    (data, root, latest)
}

#[test]
fn resuming_with_other_data_is_an_error() {
    let (data, _root, latest) = two_step_run();
    let other = Embeddings::from_vec(data.as_slice()[..8 * 100].to_vec(), 100, 8).unwrap();
    let trainer = Trainer::<TestBackend>::resume(latest, &Default::default()).unwrap();
    assert!(matches!(
        trainer.fit(&other, |_| {}).unwrap_err(),
        Error::InvalidArgument { name: "data", .. }
    ));
}

/// A damaged `trainer.json` is a format error naming it, before any work: a shuffle count the
/// run cannot have reached would be replayed for as long as it says, and an absurd row count
/// would abort the process on allocation.
#[test]
fn damaged_trainer_state_is_a_format_error() {
    let (_data, _root, dir) = two_step_run();
    let state_path = dir.join("trainer.json");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    for (field, value, needle) in [
        (
            "shuffles",
            serde_json::json!(1_000_000_000_000u64),
            "shuffles 1000000000000 exceeds",
        ),
        (
            "rows",
            serde_json::json!(u64::MAX / 2),
            "is more than this machine can hold",
        ),
        (
            "position",
            serde_json::json!(301),
            "position 301 exceeds rows 300",
        ),
    ] {
        let mut state = saved.clone();
        state[field] = value;
        if field == "rows" {
            state["position"] = serde_json::json!(0);
        }
        std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
        let err = Trainer::<TestBackend>::resume(&dir, &Default::default()).unwrap_err();
        assert_format_error(&err, "trainer.json", needle);
    }
    std::fs::write(&state_path, serde_json::to_vec(&saved).unwrap()).unwrap();
    assert!(Trainer::<TestBackend>::resume(&dir, &Default::default()).is_ok());
}

/// Saves a valid checkpoint, lets `corrupt` damage it, and returns the load error.
fn load_error(corrupt: impl FnOnce(&Path)) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    checkpoint::save(
        &path,
        &random_model(4, 8, 2, 3),
        &Normalizer::identity(),
        None,
        1,
        1,
    )
    .unwrap();
    corrupt(&path);
    checkpoint::load::<TestBackend>(&path, &Default::default()).unwrap_err()
}

fn safetensors_file(tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                *n,
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn zeros(n: usize) -> Vec<u8> {
    vec![0u8; 4 * n]
}

fn assert_format_error(err: &Error, file: &str, needle: &str) {
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(file) && text.contains(needle), "{text}");
}

#[test]
fn bad_native_checkpoints_are_typed_errors() {
    use safetensors::Dtype::{F32, I32};
    let model_file = |p: &Path| p.join("model.safetensors");
    let err = load_error(|p| {
        let bytes = std::fs::read(model_file(p)).unwrap();
        std::fs::write(model_file(p), &bytes[..bytes.len() / 2]).unwrap();
    });
    assert_format_error(&err, "model.safetensors", "corrupt");
    let err = load_error(|p| {
        std::fs::write(model_file(p), b"\xff\xff\xff\xff\xff\xff\xff\x7f{garbage").unwrap();
    });
    assert_format_error(&err, "model.safetensors", "corrupt");
    let err = load_error(|p| {
        let meta = std::fs::read_to_string(p.join("meta.json"))
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 7");
        std::fs::write(p.join("meta.json"), meta).unwrap();
    });
    assert_format_error(&err, "meta.json", "unknown format_version 7");
    let err = load_error(|p| std::fs::remove_file(p.join("meta.json")).unwrap());
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("meta.json"),
        "{err}"
    );
    let err = load_error(|p| std::fs::write(p.join("config.json"), "{not json").unwrap());
    assert_format_error(&err, "config.json", "invalid JSON");
    let full = |extra: Option<(&'static str, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
                w_dec: Vec<usize>| {
        let mut t = vec![
            ("w_enc", F32, vec![4, 8], zeros(32)),
            ("b_enc", F32, vec![8], zeros(8)),
            ("b_dec", F32, vec![4], zeros(4)),
        ];
        let n = w_dec.iter().product();
        t.push(("w_dec", F32, w_dec, zeros(n)));
        t.extend(extra);
        safetensors_file(&t)
    };
    let err = load_error(|p| std::fs::write(model_file(p), full(None, vec![4, 8])).unwrap());
    assert_format_error(&err, "model.safetensors", "w_dec has shape [4, 8]");
    let err = load_error(|p| {
        std::fs::write(
            model_file(p),
            full(Some(("extra", F32, vec![1], zeros(1))), vec![8, 4]),
        )
        .unwrap();
    });
    assert_format_error(&err, "model.safetensors", "unexpected tensors [\"extra\"]");
    let err = load_error(|p| {
        let t = [
            ("w_enc", F32, vec![4, 8], zeros(32)),
            ("b_enc", F32, vec![8], zeros(8)),
            ("b_dec", F32, vec![4], zeros(4)),
        ];
        std::fs::write(model_file(p), safetensors_file(&t)).unwrap();
    });
    assert_format_error(&err, "model.safetensors", "missing tensor 'w_dec'");
    let err = load_error(|p| {
        let t = [
            ("w_enc", I32, vec![4, 8], zeros(32)),
            ("b_enc", F32, vec![8], zeros(8)),
            ("w_dec", F32, vec![8, 4], zeros(32)),
            ("b_dec", F32, vec![4], zeros(4)),
        ];
        std::fs::write(model_file(p), safetensors_file(&t)).unwrap();
    });
    assert_format_error(&err, "model.safetensors", "dtype");
    // Shapes consistent with each other but not with config.json.
    let err = load_error(|p| {
        let t = [
            ("w_enc", F32, vec![4, 6], zeros(24)),
            ("b_enc", F32, vec![6], zeros(6)),
            ("w_dec", F32, vec![6, 4], zeros(24)),
            ("b_dec", F32, vec![4], zeros(4)),
        ];
        std::fs::write(model_file(p), safetensors_file(&t)).unwrap();
    });
    assert_format_error(&err, "model.safetensors", "config.json says");
}

#[test]
fn unusable_weights_and_normalisers_are_rejected_on_load() {
    use safetensors::Dtype::F32;
    let model_file = |p: &Path| p.join("model.safetensors");
    // A NaN weight (a diverged run's checkpoint) is named by tensor and position.
    let err = load_error(|p| {
        let mut w_dec = vec![0.5f32; 32];
        w_dec[3 * 4 + 2] = f32::NAN;
        let t = [
            ("w_enc", F32, vec![4, 8], zeros(32)),
            ("b_enc", F32, vec![8], zeros(8)),
            ("w_dec", F32, vec![8, 4], le_bytes(&w_dec)),
            ("b_dec", F32, vec![4], zeros(4)),
        ];
        std::fs::write(model_file(p), safetensors_file(&t)).unwrap();
    });
    assert_format_error(&err, "model.safetensors", "w_dec[3, 2] is NaN");
    let err = load_error(|p| {
        let t = [
            ("w_enc", F32, vec![4, 8], zeros(32)),
            ("b_enc", F32, vec![8], zeros(8)),
            ("w_dec", F32, vec![8, 4], zeros(32)),
            (
                "b_dec",
                F32,
                vec![4],
                le_bytes(&[0.0, f32::INFINITY, 0.0, 0.0]),
            ),
        ];
        std::fs::write(model_file(p), safetensors_file(&t)).unwrap();
    });
    assert_format_error(&err, "model.safetensors", "b_dec[1] is inf");
    // A stored normaliser that does not fit the model (hand-edited config.json): an error at
    // load time, not a panic when it is first applied.
    let with_normalizer = |normalizer: serde_json::Value| {
        load_error(move |p| {
            let path = p.join("config.json");
            let mut config: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            config["normalizer"] = normalizer;
            std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        })
    };
    let err =
        with_normalizer(serde_json::json!({"kind": "Center", "mean": [0.1, 0.2], "scale": 1.0}));
    assert_format_error(
        &err,
        "config.json",
        "normalizer.mean (2 values) must hold d_in = 4",
    );
    let err = with_normalizer(serde_json::json!({"kind": "ScaleToDIn", "mean": [], "scale": 0.0}));
    assert_format_error(
        &err,
        "config.json",
        "normalizer.scale (0) must be finite and > 0",
    );
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn recon_of(model: &topk_sae::TopKSae<TestBackend>, normalizer: &Normalizer) -> Vec<f32> {
    let x = Embeddings::from_npy(fixtures().join("input.npy")).unwrap();
    let out = model.forward(normalizer.apply(tensor(x.as_slice(), x.d_in())));
    to_host_vec(normalizer.invert(out.reconstruction))
}

fn assert_matches_pytorch(got: &[f32]) {
    let want = Embeddings::from_npy(fixtures().join("recon.npy")).unwrap();
    assert_eq!(got.len(), want.as_slice().len());
    for (i, (a, b)) in got.iter().zip(want.as_slice()).enumerate() {
        assert!((a - b).abs() <= 1e-5, "value {i}: {a} vs PyTorch {b}");
    }
}

#[test]
fn every_fixture_format_matches_pytorch() {
    let device = Default::default();
    for (path, format) in [
        ("toy_4_64_8.pth", Format::Saerch),
        ("openai_ae.pt", Format::OpenAi),
        ("saelens", Format::SaeLens),
        ("sparsify", Format::Sparsify),
    ] {
        for options in [LoadOptions::default(), LoadOptions { format, k: None }] {
            let ckpt =
                checkpoint::load_any::<TestBackend>(fixtures().join(path), &options, &device)
                    .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(
                (ckpt.model.d_in(), ckpt.model.d_sae(), ckpt.model.k()),
                (16, 64, 4),
                "{path}"
            );
            assert_matches_pytorch(&recon_of(&ckpt.model, &ckpt.normalizer));
        }
    }
}

#[test]
fn saelens_export_round_trips_and_folds_normalisation() {
    let device = Default::default();
    let ckpt = checkpoint::load_any::<TestBackend>(
        fixtures().join("sparsify"),
        &LoadOptions::default(),
        &device,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    checkpoint::export_saelens(dir.path().join("out"), &ckpt.model, &ckpt.normalizer).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/cfg.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["k"].as_u64(), cfg["activation_fn_kwargs"]["k"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(cfg["architecture"], "topk");
    let back = checkpoint::load_any::<TestBackend>(
        dir.path().join("out"),
        &LoadOptions::default(),
        &device,
    )
    .unwrap();
    assert_matches_pytorch(&recon_of(&back.model, &back.normalizer));
    // A model trained with centring or scaling: the exported folder takes raw inputs.
    for normalizer in [
        Normalizer {
            kind: NormalizationKind::Center,
            mean: (0..16).map(|i| i as f32 * 0.1).collect(),
            scale: 1.0,
        },
        Normalizer {
            kind: NormalizationKind::ScaleToDIn,
            mean: vec![],
            scale: 3.0,
        },
    ] {
        let path = dir.path().join(format!("{:?}", normalizer.kind));
        checkpoint::export_saelens(&path, &ckpt.model, &normalizer).unwrap();
        let exported =
            checkpoint::load_any::<TestBackend>(&path, &LoadOptions::default(), &device).unwrap();
        let want = recon_of(&ckpt.model, &normalizer);
        let got = recon_of(&exported.model, &Normalizer::identity());
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{:?}: {a} vs {b}",
                normalizer.kind
            );
        }
    }
}

#[test]
fn foreign_errors_are_typed() {
    let device = Default::default();
    let load = |p: PathBuf, k: Option<usize>| {
        checkpoint::load_any::<TestBackend>(
            p,
            &LoadOptions {
                format: Format::Auto,
                k,
            },
            &device,
        )
        .unwrap_err()
    };
    // A pickle that would call os.system: rejected, and nothing ran.
    let err = load(fixtures().join("malicious_4_64_8.pth"), None);
    assert_format_error(&err, "malicious_4_64_8.pth", "posix.system");
    assert!(!Path::new("/tmp/topk_sae_pwned").exists());
    // saerch file without the standard name and without k.
    let dir = tempfile::tempdir().unwrap();
    let renamed = dir.path().join("model.pth");
    std::fs::copy(fixtures().join("toy_4_64_8.pth"), &renamed).unwrap();
    assert!(matches!(
        load(renamed.clone(), None),
        Error::InvalidConfig { field: "k", .. }
    ));
    let ok = checkpoint::load_any::<TestBackend>(
        &renamed,
        &LoadOptions {
            format: Format::Saerch,
            k: Some(4),
        },
        &device,
    );
    assert_eq!(ok.unwrap().model.k(), 4);
    // Truncated PyTorch zip.
    let bytes = std::fs::read(fixtures().join("toy_4_64_8.pth")).unwrap();
    let truncated = dir.path().join("toy_4_64_8.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    assert_format_error(&load(truncated, None), "toy_4_64_8.pth", "PyTorch");
    // k larger than d_sae.
    assert!(matches!(
        load(fixtures().join("saelens"), Some(65)),
        Error::InvalidConfig { field: "k", .. }
    ));
    // A folder with no checkpoint in it; a missing path.
    assert_format_error(&load(dir.path().to_path_buf(), None), "", "none of");
    assert!(matches!(
        load(dir.path().join("nope.pth"), None),
        Error::Io { .. }
    ));
}
