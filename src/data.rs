//! Embedding matrices: reading `.npy` files, validation, input normalisation and batches.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use npyz::WriterBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ops::linalg::dot;

/// A dense `[rows, d_in]` matrix of `f32` embeddings held on the host, every value finite.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    data: Vec<f32>,
    rows: usize,
    d_in: usize,
    name: String,
}

impl Embeddings {
    /// Wraps a row-major buffer.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `data.len() != rows * d_in`; [`Error::EmptyData`] when there
    /// are no rows or `d_in` is 0; [`Error::NonFinite`] naming the first row holding NaN or an
    /// infinity.
    pub fn from_vec(data: Vec<f32>, rows: usize, d_in: usize) -> Result<Self> {
        Self::named(data, rows, d_in, "input".to_owned())
    }

    fn named(data: Vec<f32>, rows: usize, d_in: usize, name: String) -> Result<Self> {
        if data.len() != rows * d_in {
            return Err(Error::ShapeMismatch {
                len: data.len(),
                rows,
                cols: d_in,
            });
        }
        if rows == 0 || d_in == 0 {
            return Err(Error::EmptyData {
                source_name: name,
                rows,
                cols: d_in,
            });
        }
        check_finite(&data, d_in, &name)?;
        Ok(Self {
            data,
            rows,
            d_in,
            name,
        })
    }

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
        write_npy_f32(path.as_ref(), &self.data, self.rows, self.d_in)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Where the rows came from: a file path, or `input`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The row-major values.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Row `i`.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.d_in..(i + 1) * self.d_in]
    }

    /// Checks that rows are `d_in` wide.
    ///
    /// # Errors
    /// [`Error::WidthMismatch`] naming both widths.
    pub fn check_width(&self, d_in: usize) -> Result<()> {
        if self.d_in == d_in {
            Ok(())
        } else {
            Err(Error::WidthMismatch {
                expected: d_in,
                actual: self.d_in,
                source_name: self.name.clone(),
            })
        }
    }

    /// Copies the given rows, in that order, into a tensor.
    ///
    /// # Shapes
    /// - output: `[rows.len(), d_in]`
    ///
    /// # Panics
    /// If a row index is out of range.
    pub fn gather<B: Backend>(&self, rows: &[usize], device: &B::Device) -> Tensor<B, 2> {
        let mut buf = Vec::with_capacity(rows.len() * self.d_in);
        for &r in rows {
            buf.extend_from_slice(self.row(r));
        }
        Tensor::from_data(TensorData::new(buf, [rows.len(), self.d_in]), device)
    }

    /// The given rows, in that order, normalised, as a row-major host buffer.
    ///
    /// # Panics
    /// If a row index is out of range.
    pub(crate) fn normalized_gather(&self, rows: &[usize], normalizer: &Normalizer) -> Vec<f32> {
        let mut buf = Vec::with_capacity(rows.len() * self.d_in);
        for &r in rows {
            buf.extend_from_slice(self.row(r));
        }
        normalizer.apply_rows(&mut buf, self.d_in);
        buf
    }

    /// Copies the contiguous rows `start..end` into a tensor.
    ///
    /// # Shapes
    /// - output: `[end - start, d_in]`
    ///
    /// # Panics
    /// If the range is out of bounds or empty.
    pub fn slice<B: Backend>(&self, start: usize, end: usize, device: &B::Device) -> Tensor<B, 2> {
        let buf = self.data[start * self.d_in..end * self.d_in].to_vec();
        Tensor::from_data(TensorData::new(buf, [end - start, self.d_in]), device)
    }

    /// Rows `range` (row indices), normalised, as a row-major host buffer.
    ///
    /// # Panics
    /// If the range is out of bounds.
    pub fn normalized_rows(
        &self,
        range: std::ops::Range<usize>,
        normalizer: &Normalizer,
    ) -> Vec<f32> {
        use rayon::prelude::*;
        // Copied and normalised in parallel pieces: on the H200 machine one thread copied 25 MB
        // (4,096 rows of 1536) at 1.6 GB/s, 254 ms of a 1.2 s GPU encoding of 65,536 rows.
        const PIECE_ROWS: usize = 256;
        let d = self.d_in;
        let src = &self.data[range.start * d..range.end * d];
        let mut rows = vec![0f32; src.len()];
        rows.par_chunks_mut(PIECE_ROWS * d)
            .zip(src.par_chunks(PIECE_ROWS * d))
            .for_each(|(dst, src)| {
                dst.copy_from_slice(src);
                normalizer.apply_rows(dst, d);
            });
        rows
    }

    /// Applies a fitted normalisation to every row in place.
    pub fn normalize(&mut self, normalizer: &Normalizer) {
        normalizer.apply_rows(&mut self.data, self.d_in);
    }

    /// A copy of the given rows, in that order, as new `Embeddings` (named after these ones):
    /// a held-out split, a sample, the rows of a few documents to encode.
    ///
    /// ```
    /// # fn main() -> topk_sae::Result<()> {
    /// let data = topk_sae::Embeddings::from_vec((0..12).map(|v| v as f32).collect(), 4, 3)?;
    /// let picked = data.select_rows(&[3, 0])?;
    /// assert_eq!(picked.as_slice(), &[9.0, 10.0, 11.0, 0.0, 1.0, 2.0]);
    /// assert_eq!(data.select_rows(&[4]).unwrap_err().to_string(),
    ///     "invalid config: row (4) must be < rows (4) of input");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `row` when an index is `>= rows`; [`Error::EmptyData`]
    /// when `rows` is empty.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(Error::invalid(
                "row",
                bad,
                format!("must be < rows ({}) of {}", self.rows, self.name),
            ));
        }
        let mut data = Vec::with_capacity(rows.len() * self.d_in);
        for &r in rows {
            data.extend_from_slice(self.row(r));
        }
        Self::named(data, rows.len(), self.d_in, self.name.clone())
    }

    /// A copy of the contiguous rows `range` as new `Embeddings` (named after these ones).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `range` when it is empty or ends past `rows`.
    pub fn slice_rows(&self, range: std::ops::Range<usize>) -> Result<Self> {
        if range.start >= range.end || range.end > self.rows {
            return Err(Error::invalid(
                "range",
                format!("{range:?}"),
                format!(
                    "must be a non-empty range within 0..{} of {}",
                    self.rows, self.name
                ),
            ));
        }
        let data = self.data[range.start * self.d_in..range.end * self.d_in].to_vec();
        Self::named(data, range.len(), self.d_in, self.name.clone())
    }

    /// A 64-bit digest of the shape and of up to 256 rows spread over the matrix (FNV-1a over
    /// their bits): equal for the same rows, and different, but for a 2^-64 chance, where one
    /// of those rows differs. A checkpoint records it so that a resume on other rows of the same
    /// shape is refused.
    pub(crate) fn fingerprint(&self) -> u64 {
        const PRIME: u64 = 0x0100_0000_01b3;
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |word: u64| {
            for byte in word.to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
            }
        };
        eat(self.rows as u64);
        eat(self.d_in as u64);
        let picks = self.rows.min(256);
        for i in 0..picks {
            // Evenly spread, the first and the last row included.
            let r = if picks == 1 {
                0
            } else {
                i * (self.rows - 1) / (picks - 1)
            };
            for v in self.row(r) {
                eat(u64::from(v.to_bits()));
            }
        }
        hash
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

