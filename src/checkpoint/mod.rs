//! Checkpoints: our native format, trainer state for resuming, and the formats of the peer
//! libraries (saerch `.pth`, OpenAI `.pt`, SAELens v6, sparsify), read and (SAELens) written.
//!
//! A native checkpoint is a directory:
//!
//! | file | content |
//! | --- | --- |
//! | `config.json` | `{"model": TopKSaeConfig, "normalizer": Normalizer, "train": TrainConfig or null}` |
//! | `model.safetensors` | `w_enc [d_in, d_sae]`, `b_enc [d_sae]`, `w_dec [d_sae, d_in]`, `b_dec [d_in]`, f32 |
//! | `meta.json` | `{"format_version": 1, "crate_version", "step", "samples_seen"}` |
//! | `trainer.safetensors`, `trainer.json` | optional: optimiser moments, dead-latent counters, shuffle position |
//!
//! Every save is atomic: files are written and flushed into a hidden sibling directory which is
//! then renamed into place, so a crash leaves the previous checkpoint loadable. A save replaces
//! only a folder that is empty or one this crate wrote, and deletes only the files this crate
//! writes: a folder holding anything else is [`Error::OutputInUse`], and nothing a user put
//! there is ever deleted.
//!
//! ```
//! # fn main() -> topk_sae::Result<()> {
//! use topk_sae::checkpoint;
//! use topk_sae::{Normalizer, TopKSaeConfig};
//! type B = topk_sae::backend::NdArray<f32>;
//! let device = Default::default();
//! let model = TopKSaeConfig::new(16, 64, 4).init::<B>(&device);
//! let dir = std::env::temp_dir().join(format!("topk-sae-doc-{}", std::process::id()));
//! checkpoint::save(&dir, &model, &Normalizer::identity(), None, 0, 0)?;
//! let loaded = checkpoint::load::<B>(&dir, &device)?;
//! assert_eq!((loaded.model.d_in(), loaded.model.d_sae(), loaded.model.k()), (16, 64, 4));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```

mod foreign;
pub(crate) mod io;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use foreign::{
    Format, LoadOptions, check_export_dir, export_saelens, load_any, parse_saerch_file_name,
};

use crate::data::Normalizer;
use crate::error::{Error, Result};
use crate::ops::transfer::to_host;
use crate::recipe::TrainConfig;
use crate::sae::{TopKSae, TopKSaeConfig};
use io::{
    HostTensor, OutTensor, Owned, check_replaceable, format_err, read_json, remove_owned,
    safetensors_bytes, to_json, write_dir_atomically,
};

/// The native format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// `meta.json` of a native checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Layout version ([`FORMAT_VERSION`] when written by this crate).
    pub format_version: u32,
    /// Version of `topk-sae` that wrote it.
    pub crate_version: String,
    /// Training steps done.
    pub step: u64,
    /// Training rows seen.
    pub samples_seen: u64,
}

/// `config.json` of a native checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// The model's configuration.
    pub model: TopKSaeConfig,
    /// The input normalisation to apply before the model.
    pub normalizer: Normalizer,
    /// The training configuration, when the model came from training.
    pub train: Option<TrainConfig>,
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint<B: Backend> {
    /// The model.
    pub model: TopKSae<B>,
    /// The normalisation to apply to inputs before the model.
    pub normalizer: Normalizer,
    /// The configuration as stored (foreign formats: reconstructed).
    pub config: CheckpointConfig,
    /// Step and sample counters (foreign formats: zeros).
    pub meta: CheckpointMeta,
}

pub(crate) const CONFIG_FILE: &str = "config.json";
pub(crate) const MODEL_FILE: &str = "model.safetensors";
pub(crate) const META_FILE: &str = "meta.json";
pub(crate) const TRAINER_JSON: &str = "trainer.json";
pub(crate) const TRAINER_TENSORS: &str = "trainer.safetensors";

