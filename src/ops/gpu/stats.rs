//! The loss's batch statistics on burn-wgpu in two cubecl kernels ([`residual`]): the residual
//! `e = x - x_hat`, the centred variances of the batch and of the residual, the main term's
//! NMSE, and how many AuxK candidates are left; and the AuxK term's NMSE and output gradient in
//! two more ([`scaled_residual`]).
//!
//! With burn's tensor operations these took 20 launches a step: each centred variance is a mean
//! over the batch, a subtraction and a square that burn ran unfused, and a mean in two
//! reductions; then the reconstruction error's two reductions and a division, the residual,
//! a clamp in two launches, and the candidates' sum and cast. A step at the GPU issue's small
//! size is bound by a cost per step, most likely per launch (docs/benchmarks.md). Here:
//! 1. `columns`: a cube per 32 columns (or fewer where the device's cubes are small) walks the
//!    batch twice: first the column sums of `x` and `e` (writing `e`), then, from the column
//!    means, the sums of `(x - mean)^2`, `(e - mean)^2` and `e^2`. One partial sum of each per
//!    cube.
//! 2. `totals`: one cube adds the partial sums up, divides, and counts the candidates.
//!
//! The AuxK term (a chain, two reductions and two more chains in burn) takes `scaled_diff`, a
//! cube per 4,096 elements writing the difference's scaled gradient and a partial sum of its
//! squares, and `ratio`, one cube.
//!
//! The formulas are the tensor path's (`crate::loss`): means over the batch, then means over
//! all elements; the variance of the residual is at least `1e-20`. Only the sums add in another
//! order, so results agree to float rounding. [`residual`] and [`scaled_residual`] return `None`
//! for any backend but burn-wgpu, and without `KernelOptions::loss`, and the loss runs burn's
//! tensor operations: fewer launches did not make the step faster on an H200 (8.0-8.4 ms a
//! step at the large size without these kernels, 9.2-9.4 with them; docs/benchmarks.md), so
//! they are opt-in until that is understood.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Shape, Tensor, TensorData};
use burn_wgpu::WgpuRuntime;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{KernelStatus, Switch, close, empty, float_input, float_output, int_input, pattern};
use crate::ops::engine::KernelOptions;
use crate::ops::transfer::to_host;

/// Units per cube.
const UNITS: u32 = 256;
/// Columns per cube of `columns` (at most; fewer where a cube has fewer units).
const WIDTH: u32 = 32;

#[allow(
    clippy::too_many_arguments,
    clippy::trivially_copy_pass_by_ref,
    reason = "kernels in cubecl's DSL, which takes its tensors by reference"
)]
mod kernel {
    use cubecl::prelude::*;

    use super::super::cube_sum;

    /// Cube `c < blocks`: columns `c * width..` (up to `width` of them, below `cols`) of `x`
    /// and `dec` (`[rows, cols]`), `e = x - (dec + bias)`. Writes `e` there, and
    /// `partial[3 c..3 c + 3]`: the sums over those columns of `(x - mean_x)^2`,
    /// `(e - mean_e)^2` and `e^2`, each mean over the column's rows. Unit `u` takes column
    /// `u % width` and rows `u / width`, `u / width + units / width`, ...
    #[cube(launch)]
    pub(super) fn columns_kernel(
        x: &Tensor<f32>,
        dec: &Tensor<f32>,
        bias: &Tensor<f32>,
        e: &mut Tensor<f32>,
        partial: &mut Tensor<f32>,
        rows: u32,
        cols: u32,
        blocks: u32,
        #[comptime] units: u32,
        #[comptime] width: u32,
    ) {
        let unit = UNIT_POS_X as usize;
        let width_n = width as usize;
        let lanes = units as usize / width_n;
        let (lane, within) = (unit / width_n, unit % width_n);
        let col = CUBE_POS * width_n + within;
        let (rows, cols) = (rows as usize, cols as usize);
        let mut sums_x = SharedMemory::<f32>::new(units as usize);
        let mut sums_e = SharedMemory::<f32>::new(units as usize);
        let mut means = SharedMemory::<f32>::new(2 * width_n);
        let mut scratch = SharedMemory::<f32>::new(units as usize);
        // No early return: every unit must reach the barriers.
        let mut sx = 0f32;
        let mut se = 0f32;
        let mut b = 0f32;
        if col < cols {
            b = bias[col];
            let mut r = lane;
            while r < rows {
                let i = r * cols + col;
                let xi = x[i];
                let ei = xi - (dec[i] + b);
                e[i] = ei;
                sx += xi;
                se += ei;
                r += lanes;
            }
        }
        sums_x[unit] = sx;
        sums_e[unit] = se;
        sync_cube();
        if lane == 0 {
            let mut tx = 0f32;
            let mut te = 0f32;
            for l in 0..lanes {
                tx += sums_x[l * width_n + within];
                te += sums_e[l * width_n + within];
            }
            means[within] = tx / f32::cast_from(rows);
            means[width_n + within] = te / f32::cast_from(rows);
        }
        sync_cube();
        let mut sxx = 0f32;
        let mut see = 0f32;
        let mut sdd = 0f32;
        if col < cols {
            let (mx, me) = (means[within], means[width_n + within]);
            let mut r = lane;
            while r < rows {
                let i = r * cols + col;
                let xi = x[i];
                let ei = xi - (dec[i] + b);
                sxx += (xi - mx) * (xi - mx);
                see += (ei - me) * (ei - me);
                sdd += ei * ei;
                r += lanes;
            }
        }
        let sxx = cube_sum(&mut scratch, sxx);
        let see = cube_sum(&mut scratch, see);
        let sdd = cube_sum(&mut scratch, sdd);
        if unit == 0 && CUBE_POS < blocks as usize {
            partial[3 * CUBE_POS] = sxx;
            partial[3 * CUBE_POS + 1] = see;
            partial[3 * CUBE_POS + 2] = sdd;
        }
    }

