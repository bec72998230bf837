//! Row-wise top-k on burn-wgpu, in one cubecl kernel, so the GPU step does not read the
//! `[batch, d_sae]` pre-activations back to the host (50 MB a step at d_sae 12,288).
//!
//! One cube (workgroup) per row. The kernel maps each value to a 32-bit key that orders like the
//! value (NaN as `-inf`, `-0.0` below `+0.0`: the host top-k's order). Each unit owns a
//! contiguous chunk of the row (256 units, fewer on rows short enough that units would idle:
//! see [`units_for`]). First a filter: the `k`-th largest of the units' chunk maxima
//! is a lower bound of the row's `k`-th largest key. Where fewer than `k` keys lie above it, it
//! is the `k`-th largest key (ties, or a mask that allows few columns); where a few more than
//! `k` do (distinct values), those are the candidates. Otherwise (the top keys gathered in a
//! few chunks) the kernel finds the `k`-th largest key by a radix select (8 passes of 4 bits;
//! each unit counts the digits of its chunk into its own column of a shared-memory histogram,
//! and all units add the columns up in a two-level tree). The candidates are the keys above the
//! threshold plus its lowest-column ties; each unit's place among them comes from the other
//! units' counts, and a rank sort writes the first `k` best first. The filter takes 4
//! barriers, the radix select 33 more. The result equals [`crate::ops::topk::topk_rows`]: same
//! indices in the same order, same values, with or without the filter
//! (`KernelOptions::top_k_filter` off leaves it out).
//!
//! On an H200 the first version (16 units each walking all 256 units' histograms, one unit
//! scanning the counts) took 1 to 2.4 ms per call at 1024 rows; docs/benchmarks.md has the
//! figures of the radix select.
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
use crate::ops::engine::KernelOptions;
use crate::ops::topk::topk_rows;
use crate::ops::transfer::{int_to_host, to_host};