/// The files of a native checkpoint folder, which its writers own: they replace a folder
/// holding only these (with a readable `meta.json`), and delete nothing else.
pub(crate) const NATIVE: Owned = Owned {
    what: "checkpoint",
    names: &[
        META_FILE,
        CONFIG_FILE,
        MODEL_FILE,
        TRAINER_TENSORS,
        TRAINER_JSON,
    ],
    is_ours: |dir| read_json::<CheckpointMeta>(&dir.join(META_FILE)).is_ok(),
};

/// The four parameters on the host, in SAELens orientation.
pub(crate) struct HostParams {
    pub w_enc: HostTensor,
    pub b_enc: HostTensor,
    pub w_dec: HostTensor,
    pub b_dec: HostTensor,
}

impl HostParams {
    pub fn from_model<B: Backend>(model: &TopKSae<B>) -> Self {
        let (d_in, d_sae) = (model.d_in(), model.d_sae());
        Self {
            w_enc: HostTensor::new(vec![d_in, d_sae], to_host(model.w_enc.val())),
            b_enc: HostTensor::new(vec![d_sae], to_host(model.b_enc.val())),
            w_dec: HostTensor::new(vec![d_sae, d_in], to_host(model.w_dec.val())),
            b_dec: HostTensor::new(vec![d_in], to_host(model.b_dec.val())),
        }
    }

    /// Checks the shapes against each other (and `d_in`/`d_sae` when given), then builds a model.
    pub fn into_model<B: Backend>(
        self,
        path: &Path,
        k: usize,
        device: &B::Device,
    ) -> Result<TopKSae<B>> {
        let [d_in, d_sae] = self.w_enc.shape[..] else {
            return Err(format_err(
                path,
                format!(
                    "w_enc has shape {:?}; expected [d_in, d_sae]",
                    self.w_enc.shape
                ),
            ));
        };
        for (name, t, want) in [
            ("b_enc", &self.b_enc, vec![d_sae]),
            ("w_dec", &self.w_dec, vec![d_sae, d_in]),
            ("b_dec", &self.b_dec, vec![d_in]),
        ] {
            if t.shape != want {
                return Err(format_err(
                    path,
                    format!(
                        "{name} has shape {:?}; expected {want:?} (from w_enc [{d_in}, {d_sae}])",
                        t.shape
                    ),
                ));
            }
        }
        if d_in == 0 || d_sae == 0 {
            return Err(format_err(
                path,
                format!("empty model: d_in {d_in}, d_sae {d_sae}"),
            ));
        }
        if !(1..=d_sae).contains(&k) {
            return Err(Error::invalid(
                "k",
                k,
                format!("must be in 1..=d_sae ({d_sae})"),
            ));
        }
        for (name, t, width) in [
            ("w_enc", &self.w_enc, d_sae),
            ("b_enc", &self.b_enc, d_sae),
            ("w_dec", &self.w_dec, d_in),
            ("b_dec", &self.b_dec, d_in),
        ] {
            if let Some(pos) = t.data.iter().position(|v| !v.is_finite()) {
                let at = if t.shape.len() == 2 {
                    format!("[{}, {}]", pos / width, pos % width)
                } else {
                    format!("[{pos}]")
                };
                return Err(format_err(
                    path,
                    format!(
                        "{name}{at} is {}; the weights are unusable (saved from a diverged run?)",
                        t.data[pos]
                    ),
                ));
            }
        }
        crate::ops::check_fits_device::<B>(
            device,
            "d_sae",
            d_sae,
            "the encoder's weights",
            [d_in, d_sae],
        )?;
        let t2 = |t: HostTensor, s: [usize; 2]| {
            Tensor::<B, 2>::from_data(TensorData::new(t.data, s), device)
        };
        let t1 = |t: HostTensor, n: usize| {
            Tensor::<B, 1>::from_data(TensorData::new(t.data, [n]), device)
        };
        Ok(TopKSae::from_parts(
            t2(self.w_enc, [d_in, d_sae]),
            t1(self.b_enc, d_sae),
            t2(self.w_dec, [d_sae, d_in]),
            t1(self.b_dec, d_in),
            k,
        ))
    }