/// [`Error::NonFinite`] naming the first row of `data` (rows `d_in` wide) that holds NaN or an
/// infinity, with `source_name` as the data's name.
pub(crate) fn check_finite(data: &[f32], d_in: usize, source_name: &str) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(pos) => Err(Error::NonFinite {
            row: pos / d_in.max(1),
            what: if data[pos].is_nan() {
                "NaN"
            } else {
                "an infinite value"
            },
            source_name: source_name.to_owned(),
        }),
    }
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

/// Which input normalisation to fit on the training data and apply again at inference.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
#[non_exhaustive]
pub enum NormalizationKind {
    /// Use the inputs as they are (the reference recipe: its embeddings arrive unit-norm).
    None,
    /// Subtract the training data's mean row.
    Center,
    /// Multiply by one scalar so the mean squared row norm of the training data is `d_in`.
    ScaleToDIn,
}

impl NormalizationKind {
    /// The short name [`str::parse`] reads back: `none`, `center` or `scale`.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Center => "center",
            Self::ScaleToDIn => "scale",
        }
    }
}

impl std::str::FromStr for NormalizationKind {
    type Err = Error;

    /// Reads `none`, `center` or `scale`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "center" => Ok(Self::Center),
            "scale" => Ok(Self::ScaleToDIn),
            other => Err(Error::invalid(
                "normalize",
                other,
                "must be none, center or scale",
            )),
        }
    }
}

