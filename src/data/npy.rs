//! `.npy` files: reading (checked before npyz parses a header) and writing `float32`.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use npyz::WriterBuilder;

use super::Embeddings;
use crate::error::{Error, Result};

impl Embeddings {
    /// Reads a 2-D `.npy` file of `float32`, `float16` or `float64` in C order (either byte
    /// order). `float64` values are rounded to the nearest `float32`, as NumPy's
    /// `astype(np.float32)` does.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened; [`Error::Format`] when it is a folder, is not
    /// a valid `.npy`, is truncated, is not 2-D, is Fortran-ordered, holds another dtype or holds a
    /// `float64` value beyond `float32`'s range; the errors of
    /// [`Embeddings::from_vec`] for empty or non-finite data.
    pub fn from_npy(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let format = |reason: String| Error::Format {
            path: path.to_path_buf(),
            reason,
        };
        if path.is_dir() {
            return Err(format(
                "is a folder; give a .npy file (a 2-D float array saved with numpy.save)".into(),
            ));
        }
        let file = File::open(path).map_err(|source| Error::Io {
            action: "open",
            path: path.to_path_buf(),
            source,
        })?;
        let file_len = file.metadata().map_or(u64::MAX, |m| m.len());
        let mut file = BufReader::new(file);
        check_npy_header(&mut file)
            .map_err(|reason| format(format!("not a valid .npy file: {reason}")))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(|source| {
            Error::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            }
        })?;
        let npy =
            npyz::NpyFile::new(file).map_err(|e| format(format!("not a valid .npy file: {e}")))?;
        let shape = npy.shape().to_vec();
        let [rows, d_in] = shape[..] else {
            return Err(format(format!(
                "expected a 2-D array [rows, d_in], found shape {shape:?}"
            )));
        };
        if npy.order() != npyz::Order::C {
            return Err(format(
                "Fortran-ordered arrays are not supported; save in C order".into(),
            ));
        }
        let npyz::DType::Plain(ty) = npy.dtype() else {
            return Err(format(format!("unsupported dtype {}", npy.dtype().descr())));
        };
        let width = match (ty.type_char(), ty.size_field()) {
            (npyz::TypeChar::Float, 4) => 4,
            (npyz::TypeChar::Float, 2) => 2,
            (npyz::TypeChar::Float, 8) => 8,
            _ => {
                return Err(format(format!(
                    "unsupported dtype {ty}: expected float32, float16 or float64"
                )));
            }
        };
        let count = rows
            .checked_mul(d_in)
            .filter(|n| n.checked_mul(width).is_some_and(|b| b <= file_len));
        let Some(count) = count else {
            return Err(format(format!(
                "file is truncated: shape [{rows}, {d_in}] needs more bytes than its {file_len}"
            )));
        };
        let read_err = |e: std::io::Error| format(format!("cannot read data: {e}"));
        let data: Vec<f32> = match width {
            4 => npy.into_vec::<f32>().map_err(read_err)?,
            2 => npy
                .into_vec::<half::f16>()
                .map_err(read_err)?
                .into_iter()
                .map(f32::from)
                .collect(),
            _ => narrow_f64(&npy.into_vec::<f64>().map_err(read_err)?, d_in as usize)
                .map_err(format)?,
        };
        if data.len() as u64 != count {
            return Err(format(format!(
                "file is truncated: read {} of {count} values",
                data.len()
            )));
        }
        let name = path.display().to_string();
        Self::named(data, rows as usize, d_in as usize, name)
    }

    /// Writes the matrix as a little-endian `float32` `.npy` file.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    pub fn write_npy(&self, path: impl AsRef<Path>) -> Result<()> {
        write_npy_f32(path.as_ref(), self.as_slice(), self.rows(), self.d_in())
    }
}

/// Rounds `float64` values to `float32`, refusing finite values that only `float64` can hold
/// (NaN and infinities pass through, for `check_finite` to name).
fn narrow_f64(values: &[f64], d_in: usize) -> std::result::Result<Vec<f32>, String> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let narrow = v as f32;
            if v.is_finite() && !narrow.is_finite() {
                Err(format!(
                    "row {} holds {v:e}, beyond float32's range (about 3.4e38)",
                    i / d_in.max(1)
                ))
            } else {
                Ok(narrow)
            }
        })
        .collect()
}

