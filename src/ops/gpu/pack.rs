//! Concatenation of up to [`MAX_PARTS`] float vectors in one cubecl kernel launch ([`concat()`]).
//!
//! burn-cubecl 0.21 runs `Tensor::cat` as one slice-assign kernel per piece, after an allocation
//! (and for the pieces that are computed, after the fusion layer has run them); a training step
//! concatenated 17 pieces that way, and a step at the GPU issue's small size is bound by a cost
//! per step (docs/benchmarks.md). The kernel copies element `i` of the output from the piece it
//! falls in. Returns `None` for any backend but burn-wgpu, with `KernelOptions::pack` off, or for
//! more pieces than it takes; the callers then use `Tensor::cat`.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_cubecl::tensor::CubeTensor;
use burn_wgpu::WgpuRuntime;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{KernelStatus, Switch, empty, float_input, float_output, pattern};
use crate::ops::engine::KernelOptions;
use crate::ops::transfer::to_host;

/// Most pieces one launch takes.
const MAX_PARTS: usize = 6;
/// Units per cube.
const UNITS: u32 = 256;

#[allow(
    clippy::too_many_arguments,
    clippy::trivially_copy_pass_by_ref,
    reason = "one kernel in cubecl's DSL, which takes its tensors by reference"
)]
mod kernel {
    use cubecl::prelude::*;

    /// `out[i]` for `i < ends[5]` from the piece it falls in: `a` below `e0`, `b` below `e1`,
    /// and so on (the ends are cumulative; unused pieces are empty).
    #[cube(launch)]
    pub(super) fn pack_kernel(
        a: &Tensor<f32>,
        b: &Tensor<f32>,
        c: &Tensor<f32>,
        d: &Tensor<f32>,
        e: &Tensor<f32>,
        f: &Tensor<f32>,
        out: &mut Tensor<f32>,
        e0: u32,
        e1: u32,
        e2: u32,
        e3: u32,
        e4: u32,
        e5: u32,
        #[comptime] units: u32,
    ) {
        let i = CUBE_POS * units as usize + UNIT_POS_X as usize;
        let (e0, e1, e2, e3, e4, e5) = (
            e0 as usize,
            e1 as usize,
            e2 as usize,
            e3 as usize,
            e4 as usize,
            e5 as usize,
        );
        if i < e0 {
            out[i] = a[i];
        } else if i < e1 {
            out[i] = b[i - e0];
        } else if i < e2 {
            out[i] = c[i - e1];
        } else if i < e3 {
            out[i] = d[i - e2];
        } else if i < e4 {
            out[i] = e[i - e3];
        } else if i < e5 {
            out[i] = f[i - e4];
        }
    }
}

/// The kernel's switch (`KernelOptions::pack`) and first-use check.
static SWITCH: Switch = Switch::new(|o| o.pack, "concatenation");

/// The kernel's [`KernelStatus`] on `device` for backend `B` (runs the first-use check once).
pub(crate) fn status<B: Backend>(options: &KernelOptions, device: &B::Device) -> KernelStatus {
    SWITCH.status::<B>(options, || check::<B>(device).unwrap_or(false))
}

/// `parts` end to end in one launch, as `Tensor::cat(parts, 0)` gives them. `None` where the
/// kernel does not run (see [`super`]), for no parts with elements or more than [`MAX_PARTS`],
/// or for more elements than a `u32` counts.
///
/// # Shapes
/// - `parts`: `[n_i]` each → `[sum of n_i]`
pub(crate) fn concat<B: Backend>(
    options: &KernelOptions,
    parts: &[Tensor<B, 1>],
) -> Option<Tensor<B, 1>> {
    let first = parts.first()?;
    if status::<B>(options, &first.device()) != KernelStatus::Runs {
        return None;
    }
    launch(parts)
}

/// [`concat()`] without the switch.
fn launch<B: Backend>(parts: &[Tensor<B, 1>]) -> Option<Tensor<B, 1>> {
    // Empty pieces add nothing (and a buffer of no bytes is not bound).
    let parts: Vec<&Tensor<B, 1>> = parts.iter().filter(|p| p.dims()[0] > 0).collect();
    if parts.len() > MAX_PARTS {
        return None;
    }
    let mut ends = [0usize; MAX_PARTS];
    let mut total = 0;
    for (i, end) in ends.iter_mut().enumerate() {
        total += parts.get(i).map_or(0, |p| p.dims()[0]);
        *end = total;
    }
    let ends = ends.map(|e| u32::try_from(e).ok());
    let [Some(e0), Some(e1), Some(e2), Some(e3), Some(e4), Some(e5)] = ends else {
        return None;
    };
    let mut inputs: Vec<CubeTensor<WgpuRuntime>> = Vec::with_capacity(MAX_PARTS);
    let mut client = None;
    for part in parts {
        let (t, c) = float_input((*part).clone())?;
        client.get_or_insert(c);
        inputs.push(t);
    }
    // No pieces with elements: `None`, and `Tensor::cat` makes the empty vector.
    let client = client?;
    let like = inputs[0].clone();
    // Unused pieces: a buffer of one float each, never read (a buffer of its own, not bound
    // twice).
    while inputs.len() < MAX_PARTS {
        inputs.push(empty(&like, Shape::new([1]), DType::F32));
    }
    let out = empty(&like, Shape::new([total]), DType::F32);
    let units = super::sparse::units_for(UNITS, UNITS, &like);
    let (x, y) = super::sparse::grid(total.div_ceil(units as usize));
    let [a, b, c, d, e, f]: [CubeTensor<WgpuRuntime>; MAX_PARTS] = inputs.try_into().ok()?;
    kernel::pack_kernel::launch::<WgpuRuntime>(
        &like.client,
        CubeCount::Static(x, y, 1),
        CubeDim::new_1d(units),
        a.into_tensor_arg(),
        b.into_tensor_arg(),
        c.into_tensor_arg(),
        d.into_tensor_arg(),
        e.into_tensor_arg(),
        f.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        e0,
        e1,
        e2,
        e3,
        e4,
        e5,
        units,
    );
    float_output(&client, out)
}

/// Six pieces of 1 to 517 elements (the output over more than two cubes) and an empty one
/// against the host's concatenation.
fn check<B: Backend>(device: &B::Device) -> Option<bool> {
    let sizes = [1, 300, 0, 517, 3, 2, 40];
    let pieces: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, i + 7))
        .collect();
    let parts: Vec<Tensor<B, 1>> = pieces
        .iter()
        .map(|p| Tensor::from_data(TensorData::new(p.clone(), [p.len()]), device))
        .collect();
    let got = to_host(launch(&parts)?);
    Some(got == pieces.concat())
}

#[cfg(all(test, feature = "test-wgpu"))]
mod tests {
    use super::{KernelStatus, check, status};

    type Wgpu = burn_wgpu::Wgpu;

    #[test]
    fn concatenation_matches_the_host() {
        let device = Default::default();
        assert_eq!(check::<Wgpu>(&device), Some(true));
        let options = crate::ops::engine::KernelOptions::default();
        assert_eq!(status::<Wgpu>(&options, &device), KernelStatus::Runs);
    }
}
