//! Moving rows and results between the host and a device: read-backs (issued at once on
//! burn-wgpu where that pays), uploads in pieces, and the row ranges of a batch loop.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::ops::engine::{Engine, KernelOptions};

/// Most bytes per host-to-device write of [`upload_rows`]. On the H200 machine of
/// `docs/benchmarks.md`, burn-wgpu wrote 25 MB in one piece at 0.44-0.63 GB/s, in 1.6 MB pieces
/// at 1.75-2.06 GB/s and in 400 KB pieces at 2.07-2.47 GB/s (three runs).
const UPLOAD_PIECE_BYTES: usize = 512 << 10;

/// What a [`HostCopies`] is for (on burn-wgpu, whether its copies are issued at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFor {
    /// A chunk of a corpus being encoded or a data set being evaluated.
    Chunk,
    /// A training step.
    Step,
}

/// Float and int tensors on their way to the host. On burn-wgpu the copies can be issued when
/// this is made (`crate::ops::gpu::read`, which says when they are), so that the device makes them as
/// soon as the work before them is done while the host goes on; otherwise the tensors are read
/// when collected.
pub(crate) struct HostCopies<B: Backend, const D: usize> {
    #[cfg(feature = "wgpu")]
    issued: Option<crate::ops::gpu::read::Issued>,
    /// The tensors still to read, where the copies were not issued.
    floats: Vec<Tensor<B, D>>,
    ints: Vec<Tensor<B, D, Int>>,
}

impl<B: Backend, const D: usize> HostCopies<B, D> {
    /// Starts copying `floats` and `ints` to the host, for `what` (a chunk, or a training step).
    pub(crate) fn issue(
        options: &KernelOptions,
        floats: Vec<Tensor<B, D>>,
        ints: Vec<Tensor<B, D, Int>>,
        what: ReadFor,
    ) -> Self {
        #[cfg(feature = "wgpu")]
        let (issued, floats, ints) = if crate::ops::gpu::read::issued_for(options, what) {
            match crate::ops::gpu::read::issue(floats, ints) {
                Ok(issued) => (Some(issued), Vec::new(), Vec::new()),
                Err((floats, ints)) => (None, floats, ints),
            }
        } else {
            (None, floats, ints)
        };
        #[cfg(not(feature = "wgpu"))]
        let _ = (options, what);
        Self {
            #[cfg(feature = "wgpu")]
            issued,
            floats,
            ints,
        }
    }

    /// Waits for the copies: the floats' values as `f32`, then the ints' as `i64`, each
    /// tensor's in row-major order.
    pub(crate) fn collect(self) -> (Vec<Vec<f32>>, Vec<Vec<i64>>) {
        #[cfg(feature = "wgpu")]
        if let Some(issued) = self.issued {
            let (floats, ints) = issued.collect();
            let floats = floats
                .into_iter()
                .map(|d| d.convert::<f32>().into_vec::<f32>())
                .collect::<std::result::Result<_, _>>()
                .expect("a converted float tensor reads back as f32");
            let ints = ints
                .into_iter()
                .map(|d| d.convert::<i64>().into_vec::<i64>())
                .collect::<std::result::Result<_, _>>()
                .expect("a converted int tensor reads back as i64");
            return (floats, ints);
        }
        (
            self.floats.into_iter().map(to_host).collect(),
            self.ints.into_iter().map(int_to_host).collect(),
        )
    }
}

/// Copies a float tensor to the host (see [`to_host_vec`]).
///
/// On the CPU backends a `mul_scalar(1.0)` (exact for every value, `-0.0` included) gives the
/// backend a tensor it owns alone: burn-ndarray 0.21 reads a *shared* tensor (a parameter's
/// value, which the module still holds) element by element through a dynamic-rank iterator,
/// 41 ms for 384 x 3072, against 5 ms for the multiply plus a move (docs/decisions.md). On a GPU
/// the multiply would be one more kernel launch before every read-back, so it is left out.
pub(crate) fn to_host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    let tensor = if Engine::is_host::<B>() {
        tensor.mul_scalar(1.0)
    } else {
        tensor
    };
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("a converted float tensor reads back as f32")
}

/// Copies an int tensor to the host as row-major `i64` values.
pub(crate) fn int_to_host<B: Backend, const D: usize>(tensor: Tensor<B, D, Int>) -> Vec<i64> {
    tensor
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("a converted int tensor reads back as i64")
}

/// `rows` rows of `d_in` floats as a `[rows, d_in]` tensor on `device`, the rows of each range
/// given by `piece`: on GPU backends in pieces of at most [`UPLOAD_PIECE_BYTES`], joined on the
/// device; on CPU backends in one piece.
///
/// # Panics
/// If `rows` is 0, or `piece` returns another number of values than its range needs.
pub(crate) fn upload_rows<B: Backend>(
    rows: usize,
    d_in: usize,
    device: &B::Device,
    mut piece: impl FnMut(std::ops::Range<usize>) -> Vec<f32>,
) -> Tensor<B, 2> {
    assert!(rows > 0, "nothing to upload");
    let per = if Engine::is_host::<B>() {
        rows
    } else {
        (UPLOAD_PIECE_BYTES / (4 * d_in.max(1))).max(1)
    };
    let mut parts: Vec<Tensor<B, 2>> = batch_ranges(rows, per)
        .expect("pieces of at least one row")
        .map(|range| {
            let n = range.len();
            Tensor::from_data(TensorData::new(piece(range), [n, d_in]), device)
        })
        .collect();
    if parts.len() == 1 {
        parts.pop().expect("one piece")
    } else {
        Tensor::cat(parts, 0)
    }
}

/// Consecutive row ranges of at most `batch_size` rows covering `0..rows`.
///
/// # Errors
/// [`Error::InvalidArgument`] when `batch_size` is 0.
pub(crate) fn batch_ranges(
    rows: usize,
    batch_size: usize,
) -> Result<impl Iterator<Item = std::ops::Range<usize>>> {
    if batch_size == 0 {
        return Err(Error::argument("batch_size", 0, "must be >= 1"));
    }
    Ok((0..rows)
        .step_by(batch_size)
        .map(move |start| start..(start + batch_size).min(rows)))
}
