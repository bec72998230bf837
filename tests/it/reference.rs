//! A naive f64 implementation of SPEC §1-2, written from the equations, used as the reference.
// Index loops mirror the equations on purpose.
#![allow(clippy::needless_range_loop)]

use topk_sae::TopKSae;
use topk_sae::sae::to_host_vec;

use crate::TestBackend;

/// The four parameters in f64, row-major.
pub struct NaiveSae {
    pub d_in: usize,
    pub d_sae: usize,
    pub k: usize,
    pub w_enc: Vec<f64>,
    pub b_enc: Vec<f64>,
    pub w_dec: Vec<f64>,
    pub b_dec: Vec<f64>,
}

fn f64s(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(f64::from).collect()
}

impl NaiveSae {
    pub fn from_model(model: &TopKSae<TestBackend>) -> Self {
        Self {
            d_in: model.d_in(),
            d_sae: model.d_sae(),
            k: model.k(),
            w_enc: f64s(to_host_vec(model.w_enc.val())),
            b_enc: f64s(to_host_vec(model.b_enc.val())),
            w_dec: f64s(to_host_vec(model.w_dec.val())),
            b_dec: f64s(to_host_vec(model.b_dec.val())),
        }
    }

    /// Pre-activations of one row.
    pub fn pre(&self, x: &[f32]) -> Vec<f64> {
        (0..self.d_sae)
            .map(|j| {
                let mut s = self.b_enc[j];
                for i in 0..self.d_in {
                    s += (f64::from(x[i]) - self.b_dec[i]) * self.w_enc[i * self.d_sae + j];
                }
                s
            })
            .collect()
    }

    /// Indices of the `k` largest allowed entries by a full sort (descending, ties: lower index).
    pub fn topk(pre: &[f64], k: usize, allowed: Option<&[bool]>) -> Vec<usize> {
        let mut order: Vec<usize> = (0..pre.len())
            .filter(|&j| allowed.is_none_or(|a| a[j]))
            .collect();
        order.sort_by(|&a, &b| pre[b].total_cmp(&pre[a]).then(a.cmp(&b)));
        order.truncate(k);
        order
    }

    /// `sum_j relu(pre[idx_j]) w_dec[idx_j]` (+ `b_dec` when `bias`).
    pub fn decode(&self, pre: &[f64], idx: &[usize], bias: bool) -> Vec<f64> {
        let mut out = if bias {
            self.b_dec.clone()
        } else {
            vec![0.0; self.d_in]
        };
        for &j in idx {
            let a = pre[j].max(0.0);
            for i in 0..self.d_in {
                out[i] += a * self.w_dec[j * self.d_in + i];
            }
        }
        out
    }
}

/// `mean((a - x)^2) / mean((x - mean_over_rows(x))^2)` over all elements.
pub fn nmse(a: &[Vec<f64>], x: &[Vec<f64>]) -> f64 {
    let (n, d) = (x.len(), x[0].len());
    let mean: Vec<f64> = (0..d)
        .map(|i| x.iter().map(|r| r[i]).sum::<f64>() / n as f64)
        .collect();
    let num: f64 = a
        .iter()
        .zip(x)
        .flat_map(|(ra, rx)| ra.iter().zip(rx).map(|(p, q)| (p - q).powi(2)))
        .sum();
    let den: f64 = x
        .iter()
        .flat_map(|r| r.iter().zip(&mean).map(|(v, m)| (v - m).powi(2)))
        .sum();
    num / den
}
