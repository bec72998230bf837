//! Writers never delete or replace what they did not write: checkpoint saves, the SAELens
//! export and a training run's checkpoints, against folders holding a user's files (named
//! cases and a property test over random files).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use topk_sae::checkpoint::{self, CheckpointPolicy};
use topk_sae::data::{SyntheticConfig, synthetic};
use topk_sae::{Embeddings, Error, Normalizer, TrainConfig, Trainer};

use crate::{TestBackend, random_model};

/// Every file under `dir` (recursively, hidden ones included) with its bytes, by relative path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = fs::read(&path).unwrap();
                out.insert(path.strip_prefix(root).unwrap().to_owned(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

fn save_model(dir: &Path) -> topk_sae::Result<()> {
    let model = random_model(4, 8, 2, 1);
    checkpoint::save(dir, &model, &Normalizer::identity(), None, 0, 0)
}

fn export(dir: &Path) -> topk_sae::Result<()> {
    let model = random_model(4, 8, 2, 1);
    checkpoint::export_saelens(dir, &model, &Normalizer::identity())
}

fn assert_in_use(err: &Error, needle: &str) {
    assert!(
        matches!(err, Error::OutputInUse { .. }) && err.to_string().contains(needle),
        "expected an output-in-use error mentioning {needle:?}, got: {err}"
    );
}

/// A folder holding a user's file is refused by both writers, and the file and the folder stay
/// as they were; so is a regular file where a folder goes.
#[test]
fn writers_refuse_folders_holding_other_files_and_files_in_place_of_folders() {
    type Writer = fn(&Path) -> topk_sae::Result<()>;
    let writers: [(&str, Writer); 2] = [("save", save_model), ("export", export)];
    for (name, write) in writers {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("thesis.tex"), "chapter 1").unwrap();
        let before = snapshot(root.path());
        let err = write(&dir).unwrap_err();
        assert_in_use(&err, "thesis.tex");
        assert!(
            err.to_string().contains("out"),
            "{name}: names the folder: {err}"
        );
        assert_eq!(snapshot(root.path()), before, "{name}: nothing changed");

        let file = root.path().join("notes.txt");
        fs::write(&file, "mine").unwrap();
        let err = write(&file).unwrap_err();
        assert_in_use(&err, "is a file, not a folder");
        assert_eq!(
            fs::read(&file).unwrap(),
            b"mine",
            "{name}: the file is intact"
        );
        assert!(
            fs::read_dir(root.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')),
            "{name}: no hidden copies left behind"
        );
    }
}

/// New and empty folders are written; a folder this crate wrote is replaced (atomically); a
/// folder holding only names the writer uses, but not written by this crate, is refused.
#[test]
fn writers_replace_only_their_own_folders() {
    let root = tempfile::tempdir().unwrap();
    let (ckpt, saelens) = (root.path().join("ckpt"), root.path().join("saelens"));
    fs::create_dir(&ckpt).unwrap();
    save_model(&ckpt).unwrap();
    save_model(&ckpt).unwrap();
    export(&saelens).unwrap();
    export(&saelens).unwrap();
    checkpoint::check_export_dir(&saelens).unwrap();
    let device = Default::default();
    checkpoint::load::<TestBackend>(&ckpt, &device).unwrap();

    // A user's own `config.json`, and a SAELens folder SAELens wrote (the fixture).
    let lookalike = root.path().join("lookalike");
    fs::create_dir(&lookalike).unwrap();
    fs::write(lookalike.join("config.json"), "{\"mine\": true}").unwrap();
    assert_in_use(
        &save_model(&lookalike).unwrap_err(),
        "not a checkpoint written",
    );
    let theirs = root.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saelens");
    for name in ["cfg.json", "sae_weights.safetensors"] {
        fs::copy(fixture.join(name), theirs.join(name)).unwrap();
    }
    let before = snapshot(&theirs);
    assert_in_use(&export(&theirs).unwrap_err(), "not a SAELens export");
    assert_in_use(
        &checkpoint::check_export_dir(&theirs).unwrap_err(),
        "not a SAELens export",
    );
    assert_eq!(snapshot(&theirs), before);
    assert_eq!(
        fs::read(lookalike.join("config.json")).unwrap(),
        b"{\"mine\": true}"
    );
}

fn small_data(rows: usize) -> Embeddings {
    synthetic(
        &SyntheticConfig::new()
            .with_rows(rows)
            .with_d_in(8)
            .with_n_directions(12),
    )
    .unwrap()
    .embeddings
}

fn small_config() -> TrainConfig {
    TrainConfig::new(topk_sae::TopKSaeConfig::new(8, 16, 2))
        .with_batch_size(100)
        .with_epochs(2)
}

/// A checkpoint folder of a step the run will write that holds a user's file stops the run
/// before its first step; a user's file in a checkpoint folder that pruning removes stays, with
/// its folder; the checkpoint directory given as a file is refused before the first step.
#[test]
fn training_keeps_user_files_in_checkpoint_folders() {
    let data = small_data(300);
    let device = Default::default();
    let root = tempfile::tempdir().unwrap();
    let policy = CheckpointPolicy::new(root.path(), 1).with_keep_last(1);

    fs::create_dir(policy.step_dir(4)).unwrap();
    fs::write(policy.step_dir(4).join("notes.txt"), "keep me").unwrap();
    let mut steps = 0;
    let err = Trainer::<TestBackend>::new(small_config(), &data, &device)
        .unwrap()
        .with_checkpoints(policy.clone())
        .fit(&data, |_| steps += 1)
        .unwrap_err();
    assert_in_use(&err, "notes.txt");
    assert_eq!(steps, 0, "refused before the first step");
    fs::remove_dir_all(policy.step_dir(4)).unwrap();

    // Step 1's checkpoint gets a user's file; pruning (keep 1) then removes only our files.
    let mut steps = 0;
    Trainer::<TestBackend>::new(small_config().with_max_steps(Some(1)), &data, &device)
        .unwrap()
        .with_checkpoints(policy.clone())
        .fit(&data, |_| steps += 1)
        .unwrap();
    fs::write(policy.step_dir(1).join("plot.png"), "png").unwrap();
    let trained = Trainer::<TestBackend>::resume(policy.step_dir(1), &device)
        .unwrap()
        .with_stop(2, None)
        .unwrap()
        .fit(&data, |_| {})
        .unwrap();
    assert_eq!((trained.steps, trained.steps_run), (6, 5));
    let kept: Vec<u64> = checkpoint::list_steps(root.path())
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(kept, vec![6], "the resumed run kept saving and pruning");
    assert_eq!(
        fs::read(policy.step_dir(1).join("plot.png")).unwrap(),
        b"png"
    );
    assert_eq!(
        fs::read_dir(policy.step_dir(1)).unwrap().count(),
        1,
        "only the user's file is left in the pruned folder"
    );

    let file = root.path().join("a-file");
    fs::write(&file, "x").unwrap();
    let err = Trainer::<TestBackend>::new(small_config(), &data, &device)
        .unwrap()
        .with_checkpoints(CheckpointPolicy::new(&file, 1))
        .fit(&data, |_| {})
        .unwrap_err();
    assert_in_use(&err, "is a file, not a folder");
    assert_eq!(fs::read(&file).unwrap(), b"x");
}

/// A resumed run keeps the policy of the run it resumes (folder, frequency, how many), unless
/// told otherwise; a plain save keeps none.
#[test]
fn a_resume_keeps_the_checkpoint_policy() {
    let data = small_data(300);
    let device = Default::default();
    let root = tempfile::tempdir().unwrap();
    let policy = CheckpointPolicy::new(root.path().join("run"), 2).with_keep_last(5);
    Trainer::<TestBackend>::new(small_config().with_max_steps(Some(2)), &data, &device)
        .unwrap()
        .with_checkpoints(policy.clone())
        .fit(&data, |_| {})
        .unwrap();
    let resumed = Trainer::<TestBackend>::resume(policy.step_dir(2), &device).unwrap();
    assert_eq!(resumed.checkpoints(), Some(&policy));
    assert_eq!(
        resumed.without_checkpoints().checkpoints(),
        None,
        "without_checkpoints turns it off"
    );
    let elsewhere = root.path().join("copy");
    Trainer::<TestBackend>::resume(policy.step_dir(2), &device)
        .unwrap()
        .save_checkpoint(&elsewhere)
        .unwrap();
    assert_eq!(
        Trainer::<TestBackend>::resume(&elsewhere, &device)
            .unwrap()
            .checkpoints(),
        None,
        "a folder not named after its step is not a policy's"
    );
}

/// A resume on other rows of the same shape is refused by `check_data` and `fit`.
#[test]
fn a_resume_on_other_rows_of_the_same_shape_is_refused() {
    let data = small_data(300);
    let device = Default::default();
    let root = tempfile::tempdir().unwrap();
    let policy = CheckpointPolicy::new(root.path(), 1);
    Trainer::<TestBackend>::new(small_config().with_max_steps(Some(1)), &data, &device)
        .unwrap()
        .with_checkpoints(policy.clone())
        .fit(&data, |_| {})
        .unwrap();
    let mut other = data.as_slice().to_vec();
    other[8 * 299] += 0.5;
    let other = Embeddings::from_vec(other, 300, 8).unwrap();
    let trainer = Trainer::<TestBackend>::resume(policy.step_dir(1), &device).unwrap();
    trainer.check_data(&data).unwrap();
    let err = trainer.check_data(&other).unwrap_err();
    assert!(err.to_string().contains("other values"), "{err}");
    assert!(matches!(
        trainer.fit(&other, |_| {}).unwrap_err(),
        Error::InvalidArgument { name: "data", .. }
    ));
}

/// File names a user might have in a folder: any of ours among them.
fn user_file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("config.json".to_owned()),
        Just("meta.json".to_owned()),
        Just("model.safetensors".to_owned()),
        Just("trainer.json".to_owned()),
        Just("cfg.json".to_owned()),
        Just("sae_weights.safetensors".to_owned()),
        "[a-z]{1,8}(\\.[a-z]{1,3})?",
        "\\.[a-z]{1,6}",
        "step-00000000[0-9]{2}",
    ]
}

