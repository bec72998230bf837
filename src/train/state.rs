//! The trainer's resumable state: what a checkpoint holds besides the model (`trainer.json`:
//! the step, epoch, shuffle position, dead-latent counters, the checkpoint policy and a
//! fingerprint of the rows; `trainer.safetensors`: the Adam moments), how a trainer saves it and
//! how [`Trainer::resume`] restores it.

use std::path::Path;

use burn::tensor::TensorData;
use burn::tensor::backend::Backend;
use rand::seq::SliceRandom;

use super::{Engine, Trainer};
use crate::checkpoint::io::{
    OutTensor, format_err, read_json, read_safetensors, safetensors_bytes, to_json,
    write_dir_atomically,
};
use crate::checkpoint::{self, CheckpointPolicy, NATIVE, TRAINER_JSON, TRAINER_TENSORS};
use crate::error::Result;
use crate::ops::transfer::to_host;
use crate::ops::update::Moments;

/// An Adam moment as saved: `adam.{param}.{m|v}`, values, shape.
type NamedMoment = (String, Vec<f32>, Vec<usize>);

/// Names of the parameters, in the order of the Adam moments.
const PARAMS: [&str; 4] = ["w_enc", "b_enc", "w_dec", "b_dec"];

/// `trainer.json` of a checkpoint saved by a trainer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: u64,
    samples_seen: u64,
    adam_step: u64,
    epoch: usize,
    position: usize,
    shuffles: u64,
    rows: usize,
    /// How often the run saved checkpoints, when it had a [`CheckpointPolicy`]: a resume keeps
    /// it (absent in checkpoints of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoints: Option<SavedPolicy>,
    /// [`Embeddings::fingerprint`] of the training rows (absent in checkpoints of earlier
    /// versions): a resume on other rows is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_fingerprint: Option<u64>,
}

/// A [`CheckpointPolicy`] as `trainer.json` records it: the folder is where the checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SavedPolicy {
    every_steps: u64,
    keep_last: usize,
}

impl<B: Backend> Trainer<B> {
    /// Saves the model, its configuration and the full trainer state (Adam moments, dead-latent
    /// counters, shuffle position, the checkpoint policy) into the directory `dir`, atomically,
    /// with the rules of [`checkpoint::save`]: `dir` is new, empty, or a checkpoint this crate
    /// wrote.
    ///
    /// # Errors
    /// The errors of [`checkpoint::save`].
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let model = self.model();
        let mut files = checkpoint::native_files(
            &model,
            &self.normalizer,
            Some(&self.config),
            self.step,
            self.samples_seen,
        );
        let (adam_step, moments) = self.moments();
        let state = TrainerState {
            step: self.step,
            samples_seen: self.samples_seen,
            adam_step,
            epoch: self.epoch,
            position: self.position,
            shuffles: self.shuffles,
            rows: self.order.len(),
            checkpoints: self.checkpoints.as_ref().map(|p| SavedPolicy {
                every_steps: p.every_steps,
                keep_last: p.keep_last,
            }),
            data_fingerprint: self.data_fingerprint,
        };
        let host: Vec<NamedMoment> = moments;
        let counters_shape = [self.since_fired.len()];
        let mut tensors: Vec<(&str, OutTensor<'_>)> = host
            .iter()
            .map(|(n, v, s)| (n.as_str(), OutTensor::F32(s, v)))
            .collect();
        tensors.push((
            "since_fired",
            OutTensor::U64(&counters_shape, &self.since_fired),
        ));
        files.push((TRAINER_TENSORS, safetensors_bytes(&tensors)));
        files.push((TRAINER_JSON, to_json(&state)));
        write_dir_atomically(dir.as_ref(), &files, &NATIVE)
    }

