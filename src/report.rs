//! The report: what a trained SAE learned about a corpus, as one static HTML page and a JSON
//! file with one object per latent (feature `report`, on by default; plotters draws the SVG).
//!
//! [`Report::build`] runs the analysis (evaluation, corpus encoding, feature statistics, labels,
//! families and two steered searches); [`Report::write`] writes `report.html` and
//! `features.json` into a folder, replacing only files an earlier report wrote.
//!
//! ```
//! use topk_sae::data::{SyntheticConfig, synthetic};
//! use topk_sae::prelude::*;
//! use topk_sae::report::{Report, ReportConfig};
//!
//! # fn main() -> topk_sae::Result<()> {
//! let device = Default::default();
//! let set = synthetic(&SyntheticConfig::new().with_rows(512).with_d_in(32).with_n_directions(16))?;
//! let config = TrainConfig::new(TopKSaeConfig::new(32, 64, 4)).with_epochs(1);
//! let trained = train::<topk_sae::backend::NdArray>(config, &set.embeddings, &device, |_| {})?;
//! let report = Report::build(
//!     &trained.model,
//!     &set.embeddings,
//!     &trained.normalizer,
//!     &set.documents(),
//!     &ReportConfig::default(),
//!     &device,
//!     |_stage, _rows_done| {},
//! )?;
//! let dir = tempfile::tempdir().unwrap();
//! let page = report.write(dir.path())?;
//! assert!(std::fs::read_to_string(page).unwrap().contains("Steered search"));
//! # Ok(())
//! # }
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use plotters::prelude::*;

use crate::analysis::{
    self, Family, FamilyConfig, FeatureEdit, FeatureLabel, FeatureStats, LabelConfig, Metric,
};
use crate::data::{Document, Embeddings, Normalizer};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, evaluate_with_progress};
use crate::sae::TopKSae;

/// The HTML page's title: also how [`Report::write`] knows a page is one it may replace.
pub const REPORT_TITLE: &str = "topk-sae report";

/// Text every `features.json` holds, by which [`Report::write`] knows it may replace one.
const FEATURES_MARKER: &str = "\"top_documents\"";

/// What a report shows and how it is computed.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// Features in the table of the most interpretable [default: 30].
    pub top_features: usize,
    /// Families found ([`analysis::families`]); `min_density` 0 keeps every latent, as the paper.
    pub families: FamilyConfig,
    /// Feature labels ([`analysis::label_features`]).
    pub labels: LabelConfig,
    /// Steered searches, from rows spread evenly over the corpus (the first row, the middle
    /// one, ...) [default: 2].
    pub searches: usize,
    /// Rows per batch of evaluation and encoding [default: 4096].
    pub batch_size: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            top_features: 30,
            families: FamilyConfig::default(),
            labels: LabelConfig::default(),
            searches: 2,
            batch_size: 4096,
        }
    }
}

/// The pass over the corpus that [`Report::build`]'s progress callback counts rows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Evaluating the model (the metrics).
    Evaluating,
    /// Encoding the corpus (feature statistics, labels, families).
    Encoding,
}

impl Stage {
    /// A lower-case name for a progress bar: `"evaluating"`, `"encoding"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Evaluating => "evaluating",
            Self::Encoding => "encoding",
        }
    }
}

/// A steered search of a report: a corpus row as the query, its strongest latent removed and an
/// interpretable latent it lacks boosted to the query's norm.
#[derive(Debug, Clone, PartialEq)]
pub struct SteeredSearch {
    /// The query's row.
    pub query: usize,
    /// The latent removed.
    pub removed: usize,
    /// The latent boosted.
    pub boosted: usize,
    /// The 10 nearest rows (cosine) to the query, best first.
    pub before: Vec<usize>,
    /// The 10 nearest rows to the steered query.
    pub after: Vec<usize>,
}