/// A normalisation fitted on training data. Save it with the model and apply it to every input
/// at inference, or the model sees inputs from another distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    /// Which normalisation this is.
    pub kind: NormalizationKind,
    /// Mean row subtracted by [`NormalizationKind::Center`] (`[d_in]`); empty otherwise.
    pub mean: Vec<f32>,
    /// Factor applied by [`NormalizationKind::ScaleToDIn`]; 1 otherwise.
    pub scale: f32,
}

impl Normalizer {
    /// The identity normalisation.
    pub fn identity() -> Self {
        Self {
            kind: NormalizationKind::None,
            mean: Vec::new(),
            scale: 1.0,
        }
    }

    /// Fits `kind` on `data`.
    pub fn fit(kind: NormalizationKind, data: &Embeddings) -> Self {
        let d_in = data.d_in();
        match kind {
            NormalizationKind::None => Self::identity(),
            NormalizationKind::Center => {
                let mut sum = vec![0.0f64; d_in];
                for row in data.as_slice().chunks_exact(d_in) {
                    sum.iter_mut()
                        .zip(row)
                        .for_each(|(s, v)| *s += f64::from(*v));
                }
                let n = data.rows() as f64;
                Self {
                    kind,
                    mean: sum.into_iter().map(|s| (s / n) as f32).collect(),
                    scale: 1.0,
                }
            }
            NormalizationKind::ScaleToDIn => {
                let sq: f64 = data.as_slice().iter().map(|v| f64::from(*v).powi(2)).sum();
                let mean_sq_norm = sq / data.rows() as f64;
                let scale = if mean_sq_norm > 0.0 {
                    (d_in as f64 / mean_sq_norm).sqrt() as f32
                } else {
                    1.0
                };
                Self {
                    kind,
                    mean: Vec::new(),
                    scale,
                }
            }
        }
    }

    /// Checks that the normaliser fits inputs `d_in` wide and holds usable numbers: a centring
    /// mean of `d_in` finite values, a finite positive scale. A normaliser from
    /// [`Normalizer::fit`] always passes; this is for one read from a file or built by hand.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `normalizer.mean` or `normalizer.scale`.
    pub fn check(&self, d_in: usize) -> Result<()> {
        match self.kind {
            NormalizationKind::Center if self.mean.len() != d_in => Err(Error::invalid(
                "normalizer.mean",
                format!("{} values", self.mean.len()),
                format!("must hold d_in = {d_in} values"),
            )),
            NormalizationKind::Center => match self.mean.iter().position(|m| !m.is_finite()) {
                Some(i) => Err(Error::invalid(
                    "normalizer.mean",
                    format!("entry {i} = {}", self.mean[i]),
                    "must be finite",
                )),
                None => Ok(()),
            },
            NormalizationKind::ScaleToDIn if !(self.scale.is_finite() && self.scale > 0.0) => Err(
                Error::invalid("normalizer.scale", self.scale, "must be finite and > 0"),
            ),
            NormalizationKind::None | NormalizationKind::ScaleToDIn => Ok(()),
        }
    }

