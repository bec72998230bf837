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

/// What a folder writer owns: the names of the files it writes, and how to recognise a folder
/// it wrote before. A writer replaces an existing folder only when the folder is empty or is one
/// of its own (only these names, and `is_ours` says so); it never deletes anything else.
pub(crate) struct Owned {
    /// What the folder is, for messages: `checkpoint`, `SAELens export`.
    pub what: &'static str,
    /// Every file name the writer may put in the folder.
    pub names: &'static [&'static str],
    /// Whether a folder holding only `names` was written by this crate.
    pub is_ours: fn(&Path) -> bool,
}

/// At most this many names are listed when a folder holds files that are not ours.
const LISTED: usize = 5;

/// Checks that `dir` may be written by the writer that owns `owned`: it does not exist, or it is
/// an empty folder, or a folder the writer wrote before.
///
/// # Errors
/// [`Error::OutputInUse`] naming `dir` when it is a file or a symbolic link, holds anything the
/// writer does not own (the names are listed), or holds only owned names that this crate did not
/// write; [`Error::Io`] when it cannot be inspected.
pub(crate) fn check_replaceable(dir: &Path, owned: &Owned) -> Result<()> {
    let in_use = |reason: String| Error::OutputInUse {
        path: dir.to_path_buf(),
        reason,
    };
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                action: "inspect",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    if meta.file_type().is_symlink() {
        return Err(in_use(format!(
            "is a symbolic link; give the {} folder's own path",
            owned.what
        )));
    }
    if !meta.is_dir() {
        return Err(in_use(format!(
            "is a file, not a folder (for a {})",
            owned.what
        )));
    }
    let entries = fs::read_dir(dir).map_err(|source| Error::Io {
        action: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names = Vec::new();
    let mut foreign = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            action: "list",
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && owned.names.contains(&name.as_str()) {
            names.push(name);
        } else {
            foreign.push(if is_file { name } else { format!("{name}/") });
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        let more = foreign.len().saturating_sub(LISTED);
        foreign.truncate(LISTED);
        let list = if more > 0 {
            format!("{} and {more} more", foreign.join(", "))
        } else {
            foreign.join(", ")
        };
        return Err(in_use(format!(
            "the folder holds {list}, which this crate did not write; save the {} into a new \
             or empty folder",
            owned.what
        )));
    }
    if !names.is_empty() && !(owned.is_ours)(dir) {
        names.sort();
        return Err(in_use(format!(
            "the folder holds {}, but not a {} written by this crate; save into a new or empty \
             folder",
            names.join(", "),
            owned.what
        )));
    }
    Ok(())
}

/// Deletes a folder the writer owns: its owned files, `first` before the others (a folder
/// without `first` is no longer taken for complete), then the folder itself when that left it
/// empty. Anything else in it stays where it is.
///
/// # Errors
/// [`Error::Io`] when an owned file cannot be deleted.
pub(crate) fn remove_owned(dir: &Path, owned: &Owned, first: &str) -> Result<()> {
    let order = std::iter::once(first).chain(owned.names.iter().copied().filter(|n| *n != first));
    for name in order {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    action: "remove",
                    path,
                    source,
                });
            }
        }
    }
    // Fails, and keeps the folder, when something else is in it.
    let _ = fs::remove_dir(dir);
    Ok(())
}

/// Writes `files` into the directory `dir` so that `dir` is either its previous complete
/// content or the new complete content, never a mix: files go into a hidden temporary sibling,
/// are flushed to disk, and the sibling is renamed over `dir`. An existing `dir` must pass
/// [`check_replaceable`]; only its owned files are deleted.
pub(crate) fn write_dir_atomically(
    dir: &Path,
    files: &[(&str, Vec<u8>)],
    owned: &Owned,
) -> Result<()> {
    write_dir_atomically_impl(dir, files, owned, None)
}

/// `fail_after`: stop with an error after writing that many files (half of the last one), as a
/// killed process would. Used by tests.
pub(crate) fn write_dir_atomically_impl(
    dir: &Path,
    files: &[(&str, Vec<u8>)],
    owned: &Owned,
    fail_after: Option<usize>,
) -> Result<()> {
    debug_assert!(files.iter().all(|(n, _)| owned.names.contains(n)));
    check_replaceable(dir, owned)?;
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
        // The new content is in place. Only the files we wrote before are deleted: anything
        // put into the folder since the check stays, in the hidden `old` folder.
        let _ = remove_owned(&old, owned, owned.names[0]);
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