    /// Takes exactly these four names out of `tensors`; any missing or extra name is an error.
    pub fn take(
        path: &Path,
        mut tensors: HashMap<String, HostTensor>,
        names: [&str; 4],
        allowed_extra: &[&str],
    ) -> Result<[HostTensor; 4]> {
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !names.contains(&k.as_str()) && !allowed_extra.contains(&k.as_str()))
            .collect();
        extra.sort();
        if !extra.is_empty() {
            return Err(format_err(
                path,
                format!("unexpected tensors {extra:?}; expected {names:?}"),
            ));
        }
        let mut get = |name: &str| {
            tensors
                .remove(name)
                .ok_or_else(|| format_err(path, format!("missing tensor '{name}'")))
        };
        Ok([
            get(names[0])?,
            get(names[1])?,
            get(names[2])?,
            get(names[3])?,
        ])
    }

    pub fn check_rank(path: &Path, name: &str, t: &HostTensor, rank: usize) -> Result<()> {
        if t.shape.len() == rank {
            Ok(())
        } else {
            Err(format_err(
                path,
                format!("{name} has shape {:?}; expected {rank} dimensions", t.shape),
            ))
        }
    }
}

/// Saves a model in the native format into the directory `dir`, created, or replaced atomically
/// when it holds an earlier checkpoint. [`crate::Trained::save`] saves a trained model with its
/// configuration and counters in one call.
///
/// `dir` may be new, an empty folder, or a checkpoint folder this crate wrote; anything else is
/// refused, so that nothing a user put there is ever deleted.
///
/// # Errors
/// [`Error::OutputInUse`] when `dir` is a file, or a folder holding files this crate did not
/// write (listed in the message), and nothing is written; [`Error::Io`] when the directory or a
/// file cannot be written.
pub fn save<B: Backend>(
    dir: impl AsRef<Path>,
    model: &TopKSae<B>,
    normalizer: &Normalizer,
    train: Option<&TrainConfig>,
    step: u64,
    samples_seen: u64,
) -> Result<()> {
    write_dir_atomically(
        dir.as_ref(),
        &native_files(model, normalizer, train, step, samples_seen),
        &NATIVE,
    )
}

pub(crate) fn native_files<B: Backend>(
    model: &TopKSae<B>,
    normalizer: &Normalizer,
    train: Option<&TrainConfig>,
    step: u64,
    samples_seen: u64,
) -> Vec<(&'static str, Vec<u8>)> {
    let p = HostParams::from_model(model);
    let model_config = train.map_or_else(
        || TopKSaeConfig::new(model.d_in(), model.d_sae(), model.k()),
        |t| t.model.clone(),
    );
    let config = CheckpointConfig {
        model: model_config,
        normalizer: normalizer.clone(),
        train: train.cloned(),
    };
    let meta = CheckpointMeta {
        format_version: FORMAT_VERSION,
        crate_version: env!("CARGO_PKG_VERSION").to_owned(),
        step,
        samples_seen,
    };
    let weights = safetensors_bytes(&[
        ("w_enc", OutTensor::F32(&p.w_enc.shape, &p.w_enc.data)),
        ("b_enc", OutTensor::F32(&p.b_enc.shape, &p.b_enc.data)),
        ("w_dec", OutTensor::F32(&p.w_dec.shape, &p.w_dec.data)),
        ("b_dec", OutTensor::F32(&p.b_dec.shape, &p.b_dec.data)),
    ]);
    vec![
        (CONFIG_FILE, to_json(&config)),
        (MODEL_FILE, weights),
        (META_FILE, to_json(&meta)),
    ]
}

