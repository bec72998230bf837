//! Trains a top-k SAE and prints the metrics table.
//!
//! With no arguments it generates a synthetic set shaped like text embeddings and reports how many
//! planted directions the decoder recovers. With `--data FILE.npy` it trains on real embeddings
//! with the reference recipe's defaults.
//!
//! ```text
//! cargo run --release --example train
//! cargo run --release --example train -- --data emb.npy --k 32 --d-sae 3072 --k-aux 64 \
//!     --batch 1024 --epochs 5 --seed 0 --json out.json
//! ```

use std::path::{Path, PathBuf};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use topk_sae::checkpoint::{self, CheckpointPolicy};
use topk_sae::data::{Synthetic, SyntheticConfig, synthetic};
use topk_sae::prelude::*;
use topk_sae::sae::to_host_vec;
use topk_sae::train::Trainer;

/// Train a top-k sparse autoencoder and print its metrics.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Backend: ndarray (CPU), flex (CPU; build with --features flex) or wgpu (GPU: Vulkan,
    /// Metal, DX12; build with --features wgpu).
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Embeddings to train on: a 2-D float32/float16/float64 .npy file. Without it: synthetic data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Active latents per row [default: 32, or 8 on synthetic data].
    #[arg(long)]
    k: Option<usize>,
    /// Number of latents [default: 3072, or 512 on synthetic data].
    #[arg(long = "d-sae")]
    d_sae: Option<usize>,
    /// Dead latents used by the AuxK term [default: 2k].
    #[arg(long = "k-aux")]
    k_aux: Option<usize>,
    /// Rows per step [default: 1024].
    #[arg(long)]
    batch: Option<usize>,
    /// Passes over the data [default: 5 on real data, 30 on synthetic data; unlimited when only
    /// --max-steps is given].
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many steps.
    #[arg(long = "max-steps")]
    max_steps: Option<u64>,
    /// Adam learning rate [default: 1e-4, the reference recipe; 2e-3 on synthetic data].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Seed of initialisation and shuffling [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Input normalisation: none, center or scale [default: none].
    #[arg(long)]
    normalize: Option<String>,
    /// Dead-latent threshold in samples [default: 272384].
    #[arg(long = "dead-threshold")]
    dead_threshold: Option<u64>,
    /// Write a JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Save checkpoints (model + trainer state) under this folder, as step-NNNNNNNNNN. A resumed
    /// run keeps saving where and as often as the run it resumes did, unless given this.
    #[arg(long = "checkpoint-dir")]
    checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint every this many steps (and at the end); at least 1 [default: 500].
    #[arg(long = "save-every", value_parser = clap::value_parser!(u64).range(1..))]
    save_every: Option<u64>,
    /// Keep only the newest this many checkpoints; at least 1 [default: 3].
    #[arg(long = "keep-last", value_parser = clap::value_parser!(u64).range(1..))]
    keep_last: Option<u64>,
    /// Resume from this checkpoint folder (a step-NNNNNNNNNN folder, or a --checkpoint-dir whose
    /// newest checkpoint is taken), on the data it was trained on. The training configuration
    /// comes from the checkpoint (a flag that would change it is ignored, with a warning),
    /// except --epochs and --max-steps when given: totals counted from the run's start, to
    /// train a run further. Checkpoints go on being saved as the resumed run saved them.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Times corpus encoding over this many passes and reports the best (0: not timed).
    #[arg(long = "encode-passes", default_value_t = 3)]
    encode_passes: u32,
    /// No progress bar (for logs).
    #[arg(long)]
    quiet: bool,
}

#[path = "common/backend.rs"]
mod backend;
#[path = "common/memory.rs"]
mod memory;
#[path = "common/outputs.rs"]
mod outputs;
#[path = "common/progress.rs"]
mod progress;
#[path = "common/timings.rs"]
mod timings;

backend::backend_main!(Args, run);