/// Units per cube: each owns a contiguous chunk of the row.
const UNITS: u32 = 256;
/// Columns a unit owns at least where the row is short: fewer units rather than idle ones that
/// still take part in every barrier and every walk of the units' counts (see [`units_for`]).
const COLS_PER_UNIT: u32 = 8;
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

    /// How many keys of columns `start..end` lie above `threshold`, and how many equal it.
    #[cube]
    fn count_keys(
        pre: &Tensor<f32>,
        allowed: &Tensor<i32>,
        base: usize,
        start: usize,
        end: usize,
        threshold: u32,
    ) -> (u32, u32) {
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
        (above, equal)
    }

    /// From every unit's counts (`counts[u]` above the threshold, `counts[units + u]` equal to
    /// it): those of the units before `unit`, and the totals, as `(at_above, at_equal,
    /// total_above, total_equal)`.
    #[cube]
    fn places(counts: &SharedMemory<u32>, unit: usize, units_n: usize) -> (u32, u32, u32, u32) {
        let mut at_above = 0u32;
        let mut at_equal = 0u32;
        let mut total_above = 0u32;
        let mut total_equal = 0u32;
        for v in 0..units_n {
            let a = counts[v];
            let e = counts[units_n + v];
            total_above += a;
            total_equal += e;
            if v < unit {
                at_above += a;
                at_equal += e;
            }
        }
        (at_above, at_equal, total_above, total_equal)
    }

    /// Top `k` of each row of `pre` among the columns where `allowed` is non-zero. A column not
    /// allowed ranks below every allowed one (ties to the lower column, as ever) with the value
    /// `f32::MIN`: it is selected only when fewer than `k` columns are allowed. With `relu` 1
    /// the values written are ReLU's (a negative value as 0; NaN and `-0.0` stay, as with
    /// burn's `clamp_min(0.0)`), which saves the step a launch.
    ///
    /// First the filter: the `k`-th largest of the units' chunk maxima bounds the row's `k`-th
    /// largest key from below (`k` chunks hold a key at least that large). Where fewer than `k`
    /// keys lie above the bound, it is the `k`-th largest key; where at most `filter_cap` do
    /// (on rows of distinct values, a few more than `k`), they hold the top `k`. Either way the
    /// candidates are rank-sorted as they are. Otherwise (the top keys in a few chunks, or
    /// `filter_cap` 0) the radix select finds the `k`-th largest key. Every unit decides from
    /// the same shared counts; the barriers that only the radix select needs sit in loops of 0
    /// or more rounds, not in a branch, so that control flow stays uniform to naga.
    #[cube(launch)]
    pub(super) fn topk_kernel(
        pre: &Tensor<f32>,
        allowed: &Tensor<i32>,
        out_indices: &mut Tensor<i32>,
        out_values: &mut Tensor<f32>,
        cols: u32,
        k: u32,
        relu: u32,
        filter_cap: u32,
        #[comptime] units: u32,
        #[comptime] cand_cap: u32,
    ) {
        let row = CUBE_POS_X as usize;
        let unit = UNIT_POS_X as usize;
        let n = cols as usize;
        let kk = k as usize;
        let units_n = units as usize;
        let cap = cand_cap as usize;
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
        // words: no bank conflicts), and at the end the candidates (keys in the first
        // `cand_cap` words, columns in the next); partial[g * 16 + d]: digit d summed over unit
        // group g (the units g, g + groups, ...), and first each unit's chunk maximum;
        // counts[u], counts[units + u]: unit u's keys above and at the threshold; totals[d] the
        // cube's digit counts; state: the key prefix found so far, how many of the keys with
        // that prefix are still to be taken, and the filter's bound.
        let groups = units_n / 16;
        let mut hist = SharedMemory::<u32>::new(2 * cap);
        let mut partial = SharedMemory::<u32>::new(units_n);
        let mut counts = SharedMemory::<u32>::new(2 * units_n);
        let mut totals = SharedMemory::<u32>::new(16usize);
        let mut state = SharedMemory::<u32>::new(3usize);
        if unit == 0 {
            state[0] = 0u32;
            state[1] = k;
            state[2] = 0u32;
        }

        // The filter's bound: the k-th largest chunk maximum (0, below every allowed key, when
        // there are fewer than k units).
        let mut local_max = 0u32;
        for j in start..end {
            let key = masked_key(pre, allowed, base, j);
            if key > local_max {
                local_max = key;
            }
        }
        partial[unit] = local_max;
        sync_cube();
        let mut beaten = 0u32;
        for v in 0..units_n {
            let other = partial[v];
            if other > local_max || (other == local_max && v < unit) {
                beaten += 1u32;
            }
        }
        if beaten + 1u32 == k {
            state[2] = local_max;
        }
        sync_cube();

        // The keys at or above the bound, and each unit's place among them.
        let mut threshold = state[2];
        let mut ties = 0u32;
        let (above, equal) = count_keys(pre, allowed, base, start, end, threshold);
        counts[unit] = above;
        counts[units_n + unit] = equal;
        sync_cube();
        let (mut at_above, mut at_equal, mut total_above, mut total_equal) =
            places(&counts, unit, units_n);
        // Fewer than k keys above the bound: the bound is the k-th largest key (the k chunks
        // hold at least k at or above it), and the lowest-column ties make up the rest. Else
        // the keys above the bound are the candidates, if few enough.
        if total_above < k {
            ties = k - total_above;
        }
        let mut passes = 8u32;
        let mut redo = 1u32;
        if total_above + ties <= filter_cap {
            passes = 0u32;
            redo = 0u32;
        }

        // Radix select, where the filter left too many: the k-th largest key, 4 bits a pass.
        let mut high_mask = 0u32;
        for pass in 0..passes {
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
        // Then state[0] is the k-th largest key: every key above it is taken, and of the keys
        // equal to it, the state[1] in the lowest columns. The counts again, for that threshold
        // (the radix passes' barriers lie between the reads above and these writes).
        for _ in 0..redo {
            threshold = state[0];
            ties = state[1];
            let (above, equal) = count_keys(pre, allowed, base, start, end, threshold);
            counts[unit] = above;
            counts[units_n + unit] = equal;
            sync_cube();
            let (a, e, ta, te) = places(&counts, unit, units_n);
            at_above = a;
            at_equal = e;
            total_above = ta;
            total_equal = te;
        }

        // The candidates: the keys above the threshold, then the first `ties` equal to it.
        let mut taken_equal = total_equal;
        if ties < taken_equal {
            taken_equal = ties;
        }
        let candidates = (total_above + taken_equal) as usize;
        for j in start..end {
            let key = masked_key(pre, allowed, base, j);
            if key > threshold {
                hist[at_above as usize] = key;
                hist[cap + at_above as usize] = j as u32;
                at_above += 1u32;
            } else if key == threshold {
                if at_equal < ties {
                    let at = (total_above + at_equal) as usize;
                    hist[at] = key;
                    hist[cap + at] = j as u32;
                }
                at_equal += 1u32;
            }
        }
        sync_cube();

        // Rank sort: a candidate's place is the number of candidates that beat it (larger key, or
        // the same key in a lower column); the first k are written.
        let mut i = unit;
        while i < candidates {
            let key = hist[i];
            let col = hist[cap + i];
            let mut rank = 0usize;
            for j in 0..candidates {
                let other = hist[j];
                if other > key || (other == key && hist[cap + j] < col) {
                    rank += 1;
                }
            }
            if rank < kk {
                out_indices[row * kk + rank] = i32::cast_from(col);
                let mut value = pre[base + col as usize];
                if allowed[col as usize] == 0i32 {
                    value = f32::new(-3.402_823_5e38);
                }
                if relu == 1u32 && value < 0f32 {
                    value = 0f32;
                }
                out_values[row * kk + rank] = value;
            }
            i += units_n;
        }
    }
}

