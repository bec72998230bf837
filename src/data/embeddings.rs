//! [`Embeddings`]: a dense matrix of rows held on the host, validated, and its batches.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::Normalizer;
use crate::error::{Error, Result};

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

    /// [`Embeddings::from_vec`] with `name` as the data's name in errors.
    pub(super) fn named(data: Vec<f32>, rows: usize, d_in: usize, name: String) -> Result<Self> {
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
    ///     "invalid argument: row (4) must be < rows (4) of input");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `row` when an index is `>= rows`; [`Error::EmptyData`]
    /// when `rows` is empty.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(Error::argument(
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
    /// [`Error::InvalidArgument`] naming `range` when it is empty or ends past `rows`.
    pub fn slice_rows(&self, range: std::ops::Range<usize>) -> Result<Self> {
        if range.start >= range.end || range.end > self.rows {
            return Err(Error::argument(
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
