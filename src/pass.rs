//! One pass of a model over a whole data set, chunk by chunk, on the engine its backend runs:
//! the batch loop of [`crate::evaluate`] and [`crate::analysis::encode_corpus`].
//!
//! On the CPU backends the host codec encodes (and decodes) each chunk without the backend's
//! tensors. On a GPU each chunk is uploaded, run, and its outputs copied back while the host
//! uploads the next chunk (`ops/gpu/read.rs` says when the copies are issued at once); chunks are
//! made smaller where their `[rows, d_sae]` pre-activations would not fit in one buffer.

use std::ops::Range;

use burn::tensor::backend::Backend;

use crate::data::{Embeddings, Normalizer};
use crate::error::Result;
use crate::host::HostCodec;
use crate::ops::transfer::{HostCopies, ReadFor, batch_ranges, upload_rows};
use crate::profile::mark;
use crate::sae::TopKSae;

/// What a pass computes for each chunk besides its codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outputs {
    /// The codes only (corpus encoding).
    Codes,
    /// The codes, the normalised rows and their reconstructions (evaluation).
    Reconstructions,
}

/// One chunk of a pass, on the host: rows `rows` of the data set.
pub(crate) struct Chunk {
    /// The chunk's rows in the data set.
    pub rows: Range<usize>,
    /// Row-major `[rows, k]` latent indices.
    pub indices: Vec<u32>,
    /// Row-major `[rows, k]` post-ReLU values.
    pub values: Vec<f32>,
    /// With [`Outputs::Reconstructions`]: the normalised rows, `[rows, d_in]`.
    pub x: Vec<f32>,
    /// With [`Outputs::Reconstructions`]: their reconstructions, `[rows, d_in]`.
    pub recon: Vec<f32>,
}

/// A chunk whose outputs are still on their way from the device.
struct Pending<B: Backend> {
    rows: Range<usize>,
    x: Vec<f32>,
    copies: HostCopies<B, 2>,
}

impl<B: Backend> Pending<B> {
    /// Waits for the copies. In `HostCopies`' order: the floats (the values, then the
    /// reconstruction when asked for), then the indices.
    fn collect(self) -> Chunk {
        let (mut floats, mut ints) = self.copies.collect();
        let recon = if floats.len() > 1 {
            floats.swap_remove(1)
        } else {
            Vec::new()
        };
        Chunk {
            rows: self.rows,
            indices: ints.swap_remove(0).into_iter().map(|j| j as u32).collect(),
            values: floats.swap_remove(0),
            x: self.x,
            recon,
        }
    }
}

/// Runs `model` over every row of `data` (after `normalizer`) in chunks of at most
/// `batch_size` rows and hands each chunk to `each`, in order.
///
/// # Errors
/// [`crate::Error::WidthMismatch`] when `data` is not `d_in` wide;
/// [`crate::Error::InvalidArgument`] when `batch_size` is 0; [`crate::Error::InvalidConfig`]
/// when `normalizer` does not fit the model.
pub(crate) fn run<B: Backend>(
    model: &TopKSae<B>,
    data: &Embeddings,
    normalizer: &Normalizer,
    batch_size: usize,
    device: &B::Device,
    outputs: Outputs,
    mut each: impl FnMut(Chunk),
) -> Result<()> {
    data.check_width(model.d_in())?;
    normalizer.check(model.d_in())?;
    let want_recon = outputs == Outputs::Reconstructions;
    // On CPU backends the host kernels skip the backend's tensors (and the bias broadcast).
    let codec = crate::ops::engine::Engine::is_host::<B>().then(|| HostCodec::new(model));
    // On a GPU, chunks whose pre-activations would not fit in one buffer are made smaller.
    let batch_size = batch_size.min(model.max_batch_rows());
    let mut pre = Vec::new();
    let mut pending: Option<Pending<B>> = None;
    let d_in = data.d_in();
    for range in batch_ranges(data.rows(), batch_size)? {
        if let Some(codec) = &codec {
            let x = data.normalized_rows(range.clone(), normalizer);
            let (indices, values) = codec.encode(&x, &mut pre);
            let (x, recon) = if want_recon {
                let recon = codec.decode(&indices, &values);
                (x, recon)
            } else {
                (Vec::new(), Vec::new())
            };
            each(Chunk {
                rows: range,
                indices,
                values,
                x,
                recon,
            });
            continue;
        }
        // Evaluation keeps the normalised rows for its sums; encoding normalises piece by
        // piece as it uploads.
        let (input, x) = if want_recon {
            let x = data.normalized_rows(range.clone(), normalizer);
            let input = upload_rows::<B>(range.len(), d_in, device, |piece| {
                x[piece.start * d_in..piece.end * d_in].to_vec()
            });
            (input, x)
        } else {
            let start = range.start;
            let input = upload_rows::<B>(range.len(), d_in, device, |piece| {
                data.normalized_rows(start + piece.start..start + piece.end, normalizer)
            });
            (input, Vec::new())
        };
        mark::<B>(device, "normalise, upload");
        let (floats, ints) = if want_recon {
            let out = model.forward(input);
            (vec![out.values, out.reconstruction], vec![out.indices])
        } else {
            let latents = model.encode_topk(input);
            (vec![latents.values], vec![latents.indices])
        };
        if let Some(done) = pending.take() {
            each(done.collect());
        }
        pending = Some(Pending {
            rows: range,
            x,
            copies: HostCopies::issue(&model.kernels(), floats, ints, ReadFor::Chunk),
        });
        mark::<B>(device, "encode (matmul, top-k), read-back");
    }
    if let Some(done) = pending.take() {
        each(done.collect());
    }
    Ok(())
}
