//! Row-wise top-k on burn-wgpu, in one cubecl kernel, so the GPU step does not read the
//! `[batch, d_sae]` pre-activations back to the host (50 MB a step at d_sae 12,288).
//!
//! One cube (workgroup) per row. The kernel maps each value to a 32-bit key that orders like the
//! value (NaN as `-inf`, `-0.0` below `+0.0`: the host top-k's order), finds the `k`-th largest
//! key by a radix select (8 passes of 4 bits; each unit counts the digits of its contiguous
//! chunk of the row into its own column of a shared-memory histogram, and all units add the
//! columns up in a two-level tree), gathers the keys above it plus the lowest-column ties (each
//! unit's place from a parallel scan), and writes them out best first by a rank sort. The result
//! equals [`crate::topk::topk_rows`]: same indices in the same order, same values.
//!
//! On an H200 the first version (16 units each walking all 256 units' histograms, one unit
//! scanning the counts) took 1 to 2.4 ms per call at 1024 rows; docs/benchmarks.md has the
//! figures of this one.
//!
//! [`topk`] returns `None` for any backend but burn-wgpu (see [`super`]), and the callers fall
//! back to the host top-k.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Shape, Tensor, TensorData};
use burn_wgpu::WgpuRuntime;
use cubecl::prelude::{CubeCount, CubeDim};

use super::{
    KernelStatus, Switch, empty, float_input, float_output, int_input, int_output, pattern,
};
use crate::sae::{int_to_host, to_host};
use crate::topk::topk_rows;

/// Units per cube: each owns a contiguous chunk of the row.
const UNITS: u32 = 256;
/// Largest `k` the kernel takes (its candidates live in shared memory); larger falls back.
const MAX_K: usize = 1024;
/// Rows per launch: one cube per row, and a dispatch dimension holds at most 65,535.
const MAX_ROWS: usize = 65_535;

/// The kernel, apart from burn's names (`Tensor` here is cubecl's).
#[allow(
    clippy::too_many_lines,
    clippy::trivially_copy_pass_by_ref,
    reason = "one kernel in cubecl's DSL, which takes its tensors by reference"
)]
mod kernel {
    use cubecl::prelude::*;

    /// A key that orders like the value: NaN as `-inf`, then IEEE order with `-0.0 < +0.0`.
    #[cube]
    fn ordered_key(v: f32) -> u32 {
        let bits = u32::reinterpret(v);
        let mut key = bits ^ 0xffff_ffffu32;
        if bits & 0x8000_0000u32 == 0u32 {
            key = bits | 0x8000_0000u32;
        }
        if v.is_nan() {
            // The key of -inf (0xff80_0000 inverted).
            key = 0x007f_ffffu32;
        }
        key
    }

    /// `allowed[j] = candidates[j]`, `fired[j] = 0` for every latent `j < n`.
    #[cube(launch)]
    pub(super) fn mask_init_kernel(
        candidates: &Tensor<i32>,
        allowed: &mut Tensor<i32>,
        fired: &mut Tensor<f32>,
        n: u32,
        #[comptime] units: u32,
    ) {
        let j = CUBE_POS * units as usize + UNIT_POS_X as usize;
        if j < n as usize {
            allowed[j] = candidates[j];
            fired[j] = 0f32;
        }
    }

    /// For every entry `e < entries` of the selected indices: `allowed[indices[e]] = 0`,
    /// `fired[indices[e]] = 1` (units that select the same latent store the same values).
    #[cube(launch)]
    pub(super) fn mask_fired_kernel(
        indices: &Tensor<i32>,
        allowed: &mut Tensor<i32>,
        fired: &mut Tensor<f32>,
        entries: u32,
        #[comptime] units: u32,
    ) {
        let e = CUBE_POS * units as usize + UNIT_POS_X as usize;
        if e < entries as usize {
            let j = usize::cast_from(indices[e]);
            allowed[j] = 0i32;
            fired[j] = 1f32;
        }
    }

    /// [`ordered_key()`] of `pre[base + j]` where `allowed[j]` is non-zero; 0, below every
    /// value's key (that of NaN and `-inf` is `0x007f_ffff`), where it is not.
    #[cube]
    fn masked_key(pre: &Tensor<f32>, allowed: &Tensor<i32>, base: usize, j: usize) -> u32 {
        let mut key = 0u32;
        if allowed[j] != 0i32 {
            key = ordered_key(pre[base + j]);
        }
        key
    }

