//! What users do with a trained SAE (SPEC §6): encode a corpus once, per-feature statistics,
//! offline labels, feature families, steered semantic search and feature matching.
//!
//! Everything works from [`CorpusCodes`], the top-k indices and values of every document
//! (`O(N * k)` memory, never `O(N * d_sae)`).
//!
//! ## From a trained model to features, families and a steered search
//! The texts here are made up from the synthetic set's planted directions (row `i` names the
//! "topics" it mixes), so for most latents the first word of the label is the planted direction
//! its decoder row is closest to. With real data the texts are the abstracts the embeddings came
//! from, one per row (the `explore` example does all of this on them).
//! ```
//! use topk_sae::analysis::{self, FamilyConfig, FeatureEdit, LabelConfig, Metric};
//! use topk_sae::data::{SyntheticConfig, synthetic};
//! use topk_sae::prelude::*;
//! # fn main() -> topk_sae::Result<()> {
//! type B = topk_sae::backend::NdArray<f32>;
//! let device = Default::default();
//! let synthetic_config = SyntheticConfig::new().with_rows(4_000).with_d_in(64);
//! let set = synthetic(&synthetic_config.with_n_directions(32))?;
//! let data = &set.embeddings;
//! let config = TrainConfig::new(TopKSaeConfig::new(64, 64, 4))
//!     .with_batch_size(256)
//!     .with_epochs(10)
//!     .with_optimizer(AdamConfig::new().with_lr(1e-3));
//! let trained = train::<B>(config, data, &device, |_| {})?;
//!
//! // Encode the corpus once: every later question is answered from these codes.
//! let (model, normalizer) = (&trained.model, &trained.normalizer);
//! let codes = analysis::encode_corpus(model, data, normalizer, 1024, &device)?;
//! assert_eq!((codes.rows, codes.k), (4_000, 4));
//!
//! // Which documents light a feature up: statistics with each latent's 20 strongest documents.
//! let stats = analysis::feature_stats(&codes, 20, 20);
//! let busiest = stats.iter().max_by(|a, b| a.density.total_cmp(&b.density)).unwrap();
//! println!(
//!     "latent {} fires on {:.1}% of documents, strongest on {:?}",
//!     busiest.latent,
//!     100.0 * busiest.density,
//!     busiest.top_documents.iter().map(|(doc, _)| doc).collect::<Vec<_>>(),
//! );
//!
//! // Offline labels: the words that set a latent's top documents apart from the corpus.
//! // (Labels keep words of letters only: planted direction 27 is written "topicbb".)
//! let letter = |i: u32| char::from(b'a' + i as u8);
//! let word = |t: &u32| format!("topic{}{}", letter(t / 26), letter(t % 26));
//! let active = set.active.len() / data.rows();
//! let texts: Vec<String> = set
//!     .active
//!     .chunks(active)
//!     .map(|topics| topics.iter().map(word).collect::<Vec<_>>().join(" "))
//!     .collect();
//! // The topics of a row come in no particular order, so word pairs mean nothing here.
//! let no_bigrams = LabelConfig { bigrams: false, ..LabelConfig::default() };
//! let labels = analysis::label_features(&stats, &texts, &no_bigrams)?;
//! if let Some(label) = labels.iter().max_by(|a, b| a.score().total_cmp(&b.score())) {
//!     println!("latent {}: {:?}", label.latent, label.terms);
//! }
//!
//! // Feature families: latents that fire under a common parent.
//! for family in analysis::families(&codes, &FamilyConfig::default())? {
//!     println!("parent {} -> children {:?}", family.parent, family.children);
//! }
//!
//! // Steered search: encode a raw query, turn a feature up, decode, rank the raw corpus. The
//! // model's normaliser takes both into the space it was trained in; no copy of the corpus.
//! let query = data.row(0);
//! let boost = FeatureEdit::Add { latent: busiest.latent, value: 0.5 };
//! let steered = analysis::steer_raw(model, normalizer, query, &[boost], &device)?;
//! let (query, top) = (&steered.embedding, 5);
//! let hits =
//!     analysis::search_normalized::<B>(data, normalizer, query, top, Metric::Cosine, 4096, &device)?;
//! assert_eq!(hits[0].len(), top);
//! # Ok(()) }
//! ```

mod families;
mod labels;
mod search;

use std::path::Path;

use burn::tensor::backend::Backend;
use npyz::WriterBuilder;

pub use families::{Cooccurrence, Family, FamilyConfig, cooccurrence, families};
pub use labels::{FeatureLabel, LabelConfig, label_features, tokenize};
pub use search::{
    FeatureEdit, Metric, Ranked, Steered, add_decoder_rows, match_features, search,
    search_normalized, steer, steer_raw,
};