/// A report's findings, ready to write ([`Report::write`]).
#[derive(Debug, Clone)]
pub struct Report {
    /// Rows of the corpus.
    pub rows: usize,
    /// Embedding width.
    pub d_in: usize,
    /// Latents of the model.
    pub d_sae: usize,
    /// Active latents per row.
    pub k: usize,
    /// The model's metrics on the corpus.
    pub metrics: Metrics,
    /// Statistics of every latent (top 20 documents, 20 histogram bins), by latent.
    pub features: Vec<FeatureStats>,
    /// Labels of the latents with any.
    pub labels: Vec<FeatureLabel>,
    /// The most interpretable latents, best first: firing in 0.01% to 20% of rows, with at least
    /// three label terms, ranked by [`FeatureLabel::score`].
    pub interpretable: Vec<usize>,
    /// Feature families.
    pub families: Vec<Family>,
    /// The steered searches.
    pub searches: Vec<SteeredSearch>,
    /// Each row's title.
    pub titles: Vec<String>,
}

impl Report {
    /// Analyses `model` on `data` (raw rows; `normalizer` is the training run's) with one
    /// [`Document`] per row, calling `progress(stage, rows_done)` as the passes over the corpus
    /// advance.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `documents` is not one per row;
    /// [`Error::InvalidConfig`] for a bad `config`; [`Error::WidthMismatch`] when the model's
    /// width is not the data's; what evaluation, encoding, labelling or search return.
    pub fn build<B: Backend>(
        model: &TopKSae<B>,
        data: &Embeddings,
        normalizer: &Normalizer,
        documents: &[Document],
        config: &ReportConfig,
        device: &B::Device,
        mut progress: impl FnMut(Stage, usize),
    ) -> Result<Self> {
        if documents.len() != data.rows() {
            return Err(Error::argument(
                "documents",
                documents.len(),
                format!("must be one per embedding row ({})", data.rows()),
            ));
        }
        config.families.validate()?;
        config.labels.validate()?;
        let metrics =
            evaluate_with_progress(model, data, normalizer, config.batch_size, device, |done| {
                progress(Stage::Evaluating, done);
            })?;
        let codes = analysis::encode_corpus_with_progress(
            model,
            data,
            normalizer,
            config.batch_size,
            device,
            |done| progress(Stage::Encoding, done),
        )?;
        let features = analysis::feature_stats(&codes, 20, 20);
        let texts: Vec<String> = documents.iter().map(|d| d.text.clone()).collect();
        let labels = analysis::label_features(&features, &texts, &config.labels)?;
        let mut ranked: Vec<(usize, f64)> = labels
            .iter()
            .filter(|l| (1e-4..=0.2).contains(&features[l.latent].density) && l.terms.len() >= 3)
            .map(|l| (l.latent, l.score()))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(config.top_features);
        let interpretable: Vec<usize> = ranked.into_iter().map(|r| r.0).collect();
        let families = analysis::families(&codes, &config.families)?;
        drop(codes);
        let searches = steered_searches(
            model,
            data,
            normalizer,
            &interpretable,
            config.searches,
            device,
        )?;
        Ok(Self {
            rows: data.rows(),
            d_in: data.d_in(),
            d_sae: model.d_sae(),
            k: model.k(),
            metrics,
            features,
            labels,
            interpretable,
            families,
            searches,
            titles: documents.iter().map(|d| d.title.clone()).collect(),
        })
    }