/// A user's folder: files (some in a subfolder) with random bytes.
fn user_files() -> impl Strategy<Value = Vec<(String, bool, Vec<u8>)>> {
    prop::collection::vec(
        (
            user_file_name(),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..64),
        ),
        1..6,
    )
}

fn lay_out(dir: &Path, files: &[(String, bool, Vec<u8>)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, nested, bytes) in files {
        let at = if *nested {
            dir.join("sub").join(name)
        } else {
            dir.join(name)
        };
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        if !at.is_dir() {
            fs::write(&at, bytes).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Both writers, into a folder holding random user files: refused, every file intact, no
    /// new entry beside it.
    #[test]
    fn random_user_files_survive_every_writer(files in user_files()) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        lay_out(&dir, &files);
        let before = snapshot(root.path());
        prop_assert!(save_model(&dir).is_err());
        prop_assert!(export(&dir).is_err());
        prop_assert_eq!(snapshot(root.path()), before);
    }

    /// A training run with checkpoints every step and pruning, with random user files beside
    /// its checkpoint folders and inside old ones: every user file survives.
    #[test]
    fn random_user_files_survive_a_training_run(files in user_files(), inside in any::<bool>()) {
        // On burn-ndarray whatever the test backend: the subject is which files the trainer
        // writes and prunes, the same on every backend (the tests above run the writers on the
        // test backend); 32 cases of training on CI's software GPU took a minute.
        type B = topk_sae::backend::NdArray<f32>;
        let data = small_data(300);
        let device = Default::default();
        let root = tempfile::tempdir().unwrap();
        let policy = CheckpointPolicy::new(root.path(), 1).with_keep_last(1);
        Trainer::<B>::new(small_config().with_max_steps(Some(1)), &data, &device)
            .unwrap()
            .with_checkpoints(policy.clone())
            .fit(&data, |_| {})
            .unwrap();
        let resumed = Trainer::<B>::resume(policy.step_dir(1), &device)
            .unwrap()
            .with_stop(1, Some(3))
            .unwrap();
        // Beside the checkpoints (names of future steps left out: those are refused, tested
        // above), or inside step 1's folder, which pruning removes.
        let target = if inside { policy.step_dir(1) } else { root.path().to_owned() };
        let files: Vec<_> = files
            .into_iter()
            .filter(|(name, nested, _)| *nested || inside || !name.starts_with("step-"))
            .collect();
        let ours = snapshot(&target);
        lay_out(&target, &files);
        // The user's files: those `lay_out` wrote (step 1's own files are pruned, rightly).
        let mine: BTreeMap<_, _> = snapshot(&target)
            .into_iter()
            .filter(|(path, bytes)| ours.get(path) != Some(bytes))
            .collect();
        let result = resumed.fit(&data, |_| {});
        prop_assert!(result.is_ok(), "{:?}", result.err());
        let after = snapshot(&target);
        for (path, bytes) in &mine {
            let ckpt_file = inside && path.parent() == Some(Path::new(""))
                && ["meta.json", "config.json", "model.safetensors", "trainer.json",
                    "trainer.safetensors"].contains(&path.to_str().unwrap());
            // Step 1's own files, by name: pruning removes them (a user's file of the same name
            // took their place in `lay_out`; one that spoilt `meta.json` makes the folder no
            // checkpoint of ours, and it is left alone).
            if !ckpt_file {
                prop_assert_eq!(after.get(path), Some(bytes), "{:?} survived", path);
            }
        }
    }
}
