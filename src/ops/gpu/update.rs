//! The optimiser's part of a training step on burn-wgpu in four cubecl kernels: the decoder
//! gradient's projection, the squared gradient norms, the clipping factor, Adam and the decoder's
//! renormalisation ([`adam_step`]).
//!
//! With burn's tensor operations this part of the step took 26 kernel launches (each reduction,
//! each `cat` piece, each chain of element-wise operations and each operation burn runs unfused
//! is one). A step on the H200 at the small size costs about as much at a quarter of the batch,
//! so it is bound by a cost per step, most likely per launch (not measured apart:
//! docs/benchmarks.md). Here it takes six:
//! 1. `norms`: a cube per decoder row works out `w_j . g_j` (the projection) and the squared
//!    norm of the projected row; further cubes sum the squares of chunks of the encoder's
//!    gradient and of the two biases' gradients. One partial sum per cube.
//! 2. `finish`: one cube adds the partial sums up into the four squared norms and works out the
//!    clipping factor (`torch.nn.utils.clip_grad_norm_`'s, or 1).
//! 3. `adam` (three launches: encoder weights and the two biases): element-wise Adam of the
//!    clipped gradient; the encoder's gradient is read through its strides (it is a transposed
//!    view of the grouped sums).
//! 4. `adam_rows`: a cube per decoder row projects and clips the gradient again (from step 1's
//!    dot product), runs Adam and scales the updated row to unit norm.
//!
//! The formulas, and the order of the operations within each, are those of the tensor path in
//! `crate::train`; only the reductions add in a different order, so results agree to float
//! rounding. [`adam_step`] returns `None` for any backend but burn-wgpu or with
//! `KernelOptions::update` off, and the trainer uses burn's tensor operations.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorData, TensorPrimitive};
use burn_cubecl::tensor::CubeTensor;
use burn_wgpu::WgpuRuntime;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{Client, Fused, Inner, KernelStatus, Switch, cast, close, empty, float_output};
use crate::ops::engine::KernelOptions;
use crate::ops::transfer::to_host;
use crate::ops::update::{AdamConfig, AdamStep};

/// Units per cube.
const UNITS: u32 = 256;
/// Elements of the encoder's gradient per cube of `norms` (16 per unit).
const CHUNK: usize = 4096;

#[allow(
    clippy::too_many_arguments,
    clippy::trivially_copy_pass_by_ref,
    reason = "kernels in cubecl's DSL, which takes its tensors by reference"
)]
mod kernel {
    use cubecl::prelude::*;

    use super::super::cube_sum;

    /// Cube `c < rows`: `along[c] = w[c] . g[c]` and `partial[c] = |g[c] - along[c] w[c]|^2`
    /// over the `cols` columns of the decoder's rows. Cube `rows + i` for `i < enc_cubes`:
    /// `partial` the sum of squares of `g_enc[i * chunk..]` (`chunk` elements, fewer at the
    /// end, in `g_enc`'s logical row-major order of `enc_cols` columns and strides `es0`,
    /// `es1`). Cube `rows + enc_cubes`: the sum of squares of `g_benc`; the one after, of
    /// `g_bdec`.
    #[cube(launch)]
    pub(super) fn norms_kernel(
        w: &Tensor<f32>,
        g: &Tensor<f32>,
        g_enc: &Tensor<f32>,
        g_benc: &Tensor<f32>,
        g_bdec: &Tensor<f32>,
        along: &mut Tensor<f32>,
        partial: &mut Tensor<f32>,
        rows: u32,
        cols: u32,
        enc_len: u32,
        enc_cols: u32,
        es0: u32,
        es1: u32,
        enc_cubes: u32,
        chunk: u32,
        benc_len: u32,
        bdec_len: u32,
        #[comptime] units: u32,
    ) {
        let c = CUBE_POS;
        let unit = UNIT_POS_X as usize;
        let units_n = units as usize;
        let mut scratch = SharedMemory::<f32>::new(units_n);
        let (rows, cols) = (rows as usize, cols as usize);
        let enc_end = rows + enc_cubes as usize;
        // No early return: every unit must reach the barriers.
        let mut acc = 0f32;
        if c < rows {
            let mut j = unit;
            while j < cols {
                acc += w[c * cols + j] * g[c * cols + j];
                j += units_n;
            }
        }
        let a = cube_sum(&mut scratch, acc);
        let mut sq = 0f32;
        if c < rows {
            if unit == 0 {
                along[c] = a;
            }
            let mut j = unit;
            while j < cols {
                let d = g[c * cols + j] - w[c * cols + j] * a;
                sq += d * d;
                j += units_n;
            }
        } else if c < enc_end {
            let start = (c - rows) * chunk as usize;
            let mut end = start + chunk as usize;
            if end > enc_len as usize {
                end = enc_len as usize;
            }
            let mut i = start + unit;
            while i < end {
                let r = i / enc_cols as usize;
                let k = i % enc_cols as usize;
                let v = g_enc[r * es0 as usize + k * es1 as usize];
                sq += v * v;
                i += units_n;
            }
        } else if c == enc_end {
            let mut i = unit;
            while i < benc_len as usize {
                sq += g_benc[i] * g_benc[i];
                i += units_n;
            }
        } else if c == enc_end + 1 {
            let mut i = unit;
            while i < bdec_len as usize {
                sq += g_bdec[i] * g_bdec[i];
                i += units_n;
            }
        }
        let total = cube_sum(&mut scratch, sq);
        if unit == 0 && c < enc_end + 2 {
            partial[c] = total;
        }
    }