/// Loads a native checkpoint directory, checking the format version and every shape against
/// the stored config.
///
/// # Errors
/// [`Error::Io`] for a missing file; [`Error::Format`] naming the file for invalid JSON, an
/// unknown `format_version`, a corrupt safetensors file, a wrong dtype, missing or extra tensors,
/// a shape that disagrees with the config, a NaN or infinite weight, or a stored normaliser that
/// does not fit the model ([`Normalizer::check`]); [`Error::InvalidConfig`] for an invalid stored
/// model config, or naming `d_sae` on a GPU whose largest buffer cannot hold the `[d_in, d_sae]`
/// weights.
pub fn load<B: Backend>(dir: impl AsRef<Path>, device: &B::Device) -> Result<Checkpoint<B>> {
    let dir = dir.as_ref();
    let meta_path = dir.join(META_FILE);
    let meta: CheckpointMeta = read_json(&meta_path)?;
    if meta.format_version != FORMAT_VERSION {
        return Err(format_err(
            &meta_path,
            format!(
                "unknown format_version {} (this crate reads {FORMAT_VERSION})",
                meta.format_version
            ),
        ));
    }
    let config_path = dir.join(CONFIG_FILE);
    let config: CheckpointConfig = read_json(&config_path)?;
    config.model.validate()?;
    config
        .normalizer
        .check(config.model.d_in)
        .map_err(|e| format_err(&config_path, e.to_string()))?;
    let model_path = dir.join(MODEL_FILE);
    let (tensors, _) = io::read_safetensors(&model_path)?;
    let [w_enc, b_enc, w_dec, b_dec] = HostParams::take(
        &model_path,
        tensors,
        ["w_enc", "b_enc", "w_dec", "b_dec"],
        &[],
    )?;
    let (d_in, d_sae) = (config.model.d_in, config.model.d_sae);
    if w_enc.shape != [d_in, d_sae] {
        return Err(format_err(
            &model_path,
            format!(
                "w_enc has shape {:?}; config.json says [d_in {d_in}, d_sae {d_sae}]",
                w_enc.shape
            ),
        ));
    }
    let model = HostParams {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
    }
    .into_model(&model_path, config.model.k, device)?;
    Ok(Checkpoint {
        model,
        normalizer: config.normalizer.clone(),
        config,
        meta,
    })
}

