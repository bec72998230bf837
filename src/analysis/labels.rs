//! Offline feature labels: the words that best distinguish a latent's top documents from the
//! corpus, by weighted log-odds with an informative Dirichlet prior (Monroe, Colaresi & Quinn,
//! 2008), on document frequencies. No language model involved.

use std::collections::HashMap;

use super::FeatureStats;

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
/// the largest `z_w` among those in at least two top documents and at least `min_top_share` of them.
pub fn label_features(
    stats: &[FeatureStats],
    texts: &[String],
    config: &LabelConfig,
) -> Vec<FeatureLabel> {
    let doc_terms: Vec<Vec<String>> = texts.iter().map(|t| terms(t, config.bigrams)).collect();
    let mut df: HashMap<&str, usize> = HashMap::new();
    for t in &doc_terms {
        for w in t {
            *df.entry(w.as_str()).or_default() += 1;
        }
    }
    let big_n = texts.len() as f64;
    let a0 = config.prior_strength;
    stats
        .iter()
        .filter(|s| !s.top_documents.is_empty())
        .map(|s| {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            let docs: Vec<usize> = s
                .top_documents
                .iter()
                .map(|d| d.0)
                .filter(|&d| d < doc_terms.len())
                .collect();
            for &d in &docs {
                for w in &doc_terms[d] {
                    *counts.entry(w.as_str()).or_default() += 1;
                }
            }
            let n = docs.len() as f64;
            let mut scored: Vec<(String, f64)> = counts
                .into_iter()
                .filter(|(w, y)| {
                    *y >= 2.min(docs.len())
                        && df.get(w).copied().unwrap_or(0) >= config.min_document_frequency
                })
                .map(|(w, y)| {
                    let (y, big_y) = (y as f64, df[w] as f64);
                    let a = a0 * big_y / big_n;
                    let delta = ((y + a) / (n + a0 - y - a).max(1e-9)).ln()
                        - ((big_y + a) / (big_n + a0 - big_y - a).max(1e-9)).ln();
                    let z = delta / (1.0 / (y + a) + 1.0 / (big_y + a)).sqrt();
                    (w.to_owned(), z)
                })
                .collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            scored.truncate(config.words);
            FeatureLabel {
                latent: s.latent,
                terms: scored,
            }
        })
        .collect()
}
