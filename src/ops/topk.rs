//! Row-wise top-k selection: on the host by partial selection instead of a full sort
//! ([`topk_rows`]), and for device tensors ([`topk_tensor`]) in one GPU kernel on burn-wgpu.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use super::ROWS_PER_TASK;
use super::engine::KernelOptions;
use super::transfer::int_to_host;

/// The top `k` entries of each row of a `[rows, cols]` tensor, restricted to the columns where
/// `allowed` is true when it is given: `(indices, values)`, each `[rows, k]`, every row in
/// descending order of value with ties broken by the lower column index (NaN ranks lowest,
/// `-0.0` below `+0.0`), exactly as [`topk_rows`].
///
/// With the `wgpu` feature and burn-wgpu's `f32` backend (`backend::Wgpu`), this runs as one
/// GPU kernel and `data` never leaves the device (for `k` up to 1,024 and up to 65,535 rows);
/// on any other backend, `data` is read to the host and selected by [`topk_rows`].
///
/// ```
/// use burn::tensor::{Tensor, TensorData};
/// type B = burn_ndarray::NdArray;
/// let data = Tensor::<B, 2>::from_data(TensorData::new(vec![0.5f32, 2.0, 2.0, -1.0], [1, 4]), &Default::default());
/// let (indices, values) = topk_sae::topk::topk_tensor(data, 2, None);
/// assert_eq!(indices.into_data().convert::<i64>().into_vec::<i64>().unwrap(), vec![1, 2]);
/// assert_eq!(values.into_data().into_vec::<f32>().unwrap(), vec![2.0, 2.0]);
/// ```
///
/// # Shapes
/// - `data`: `[rows, cols]`; `allowed`: `cols` entries → indices and values `[rows, k]`
///
/// # Panics
/// If `k` exceeds the number of allowed columns, or `allowed` is shorter than a row.
pub fn topk_tensor<B: Backend>(
    data: Tensor<B, 2>,
    k: usize,
    allowed: Option<&[bool]>,
) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
    select_tensor(&KernelOptions::default(), data, k, allowed, false)
}

/// [`topk_tensor`] with ReLU's values: a negative one as 0 (NaN and `-0.0` stay, as with
/// `clamp_min(0.0)`), inside the kernel where it runs.
///
/// # Shapes
/// - `data`: `[rows, cols]`; `allowed`: `cols` entries → indices and values `[rows, k]`
pub(crate) fn topk_tensor_relu<B: Backend>(
    options: &KernelOptions,
    data: Tensor<B, 2>,
    k: usize,
    allowed: Option<&[bool]>,
) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
    select_tensor(options, data, k, allowed, true)
}

/// [`topk_tensor`], with ReLU's values where `relu`.
fn select_tensor<B: Backend>(
    options: &KernelOptions,
    data: Tensor<B, 2>,
    k: usize,
    allowed: Option<&[bool]>,
    relu: bool,
) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
    if let Some(a) = allowed {
        assert!(
            a.len() >= data.dims()[1],
            "allowed has {} entries for rows of {}",
            a.len(),
            data.dims()[1]
        );
    }
    if let Some(found) = device_topk(options, &data, k, allowed, relu) {
        return found;
    }
    let [rows, cols] = data.dims();
    let device = data.device();
    let (indices, mut values) = topk_rows(&crate::ops::transfer::to_host(data), cols, k, allowed);
    if relu {
        values
            .iter_mut()
            .filter(|v| **v < 0.0)
            .for_each(|v| *v = 0.0);
    }
    (
        Tensor::from_data(TensorData::new(indices, [rows, k]), &device),
        Tensor::from_data(TensorData::new(values, [rows, k]), &device),
    )
}

/// Whether [`topk_tensor`] selects on the device for backend `B` (for sizes the kernel takes).
pub(crate) fn has_device_topk<B: Backend>(options: &KernelOptions, device: &B::Device) -> bool {
    #[cfg(feature = "wgpu")]
    {
        crate::ops::gpu::topk::supports::<B>(options, device)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = (options, device);
        false
    }
}