    /// One cube: from [`columns_kernel()`]'s `blocks` partial sums over `n` elements,
    /// `var_x = sum (x - mean_x)^2 / n`, `var_e = max(sum (e - mean_e)^2 / n, 1e-20)`, `recon =
    /// (sum e^2 / n) / var_x`; `left` the number of non-zero entries among the first `n_allowed`
    /// of `allowed`, `live = min(left, 1)`.
    #[cube(launch)]
    pub(super) fn totals_kernel(
        partial: &Tensor<f32>,
        allowed: &Tensor<i32>,
        var_x: &mut Tensor<f32>,
        var_e: &mut Tensor<f32>,
        recon: &mut Tensor<f32>,
        left: &mut Tensor<f32>,
        live: &mut Tensor<f32>,
        blocks: u32,
        n: f32,
        n_allowed: u32,
        #[comptime] units: u32,
    ) {
        let unit = UNIT_POS_X as usize;
        let units_n = units as usize;
        let mut scratch = SharedMemory::<f32>::new(units_n);
        let mut sxx = 0f32;
        let mut see = 0f32;
        let mut sdd = 0f32;
        let mut i = unit;
        while i < blocks as usize {
            sxx += partial[3 * i];
            see += partial[3 * i + 1];
            sdd += partial[3 * i + 2];
            i += units_n;
        }
        let mut count = 0f32;
        let mut j = unit;
        while j < n_allowed as usize {
            if allowed[j] != 0i32 {
                count += 1f32;
            }
            j += units_n;
        }
        let sxx = cube_sum(&mut scratch, sxx);
        let see = cube_sum(&mut scratch, see);
        let sdd = cube_sum(&mut scratch, sdd);
        let count = cube_sum(&mut scratch, count);
        if unit == 0 {
            let vx = sxx / n;
            let mut ve = see / n;
            if ve < 1e-20f32 {
                ve = 1e-20f32;
            }
            var_x[0] = vx;
            var_e[0] = ve;
            recon[0] = (sdd / n) / vx;
            left[0] = count;
            let mut l = count;
            if l > 1f32 {
                l = 1f32;
            }
            live[0] = l;
        }
    }

    /// Cube `c < blocks`: elements `c * chunk..` (up to `chunk`, below `len`) of `a` and `b`:
    /// `d = a - b`, `g = d * factor / var[0]` written out, and `partial[c]` the sum of `d^2`.
    #[cube(launch)]
    pub(super) fn scaled_diff_kernel(
        a: &Tensor<f32>,
        b: &Tensor<f32>,
        var: &Tensor<f32>,
        g: &mut Tensor<f32>,
        partial: &mut Tensor<f32>,
        len: u32,
        chunk: u32,
        blocks: u32,
        factor: f32,
        #[comptime] units: u32,
    ) {
        let unit = UNIT_POS_X as usize;
        let mut scratch = SharedMemory::<f32>::new(units as usize);
        let start = CUBE_POS * chunk as usize;
        let mut end = start + chunk as usize;
        if end > len as usize {
            end = len as usize;
        }
        let v = var[0];
        let mut sq = 0f32;
        let mut i = start + unit;
        while i < end {
            let d = a[i] - b[i];
            g[i] = d * factor / v;
            sq += d * d;
            i += units as usize;
        }
        let total = cube_sum(&mut scratch, sq);
        if unit == 0 && CUBE_POS < blocks as usize {
            partial[CUBE_POS] = total;
        }
    }