/// The checkpoint directories `step-NNNNNNNNNN` under `root` that hold a `meta.json`, oldest
/// first. Hidden temporary directories of interrupted saves are ignored.
///
/// # Errors
/// [`Error::Io`] when `root` cannot be listed.
pub fn list_steps(root: impl AsRef<Path>) -> Result<Vec<(u64, PathBuf)>> {
    let root = root.as_ref();
    let entries = std::fs::read_dir(root).map_err(|source| Error::Io {
        action: "list",
        path: root.to_path_buf(),
        source,
    })?;
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(std::result::Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path().join(META_FILE).is_file().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint directory under `root`, if any.
///
/// # Errors
/// [`Error::Io`] when `root` cannot be listed.
pub fn latest(root: impl AsRef<Path>) -> Result<Option<PathBuf>> {
    Ok(list_steps(root)?.pop().map(|(_, p)| p))
}

/// Where and how often a [`crate::Trainer`] saves checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Directory that receives `step-NNNNNNNNNN` checkpoints.
    pub dir: PathBuf,
    /// Save every this many steps (and always at the end).
    pub every_steps: u64,
    /// Keep only the newest this many checkpoints (at least 1).
    pub keep_last: usize,
}

impl CheckpointPolicy {
    /// Saves into `dir` every `every_steps` steps (0 counts as 1), keeping the last 3.
    pub fn new(dir: impl Into<PathBuf>, every_steps: u64) -> Self {
        Self {
            dir: dir.into(),
            every_steps: every_steps.max(1),
            keep_last: 3,
        }
    }

    /// Keeps the newest `keep_last` checkpoints (0 counts as 1).
    #[must_use]
    pub fn with_keep_last(mut self, keep_last: usize) -> Self {
        self.keep_last = keep_last.max(1);
        self
    }

    /// The directory of the checkpoint at `step`.
    pub fn step_dir(&self, step: u64) -> PathBuf {
        self.dir.join(format!("step-{step:010}"))
    }

    /// Deletes all but the newest `keep_last` checkpoints: the files of each that this crate
    /// wrote (`meta.json` first, so that an interrupted prune leaves no folder that looks
    /// complete), then the folder when it is left empty. Files a user put into a checkpoint
    /// folder stay, with the folder.
    pub(crate) fn prune(&self) -> Result<()> {
        let steps = list_steps(&self.dir)?;
        let excess = steps.len().saturating_sub(self.keep_last);
        for (_, path) in steps.into_iter().take(excess) {
            if (NATIVE.is_ours)(&path) {
                remove_owned(&path, &NATIVE, META_FILE)?;
            }
        }
        Ok(())
    }

    /// Checks, before a run writes anything, that its checkpoints can be saved where this
    /// policy says: `dir` is a folder (or can be created), and every `step-NNNNNNNNNN` folder
    /// already there for a step after `after_step` can be replaced (empty, or a checkpoint this
    /// crate wrote). [`crate::Trainer::fit`] calls it before its first step.
    ///
    /// # Errors
    /// [`Error::OutputInUse`] naming `dir` when it is a file, or naming a step folder that holds
    /// files this crate did not write; [`Error::Io`] when `dir` cannot be listed.
    pub fn check(&self, after_step: u64) -> Result<()> {
        match std::fs::metadata(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::Io {
                    action: "inspect",
                    path: self.dir.clone(),
                    source,
                });
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(Error::OutputInUse {
                    path: self.dir.clone(),
                    reason: "is a file, not a folder: checkpoints go into a folder (the \
                             checkpoint directory)"
                        .into(),
                });
            }
            Ok(_) => {}
        }
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::Io {
            action: "list",
            path: self.dir.clone(),
            source,
        })?;
        for entry in entries.filter_map(std::result::Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name
                .strip_prefix("step-")
                .and_then(|s| s.parse::<u64>().ok())
                && step > after_step
            {
                check_replaceable(&entry.path(), &NATIVE)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::io::write_dir_atomically_impl;
    use super::*;

    type B = burn_ndarray::NdArray<f32>;

    #[test]
    fn a_save_killed_half_way_leaves_the_previous_checkpoint_loadable() {
        let device = Default::default();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let first = TopKSaeConfig::new(4, 8, 2).with_seed(1).init::<B>(&device);
        save(&dir, &first, &Normalizer::identity(), None, 10, 100).unwrap();
        let second = TopKSaeConfig::new(4, 8, 2).with_seed(2).init::<B>(&device);
        for fail_after in 0..3 {
            let files = native_files(&second, &Normalizer::identity(), None, 20, 200);
            let err =
                write_dir_atomically_impl(&dir, &files, &NATIVE, Some(fail_after)).unwrap_err();
            assert!(err.to_string().contains("simulated crash"));
            let loaded = load::<B>(&dir, &device).unwrap();
            assert_eq!(loaded.meta.step, 10, "the previous checkpoint is intact");
            assert_eq!(
                to_host(loaded.model.w_dec.val()),
                to_host(first.w_dec.val())
            );
        }
        // A complete save replaces it.
        save(&dir, &second, &Normalizer::identity(), None, 20, 200).unwrap();
        assert_eq!(load::<B>(&dir, &device).unwrap().meta.step, 20);
        // Debris of the interrupted saves is hidden and never listed as a checkpoint.
        assert!(std::fs::read_dir(root.path()).unwrap().all(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name == "ckpt" || name.starts_with(".ckpt.tmp-")
        }));
    }
}