    /// Top `k` of each row of `pre` among the columns where `allowed` is non-zero. A column not
    /// allowed ranks below every allowed one (ties to the lower column, as ever) with the value
    /// `f32::MIN`: it is selected only when fewer than `k` columns are allowed. With `relu` 1
    /// the values written are ReLU's (a negative value as 0; NaN and `-0.0` stay, as with
    /// burn's `clamp_min(0.0)`), which saves the step a launch.
    #[cube(launch)]
    pub(super) fn topk_kernel(
        pre: &Tensor<f32>,
        allowed: &Tensor<i32>,
        out_indices: &mut Tensor<i32>,
        out_values: &mut Tensor<f32>,
        cols: u32,
        k: u32,
        relu: u32,
        #[comptime] units: u32,
        #[comptime] k_cap: u32,
    ) {
        let row = CUBE_POS_X as usize;
        let unit = UNIT_POS_X as usize;
        let n = cols as usize;
        let kk = k as usize;
        let units_n = units as usize;
        let base = row * n;
        let chunk = n.div_ceil(units_n);
        let mut start = unit * chunk;
        if start > n {
            start = n;
        }
        let mut end = start + chunk;
        if end > n {
            end = n;
        }

        // hist[d * units + u]: unit u's count of digit d (a warp's units write consecutive
        // words: no bank conflicts); partial[g * 16 + d]: digit d summed over unit group g (the
        // units g, g + groups, ...); totals[d] the cube's; state: the key prefix found so far and
        // how many of the keys with that prefix are still to be taken.
        let groups = units_n / 16;
        let mut hist = SharedMemory::<u32>::new(units_n * 16);
        let mut partial = SharedMemory::<u32>::new(units_n);
        let mut totals = SharedMemory::<u32>::new(16usize);
        let mut state = SharedMemory::<u32>::new(2usize);
        let mut cand_keys = SharedMemory::<u32>::new(k_cap as usize);
        let mut cand_cols = SharedMemory::<u32>::new(k_cap as usize);
        if unit == 0 {
            state[0] = 0u32;
            state[1] = k;
        }
        sync_cube();

        let mut high_mask = 0u32;
        for pass in 0..8u32 {
            let shift = 28u32 - 4u32 * pass;
            for d in 0..16usize {
                hist[d * units_n + unit] = 0u32;
            }
            let prefix = state[0];
            for j in start..end {
                let key = masked_key(pre, allowed, base, j);
                if key & high_mask == prefix {
                    let d = ((key >> shift) & 15u32) as usize;
                    hist[d * units_n + unit] += 1u32;
                }
            }
            sync_cube();
            // Every unit adds 16 counts of one digit (a tree of two levels, not one unit per
            // digit walking all units: that serial walk cost most of the kernel's time).
            let d = unit / groups;
            let g = unit % groups;
            let mut sum = 0u32;
            for i in 0..16usize {
                sum += hist[d * units_n + i * groups + g];
            }
            partial[g * 16 + d] = sum;
            sync_cube();
            if unit < 16 {
                let mut total = 0u32;
                for gi in 0..groups {
                    total += partial[gi * 16 + unit];
                }
                totals[unit] = total;
            }
            sync_cube();
            if unit == 0 {
                // Walk the digits from the largest down to the one holding the remaining-th key.
                let mut remaining = state[1];
                let mut digit = 0u32;
                let mut found = false;
                for i in 0..16u32 {
                    let d = 15u32 - i;
                    let c = totals[d as usize];
                    if !found {
                        if c >= remaining {
                            digit = d;
                            found = true;
                        } else {
                            remaining -= c;
                        }
                    }
                }
                state[0] = prefix | (digit << shift);
                state[1] = remaining;
            }
            high_mask |= 15u32 << shift;
            sync_cube();
        }

        // state[0] is the k-th largest key; every key above it is taken, and of the keys equal to
        // it, the state[1] in the lowest columns.
        let threshold = state[0];
        let ties = state[1];
        let mut above = 0u32;
        let mut equal = 0u32;
        for j in start..end {
            let key = masked_key(pre, allowed, base, j);
            if key > threshold {
                above += 1u32;
            } else if key == threshold {
                equal += 1u32;
            }
        }
        // Each unit's place among the units before it: an inclusive scan (Hillis-Steele) of
        // both counts in shared memory, then minus the unit's own.
        hist[unit] = above;
        hist[units_n + unit] = equal;
        sync_cube();
        let mut offset = 1usize;
        while offset < units_n {
            let mut a = 0u32;
            let mut e = 0u32;
            if unit >= offset {
                a = hist[unit - offset];
                e = hist[units_n + unit - offset];
            }
            sync_cube();
            hist[unit] += a;
            hist[units_n + unit] += e;
            sync_cube();
            offset *= 2;
        }
        let mut at_above = hist[unit] - above;
        let mut at_equal = hist[units_n + unit] - equal;
        let first_tie = k - ties;
        for j in start..end {
            let key = masked_key(pre, allowed, base, j);
            if key > threshold {
                cand_keys[at_above as usize] = key;
                cand_cols[at_above as usize] = j as u32;
                at_above += 1u32;
            } else if key == threshold {
                if at_equal < ties {
                    cand_keys[(first_tie + at_equal) as usize] = key;
                    cand_cols[(first_tie + at_equal) as usize] = j as u32;
                }
                at_equal += 1u32;
            }
        }
        sync_cube();

        // Rank sort: a candidate's place is the number of candidates that beat it (larger key, or
        // the same key in a lower column).
        let mut i = unit;
        while i < kk {
            let key = cand_keys[i];
            let col = cand_cols[i];
            let mut rank = 0usize;
            for j in 0..kk {
                let other = cand_keys[j];
                if other > key || (other == key && cand_cols[j] < col) {
                    rank += 1;
                }
            }
            out_indices[row * kk + rank] = i32::cast_from(col);
            let mut value = pre[base + col as usize];
            if allowed[col as usize] == 0i32 {
                value = f32::new(-3.402_823_5e38);
            }
            if relu == 1u32 && value < 0f32 {
                value = 0f32;
            }
            out_values[row * kk + rank] = value;
            i += units_n;
        }
    }
}