    /// One cube: `out[0] = (sum of partial[..blocks] / n) / var[0]`, times `live[0]` where
    /// `with_live` is 1.
    #[cube(launch)]
    pub(super) fn ratio_kernel(
        partial: &Tensor<f32>,
        var: &Tensor<f32>,
        live: &Tensor<f32>,
        out: &mut Tensor<f32>,
        blocks: u32,
        n: f32,
        with_live: u32,
        #[comptime] units: u32,
    ) {
        let unit = UNIT_POS_X as usize;
        let mut scratch = SharedMemory::<f32>::new(units as usize);
        let mut sum = 0f32;
        let mut i = unit;
        while i < blocks as usize {
            sum += partial[i];
            i += units as usize;
        }
        let total = cube_sum(&mut scratch, sum);
        if unit == 0 {
            let mut value = (total / n) / var[0];
            if with_live == 1u32 {
                value *= live[0];
            }
            out[0] = value;
        }
    }
}

/// The kernels' switch and first-use check. Off unless `KernelOptions::loss`: on an H200
/// they made the large step slower (docs/benchmarks.md).
static SWITCH: Switch = Switch::new(|o| o.loss, "loss statistics");

/// The kernels' [`KernelStatus`] on `device` for backend `B` (runs the first-use check once).
pub(crate) fn status<B: Backend>(options: &KernelOptions, device: &B::Device) -> KernelStatus {
    SWITCH.status::<B>(options, || check::<B>(device).unwrap_or(false))
}

/// What [`residual`] returns; the scalars are `[1]` each.
pub(crate) struct Residual<B: Backend> {
    /// `x - (dec + bias)`, `[rows, cols]`.
    pub(crate) e: Tensor<B, 2>,
    /// The centred variance of `x` over all elements (column means over the rows).
    pub(crate) var_x: Tensor<B, 1>,
    /// The centred variance of `e`, at least `1e-20`.
    pub(crate) var_e: Tensor<B, 1>,
    /// `mean(e^2) / var_x`: the NMSE of `dec + bias` against `x`.
    pub(crate) recon: Tensor<B, 1>,
    /// How many entries of `allowed` are non-zero (0 without it).
    pub(crate) left: Tensor<B, 1>,
    /// `min(left, 1)`.
    pub(crate) live: Tensor<B, 1>,
}

/// The residual of a decode and the batch statistics the loss needs, in two launches. `None`
/// where the kernels do not run (see [`super`]) or the sizes do not fit a `u32`.
///
/// # Shapes
/// - `x`, `dec`: `[rows, cols]`, `bias`: `[cols]`, `allowed`: `[n]`
pub(crate) fn residual<B: Backend>(
    options: &KernelOptions,
    x: Tensor<B, 2>,
    dec: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    allowed: Option<Tensor<B, 1, Int>>,
) -> Option<Residual<B>> {
    if status::<B>(options, &x.device()) != KernelStatus::Runs {
        return None;
    }
    launch(x, dec, bias, allowed)
}

/// [`residual`] without the switch.
fn launch<B: Backend>(
    x: Tensor<B, 2>,
    dec: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    allowed: Option<Tensor<B, 1, Int>>,
) -> Option<Residual<B>> {
    let [rows, cols] = x.dims();
    let device = x.device();
    if dec.dims() != [rows, cols] || bias.dims() != [cols] || rows == 0 || cols == 0 {
        return None;
    }
    u32::try_from(rows * cols).ok()?;
    let n_allowed = allowed.as_ref().map_or(0, |a| a.dims()[0]);
    u32::try_from(n_allowed).ok()?;
    // Without a mask, one entry the kernel does not read.
    let allowed =
        allowed.unwrap_or_else(|| Tensor::from_data(TensorData::new(vec![0i32], [1]), &device));
    let (x, client) = float_input(x)?;
    let (dec, _) = float_input(dec)?;
    let (bias, _) = float_input(bias)?;
    let allowed = int_input(allowed)?;
    let cube_client = x.client.clone();
    let units = super::sparse::units_for(UNITS, UNITS, &x);
    let width = WIDTH.min(units);
    let blocks = cols.div_ceil(width as usize);
    let e = empty(&x, Shape::new([rows, cols]), DType::F32);
    let partial = empty(&x, Shape::new([3 * blocks]), DType::F32);
    let (gx, gy) = super::sparse::grid(blocks);
    kernel::columns_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(gx, gy, 1),
        CubeDim::new_1d(units),
        x.into_tensor_arg(),
        dec.into_tensor_arg(),
        bias.into_tensor_arg(),
        e.clone().into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        rows as u32,
        cols as u32,
        blocks as u32,
        units,
        width,
    );
    let scalars = [0; 5].map(|_| empty(&e, Shape::new([1]), DType::F32));
    kernel::totals_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(units),
        partial.into_tensor_arg(),
        allowed.into_tensor_arg(),
        scalars[0].clone().into_tensor_arg(),
        scalars[1].clone().into_tensor_arg(),
        scalars[2].clone().into_tensor_arg(),
        scalars[3].clone().into_tensor_arg(),
        scalars[4].clone().into_tensor_arg(),
        blocks as u32,
        (rows * cols) as f32,
        n_allowed as u32,
        units,
    );
    let [var_x, var_e, recon, left, live] = scalars;
    let out = |t| float_output::<B, 1>(&client, t);
    Some(Residual {
        e: float_output(&client, e)?,
        var_x: out(var_x)?,
        var_e: out(var_e)?,
        recon: out(recon)?,
        left: out(left)?,
        live: out(live)?,
    })
}