    /// Applies the normalisation to row-major rows of width `d_in`, in place.
    ///
    /// # Panics
    /// If the normaliser centres and `d_in` differs from its mean's length ([`Normalizer::check`]
    /// tells beforehand).
    pub fn apply_rows(&self, rows: &mut [f32], d_in: usize) {
        match self.kind {
            NormalizationKind::None => {}
            NormalizationKind::Center => {
                assert_eq!(
                    self.mean.len(),
                    d_in,
                    "normaliser was fitted on d_in = {}",
                    self.mean.len()
                );
                for row in rows.chunks_exact_mut(d_in) {
                    row.iter_mut().zip(&self.mean).for_each(|(v, m)| *v -= m);
                }
            }
            NormalizationKind::ScaleToDIn => rows.iter_mut().for_each(|v| *v *= self.scale),
        }
    }

    /// Applies the normalisation to a batch.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]` → `[batch, d_in]`
    pub fn apply<B: Backend>(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.kind {
            NormalizationKind::None => x,
            NormalizationKind::Center => {
                let mean = Tensor::<B, 1>::from_data(self.mean.as_slice(), &x.device());
                x - mean.unsqueeze_dim(0)
            }
            NormalizationKind::ScaleToDIn => x.mul_scalar(self.scale),
        }
    }

    /// Maps a reconstruction made in normalised space back to input space.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]` → `[batch, d_in]`
    pub fn invert<B: Backend>(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.kind {
            NormalizationKind::None => x,
            NormalizationKind::Center => {
                let mean = Tensor::<B, 1>::from_data(self.mean.as_slice(), &x.device());
                x + mean.unsqueeze_dim(0)
            }
            NormalizationKind::ScaleToDIn => x.div_scalar(self.scale),
        }
    }
}

impl Default for Normalizer {
    fn default() -> Self {
        Self::identity()
    }
}

/// A noise level or weight of a synthetic set: finite and `>= 0`.
fn check_finite_non_negative(field: &'static str, value: f32) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(field, value, "must be finite and >= 0"))
    }
}

/// Parameters of the synthetic data set generated by [`synthetic`].
#[derive(Config, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Rows to generate.
    #[config(default = 20_000)]
    pub rows: usize,
    /// Row width.
    #[config(default = 128)]
    pub d_in: usize,
    /// Number of planted unit directions.
    #[config(default = 256)]
    pub n_directions: usize,
    /// Planted directions active in each row.
    #[config(default = 4)]
    pub active: usize,
    /// Weight of the shared mean direction (text embeddings share a large common component).
    #[config(default = 0.4)]
    pub mean_weight: f32,
    /// Standard deviation of the isotropic noise, per coordinate.
    #[config(default = 0.01)]
    pub noise: f32,
    /// Random seed.
    #[config(default = 0)]
    pub seed: u64,
}

/// A synthetic data set shaped like text embeddings, with known ground truth.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// The rows: unit-norm, a shared mean direction plus a non-negative sparse mix of planted
    /// directions plus noise.
    pub embeddings: Embeddings,
    /// The planted unit directions, `[n_directions, d_in]` row-major.
    pub directions: Vec<f32>,
    /// Which planted directions each row mixes, `rows * active` entries.
    pub active: Vec<u32>,
}