    /// The label of `latent`: its terms joined by commas (empty without a label).
    pub fn label(&self, latent: usize) -> String {
        self.labels
            .iter()
            .find(|l| l.latent == latent)
            .map_or_else(String::new, |l| {
                l.terms
                    .iter()
                    .map(|t| t.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
    }

    /// The HTML page: metrics, the Log FD histogram, density against mean activation, the most
    /// interpretable features with labels and top-5 titles, families (the first 40) and the
    /// steered searches.
    ///
    /// # Errors
    /// [`Error::Format`] if a plot cannot be drawn.
    pub fn html(&self) -> Result<String> {
        let esc_title = |row: usize| esc(&self.titles[row]);
        let mut html = String::new();
        let _ = write!(
            html,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{REPORT_TITLE}</title><style>\
             body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{padding:2px 6px;text-align:left;vertical-align:top}}\
             table{{border-collapse:collapse}} tr:nth-child(even){{background:#f4f4f4}} .t{{color:#555;font-size:90%}}</style></head><body>\
             <h1>topk-sae report</h1><p>{} rows x {}, d_sae {}, k {}</p><h2>Metrics</h2><pre>{}\n{}</pre>",
            self.rows,
            self.d_in,
            self.d_sae,
            self.k,
            Metrics::table_header(),
            self.metrics
        );
        let _ = write!(
            html,
            "<h2>Feature densities</h2>{}{}",
            histogram_svg(&self.metrics)?,
            density_svg(&self.features)?
        );
        let _ = write!(
            html,
            "<h2>{} most interpretable features</h2><table><tr><th>latent</th><th>density</th><th>label</th><th>top-5 titles</th></tr>",
            self.interpretable.len()
        );
        for &j in &self.interpretable {
            let titles: Vec<String> = self.features[j]
                .top_documents
                .iter()
                .take(5)
                .map(|(d, _)| esc_title(*d))
                .collect();
            let _ = write!(
                html,
                "<tr><td>{j}</td><td>{:.4}</td><td>{}</td><td class=t>{}</td></tr>",
                self.features[j].density,
                esc(&self.label(j)),
                titles.join("<br>")
            );
        }
        let _ = write!(
            html,
            "</table><h2>Feature families ({})</h2><ul>",
            self.families.len()
        );
        for f in self.families.iter().take(40) {
            let _ = write!(
                html,
                "<li><b>{} [{}]</b> (round {})<ul>",
                f.parent,
                esc(&self.label(f.parent)),
                f.round + 1
            );
            for c in &f.children {
                let _ = write!(html, "<li>{c} [{}]</li>", esc(&self.label(*c)));
            }
            let _ = write!(html, "</ul></li>");
        }
        let _ = write!(html, "</ul><h2>Steered search</h2>");
        for s in &self.searches {
            let _ = write!(
                html,
                "<h3>Query: {}</h3><p>Suppress latent {} [{}], boost latent {} [{}]</p><table><tr><th>before</th><th>after</th></tr>",
                esc_title(s.query),
                s.removed,
                esc(&self.label(s.removed)),
                s.boosted,
                esc(&self.label(s.boosted))
            );
            for (a, b) in s.before.iter().zip(&s.after) {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    esc_title(*a),
                    esc_title(*b)
                );
            }
            let _ = write!(html, "</table>");
        }
        html.push_str("</body></html>");
        Ok(html)
    }

    /// One JSON object per latent: `latent`, `density`, `mean_activation`, `max_activation`,
    /// `label` (terms with z-scores, or null) and `top_documents` (the first five: `row`,
    /// `title`, `value`).
    pub fn features_json(&self) -> String {
        let mut label_of = vec![None; self.features.len()];
        for l in &self.labels {
            if let Some(slot @ None) = label_of.get_mut(l.latent) {
                *slot = Some(l);
            }
        }
        let features: Vec<serde_json::Value> = self
            .features
            .iter()
            .map(|s| {
                let label = label_of[s.latent];
                let top: Vec<serde_json::Value> = s
                    .top_documents
                    .iter()
                    .take(5)
                    .map(|(d, v)| {
                        serde_json::json!({"row": d, "title": self.titles[*d], "value": v})
                    })
                    .collect();
                serde_json::json!({
                    "latent": s.latent, "density": s.density,
                    "mean_activation": s.mean_activation, "max_activation": s.max_activation,
                    "label": label.map(|l| &l.terms), "top_documents": top,
                })
            })
            .collect();
        // Values built from strings and numbers: serialising them cannot fail.
        serde_json::to_string_pretty(&features).expect("features serialise to JSON")
    }

    /// Checks, before any long work, that a report can be written into `dir`: each of its two
    /// files is new or one an earlier report wrote.
    ///
    /// # Errors
    /// [`Error::OutputInUse`] when `report.html` or `features.json` there is a folder or a file
    /// no report wrote (a user's file is never replaced).
    pub fn check_output(dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        check_report_file(&dir.join("report.html"), REPORT_TITLE)?;
        check_report_file(&dir.join("features.json"), FEATURES_MARKER)
    }

    /// Writes `report.html` and `features.json` into `dir` (created if missing) and returns the
    /// page's path.
    ///
    /// # Errors
    /// What [`Report::check_output`] and [`Report::html`] return; [`Error::Io`] when the folder
    /// or a file cannot be written.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        Self::check_output(dir)?;
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let page = dir.join("report.html");
        for (path, text) in [
            (page.clone(), self.html()?),
            (dir.join("features.json"), self.features_json()),
        ] {
            std::fs::write(&path, text).map_err(|source| Error::Io {
                action: "write",
                path,
                source,
            })?;
        }
        Ok(page)
    }
}

/// The report's steered searches: from `n` rows spread over the corpus, the query's strongest
/// latent removed and the best interpretable latent it lacks boosted.
fn steered_searches<B: Backend>(
    model: &TopKSae<B>,
    data: &Embeddings,
    normalizer: &Normalizer,
    interpretable: &[usize],
    n: usize,
    device: &B::Device,
) -> Result<Vec<SteeredSearch>> {
    let mut searches = Vec::with_capacity(n);
    for i in 0..n {
        let query = i * data.rows() / n;
        let mut q = data.row(query).to_vec();
        normalizer.apply_rows(&mut q, data.d_in());
        let base = analysis::steer(model, &q, &[], device)?;
        let removed = base.latents[0].0;
        let boosted = interpretable
            .iter()
            .copied()
            .find(|j| !base.latents.iter().any(|l| l.0 == *j))
            .unwrap_or(removed);
        // Boost to the query's own norm: the boosted direction weighs as much as the whole query.
        let value = q.iter().map(|v| v * v).sum::<f32>().sqrt();
        let edits = [
            FeatureEdit::Remove { latent: removed },
            FeatureEdit::Set {
                latent: boosted,
                value,
            },
        ];
        let steered = analysis::steer(model, &q, &edits, device)?;
        let mut queries = q;
        queries.extend(&steered.embedding);
        // Each chunk of the raw corpus is normalised as it is scored: no normalised copy (of
        // 270,000 x 1536 embeddings, 1.6 GB).
        let hits = analysis::search_normalized::<B>(
            data,
            normalizer,
            &queries,
            10,
            Metric::Cosine,
            8192,
            device,
        )?;
        let rows = |h: &[analysis::Ranked]| h.iter().map(|r| r.document).collect::<Vec<_>>();
        searches.push(SteeredSearch {
            query,
            removed,
            boosted,
            before: rows(&hits[0]),
            after: rows(&hits[1]),
        });
    }
    Ok(searches)
}

/// Checks that the report file `path` is new, or one an earlier report wrote: a file there that
/// does not hold `marker` (text every such file holds) is a user's, and is not replaced.
fn check_report_file(path: &Path, marker: &str) -> Result<()> {
    if path.is_dir() {
        return Err(Error::OutputInUse {
            path: path.to_owned(),
            reason: "is a folder, where the report writes a file".into(),
        });
    }
    match std::fs::read(path) {
        Ok(bytes) if !String::from_utf8_lossy(&bytes).contains(marker) => Err(Error::OutputInUse {
            path: path.to_owned(),
            reason: "is not a file a report wrote; write the report into a new or empty folder"
                .into(),
        }),
        _ => Ok(()),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn svg_err(e: impl std::fmt::Display) -> Error {
    Error::Format {
        path: PathBuf::from("report.html"),
        reason: format!("plot: {e}"),
    }
}

/// The Log FD histogram: 40 bins of 0.25 from -10 (dead latents).
fn histogram_svg(metrics: &Metrics) -> Result<String> {
    let counts = metrics.log_fd_histogram(40);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(svg_err)?;
        let max = *counts.iter().max().unwrap_or(&1) as u32;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Log10 feature density (dead latents at -10)",
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d((0u32..40u32).into_segmented(), 0u32..max + 1)
            .map_err(svg_err)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(b) | SegmentValue::Exact(b) => {
                    format!("{:.1}", -10.0 + f64::from(*b) * 0.25)
                }
                SegmentValue::Last => String::new(),
            })
            .x_desc("log10 density")
            .y_desc("latents")
            .draw()
            .map_err(svg_err)?;
        // One rectangle per bin, in bin order (plotters' `Histogram` sums through a hash map,
        // which drew the same bars in a different order every run).
        chart
            .draw_series(counts.iter().enumerate().map(|(i, c)| {
                let (i, c) = (i as u32, *c as u32);
                Rectangle::new(
                    [(SegmentValue::Exact(i), 0), (SegmentValue::Exact(i + 1), c)],
                    BLUE.filled(),
                )
            }))
            .map_err(svg_err)?;
        root.present().map_err(svg_err)?;
    }
    Ok(svg)
}

/// Each live latent's log10 density against its mean activation.
fn density_svg(stats: &[FeatureStats]) -> Result<String> {
    let mut points: Vec<(f64, f64)> = stats
        .iter()
        .filter(|s| s.density > 0.0)
        .map(|s| ((s.density).log10(), s.mean_activation))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let max_act = points.iter().map(|p| p.1).fold(1e-6, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(svg_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Per-latent density vs mean activation", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(-6.0f64..0.0f64, 0.0..max_act * 1.05)
            .map_err(svg_err)?;
        chart
            .configure_mesh()
            .x_desc("log10 density")
            .y_desc("mean activation")
            .draw()
            .map_err(svg_err)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new(*p, 2, RED.mix(0.5).filled())),
            )
            .map_err(svg_err)?;
        root.present().map_err(svg_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{SyntheticConfig, synthetic};
    use crate::train::{TrainConfig, train};
    use crate::{TestBackend, TopKSaeConfig};

    /// A small trained model, its data and texts.
    fn fixture() -> (Report, Vec<Document>) {
        let device = Default::default();
        let set = synthetic(
            &SyntheticConfig::new()
                .with_rows(600)
                .with_d_in(32)
                .with_n_directions(24),
        )
        .unwrap();
        let config = TrainConfig::new(TopKSaeConfig::new(32, 64, 4))
            .with_batch_size(100)
            .with_epochs(3);
        let t = train::<TestBackend>(config, &set.embeddings, &device, |_| {}).unwrap();
        let docs = set.documents();
        let mut stages = Vec::new();
        let report = Report::build(
            &t.model,
            &set.embeddings,
            &t.normalizer,
            &docs,
            &ReportConfig::default(),
            &device,
            |stage, done| stages.push((stage, done)),
        )
        .unwrap();
        // Both passes reported their rows, evaluation first, each ending at every row.
        let last = |s: Stage| stages.iter().rev().find(|p| p.0 == s).map(|p| p.1);
        assert_eq!(last(Stage::Evaluating), Some(600));
        assert_eq!(last(Stage::Encoding), Some(600));
        assert_eq!(stages[0].0, Stage::Evaluating);
        (report, docs)
    }

    #[test]
    fn a_report_shows_its_findings_and_replaces_only_its_own_files() {
        let (report, docs) = fixture();
        assert_eq!(
            (report.rows, report.d_in, report.d_sae, report.k),
            (600, 32, 64, 4)
        );
        assert_eq!(report.features.len(), 64);
        assert_eq!(report.searches.len(), 2);
        assert_eq!(report.searches[1].query, 300);
        for s in &report.searches {
            assert_eq!((s.before.len(), s.after.len()), (10, 10));
            // Unsteered, the query itself is its own nearest row.
            assert_eq!(s.before[0], s.query);
        }
        let html = report.html().unwrap();
        assert!(html.contains(&format!("<title>{REPORT_TITLE}</title>")));
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(html.contains(&esc(&docs[300].title)));
        let json: serde_json::Value = serde_json::from_str(&report.features_json()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 64);
        assert!(json[0].get("top_documents").is_some());

        let dir = tempfile::tempdir().unwrap();
        let page = report.write(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&page).unwrap(), html);
        // A second report replaces the first.
        report.write(dir.path()).unwrap();
        // A user's file is never replaced.
        std::fs::write(dir.path().join("features.json"), "my notes").unwrap();
        let e = report.write(dir.path()).unwrap_err();
        assert!(matches!(e, Error::OutputInUse { .. }), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("features.json")).unwrap(),
            "my notes"
        );
    }

    #[test]
    fn build_refuses_documents_that_are_not_one_per_row() {
        let device = Default::default();
        let set = synthetic(
            &SyntheticConfig::new()
                .with_rows(50)
                .with_d_in(8)
                .with_n_directions(8),
        )
        .unwrap();
        let config = TrainConfig::new(TopKSaeConfig::new(8, 16, 2)).with_max_steps(Some(1));
        let t = train::<TestBackend>(config, &set.embeddings, &device, |_| {}).unwrap();
        let e = Report::build(
            &t.model,
            &set.embeddings,
            &t.normalizer,
            &set.documents()[1..],
            &ReportConfig::default(),
            &device,
            |_, _| {},
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidArgument {
                    name: "documents",
                    ..
                }
            ),
            "{e}"
        );
    }
}