/// Elements per cube of [`scaled_residual`]'s first kernel (16 per unit).
const CHUNK: usize = 4096;

/// A term's NMSE and output gradient from its decode `a` and target `b`, in two launches:
/// `(mean((a - b)^2) / var, (a - b) * factor / var)`, the NMSE times `live` when given (as
/// AuxK's term, `e_hat` against `e`, does). `None` where [`residual`] is.
///
/// # Shapes
/// - `a`, `b`: `[rows, cols]`, `var` and `live`: `[1]` → `[1]` and `[rows, cols]`
pub(crate) fn scaled_residual<B: Backend>(
    options: &KernelOptions,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    var: Tensor<B, 1>,
    live: Option<Tensor<B, 1>>,
    factor: f32,
) -> Option<(Tensor<B, 1>, Tensor<B, 2>)> {
    if status::<B>(options, &a.device()) != KernelStatus::Runs {
        return None;
    }
    launch_scaled(a, b, var, live, factor, CHUNK)
}

/// [`scaled_residual`] without the switch, with `chunk` elements per cube.
fn launch_scaled<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    var: Tensor<B, 1>,
    live: Option<Tensor<B, 1>>,
    factor: f32,
    chunk: usize,
) -> Option<(Tensor<B, 1>, Tensor<B, 2>)> {
    let [rows, cols] = a.dims();
    let len = rows * cols;
    if b.dims() != [rows, cols] || var.dims() != [1] || len == 0 {
        return None;
    }
    u32::try_from(len).ok()?;
    let with_live = live.is_some();
    let live = live.unwrap_or_else(|| var.clone());
    let (a, client) = float_input(a)?;
    let (b, _) = float_input(b)?;
    let (var, _) = float_input(var)?;
    let (live, _) = float_input(live)?;
    let cube_client = a.client.clone();
    let units = super::sparse::units_for(UNITS, UNITS, &a);
    let blocks = len.div_ceil(chunk);
    let g = empty(&a, Shape::new([rows, cols]), DType::F32);
    let partial = empty(&a, Shape::new([blocks]), DType::F32);
    let (gx, gy) = super::sparse::grid(blocks);
    kernel::scaled_diff_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(gx, gy, 1),
        CubeDim::new_1d(units),
        a.into_tensor_arg(),
        b.into_tensor_arg(),
        var.clone().into_tensor_arg(),
        g.clone().into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        len as u32,
        chunk as u32,
        blocks as u32,
        factor,
        units,
    );
    let out = empty(&g, Shape::new([1]), DType::F32);
    kernel::ratio_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(units),
        partial.into_tensor_arg(),
        var.into_tensor_arg(),
        live.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        blocks as u32,
        len as f32,
        u32::from(with_live),
        units,
    );
    Some((float_output(&client, out)?, float_output(&client, g)?))
}

/// The host's version of [`residual`] on row-major buffers, by the host engine's passes
/// (`crate::ops::stats`): `e` and `[var_x, var_e, recon, left, live]`.
fn reference(x: &[f32], dec: &[f32], bias: &[f32], allowed: &[i32]) -> (Vec<f32>, [f32; 5]) {
    use crate::ops::stats::{centred_variance, residual_term};
    let cols = bias.len();
    let x_hat: Vec<f32> = dec
        .iter()
        .enumerate()
        .map(|(i, d)| d + bias[i % cols])
        .collect();
    let e: Vec<f32> = x.iter().zip(&x_hat).map(|(x, h)| x - h).collect();
    let var_x = centred_variance(x, cols);
    let var_e = centred_variance(&e, cols).max(1e-20);
    let (recon, _) = residual_term(&x_hat, x, var_x, 1.0);
    let left = allowed.iter().filter(|&&a| a != 0).count() as f64;
    let scalars = [var_x, var_e, recon, left, left.min(1.0)].map(|v| v as f32);
    (e, scalars)
}

