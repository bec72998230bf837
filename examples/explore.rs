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

use std::path::PathBuf;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use topk_sae::analysis::FamilyConfig;
use topk_sae::checkpoint::{self, LoadOptions};
use topk_sae::data::{DOCUMENT_FIELDS, Document, SyntheticConfig, read_documents, synthetic};
use topk_sae::prelude::*;
use topk_sae::report::{Report, ReportConfig, Stage};

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

#[path = "common/backend.rs"]
mod backend;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/progress.rs"]
mod progress;

backend::backend_main!(Args, run);

fn run<B: burn::tensor::backend::Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let device = device.clone();
    // Bad settings and an unwritable report folder fail now, not after training.
    let config = ReportConfig {
        families: FamilyConfig {
            min_density: args.family_min_density,
            ..FamilyConfig::default()
        },
        ..ReportConfig::default()
    };
    config.families.validate()?;
    Report::check_output(&args.out)?;
    std::fs::create_dir_all(&args.out).map_err(|source| Error::Io {
        action: "create",
        path: args.out.clone(),
        source,
    })?;
    let (data, docs) = corpus(args)?;
    let (model, normalizer) = model_for::<B>(args, &data, &device)?;
    let model = model.with_kernels(backend::kernel_options());
    // One bar per pass over the corpus, made when its pass starts.
    let mut bar: Option<(Stage, ProgressBar)> = None;
    let report = Report::build(
        &model,
        &data,
        &normalizer,
        &docs,
        &config,
        &device,
        |stage, done| {
            if bar.as_ref().is_none_or(|b| b.0 != stage) {
                if let Some((_, old)) = bar.take() {
                    old.finish_and_clear();
                }
                bar = Some((
                    stage,
                    progress::rows_bar(stage.name(), data.rows(), args.quiet),
                ));
            }
            if let Some((_, b)) = &bar {
                b.set_position(done as u64);
            }
        },
    )?;
    if let Some((_, b)) = bar {
        b.finish_and_clear();
    }
    println!("{}\n{}", Metrics::table_header(), report.metrics);
    let page = report.write(&args.out)?;
    println!(
        "{} families; report written to {}",
        report.families.len(),
        page.display()
    );
    Ok(())
}

/// The embeddings and their texts: `--data` with `--texts` (or rows named by number), or the
/// synthetic set with its made-up texts.
fn corpus(args: &Args) -> Result<(Embeddings, Vec<Document>)> {
    let (data, docs) = if let Some(path) = &args.data {
        let data = Embeddings::from_npy(path)?;
        let docs = match &args.texts {
            Some(t) => read_texts(t)?,
            None => (0..data.rows())
                .map(|i| Document::titled(format!("row {i}")))
                .collect(),
        };
        (data, docs)
    } else {
        let set = synthetic(&SyntheticConfig::new().with_seed(args.seed))?;
        let docs = set.documents();
        (set.embeddings, docs)
    };
    if docs.len() != data.rows() {
        return Err(Error::InvalidConfig {
            field: "texts",
            value: docs.len().to_string(),
            reason: format!("must have one line per embedding row ({})", data.rows()),
        });
    }
    Ok((data, docs))
}

/// The model of `--checkpoint`, or one trained on `data` now, with its normaliser.
fn model_for<B: burn::tensor::backend::Backend>(
    args: &Args,
    data: &Embeddings,
    device: &B::Device,
) -> Result<(TopKSae<B>, Normalizer)> {
    let synthetic_run = args.data.is_none();
    if let Some(path) = &args.checkpoint {
        let c = checkpoint::load_any::<B>(
            path,
            &LoadOptions {
                k: args.k,
                ..LoadOptions::default()
            },
            device,
        )?;
        Ok((c.model, c.normalizer))
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
        let t = train::<B>(config, data, device, |r| {
            bar.set_position(r.step);
            bar.set_message(format!("nmse {:.4}", r.loss.recon));
        })?;
        bar.finish_and_clear();
        Ok((t.model, t.normalizer))
    }
}

/// The texts of `--texts`, with a warning naming lines that hold no text field.
fn read_texts(path: &std::path::Path) -> Result<Vec<Document>> {
    let read = read_documents(path)?;
    if let Some((line, keys)) = read.unlabeled.first() {
        eprintln!(
            "warning: {}: {} of {} lines hold none of the fields {DOCUMENT_FIELDS:?} (line {line} \
             holds {keys:?}); their rows get empty texts",
            path.display(),
            read.unlabeled.len(),
            read.documents.len()
        );
    }
    Ok(read.documents)
}
