//! The sparse decode and gradient on burn-wgpu, in two cubecl kernels: grouped row sums
//! ([`sum_rows`]) and gathered dot products ([`gathered_dots`]).
//!
//! `out[g, :] = sum over the entries e of group g of weights[positions[e]] * rows[row_of[e] %
//! row_mod, :]`. The entries are cut into segments of at most [`SEGMENT`] entries (a group's
//! segments are consecutive), one cube per segment: it stages its entries' weights and row
//! offsets in shared memory, then each unit sums its columns (a comptime number of them, held
//! in registers) over the segment's entries. A group with more than one segment then has its
//! partial sums added in a second kernel, one cube per group. Segments bound the work of a cube:
//! with one cube per group, a latent that fired in every row of a batch kept one cube busy
//! for 1,024 entries while the others had finished (4 ms of a step on an H200). Every sum runs
//! in a fixed order, so the result is the same on every run.
//! - Decode: a group per example, its `k` entries the selected latents: `rows` is `w_dec`,
//!   `weights` the values. No `[batch, k, d_in]` intermediate (400 MB at 1024 x 64 x 1536).
//! - Gradient: a group per latent, its entries the (term, example, slot) that selected it
//!   (grouped on the host from the indices the step reads back anyway): `w_dec`'s gradient sums
//!   the terms' output gradients weighted by the values, `w_enc`'s (transposed) sums the centred
//!   inputs weighted by the values' gradients. burn's `select_assign` would run this on `d_in`
//!   units, each walking all `batch * k` rows in turn (65,536 dependent read-modify-writes at
//!   1024 x 64, twice that for AuxK), and the dense alternative is a product as large as the
//!   encoder's.
//!
//! The gradient also needs
//! - `dL/dvalue[b, s] = w_dec[idx[b, s]] . dL/dx_hat[b]`: a cube per (example, slot), a tree sum
//!   in shared memory, instead of burn's gather of `[batch, k, d_in]` rows.
//!
//! Both return `None` for any backend but burn-wgpu (see [`super`]) or with
//! `KernelOptions::sparse` off, and the callers use burn's tensor operations.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Shape, Tensor, TensorData};
use burn_wgpu::WgpuRuntime;
use cubecl::prelude::{CubeCount, CubeDim};

use burn_cubecl::tensor::CubeTensor;

use super::{
    KernelStatus, Switch, close, empty, float_input, float_output, int_client, int_input,
    int_output, pattern,
};
use crate::ops::engine::KernelOptions;
use crate::ops::linalg::dot;
use crate::ops::transfer::{int_to_host, to_host};

/// Most units per cube; fewer when the rows are narrower.
const UNITS: u32 = 256;
/// Most entries per segment of [`sum_rows`] when groups are uneven (the gradient's latents).
const SEGMENT: usize = 32;
/// Most entries per group of [`Groups::per_row`] (one segment per row); more falls back.
const MAX_PER_ROW: usize = 1024;
/// Most columns per unit [`sum_rows`] keeps in registers (16,384 columns at 256 units).
const MAX_PER_UNIT: u32 = 64;
/// Cubes along the first dispatch dimension (its limit); more groups use a second.
const MAX_X: usize = 65_535;
/// Rows per block of [`Groups::by_latent_on_device`]'s table of marks: one unit walks a block's
/// rows for one latent.
const BLOCK_ROWS: u32 = 32;
/// Largest table of marks (`[terms * batch, d_sae]` `i32`s) [`Groups::by_latent_on_device`]
/// builds; larger problems are grouped on the host.
const MARKS_MAX_BYTES: usize = 512 << 20;

#[allow(
    clippy::too_many_arguments,
    clippy::trivially_copy_pass_by_ref,
    reason = "one kernel in cubecl's DSL, which takes its tensors by reference"
)]
mod kernel {
    use cubecl::prelude::*;

    use super::super::cube_sum;

    /// `out[s, c] = sum_{e in bounds[s]..bounds[s + 1]} weights[positions[e]] *
    /// rows[(row_of[e] % row_mod) * cols + c]`, for segments of at most `seg_max` entries;
    /// with `ones` 1, also `out_w[s]` the sum of the weights (as if the rows had one more
    /// column, of ones).
    #[cube(launch)]
    pub(super) fn segment_sums_kernel(
        bounds: &Tensor<i32>,
        positions: &Tensor<i32>,
        row_of: &Tensor<i32>,
        weights: &Tensor<f32>,
        rows: &Tensor<f32>,
        out: &mut Tensor<f32>,
        out_w: &mut Tensor<f32>,
        segments: u32,
        cols: u32,
        ones: u32,
        row_mod: u32,
        #[comptime] units: u32,
        #[comptime] per_unit: usize,
        #[comptime] seg_max: usize,
    ) {
        let s = CUBE_POS;
        let unit = UNIT_POS_X as usize;
        let units_n = units as usize;
        let n = cols as usize;
        // The width summed: the rows', and the column of ones.
        let m = n + ones as usize;
        let mut weight = SharedMemory::<f32>::new(seg_max);
        let mut offset = SharedMemory::<u32>::new(seg_max);
        let mut start = 0usize;
        let mut len = 0usize;
        if s < segments as usize {
            start = usize::cast_from(bounds[s]);
            len = usize::cast_from(bounds[s + 1]) - start;
        }
        // Stage the segment's weights and row offsets: one load each, in parallel.
        let mut e = unit;
        while e < len {
            weight[e] = weights[usize::cast_from(positions[start + e])];
            offset[e] = (u32::cast_from(row_of[start + e]) % row_mod) * cols;
            e += units_n;
        }
        // No early return before this: every unit must reach the barrier.
        sync_cube();
        if s < segments as usize {
            let mut acc = Array::<f32>::new(per_unit);
            #[unroll]
            for j in 0..per_unit {
                acc[j] = 0f32;
            }
            for e in 0..len {
                let w = weight[e];
                let base = offset[e] as usize;
                #[unroll]
                for j in 0..per_unit {
                    let c = unit + j * units_n;
                    if c < n {
                        acc[j] += w * rows[base + c];
                    } else if c < m {
                        acc[j] += w;
                    }
                }
            }
            #[unroll]
            for j in 0..per_unit {
                let c = unit + j * units_n;
                if c < n {
                    out[s * n + c] = acc[j];
                } else if c < m {
                    out_w[s] = acc[j];
                }
            }
        }
    }