/// The kernels on small problems against [`reference()`]: 37 rows (more than a cube's lanes,
/// not a multiple of them) of 70 columns (three cubes, the last one partly filled), a mask of
/// 300 candidates (more than a cube's units); then a residual of zero variance (the `1e-20`
/// floor) and no mask.
fn check<B: Backend>(device: &B::Device) -> Option<bool> {
    let (rows, cols) = (37, 70);
    let x: Vec<f32> = pattern(rows * cols, 5).iter().map(|v| v + 0.3).collect();
    let dec = pattern(rows * cols, 6);
    let bias = pattern(cols, 7);
    let allowed: Vec<i32> = (0..300).map(|j| i32::from(j % 7 == 2)).collect();
    let t2 =
        |v: &[f32]| Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), device);
    let t1 = |v: &[f32]| Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
    let mask = Tensor::<B, 1, Int>::from_data(TensorData::new(allowed.clone(), [300]), device);
    let matches = |got: Residual<B>, (want_e, want): (Vec<f32>, [f32; 5])| {
        let scalars = [got.var_x, got.var_e, got.recon, got.left, got.live].map(to_host);
        close(&to_host(got.e), &want_e)
            && scalars.iter().zip(want).all(|(g, w)| {
                // Relative to each value: the variance floor is far below `close`'s scale.
                g.len() == 1 && (g[0] - w).abs() <= 1e-5 * w.abs()
            })
    };
    let first = launch(t2(&x), t2(&dec), t1(&bias), Some(mask))?;
    let first_ok = matches(first, reference(&x, &dec, &bias, &allowed));
    // `dec + bias = x` exactly (multiples of 1/64): `e` is 0 everywhere, and so are its mean
    // and centred variance on any device. (A constant residual of 0.5 left a variance of 9e-16
    // on an H200, whose division is not IEEE-exact: 18.5 / 37 was not 0.5 there.)
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37) % 97) as f32 / 64.0)
        .collect();
    let bias: Vec<f32> = (0..cols).map(|c| (c % 13) as f32 / 16.0).collect();
    let dec: Vec<f32> = (0..rows * cols).map(|i| x[i] - bias[i % cols]).collect();
    let second = launch(t2(&x), t2(&dec), t1(&bias), None)?;
    let second_ok = matches(second, reference(&x, &dec, &bias, &[]));
    Some(first_ok && second_ok && check_scaled::<B>(device)?)
}

/// [`scaled_residual`]'s kernels against the host: 37 rows of 70 columns in chunks of 300 (nine
/// cubes, the last partly filled), with and without `live`.
fn check_scaled<B: Backend>(device: &B::Device) -> Option<bool> {
    let (rows, cols) = (37, 70);
    let (a, b) = (pattern(rows * cols, 8), pattern(rows * cols, 9));
    let (var, live, factor) = (0.7f32, 0.5f32, 0.003f32);
    let (nmse, want_g) =
        crate::ops::stats::residual_term(&a, &b, f64::from(var), f64::from(factor));
    let t2 =
        |v: &[f32]| Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), device);
    let t1 = |v: f32| Tensor::<B, 1>::from_data(TensorData::new(vec![v], [1]), device);
    [None, Some(live)].into_iter().try_fold(true, |ok, live| {
        let want = (nmse * f64::from(live.unwrap_or(1.0))) as f32;
        let (loss, g) = launch_scaled(t2(&a), t2(&b), t1(var), live.map(t1), factor, 300)?;
        Some(ok && close(&to_host(g), &want_g) && close(&to_host(loss), &[want]))
    })
}

#[cfg(all(test, feature = "test-wgpu"))]
mod tests {
    use super::{KernelStatus, check, status};

    type Wgpu = burn_wgpu::Wgpu;

    #[test]
    fn the_loss_statistics_kernels_match_the_host_reference() {
        let device = Default::default();
        assert_eq!(check::<Wgpu>(&device), Some(true));
        // Opt-in: off by default, on when the options say so.
        let mut options = crate::ops::engine::KernelOptions::default();
        assert_eq!(status::<Wgpu>(&options, &device), KernelStatus::SwitchedOff);
        options.loss = true;
        assert_eq!(status::<Wgpu>(&options, &device), KernelStatus::Runs);
    }
}
