//! The crate's one error type.

use std::path::PathBuf;

/// Every fallible operation in this crate returns this error.
///
/// Variants carry the offending values (path, field, row, shape) so that a message is useful on
/// its own. The enum is `#[non_exhaustive]`: match with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field holds a value outside its valid range.
    #[error("invalid config: {field} ({value}) {reason}")]
    InvalidConfig {
        /// Name of the field, as spelled in the config struct.
        field: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// What the field must satisfy.
        reason: String,
    },
    /// Reading or writing a file failed at the operating-system level.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done (`read`, `create`, ...).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not in the expected format.
    #[error("{path}: {reason}")]
    Format {
        /// The file involved (empty for in-memory data).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Input data holds a NaN or infinite value.
    #[error("row {row} of {source_name} holds {what}")]
    NonFinite {
        /// Zero-based row index of the first offending row.
        row: usize,
        /// `NaN` or `an infinite value`.
        what: &'static str,
        /// File name, or `input` for in-memory data.
        source_name: String,
    },
    /// Input data holds no values: no rows, or rows of width 0.
    #[error("{source_name} holds no data: its shape is [{rows}, {cols}]")]
    EmptyData {
        /// File name, or `input` for in-memory data.
        source_name: String,
        /// Its number of rows.
        rows: usize,
        /// Its width.
        cols: usize,
    },
    /// Input width differs from what the model expects.
    #[error("{source_name} has width {actual}, but the model expects d_in = {expected}")]
    WidthMismatch {
        /// The model's `d_in`.
        expected: usize,
        /// The data's width.
        actual: usize,
        /// File name, or `input` for in-memory data.
        source_name: String,
    },
    /// A buffer's length does not match the shape it was given.
    #[error("data of length {len} cannot be shaped as [{rows}, {cols}]")]
    ShapeMismatch {
        /// Number of values supplied.
        len: usize,
        /// Requested rows.
        rows: usize,
        /// Requested columns.
        cols: usize,
    },
    /// Training produced a NaN or infinite loss or gradient.
    #[error("training diverged at step {step}: {quantity} is {value}")]
    Diverged {
        /// The step (1-based) that failed.
        step: u64,
        /// `loss` or `gradient norm`.
        quantity: &'static str,
        /// The offending value.
        value: f64,
    },
    /// burn-wgpu would find no adapter for the device asked for, as on a machine without a GPU
    /// driver (see `backend::wgpu_adapter`, feature `wgpu`).
    #[error("burn-wgpu finds no {wanted} (found: {found}); {hint}")]
    NoDevice {
        /// What was asked for: the graphics API and the kind of device, e.g. `Vulkan adapter`.
        wanted: String,
        /// The adapters there are on that API, with their kinds, or `none`.
        found: String,
        /// What to do about it.
        hint: String,
    },
    /// An output path is taken by something this crate did not write (a file where a folder
    /// goes, or a folder holding other files); nothing was written or deleted.
    #[error("{path}: {reason}")]
    OutputInUse {
        /// The output path.
        path: PathBuf,
        /// What is there, and what to do instead.
        reason: String,
    },
    /// An argument of a call is outside what the call accepts: a batch size of 0, a row or
    /// latent past the end, a weight that is not finite, a tensor of one row for a step, data
    /// the call cannot use. (A config's field is [`Error::InvalidConfig`].)
    #[error("invalid argument: {name} ({value}) {reason}")]
    InvalidArgument {
        /// Name of the argument, as the call's documentation spells it.
        name: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// What the argument must satisfy.
        reason: String,
    },
}

/// Shorthand for `std::result::Result<T, topk_sae::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::InvalidArgument`].
    pub(crate) fn argument(
        name: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidArgument {
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// [`Error::InvalidConfig`].
    pub(crate) fn invalid(
        field: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidConfig {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
