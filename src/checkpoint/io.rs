//! Safetensors reading and writing, and atomic directory writes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// A host tensor read from a file: its shape and its values as `f32`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self { shape, data }
    }

    /// The transpose of a 2-D tensor.
    pub fn transposed(&self) -> Self {
        let [rows, cols] = self.shape[..] else {
            unreachable!("transposed() is only called on tensors checked to be 2-D")
        };
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        Self {
            shape: vec![cols, rows],
            data,
        }
    }
}

pub(crate) fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_bytes(path)?;
    serde_json::from_slice(&bytes).map_err(|e| format_err(path, format!("invalid JSON: {e}")))
}

pub(crate) fn to_json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("our config types serialise to JSON")
}

/// Float tensors (as f32) and 64-bit integer tensors of a safetensors file, by name.
pub(crate) type SafetensorsContent = (HashMap<String, HostTensor>, HashMap<String, Vec<u64>>);

/// Reads every tensor of a safetensors file: float tensors as `f32` (F32, F16, BF16 and F64 are
/// converted), U64/I64 tensors separately; any other dtype is an error.
pub(crate) fn read_safetensors(path: &Path) -> Result<SafetensorsContent> {
    let bytes = read_bytes(path)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| format_err(path, format!("corrupt safetensors file: {e}")))?;
    let mut floats = HashMap::new();
    let mut ints = HashMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let shape = view.shape().to_vec();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            Dtype::U64 | Dtype::I64 => {
                let v = raw
                    .chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect();
                ints.insert(name, v);
                continue;
            }
            other => {
                return Err(format_err(
                    path,
                    format!("tensor '{name}' has dtype {other:?}; expected a float type"),
                ));
            }
        };
        floats.insert(name, HostTensor { shape, data });
    }
    Ok((floats, ints))
}

/// A tensor to write: f32 values or u64 values.
pub(crate) enum OutTensor<'a> {
    F32(&'a [usize], &'a [f32]),
    U64(&'a [usize], &'a [u64]),
}

/// Serialises tensors to safetensors bytes (little-endian).
pub(crate) fn safetensors_bytes(tensors: &[(&str, OutTensor<'_>)]) -> Vec<u8> {
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| match t {
            OutTensor::F32(shape, v) => (
                (*name).to_owned(),
                Dtype::F32,
                shape.to_vec(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            OutTensor::U64(shape, v) => (
                (*name).to_owned(),
                Dtype::U64,
                shape.to_vec(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .expect("shape matches the data"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("valid tensors serialise")
}

/// Writes `files` into the directory `dir` so that `dir` is either its previous complete
/// content or the new complete content, never a mix: files go into a hidden temporary sibling,
/// are flushed to disk, and the sibling is renamed over `dir`.
pub(crate) fn write_dir_atomically(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    write_dir_atomically_impl(dir, files, None)
}

/// `fail_after`: stop with an error after writing that many files (half of the last one), as a
/// killed process would. Used by tests.
pub(crate) fn write_dir_atomically_impl(
    dir: &Path,
    files: &[(&str, Vec<u8>)],
    fail_after: Option<usize>,
) -> Result<()> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    let name = dir
        .file_name()
        .map_or_else(|| "checkpoint".into(), |n| n.to_string_lossy().into_owned());
    let parent: PathBuf = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let tmp = parent.join(format!(".{name}.tmp-{unique}"));
    fs::create_dir(&tmp).map_err(io("create", &tmp))?;
    for (i, (file, bytes)) in files.iter().enumerate() {
        let path = tmp.join(file);
        let mut f = File::create(&path).map_err(io("create", &path))?;
        if fail_after == Some(i) {
            f.write_all(&bytes[..bytes.len() / 2])
                .map_err(io("write", &path))?;
            return Err(Error::Io {
                action: "write",
                path,
                source: std::io::Error::other("simulated crash"),
            });
        }
        f.write_all(bytes).map_err(io("write", &path))?;
        f.sync_all().map_err(io("sync", &path))?;
    }
    sync_dir(&tmp);
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{unique}"));
        fs::rename(dir, &old).map_err(io("rename", dir))?;
        fs::rename(&tmp, dir).map_err(io("rename", &tmp))?;
        // The new content is in place; failing to delete the old copy loses nothing.
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(&tmp, dir).map_err(io("rename", &tmp))?;
    }
    sync_dir(&parent);
    Ok(())
}

/// Flushes a directory's entries (best effort: not every platform can open a directory).
fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}
