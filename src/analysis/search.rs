//! Steered semantic search and feature matching.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::data::{Embeddings, Normalizer};
use crate::error::{Error, Result};
use crate::ops::transfer::{int_to_host, to_host};
use crate::sae::TopKSae;

/// A change to a query's latents before decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum FeatureEdit {
    /// Set the latent's activation (it need not be active).
    Set {
        /// Latent index.
        latent: usize,
        /// New activation.
        value: f32,
    },
    /// Multiply the latent's activation (no effect when it is not active).
    Scale {
        /// Latent index.
        latent: usize,
        /// Factor.
        factor: f32,
    },
    /// Add to the latent's activation (activates it when it is not active).
    Add {
        /// Latent index.
        latent: usize,
        /// Amount.
        value: f32,
    },
    /// Remove the latent.
    Remove {
        /// Latent index.
        latent: usize,
    },
}

impl FeatureEdit {
    fn latent(&self) -> usize {
        match *self {
            Self::Set { latent, .. }
            | Self::Scale { latent, .. }
            | Self::Add { latent, .. }
            | Self::Remove { latent } => latent,
        }
    }
}

/// A steered query: the decoded embedding and the latents it was decoded from.
#[derive(Debug, Clone, PartialEq)]
pub struct Steered {
    /// `z' @ w_dec + b_dec`, `d_in` values (in the model's normalised space).
    pub embedding: Vec<f32>,
    /// The edited latents `(latent, value)`.
    pub latents: Vec<(usize, f32)>,
}

/// How documents are scored against a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Metric {
    /// Dot product.
    #[default]
    Dot,
    /// Cosine similarity.
    Cosine,
}

/// A ranked document.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Ranked {
    /// Row in the corpus.
    pub document: usize,
    /// Score under the metric.
    pub score: f32,
}

/// Encodes `query` (already normalised like the training data), applies `edits` to its latents
/// and decodes: `z' @ w_dec + b_dec`.
///
/// # Errors
/// [`Error::WidthMismatch`] when `query` is not `d_in` long; [`Error::NonFinite`] when it holds
/// NaN or an infinity; [`Error::InvalidArgument`] when an edit names a latent `>= d_sae` or a
/// value or factor that is not finite.
pub fn steer<B: Backend>(
    model: &TopKSae<B>,
    query: &[f32],
    edits: &[FeatureEdit],
    device: &B::Device,
) -> Result<Steered> {
    if query.len() != model.d_in() {
        return Err(Error::WidthMismatch {
            expected: model.d_in(),
            actual: query.len(),
            source_name: "query".into(),
        });
    }
    crate::data::check_finite(query, query.len(), "query")?;
    if let Some(bad) = edits.iter().find(|e| e.latent() >= model.d_sae()) {
        return Err(Error::argument(
            "latent",
            bad.latent(),
            format!("must be < d_sae ({})", model.d_sae()),
        ));
    }
    for edit in edits {
        if let FeatureEdit::Set { value: v, .. }
        | FeatureEdit::Add { value: v, .. }
        | FeatureEdit::Scale { factor: v, .. } = *edit
            && !v.is_finite()
        {
            return Err(Error::argument(
                "edit",
                format!("{edit:?}"),
                "value and factor must be finite",
            ));
        }
    }
    let x = Tensor::<B, 2>::from_data(TensorData::new(query.to_vec(), [1, query.len()]), device);
    let top = model.encode_topk(x);
    let idx: Vec<i64> = int_to_host(top.indices);
    let mut latents: Vec<(usize, f32)> = idx
        .iter()
        .map(|&j| j as usize)
        .zip(to_host(top.values))
        .collect();
    for edit in edits {
        let pos = latents.iter().position(|(j, _)| *j == edit.latent());
        match (*edit, pos) {
            (FeatureEdit::Set { latent, value } | FeatureEdit::Add { latent, value }, None) => {
                latents.push((latent, value));
            }
            (FeatureEdit::Set { value, .. }, Some(p)) => latents[p].1 = value,
            (FeatureEdit::Add { value, .. }, Some(p)) => latents[p].1 += value,
            (FeatureEdit::Scale { factor, .. }, Some(p)) => latents[p].1 *= factor,
            (FeatureEdit::Remove { .. }, Some(p)) => {
                latents.remove(p);
            }
            (FeatureEdit::Scale { .. } | FeatureEdit::Remove { .. }, None) => {}
        }
    }
    let d_in = model.d_in();
    let w_dec = to_host(model.w_dec.val());
    let mut out = to_host(model.b_dec.val());
    for &(j, v) in &latents {
        for (o, w) in out.iter_mut().zip(&w_dec[j * d_in..(j + 1) * d_in]) {
            *o += v * w;
        }
    }
    Ok(Steered {
        embedding: out,
        latents,
    })
}