    /// `out[g, c] = sum_{s in group_segments[g]..group_segments[g + 1]} partial[s, c]`, and
    /// with `ones` 1 `out_w[g]` the same sum of `partial_w[s]`.
    #[cube(launch)]
    pub(super) fn combine_kernel(
        group_segments: &Tensor<i32>,
        partial: &Tensor<f32>,
        partial_w: &Tensor<f32>,
        out: &mut Tensor<f32>,
        out_w: &mut Tensor<f32>,
        groups: u32,
        cols: u32,
        ones: u32,
        #[comptime] units: u32,
    ) {
        let g = CUBE_POS;
        if g < groups as usize {
            let n = cols as usize;
            let first = usize::cast_from(group_segments[g]);
            let end = usize::cast_from(group_segments[g + 1]);
            let mut c = UNIT_POS_X as usize;
            while c < n {
                let mut acc = 0f32;
                for s in first..end {
                    acc += partial[s * n + c];
                }
                out[g * n + c] = acc;
                c += units as usize;
            }
            if ones == 1u32 && UNIT_POS_X == 0u32 {
                let mut acc = 0f32;
                for s in first..end {
                    acc += partial_w[s];
                }
                out_w[g] = acc;
            }
        }
    }

    /// The number of segments of a group of `count` entries: `ceil(count / seg)`, and one for an
    /// empty group (as [`super::segment`] cuts them).
    #[cube]
    fn segments_of(count: i32, seg: i32) -> i32 {
        let mut n = (count + seg - 1i32) / seg;
        if n < 1i32 {
            n = 1i32;
        }
        n
    }

    /// The end of the block of `block` rows that starts at row `first`, within `rows`: the one
    /// place [`block_counts_kernel()`] and [`fill_groups_kernel()`] take their blocks from, so that
    /// they walk the same rows.
    #[cube]
    fn block_end(first: usize, #[comptime] block: u32, rows: u32) -> usize {
        let mut end = first + block as usize;
        if end > rows as usize {
            end = rows as usize;
        }
        end
    }

    /// `out[i] = value` for every `i < n`.
    #[cube(launch)]
    pub(super) fn fill_kernel(out: &mut Tensor<i32>, value: i32, n: u32, #[comptime] units: u32) {
        let i = CUBE_POS * units as usize + UNIT_POS_X as usize;
        if i < n as usize {
            out[i] = value;
        }
    }

    /// [`super::Groups::per_row`]'s layout: `bounds[r] = r * k` for every `r <= rows` and
    /// `positions[e] = e` for every `e < rows * k`.
    #[cube(launch)]
    pub(super) fn row_layout_kernel(
        bounds: &mut Tensor<i32>,
        positions: &mut Tensor<i32>,
        rows: u32,
        k: u32,
        #[comptime] units: u32,
    ) {
        let i = CUBE_POS * units as usize + UNIT_POS_X as usize;
        if i <= rows as usize {
            bounds[i] = i32::cast_from(i) * i32::cast_from(k);
        }
        if i < rows as usize * k as usize {
            positions[i] = i32::cast_from(i);
        }
    }

    /// Marks where a term selected each latent: `marks[(row_base + e / k) * d_sae + indices[e]]
    /// = position_base + e + 1` for every entry `e < entries` of the term's row-major `[rows, k]`
    /// indices whose value is above 0 (a row selects a latent at most once, so no two entries
    /// share a mark).
    #[cube(launch)]
    pub(super) fn mark_kernel(
        indices: &Tensor<i32>,
        values: &Tensor<f32>,
        marks: &mut Tensor<i32>,
        entries: u32,
        k: u32,
        d_sae: u32,
        row_base: u32,
        position_base: u32,
        #[comptime] units: u32,
    ) {
        let e = CUBE_POS * units as usize + UNIT_POS_X as usize;
        if e < entries as usize && values[e] > 0f32 {
            let row = row_base as usize + e / k as usize;
            let j = usize::cast_from(indices[e]);
            marks[row * d_sae as usize + j] = i32::cast_from(position_base as usize + e + 1);
        }
    }

    /// `counts[b * d_sae + j]`: how many rows of block `b` (rows `b * block..`) marked latent `j`.
    #[cube(launch)]
    pub(super) fn block_counts_kernel(
        marks: &Tensor<i32>,
        counts: &mut Tensor<i32>,
        rows: u32,
        d_sae: u32,
        blocks: u32,
        #[comptime] block: u32,
        #[comptime] units: u32,
    ) {
        let i = CUBE_POS * units as usize + UNIT_POS_X as usize;
        let n = d_sae as usize;
        if i < blocks as usize * n {
            let first = (i / n) * block as usize;
            let j = i % n;
            let end = block_end(first, block, rows);
            let mut c = 0i32;
            for r in first..end {
                if marks[r * n + j] != 0i32 {
                    c += 1i32;
                }
            }
            counts[i] = c;
        }
    }

    /// For every latent `j`: its block counts replaced by their exclusive prefix sums (where the
    /// block's entries start within the group), and `totals[j]` the group's size.
    #[cube(launch)]
    pub(super) fn block_prefix_kernel(
        counts: &mut Tensor<i32>,
        totals: &mut Tensor<i32>,
        d_sae: u32,
        blocks: u32,
        #[comptime] units: u32,
    ) {
        let j = CUBE_POS * units as usize + UNIT_POS_X as usize;
        let n = d_sae as usize;
        if j < n {
            let mut run = 0i32;
            for b in 0..blocks as usize {
                let c = counts[b * n + j];
                counts[b * n + j] = run;
                run += c;
            }
            totals[j] = run;
        }
    }

    /// One cube: `starts` (`[d_sae + 1]`) the exclusive prefix sums of the group sizes, and
    /// `group_segments` those of the groups' segment counts ([`segments_of()`]). Each unit sums a
    /// contiguous chunk, the units' totals are scanned in shared memory (Hillis-Steele), and
    /// each unit writes its chunk's prefixes.
    #[cube(launch)]
    pub(super) fn group_starts_kernel(
        totals: &Tensor<i32>,
        starts: &mut Tensor<i32>,
        group_segments: &mut Tensor<i32>,
        d_sae: u32,
        seg: i32,
        #[comptime] units: u32,
    ) {
        let unit = UNIT_POS_X as usize;
        let units_n = units as usize;
        let n = d_sae as usize;
        let chunk = n.div_ceil(units_n);
        let mut first = unit * chunk;
        if first > n {
            first = n;
        }
        let mut end = first + chunk;
        if end > n {
            end = n;
        }
        let mut entries = 0i32;
        let mut segs = 0i32;
        for j in first..end {
            let t = totals[j];
            entries += t;
            segs += segments_of(t, seg);
        }
        let mut scan_e = SharedMemory::<i32>::new(units_n);
        let mut scan_s = SharedMemory::<i32>::new(units_n);
        scan_e[unit] = entries;
        scan_s[unit] = segs;
        sync_cube();
        let mut offset = 1usize;
        while offset < units_n {
            let mut a = 0i32;
            let mut b = 0i32;
            if unit >= offset {
                a = scan_e[unit - offset];
                b = scan_s[unit - offset];
            }
            sync_cube();
            scan_e[unit] += a;
            scan_s[unit] += b;
            sync_cube();
            offset *= 2;
        }
        let mut at_e = scan_e[unit] - entries;
        let mut at_s = scan_s[unit] - segs;
        for j in first..end {
            starts[j] = at_e;
            group_segments[j] = at_s;
            let t = totals[j];
            at_e += t;
            at_s += segments_of(t, seg);
        }
        if unit == units_n - 1 {
            starts[n] = scan_e[unit];
            group_segments[n] = scan_s[unit];
        }
    }