/// The device top-k, or `None` where the backend or the sizes have none.
fn device_topk<B: Backend>(
    options: &KernelOptions,
    data: &Tensor<B, 2>,
    k: usize,
    allowed: Option<&[bool]>,
    relu: bool,
) -> Option<(Tensor<B, 2, Int>, Tensor<B, 2>)> {
    #[cfg(feature = "wgpu")]
    {
        crate::ops::gpu::topk::topk(options, data, k, allowed, relu)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = (options, data, k, allowed, relu);
        None
    }
}

/// Whether [`masked_topk`] runs for `pre` and `k` (burn-wgpu with our kernel, sizes it takes).
pub(crate) fn masked_topk_runs<B: Backend>(
    options: &KernelOptions,
    pre: &Tensor<B, 2>,
    k: usize,
) -> bool {
    #[cfg(feature = "wgpu")]
    {
        crate::ops::gpu::topk::masked_runs(options, pre, k)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = (options, pre, k);
        false
    }
}

/// The top `k` of each row of `pre` among the columns a device mask allows (`[cols]`, non-zero
/// where allowed), where fewer than `k` may be allowed: the rest are disallowed columns. The
/// values are after ReLU (0 for the disallowed). `None` where [`masked_topk_runs`] is false.
///
/// # Shapes
/// - `pre`: `[rows, cols]`; `allowed`: `[cols]` → `[rows, k]` twice
pub(crate) fn masked_topk<B: Backend>(
    options: &KernelOptions,
    pre: &Tensor<B, 2>,
    k: usize,
    allowed: Tensor<B, 1, Int>,
) -> Option<(Tensor<B, 2, Int>, Tensor<B, 2>)> {
    #[cfg(feature = "wgpu")]
    {
        crate::ops::gpu::topk::topk_device_mask(options, pre, k, allowed)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = (options, pre, k, allowed);
        None
    }
}

/// The latents the row-major `indices` select, on the device: `(allowed, fired)`, `[d_sae]`
/// each, `allowed` 1 for the `candidates` not selected, `fired` 1.0 for the selected. `None`
/// where our kernels do not run.
///
/// # Shapes
/// - `indices`: `[rows, k]`; `candidates`: `[d_sae]`, non-zero for a candidate
pub(crate) fn fired_latents<B: Backend>(
    options: &KernelOptions,
    indices: Tensor<B, 2, Int>,
    candidates: Tensor<B, 1, Int>,
) -> Option<(Tensor<B, 1, Int>, Tensor<B, 1>)> {
    #[cfg(feature = "wgpu")]
    {
        crate::ops::gpu::topk::fired_latents(options, indices, candidates)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = (options, indices, candidates);
        None
    }
}

/// The top `k` entries of each row of a row-major `[rows, cols]` buffer, restricted to the columns
/// where `allowed` is true when it is given.
///
/// Returns `(indices, values)`, each `rows * k` long, every row in descending order of value with
/// ties broken by the lower column index.
///
/// ```
/// let (indices, values) = topk_sae::topk::topk_rows(&[0.5, 2.0, 2.0, -1.0], 4, 2, None);
/// assert_eq!(indices, vec![1, 2]);
/// assert_eq!(values, vec![2.0, 2.0]);
/// ```
///
/// # Panics
/// If `k` exceeds the number of allowed columns, or `allowed` is shorter than a row.
pub fn topk_rows(
    data: &[f32],
    cols: usize,
    k: usize,
    allowed: Option<&[bool]>,
) -> (Vec<i64>, Vec<f32>) {
    let rows = data.len().checked_div(cols).unwrap_or(0);
    let mut indices = vec![0i64; rows * k];
    let mut values = vec![0f32; rows * k];
    if rows == 0 || k == 0 {
        return (indices, values);
    }
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    // Parallelise only when there is enough work to pay for the threads.
    let chunks = if rows * cols >= 1 << 16 {
        threads.min(rows)
    } else {
        1
    };
    let rows_per_chunk = rows.div_ceil(chunks);
    std::thread::scope(|scope| {
        for ((data, indices), values) in data
            .chunks(rows_per_chunk * cols)
            .zip(indices.chunks_mut(rows_per_chunk * k))
            .zip(values.chunks_mut(rows_per_chunk * k))
        {
            scope.spawn(move || select_chunk(data, cols, k, allowed, indices, values));
        }
    });
    (indices, values)
}

