//! Row-wise top-k selection on the host, by partial selection instead of a full sort.

use std::cmp::Ordering;

/// Order used for selection: larger value first, ties broken by the lower index. NaN ranks
/// below every number, so it is picked only when nothing else is left.
#[inline]
fn rank(a: (f32, u32), b: (f32, u32)) -> Ordering {
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    key(b.0).total_cmp(&key(a.0)).then(a.1.cmp(&b.1))
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
    let mut scratch: Vec<(f32, u32)> = Vec::with_capacity(cols);
    for ((row, out_i), out_v) in data
        .chunks_exact(cols)
        .zip(indices.chunks_exact_mut(k))
        .zip(values.chunks_exact_mut(k))
    {
        select_row(row, k, allowed, &mut scratch);
        for ((i, v), (value, index)) in out_i.iter_mut().zip(out_v.iter_mut()).zip(&scratch) {
            *i = i64::from(*index);
            *v = *value;
        }
    }
}

/// Leaves in `scratch` the top `k` `(value, column)` pairs of `row` (restricted to `allowed`
/// columns), in descending order, ties by the lower column.
///
/// # Panics
/// If `k` exceeds the number of allowed columns.
pub(crate) fn select_row(
    row: &[f32],
    k: usize,
    allowed: Option<&[bool]>,
    scratch: &mut Vec<(f32, u32)>,
) {
    scratch.clear();
    match allowed {
        Some(mask) => scratch.extend(
            row.iter()
                .zip(mask)
                .enumerate()
                .filter(|(_, (_, ok))| **ok)
                .map(|(j, (&v, _))| (v, j as u32)),
        ),
        None => scratch.extend(row.iter().enumerate().map(|(j, &v)| (v, j as u32))),
    }
    assert!(
        k <= scratch.len(),
        "k ({k}) exceeds the {} selectable columns",
        scratch.len()
    );
    if k < scratch.len() {
        scratch.select_nth_unstable_by(k - 1, |a, b| rank(*a, *b));
        scratch.truncate(k);
    }
    scratch.sort_unstable_by(|a, b| rank(*a, *b));
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
