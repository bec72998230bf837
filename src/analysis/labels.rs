//! Offline feature labels: the words that best distinguish a latent's top documents from the
//! corpus, by weighted log-odds with an informative Dirichlet prior (Monroe, Colaresi & Quinn,
//! 2008), on document frequencies. No language model involved.

use std::collections::HashMap;

use super::FeatureStats;
use crate::{Error, Result};

/// Parameters of [`label_features`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelConfig {
    /// Words per label.
    pub words: usize,
    /// Also consider bigrams of adjacent kept words.
    pub bigrams: bool,
    /// Strength of the corpus prior (total pseudo-count).
    pub prior_strength: f64,
    /// Ignore terms in fewer than this many corpus documents.
    pub min_document_frequency: usize,
    /// A term must appear in at least this share of the latent's top documents (and in two).
    pub min_top_share: f64,
}

impl Default for LabelConfig {
    fn default() -> Self {
        Self {
            words: 5,
            bigrams: true,
            prior_strength: 500.0,
            min_document_frequency: 3,
            min_top_share: 0.2,
        }
    }
}

impl LabelConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad field: `words` 0, `prior_strength` negative
    /// or not finite, `min_top_share` outside `[0, 1]` (each of which would otherwise quietly give
    /// empty or meaningless labels).
    pub fn validate(&self) -> Result<()> {
        if self.words == 0 {
            return Err(Error::invalid("words", 0, "must be >= 1"));
        }
        if !(self.prior_strength.is_finite() && self.prior_strength >= 0.0) {
            return Err(Error::invalid(
                "prior_strength",
                self.prior_strength,
                "must be finite and >= 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_top_share) {
            return Err(Error::invalid(
                "min_top_share",
                self.min_top_share,
                "must be in [0, 1]",
            ));
        }
        Ok(())
    }
}

/// A latent's label.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeatureLabel {
    /// Latent index.
    pub latent: usize,
    /// Distinctive terms with their z-scores, best first.
    pub terms: Vec<(String, f64)>,
}

impl FeatureLabel {
    /// How clearly the label stands out: the mean z-score of its best three terms (0 without terms).
    pub fn score(&self) -> f64 {
        let best: Vec<f64> = self.terms.iter().take(3).map(|t| t.1).collect();
        if best.is_empty() {
            0.0
        } else {
            best.iter().sum::<f64>() / best.len() as f64
        }
    }
}

const STOPWORDS: &[&str] = &[
    "the",
    "and",
    "for",
    "are",
    "with",
    "that",
    "this",
    "from",
    "which",
    "these",
    "those",
    "their",
    "our",
    "has",
    "have",
    "was",
    "were",
    "been",
    "can",
    "not",
    "but",
    "its",
    "into",
    "also",
    "such",
    "than",
    "then",
    "there",
    "using",
    "use",
    "used",
    "based",
    "show",
    "shows",
    "shown",
    "paper",
    "propose",
    "proposed",
    "present",
    "results",
    "result",
    "method",
    "methods",
    "approach",
    "new",
    "two",
    "one",
    "both",
    "between",
    "over",
    "more",
    "most",
    "well",
    "may",
    "via",
    "all",
    "each",
    "other",
    "some",
    "only",
    "what",
    "when",
    "where",
    "how",
    "they",
    "them",
    "who",
    "will",
    "would",
    "could",
    "should",
    "any",
    "about",
    "under",
    "while",
    "here",
    "however",
    "thus",
    "due",
    "different",
    "several",
    "find",
    "found",
    "study",
    "work",
    "able",
    "within",
    "without",
    "across",
    "through",
    "first",
    "further",
    "number",
    "large",
    "high",
    "low",
    "model",
    "models",
    "data",
];

/// Lower-cases `text` and keeps alphabetic words of at least three letters that are not stopwords.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '-')
        .map(|w| w.trim_matches('-').to_lowercase())
        .filter(|w| {
            w.chars().count() >= 3
                && w.chars().all(char::is_alphabetic)
                && !STOPWORDS.contains(&w.as_str())
        })
        .collect()
}