/// Checks the `.npy` preamble and that the header is a plain dict literal of `descr`,
/// `fortran_order` and `shape` before npyz parses it: npyz's general Python-literal grammar can
/// take exponential time on crafted headers (found by fuzzing), ours is linear.
fn check_npy_header(reader: &mut impl std::io::Read) -> std::result::Result<(), String> {
    let mut pre = [0u8; 10];
    reader
        .read_exact(&mut pre)
        .map_err(|_| "file is shorter than the .npy preamble".to_owned())?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let len = match pre[6] {
        1 => usize::from(u16::from_le_bytes([pre[8], pre[9]])),
        2 | 3 => {
            let mut rest = [0u8; 2];
            reader
                .read_exact(&mut rest)
                .map_err(|_| "truncated header length".to_owned())?;
            u32::from_le_bytes([pre[8], pre[9], rest[0], rest[1]]) as usize
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    if len > 1 << 16 {
        return Err(format!("header of {len} bytes is implausibly long"));
    }
    let mut header = vec![0u8; len];
    reader
        .read_exact(&mut header)
        .map_err(|_| "truncated header".to_owned())?;
    let text = std::str::from_utf8(&header).map_err(|_| "header is not text".to_owned())?;
    parse_header_dict(text.trim_end_matches(['\n', ' ', '\0']))
}

/// Accepts `{'key': value, ...}` where each value is a quoted string without escapes or nested
/// quotes, `True`/`False`, or a tuple of integers.
fn parse_header_dict(text: &str) -> std::result::Result<(), String> {
    let shown: String = text.chars().take(80).collect();
    let bad = |what: &str| Err(format!("malformed header ({what}): {shown:?}"));
    let Some(body) = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
    else {
        return bad("not a dict");
    };
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        // key
        let Some(after) = rest.strip_prefix('\'') else {
            return bad("key");
        };
        let Some(end) = after.find('\'') else {
            return bad("key");
        };
        if !matches!(&after[..end], "descr" | "fortran_order" | "shape") {
            return bad("unknown key");
        }
        rest = after[end + 1..].trim_start();
        let Some(after) = rest.strip_prefix(':') else {
            return bad("colon");
        };
        rest = after.trim_start();
        // value
        if let Some(after) = rest.strip_prefix('\'') {
            let Some(end) = after.find('\'') else {
                return bad("string");
            };
            if after[..end].contains(['\\', '"']) {
                return bad("string");
            }
            rest = &after[end + 1..];
        } else if let Some(after) = rest
            .strip_prefix("True")
            .or_else(|| rest.strip_prefix("False"))
        {
            rest = after;
        } else if let Some(after) = rest.strip_prefix('(') {
            let Some(end) = after.find(')') else {
                return bad("shape");
            };
            let dims = &after[..end];
            if !dims
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == ' ' || c == 'L')
            {
                return bad("shape");
            }
            // npyz multiplies the dimensions without overflow checks (found by fuzzing).
            let mut elements: u64 = 1;
            for dim in dims
                .split(',')
                .map(|d| d.trim().trim_end_matches('L'))
                .filter(|d| !d.is_empty())
            {
                let n: u64 = dim
                    .parse()
                    .map_err(|_| format!("shape dimension {dim:?} is out of range"))?;
                elements = elements
                    .checked_mul(n)
                    .filter(|e| e.checked_mul(8).is_some())
                    .ok_or_else(|| {
                        format!("shape ({dims}) holds more elements than fit in memory")
                    })?;
            }
            rest = &after[end + 1..];
        } else {
            return bad("value");
        }
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(after) => rest = after.trim_start(),
            None if rest.is_empty() => {}
            None => return bad("separator"),
        }
    }
    Ok(())
}

/// Writes a row-major `[rows, cols]` buffer as a little-endian `float32` `.npy` file.
pub(crate) fn write_npy_f32(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let io = |source| Error::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io)?;
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&[rows as u64, cols as u64])
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(io)?;
    writer.extend(data.iter().copied()).map_err(io)?;
    writer.finish().map_err(io)
}