/// Units per cube for rows of `cols` columns and this `k`: a power of two, enough for
/// [`COLS_PER_UNIT`] columns each and for 4 `k` chunk maxima (the filter's bound needs many
/// more chunks than `k`), at least 16 (one per digit), at most [`UNITS`], the device's limit and
/// what its shared memory fits (see [`shared_words`]). `None` when not even 16 fit.
fn units_for(cols: u32, k: u32, max_units: u32, max_shared_bytes: usize) -> Option<u32> {
    let bytes = |units: u32| 4 * shared_words(units, k_cap(k as usize));
    let wanted = cols
        .div_ceil(COLS_PER_UNIT)
        .max(k.saturating_mul(4))
        .next_power_of_two()
        .max(16);
    let mut units = UNITS.min(wanted).min(max_units.max(1)).next_power_of_two();
    if units > max_units {
        units /= 2;
    }
    while units >= 16 && bytes(units) > max_shared_bytes {
        units /= 2;
    }
    (units >= 16).then_some(units)
}

/// [`units_for`] on the device with these properties (`cols` and `k` within what [`takes`] takes).
fn units_on(hardware: &cubecl::ir::HardwareProperties, cols: usize, k: usize) -> Option<u32> {
    units_for(
        cols as u32,
        k as u32,
        hardware.max_cube_dim.0.min(hardware.max_units_per_cube),
        hardware.max_shared_memory_size,
    )
}

/// Candidates the kernel's shared memory holds: the 16-bin histograms' words, halved (keys and
/// columns), and at least `k_cap`.
fn cand_cap(units: u32, k_cap: u32) -> u32 {
    (8 * units).max(k_cap)
}

/// The kernel's shared memory in 32-bit words: the histograms (later the candidates), a word
/// of partial sums per unit, two counts per unit, 16 digit totals and 3 words of state.
fn shared_words(units: u32, k_cap: u32) -> usize {
    2 * cand_cap(units, k_cap) as usize + 3 * units as usize + 19
}

/// `k` rounded up to a power of two, at least 32: what the shared memory is sized for.
fn k_cap(k: usize) -> u32 {
    k.next_power_of_two().max(32) as u32
}

/// How many keys the filter may leave for the kernel to rank-sort them as they are: twice
/// `k_cap` (on rows of distinct values it leaves a few more than `k`: at most 41 for k 32 of
/// 3,072 and 217 for k 128 of 12,288 in 2,000 Gaussian rows each), within the candidate
/// buffers. `0` (the radix select on every row) when `filter` is false.
fn filter_cap(units: u32, k_cap: u32, filter: bool) -> u32 {
    if filter {
        (2 * k_cap).min(cand_cap(units, k_cap))
    } else {
        0
    }
}

/// The kernel's switch ([`KernelOptions::top_k`]) and first-use check; its filter pass is
/// [`KernelOptions::top_k_filter`].
static SWITCH: Switch = Switch::new(|o| o.top_k, "top-k");

/// Whether [`topk`] runs on `device` for backend `B`: burn-wgpu, not switched off, first-use
/// check passed (see [`Switch`]).
pub(crate) fn supports<B: Backend>(options: &KernelOptions, device: &B::Device) -> bool {
    status::<B>(options, device) == KernelStatus::Runs
}

