//! Explores what a trained SAE learned and writes a static HTML report.
//!
//! ```text
//! cargo run --release --example explore                      # synthetic default
//! cargo run --release --example explore -- --data emb.npy --texts abstracts.jsonl \
//!     [--checkpoint DIR] [--k 32 --d-sae 3072 --epochs 5] --out report/
//! ```
//!
//! Writes `REPORT_DIR/report.html` (metrics, Log FD histogram, density plot, the 30 most
//! interpretable features with labels and top-5 titles, families, two steered-search demos) and
//! `REPORT_DIR/features.json` (one object per latent).

use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use topk_sae::analysis::{self, FamilyConfig, FeatureEdit, FeatureStats, LabelConfig, Metric};
use topk_sae::checkpoint::{self, LoadOptions};
use topk_sae::data::{SyntheticConfig, synthetic};
use topk_sae::prelude::*;

/// Explore a top-k SAE's features and write an HTML report.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Backend: ndarray (CPU), flex (CPU; build with --features flex) or wgpu (GPU: Vulkan,
    /// Metal, DX12; build with --features wgpu).
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Embeddings (2-D .npy). Without it: synthetic data with generated texts.
    #[arg(long)]
    data: Option<PathBuf>,
    /// JSON lines, one per embedding row, with `title` and/or `text`/`abstract`.
    #[arg(long, requires = "data")]
    texts: Option<PathBuf>,
    /// A trained model (any layout `inspect` reads); without it one is trained first.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Active latents when training [default: 32, or 8 on synthetic data].
    #[arg(long)]
    k: Option<usize>,
    /// Latents when training [default: 3072, or 512 on synthetic data].
    #[arg(long = "d-sae")]
    d_sae: Option<usize>,
    /// Epochs when training [default: 5, or 30 on synthetic data].
    #[arg(long)]
    epochs: Option<usize>,
    /// Report folder.
    #[arg(long, default_value = "report")]
    out: PathBuf,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Families: leave out latents firing in fewer than this fraction of documents (0 keeps all,
    /// as in the paper).
    #[arg(
        long = "family-min-density",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    family_min_density: f64,
    /// No progress bars (for logs).
    #[arg(long)]
    quiet: bool,
}

/// The report page's title: also how a later run knows the page is one it may replace.
const REPORT_TITLE: &str = "topk-sae report";

#[path = "common/backend.rs"]
mod backend;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/outputs.rs"]
mod outputs;
#[path = "common/progress.rs"]
mod progress;

backend::backend_main!(Args, run);

struct Doc {
    title: String,
    text: String,
}

fn read_texts(path: &Path) -> Result<Vec<Doc>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        action: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let mut docs = Vec::new();
    // Lines with none of the fields read (line number, the keys they hold).
    let mut unlabeled: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| Error::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            reason: format!("line {}: {e}", i + 1),
        })?;
        if FIELDS.iter().all(|k| v.get(k).is_none()) {
            let keys = v
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            unlabeled.push((i + 1, keys));
        }
        let get = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let body = [get("text"), get("abstract")]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        let title = get("title");
        let title = if title.is_empty() {
            body.chars().take(100).collect()
        } else {
            title
        };
        docs.push(Doc {
            text: format!("{title}. {body}"),
            title,
        });
    }
    if let Some((line, keys)) = unlabeled.first() {
        let example = format!("line {line} holds {keys:?}");
        if unlabeled.len() == docs.len() {
            return Err(Error::Format {
                path: path.to_path_buf(),
                reason: format!("no line holds any of the fields {FIELDS:?} ({example})"),
            });
        }
        eprintln!(
            "warning: {}: {} of {} lines hold none of the fields {FIELDS:?} ({example}); \
             their rows get empty texts",
            path.display(),
            unlabeled.len(),
            docs.len()
        );
    }
    Ok(docs)
}

/// The fields of a texts line that give a document its title and text.
const FIELDS: [&str; 3] = ["title", "text", "abstract"];

/// Synthetic texts: each planted direction gets three made-up topic words.
fn synthetic_texts(active: &[u32], per_row: usize) -> Vec<Doc> {
    const SYL: [&str; 12] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "qua", "dex",
    ];
    let word = |d: u32, w: u32| {
        let n = d * 3 + w;
        format!(
            "{}{}{}",
            SYL[(n % 12) as usize],
            SYL[((n / 12) % 12) as usize],
            SYL[((n / 144) % 12) as usize]
        )
    };
    active
        .chunks(per_row)
        .enumerate()
        .map(|(i, dirs)| {
            let words: Vec<String> = dirs
                .iter()
                .flat_map(|&d| (0..3).map(move |w| word(d, w)))
                .collect();
            Doc {
                title: format!("doc {i}: topics {dirs:?}"),
                text: words.join(" "),
            }
        })
        .collect()
}