/// Units per cube: the most, up to [`UNITS`] and a power of two, whose shared memory (a 16-bin
/// histogram per unit, a word of partial sums per unit, two candidate arrays of `k_cap`, 18
/// words of totals and state) fits the device; at least 16 (one per digit). `None` when not
/// even 16 fit.
fn units_for(k_cap: u32, max_units: u32, max_shared_bytes: usize) -> Option<u32> {
    let bytes = |units: u32| 4 * (units as usize * 17 + 2 * k_cap as usize + 18);
    let mut units = UNITS.min(max_units.max(1)).next_power_of_two();
    if units > max_units {
        units /= 2;
    }
    while units >= 16 && bytes(units) > max_shared_bytes {
        units /= 2;
    }
    (units >= 16).then_some(units)
}

/// The kernel's candidate buffers for `k`: a power of two, so that the few `k` values in use
/// compile few kernels.
fn k_cap(k: usize) -> u32 {
    k.next_power_of_two().max(32) as u32
}

/// The kernel's switch (`TOPK_SAE_DEVICE_TOPK=0` turns it off) and first-use check.
static SWITCH: Switch = Switch::new("TOPK_SAE_DEVICE_TOPK", "top-k");

/// Whether [`topk`] runs on `device` for backend `B`: burn-wgpu, not switched off, first-use
/// check passed (see [`Switch`]).
pub(crate) fn supports<B: Backend>(device: &B::Device) -> bool {
    status::<B>(device) == KernelStatus::Runs
}

/// The kernel's [`KernelStatus`] on `device` for backend `B` (runs the first-use check once).
pub(crate) fn status<B: Backend>(device: &B::Device) -> KernelStatus {
    SWITCH.status::<B>(|| {
        // Three rows of 600 with ties, a mask, k 5: every unit owns more than one column.
        // With ReLU, k 20 and shifted: each row's top 20 hold values from 0.029 down to
        // -0.032 or -0.053, on both sides of 0.
        let (rows, cols) = (3, 600);
        let allowed: Vec<bool> = (0..cols).map(|j| j % 5 != 0).collect();
        [(false, 5, 0.0), (true, 20, 0.95)]
            .into_iter()
            .all(|(relu, k, shift)| {
                let data: Vec<f32> = pattern(rows * cols, 1).iter().map(|v| v - shift).collect();
                let (want_indices, mut want_values) = topk_rows(&data, cols, k, Some(&allowed));
                if relu {
                    for v in &mut want_values {
                        *v = v.max(0.0);
                    }
                }
                let pre = Tensor::<B, 2>::from_data(TensorData::new(data, [rows, cols]), device);
                launch(&pre, k, Some(&allowed), relu).is_some_and(|(indices, values)| {
                    int_to_host(indices) == want_indices && to_host(values) == want_values
                })
            })
    })
}

