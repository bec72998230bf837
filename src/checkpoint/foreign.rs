//! The peer libraries' layouts (SPEC §5): saerch `.pth`, OpenAI `.pt`, SAELens v6 and sparsify
//! folders, read into a [`TopKSae`]; SAELens v6 written.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use burn::tensor::backend::Backend;
use serde_json::{Value, json};

use super::io::{
    HostTensor, OutTensor, Owned, format_err, read_json, read_safetensors, safetensors_bytes,
    to_json, write_dir_atomically,
};
use super::{Checkpoint, CheckpointConfig, CheckpointMeta, HostParams};
use crate::data::{NormalizationKind, Normalizer};
use crate::error::{Error, Result};
use crate::sae::{TopKSae, TopKSaeConfig};

/// A checkpoint layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Format {
    /// Decide from the path: a folder by its files, a `.pt`/`.pth` file by its keys.
    #[default]
    Auto,
    /// This crate's directory layout.
    Native,
    /// saerch `.pth`: `pre_bias`, `latent_bias`, `encoder.weight [d_sae, d_in]`,
    /// `decoder.weight [d_in, d_sae]`; `k` from the file name `{domain}_{k}_{d_sae}_{k_aux}.pth`.
    Saerch,
    /// OpenAI `sparse_autoencoder` `.pt`: saerch's names plus buffers and `activation_state_dict {k}`.
    OpenAi,
    /// SAELens v6 folder: `cfg.json` and `sae_weights.safetensors`.
    SaeLens,
    /// EleutherAI sparsify folder: `cfg.json` and `sae.safetensors`.
    Sparsify,
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "native" => Self::Native,
            "saerch" => Self::Saerch,
            "openai" => Self::OpenAi,
            "saelens" => Self::SaeLens,
            "sparsify" => Self::Sparsify,
            other => {
                return Err(Error::invalid(
                    "format",
                    other,
                    "must be auto, native, saerch, openai, saelens or sparsify",
                ));
            }
        })
    }
}

/// How [`load_any`] reads a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Which layout (default: detect).
    pub format: Format,
    /// Active latents, for layouts that do not store it (saerch) or to override the stored value.
    pub k: Option<usize>,
}

/// Splits a saerch file name `{domain}_{k}_{d_sae}_{k_aux}.pth` into `(domain, k, d_sae, k_aux)`.
///
/// ```
/// let parsed = topk_sae::checkpoint::parse_saerch_file_name("csLG_128_3072_256.pth");
/// assert_eq!(parsed, Some(("csLG".to_owned(), 128, 3072, 256)));
/// ```
pub fn parse_saerch_file_name(name: &str) -> Option<(String, usize, usize, usize)> {
    let stem = name
        .strip_suffix(".pth")
        .or_else(|| name.strip_suffix(".pt"))
        .unwrap_or(name);
    let mut parts = stem.rsplitn(4, '_');
    let k_aux = parts.next()?.parse().ok()?;
    let d_sae = parts.next()?.parse().ok()?;
    let k = parts.next()?.parse().ok()?;
    let domain = parts.next()?.to_owned();
    Some((domain, k, d_sae, k_aux))
}