    /// One cube: `squares = [w_enc, b_enc, w_dec, b_dec]`'s squared gradient norms from
    /// [`norms_kernel()`]'s partial sums, and `coef[0]` the clipping factor: `min(max_norm /
    /// (norm + 1e-6), 1)` when `clip` is 1, else 1.
    #[cube(launch)]
    pub(super) fn finish_kernel(
        partial: &Tensor<f32>,
        squares: &mut Tensor<f32>,
        coef: &mut Tensor<f32>,
        rows: u32,
        enc_cubes: u32,
        clip: u32,
        max_norm: f32,
        #[comptime] units: u32,
    ) {
        let unit = UNIT_POS_X as usize;
        let units_n = units as usize;
        let mut scratch = SharedMemory::<f32>::new(units_n);
        let rows = rows as usize;
        let enc_end = rows + enc_cubes as usize;
        let mut dec = 0f32;
        let mut enc = 0f32;
        let mut i = unit;
        while i < enc_end {
            if i < rows {
                dec += partial[i];
            } else {
                enc += partial[i];
            }
            i += units_n;
        }
        let dec = cube_sum(&mut scratch, dec);
        let enc = cube_sum(&mut scratch, enc);
        if unit == 0 {
            let benc = partial[enc_end];
            let bdec = partial[enc_end + 1];
            squares[0] = enc;
            squares[1] = benc;
            squares[2] = dec;
            squares[3] = bdec;
            let mut factor = 1f32;
            if clip == 1 {
                let norm = (enc + benc + dec + bdec).sqrt();
                factor = (1f32 / (norm + 1e-6f32)) * max_norm;
                if factor > 1f32 {
                    factor = 1f32;
                }
            }
            coef[0] = factor;
        }
    }

    /// Adam on element `i` with the (clipped) gradient `g`: writes `m_out[i]` and `v_out[i]`
    /// from `m[i]` and `v[i]`, and returns the parameter `p` after the step, in the tensor
    /// path's order of operations: `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
    /// `p - m / c1 / (sqrt(v / c2) + eps) * lr`.
    #[cube]
    fn adam_element(
        p: f32,
        g: f32,
        m: &Tensor<f32>,
        v: &Tensor<f32>,
        m_out: &mut Tensor<f32>,
        v_out: &mut Tensor<f32>,
        i: usize,
        b1: f32,
        one_b1: f32,
        b2: f32,
        one_b2: f32,
        lr: f32,
        eps: f32,
        c1: f32,
        c2: f32,
    ) -> f32 {
        let mi = m[i] * b1 + g * one_b1;
        let vi = v[i] * b2 + g * g * one_b2;
        m_out[i] = mi;
        v_out[i] = vi;
        let denom = (vi / c2).sqrt() + eps;
        p - mi / c1 / denom * lr
    }