    /// For every block `b` and latent `j`: the block's entries of group `j`, in row order, at
    /// `starts[j] + counts[b * d_sae + j]` onwards (the marks hold the entries' positions + 1).
    #[cube(launch)]
    pub(super) fn fill_groups_kernel(
        marks: &Tensor<i32>,
        counts: &Tensor<i32>,
        starts: &Tensor<i32>,
        positions: &mut Tensor<i32>,
        row_of: &mut Tensor<i32>,
        rows: u32,
        d_sae: u32,
        blocks: u32,
        #[comptime] block: u32,
        #[comptime] units: u32,
    ) {
        let i = CUBE_POS * units as usize + UNIT_POS_X as usize;
        let n = d_sae as usize;
        if i < blocks as usize * n {
            let first = (i / n) * block as usize;
            let j = i % n;
            let end = block_end(first, block, rows);
            let mut at = usize::cast_from(starts[j] + counts[i]);
            for r in first..end {
                let m = marks[r * n + j];
                if m != 0i32 {
                    positions[at] = m - 1i32;
                    row_of[at] = i32::cast_from(r);
                    at += 1;
                }
            }
        }
    }

    /// The segments' bounds: group `j`'s segments start every `seg` entries from `starts[j]`
    /// (an empty group has one, empty); the slots past the last segment, up to `slots`, hold the
    /// end of the entries, so that their segments are empty.
    #[cube(launch)]
    pub(super) fn segment_bounds_kernel(
        starts: &Tensor<i32>,
        group_segments: &Tensor<i32>,
        bounds: &mut Tensor<i32>,
        d_sae: u32,
        slots: u32,
        seg: i32,
        #[comptime] units: u32,
    ) {
        let i = CUBE_POS * units as usize + UNIT_POS_X as usize;
        let n = d_sae as usize;
        if i < n {
            let first = starts[i];
            let segs = segments_of(starts[i + 1] - first, seg);
            let at = usize::cast_from(group_segments[i]);
            for s in 0..usize::cast_from(segs) {
                bounds[at + s] = first + i32::cast_from(s) * seg;
            }
        }
        if i < slots as usize && i >= usize::cast_from(group_segments[n]) {
            bounds[i] = starts[n];
        }
    }

    /// `out[p] = rows[indices[p] % row_mod] . other[p / k]` where `gate[p] > 0`, else 0, for
    /// every pair `p < pairs`: a cube per pair, its units over the columns, then a tree sum in
    /// shared memory.
    #[cube(launch)]
    pub(super) fn gathered_dots_kernel(
        indices: &Tensor<i32>,
        rows: &Tensor<f32>,
        other: &Tensor<f32>,
        gate: &Tensor<f32>,
        out: &mut Tensor<f32>,
        pairs: u32,
        k: u32,
        cols: u32,
        row_mod: u32,
        #[comptime] units: u32,
    ) {
        let p = CUBE_POS;
        let unit = UNIT_POS_X as usize;
        let n = cols as usize;
        let units_n = units as usize;
        let mut scratch = SharedMemory::<f32>::new(units_n);
        let mut acc = 0f32;
        // No early return: every unit must reach the barriers.
        if p < pairs as usize {
            let r = (u32::cast_from(indices[p]) % row_mod) as usize;
            let b = p / k as usize;
            let mut c = unit;
            while c < n {
                acc += rows[r * n + c] * other[b * n + c];
                c += units_n;
            }
        }
        let total = cube_sum(&mut scratch, acc);
        if unit == 0 && p < pairs as usize {
            // A value ReLU clipped (not positive, or NaN) passes no gradient.
            let mut dot = 0f32;
            if gate[p] > 0f32 {
                dot = total;
            }
            out[p] = dot;
        }
    }
}

/// The kernels' switch (`KernelOptions::sparse`, for both) and first-use check.
static SWITCH: Switch = Switch::new(|o| o.sparse, "sparse decode and gradient");

/// Whether [`sum_rows`] and [`gathered_dots`] run on `device` for backend `B`: burn-wgpu, not
/// switched off, first-use check of both passed (see [`Switch`]).
pub(crate) fn supports<B: Backend>(options: &KernelOptions, device: &B::Device) -> bool {
    status::<B>(options, device) == KernelStatus::Runs
}

/// The kernel's [`KernelStatus`] on `device` for backend `B` (runs the first-use check once).
pub(crate) fn status<B: Backend>(options: &KernelOptions, device: &B::Device) -> KernelStatus {
    SWITCH.status::<B>(options, || check::<B>(device).unwrap_or(false))
}

