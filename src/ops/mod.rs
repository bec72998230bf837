//! The operations layer: the numeric operations the model, the loss and the trainer need, one
//! file each, every engine of an operation side by side in it (the host kernels of the CPU
//! backends, burn's tensor operations, our cubecl kernels on burn-wgpu under `gpu/`). Nothing in
//! this layer knows the model, the loss or training; `docs/layers.txt` says who may use whom.

pub(crate) mod engine;
#[cfg(feature = "wgpu")]
pub(crate) mod gpu;
pub(crate) mod linalg;
pub(crate) mod sparse;
pub(crate) mod stats;
pub(crate) mod topk;
pub(crate) mod transfer;
pub(crate) mod update;

use burn::tensor::backend::Backend;

use crate::error::Result;

/// Rows a host task takes at once (top-k selection, sparse decode).
pub(crate) const ROWS_PER_TASK: usize = 16;

/// [`crate::Error::InvalidConfig`] naming `field` (holding `value`) when an `f32` tensor of shape
/// `dims`, `what`, would not fit in the largest buffer `device` allocates. burn-wgpu's limit is
/// the device's largest storage binding (at most 4 GiB), and a larger tensor panics inside
/// cubecl; other backends have no such limit and always pass.
#[cfg_attr(not(feature = "wgpu"), allow(clippy::unnecessary_wraps))]
pub(crate) fn check_fits_device<B: Backend>(
    device: &B::Device,
    field: &'static str,
    value: usize,
    what: &str,
    dims: [usize; 2],
) -> Result<()> {
    #[cfg(feature = "wgpu")]
    if let Some(max) = crate::ops::gpu::max_buffer_bytes::<B>(device) {
        let bytes = (dims[0] as u64)
            .saturating_mul(dims[1] as u64)
            .saturating_mul(4);
        if bytes > max {
            return Err(crate::error::Error::invalid(
                field,
                value,
                format!(
                    "is too large for this GPU: {what} {dims:?} would take {bytes} bytes, more \
                     than the largest buffer it allocates ({max} bytes)"
                ),
            ));
        }
    }
    #[cfg(not(feature = "wgpu"))]
    let _ = (device, field, value, what, dims);
    Ok(())
}

/// The most rows of an `f32` tensor `[rows, cols]` that fit in one buffer of `device` (at least
/// 1); `usize::MAX` on backends without such a limit.
pub(crate) fn device_rows_cap<B: Backend>(device: &B::Device, cols: usize) -> usize {
    #[cfg(feature = "wgpu")]
    if let Some(max) = crate::ops::gpu::max_buffer_bytes::<B>(device) {
        let row_bytes = (cols as u64).saturating_mul(4).max(1);
        return usize::try_from(max / row_bytes)
            .unwrap_or(usize::MAX)
            .max(1);
    }
    let _ = (device, cols);
    usize::MAX
}

/// Whether one of this crate's GPU kernels runs, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KernelStatus {
    /// It runs.
    Runs,
    /// Not this backend: the kernels are burn-wgpu's (feature `wgpu`).
    #[default]
    Unavailable,
    /// Left out by the [`KernelOptions`](crate::backend::KernelOptions) in use.
    SwitchedOff,
    /// It gave a wrong answer (or panicked) in its first-use check on this device, so the
    /// portable path runs: slower, same results.
    FailedCheck,
}

impl KernelStatus {
    /// A short name: `runs`, `unavailable`, `switched_off` or `failed_check`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Runs => "runs",
            Self::Unavailable => "unavailable",
            Self::SwitchedOff => "switched_off",
            Self::FailedCheck => "failed_check",
        }
    }
}