/// [`steer`] for a query as the embedding model gave it: `normalizer` (the one the model was
/// trained with: [`crate::Trained::normalizer`], [`crate::checkpoint::Checkpoint::normalizer`])
/// is applied to it first. The steered embedding is in the model's normalised space, ready for
/// [`search_normalized`] on the raw corpus.
///
/// # Errors
/// The errors of [`steer`]; [`Error::InvalidConfig`] when `normalizer` does not fit the model
/// ([`Normalizer::check`]).
pub fn steer_raw<B: Backend>(
    model: &TopKSae<B>,
    normalizer: &Normalizer,
    query: &[f32],
    edits: &[FeatureEdit],
    device: &B::Device,
) -> Result<Steered> {
    normalizer.check(model.d_in())?;
    let mut query = query.to_vec();
    // A query of the wrong width is left as it is, for `steer` to name.
    if query.len() == model.d_in() {
        normalizer.apply_rows(&mut query, model.d_in());
    }
    steer(model, &query, edits, device)
}

/// The paper's variant: `query + sum_i weight_i * w_dec[latent_i]`.
///
/// # Errors
/// [`Error::WidthMismatch`] when `query` is not `d_in` long; [`Error::NonFinite`] when it holds
/// NaN or an infinity; [`Error::InvalidArgument`] when a latent is `>= d_sae` or a weight is
/// not finite.
pub fn add_decoder_rows<B: Backend>(
    model: &TopKSae<B>,
    query: &[f32],
    rows: &[(usize, f32)],
) -> Result<Vec<f32>> {
    let d_in = model.d_in();
    if query.len() != d_in {
        return Err(Error::WidthMismatch {
            expected: d_in,
            actual: query.len(),
            source_name: "query".into(),
        });
    }
    crate::data::check_finite(query, d_in, "query")?;
    if let Some((bad, _)) = rows.iter().find(|(j, _)| *j >= model.d_sae()) {
        return Err(Error::argument(
            "latent",
            bad,
            format!("must be < d_sae ({})", model.d_sae()),
        ));
    }
    if let Some((_, bad)) = rows.iter().find(|(_, w)| !w.is_finite()) {
        return Err(Error::argument("weight", bad, "must be finite"));
    }
    let w_dec = to_host(model.w_dec.val());
    let mut out = query.to_vec();
    for &(j, weight) in rows {
        for (o, w) in out.iter_mut().zip(&w_dec[j * d_in..(j + 1) * d_in]) {
            *o += weight * w;
        }
    }
    Ok(out)
}

/// Ranks the corpus for each query (`queries` row-major `[n_queries, d_in]`) and returns the
/// `top_n` best documents per query, best first. The corpus is scored in chunks of `chunk_rows`
/// rows with one matrix product per chunk, so memory stays `O(n_queries * chunk_rows)` whatever the
/// corpus size. On a GPU, chunks are made smaller where their scores would not fit in the
/// device's largest buffer.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `queries` is not a multiple of `d_in` long;
/// [`Error::NonFinite`] naming the first query that holds NaN or an infinity;
/// [`Error::InvalidArgument`] when `chunk_rows` is 0.
pub fn search<B: Backend>(
    corpus: &Embeddings,
    queries: &[f32],
    top_n: usize,
    metric: Metric,
    chunk_rows: usize,
    device: &B::Device,
) -> Result<Vec<Vec<Ranked>>> {
    search_impl::<B>(corpus, None, queries, top_n, metric, chunk_rows, device)
}

/// [`search`] in the model's normalised space without a normalised copy of the corpus: each
/// chunk of the raw `corpus` goes through `normalizer` as it is scored. `queries` are in that
/// space already: a [`Steered::embedding`], or raw queries through
/// [`Normalizer::apply_rows`].
///
/// # Errors
/// The errors of [`search`]; [`Error::InvalidConfig`] when `normalizer` does not fit the
/// corpus's width ([`Normalizer::check`]).
pub fn search_normalized<B: Backend>(
    corpus: &Embeddings,
    normalizer: &Normalizer,
    queries: &[f32],
    top_n: usize,
    metric: Metric,
    chunk_rows: usize,
    device: &B::Device,
) -> Result<Vec<Vec<Ranked>>> {
    normalizer.check(corpus.d_in())?;
    search_impl::<B>(
        corpus,
        Some(normalizer),
        queries,
        top_n,
        metric,
        chunk_rows,
        device,
    )
}