/// Decides the layout of `path`.
fn detect(path: &Path) -> Result<Format> {
    if path.is_dir() {
        for (file, format) in [
            (super::META_FILE, Format::Native),
            ("sae_weights.safetensors", Format::SaeLens),
            ("sae.safetensors", Format::Sparsify),
        ] {
            if path.join(file).is_file() {
                return Ok(format);
            }
        }
        let none = "folder holds none of meta.json, sae_weights.safetensors, sae.safetensors";
        // A training run's --checkpoint-dir: point at the checkpoint the user most likely meant.
        let reason = match super::latest(path) {
            Ok(Some(newest)) => format!(
                "{none}; it holds training checkpoints (step-NNNNNNNNNN folders): pass one of \
                 them, the newest is {}",
                newest.display()
            ),
            _ => none.to_owned(),
        };
        return Err(format_err(path, reason));
    }
    if !path.exists() {
        return Err(Error::Io {
            action: "open",
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    if ext == "pt" || ext == "pth" {
        let tensors = read_pytorch(path)?;
        return Ok(if tensors.contains_key("stats_last_nonzero") {
            Format::OpenAi
        } else {
            Format::Saerch
        });
    }
    Err(format_err(
        path,
        "cannot tell the format: expected a checkpoint folder or a .pt/.pth file",
    ))
}

/// Loads a checkpoint in any supported layout.
///
/// # Errors
/// [`Error::Io`] for a missing path; [`Error::Format`] naming the file for an undetectable,
/// truncated or corrupt file, a pickle that holds anything but tensors and plain containers,
/// missing, extra or mis-shaped tensors, or an unsupported configuration; [`Error::InvalidConfig`]
/// when `k` is unknown or out of range, or naming `d_sae` on a GPU whose largest buffer cannot
/// hold the `[d_in, d_sae]` weights.
pub fn load_any<B: Backend>(
    path: impl AsRef<Path>,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<Checkpoint<B>> {
    let path = path.as_ref();
    let format = match options.format {
        Format::Auto => detect(path)?,
        f => f,
    };
    let (params, k, normalizer) = match format {
        Format::Native => {
            let ckpt = super::load::<B>(path, device)?;
            return match options.k {
                Some(k) => Ok(Checkpoint {
                    model: ckpt.model.with_k(k)?,
                    ..ckpt
                }),
                None => Ok(ckpt),
            };
        }
        Format::Saerch | Format::OpenAi => read_torch(path, format, options.k)?,
        Format::SaeLens => read_saelens(path, options.k)?,
        Format::Sparsify => read_sparsify(path, options.k)?,
        Format::Auto => unreachable!("resolved above"),
    };
    let model: TopKSae<B> = params.into_model(path, k, device)?;
    let config = CheckpointConfig {
        model: TopKSaeConfig::new(model.d_in(), model.d_sae(), k),
        normalizer: normalizer.clone(),
        train: None,
    };
    let meta = CheckpointMeta {
        format_version: super::FORMAT_VERSION,
        crate_version: String::new(),
        step: 0,
        samples_seen: 0,
    };
    Ok(Checkpoint {
        model,
        normalizer,
        config,
        meta,
    })
}

fn read_pytorch(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let path_buf = path.to_path_buf();
    // burn-store interprets the pickle (it never executes it) and rejects unknown globals; a panic
    // inside it on a malformed file is turned into an error too.
    let read = std::panic::catch_unwind(
        move || -> std::result::Result<HashMap<String, HostTensor>, String> {
            let reader =
                burn_store::pytorch::PytorchReader::new(&path_buf).map_err(|e| e.to_string())?;
            let mut out = HashMap::new();
            for (name, snapshot) in reader.into_tensors() {
                let shape = snapshot.shape.to_vec();
                let data = snapshot
                    .to_data()
                    .map_err(|e| format!("tensor '{name}': {e:?}"))?;
                let values = match data.dtype {
                    burn::tensor::DType::F32
                    | burn::tensor::DType::F16
                    | burn::tensor::DType::BF16
                    | burn::tensor::DType::F64 => data
                        .convert::<f32>()
                        .into_vec::<f32>()
                        .map_err(|e| format!("tensor '{name}': {e:?}"))?,
                    other => {
                        // Integer buffers (OpenAI's counters) are not parameters: keep only their shape.
                        let _ = other;
                        out.insert(name, HostTensor::new(shape, Vec::new()));
                        continue;
                    }
                };
                out.insert(name, HostTensor::new(shape, values));
            }
            Ok(out)
        },
    );
    match read {
        Ok(Ok(tensors)) => Ok(tensors),
        Ok(Err(reason)) => Err(format_err(
            path,
            format!("cannot read PyTorch file: {reason}"),
        )),
        Err(_) => Err(format_err(
            path,
            "cannot read PyTorch file: the reader failed on malformed data",
        )),
    }
}

/// OpenAI `.pt` stores `k` as `activation_state_dict["k"]`.
fn openai_k(path: &Path) -> Option<usize> {
    let path = path.to_path_buf();
    let value = std::panic::catch_unwind(move || {
        burn_store::pytorch::PytorchReader::read_pickle_data(&path, None).ok()
    })
    .ok()??;
    let burn_store::pytorch::reader::PickleValue::Dict(top) = value else {
        return None;
    };
    let burn_store::pytorch::reader::PickleValue::Dict(act) = top.get("activation_state_dict")?
    else {
        return None;
    };
    match act.get("k")? {
        burn_store::pytorch::reader::PickleValue::Int(k) => usize::try_from(*k).ok(),
        _ => None,
    }
}

type Read = (HostParams, usize, Normalizer);

fn read_torch(path: &Path, format: Format, k: Option<usize>) -> Result<Read> {
    let tensors = read_pytorch(path)?;
    let extra: &[&str] = if format == Format::OpenAi {
        &[
            "stats_last_nonzero",
            "latents_activation_frequency",
            "latents_mean_square",
        ]
    } else {
        &[]
    };
    let [pre_bias, latent_bias, enc, dec] = HostParams::take(
        path,
        tensors,
        [
            "pre_bias",
            "latent_bias",
            "encoder.weight",
            "decoder.weight",
        ],
        extra,
    )?;
    HostParams::check_rank(path, "encoder.weight", &enc, 2)?;
    HostParams::check_rank(path, "decoder.weight", &dec, 2)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let from_name = parse_saerch_file_name(&name);
    if let (Format::Saerch, Some((_, _, d_sae, _))) = (format, &from_name)
        && enc.shape[0] != *d_sae
    {
        return Err(format_err(
            path,
            format!(
                "file name says d_sae {d_sae} but encoder.weight is {:?}",
                enc.shape
            ),
        ));
    }
    let k = match (k, format) {
        (Some(k), _) => k,
        (None, Format::OpenAi) => openai_k(path).ok_or_else(|| {
            Error::invalid("k", "unknown", "not found in activation_state_dict; pass k explicitly")
        })?,
        (None, _) => from_name.map(|(_, k, _, _)| k).ok_or_else(|| {
            Error::invalid("k", "unknown", format!("'{name}' is not named {{domain}}_{{k}}_{{d_sae}}_{{k_aux}}.pth; pass k explicitly"))
        })?,
    };
    let params = HostParams {
        w_enc: enc.transposed(),
        b_enc: latent_bias,
        w_dec: dec.transposed(),
        b_dec: pre_bias,
    };
    Ok((params, k, Normalizer::identity()))
}

fn json_usize(path: &Path, cfg: &Value, keys: &[&str]) -> Result<Option<usize>> {
    for key in keys {
        let mut v = cfg;
        for part in key.split('.') {
            v = v.get(part).unwrap_or(&Value::Null);
        }
        if !v.is_null() {
            return v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                format_err(
                    path,
                    format!("'{key}' must be a non-negative integer, found {v}"),
                )
            });
        }
    }
    Ok(None)
}

fn read_saelens(dir: &Path, k: Option<usize>) -> Result<Read> {
    let cfg_path = dir.join("cfg.json");
    let cfg: Value = read_json(&cfg_path)?;
    let architecture = cfg
        .get("architecture")
        .and_then(Value::as_str)
        .unwrap_or("topk");
    if architecture != "topk" {
        return Err(format_err(
            &cfg_path,
            format!("architecture '{architecture}' is not a top-k SAE"),
        ));
    }
    let norm = cfg
        .get("normalize_activations")
        .and_then(Value::as_str)
        .unwrap_or("none");
    if norm != "none" {
        return Err(format_err(
            &cfg_path,
            format!("normalize_activations '{norm}' is not supported (only 'none')"),
        ));
    }
    let k = match k {
        Some(k) => k,
        None => json_usize(&cfg_path, &cfg, &["k", "activation_fn_kwargs.k"])?
            .ok_or_else(|| format_err(&cfg_path, "no 'k' nor 'activation_fn_kwargs.k'"))?,
    };
    let weights = dir.join("sae_weights.safetensors");
    let (tensors, _) = read_safetensors(&weights)?;
    let [w_enc, b_enc, w_dec, b_dec] =
        HostParams::take(&weights, tensors, ["W_enc", "b_enc", "W_dec", "b_dec"], &[])?;
    HostParams::check_rank(&weights, "W_enc", &w_enc, 2)?;
    check_dims(&cfg_path, &cfg, &w_enc.shape, "d_in", "d_sae")?;
    let mut params = HostParams {
        w_enc,
        b_enc,
        w_dec,
        b_dec,
    };
    if cfg.get("apply_b_dec_to_input").and_then(Value::as_bool) == Some(false) {
        // pre = x @ W_enc + b_enc = (x - b_dec) @ W_enc + (b_enc + b_dec @ W_enc).
        let d_sae = params.w_enc.shape[1];
        if params.b_dec.data.len() * d_sae == params.w_enc.data.len()
            && params.b_enc.data.len() == d_sae
        {
            for (i, b) in params.b_dec.data.iter().enumerate() {
                for j in 0..d_sae {
                    params.b_enc.data[j] += b * params.w_enc.data[i * d_sae + j];
                }
            }
        }
    }
    Ok((params, k, Normalizer::identity()))
}

fn check_dims(
    cfg_path: &Path,
    cfg: &Value,
    w_enc: &[usize],
    d_in_key: &str,
    d_sae_key: &str,
) -> Result<()> {
    for (key, actual) in [(d_in_key, w_enc[0]), (d_sae_key, w_enc[1])] {
        if let Some(stated) = json_usize(cfg_path, cfg, &[key])?
            && stated != actual
        {
            return Err(format_err(
                cfg_path,
                format!("{key} is {stated} but the weights say {actual}"),
            ));
        }
    }
    Ok(())
}

fn read_sparsify(dir: &Path, k: Option<usize>) -> Result<Read> {
    let cfg_path = dir.join("cfg.json");
    let cfg: Value = read_json(&cfg_path)?;
    if cfg.get("skip_connection").and_then(Value::as_bool) == Some(true) {
        return Err(format_err(
            &cfg_path,
            "skip_connection SAEs are not supported",
        ));
    }
    let k = match k {
        Some(k) => k,
        None => {
            json_usize(&cfg_path, &cfg, &["k"])?.ok_or_else(|| format_err(&cfg_path, "no 'k'"))?
        }
    };
    let weights = dir.join("sae.safetensors");
    let (tensors, _) = read_safetensors(&weights)?;
    let [enc, b_enc, w_dec, b_dec] = HostParams::take(
        &weights,
        tensors,
        ["encoder.weight", "encoder.bias", "W_dec", "b_dec"],
        &[],
    )?;
    HostParams::check_rank(&weights, "encoder.weight", &enc, 2)?;
    let w_enc = enc.transposed();
    check_dims(&cfg_path, &cfg, &w_enc.shape, "d_in", "num_latents")?;
    Ok((
        HostParams {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
        },
        k,
        Normalizer::identity(),
    ))
}

const SAELENS_CFG: &str = "cfg.json";
const SAELENS_WEIGHTS: &str = "sae_weights.safetensors";

/// The files of a SAELens folder [`export_saelens`] wrote: it replaces such a folder (its
/// `cfg.json` names this crate as the exporter), never one SAELens or a user wrote.
const SAELENS_EXPORT: Owned = Owned {
    what: "SAELens export",
    names: &[SAELENS_CFG, SAELENS_WEIGHTS],
    is_ours: |dir| {
        read_json::<Value>(&dir.join(SAELENS_CFG)).is_ok_and(|cfg| {
            cfg.pointer("/metadata/exported_by")
                .and_then(Value::as_str)
                .is_some_and(|by| by.starts_with("topk-sae "))
        })
    },
};

/// Checks that [`export_saelens`] may write into `dir`, without writing anything: for callers
/// that check every output before long work.
///
/// # Errors
/// [`Error::OutputInUse`] when `dir` is a file, a symbolic link, a folder holding files this
/// crate did not write, or a SAELens folder this crate did not export; [`Error::Io`] when it
/// cannot be inspected.
pub fn check_export_dir(dir: impl AsRef<Path>) -> Result<()> {
    super::io::check_replaceable(dir.as_ref(), &SAELENS_EXPORT)
}

/// Writes `model` as a SAELens v6 folder (`cfg.json` with `architecture: "topk"`, top-level `k`
/// and `activation_fn_kwargs.k`; `sae_weights.safetensors`). A centring or scaling normaliser is
/// folded into the weights exactly, so the folder takes raw inputs (`normalize_activations:
/// "none"`).
///
/// `dir` may be new, an empty folder, or an earlier export of this crate's; anything else (a
/// file, a folder holding other files, a folder SAELens wrote) is refused and left as it is.
///
/// # Errors
/// [`Error::OutputInUse`] when `dir` is taken as above; [`Error::Io`] when the folder cannot be
/// written; [`Error::InvalidConfig`] when `normalizer` does not fit the model ([`Normalizer::check`]), which would fold into wrong weights.
pub fn export_saelens<B: Backend>(
    dir: impl AsRef<Path>,
    model: &TopKSae<B>,
    normalizer: &Normalizer,
) -> Result<()> {
    normalizer.check(model.d_in())?;
    let mut p = HostParams::from_model(model);
    match normalizer.kind {
        NormalizationKind::None => {}
        // x' = x - m: pre = (x - (b_dec + m)) W + b_enc and x_hat = z W_dec + (b_dec + m).
        NormalizationKind::Center => {
            for (b, m) in p.b_dec.data.iter_mut().zip(&normalizer.mean) {
                *b += m;
            }
        }
        // x' = s x: pre = (x - b_dec / s)(s W) + b_enc and x_hat = z (W_dec / s) + b_dec / s.
        NormalizationKind::ScaleToDIn => {
            let s = normalizer.scale;
            p.w_enc.data.iter_mut().for_each(|w| *w *= s);
            p.w_dec.data.iter_mut().for_each(|w| *w /= s);
            p.b_dec.data.iter_mut().for_each(|b| *b /= s);
        }
    }
    let (d_in, d_sae, k) = (model.d_in(), model.d_sae(), model.k());
    let cfg = json!({
        "architecture": "topk",
        "d_in": d_in,
        "d_sae": d_sae,
        "k": k,
        "activation_fn_kwargs": { "k": k },
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "dtype": "float32",
        "device": "cpu",
        "metadata": {
            "sae_lens_version": "6",
            "exported_by": format!("topk-sae {}", env!("CARGO_PKG_VERSION")),
        },
    });
    let weights = safetensors_bytes(&[
        ("W_enc", OutTensor::F32(&p.w_enc.shape, &p.w_enc.data)),
        ("b_enc", OutTensor::F32(&p.b_enc.shape, &p.b_enc.data)),
        ("W_dec", OutTensor::F32(&p.w_dec.shape, &p.w_dec.data)),
        ("b_dec", OutTensor::F32(&p.b_dec.shape, &p.b_dec.data)),
    ]);
    write_dir_atomically(
        dir.as_ref(),
        &[(SAELENS_CFG, to_json(&cfg)), (SAELENS_WEIGHTS, weights)],
        &SAELENS_EXPORT,
    )
}
