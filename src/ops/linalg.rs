//! Linear algebra: the products and concatenations of the tensor engine (with the workarounds
//! burn-wgpu needs), and the host engine's GEMM and vector helpers.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::ops::engine::KernelOptions;

/// `Tensor::cat(parts, 0)` of vectors: in one launch of our kernel on burn-wgpu
/// (`crate::ops::gpu::pack`), else burn's `cat`.
///
/// # Shapes
/// - `parts`: `[n_i]` each → `[sum of n_i]`
pub(crate) fn concat<B: Backend>(
    options: &KernelOptions,
    parts: Vec<Tensor<B, 1>>,
) -> Tensor<B, 1> {
    #[cfg(feature = "wgpu")]
    if let Some(joined) = crate::ops::gpu::pack::concat(options, &parts) {
        return joined;
    }
    #[cfg(not(feature = "wgpu"))]
    let _ = options;
    Tensor::cat(parts, 0)
}

/// `Tensor::cat(parts, 0)` of matrices with the same number of columns, through [`concat()`] on
/// burn-wgpu (as vectors, end to end), else burn's `cat`.
///
/// # Shapes
/// - `parts`: `[r_i, cols]` each → `[sum of r_i, cols]`
#[cfg(feature = "wgpu")]
pub(crate) fn concat_rows<B: Backend>(
    options: &KernelOptions,
    parts: Vec<Tensor<B, 2>>,
) -> Tensor<B, 2> {
    let device = parts.first().map(Tensor::device);
    let runs = device.is_some_and(|d| {
        crate::ops::gpu::pack::status::<B>(options, &d) == crate::ops::KernelStatus::Runs
    });
    if runs {
        let cols = parts[0].dims()[1];
        let flat: Vec<Tensor<B, 1>> = parts
            .iter()
            .map(|p| {
                let [rows, cols] = p.dims();
                p.clone().reshape([rows * cols])
            })
            .collect();
        if let Some(joined) = crate::ops::gpu::pack::concat(options, &flat) {
            let n = joined.dims()[0];
            return joined.reshape([n / cols.max(1), cols]);
        }
    }
    Tensor::cat(parts, 0)
}

/// `a @ b`, with a product of one output column computed as two: burn-wgpu 0.21's fused matmul
/// autotune can run a vector-times-matrix kernel on a matrix-times-vector problem and return
/// wrong rows for `[m, k] @ [k, 1]` (burn issue #5122; seen on lavapipe for every `m > 1` and
/// odd `k > 1`). A zero second column steers it to the general kernels; the extra column costs
/// one more multiply-add per element of `a`. Every product in the crate goes through here.
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[k, n]` → `[m, n]`
pub(crate) fn matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    let [k, n] = b.dims();
    if n != 1 {
        return a.matmul(b);
    }
    let zeros = Tensor::zeros([k, 1], &b.device());
    let padded = Tensor::cat(vec![b, zeros], 1);
    let [m, _] = a.dims();
    a.matmul(padded).slice([0..m, 0..1])
}

/// `pre = xc @ w_enc_t^T`, `[batch, d_sae]`, through ndarray's GEMM (matrixmultiply, or BLAS
/// when ndarray's `blas` feature is on).
pub(crate) fn encode_into(xc: &[f32], w_enc_t: &[f32], d_in: usize, d_sae: usize, pre: &mut [f32]) {
    let batch = xc.len() / d_in;
    let a = ArrayView2::from_shape((batch, d_in), xc).expect("xc is [batch, d_in]");
    let w = ArrayView2::from_shape((d_sae, d_in), w_enc_t).expect("w_enc_t is [d_sae, d_in]");
    let mut c = ArrayViewMut2::from_shape((batch, d_sae), pre).expect("pre is [batch, d_sae]");
    general_mat_mul(1.0, &a, &w.t(), 0.0, &mut c);
}

/// `[rows, cols]` to `[cols, rows]`, in cache-sized blocks.
pub(crate) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const BLOCK: usize = 32;
    let mut out = vec![0f32; a.len()];
    for r0 in (0..rows).step_by(BLOCK) {
        for c0 in (0..cols).step_by(BLOCK) {
            for r in r0..(r0 + BLOCK).min(rows) {
                for c in c0..(c0 + BLOCK).min(cols) {
                    out[c * rows + r] = a[r * cols + c];
                }
            }
        }
    }
    out
}

#[inline]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: lets the compiler vectorise without reassociating one long chain.
    let mut acc = [0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

pub(crate) fn sum_sq(a: &[f32]) -> f64 {
    f64::from(dot(a, a))
}

/// Scales `w` to unit L2 norm (left as is below a norm of 1e-12).
pub(crate) fn normalize_row(w: &mut [f32]) {
    let norm = sum_sq(w).sqrt().max(1e-12) as f32;
    for x in w.iter_mut() {
        *x /= norm;
    }
}