fn svg_err(e: impl std::fmt::Display) -> Error {
    Error::Format {
        path: PathBuf::from("report.html"),
        reason: format!("plot: {e}"),
    }
}

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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[allow(clippy::too_many_lines)] // one linear script: data, model, analysis, report
fn run<B: burn::tensor::backend::Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let device = device.clone();
    // Bad settings and an unwritable report folder fail now, not after training.
    let family_config = FamilyConfig {
        min_density: args.family_min_density,
        ..FamilyConfig::default()
    };
    family_config.validate()?;
    // A report replaces only an earlier report, never a user's file of the same name.
    outputs::check_report_file(&args.out.join("report.html"), REPORT_TITLE)?;
    outputs::check_report_file(&args.out.join("features.json"), "\"top_documents\"")?;
    std::fs::create_dir_all(&args.out).map_err(|source| Error::Io {
        action: "create",
        path: args.out.clone(),
        source,
    })?;
    let (data, docs) = if let Some(path) = &args.data {
        let data = Embeddings::from_npy(path)?;
        let docs = match &args.texts {
            Some(t) => read_texts(t)?,
            None => (0..data.rows())
                .map(|i| Doc {
                    title: format!("row {i}"),
                    text: String::new(),
                })
                .collect(),
        };
        (data, docs)
    } else {
        let set = synthetic(&SyntheticConfig::new().with_seed(args.seed))?;
        let docs = synthetic_texts(&set.active, 4);
        (set.embeddings, docs)
    };
    if docs.len() != data.rows() {
        return Err(Error::InvalidConfig {
            field: "texts",
            value: docs.len().to_string(),
            reason: format!("must have one line per embedding row ({})", data.rows()),
        });
    }
    let synthetic_run = args.data.is_none();
    let (model, normalizer) = if let Some(path) = &args.checkpoint {
        let c = checkpoint::load_any::<B>(
            path,
            &LoadOptions {
                k: args.k,
                ..LoadOptions::default()
            },
            &device,
        )?;
        (
            c.model.with_kernels(backend::kernel_options()),
            c.normalizer,
        )
    } else {
        let k = args.k.unwrap_or(if synthetic_run { 8 } else { 32 });
        let d_sae = args.d_sae.unwrap_or(if synthetic_run { 512 } else { 3072 });
        let epochs = args.epochs.unwrap_or(if synthetic_run { 30 } else { 5 });
        let lr = if synthetic_run { 2e-3 } else { 1e-4 };
        let config =
            TrainConfig::new(TopKSaeConfig::new(data.d_in(), d_sae, k).with_seed(args.seed))
                .with_epochs(epochs)
                .with_optimizer(AdamConfig::new().with_lr(lr))
                .with_seed(args.seed);
        memory::check_training_memory(&args.backend, data.d_in(), d_sae, config.batch_size)?;
        let bar = if args.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(config.total_steps(data.rows()))
        };
        bar.set_style(
            ProgressStyle::with_template("training {bar:40} {pos}/{len} {msg}")
                .expect("valid template"),
        );
        let t = train::<B>(config, &data, &device, |r| {
            bar.set_position(r.step);
            bar.set_message(format!("nmse {:.4}", r.loss.recon));
        })?;
        bar.finish_and_clear();
        (
            t.model.with_kernels(backend::kernel_options()),
            t.normalizer,
        )
    };
    let bar = progress::rows_bar("evaluating", data.rows(), args.quiet);
    let metrics = evaluate_with_progress(&model, &data, &normalizer, 4096, &device, |done| {
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!("{}\n{metrics}", Metrics::table_header());
    let bar = progress::rows_bar("encoding", data.rows(), args.quiet);
    let codes =
        analysis::encode_corpus_with_progress(&model, &data, &normalizer, 4096, &device, |done| {
            bar.set_position(done as u64);
        })?;
    bar.finish_and_clear();
    let stats = analysis::feature_stats(&codes, 20, 20);
    let texts: Vec<String> = docs.iter().map(|d| d.text.clone()).collect();
    let labels = analysis::label_features(&stats, &texts, &LabelConfig::default())?;
    let label_of = |j: usize| labels.iter().find(|l| l.latent == j);
    let label_text = |j: usize| {
        label_of(j).map_or_else(String::new, |l| {
            l.terms
                .iter()
                .map(|t| t.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    // Most interpretable: live, not dense, ranked by how strongly their label terms stand out.
    let mut ranked: Vec<(usize, f64)> = labels
        .iter()
        .filter(|l| (1e-4..=0.2).contains(&stats[l.latent].density) && l.terms.len() >= 3)
        .map(|l| (l.latent, l.score()))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(30);
    let fams = analysis::families(&codes, &family_config)?;

    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{REPORT_TITLE}</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{padding:2px 6px;text-align:left;vertical-align:top}}\
         table{{border-collapse:collapse}} tr:nth-child(even){{background:#f4f4f4}} .t{{color:#555;font-size:90%}}</style></head><body>\
         <h1>topk-sae report</h1><p>{} rows x {}, d_sae {}, k {}</p><h2>Metrics</h2><pre>{}\n{}</pre>",
        data.rows(),
        data.d_in(),
        model.d_sae(),
        model.k(),
        Metrics::table_header(),
        metrics
    );
    let _ = write!(
        html,
        "<h2>Feature densities</h2>{}{}",
        histogram_svg(&metrics)?,
        density_svg(&stats)?
    );
    let _ = write!(
        html,
        "<h2>30 most interpretable features</h2><table><tr><th>latent</th><th>density</th><th>label</th><th>top-5 titles</th></tr>"
    );
    for &(j, _) in &ranked {
        let titles: Vec<String> = stats[j]
            .top_documents
            .iter()
            .take(5)
            .map(|(d, _)| esc(&docs[*d].title))
            .collect();
        let _ = write!(
            html,
            "<tr><td>{j}</td><td>{:.4}</td><td>{}</td><td class=t>{}</td></tr>",
            stats[j].density,
            esc(&label_text(j)),
            titles.join("<br>")
        );
    }
    let _ = write!(
        html,
        "</table><h2>Feature families ({})</h2><ul>",
        fams.len()
    );
    for f in fams.iter().take(40) {
        let _ = write!(
            html,
            "<li><b>{} [{}]</b> (round {})<ul>",
            f.parent,
            esc(&label_text(f.parent)),
            f.round + 1
        );
        for c in &f.children {
            let _ = write!(html, "<li>{c} [{}]</li>", esc(&label_text(*c)));
        }
        let _ = write!(html, "</ul></li>");
    }
    let _ = write!(html, "</ul><h2>Steered search</h2>");
    // The corpus in the model's input space, copied only when the normaliser changes it (a copy
    // of 270,000 x 1536 embeddings is 1.6 GB).
    let normalized;
    let corpus = if normalizer.kind == NormalizationKind::None {
        &data
    } else {
        let mut copy = data.clone();
        copy.normalize(&normalizer);
        normalized = copy;
        &normalized
    };
    for query_doc in [0, data.rows() / 2] {
        let mut q = data.row(query_doc).to_vec();
        normalizer.apply_rows(&mut q, data.d_in());
        let base = analysis::steer(&model, &q, &[], &device)?;
        let strongest = base.latents[0].0;
        let boost = ranked
            .iter()
            .map(|r| r.0)
            .find(|j| !base.latents.iter().any(|l| l.0 == *j))
            .unwrap_or(strongest);
        // Boost to the query's own norm: the boosted direction weighs as much as the whole query.
        let value = q.iter().map(|v| v * v).sum::<f32>().sqrt();
        let edits = [
            FeatureEdit::Remove { latent: strongest },
            FeatureEdit::Set {
                latent: boost,
                value,
            },
        ];
        let steered = analysis::steer(&model, &q, &edits, &device)?;
        let mut queries = q.clone();
        queries.extend(&steered.embedding);
        let hits = analysis::search::<B>(corpus, &queries, 10, Metric::Cosine, 8192, &device)?;
        let _ = write!(
            html,
            "<h3>Query: {}</h3><p>Suppress latent {strongest} [{}], boost latent {boost} [{}]</p><table><tr><th>before</th><th>after</th></tr>",
            esc(&docs[query_doc].title),
            esc(&label_text(strongest)),
            esc(&label_text(boost))
        );
        for (a, b) in hits[0].iter().zip(&hits[1]) {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(&docs[a.document].title),
                esc(&docs[b.document].title)
            );
        }
        let _ = write!(html, "</table>");
    }
    html.push_str("</body></html>");
    let report = args.out.join("report.html");
    std::fs::write(&report, html).map_err(|source| Error::Io {
        action: "write",
        path: report.clone(),
        source,
    })?;
    let features: Vec<serde_json::Value> = stats
        .iter()
        .map(|s| {
            serde_json::json!({
                "latent": s.latent, "density": s.density, "mean_activation": s.mean_activation,
                "max_activation": s.max_activation, "label": label_of(s.latent).map(|l| &l.terms),
                "top_documents": s.top_documents.iter().take(5).map(|(d, v)| serde_json::json!({"row": d, "title": docs[*d].title, "value": v})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let json_path = args.out.join("features.json");
    // Plain structs of strings and numbers: serialising them cannot fail.
    let text = serde_json::to_string_pretty(&features).expect("features serialise to JSON");
    std::fs::write(&json_path, text).map_err(|source| Error::Io {
        action: "write",
        path: json_path,
        source,
    })?;
    println!(
        "{} families; report written to {}",
        fams.len(),
        report.display()
    );
    Ok(())
}