/// Both kernels on a small problem against the same sums on the host: rows of 300 columns (more
/// than a cube's units), groups of 3, 0 and 70 entries (three segments) in a scrambled order;
/// the grouping by latent and the per-row layout against the host's.
fn check<B: Backend>(device: &B::Device) -> Option<bool> {
    let (n, cols) = (4, 300);
    let rows_host = pattern(n * cols, 2);
    let row = |r: usize| &rows_host[(r % n) * cols..(r % n + 1) * cols];
    let rows = Tensor::<B, 2>::from_data(TensorData::new(rows_host.clone(), [n, cols]), device);

    let entries = 73;
    let weights_host = pattern(entries, 3);
    let starts = [0i32, 3, 3, entries as i32];
    let positions: Vec<i32> = (0..entries).map(|e| ((e * 29) % entries) as i32).collect();
    let row_of: Vec<i32> = (0..entries).map(|e| ((e * 7 + 1) % 9) as i32).collect();
    let mut want = vec![0f32; 3 * cols];
    for g in 0..3 {
        for e in starts[g] as usize..starts[g + 1] as usize {
            let w = weights_host[positions[e] as usize];
            for (out, v) in want[g * cols..(g + 1) * cols]
                .iter_mut()
                .zip(row(row_of[e] as usize))
            {
                *out += w * v;
            }
        }
    }
    // With the column of ones: the same sums, and each group's sum of weights.
    let want_weights: Vec<f32> = (0..3)
        .map(|g| {
            positions[starts[g] as usize..starts[g + 1] as usize]
                .iter()
                .map(|&p| weights_host[p as usize])
                .sum()
        })
        .collect();
    let groups = Groups::upload(starts.to_vec(), positions, row_of, device);
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights_host, [entries]), device);
    let (got, _) = launch_sum_rows(&groups, weights.clone(), rows.clone(), n, false)?;
    let got = to_host(got);
    let (got_sums, got_weights) = launch_sum_rows(&groups, weights, rows.clone(), n, true)?;
    let ones_ok = close(&to_host(got_sums), &want) && close(&to_host(got_weights?), &want_weights);

    let indices_host = [3i32, 0, 2, 1, 1, 3];
    let other_host = pattern(2 * cols, 4);
    let want_dots: Vec<f32> = indices_host
        .iter()
        .enumerate()
        .map(|(p, &r)| {
            dot(
                row(r as usize),
                &other_host[(p / 3) * cols..(p / 3 + 1) * cols],
            )
        })
        .collect();
    // Pairs 1 and 4 are gated off (0 and -0.5: not positive).
    let gate_host = [1.0f32, 0.0, 2.0, 0.5, -0.5, 3.0];
    let want_dots: Vec<f32> = want_dots
        .iter()
        .zip(gate_host)
        .map(|(&d, g)| if g > 0.0 { d } else { 0.0 })
        .collect();
    let indices =
        Tensor::<B, 2, Int>::from_data(TensorData::new(indices_host.to_vec(), [2, 3]), device);
    let other = Tensor::<B, 2>::from_data(TensorData::new(other_host, [2, cols]), device);
    let gate = Tensor::<B, 2>::from_data(TensorData::new(gate_host.to_vec(), [2, 3]), device);
    let dots = to_host(launch_gathered_dots(indices, rows, other, gate)?);
    let (first, second) = check_lists(40);
    let (first_values, second_values) = check_values(40);
    let grouped = device_groups_match::<B>(
        device,
        &[&first, &second],
        &[&first_values, &second_values],
        40,
        9,
    )?;
    // The per-row layout, for 3 rows of 5 (more entries than rows: both branches of the kernel).
    let layout = Groups::per_row(Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![0i32; 15], [3, 5]),
        device,
    ))?;
    let layout_ok = int_to_host(layout.bounds) == [0, 5, 10, 15]
        && int_to_host(layout.positions) == (0..15).collect::<Vec<i64>>();
    Some(close(&got, &want) && ones_ok && close(&dots, &want_dots) && grouped && layout_ok)
}

/// Two terms over `batch` rows (k 2 and 3, 9 latents) for [`device_groups_match`]: latent 0 is
/// in every row of the first, so with 40 rows its group has two segments.
fn check_lists(batch: usize) -> (Vec<i64>, Vec<i64>) {
    let first = (0..batch)
        .flat_map(|b| [0, 1 + (b * 5 % 8) as i64])
        .collect();
    let second = (0..batch)
        .flat_map(|b| {
            [
                (b * 7 % 9) as i64,
                ((b * 7 + 4) % 9) as i64,
                ((b + 2) % 9) as i64,
            ]
        })
        .collect();
    (first, second)
}

/// Values for [`check_lists`]: every seventh entry 0 (left out of the groups), the rest above 0.
fn check_values(batch: usize) -> (Vec<f32>, Vec<f32>) {
    let value = |e: usize| {
        if e % 7 == 3 {
            0.0
        } else {
            0.5 + (e % 5) as f32
        }
    };
    (
        (0..2 * batch).map(value).collect(),
        (0..3 * batch).map(value).collect(),
    )
}

/// Whether [`Groups::by_latent_on_device`] groups `lists` (row-major `[batch, k_t]`, no latent
/// twice in a row) with their `values` like [`Groups::by_latent`] less the entries of value 0:
/// same entries, same segments, and empty segments after them. `None` when the kernels do not
/// launch.
fn device_groups_match<B: Backend>(
    device: &B::Device,
    lists: &[&[i64]],
    values: &[&[f32]],
    batch: usize,
    d_sae: usize,
) -> Option<bool> {
    let tensors: Vec<Tensor<B, 2, Int>> = lists
        .iter()
        .map(|list| {
            let v: Vec<i32> = list.iter().map(|&j| j as i32).collect();
            Tensor::from_data(TensorData::new(v, [batch, list.len() / batch]), device)
        })
        .collect();
    let value_tensors: Vec<Tensor<B, 2>> = values
        .iter()
        .map(|v| {
            Tensor::from_data(
                TensorData::new(v.to_vec(), [batch, v.len() / batch]),
                device,
            )
        })
        .collect();
    let groups = launch_by_latent(&tensors, &value_tensors, d_sae)?;
    // The host grouping, less the entries of value 0 (a stable filter keeps the order).
    let (all_starts, all_positions, all_rows) = latent_groups(lists, batch, d_sae)?;
    let flat: Vec<f32> = values.iter().flat_map(|v| v.iter().copied()).collect();
    let mut starts = vec![0i32];
    let (mut positions, mut row_of) = (Vec::new(), Vec::new());
    for g in 0..d_sae {
        for e in all_starts[g] as usize..all_starts[g + 1] as usize {
            if flat[all_positions[e] as usize] > 0.0 {
                positions.push(all_positions[e]);
                row_of.push(all_rows[e]);
            }
        }
        starts.push(positions.len() as i32);
    }
    let (mut bounds, group_segments) = segment(&starts, SEGMENT);
    bounds.resize(groups.segments + 1, *starts.last()?);
    let kept = positions.len();
    let first = |t: Tensor<B, 1, Int>| int_to_host(t).into_iter().take(kept).collect::<Vec<_>>();
    Some(
        int_to_host(groups.bounds) == to_i64(&bounds)
            && groups.group_segments.map(int_to_host) == Some(to_i64(&group_segments))
            && first(groups.positions) == to_i64(&positions)
            && first(groups.row_of) == to_i64(&row_of),
    )
}

/// `i32`s widened, to compare with what [`int_to_host`] reads back.
fn to_i64(v: &[i32]) -> Vec<i64> {
    v.iter().map(|&x| i64::from(x)).collect()
}