fn select_chunk(
    data: &[f32],
    cols: usize,
    k: usize,
    allowed: Option<&[bool]>,
    indices: &mut [i64],
    values: &mut [f32],
) {
    let mut scratch = SelectScratch::default();
    for ((row, out_i), out_v) in data
        .chunks_exact(cols)
        .zip(indices.chunks_exact_mut(k))
        .zip(values.chunks_exact_mut(k))
    {
        select_row(row, k, allowed, &mut scratch);
        for ((i, v), key) in out_i.iter_mut().zip(out_v.iter_mut()).zip(&scratch.keys) {
            let j = key_column(*key);
            *i = j as i64;
            *v = row[j];
        }
    }
}

/// Buffers [`select_row`] reuses from row to row.
#[derive(Debug, Clone, Default)]
pub(crate) struct SelectScratch {
    /// The result: the selected columns as [`sort_key`]s, best first.
    pub keys: Vec<u64>,
    maxima: Vec<f32>,
}

/// Leaves in `scratch.keys` the top `k` columns of `row` (restricted to `allowed` columns), best first
/// (larger value, NaN lowest, ties by the lower column), each encoded as a [`sort_key`]; read a
/// column back with [`key_column`].
///
/// One pass with a size-`k` min-heap of the best so far: for `k` much smaller than the row, almost
/// every entry is rejected by one float comparison with the heap's worst, and heap moves compare
/// single integers. (A partial sort of `(value, index)` pairs was 4x slower at 3072 x 32.)
///
/// # Panics
/// If `k` exceeds the number of allowed columns.
pub(crate) fn select_row(
    row: &[f32],
    k: usize,
    allowed: Option<&[bool]>,
    scratch: &mut SelectScratch,
) {
    let SelectScratch { keys, maxima } = scratch;
    keys.clear();
    if k == 0 {
        return;
    }
    // A value below the heap's worst cannot enter; one equal to it (or -0.0 against +0.0) is
    // decided by the exact integer key. NaN compares false, and its rank (that of -inf) never
    // beats an entry already in the heap.
    let mut threshold = f32::NEG_INFINITY;
    let offer = |heap: &mut Vec<u64>, v: f32, j: usize, threshold: &mut f32| {
        let key = sort_key(v, j);
        if heap.len() < k {
            heap.push(key);
            if heap.len() == k {
                for i in (0..k / 2).rev() {
                    sift_down(heap, i);
                }
                *threshold = rank_value(heap[0]);
            }
        } else if key > heap[0] {
            heap[0] = key;
            sift_down(heap, 0);
            *threshold = rank_value(heap[0]);
        }
    };
    if allowed.is_none() && select_by_block_maxima(row, k, keys, maxima) {
        return;
    }
    match allowed {
        None => {
            let head = k.min(row.len());
            for (j, &v) in row[..head].iter().enumerate() {
                offer(keys, v, j, &mut threshold);
            }
            // The hot loop: almost every value fails the one comparison.
            for (j, &v) in row.iter().enumerate().skip(head) {
                if v >= threshold {
                    offer(keys, v, j, &mut threshold);
                }
            }
        }
        Some(mask) => {
            for (j, (&v, _)) in row.iter().zip(mask).enumerate().filter(|(_, (_, ok))| **ok) {
                offer(keys, v, j, &mut threshold);
            }
        }
    }
    assert!(
        k <= keys.len(),
        "k ({k}) exceeds the {} selectable columns",
        keys.len()
    );
    keys.sort_unstable_by(|a, b| b.cmp(a));
}