fn search_impl<B: Backend>(
    corpus: &Embeddings,
    normalizer: Option<&Normalizer>,
    queries: &[f32],
    top_n: usize,
    metric: Metric,
    chunk_rows: usize,
    device: &B::Device,
) -> Result<Vec<Vec<Ranked>>> {
    let d_in = corpus.d_in();
    let n_queries = queries.len() / d_in;
    if queries.len() != n_queries * d_in || n_queries == 0 {
        return Err(Error::ShapeMismatch {
            len: queries.len(),
            rows: n_queries,
            cols: d_in,
        });
    }
    crate::data::check_finite(queries, d_in, "queries")?;
    if chunk_rows == 0 {
        return Err(Error::argument("chunk_rows", 0, "must be >= 1"));
    }
    // On a GPU, a chunk's `[chunk, d_in]` rows and `[n_queries, chunk]` scores must each fit in
    // one buffer.
    let chunk_rows = chunk_rows.min(crate::ops::device_rows_cap::<B>(
        device,
        n_queries.max(d_in),
    ));
    let mut q = queries.to_vec();
    if metric == Metric::Cosine {
        normalize_rows(&mut q, d_in);
    }
    let q = Tensor::<B, 2>::from_data(TensorData::new(q, [n_queries, d_in]), device);
    let mut best: Vec<Vec<Ranked>> = vec![Vec::with_capacity(top_n + 1); n_queries];
    let mut start = 0;
    while start < corpus.rows() {
        let end = (start + chunk_rows).min(corpus.rows());
        let mut chunk = corpus.as_slice()[start * d_in..end * d_in].to_vec();
        if let Some(normalizer) = normalizer {
            normalizer.apply_rows(&mut chunk, d_in);
        }
        if metric == Metric::Cosine {
            normalize_rows(&mut chunk, d_in);
        }
        let c = Tensor::<B, 2>::from_data(TensorData::new(chunk, [end - start, d_in]), device);
        let scores = to_host(crate::ops::linalg::matmul(q.clone(), c.transpose()));
        for (qi, row) in scores.chunks_exact(end - start).enumerate() {
            let list = &mut best[qi];
            for (off, &score) in row.iter().enumerate() {
                if list.len() < top_n || list.last().is_some_and(|l| score > l.score) {
                    let at = list.partition_point(|e| e.score >= score);
                    list.insert(
                        at,
                        Ranked {
                            document: start + off,
                            score,
                        },
                    );
                    list.truncate(top_n);
                }
            }
        }
        start = end;
    }
    Ok(best)
}

fn normalize_rows(rows: &mut [f32], d_in: usize) {
    for row in rows.chunks_exact_mut(d_in) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            for v in row.iter_mut() {
                *v /= n;
            }
        }
    }
}

/// Feature splitting across SAE sizes: for each latent of `larger`, the latent of `smaller` with
/// the highest decoder cosine, and that cosine. Both are row-major `[d_sae, d_in]`.
///
/// # Errors
/// [`Error::ShapeMismatch`] when either is not a multiple of `d_in` long; [`Error::NonFinite`]
/// naming the matrix (`larger` or `smaller`) and row that hold NaN or an infinity.
pub fn match_features<B: Backend>(
    larger: &[f32],
    smaller: &[f32],
    d_in: usize,
    device: &B::Device,
) -> Result<Vec<(usize, f32)>> {
    for (w, name) in [(larger, "larger"), (smaller, "smaller")] {
        if d_in == 0 || w.len() % d_in != 0 || w.is_empty() {
            return Err(Error::ShapeMismatch {
                len: w.len(),
                rows: w.len() / d_in.max(1),
                cols: d_in,
            });
        }
        crate::data::check_finite(w, d_in, name)?;
    }
    let small = Embeddings::from_vec(smaller.to_vec(), smaller.len() / d_in, d_in)?;
    let hits = search::<B>(&small, larger, 1, Metric::Cosine, 4096, device)?;
    Ok(hits
        .into_iter()
        .map(|h| (h[0].document, h[0].score))
        .collect())
}