/// Which entries make up each group, cut into segments, on the device.
pub(crate) struct Groups<B: Backend> {
    /// `[segments + 1]`: segment `s`'s entries are `bounds[s]..bounds[s + 1]`; each group's
    /// segments are consecutive, and an empty group has one empty segment.
    bounds: Tensor<B, 1, Int>,
    /// `[groups + 1]`: group `g`'s segments are `group_segments[g]..group_segments[g + 1]`;
    /// `None` when every group is one segment.
    group_segments: Option<Tensor<B, 1, Int>>,
    /// `[entries]`: where each entry's weight is.
    positions: Tensor<B, 1, Int>,
    /// `[entries]`: which row each entry adds (modulo the `row_mod` of [`sum_rows`]).
    row_of: Tensor<B, 1, Int>,
    /// How many groups.
    count: usize,
    /// How many segments.
    segments: usize,
    /// Most entries in a segment, a power of two (the kernel's shared-memory staging).
    seg_max: usize,
}

/// Cuts groups (`starts`, as in [`Groups::upload`]) into segments of at most `max` entries:
/// the segments' bounds and each group's first segment (both with a final end entry).
fn segment(starts: &[i32], max: usize) -> (Vec<i32>, Vec<i32>) {
    let count = starts.len().saturating_sub(1);
    let mut bounds = Vec::with_capacity(count + 1);
    let mut group_segments = Vec::with_capacity(count + 1);
    for g in 0..count {
        group_segments.push(bounds.len() as i32);
        let (mut at, end) = (starts[g] as usize, starts[g + 1] as usize);
        loop {
            bounds.push(at as i32);
            at = (at + max).min(end);
            if at >= end {
                break;
            }
        }
    }
    group_segments.push(bounds.len() as i32);
    bounds.push(starts.last().copied().unwrap_or(0));
    (bounds, group_segments)
}