/// The top `k` of each row of `pre` (restricted to `allowed` columns), best first with ties to
/// the lower column, as device tensors: indices `[rows, k]` and the values, raw or (with
/// `relu`) after ReLU.
/// `None` when the kernel does not run here (see [`supports`]), or the sizes are
/// outside what the kernel takes (`k` above [`MAX_K`], more than 65,535 rows); the caller then
/// selects on the host.
///
/// # Shapes
/// - `pre`: `[rows, cols]`; `allowed`: `cols` entries → `[rows, k]` twice
///
/// # Panics
/// If `k` exceeds the number of allowed columns.
pub(crate) fn topk<B: Backend>(
    pre: &Tensor<B, 2>,
    k: usize,
    allowed: Option<&[bool]>,
    relu: bool,
) -> Option<(Tensor<B, 2, Int>, Tensor<B, 2>)> {
    if !supports::<B>(&pre.device()) {
        return None;
    }
    launch(pre, k, allowed, relu)
}

/// [`topk`] without the switch.
fn launch<B: Backend>(
    pre: &Tensor<B, 2>,
    k: usize,
    allowed: Option<&[bool]>,
    relu: bool,
) -> Option<(Tensor<B, 2, Int>, Tensor<B, 2>)> {
    let [rows, cols] = pre.dims();
    if !takes(rows, cols, k) {
        return None;
    }
    let n_allowed = allowed.map_or(cols, |a| a.iter().filter(|&&ok| ok).count());
    assert!(
        k <= n_allowed,
        "k = {k} exceeds the {n_allowed} allowed columns"
    );
    let device = pre.device();
    // Without a mask, every column is allowed: filled on the device, since an upload makes
    // cubecl submit the work queued before it.
    let mask = match allowed {
        Some(a) => {
            let mask: Vec<i32> = a.iter().map(|&ok| i32::from(ok)).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(mask, [cols]), &device)
        }
        None => Tensor::<B, 1, Int>::ones([cols], &device),
    };
    launch_masked(pre, k, mask, relu)
}

/// Whether the kernel takes `rows` rows of `cols` and this `k`.
fn takes(rows: usize, cols: usize, k: usize) -> bool {
    (1..=MAX_K).contains(&k) && (1..=MAX_ROWS).contains(&rows) && u32::try_from(cols).is_ok()
}

/// Whether [`topk_device_mask`] runs for `pre` and `k`: the kernel runs here, takes the sizes,
/// and its shared memory fits the device.
pub(crate) fn masked_runs<B: Backend>(pre: &Tensor<B, 2>, k: usize) -> bool {
    let [rows, cols] = pre.dims();
    if !supports::<B>(&pre.device()) || !takes(rows, cols, k) {
        return false;
    }
    let Some(device) = super::cast::<B::Device, burn_wgpu::WgpuDevice>(pre.device()) else {
        return false;
    };
    let client = <WgpuRuntime as cubecl::Runtime>::client(&device);
    let hardware = &client.properties().hardware;
    units_for(
        k_cap(k),
        hardware.max_cube_dim.0.min(hardware.max_units_per_cube),
        hardware.max_shared_memory_size,
    )
    .is_some()
}

/// The top `k` of each row of `pre` among the columns a device mask allows (non-zero), where
/// fewer than `k` may be allowed: a row's allowed columns come first, best first, then
/// disallowed ones. The values are after ReLU (the disallowed ones 0). Nothing is read back.
/// `None` where [`topk`] is.
///
/// # Shapes
/// - `pre`: `[rows, cols]`; `allowed`: `[cols]` → `[rows, k]` twice
pub(crate) fn topk_device_mask<B: Backend>(
    pre: &Tensor<B, 2>,
    k: usize,
    allowed: Tensor<B, 1, Int>,
) -> Option<(Tensor<B, 2, Int>, Tensor<B, 2>)> {
    let [rows, cols] = pre.dims();
    if !supports::<B>(&pre.device()) || !takes(rows, cols, k) || allowed.dims()[0] != cols {
        return None;
    }
    launch_masked(pre, k, allowed, true)
}