    /// Element-wise Adam of `len` parameters (logically `[len / cols, cols]`; `g` read through
    /// its strides `gs0`, `gs1`): `g' = g * coef[0]`, `m = b1 m + (1 - b1) g'`, `v = b2 v +
    /// (1 - b2) g'^2`, `p -= m / c1 / (sqrt(v / c2) + eps) * lr`.
    #[cube(launch)]
    pub(super) fn adam_kernel(
        p: &Tensor<f32>,
        g: &Tensor<f32>,
        m: &Tensor<f32>,
        v: &Tensor<f32>,
        coef: &Tensor<f32>,
        p_out: &mut Tensor<f32>,
        m_out: &mut Tensor<f32>,
        v_out: &mut Tensor<f32>,
        len: u32,
        cols: u32,
        gs0: u32,
        gs1: u32,
        b1: f32,
        one_b1: f32,
        b2: f32,
        one_b2: f32,
        lr: f32,
        eps: f32,
        c1: f32,
        c2: f32,
        #[comptime] units: u32,
    ) {
        let i = CUBE_POS * units as usize + UNIT_POS_X as usize;
        if i < len as usize {
            let r = i / cols as usize;
            let k = i % cols as usize;
            let gi = g[r * gs0 as usize + k * gs1 as usize] * coef[0];
            p_out[i] = adam_element(
                p[i], gi, m, v, m_out, v_out, i, b1, one_b1, b2, one_b2, lr, eps, c1, c2,
            );
        }
    }

    /// Cube `c < rows`: [`adam_kernel()`] on decoder row `c` with the gradient
    /// `(g - along[c] w) * coef[0]`, then the row scaled to unit norm (left as is below 1e-12).
    #[cube(launch)]
    pub(super) fn adam_rows_kernel(
        p: &Tensor<f32>,
        g: &Tensor<f32>,
        m: &Tensor<f32>,
        v: &Tensor<f32>,
        along: &Tensor<f32>,
        coef: &Tensor<f32>,
        p_out: &mut Tensor<f32>,
        m_out: &mut Tensor<f32>,
        v_out: &mut Tensor<f32>,
        rows: u32,
        cols: u32,
        b1: f32,
        one_b1: f32,
        b2: f32,
        one_b2: f32,
        lr: f32,
        eps: f32,
        c1: f32,
        c2: f32,
        #[comptime] units: u32,
    ) {
        let c = CUBE_POS;
        let unit = UNIT_POS_X as usize;
        let units_n = units as usize;
        let mut scratch = SharedMemory::<f32>::new(units_n);
        let (rows, cols) = (rows as usize, cols as usize);
        let mut sq = 0f32;
        if c < rows {
            let a = along[c];
            let scale = coef[0];
            let mut j = unit;
            while j < cols {
                let i = c * cols + j;
                let gi = (g[i] - p[i] * a) * scale;
                let pi = adam_element(
                    p[i], gi, m, v, m_out, v_out, i, b1, one_b1, b2, one_b2, lr, eps, c1, c2,
                );
                p_out[i] = pi;
                sq += pi * pi;
                j += units_n;
            }
        }
        let total = cube_sum(&mut scratch, sq);
        if c < rows {
            let mut norm = total.sqrt();
            if norm < 1e-12f32 {
                norm = 1e-12f32;
            }
            // Each unit rescales the columns it wrote.
            let mut j = unit;
            while j < cols {
                let i = c * cols + j;
                p_out[i] = p_out[i] / norm;
                j += units_n;
            }
        }
    }
}

/// The kernels' switch (`KernelOptions::update`) and first-use check.
static SWITCH: Switch = Switch::new(|o| o.update, "optimiser update");

/// The kernels' [`KernelStatus`] on `device` for backend `B` (runs the first-use check once).
pub(crate) fn status<B: Backend>(options: &KernelOptions, device: &B::Device) -> KernelStatus {
    SWITCH.status::<B>(options, || check::<B>(device).unwrap_or(false))
}