    /// Restores a trainer from a checkpoint written by [`Trainer::save_checkpoint`]. Continuing
    /// with [`Trainer::fit`] on the same data gives the same weights, bit for bit, as a run that
    /// was never interrupted (same backend).
    ///
    /// When `dir` is a `step-NNNNNNNNNN` folder a [`CheckpointPolicy`] saved, the resumed run
    /// keeps saving as that run did: into the folder holding `dir`, as often, keeping as many
    /// ([`Trainer::with_checkpoints`] and [`Trainer::without_checkpoints`] change that). Its
    /// data must be the rows the run was checkpointed with ([`Trainer::check_data`]).
    ///
    /// # Errors
    /// The errors of [`checkpoint::load`]; [`crate::Error::Format`] when the directory holds no
    /// trainer state or no training configuration, or a state tensor has the wrong shape.
    pub fn resume(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let ckpt = checkpoint::load::<B>(dir, device)?;
        let config_path = dir.join(checkpoint::CONFIG_FILE);
        let config = ckpt
            .config
            .train
            .clone()
            .ok_or_else(|| format_err(&config_path, "no training configuration to resume"))?;
        let state: TrainerState = read_json(&dir.join(TRAINER_JSON))?;
        let tensor_path = dir.join(TRAINER_TENSORS);
        let (mut floats, mut ints) = read_safetensors(&tensor_path)?;
        let mut trainer = Self::from_model(config, ckpt.model, ckpt.normalizer, device)?;
        let mut take = |name: &str, dims: Vec<usize>| -> Result<Vec<f32>> {
            let t = floats
                .remove(name)
                .ok_or_else(|| format_err(&tensor_path, format!("missing tensor '{name}'")))?;
            if t.shape != dims {
                return Err(format_err(
                    &tensor_path,
                    format!("{name} has shape {:?}; expected {dims:?}", t.shape),
                ));
            }
            Ok(t.data)
        };
        let mut moments = Vec::with_capacity(8);
        for (name, dims) in PARAMS.iter().zip(trainer.param_dims()) {
            for which in ["m", "v"] {
                moments.push(take(&format!("adam.{name}.{which}"), dims.clone())?);
            }
        }
        trainer.set_moments(state.adam_step, moments);
        let since_fired = ints
            .remove("since_fired")
            .ok_or_else(|| format_err(&tensor_path, "missing tensor 'since_fired'"))?;
        if since_fired.len() != trainer.since_fired.len() {
            return Err(format_err(
                &tensor_path,
                format!(
                    "since_fired has {} entries; expected d_sae = {}",
                    since_fired.len(),
                    trainer.since_fired.len()
                ),
            ));
        }
        let state_path = dir.join(TRAINER_JSON);
        if state.position > state.rows {
            return Err(format_err(
                &state_path,
                format!("position {} exceeds rows {}", state.position, state.rows),
            ));
        }
        // One shuffle starts each epoch, so a saved state has at most `epoch + 1`; a larger count
        // (a damaged file) would replay shuffles for as long as it says.
        if state.shuffles > state.epoch as u64 + 1 {
            return Err(format_err(
                &state_path,
                format!(
                    "shuffles {} exceeds epoch + 1 = {}",
                    state.shuffles,
                    state.epoch as u64 + 1
                ),
            ));
        }
        trainer.since_fired = since_fired;
        trainer.step = state.step;
        trainer.samples_seen = state.samples_seen;
        trainer.epoch = state.epoch;
        trainer.position = state.position;
        // Replay the shuffles so that this epoch's order and the generator's state match.
        if state.rows > 0 {
            trainer.order = Vec::new();
            trainer.order.try_reserve_exact(state.rows).map_err(|_| {
                format_err(
                    &state_path,
                    format!("rows {} is more than this machine can hold", state.rows),
                )
            })?;
            trainer.order.extend(0..state.rows);
            for _ in 0..state.shuffles {
                trainer.order.shuffle(&mut trainer.rng);
            }
        }
        trainer.shuffles = state.shuffles;
        trainer.data_fingerprint = state.data_fingerprint;
        let is_step_folder = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy() == format!("step-{:010}", state.step));
        if let (Some(saved), true) = (state.checkpoints, is_step_folder) {
            let root = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            trainer.checkpoints = Some(
                CheckpointPolicy::new(root, saved.every_steps).with_keep_last(saved.keep_last),
            );
        }
        Ok(trainer)
    }

    /// Shapes of the four parameters, in [`PARAMS`] order.
    fn param_dims(&self) -> [Vec<usize>; 4] {
        let m = &self.config.model;
        [
            vec![m.d_in, m.d_sae],
            vec![m.d_sae],
            vec![m.d_sae, m.d_in],
            vec![m.d_in],
        ]
    }

    /// The Adam step count and the moments as `(adam.{param}.{m|v}, values, shape)`.
    fn moments(&self) -> (u64, Vec<NamedMoment>) {
        let (step, values): (u64, Vec<Vec<f32>>) = match &self.engine {
            Engine::Tensor(a) => (
                a.step,
                vec![
                    to_host(a.w_enc.m.clone()),
                    to_host(a.w_enc.v.clone()),
                    to_host(a.b_enc.m.clone()),
                    to_host(a.b_enc.v.clone()),
                    to_host(a.w_dec.m.clone()),
                    to_host(a.w_dec.v.clone()),
                    to_host(a.b_dec.m.clone()),
                    to_host(a.b_dec.v.clone()),
                ],
            ),
            Engine::Host(h) => {
                let mut v = vec![h.w_enc_moment(0), h.w_enc_moment(1)];
                for i in 1..4 {
                    v.push(h.m[i].clone());
                    v.push(h.v[i].clone());
                }
                (h.adam_step, v)
            }
        };
        let names = PARAMS.iter().zip(self.param_dims()).flat_map(|(p, d)| {
            [
                (format!("adam.{p}.m"), d.clone()),
                (format!("adam.{p}.v"), d),
            ]
        });
        (
            step,
            names
                .zip(values)
                .map(|((name, dims), v)| (name, v, dims))
                .collect(),
        )
    }

    /// Restores the Adam state from the eight moments in [`Trainer::moments`] order.
    fn set_moments(&mut self, step: u64, moments: Vec<Vec<f32>>) {
        let dims = self.param_dims();
        match &mut self.engine {
            Engine::Tensor(a) => {
                let device = &self.device;
                let shapes = dims.iter().flat_map(|d| [d.clone(), d.clone()]);
                let mut it = moments.into_iter().zip(shapes);
                let mut next = || {
                    let (v, d) = it.next().expect("eight moments");
                    TensorData::new(v, d)
                };
                // Arguments are evaluated left to right: `m`, then `v`, of each parameter in turn.
                a.w_enc = Moments::from_data(next(), next(), device);
                a.b_enc = Moments::from_data(next(), next(), device);
                a.w_dec = Moments::from_data(next(), next(), device);
                a.b_dec = Moments::from_data(next(), next(), device);
                a.step = step;
            }
            Engine::Host(h) => {
                let mut it = moments.into_iter();
                let m0 = it.next().expect("w_enc.m");
                let v0 = it.next().expect("w_enc.v");
                h.set_w_enc_moment(0, &m0);
                h.set_w_enc_moment(1, &v0);
                for i in 1..4 {
                    h.m[i] = it.next().expect("moment");
                    h.v[i] = it.next().expect("moment");
                }
                h.adam_step = step;
            }
        }
    }
}