/// The kernel's [`KernelStatus`] on `device` for backend `B` (runs the first-use check once).
pub(crate) fn status<B: Backend>(options: &KernelOptions, device: &B::Device) -> KernelStatus {
    SWITCH.status::<B>(options, || {
        // Three rows of 600 with ties, a mask, k 5: every unit owns more than one column.
        // With ReLU, k 20 and shifted: each row's top 20 hold values from 0.029 down to
        // -0.032 or -0.053, on both sides of 0. Each with the filter (which leaves few enough
        // keys here) and with the radix select alone.
        let (rows, cols) = (3, 600);
        let allowed: Vec<bool> = (0..cols).map(|j| j % 5 != 0).collect();
        [(false, 5, 0.0), (true, 20, 0.95)]
            .into_iter()
            .flat_map(|case| [(case, true), (case, false)])
            .all(|((relu, k, shift), filter)| {
                let data: Vec<f32> = pattern(rows * cols, 1).iter().map(|v| v - shift).collect();
                let (want_indices, mut want_values) = topk_rows(&data, cols, k, Some(&allowed));
                if relu {
                    for v in &mut want_values {
                        *v = v.max(0.0);
                    }
                }
                let pre = Tensor::<B, 2>::from_data(TensorData::new(data, [rows, cols]), device);
                launch(&pre, k, Some(&allowed), relu, filter).is_some_and(|(indices, values)| {
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
    options: &KernelOptions,
    pre: &Tensor<B, 2>,
    k: usize,
    allowed: Option<&[bool]>,
    relu: bool,
) -> Option<(Tensor<B, 2, Int>, Tensor<B, 2>)> {
    if !supports::<B>(options, &pre.device()) {
        return None;
    }
    launch(pre, k, allowed, relu, options.top_k_filter)
}

/// [`topk`] without the switch, with the filter or without it.
fn launch<B: Backend>(
    pre: &Tensor<B, 2>,
    k: usize,
    allowed: Option<&[bool]>,
    relu: bool,
    filter: bool,
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
    launch_masked(pre, k, mask, relu, filter)
}

/// Whether the kernel takes `rows` rows of `cols` and this `k`.
fn takes(rows: usize, cols: usize, k: usize) -> bool {
    (1..=MAX_K).contains(&k) && (1..=MAX_ROWS).contains(&rows) && u32::try_from(cols).is_ok()
}

/// Whether [`topk_device_mask`] runs for `pre` and `k`: the kernel runs here, takes the sizes,
/// and its shared memory fits the device.
pub(crate) fn masked_runs<B: Backend>(
    options: &KernelOptions,
    pre: &Tensor<B, 2>,
    k: usize,
) -> bool {
    let [rows, cols] = pre.dims();
    if !supports::<B>(options, &pre.device()) || !takes(rows, cols, k) {
        return false;
    }
    let Some(device) = super::cast::<B::Device, burn_wgpu::WgpuDevice>(pre.device()) else {
        return false;
    };
    let client = <WgpuRuntime as cubecl::Runtime>::client(&device);
    units_on(&client.properties().hardware, cols, k).is_some()
}

/// The top `k` of each row of `pre` among the columns a device mask allows (non-zero), where
/// fewer than `k` may be allowed: a row's allowed columns come first, best first, then
/// disallowed ones. The values are after ReLU (the disallowed ones 0). Nothing is read back.
/// `None` where [`topk`] is.
///
/// # Shapes
/// - `pre`: `[rows, cols]`; `allowed`: `[cols]` → `[rows, k]` twice
pub(crate) fn topk_device_mask<B: Backend>(
    options: &KernelOptions,
    pre: &Tensor<B, 2>,
    k: usize,
    allowed: Tensor<B, 1, Int>,
) -> Option<(Tensor<B, 2, Int>, Tensor<B, 2>)> {
    let [rows, cols] = pre.dims();
    if !supports::<B>(options, &pre.device()) || !takes(rows, cols, k) || allowed.dims()[0] != cols
    {
        return None;
    }
    launch_masked(pre, k, allowed, true, options.top_k_filter)
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
    options: &KernelOptions,
    indices: Tensor<B, 2, Int>,
    candidates: Tensor<B, 1, Int>,
) -> Option<(Tensor<B, 1, Int>, Tensor<B, 1>)> {
    let device = indices.device();
    let [rows, k] = indices.dims();
    let [d_sae] = candidates.dims();
    let entries = rows * k;
    if !supports::<B>(options, &device) || d_sae == 0 || u32::try_from(entries.max(d_sae)).is_err()
    {
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
    filter: bool,
) -> Option<(Tensor<B, 2, Int>, Tensor<B, 2>)> {
    let [rows, cols] = pre.dims();
    let (pre, client) = float_input(pre.clone())?;
    let mask = int_input(mask)?;
    let cube_client = pre.client.clone();
    let k_cap = k_cap(k);
    let units = units_on(&cube_client.properties().hardware, cols, k)?;
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
        filter_cap(units, k_cap, filter),
        units,
        cand_cap(units, k_cap),
    );
    Some((
        int_output(&client, indices)?,
        float_output(&client, values)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::{cand_cap, filter_cap, units_for};

    #[test]
    fn units_fit_the_shared_memory() {
        // 256 units: 2 x 2,048 words of histograms (later the candidates), plus 3 words a unit
        // and 19: 19.1 KiB.
        assert_eq!(units_for(3072, 32, 1024, 48 * 1024), Some(256));
        assert_eq!(units_for(3072, 32, 1024, 20 * 1024), Some(256));
        assert_eq!(units_for(3072, 32, 1024, 16 * 1024), Some(128));
        // k 1,024 needs 2 x 1,024 candidate words whatever the units.
        assert_eq!(units_for(12_288, 1024, 1024, 16 * 1024), Some(128));
        assert_eq!(units_for(3072, 32, 100, 48 * 1024), Some(64));
        assert_eq!(units_for(3072, 1024, 1024, 8 * 1024), None);
    }

    #[test]
    fn short_rows_get_fewer_units() {
        // 8 columns a unit and 4 k, a power of two, 16 at the least.
        assert_eq!(units_for(2048, 32, 1024, 48 * 1024), Some(256));
        assert_eq!(units_for(1000, 8, 1024, 48 * 1024), Some(128));
        assert_eq!(units_for(600, 5, 1024, 48 * 1024), Some(128));
        assert_eq!(units_for(512, 8, 1024, 48 * 1024), Some(64));
        assert_eq!(units_for(512, 32, 1024, 48 * 1024), Some(128));
        assert_eq!(units_for(256, 64, 1024, 48 * 1024), Some(256));
        assert_eq!(units_for(64, 4, 1024, 48 * 1024), Some(16));
        assert_eq!(units_for(1, 1, 1024, 48 * 1024), Some(16));
    }

    #[test]
    fn the_filter_leaves_at_most_what_the_candidate_buffers_hold() {
        assert_eq!(filter_cap(256, 32, true), 64);
        assert_eq!(filter_cap(256, 1024, true), 2048);
        assert_eq!(filter_cap(256, 32, false), 0);
        // Few units and a large k: the buffers hold k_cap, and so does the filter.
        assert_eq!(cand_cap(64, 1024), 1024);
        assert_eq!(filter_cap(64, 1024, true), 1024);
        for units in [16, 64, 256] {
            for k_cap in [32, 64, 512, 1024] {
                assert!(filter_cap(units, k_cap, true) <= cand_cap(units, k_cap));
                assert!(k_cap <= cand_cap(units, k_cap));
            }
        }
    }
}

/// The kernel on lavapipe (or a GPU) with the filter and with the radix select alone, against
/// the host's `topk_rows`, on rows where the filter leaves few keys and rows where it does not.
#[cfg(all(test, feature = "test-wgpu"))]
mod wgpu_tests {
    use burn::tensor::{Int, Tensor, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use crate::TestBackend as B;
    use crate::ops::topk::topk_rows;
    use crate::ops::transfer::{int_to_host, to_host};

    /// Uniform values in `[-0.5, 0.5)`, seeded: distinct in practice.
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect()
    }

    fn check(data: &[f32], cols: usize, k: usize, allowed: Option<&[bool]>, relu: bool) {
        let rows = data.len() / cols;
        let (want_indices, mut want_values) = topk_rows(data, cols, k, allowed);
        if relu {
            for v in &mut want_values {
                *v = v.max(0.0);
            }
        }
        let device = Default::default();
        let pre = Tensor::<B, 2>::from_data(TensorData::new(data.to_vec(), [rows, cols]), &device);
        // Both launched before either is read: neither's outputs can take over memory that
        // holds the other's answer (a slot the kernel failed to write would then look right).
        let runs: Vec<_> = [true, false]
            .map(|filter| {
                let out = super::launch(&pre, k, allowed, relu, filter);
                (filter, out.expect("the kernel takes these sizes"))
            })
            .into();
        for (filter, (indices, values)) in runs {
            let what = format!("{rows} x {cols}, k {k}, filter {filter}");
            assert_eq!(int_to_host(indices), want_indices, "indices, {what}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&to_host(values)), bits(&want_values), "values, {what}");
        }
    }

    #[test]
    fn filtered_and_radix_selections_equal_the_host_top_k() {
        // Distinct values: the filter leaves a few more than k (the filtered path).
        check(&noise(8 * 3072, 1), 3072, 32, None, false);
        check(&noise(4 * 3072, 2), 3072, 64, None, true);
        // A row that is one value repeated, and rows of 4 values: fewer than k keys lie above
        // the bound, which is then the k-th largest key; the ties go to the lower columns.
        let mut ties = vec![0.25f32; 3072];
        ties.extend((0..2 * 3072).map(|i| (i % 4) as f32));
        check(&ties, 3072, 32, None, false);
        // The top 100 in a few units' chunks: the bound is low, 100 and more keys above it,
        // more than the filter takes (64 for k 32): the radix select. Distinct, then all equal.
        let mut clustered = noise(2 * 3072, 3);
        for row in clustered.chunks_mut(3072) {
            for (j, v) in row[100..200].iter_mut().enumerate() {
                *v = 10.0 + j as f32;
            }
        }
        check(&clustered, 3072, 32, None, false);
        for row in clustered.chunks_mut(3072) {
            row[100..200].fill(5.0);
        }
        check(&clustered, 3072, 32, None, true);
        // A mask that leaves a quarter of the columns.
        let allowed: Vec<bool> = (0..3072).map(|j| j % 4 == 1).collect();
        check(&noise(3 * 3072, 4), 3072, 64, Some(&allowed), false);
        // k above the units (256): the bound stays 0 and every key is a candidate, 600 within
        // the filter's 1,024, and 3,072 beyond it.
        check(&noise(2 * 600, 5), 600, 300, None, false);
        check(&noise(2 * 3072, 5), 3072, 300, None, false);
        // Short rows get fewer units (see `units_for`): 100 columns, k 7, 32 units of 4 columns,
        // the last 7 idle; 70 columns, k 3, the fewest units (16) of 5 columns, 2 idle.
        check(&noise(5 * 100, 6), 100, 7, None, true);
        check(&noise(6 * 70, 8), 70, 3, None, false);
        // A short row's top 100 in 13 of its 64 chunks (512 columns, k 16): the bound is low, the
        // filter leaves too many (above 64), the radix select runs.
        let mut clustered = noise(3 * 512, 9);
        for row in clustered.chunks_mut(512) {
            for (j, v) in row[..100].iter_mut().enumerate() {
                *v = 3.0 + j as f32;
            }
        }
        check(&clustered, 512, 16, None, false);
    }

    /// Where fewer than `k` columns are allowed (the AuxK top-k over few dead latents), the
    /// allowed come first, then the lowest disallowed columns with ReLU's 0.
    #[test]
    fn a_device_mask_with_fewer_than_k_allowed_pads_with_the_lowest_columns() {
        let (rows, cols, k) = (3, 1000, 20);
        let data = noise(rows * cols, 7);
        let allowed: Vec<bool> = (0..cols).map(|j| j % 97 == 5).collect();
        let device = Default::default();
        let pre = Tensor::<B, 2>::from_data(TensorData::new(data.clone(), [rows, cols]), &device);
        let mask: Vec<i32> = allowed.iter().map(|&ok| i32::from(ok)).collect();
        let mask = Tensor::<B, 1, Int>::from_data(TensorData::new(mask, [cols]), &device);
        let n_allowed = allowed.iter().filter(|&&ok| ok).count();
        let (mut want_indices, mut want_values) = topk_rows(&data, cols, n_allowed, Some(&allowed));
        let padding: Vec<i64> = (0..cols as i64)
            .filter(|&j| !allowed[j as usize])
            .take(k - n_allowed)
            .collect();
        let mut indices = Vec::new();
        let mut values = Vec::new();
        for r in 0..rows {
            indices.extend_from_slice(&want_indices[r * n_allowed..(r + 1) * n_allowed]);
            indices.extend_from_slice(&padding);
            values.extend(
                want_values[r * n_allowed..(r + 1) * n_allowed]
                    .iter()
                    .map(|v| v.max(0.0)),
            );
            values.extend(std::iter::repeat_n(0.0f32, k - n_allowed));
        }
        (want_indices, want_values) = (indices, values);
        // Both launched before either is read (see `check`).
        let runs: Vec<_> = [true, false]
            .map(|filter| {
                let out = super::launch_masked(&pre, k, mask.clone(), true, filter);
                (filter, out.expect("runs"))
            })
            .into();
        for (filter, (got_indices, got_values)) in runs {
            assert_eq!(int_to_host(got_indices), want_indices, "filter {filter}");
            assert_eq!(to_host(got_values), want_values, "filter {filter}");
        }
    }
}