/// Generates the synthetic set described by `config`.
///
/// Each row is `mean_weight * m + sum_j c_j * d_j + noise`, scaled to unit norm, where `m` is a
/// shared unit direction, the `d_j` are `active` distinct planted unit directions drawn with a
/// Zipf-like frequency (some common, many rare, as topics in a corpus are) and `c_j` uniform in
/// `[0.2, 1]`.
///
/// # Errors
/// [`Error::InvalidConfig`] when a count is zero, `active > n_directions`, or `noise` or
/// `mean_weight` is negative or not finite.
pub fn synthetic(config: &SyntheticConfig) -> Result<Synthetic> {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};
    let c = config;
    if c.rows == 0 || c.d_in == 0 || c.n_directions == 0 || c.active == 0 {
        return Err(Error::invalid(
            "rows/d_in/n_directions/active",
            0,
            "must all be >= 1",
        ));
    }
    if c.active > c.n_directions {
        return Err(Error::invalid(
            "active",
            c.active,
            format!("must be <= n_directions ({})", c.n_directions),
        ));
    }
    check_finite_non_negative("noise", c.noise)?;
    check_finite_non_negative("mean_weight", c.mean_weight)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c.seed);
    let unit = |rng: &mut rand_chacha::ChaCha8Rng| random_unit(rng, c.d_in);
    let mean_dir = unit(&mut rng);
    let directions: Vec<f32> = (0..c.n_directions).flat_map(|_| unit(&mut rng)).collect();
    // Zipf-like weights 1/(j+10): the commonest direction is a few times more frequent than the rarest.
    let weights: Vec<f64> = (0..c.n_directions)
        .map(|j| 1.0 / (j as f64 + 10.0))
        .collect();
    let picker = rand_distr::weighted::WeightedIndex::new(&weights).expect("positive weights");
    let noise = Normal::new(0.0f32, c.noise).expect("checked: finite, non-negative std");
    let mut data = Vec::with_capacity(c.rows * c.d_in);
    let mut active = Vec::with_capacity(c.rows * c.active);
    let mut row = vec![0.0f32; c.d_in];
    let mut chosen: Vec<u32> = Vec::with_capacity(c.active);
    for _ in 0..c.rows {
        chosen.clear();
        while chosen.len() < c.active {
            let j = picker.sample(&mut rng) as u32;
            if !chosen.contains(&j) {
                chosen.push(j);
            }
        }
        row.iter_mut()
            .zip(&mean_dir)
            .for_each(|(r, m)| *r = c.mean_weight * m + noise.sample(&mut rng));
        for &j in &chosen {
            let coef: f32 = rng.random_range(0.2..1.0);
            let d = &directions[j as usize * c.d_in..(j as usize + 1) * c.d_in];
            row.iter_mut().zip(d).for_each(|(r, x)| *r += coef * x);
        }
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        data.extend(row.iter().map(|x| x / n));
        active.extend_from_slice(&chosen);
    }
    let embeddings = Embeddings::named(data, c.rows, c.d_in, "synthetic".into())?;
    Ok(Synthetic {
        embeddings,
        directions,
        active,
    })
}