impl<B: Backend> Groups<B> {
    /// Groups given on the host, cut into segments of at most [`SEGMENT`] entries.
    ///
    /// # Shapes
    /// - `starts`: `groups + 1`; `positions`, `row_of`: one per entry
    pub fn upload(
        starts: Vec<i32>,
        positions: Vec<i32>,
        row_of: Vec<i32>,
        device: &B::Device,
    ) -> Self {
        let count = starts.len().saturating_sub(1);
        let (bounds, group_segments) = segment(&starts, SEGMENT);
        let segments = bounds.len() - 1;
        let tensor = |v: Vec<i32>| {
            let n = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        Self {
            bounds: tensor(bounds),
            group_segments: (segments != count).then(|| tensor(group_segments)),
            positions: tensor(positions),
            row_of: tensor(row_of),
            count,
            segments,
            seg_max: SEGMENT,
        }
    }

    /// The entries of `lists` grouped by latent, for the gradient: list `t` holds the row-major
    /// `[batch, k_t]` latents a term selected. A group's entries are in list order, then row and
    /// slot order; `positions` index the lists laid end to end (the terms' values), `row_of` is
    /// `t * batch + row` (the terms' output gradients stacked). One counting sort, straight
    /// into the kernel's `i32` arrays. `None` when the entries or rows do not fit an `i32`.
    ///
    /// # Panics
    /// If a latent is `d_sae` or more, or `batch` is 0.
    pub fn by_latent(
        lists: &[&[i64]],
        batch: usize,
        d_sae: usize,
        device: &B::Device,
    ) -> Option<Self> {
        let (starts, positions, row_of) = latent_groups(lists, batch, d_sae)?;
        Some(Self::upload(starts, positions, row_of, device))
    }

    /// [`Groups::by_latent`] on the device, from the terms' `[batch, k_t]` index tensors and
    /// their (post-ReLU) values: the same groups with the same entries in the same order, and
    /// the same segments, less the entries whose value is 0 (they add nothing to either
    /// gradient: their weight is the value, or the value's gradient, which is masked where the
    /// value is 0), padded with empty segments up to a count known without reading anything back
    /// (`d_sae + ceil(entries / 32)`). Leaving those out keeps the sums the same whether or not
    /// a term carries zero-valued padding (AuxK's, see `SaeLoss::evaluate_on_device`).
    /// Nothing is read back or uploaded. `None` when the kernels do not run here (see
    /// [`supports`]), the lists do not all have the same rows, or the table of marks would take
    /// more than [`MARKS_MAX_BYTES`].
    ///
    /// Five kernels: every (row, latent) a term selected is marked with its entry's position in
    /// a `[terms * batch, d_sae]` table; each block of rows counts its marks per latent; the
    /// counts become each block's place within its group, and the groups' sizes their starts
    /// (a scan); each (block, latent) then writes its entries in row order, and each group its
    /// segments' bounds. The order is fixed, so the sums are the same on every run.
    ///
    /// # Shapes
    /// - `lists`, `values`: `[batch, k_t]` each, every latent below `d_sae`
    pub fn by_latent_on_device(
        options: &KernelOptions,
        lists: &[Tensor<B, 2, Int>],
        values: &[Tensor<B, 2>],
        d_sae: usize,
    ) -> Option<Self> {
        let device = lists.first()?.device();
        if !supports::<B>(options, &device) {
            return None;
        }
        launch_by_latent(lists, values, d_sae)
    }

    /// One group per row of `indices`, its entries the row's `k` slots in order, each group one
    /// segment: with the row-major `[rows, k]` values as weights and `w_dec` as rows,
    /// [`sum_rows`] decodes. `None` when `k` is above [`MAX_PER_ROW`].
    ///
    /// # Shapes
    /// - `indices`: `[rows, k]`
    pub fn per_row(indices: Tensor<B, 2, Int>) -> Option<Self> {
        let [rows, k] = indices.dims();
        if k > MAX_PER_ROW {
            return None;
        }
        // Written by a launch of ours: an upload (burn's `arange` is one too) would make cubecl
        // submit the work queued before it, a submission per upload (docs/benchmarks.md).
        let (bounds, positions) = launch_row_layout(&indices).unwrap_or_else(|| {
            let device = indices.device();
            let bounds: Vec<i64> = (0..=rows as i64).map(|r| r * k as i64).collect();
            (
                Tensor::from_data(TensorData::new(bounds, [rows + 1]), &device),
                Tensor::arange(0..(rows * k) as i64, &device),
            )
        });
        Some(Self {
            bounds,
            group_segments: None,
            positions,
            row_of: indices.reshape([rows * k]),
            count: rows,
            segments: rows,
            seg_max: k.next_power_of_two(),
        })
    }
}

/// [`Groups::per_row`]'s bounds (`[rows + 1]`, `r * k`) and positions (`[rows * k]`, `e`) for
/// the `[rows, k]` `indices`, in one launch. `None` when there are no entries, the sizes do not
/// fit the kernel's integers, or the tensors are not burn-wgpu's.
fn launch_row_layout<B: Backend>(
    indices: &Tensor<B, 2, Int>,
) -> Option<(Tensor<B, 1, Int>, Tensor<B, 1, Int>)> {
    let [rows, k] = indices.dims();
    let entries = rows.checked_mul(k)?;
    let n = entries.max(rows + 1);
    if entries == 0 || i32::try_from(n).is_err() {
        return None;
    }
    let client = int_client(indices)?;
    let like = int_input(indices.clone())?;
    let units = units_for(UNITS, UNITS, &like);
    let (x, y) = grid(n.div_ceil(units as usize));
    let bounds = empty(&like, Shape::new([rows + 1]), DType::I32);
    let positions = empty(&like, Shape::new([entries]), DType::I32);
    kernel::row_layout_kernel::launch::<WgpuRuntime>(
        &like.client,
        CubeCount::Static(x, y, 1),
        CubeDim::new_1d(units),
        bounds.clone().into_tensor_arg(),
        positions.clone().into_tensor_arg(),
        rows as u32,
        k as u32,
        units,
    );
    Some((
        int_output(&client, bounds)?,
        int_output(&client, positions)?,
    ))
}

/// [`Groups::by_latent_on_device`] without the switch.
#[allow(
    clippy::too_many_lines,
    reason = "five launches in sequence, each with its arguments"
)]
fn launch_by_latent<B: Backend>(
    lists: &[Tensor<B, 2, Int>],
    values: &[Tensor<B, 2>],
    d_sae: usize,
) -> Option<Groups<B>> {
    let batch = lists.first()?.dims()[0];
    let total: usize = lists.iter().map(|t| t.dims()[0] * t.dims()[1]).sum();
    if total == 0
        || d_sae == 0
        || lists.iter().any(|t| t.dims()[0] != batch)
        || values.len() != lists.len()
        || lists.iter().zip(values).any(|(l, v)| l.dims() != v.dims())
    {
        return None;
    }
    let rows = lists.len() * batch;
    let cells = rows.checked_mul(d_sae)?;
    let blocks = rows.div_ceil(BLOCK_ROWS as usize);
    // Every group has at most ceil(size / SEGMENT) segments, an empty one one.
    let slots = d_sae + total.div_ceil(SEGMENT) + 1;
    if cells.checked_mul(4)? > MARKS_MAX_BYTES
        || i32::try_from(total.max(rows).max(slots)).is_err()
        || u32::try_from(cells.max(blocks * d_sae)).is_err()
    {
        return None;
    }
    let client = int_client(&lists[0])?;
    let inputs: Vec<CubeTensor<WgpuRuntime>> = lists
        .iter()
        .map(|t| int_input(t.clone()))
        .collect::<Option<_>>()?;
    let like = &inputs[0].clone();
    let cube_client = like.client.clone();
    let units = units_for(UNITS, UNITS, like);
    let cubes = |n: usize| {
        let (x, y) = grid(n.div_ceil(units as usize));
        CubeCount::Static(x, y, 1)
    };
    let (d_sae_u32, rows_u32, blocks_u32, slots_u32) =
        (d_sae as u32, rows as u32, blocks as u32, slots as u32);
    let i32_tensor = |len: usize| empty(like, Shape::new([len]), DType::I32);

    let marks = i32_tensor(cells);
    kernel::fill_kernel::launch::<WgpuRuntime>(
        &cube_client,
        cubes(cells),
        CubeDim::new_1d(units),
        marks.clone().into_tensor_arg(),
        0,
        cells as u32,
        units,
    );
    let mut base = 0usize;
    for (t, indices) in inputs.into_iter().enumerate() {
        let k = lists[t].dims()[1];
        let entries = batch * k;
        if entries > 0 {
            let (term_values, _) = float_input(values[t].clone())?;
            kernel::mark_kernel::launch::<WgpuRuntime>(
                &cube_client,
                cubes(entries),
                CubeDim::new_1d(units),
                indices.into_tensor_arg(),
                term_values.into_tensor_arg(),
                marks.clone().into_tensor_arg(),
                entries as u32,
                k as u32,
                d_sae_u32,
                (t * batch) as u32,
                base as u32,
                units,
            );
        }
        base += entries;
    }
    let counts = i32_tensor(blocks * d_sae);
    kernel::block_counts_kernel::launch::<WgpuRuntime>(
        &cube_client,
        cubes(blocks * d_sae),
        CubeDim::new_1d(units),
        marks.clone().into_tensor_arg(),
        counts.clone().into_tensor_arg(),
        rows_u32,
        d_sae_u32,
        blocks_u32,
        BLOCK_ROWS,
        units,
    );
    let totals = i32_tensor(d_sae);
    kernel::block_prefix_kernel::launch::<WgpuRuntime>(
        &cube_client,
        cubes(d_sae),
        CubeDim::new_1d(units),
        counts.clone().into_tensor_arg(),
        totals.clone().into_tensor_arg(),
        d_sae_u32,
        blocks_u32,
        units,
    );
    let starts = i32_tensor(d_sae + 1);
    let group_segments = i32_tensor(d_sae + 1);
    kernel::group_starts_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(units),
        totals.into_tensor_arg(),
        starts.clone().into_tensor_arg(),
        group_segments.clone().into_tensor_arg(),
        d_sae_u32,
        SEGMENT as i32,
        units,
    );
    let positions = i32_tensor(total);
    let row_of = i32_tensor(total);
    if total > 0 {
        kernel::fill_groups_kernel::launch::<WgpuRuntime>(
            &cube_client,
            cubes(blocks * d_sae),
            CubeDim::new_1d(units),
            marks.into_tensor_arg(),
            counts.into_tensor_arg(),
            starts.clone().into_tensor_arg(),
            positions.clone().into_tensor_arg(),
            row_of.clone().into_tensor_arg(),
            rows_u32,
            d_sae_u32,
            blocks_u32,
            BLOCK_ROWS,
            units,
        );
    }
    let bounds = i32_tensor(slots);
    kernel::segment_bounds_kernel::launch::<WgpuRuntime>(
        &cube_client,
        cubes(d_sae.max(slots)),
        CubeDim::new_1d(units),
        starts.into_tensor_arg(),
        group_segments.clone().into_tensor_arg(),
        bounds.clone().into_tensor_arg(),
        d_sae_u32,
        slots_u32,
        SEGMENT as i32,
        units,
    );
    Some(Groups {
        bounds: int_output(&client, bounds)?,
        group_segments: Some(int_output(&client, group_segments)?),
        positions: int_output(&client, positions)?,
        row_of: int_output(&client, row_of)?,
        count: d_sae,
        segments: slots - 1,
        seg_max: SEGMENT,
    })
}

