//! Sparse decode: `sum_j values[b, j] * w_dec[indices[b, j]]`, with its engines side by side
//! (burn's gather and our grouped-sum kernel on the tensor engine, one pass per row on the host),
//! and the grouping by latent the gradient's sums use.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use rayon::prelude::*;

use super::ROWS_PER_TASK;
use super::engine::KernelOptions;
use super::linalg::axpy;

/// The decoder rows each example selected, `w_dec[indices[b, j]]`, with burn's `select`.
///
/// # Shapes
/// - `w_dec`: `[d_sae, d_in]`, `indices`: `[batch, k]` → `[batch, k, d_in]`
pub(crate) fn gather_rows<B: Backend>(
    w_dec: &Tensor<B, 2>,
    indices: Tensor<B, 2, Int>,
) -> Tensor<B, 3> {
    let [batch, k] = indices.dims();
    let [_, d_in] = w_dec.dims();
    w_dec
        .clone()
        .select(0, indices.reshape([batch * k]))
        .reshape([batch, k, d_in])
}

/// `sum_j values[b, j] * w_dec[indices[b, j]]` without a bias.
///
/// # Shapes
/// - `w_dec`: `[d_sae, d_in]`, `indices` and `values`: `[batch, k]` → `[batch, d_in]`
pub(crate) fn decode_rows<B: Backend>(
    options: &KernelOptions,
    w_dec: &Tensor<B, 2>,
    indices: Tensor<B, 2, Int>,
    values: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let [batch, k] = indices.dims();
    assert_eq!(
        values.dims(),
        [batch, k],
        "values must be [batch, k] like indices"
    );
    let [_, d_in] = w_dec.dims();
    #[cfg(not(feature = "wgpu"))]
    let _ = options;
    #[cfg(feature = "wgpu")]
    if crate::ops::gpu::sparse::supports::<B>(options, &indices.device()) {
        // burn-wgpu: our kernel, one cube per row, no [batch, k, d_in] intermediate.
        let weights = values.clone().reshape([batch * k]);
        let d_sae = w_dec.dims()[0];
        if let Some(groups) = crate::ops::gpu::sparse::Groups::per_row(indices.clone())
            && let Some(out) =
                crate::ops::gpu::sparse::sum_rows(options, &groups, weights, w_dec.clone(), d_sae)
        {
            return out;
        }
    }
    (gather_rows(w_dec, indices) * values.unsqueeze_dim::<3>(2))
        .sum_dim(1)
        .reshape([batch, d_in])
}

/// The entries of several row-major `[rows, k_t]` lists of latents, grouped by latent (a stable
/// counting sort): latent `j`'s entries are `entries[starts[j]..starts[j + 1]]`, each `(list,
/// position in the list)`, in list order then position order.
///
/// # Panics
/// If a latent is `d_sae` or more, or there are more than 256 lists.
pub(crate) fn group_by_latent<T: Copy>(
    lists: &[&[T]],
    d_sae: usize,
    latent: impl Fn(T) -> usize,
) -> (Vec<usize>, Vec<(u8, u32)>) {
    let mut starts = vec![0usize; d_sae + 1];
    for list in lists {
        for &j in *list {
            starts[latent(j) + 1] += 1;
        }
    }
    for j in 0..d_sae {
        starts[j + 1] += starts[j];
    }
    let mut fill = starts.clone();
    let mut entries = vec![(0u8, 0u32); starts[d_sae]];
    for (li, list) in lists.iter().enumerate() {
        let li = u8::try_from(li).expect("at most 256 lists");
        for (at, &j) in list.iter().enumerate() {
            let slot = &mut fill[latent(j)];
            entries[*slot] = (li, at as u32);
            *slot += 1;
        }
    }
    (starts, entries)
}

/// `sum_j values[b, j] * w_dec[indices[b, j]]` (+ `b_dec` when given), `[batch, d_in]`;
/// `w_dec` is `[d_sae, d_in]`, `indices` and `values` `[batch, k]`.
pub(crate) fn decode_sparse(
    w_dec: &[f32],
    d_in: usize,
    b_dec: Option<&[f32]>,
    indices: &[u32],
    values: &[f32],
    k: usize,
) -> Vec<f32> {
    let batch = indices.len() / k;
    let mut out = vec![0f32; batch * d_in];
    out.par_chunks_mut(d_in * ROWS_PER_TASK)
        .zip(indices.par_chunks(k * ROWS_PER_TASK))
        .zip(values.par_chunks(k * ROWS_PER_TASK))
        .for_each(|((out, idx), val)| {
            for ((row, idx), val) in out
                .chunks_exact_mut(d_in)
                .zip(idx.chunks_exact(k))
                .zip(val.chunks_exact(k))
            {
                if let Some(b) = b_dec {
                    row.copy_from_slice(b);
                }
                for (&j, &v) in idx.iter().zip(val) {
                    if v != 0.0 {
                        let j = j as usize;
                        axpy(row, v, &w_dec[j * d_in..(j + 1) * d_in]);
                    }
                }
            }
        });
    out
}