/// The fast path of [`select_row`] for long rows: a lower bound `t` on the k-th largest value is the
/// k-th largest of `>= k` block maxima (each of those blocks holds a value `>= t`); only values
/// `>= t` (typically a few times `k`) go through the heap. Vectorisable passes over the row, no
/// branches that depend on the data. Returns false (leaving the work to the general path) when
/// the row is too short or holds fewer than `k` candidates (NaN is never a candidate here).
fn select_by_block_maxima(
    row: &[f32],
    k: usize,
    keys: &mut Vec<u64>,
    maxima: &mut Vec<f32>,
) -> bool {
    const MIN_BLOCK: usize = 16;
    let block = row.len() / (2 * k);
    if block < MIN_BLOCK {
        return false;
    }
    maxima.clear();
    maxima.extend(row.chunks(block).map(block_max));
    let (_, t, _) = maxima.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let t = *t;
    keys.clear();
    for (j, &v) in row.iter().enumerate() {
        if v >= t {
            keys.push(sort_key(v, j));
        }
    }
    if keys.len() < k {
        keys.clear();
        return false;
    }
    keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
    keys.truncate(k);
    keys.sort_unstable_by(|a, b| b.cmp(a));
    true
}

/// The largest non-NaN value of `block` (-inf if none), with eight independent lanes so that the
/// compiler vectorises it instead of chaining one comparison after another.
fn block_max(block: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let (chunks, tail) = block.as_chunks::<8>();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            // `v > m` is false for NaN, which is skipped.
            *m = if v > *m { v } else { *m };
        }
    }
    tail.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// An integer whose order is the selection order: value (NaN as -inf, then IEEE total order)
/// in the high 32 bits, the complemented column in the low 32 (lower column wins ties).
#[inline]
fn sort_key(v: f32, column: usize) -> u64 {
    let v = if v.is_nan() { f32::NEG_INFINITY } else { v };
    let bits = v.to_bits();
    let ordered = if bits & 0x8000_0000 == 0 {
        bits | 0x8000_0000
    } else {
        !bits
    };
    (u64::from(ordered) << 32) | u64::from(!(column as u32))
}

/// The value a [`sort_key`] ranks by (NaN already mapped to -inf).
#[inline]
fn rank_value(key: u64) -> f32 {
    let ordered = (key >> 32) as u32;
    let bits = if ordered & 0x8000_0000 == 0 {
        !ordered
    } else {
        ordered & 0x7fff_ffff
    };
    f32::from_bits(bits)
}

/// The column a [`sort_key`] holds.
#[inline]
pub(crate) fn key_column(key: u64) -> usize {
    !(key as u32) as usize
}

/// Restores the min-heap property below `i`.
fn sift_down(heap: &mut [u64], mut i: usize) {
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut w = i;
        if l < heap.len() && heap[l] < heap[w] {
            w = l;
        }
        if r < heap.len() && heap[r] < heap[w] {
            w = r;
        }
        if w == i {
            return;
        }
        heap.swap(i, w);
        i = w;
    }
}

/// Top-k of pre-activations, as device tensors plus, when selected on the host, the host copy
/// of the indices.
pub(crate) struct Selected<B: Backend> {
    pub indices: Tensor<B, 2, Int>,
    pub values: Tensor<B, 2>,
    pub host_indices: Option<Vec<i64>>,
}

impl<B: Backend> Selected<B> {
    /// The indices on the host, `[rows, k]` row-major: the host copy, moved out, or read back
    /// when selected on the device.
    pub fn take_host_indices(&mut self) -> Vec<i64> {
        self.host_indices
            .take()
            .unwrap_or_else(|| int_to_host(self.indices.clone()))
    }
}

/// Pre-activations `xc @ w_enc + b_enc` of a batch, kept where their top-k is taken: on the
/// device when the backend selects there (burn-wgpu), else as a host copy.
pub(crate) enum PreActivations<B: Backend> {
    Device(Tensor<B, 2>),
    Host(Vec<f32>, B::Device),
}

impl<B: Backend> PreActivations<B> {
    /// The device tensor, when they are kept there.
    pub fn device(&self) -> Option<&Tensor<B, 2>> {
        match self {
            Self::Device(pre) => Some(pre),
            Self::Host(..) => None,
        }
    }