/// [`Groups::by_latent`]'s counting sort: the groups' starts, the entries' positions and rows.
fn latent_groups(
    lists: &[&[i64]],
    batch: usize,
    d_sae: usize,
) -> Option<(Vec<i32>, Vec<i32>, Vec<i32>)> {
    let total: usize = lists.iter().map(|l| l.len()).sum();
    i32::try_from(total.max(lists.len() * batch)).ok()?;
    let mut starts = vec![0i32; d_sae + 1];
    for list in lists {
        for &j in *list {
            starts[j as usize + 1] += 1;
        }
    }
    for j in 0..d_sae {
        starts[j + 1] += starts[j];
    }
    let mut fill = starts[..d_sae].to_vec();
    let mut positions = vec![0i32; total];
    let mut row_of = vec![0i32; total];
    let mut base = 0usize;
    for (t, list) in lists.iter().enumerate() {
        let k = list.len() / batch;
        if k == 0 {
            continue;
        }
        for (row, latents) in list.chunks_exact(k).enumerate() {
            let r = (t * batch + row) as i32;
            for (slot, &j) in latents.iter().enumerate() {
                let at = &mut fill[j as usize];
                positions[*at as usize] = (base + row * k + slot) as i32;
                row_of[*at as usize] = r;
                *at += 1;
            }
        }
        base += list.len();
    }
    Some((starts, positions, row_of))
}

/// `out[g, :] = sum over group g's entries e of weights[positions[e]] * rows[row_of[e] % row_mod, :]`,
/// summed segment by segment in entry order, then over the group's segments in order; `None`
/// when the kernel does not run here (see [`supports`]), or the sizes do not fit the kernel.
///
/// # Shapes
/// - `weights`: `[n]`, `rows`: `[r, cols]` → `[groups, cols]`
pub(crate) fn sum_rows<B: Backend>(
    options: &KernelOptions,
    groups: &Groups<B>,
    weights: Tensor<B, 1>,
    rows: Tensor<B, 2>,
    row_mod: usize,
) -> Option<Tensor<B, 2>> {
    if !supports::<B>(options, &rows.device()) {
        return None;
    }
    launch_sum_rows(groups, weights, rows, row_mod, false).map(|(sums, _)| sums)
}

/// [`sum_rows`], and each group's sum of weights: the sums of `[rows | 1]`, the rows with a
/// column of ones after their last, without making that matrix, in two separate outputs (no
/// slice of a wider result to copy).
///
/// # Shapes
/// - `weights`: `[n]`, `rows`: `[r, cols]` → `[groups, cols]` and `[groups]`
pub(crate) fn sum_rows_and_weights<B: Backend>(
    options: &KernelOptions,
    groups: &Groups<B>,
    weights: Tensor<B, 1>,
    rows: Tensor<B, 2>,
    row_mod: usize,
) -> Option<(Tensor<B, 2>, Tensor<B, 1>)> {
    if !supports::<B>(options, &rows.device()) {
        return None;
    }
    let (sums, weight_sums) = launch_sum_rows(groups, weights, rows, row_mod, true)?;
    Some((sums, weight_sums?))
}

/// [`sum_rows`] (or, with `ones`, [`sum_rows_and_weights`]) without the switch.
fn launch_sum_rows<B: Backend>(
    groups: &Groups<B>,
    weights: Tensor<B, 1>,
    rows: Tensor<B, 2>,
    row_mod: usize,
    ones: bool,
) -> Option<(Tensor<B, 2>, Option<Tensor<B, 1>>)> {
    if groups.count == 0 {
        return None;
    }
    let [_, cols] = rows.dims();
    // The output's width.
    let width = cols + usize::from(ones);
    let width_u32 = u32::try_from(width).ok()?;
    // Row offsets are u32s in the kernel.
    u32::try_from(row_mod.checked_mul(cols)?).ok()?;
    let (n_groups, n_segments, cols_u32, row_mod_u32) = (
        u32::try_from(groups.count).ok()?,
        u32::try_from(groups.segments).ok()?,
        u32::try_from(cols).ok()?,
        u32::try_from(row_mod).ok().filter(|&m| m > 0)?,
    );
    let (rows, client) = float_input(rows)?;
    let (weights, _) = float_input(weights)?;
    let bounds = int_input(groups.bounds.clone())?;
    let positions = int_input(groups.positions.clone())?;
    let row_of = int_input(groups.row_of.clone())?;
    let units = units_for(width_u32, UNITS, &rows);
    let per_unit = width_u32.div_ceil(units);
    if per_unit > MAX_PER_UNIT {
        return None;
    }
    let cube_client = rows.client.clone();
    // The weights' sums: one per segment with `ones`, else one entry the kernels do not write.
    let weight_sums = |n: usize| empty(&rows, Shape::new([if ones { n } else { 1 }]), DType::F32);
    // One pass when every group is one segment; else partial sums per segment, then per group.
    let partial = empty(&rows, Shape::new([groups.segments, cols]), DType::F32);
    let partial_w = weight_sums(groups.segments);
    let (x, y) = grid(groups.segments);
    kernel::segment_sums_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(x, y, 1),
        CubeDim::new_1d(units),
        bounds.into_tensor_arg(),
        positions.into_tensor_arg(),
        row_of.into_tensor_arg(),
        weights.into_tensor_arg(),
        rows.clone().into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        partial_w.clone().into_tensor_arg(),
        n_segments,
        cols_u32,
        u32::from(ones),
        row_mod_u32,
        units,
        per_unit as usize,
        groups.seg_max,
    );
    let outputs = |sums, weight_sums| {
        let weight_sums = if ones {
            Some(float_output(&client, weight_sums)?)
        } else {
            None
        };
        Some((float_output(&client, sums)?, weight_sums))
    };
    let Some(group_segments) = &groups.group_segments else {
        return outputs(partial, partial_w);
    };
    let group_segments = int_input(group_segments.clone())?;
    let out = empty(&rows, Shape::new([groups.count, cols]), DType::F32);
    let out_w = weight_sums(groups.count);
    let (x, y) = grid(groups.count);
    kernel::combine_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(x, y, 1),
        CubeDim::new_1d(units),
        group_segments.into_tensor_arg(),
        partial.into_tensor_arg(),
        partial_w.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        out_w.clone().into_tensor_arg(),
        n_groups,
        cols_u32,
        u32::from(ones),
        units,
    );
    outputs(out, out_w)
}

/// `out[b, s] = rows[indices[b, s]] . other[b]` where `gate[b, s] > 0`, else 0: for the
/// gradient, `dL/dvalue` from the decoder rows and `dL/dx_hat`, gated by the values (ReLU's
/// derivative), without burn's `[n, k, cols]` gather; `None` where [`sum_rows`] is.
///
/// # Shapes
/// - `indices`: `[n, k]`, `rows`: `[r, cols]`, `other`: `[n, cols]`, `gate`: `[n, k]` → `[n, k]`
pub(crate) fn gathered_dots<B: Backend>(
    options: &KernelOptions,
    indices: Tensor<B, 2, Int>,
    rows: Tensor<B, 2>,
    other: Tensor<B, 2>,
    gate: Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    if !supports::<B>(options, &rows.device()) {
        return None;
    }
    launch_gathered_dots(indices, rows, other, gate)
}