use crate::data::{Embeddings, Normalizer};
use crate::error::{Error, Result};
use crate::pass::Outputs;
use crate::sae::TopKSae;

/// The top-k latents of every document of a corpus, descending by pre-activation per row.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusCodes {
    /// Documents.
    pub rows: usize,
    /// Latents per document.
    pub k: usize,
    /// Latents of the model.
    pub d_sae: usize,
    /// Row-major `[rows, k]` latent indices.
    pub indices: Vec<u32>,
    /// Row-major `[rows, k]` post-ReLU values.
    pub values: Vec<f32>,
}

/// Encodes every row of `data` (after `normalizer`) in batches of `batch_size` rows. On a GPU,
/// batches are made smaller where their `[batch_size, d_sae]` pre-activations would not fit in
/// the device's largest buffer. [`encode_corpus_with_progress`] reports the rows done.
///
/// # Errors
/// [`Error::WidthMismatch`] when `data` is not `d_in` wide; [`Error::InvalidArgument`] when
/// `batch_size` is 0; [`Error::InvalidConfig`] when `normalizer` does not fit the model
/// ([`Normalizer::check`]).
pub fn encode_corpus<B: Backend>(
    model: &TopKSae<B>,
    data: &Embeddings,
    normalizer: &Normalizer,
    batch_size: usize,
    device: &B::Device,
) -> Result<CorpusCodes> {
    encode_corpus_with_progress(model, data, normalizer, batch_size, device, |_| {})
}

/// [`encode_corpus`], calling `progress` with the rows done so far after each batch.
///
/// # Errors
/// The errors of [`encode_corpus`].
pub fn encode_corpus_with_progress<B: Backend>(
    model: &TopKSae<B>,
    data: &Embeddings,
    normalizer: &Normalizer,
    batch_size: usize,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> Result<CorpusCodes> {
    let k = model.k();
    let mut indices = Vec::with_capacity(data.rows() * k);
    let mut values = Vec::with_capacity(data.rows() * k);
    crate::pass::run(
        model,
        data,
        normalizer,
        batch_size,
        device,
        Outputs::Codes,
        |mut chunk| {
            indices.append(&mut chunk.indices);
            values.append(&mut chunk.values);
            progress(chunk.rows.end);
        },
    )?;
    Ok(CorpusCodes {
        rows: data.rows(),
        k,
        d_sae: model.d_sae(),
        indices,
        values,
    })
}

impl CorpusCodes {
    /// Document `i`'s `(latent, value)` pairs.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row(&self, i: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        crate::sae::code_row(&self.indices, &self.values, self.k, i)
    }

    /// Writes `indices` (`uint32 [rows, k]`) and `values` (`float32 [rows, k]`) as `.npy` files.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be written.
    pub fn save_npy(&self, indices: impl AsRef<Path>, values: impl AsRef<Path>) -> Result<()> {
        let path = indices.as_ref();
        let io = |source| Error::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut writer = npyz::WriteOptions::<u32>::new()
            .default_dtype()
            .shape(&[self.rows as u64, self.k as u64])
            .writer(std::io::BufWriter::new(file))
            .begin_nd()
            .map_err(io)?;
        writer.extend(self.indices.iter().copied()).map_err(io)?;
        writer.finish().map_err(io)?;
        crate::data::write_npy_f32(values.as_ref(), &self.values, self.rows, self.k)
    }

    /// Reads codes written by [`CorpusCodes::save_npy`] for a model with `d_sae` latents.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Format`] for unreadable files, other dtypes or shapes, shapes that
    /// disagree, or an index `>= d_sae`.
    pub fn load_npy(
        indices: impl AsRef<Path>,
        values: impl AsRef<Path>,
        d_sae: usize,
    ) -> Result<Self> {
        let ipath = indices.as_ref();
        let format = |reason: String| Error::Format {
            path: ipath.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(ipath).map_err(|source| Error::Io {
            action: "read",
            path: ipath.to_path_buf(),
            source,
        })?;
        let npy = npyz::NpyFile::new(&bytes[..])
            .map_err(|e| format(format!("not a valid .npy file: {e}")))?;
        let shape = npy.shape().to_vec();
        let [rows, k] = shape[..] else {
            return Err(format(format!("expected [rows, k], found {shape:?}")));
        };
        let ok_type = matches!(npy.dtype(), npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Uint && t.size_field() == 4);
        if !ok_type || npy.order() != npyz::Order::C {
            return Err(format("expected a C-ordered uint32 array".into()));
        }
        if rows.saturating_mul(k).saturating_mul(4) > bytes.len() as u64 {
            return Err(format(format!("file is truncated: shape [{rows}, {k}]")));
        }
        let idx: Vec<u32> = npy
            .into_vec()
            .map_err(|e| format(format!("cannot read data: {e}")))?;
        if let Some(bad) = idx.iter().find(|&&j| j as usize >= d_sae) {
            return Err(format(format!("latent index {bad} is >= d_sae ({d_sae})")));
        }
        let vals = Embeddings::from_npy(values.as_ref())?;
        if (vals.rows() as u64, vals.d_in() as u64) != (rows, k) {
            return Err(format(format!(
                "values are [{}, {}] but indices are [{rows}, {k}]",
                vals.rows(),
                vals.d_in()
            )));
        }
        Ok(Self {
            rows: rows as usize,
            k: k as usize,
            d_sae,
            indices: idx,
            values: vals.as_slice().to_vec(),
        })
    }
}

/// Per-latent statistics of a corpus.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeatureStats {
    /// Latent index.
    pub latent: usize,
    /// Fraction of documents whose top-k holds the latent.
    pub density: f64,
    /// Mean post-ReLU value where it fired (0 when it never fired).
    pub mean_activation: f64,
    /// Largest value.
    pub max_activation: f32,
    /// The `top_n` documents with the largest values, `(document, value)`, descending.
    pub top_documents: Vec<(usize, f32)>,
    /// Counts of its non-zero values in `bins` equal bins over `[0, max_activation]`.
    pub histogram: Vec<u32>,
}