/// The latents selected in `indices`, on the device, for the AuxK term and the dead-latent
/// counters: `(allowed, fired)`, both `[d_sae]`, where `allowed` is 1 for the `candidates` that
/// were not selected (0 elsewhere) and `fired` is 1.0 for the selected latents (0.0 elsewhere).
/// `None` where [`topk`] is.
///
/// # Shapes
/// - `indices`: `[rows, k]`, every latent below `d_sae`; `candidates`: `[d_sae]`, non-zero for a
///   candidate
pub(crate) fn fired_latents<B: Backend>(
    indices: Tensor<B, 2, Int>,
    candidates: Tensor<B, 1, Int>,
) -> Option<(Tensor<B, 1, Int>, Tensor<B, 1>)> {
    let device = indices.device();
    let [rows, k] = indices.dims();
    let [d_sae] = candidates.dims();
    let entries = rows * k;
    if !supports::<B>(&device) || d_sae == 0 || u32::try_from(entries.max(d_sae)).is_err() {
        return None;
    }
    let client = super::int_client(&candidates)?;
    let candidates = int_input(candidates)?;
    let indices = int_input(indices)?;
    let cube_client = candidates.client.clone();
    let units = 64u32;
    let allowed = empty(&candidates, Shape::new([d_sae]), DType::I32);
    let fired = empty(&candidates, Shape::new([d_sae]), DType::F32);
    let (x, y) = super::sparse::grid(d_sae.div_ceil(units as usize));
    kernel::mask_init_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(x, y, 1),
        CubeDim::new_1d(units),
        candidates.into_tensor_arg(),
        allowed.clone().into_tensor_arg(),
        fired.clone().into_tensor_arg(),
        d_sae as u32,
        units,
    );
    if entries > 0 {
        let (x, y) = super::sparse::grid(entries.div_ceil(units as usize));
        kernel::mask_fired_kernel::launch::<WgpuRuntime>(
            &cube_client,
            CubeCount::Static(x, y, 1),
            CubeDim::new_1d(units),
            indices.into_tensor_arg(),
            allowed.clone().into_tensor_arg(),
            fired.clone().into_tensor_arg(),
            entries as u32,
            units,
        );
    }
    Some((int_output(&client, allowed)?, float_output(&client, fired)?))
}

/// The kernel's launch, with the mask on the device.
fn launch_masked<B: Backend>(
    pre: &Tensor<B, 2>,
    k: usize,
    mask: Tensor<B, 1, Int>,
    relu: bool,
) -> Option<(Tensor<B, 2, Int>, Tensor<B, 2>)> {
    let [rows, cols] = pre.dims();
    let (pre, client) = float_input(pre.clone())?;
    let mask = int_input(mask)?;
    let cube_client = pre.client.clone();
    let k_cap = k_cap(k);
    let hardware = &cube_client.properties().hardware;
    let units = units_for(
        k_cap,
        hardware.max_cube_dim.0.min(hardware.max_units_per_cube),
        hardware.max_shared_memory_size,
    )?;
    let indices = empty(&pre, Shape::new([rows, k]), DType::I32);
    let values = empty(&pre, Shape::new([rows, k]), DType::F32);
    kernel::topk_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(units),
        pre.into_tensor_arg(),
        mask.into_tensor_arg(),
        indices.clone().into_tensor_arg(),
        values.clone().into_tensor_arg(),
        cols as u32,
        k as u32,
        u32::from(relu),
        units,
        k_cap,
    );
    Some((
        int_output(&client, indices)?,
        float_output(&client, values)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::units_for;

    #[test]
    fn units_fit_the_shared_memory() {
        // 256 units x 16 bins x 4 B = 16 KiB of histograms, plus the candidates.
        assert_eq!(units_for(32, 1024, 48 * 1024), Some(256));
        assert_eq!(units_for(32, 1024, 16 * 1024), Some(128));
        assert_eq!(units_for(1024, 1024, 16 * 1024), Some(64));
        assert_eq!(units_for(32, 100, 48 * 1024), Some(64));
        assert_eq!(units_for(1024, 1024, 8 * 1024), None);
    }
}