/// One parameter for [`adam_step`]: its value, gradient and Adam moments, all of one shape.
pub(crate) struct Slot<B: Backend, const D: usize> {
    pub(crate) param: Tensor<B, D>,
    pub(crate) grad: Tensor<B, D>,
    pub(crate) m: Tensor<B, D>,
    pub(crate) v: Tensor<B, D>,
}

/// One parameter after [`adam_step`]: its value and Adam moments.
pub(crate) struct Updated<B: Backend, const D: usize> {
    pub(crate) param: Tensor<B, D>,
    pub(crate) m: Tensor<B, D>,
    pub(crate) v: Tensor<B, D>,
}

/// What [`adam_step`] returns: the four parameters (order of the model's fields) and the
/// squared gradient norms `[4]` (`w_enc`, `b_enc`, `w_dec`, `b_dec`; the decoder's after the
/// projection, all before clipping).
pub(crate) struct Step<B: Backend> {
    pub(crate) w_enc: Updated<B, 2>,
    pub(crate) b_enc: Updated<B, 1>,
    pub(crate) w_dec: Updated<B, 2>,
    pub(crate) b_dec: Updated<B, 1>,
    pub(crate) squares: Tensor<B, 1>,
}

/// The optimiser's part of a training step: projects the decoder's gradient orthogonal to its
/// rows, clips the global gradient norm (with `hyper.max_norm`), runs one Adam update of the four
/// parameters and scales the decoder's rows to unit norm, as the tensor path in
/// `crate::train` does. `None` where the kernels do not run (see [`super`]) or the sizes do not
/// fit a `u32`; the inputs are then untouched.
///
/// # Shapes
/// - `w_enc`: `[d_in, d_sae]` (its gradient may be a strided view), `b_enc`: `[d_sae]`, `w_dec`:
///   `[d_sae, d_in]`, `b_dec`: `[d_in]`
pub(crate) fn adam_step<B: Backend>(
    options: &KernelOptions,
    w_enc: &Slot<B, 2>,
    b_enc: &Slot<B, 1>,
    w_dec: &Slot<B, 2>,
    b_dec: &Slot<B, 1>,
    hyper: &AdamStep,
) -> Option<Step<B>> {
    if status::<B>(options, &w_dec.param.device()) != KernelStatus::Runs {
        return None;
    }
    launch(w_enc, b_enc, w_dec, b_dec, hyper, CHUNK)
}

/// A float tensor as a cubecl tensor with its own strides (not made contiguous).
fn strided<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<CubeTensor<WgpuRuntime>> {
    let TensorPrimitive::Float(t) = t.into_primitive() else {
        return None;
    };
    let t: Fused = cast(t)?;
    let client: Client = t.client.clone();
    let t = client.resolve_tensor_float::<Inner>(t);
    (t.dtype == DType::F32).then_some(t)
}

/// `t`'s strides as the kernels' `(row, column)` strides of a `[rows, cols]` view (a vector
/// is one row).
fn strides_2d(t: &CubeTensor<WgpuRuntime>) -> Option<(u32, u32)> {
    match **t.meta.strides() {
        [s] => Some((0, u32::try_from(s).ok()?)),
        [s0, s1] => Some((u32::try_from(s0).ok()?, u32::try_from(s1).ok()?)),
        _ => None,
    }
}

/// A slot's parameter and moments as contiguous cubecl tensors.
fn inputs<B: Backend, const D: usize>(slot: &Slot<B, D>) -> Option<[CubeTensor<WgpuRuntime>; 3]> {
    let (p, _) = super::float_input(slot.param.clone())?;
    let (m, _) = super::float_input(slot.m.clone())?;
    let (v, _) = super::float_input(slot.v.clone())?;
    Some([p, m, v])
}

/// Adam's eight scalars as the kernels take them.
fn scalars(h: &AdamStep) -> [f32; 8] {
    [
        h.beta_1 as f32,
        (1.0 - h.beta_1) as f32,
        h.beta_2 as f32,
        (1.0 - h.beta_2) as f32,
        h.lr as f32,
        h.epsilon as f32,
        h.c1 as f32,
        h.c2 as f32,
    ]
}