/// A uniformly random unit vector of length `d_in`.
fn random_unit(rng: &mut rand_chacha::ChaCha8Rng, d_in: usize) -> Vec<f32> {
    use rand_distr::{Distribution, StandardNormal};
    let mut v: Vec<f32> = (0..d_in).map(|_| StandardNormal.sample(rng)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    for x in &mut v {
        *x /= n;
    }
    v
}

/// Parameters of [`synthetic_families`]: planted parent directions, each with child directions
/// that only ever appear together with it.
#[derive(Config, Debug, PartialEq)]
pub struct FamilySyntheticConfig {
    /// Rows to generate.
    #[config(default = 20_000)]
    pub rows: usize,
    /// Row width.
    #[config(default = 64)]
    pub d_in: usize,
    /// Planted parent directions.
    #[config(default = 6)]
    pub parents: usize,
    /// Child directions per parent.
    #[config(default = 5)]
    pub children: usize,
    /// Probability that a row holds its parent alone, without a child. Above zero, a latent for
    /// the parent alone is needed, so an SAE cannot fold the parent into its children; each such
    /// row also leaves a top-k slot (with `k = 2`) to whatever latent answers to the noise.
    #[config(default = 0.1)]
    pub parent_alone: f64,
    /// Smallest parent coefficient; coefficients are uniform in `[parent_min, 1]`.
    #[config(default = 0.1)]
    pub parent_min: f32,
    /// Weight of the shared mean direction.
    #[config(default = 0.4)]
    pub mean_weight: f32,
    /// Standard deviation of the isotropic noise, per coordinate.
    #[config(default = 0.01)]
    pub noise: f32,
    /// Random seed.
    #[config(default = 0)]
    pub seed: u64,
}

/// A synthetic set with a planted two-level hierarchy, from [`synthetic_families`].
#[derive(Debug, Clone)]
pub struct SyntheticFamilies {
    /// The rows and the planted directions. Direction `p * (children + 1)` is parent `p`; the
    /// `children` directions after it are its children. `active` holds two entries per row: the
    /// parent and the child, or the parent twice when it appears alone.
    pub set: Synthetic,
    /// `(parent, children)` direction indices for each planted group.
    pub groups: Vec<(usize, Vec<usize>)>,
}

/// Generates rows `mean_weight * m + sqrt(1 - mean_weight²) * u` (unit norm), where `u` is
/// `a * parent + b * child + noise` scaled to unit norm: each row picks a parent uniformly, and
/// with probability `1 - parent_alone` one of its children uniformly; `a` is uniform in
/// `[parent_min, 1]` and `b` in `[0.5, 1]`. Children co-occur with their parent and never with
/// each other, the structure feature families (SPEC §6) look for.
///
/// The planted directions are orthonormal and orthogonal to the mean `m`, and every row carries
/// the same weight of `m`. Each choice removes something an SAE would otherwise learn besides the
/// planted directions (measured with the end-to-end family test, docs/analysis.md):
/// - a weak parent (`parent_min` 0.1) pins the dictionary: a child latent that absorbed part of
///   its parent would need a negative parent activation on those rows (with `a` in `[0.5, 1]`,
///   SAEs learned the directions with decoder cosine 0.4 to 0.9);
/// - with a fixed mean weight, weak rows do not carry more of the mean than strong ones, so no
///   latent learns "more mean" (which fired beside every parent);
/// - with orthogonal directions, no latent answers to a parent it does not represent, so the
///   second top-k slot of a row holding its parent alone goes to no latent in particular.
///
/// Rows holding the parent alone (`parent_alone`, default 0.1) are what lets an SAE learn the
/// parent on its own; with none, parents split over several latents.
///
/// # Errors
/// [`Error::InvalidConfig`] when a count is zero, `parent_alone` is outside `[0, 1)`,
/// `parent_min` outside `[0, 1)`, `mean_weight` outside `[0, 1)`, `noise` negative or not
/// finite, or the
/// `parents * (children + 1)` directions plus the mean do not fit in `d_in` dimensions.
pub fn synthetic_families(config: &FamilySyntheticConfig) -> Result<SyntheticFamilies> {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};
    let c = config;
    if c.rows == 0 || c.d_in == 0 || c.parents == 0 || c.children == 0 {
        return Err(Error::invalid(
            "rows/d_in/parents/children",
            0,
            "must all be >= 1",
        ));
    }
    if !(0.0..1.0).contains(&c.parent_alone) {
        return Err(Error::invalid(
            "parent_alone",
            c.parent_alone,
            "must be in [0, 1)",
        ));
    }
    for (name, v) in [("parent_min", c.parent_min), ("mean_weight", c.mean_weight)] {
        if !(0.0..1.0).contains(&v) {
            return Err(Error::invalid(name, v, "must be in [0, 1)"));
        }
    }
    check_finite_non_negative("noise", c.noise)?;
    let stride = c.children + 1;
    let n_directions = c.parents * stride;
    if n_directions >= c.d_in {
        return Err(Error::invalid(
            "d_in",
            c.d_in,
            format!(
                "must exceed parents * (children + 1) = {n_directions}: the directions and the \
                 mean are orthogonal"
            ),
        ));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c.seed);
    let unit = |rng: &mut rand_chacha::ChaCha8Rng| random_unit(rng, c.d_in);
    let mean_dir = unit(&mut rng);
    // Directions orthogonal to the mean, so every row's mean component is the same, and to
    // each other, so no latent answers to a direction it does not represent.
    let mut directions: Vec<f32> = Vec::with_capacity(n_directions * c.d_in);
    for _ in 0..n_directions {
        let mut d = unit(&mut rng);
        for _ in 0..2 {
            for prev in std::iter::once(&mean_dir[..]).chain(directions.chunks_exact(c.d_in)) {
                let along = dot(&d, prev);
                d.iter_mut().zip(prev).for_each(|(x, p)| *x -= along * p);
            }
        }
        let n = dot(&d, &d).sqrt();
        directions.extend(d.iter().map(|x| x / n));
    }
    let noise = Normal::new(0.0f32, c.noise).expect("checked: finite, non-negative std");
    let content_weight = (1.0 - c.mean_weight * c.mean_weight).sqrt();
    let mut data = Vec::with_capacity(c.rows * c.d_in);
    let mut active = Vec::with_capacity(c.rows * 2);
    let mut row = vec![0.0f32; c.d_in];
    for _ in 0..c.rows {
        let parent = rng.random_range(0..c.parents) * stride;
        let child = if rng.random_bool(c.parent_alone) {
            parent
        } else {
            parent + 1 + rng.random_range(0..c.children)
        };
        for r in &mut row {
            *r = noise.sample(&mut rng);
        }
        let mut add = |j: usize, coef: f32| {
            let d = &directions[j * c.d_in..(j + 1) * c.d_in];
            row.iter_mut().zip(d).for_each(|(r, x)| *r += coef * x);
        };
        add(parent, rng.random_range(c.parent_min..1.0));
        if child != parent {
            add(child, rng.random_range(0.5f32..1.0));
        }
        // Content to unit norm, then the mean at a fixed weight: a weak row does not carry
        // more of the mean than a strong one.
        let n = dot(&row, &row).sqrt();
        row.iter_mut()
            .zip(&mean_dir)
            .for_each(|(r, m)| *r = content_weight * *r / n + c.mean_weight * m);
        let n = dot(&row, &row).sqrt();
        data.extend(row.iter().map(|x| x / n));
        active.extend([parent as u32, child as u32]);
    }
    let embeddings = Embeddings::named(data, c.rows, c.d_in, "synthetic families".into())?;
    let groups = (0..c.parents)
        .map(|p| (p * stride, (p * stride + 1..(p + 1) * stride).collect()))
        .collect();
    Ok(SyntheticFamilies {
        set: Synthetic {
            embeddings,
            directions,
            active,
        },
        groups,
    })
}

impl Synthetic {
    /// Fraction of planted directions that some decoder row matches with cosine above
    /// `threshold` (0.9 is the usual bar). `w_dec` is row-major `[d_sae, d_in]`.
    ///
    /// # Panics
    /// If `w_dec`'s length is not a multiple of `d_in`.
    pub fn recovered_fraction(&self, w_dec: &[f32], threshold: f32) -> f64 {
        let d_in = self.embeddings.d_in();
        assert_eq!(
            w_dec.len() % d_in,
            0,
            "w_dec must be [d_sae, d_in] with d_in = {d_in}"
        );
        let rows: Vec<(&[f32], f32)> = w_dec
            .chunks_exact(d_in)
            .map(|r| (r, r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12)))
            .collect();
        let planted: Vec<&[f32]> = self.directions.chunks_exact(d_in).collect();
        let found = planted
            .iter()
            .filter(|d| {
                rows.iter().any(|(r, norm)| {
                    r.iter().zip(d.iter()).map(|(a, b)| a * b).sum::<f32>() / norm > threshold
                })
            })
            .count();
        found as f64 / planted.len() as f64
    }
}