#[allow(clippy::too_many_lines)] // one linear script: load, configure, train, report
fn run<B: burn::tensor::backend::Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let device = device.clone();
    // Every output is checked before any work, so that a mistyped path fails now, not after
    // training.
    if let Some(path) = &args.json {
        outputs::check_output_file("json", path)?;
    }
    let synthetic_set: Option<Synthetic> = match &args.data {
        Some(_) => None,
        None => Some(synthetic(
            &SyntheticConfig::new().with_seed(args.seed.unwrap_or(0)),
        )?),
    };
    let data = match (&args.data, &synthetic_set) {
        (Some(path), _) => Embeddings::from_npy(path)?,
        (None, Some(s)) => s.embeddings.clone(),
        (None, None) => unreachable!(),
    };
    let is_synthetic = synthetic_set.is_some();
    let epochs = match (args.epochs, args.max_steps) {
        (Some(e), _) => e,
        (None, Some(_)) => usize::MAX,
        (None, None) => {
            if is_synthetic {
                30
            } else {
                5
            }
        }
    };
    let mut trainer = if let Some(path) = &args.resume {
        resume::<B>(args, path, &data, epochs, is_synthetic, &device)?
    } else {
        let config = new_config(args, &data, epochs, is_synthetic)?;
        memory::check_training_memory(
            &args.backend,
            data.d_in(),
            config.model.d_sae,
            config.largest_batch_of(data.rows()),
        )?;
        Trainer::<B>::new(config, &data, &device)?
    }
    .with_kernels(backend::kernel_options());
    if let Some(dir) = &args.checkpoint_dir {
        let every = args.save_every.unwrap_or(500);
        let keep = args.keep_last.unwrap_or(3);
        trainer = trainer.with_checkpoints(
            CheckpointPolicy::new(dir, every)
                .with_keep_last(usize::try_from(keep).unwrap_or(usize::MAX)),
        );
    } else if let Some(policy) = trainer.checkpoints().cloned() {
        // A resumed run keeps its policy; --save-every and --keep-last may change it.
        let every = args.save_every.unwrap_or(policy.every_steps);
        let keep = args.keep_last.map_or(policy.keep_last, |k| {
            usize::try_from(k).unwrap_or(usize::MAX)
        });
        trainer = trainer
            .with_checkpoints(CheckpointPolicy::new(&policy.dir, every).with_keep_last(keep));
    } else if args.save_every.is_some() || args.keep_last.is_some() {
        eprintln!("warning: --save-every and --keep-last need --checkpoint-dir: no checkpoints");
    }
    if let Some(policy) = trainer.checkpoints() {
        policy.check(trainer.steps_done())?;
        eprintln!(
            "checkpoints: every {} steps into {}, keeping the last {}",
            policy.every_steps,
            policy.dir.display(),
            policy.keep_last
        );
    }
    let config = trainer.config().clone();
    let (k, d_sae, lr) = (config.model.k, config.model.d_sae, config.optimizer.lr);
    let total = config.total_steps(data.rows());
    eprintln!(
        "data: {} ({} rows x {}), d_sae {d_sae}, k {k}, batch {}, {total} steps, lr {lr}",
        data.name(),
        data.rows(),
        data.d_in(),
        config.batch_size
    );
    if trainer.steps_done() >= total {
        eprintln!(
            "the run is complete at step {}: nothing left to train (--epochs or --max-steps \
             trains it further)",
            trainer.steps_done()
        );
    }

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps {elapsed_precise} eta {eta} {msg}",
        )
        .expect("valid template"),
    );
    let mut times = timings::StepTimes::start(total);
    bar.set_position(trainer.steps_done());
    let trained = trainer.fit(&data, |r| {
        times.record(r);
        bar.set_position(r.step);
        bar.set_message(format!(
            "nmse {:.4} aux {:.4} dead {:.3}",
            r.loss.recon, r.loss.aux, r.dead_frac
        ));
    })?;
    times.finish();
    bar.finish_and_clear();

    let bar = progress::rows_bar("evaluating", data.rows(), args.quiet);
    let metrics = evaluate_with_progress(
        &trained.model,
        &data,
        &trained.normalizer,
        4096,
        &device,
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let encode_seconds =
        timings::timed_encoding(&trained, &data, args.encode_passes, args.quiet, &device)?;
    println!("{}\n{metrics}", Metrics::table_header());
    let (train_seconds, median) = (times.seconds(), times.median_ms());
    if times.steps() == 0 {
        println!("steps {}, none run now", trained.steps);
    } else if trained.steps_run < trained.steps {
        println!(
            "steps {} in all, {} run now in {train_seconds:.1} s, median {median:.1} ms/step",
            trained.steps, trained.steps_run
        );
    } else {
        println!(
            "steps {}, {train_seconds:.1} s, median {median:.1} ms/step",
            trained.steps
        );
    }
    let wait_median = times.wait_median_ms();
    if wait_median > 0.0 {
        println!("waiting for the device: median {wait_median:.2} ms/step");
    }
    let recovered = synthetic_set.as_ref().map(|s| {
        let fraction = s.recovered_fraction(&to_host_vec(trained.model.w_dec.val()), 0.9);
        let planted = s.directions.len() / data.d_in();
        println!(
            "planted directions recovered (cosine > 0.9): {:.0} of {planted} ({:.1}%)",
            fraction * planted as f64,
            fraction * 100.0
        );
        fraction
    });
    if let Some(path) = &args.json {
        let mut summary = serde_json::to_value(&metrics).expect("metrics serialise to JSON");
        let extra = serde_json::json!({
            "steps": trained.steps,
            "steps_run": trained.steps_run,
            "encode_seconds": encode_seconds,
            "backend": args.backend,
            "data": data.name(),
            "batch": config.batch_size,
            "lr": lr,
            "seed": config.seed,
            "recovered_fraction": recovered,
            "gpu_kernels": timings::gpu_kernels_json(&trained.model, &device),
        });
        let fields = summary
            .as_object_mut()
            .expect("metrics serialise to an object");
        for part in [extra, times.json()] {
            fields.extend(part.as_object().expect("json! object").clone());
        }
        let text = serde_json::to_string_pretty(&summary).expect("a JSON value serialises");
        std::fs::write(path, text).map_err(|source| Error::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The training configuration of a new run, from the flags and the data's defaults.
fn new_config(
    args: &Args,
    data: &Embeddings,
    epochs: usize,
    is_synthetic: bool,
) -> Result<TrainConfig> {
    let k = args.k.unwrap_or(if is_synthetic { 8 } else { 32 });
    let d_sae = args.d_sae.unwrap_or(if is_synthetic { 512 } else { 3072 });
    let lr = args.lr.unwrap_or(if is_synthetic { 2e-3 } else { 1e-4 });
    let normalization: NormalizationKind = args.normalize.as_deref().unwrap_or("none").parse()?;
    let seed = args.seed.unwrap_or(0);
    Ok(
        TrainConfig::new(TopKSaeConfig::new(data.d_in(), d_sae, k).with_seed(seed))
            .with_loss(SaeLossConfig::new().with_k_aux(args.k_aux))
            .with_optimizer(AdamConfig::new().with_lr(lr))
            .with_batch_size(args.batch.unwrap_or(1024))
            .with_epochs(epochs)
            .with_max_steps(args.max_steps)
            .with_dead_threshold_samples(args.dead_threshold.unwrap_or(272_384))
            .with_normalization(normalization)
            .with_seed(seed),
    )
}

/// Restores the trainer of `--resume`: the data is checked against the run first, and every
/// flag the resumed run cannot honour (it would change the run) is named in a warning.
fn resume<B: burn::tensor::backend::Backend>(
    args: &Args,
    path: &Path,
    data: &Embeddings,
    epochs: usize,
    is_synthetic: bool,
    device: &B::Device,
) -> Result<Trainer<B>> {
    let dir = match checkpoint::latest(path) {
        Ok(Some(newest)) => newest,
        _ => path.to_owned(),
    };
    eprintln!("resuming from {}", dir.display());
    let mut trainer = Trainer::<B>::resume(&dir, device)?;
    let d_in = trainer.config().model.d_in;
    if is_synthetic && d_in != data.d_in() {
        return Err(Error::InvalidConfig {
            field: "data",
            value: format!("synthetic, width {}", data.d_in()),
            reason: format!(
                "cannot resume a model with d_in = {d_in}: pass the data it was trained on \
                 with --data"
            ),
        });
    }
    trainer.check_data(data)?;
    let c = trainer.config();
    let k_aux = c
        .loss
        .k_aux
        .map_or_else(|| "2k".to_owned(), |v| v.to_string());
    let given: [(&str, Option<String>, String); 8] = [
        ("k", args.k.map(|v| v.to_string()), c.model.k.to_string()),
        (
            "d-sae",
            args.d_sae.map(|v| v.to_string()),
            c.model.d_sae.to_string(),
        ),
        ("k-aux", args.k_aux.map(|v| v.to_string()), k_aux),
        (
            "lr",
            args.lr.map(|v| v.to_string()),
            c.optimizer.lr.to_string(),
        ),
        (
            "batch",
            args.batch.map(|v| v.to_string()),
            c.batch_size.to_string(),
        ),
        ("seed", args.seed.map(|v| v.to_string()), c.seed.to_string()),
        (
            "normalize",
            args.normalize.clone(),
            c.normalization.name().to_owned(),
        ),
        (
            "dead-threshold",
            args.dead_threshold.map(|v| v.to_string()),
            c.dead_threshold_samples.to_string(),
        ),
    ];
    for (flag, asked, kept) in given {
        if let Some(asked) = asked
            && asked != kept
        {
            eprintln!(
                "warning: --{flag} {asked} is ignored: a resumed run keeps its checkpoint's \
                 {kept}"
            );
        }
    }
    if args.epochs.is_some() || args.max_steps.is_some() {
        trainer = trainer.with_stop(epochs, args.max_steps)?;
    }
    Ok(trainer)
}