/// [`adam_step`] without the switch, with `chunk` elements of the encoder's gradient per cube
/// of the norms.
#[allow(clippy::too_many_lines, reason = "one sequence of launches")]
fn launch<B: Backend>(
    w_enc: &Slot<B, 2>,
    b_enc: &Slot<B, 1>,
    w_dec: &Slot<B, 2>,
    b_dec: &Slot<B, 1>,
    hyper: &AdamStep,
    chunk: usize,
) -> Option<Step<B>> {
    let [d_sae, d_in] = w_dec.param.dims();
    let [enc_rows, enc_cols] = w_enc.param.dims();
    let enc_len = enc_rows * enc_cols;
    let enc_cubes = enc_len.div_ceil(chunk);
    let norm_cubes = d_sae + enc_cubes + 2;
    if u32::try_from(norm_cubes.max(enc_len).max(d_sae * d_in)).is_err() {
        return None;
    }
    let (wd, client) = super::float_input(w_dec.param.clone())?;
    let (gd, _) = super::float_input(w_dec.grad.clone())?;
    let ge = strided(w_enc.grad.clone())?;
    let (ge_s0, ge_s1) = strides_2d(&ge)?;
    let (gbe, _) = super::float_input(b_enc.grad.clone())?;
    let (gbd, _) = super::float_input(b_dec.grad.clone())?;
    let cube_client = wd.client.clone();
    let units = super::sparse::units_for(UNITS, UNITS, &wd);
    let along = empty(&wd, Shape::new([d_sae]), DType::F32);
    let partial = empty(&wd, Shape::new([norm_cubes]), DType::F32);
    let (x, y) = super::sparse::grid(norm_cubes);
    kernel::norms_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(x, y, 1),
        CubeDim::new_1d(units),
        wd.clone().into_tensor_arg(),
        gd.clone().into_tensor_arg(),
        ge.clone().into_tensor_arg(),
        gbe.clone().into_tensor_arg(),
        gbd.clone().into_tensor_arg(),
        along.clone().into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        d_sae as u32,
        d_in as u32,
        enc_len as u32,
        enc_cols as u32,
        ge_s0,
        ge_s1,
        enc_cubes as u32,
        chunk as u32,
        b_enc.grad.dims()[0] as u32,
        b_dec.grad.dims()[0] as u32,
        units,
    );
    let squares = empty(&wd, Shape::new([4]), DType::F32);
    let coef = empty(&wd, Shape::new([1]), DType::F32);
    kernel::finish_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(units),
        partial.into_tensor_arg(),
        squares.clone().into_tensor_arg(),
        coef.clone().into_tensor_arg(),
        d_sae as u32,
        enc_cubes as u32,
        u32::from(hyper.max_norm.is_some()),
        hyper.max_norm.unwrap_or(0.0) as f32,
        units,
    );
    let [b1, one_b1, b2, one_b2, lr, eps, c1, c2] = scalars(hyper);

    // Element-wise Adam of a parameter (`p`, `m`, `v` contiguous, logically `[len / cols,
    // cols]`) whose gradient is `g`, read through the strides `gs`.
    let elementwise = |[p, m, v]: [CubeTensor<WgpuRuntime>; 3],
                       g: &CubeTensor<WgpuRuntime>,
                       cols: usize,
                       (gs0, gs1): (u32, u32)|
     -> [CubeTensor<WgpuRuntime>; 3] {
        let shape = p.meta.shape().clone();
        let len = shape.num_elements();
        let outs = [0; 3].map(|_| empty(&p, shape.clone(), DType::F32));
        let (x, y) = super::sparse::grid(len.div_ceil(units as usize));
        kernel::adam_kernel::launch::<WgpuRuntime>(
            &cube_client,
            CubeCount::Static(x, y, 1),
            CubeDim::new_1d(units),
            p.into_tensor_arg(),
            g.clone().into_tensor_arg(),
            m.into_tensor_arg(),
            v.into_tensor_arg(),
            coef.clone().into_tensor_arg(),
            outs[0].clone().into_tensor_arg(),
            outs[1].clone().into_tensor_arg(),
            outs[2].clone().into_tensor_arg(),
            len as u32,
            cols.max(1) as u32,
            gs0,
            gs1,
            b1,
            one_b1,
            b2,
            one_b2,
            lr,
            eps,
            c1,
            c2,
            units,
        );
        outs
    };
    let enc = elementwise(inputs(w_enc)?, &ge, enc_cols, (ge_s0, ge_s1));
    let benc = elementwise(inputs(b_enc)?, &gbe, d_sae, (0, 1));
    let bdec = elementwise(inputs(b_dec)?, &gbd, d_in, (0, 1));

    let (md, _) = super::float_input(w_dec.m.clone())?;
    let (vd, _) = super::float_input(w_dec.v.clone())?;
    let dec = [0; 3].map(|_| empty(&wd, Shape::new([d_sae, d_in]), DType::F32));
    let (x, y) = super::sparse::grid(d_sae);
    kernel::adam_rows_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(x, y, 1),
        CubeDim::new_1d(units),
        wd.into_tensor_arg(),
        gd.into_tensor_arg(),
        md.into_tensor_arg(),
        vd.into_tensor_arg(),
        along.into_tensor_arg(),
        coef.into_tensor_arg(),
        dec[0].clone().into_tensor_arg(),
        dec[1].clone().into_tensor_arg(),
        dec[2].clone().into_tensor_arg(),
        d_sae as u32,
        d_in as u32,
        b1,
        one_b1,
        b2,
        one_b2,
        lr,
        eps,
        c1,
        c2,
        units,
    );

    let out1 = |t: CubeTensor<WgpuRuntime>| float_output::<B, 1>(&client, t);
    let out2 = |t: CubeTensor<WgpuRuntime>| float_output::<B, 2>(&client, t);
    let [ep, em, ev] = enc;
    let [bep, bem, bev] = benc;
    let [bdp, bdm, bdv] = bdec;
    let [dp, dm, dv] = dec;
    Some(Step {
        w_enc: Updated {
            param: out2(ep)?,
            m: out2(em)?,
            v: out2(ev)?,
        },
        b_enc: Updated {
            param: out1(bep)?,
            m: out1(bem)?,
            v: out1(bev)?,
        },
        w_dec: Updated {
            param: out2(dp)?,
            m: out2(dm)?,
            v: out2(dv)?,
        },
        b_dec: Updated {
            param: out1(bdp)?,
            m: out1(bdm)?,
            v: out1(bdv)?,
        },
        squares: out1(squares)?,
    })
}