fn terms(text: &str, bigrams: bool) -> Vec<String> {
    let words = tokenize(text);
    let mut out: Vec<String> = words.clone();
    if bigrams {
        out.extend(words.windows(2).map(|w| format!("{} {}", w[0], w[1])));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Labels every latent that has top documents in `stats` from `texts` (one per corpus row).
///
/// For each term `w`, with `y_w` the number of the latent's top documents containing it (out of
/// `n`), `Y_w` its corpus document frequency (out of `N`) and prior `a_w = prior_strength * Y_w / N`
/// (`a0 = prior_strength`):
/// `delta_w = ln((y_w + a_w) / (n + a0 - y_w - a_w)) - ln((Y_w + a_w) / (N + a0 - Y_w - a_w))`,
/// `z_w = delta_w / sqrt(1 / (y_w + a_w) + 1 / (Y_w + a_w))`; the label is the `words` terms with
/// the largest `z_w` among those in at least two top documents and at least `min_top_share` of them
/// (and in at least `min_document_frequency` corpus documents).
///
/// The corpus is tokenised once, in parallel; terms are kept as integer ids, and per document only
/// for the documents that are some latent's top document, so memory grows with the vocabulary,
/// not with the corpus's total number of terms.
///
/// # Errors
/// The errors of [`LabelConfig::validate`].
pub fn label_features(
    stats: &[FeatureStats],
    texts: &[String],
    config: &LabelConfig,
) -> Result<Vec<FeatureLabel>> {
    use rayon::prelude::*;
    const CHUNK: usize = 4096;
    config.validate()?;
    let mut needed = vec![false; texts.len()];
    for s in stats {
        for &(d, _) in &s.top_documents {
            if let Some(n) = needed.get_mut(d) {
                *n = true;
            }
        }
    }
    // Document frequencies by term id; term ids of the top documents.
    let mut vocabulary: HashMap<String, u32> = HashMap::new();
    let mut df: Vec<u32> = Vec::new();
    let mut doc_terms: Vec<Vec<u32>> = vec![Vec::new(); texts.len()];
    for (c, chunk) in texts.chunks(CHUNK).enumerate() {
        let chunk_terms: Vec<Vec<String>> =
            chunk.par_iter().map(|t| terms(t, config.bigrams)).collect();
        for (off, words) in chunk_terms.into_iter().enumerate() {
            let doc = c * CHUNK + off;
            for w in words {
                let next = df.len() as u32;
                let id = *vocabulary.entry(w).or_insert(next);
                if id == next {
                    df.push(0);
                }
                df[id as usize] += 1;
                if needed[doc] {
                    doc_terms[doc].push(id);
                }
            }
        }
    }
    let mut names = vec![String::new(); df.len()];
    for (w, id) in vocabulary {
        names[id as usize] = w;
    }
    let big_n = texts.len() as f64;
    let a0 = config.prior_strength;
    Ok(stats
        .par_iter()
        .filter(|s| !s.top_documents.is_empty())
        .map(|s| {
            let docs: Vec<usize> = s
                .top_documents
                .iter()
                .map(|d| d.0)
                .filter(|&d| d < texts.len())
                .collect();
            let mut ids: Vec<u32> = docs
                .iter()
                .flat_map(|&d| doc_terms[d].iter().copied())
                .collect();
            ids.sort_unstable();
            let n = docs.len() as f64;
            // In two top documents (or all, if fewer) and in `min_top_share` of them.
            let min_y = 2.min(docs.len()) as f64;
            let min_share = config.min_top_share * n - 1e-9;
            let mut scored: Vec<(u32, f64)> = ids
                .chunk_by(|a, b| a == b)
                .filter_map(|run| {
                    let (id, y) = (run[0], run.len() as f64);
                    let big_y = df[id as usize];
                    if y < min_y
                        || y < min_share
                        || (big_y as usize) < config.min_document_frequency
                    {
                        return None;
                    }
                    let big_y = f64::from(big_y);
                    let a = a0 * big_y / big_n;
                    let delta = ((y + a) / (n + a0 - y - a).max(1e-9)).ln()
                        - ((big_y + a) / (big_n + a0 - big_y - a).max(1e-9)).ln();
                    let z = delta / (1.0 / (y + a) + 1.0 / (big_y + a)).sqrt();
                    Some((id, z))
                })
                .collect();
            scored.sort_by(|a, b| {
                b.1.total_cmp(&a.1)
                    .then_with(|| names[a.0 as usize].cmp(&names[b.0 as usize]))
            });
            scored.truncate(config.words);
            FeatureLabel {
                latent: s.latent,
                terms: scored
                    .into_iter()
                    .map(|(id, z)| (names[id as usize].clone(), z))
                    .collect(),
            }
        })
        .collect())
}