/// Statistics of every latent: density, mean and max activation, top documents, histogram.
pub fn feature_stats(codes: &CorpusCodes, top_n: usize, bins: usize) -> Vec<FeatureStats> {
    let d = codes.d_sae;
    let mut count = vec![0u64; d];
    let mut sum = vec![0f64; d];
    let mut max = vec![0f32; d];
    let mut top: Vec<Vec<(usize, f32)>> = vec![Vec::new(); d];
    for doc in 0..codes.rows {
        for (j, v) in codes.row(doc) {
            count[j] += 1;
            sum[j] += f64::from(v);
            max[j] = max[j].max(v);
            let t = &mut top[j];
            if t.len() < top_n || t.last().is_some_and(|l| v > l.1) {
                let at = t.partition_point(|e| e.1 >= v);
                t.insert(at, (doc, v));
                t.truncate(top_n);
            }
        }
    }
    let bins = bins.max(1);
    let mut hist = vec![vec![0u32; bins]; d];
    for doc in 0..codes.rows {
        for (j, v) in codes.row(doc) {
            if v > 0.0 && max[j] > 0.0 {
                let b = ((v / max[j]) * bins as f32)
                    .floor()
                    .clamp(0.0, (bins - 1) as f32) as usize;
                hist[j][b] += 1;
            }
        }
    }
    let n = codes.rows.max(1) as f64;
    (0..d)
        .map(|j| FeatureStats {
            latent: j,
            density: count[j] as f64 / n,
            mean_activation: if count[j] > 0 {
                sum[j] / count[j] as f64
            } else {
                0.0
            },
            max_activation: max[j],
            top_documents: std::mem::take(&mut top[j]),
            histogram: std::mem::take(&mut hist[j]),
        })
        .collect()
}

/// The `n` latents whose decoder rows have the largest cosine with latent `j`'s, descending.
/// `w_dec` is row-major `[d_sae, d_in]`.
///
/// # Panics
/// If `j >= d_sae` or `w_dec` is not a multiple of `d_in` long.
pub fn nearest_latents(w_dec: &[f32], d_in: usize, j: usize, n: usize) -> Vec<(usize, f32)> {
    let rows: Vec<&[f32]> = w_dec.chunks_exact(d_in).collect();
    let norm = |r: &[f32]| r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    let (target, tn) = (rows[j], norm(rows[j]));
    let mut scored: Vec<(usize, f32)> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != j)
        .map(|(i, r)| {
            (
                i,
                r.iter().zip(target).map(|(a, b)| a * b).sum::<f32>() / (norm(r) * tn),
            )
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(n);
    scored
}

/// The `n` latents that most often fire in the same documents as latent `j`, with the count.
pub fn cooccurring_latents(codes: &CorpusCodes, j: usize, n: usize) -> Vec<(usize, u64)> {
    let mut counts = std::collections::HashMap::<usize, u64>::new();
    for doc in 0..codes.rows {
        let row: Vec<usize> = codes.row(doc).map(|(l, _)| l).collect();
        if row.contains(&j) {
            for &l in row.iter().filter(|&&l| l != j) {
                *counts.entry(l).or_default() += 1;
            }
        }
    }
    let mut out: Vec<(usize, u64)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(n);
    out
}