/// The host's version of [`adam_step`] on row-major buffers (`[p, g, m, v]` per parameter,
/// `w_enc`'s gradient contiguous), with the host engine's projection, Adam and renormalisation:
/// the four parameters' new `[p, m, v]` and the squares.
fn reference(
    slots: &[[Vec<f32>; 4]; 4],
    d_in: usize,
    h: &AdamStep,
) -> ([[Vec<f32>; 3]; 4], [f32; 4]) {
    use crate::ops::linalg::sum_sq;
    use crate::ops::update::{AdamScalars, project_row};
    let [w, g] = [&slots[2][0], &slots[2][1]];
    let mut g_dec = g.clone();
    for (g_row, w_row) in g_dec.chunks_mut(d_in).zip(w.chunks(d_in)) {
        project_row(g_row, w_row);
    }
    let grads = [&slots[0][1], &slots[1][1], &g_dec, &slots[3][1]];
    let squares = grads.map(|g| sum_sq(g) as f32);
    let norm = f64::from(squares.iter().sum::<f32>()).sqrt();
    let adam = AdamScalars::new(h, h.clip_factor(norm) as f32);
    let out = std::array::from_fn(|i| {
        let [p, _, m, v] = &slots[i];
        let mut out = [p.clone(), m.clone(), v.clone()];
        let [p, m, v] = &mut out;
        if i == 2 {
            for (((w, m), v), g) in p
                .chunks_mut(d_in)
                .zip(m.chunks_mut(d_in))
                .zip(v.chunks_mut(d_in))
                .zip(grads[i].chunks(d_in))
            {
                adam.update_row(w, m, v, g);
            }
        } else {
            adam.update_chunk(p, m, v, grads[i]);
        }
        out
    });
    (out, squares)
}