/// [`gathered_dots`] without the switch.
fn launch_gathered_dots<B: Backend>(
    indices: Tensor<B, 2, Int>,
    rows: Tensor<B, 2>,
    other: Tensor<B, 2>,
    gate: Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    let [n, k] = indices.dims();
    let [r, cols] = rows.dims();
    if n * k == 0 {
        return None;
    }
    let (pairs, k_u32, cols_u32, row_mod) = (
        u32::try_from(n * k).ok()?,
        u32::try_from(k).ok()?,
        u32::try_from(cols).ok()?,
        u32::try_from(r).ok().filter(|&m| m > 0)?,
    );
    let (rows, client) = float_input(rows)?;
    let (other, _) = float_input(other)?;
    let (gate, _) = float_input(gate)?;
    let indices = int_input(indices)?;
    let units = units_for(cols_u32, 64, &rows);
    let (x, y) = grid(n * k);
    let out = empty(&rows, Shape::new([n, k]), DType::F32);
    let cube_client = rows.client.clone();
    kernel::gathered_dots_kernel::launch::<WgpuRuntime>(
        &cube_client,
        CubeCount::Static(x, y, 1),
        CubeDim::new_1d(units),
        indices.into_tensor_arg(),
        rows.into_tensor_arg(),
        other.into_tensor_arg(),
        gate.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        pairs,
        k_u32,
        cols_u32,
        row_mod,
        units,
    );
    float_output(&client, out)
}

/// Units per cube for rows of `cols` columns: a power of two from 32 up to `most`, within what
/// the device allows.
pub(super) fn units_for(cols: u32, most: u32, like: &CubeTensor<WgpuRuntime>) -> u32 {
    let hardware = &like.client.properties().hardware;
    let max_units = hardware
        .max_cube_dim
        .0
        .min(hardware.max_units_per_cube)
        .max(1);
    // The largest power of two within the device's limit (the tree sum halves evenly).
    let max_units = 1 << max_units.ilog2();
    most.min(cols.max(1).next_power_of_two().max(32))
        .min(max_units)
}

/// Cubes along x and y covering `groups` (the kernel skips the positions past the end).
pub(super) fn grid(groups: usize) -> (u32, u32) {
    let x = groups.clamp(1, MAX_X);
    (x as u32, groups.div_ceil(x).max(1) as u32)
}

#[cfg(test)]
mod tests {
    use super::{grid, latent_groups, segment};
    use crate::ops::sparse::group_by_latent;

    #[test]
    fn latent_groups_match_the_host_grouping() {
        // Two terms over a batch of 3: k 2 and k 3, latents below 5.
        let main = [4i64, 1, 1, 0, 3, 4];
        let aux = [2i64, 0, 1, 4, 2, 3, 0, 1, 2];
        let (starts, positions, row_of) = latent_groups(&[&main, &aux], 3, 5).unwrap();
        let (want_starts, entries) = group_by_latent(&[&main[..], &aux[..]], 5, |j| j as usize);
        let want_starts: Vec<i32> = want_starts.iter().map(|&s| s as i32).collect();
        let (ks, bases) = ([2usize, 3], [0usize, 6]);
        let want_positions: Vec<i32> = entries
            .iter()
            .map(|&(t, at)| (bases[t as usize] + at as usize) as i32)
            .collect();
        let want_rows: Vec<i32> = entries
            .iter()
            .map(|&(t, at)| (t as usize * 3 + at as usize / ks[t as usize]) as i32)
            .collect();
        assert_eq!(starts, want_starts);
        assert_eq!(positions, want_positions);
        assert_eq!(row_of, want_rows);
    }

    #[test]
    fn segments_cut_groups_in_order() {
        // Groups of 3, 0, 5 and 2 entries, segments of at most 2.
        let (bounds, group_segments) = segment(&[0, 3, 3, 8, 10], 2);
        assert_eq!(bounds, [0, 2, 3, 3, 5, 7, 8, 10]);
        assert_eq!(group_segments, [0, 2, 3, 6, 7]);
        // Groups within the limit: one segment each, the bounds are the starts.
        let (bounds, group_segments) = segment(&[0, 2, 2, 4], 2);
        assert_eq!(bounds, [0, 2, 2, 4]);
        assert_eq!(group_segments, [0, 1, 2, 3]);
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn device_grouping_matches_the_host_grouping() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        type Wgpu = burn_wgpu::Wgpu;
        let device = Default::default();
        let (first, second) = super::check_lists(40);
        let (first_values, second_values) = super::check_values(40);
        assert_eq!(
            super::device_groups_match::<Wgpu>(
                &device,
                &[&first, &second],
                &[&first_values, &second_values],
                40,
                9
            ),
            Some(true)
        );
        // Three terms over 257 rows (blocks of 32 and a partial one), k 5, 17 and 1: distinct
        // latents per row, a few latents picked far more than the rest (groups of several
        // segments beside empty ones).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (batch, d_sae) = (257, 300);
        let lists: Vec<Vec<i64>> = [5usize, 17, 1]
            .iter()
            .map(|&k| {
                (0..batch)
                    .flat_map(|_| {
                        let mut latents: Vec<i64> = (0..d_sae as i64).collect();
                        latents.shuffle(&mut rng);
                        if rng.random_bool(0.5) {
                            let at = latents.iter().position(|&j| j == 3).unwrap();
                            latents.swap(0, at);
                        }
                        latents.truncate(k);
                        latents
                    })
                    .collect()
            })
            .collect();
        let lists: Vec<&[i64]> = lists.iter().map(Vec::as_slice).collect();
        // Values above 0, but for about a tenth (ReLU's zeros, and AuxK's padding).
        let values: Vec<Vec<f32>> = lists
            .iter()
            .map(|l| {
                l.iter()
                    .map(|_| {
                        if rng.random_bool(0.1) {
                            0.0
                        } else {
                            rng.random_range(0.01..2.0)
                        }
                    })
                    .collect()
            })
            .collect();
        let values: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
        assert_eq!(
            super::device_groups_match::<Wgpu>(&device, &lists, &values, batch, d_sae),
            Some(true)
        );
    }

    #[test]
    fn grid_covers_every_group() {
        assert_eq!(grid(1), (1, 1));
        assert_eq!(grid(65_535), (65_535, 1));
        assert_eq!(grid(65_536), (65_535, 2));
        assert_eq!(grid(200_000), (65_535, 4));
    }
}