    /// Top `k` of each row among `allowed` latents, after ReLU.
    pub fn select(
        &self,
        options: &KernelOptions,
        d_sae: usize,
        k: usize,
        allowed: Option<&[bool]>,
    ) -> Selected<B> {
        match self {
            Self::Device(pre) => {
                // The kernel, or (sizes it does not take) the host selection; ReLU inside.
                let (indices, values) = topk_tensor_relu(options, pre.clone(), k, allowed);
                Selected {
                    indices,
                    values,
                    host_indices: None,
                }
            }
            Self::Host(pre, device) => select(pre, d_sae, k, allowed, device),
        }
    }
}

/// Selects the top `k` of each row of `pre` (host copy, `[rows, d_sae]`), restricted to
/// `allowed` latents, and applies ReLU.
pub(crate) fn select<B: Backend>(
    pre: &[f32],
    d_sae: usize,
    k: usize,
    allowed: Option<&[bool]>,
    device: &B::Device,
) -> Selected<B> {
    let rows = pre.len() / d_sae;
    let (host_indices, mut host_values) = topk_rows(pre, d_sae, k, allowed);
    for v in &mut host_values {
        *v = v.max(0.0);
    }
    Selected {
        indices: Tensor::from_data(TensorData::new(host_indices.clone(), [rows, k]), device),
        values: Tensor::from_data(TensorData::new(host_values, [rows, k]), device),
        host_indices: Some(host_indices),
    }
}

/// Top `k` of each row of `pre + bias` (`pre` is `[batch, d_sae]`, `bias` `[d_sae]`), restricted to
/// `allowed`, ReLU'd (NaN kept): `([batch, k], [batch, k])`. The bias is added row by row into a
/// small buffer that stays in cache, so `pre` is read once.
pub(crate) fn select_topk(
    pre: &[f32],
    bias: &[f32],
    k: usize,
    allowed: Option<&[bool]>,
) -> (Vec<u32>, Vec<f32>) {
    let d_sae = bias.len();
    let batch = pre.len() / d_sae;
    let mut indices = vec![0u32; batch * k];
    let mut values = vec![0f32; batch * k];
    pre.par_chunks(d_sae * ROWS_PER_TASK)
        .zip(indices.par_chunks_mut(k * ROWS_PER_TASK))
        .zip(values.par_chunks_mut(k * ROWS_PER_TASK))
        .for_each_init(
            || (SelectScratch::default(), vec![0f32; d_sae]),
            |(scratch, biased), ((rows, idx), val)| {
                for ((row, idx), val) in rows
                    .chunks_exact(d_sae)
                    .zip(idx.chunks_exact_mut(k))
                    .zip(val.chunks_exact_mut(k))
                {
                    for ((o, p), b) in biased.iter_mut().zip(row).zip(bias) {
                        *o = p + b;
                    }
                    select_row(biased, k, allowed, scratch);
                    for ((i, v), key) in idx.iter_mut().zip(val).zip(&scratch.keys) {
                        let j = key_column(*key);
                        *i = j as u32;
                        // ReLU that keeps NaN, so a broken model shows in the loss.
                        *v = if biased[j] < 0.0 { 0.0 } else { biased[j] };
                    }
                }
            },
        );
    (indices, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_largest_with_lowest_index_on_ties() {
        let data = [
            1.0, 3.0, 3.0, -1.0, 2.0, /* row 2 */ 0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        let (i, v) = topk_rows(&data, 5, 3, None);
        assert_eq!(i, vec![1, 2, 4, 0, 1, 2]);
        assert_eq!(v, vec![3.0, 3.0, 2.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn respects_the_allowed_mask() {
        let data = [5.0, 1.0, 4.0, 2.0];
        let mask = [false, true, false, true];
        let (i, v) = topk_rows(&data, 4, 2, Some(&mask));
        assert_eq!(i, vec![3, 1]);
        assert_eq!(v, vec![2.0, 1.0]);
    }

    #[test]
    fn nan_ranks_last() {
        let (i, _) = topk_rows(&[f32::NAN, -5.0, 1.0], 3, 2, None);
        assert_eq!(i, vec![2, 1]);
    }
}