/// The kernels on a small problem against [`reference()`]: 3 decoder rows of 300 columns (more
/// than a cube's units), the encoder's gradient a transposed view as the trainer gives it, its
/// squares over 8 cubes, clipping active.
fn check<B: Backend>(device: &B::Device) -> Option<bool> {
    let (d_sae, d_in) = (3, 300);
    let opt = AdamConfig::new().with_lr(0.1);
    let hyper = AdamStep::new(&opt, 3, Some(1.0));
    let sizes = [d_in * d_sae, d_sae, d_sae * d_in, d_in];
    let slots: [[Vec<f32>; 4]; 4] = std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let v = super::pattern(sizes[i], 4 * i + j);
            // The second moments are never negative.
            if j == 3 {
                v.iter().map(|x| x.abs()).collect()
            } else {
                v
            }
        })
    });
    // The encoder's gradient as the grouped sums give it: `[d_sae, d_in + 1]`, sliced and
    // transposed to `[d_in, d_sae]`.
    let mut wide = super::pattern(d_sae * (d_in + 1), 99);
    let mut enc_grad = vec![0f32; d_in * d_sae];
    for r in 0..d_in {
        for c in 0..d_sae {
            enc_grad[r * d_sae + c] = wide[c * (d_in + 1) + r];
        }
    }
    let mut host = slots.clone();
    host[0][1] = enc_grad;
    let (want, want_squares) = reference(&host, d_in, &hyper);

    let t1 = |v: &[f32]| Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
    let t2 = |v: &[f32], rows: usize, cols: usize| {
        Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), device)
    };
    let slot2 = |s: &[Vec<f32>; 4], rows, cols| Slot {
        param: t2(&s[0], rows, cols),
        grad: t2(&s[1], rows, cols),
        m: t2(&s[2], rows, cols),
        v: t2(&s[3], rows, cols),
    };
    let slot1 = |s: &[Vec<f32>; 4]| Slot {
        param: t1(&s[0]),
        grad: t1(&s[1]),
        m: t1(&s[2]),
        v: t1(&s[3]),
    };
    let mut w_enc = slot2(&slots[0], d_in, d_sae);
    w_enc.grad = t2(&std::mem::take(&mut wide), d_sae, d_in + 1)
        .slice([0..d_sae, 0..d_in])
        .transpose();
    let step = launch(
        &w_enc,
        &slot1(&slots[1]),
        &slot2(&slots[2], d_sae, d_in),
        &slot1(&slots[3]),
        &hyper,
        128,
    )?;
    let got: [[Vec<f32>; 3]; 4] = [
        [step.w_enc.param, step.w_enc.m, step.w_enc.v].map(to_host),
        [step.b_enc.param, step.b_enc.m, step.b_enc.v].map(to_host),
        [step.w_dec.param, step.w_dec.m, step.w_dec.v].map(to_host),
        [step.b_dec.param, step.b_dec.m, step.b_dec.v].map(to_host),
    ];
    let squares_ok = close(&to_host(step.squares), &want_squares);
    Some(
        squares_ok
            && got
                .iter()
                .flatten()
                .zip(want.iter().flatten())
                .all(|(g, w)| close(g, w)),
    )
}

#[cfg(all(test, feature = "test-wgpu"))]
mod tests {
    use super::{KernelStatus, check, status};

    type Wgpu = burn_wgpu::Wgpu;

    #[test]
    fn the_update_kernels_match_the_host_reference() {
        let device = Default::default();
        assert_eq!(check::<Wgpu>(&device), Some(true));
        let options = crate::ops::engine::KernelOptions::default();
        assert_eq!(status::<Wgpu>(&options, &device), KernelStatus::Runs);
    }
}
