//! Inspects a checkpoint in any supported layout: config, shapes, decoder norms; optionally
//! reconstructs an input set and exports to SAELens.
//!
//! ```text
//! cargo run --release --example inspect -- --checkpoint csLG_64_9216_128.pth \
//!     --input X.npy --output Y.npy --export-saelens out_dir
//! ```

use std::path::PathBuf;

use clap::Parser;
use topk_sae::checkpoint::{self, Format, LoadOptions};
use topk_sae::prelude::*;
use topk_sae::sae::to_host_vec;

/// Inspect a top-k SAE checkpoint.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Backend: ndarray (CPU), flex (CPU; build with --features flex) or wgpu (GPU: Vulkan,
    /// Metal, DX12; build with --features wgpu).
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Checkpoint: a native or SAELens/sparsify folder, or a saerch/OpenAI .pth/.pt file.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Layout: auto, native, saerch, openai, saelens or sparsify.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Active latents (required for saerch files not named {domain}_{k}_{d_sae}_{k_aux}.pth).
    #[arg(long)]
    k: Option<usize>,
    /// Embeddings to reconstruct (2-D float32/float16/float64 .npy).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to write the reconstructions of --input (float32 .npy).
    #[arg(long, requires = "input")]
    output: Option<PathBuf>,
    /// Compare the reconstructions of --input with this reference (.npy, e.g. PyTorch's output)
    /// and fail when any value differs by more than --tolerance.
    #[arg(long, requires = "input")]
    expect: Option<PathBuf>,
    /// Largest absolute difference --expect accepts (finite, >= 0).
    #[arg(long, default_value_t = 1e-5, value_parser = tolerance)]
    tolerance: f32,
    /// Also write the model as a SAELens v6 folder here.
    #[arg(long = "export-saelens")]
    export_saelens: Option<PathBuf>,
    /// Rows per batch when reconstructing.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// No progress bars (for logs).
    #[arg(long)]
    quiet: bool,
}

/// Parses `--tolerance`: a NaN would let every comparison pass (`diff > NaN` is false).
fn tolerance(text: &str) -> std::result::Result<f32, String> {
    match text.parse::<f32>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Ok(t) => Err(format!("{t} is not a finite number >= 0")),
        Err(e) => Err(e.to_string()),
    }
}

#[path = "common/backend.rs"]
mod backend;
#[path = "common/outputs.rs"]
mod outputs;
#[path = "common/progress.rs"]
mod progress;

backend::backend_main!(Args, run);

fn run<B: burn::tensor::backend::Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let device = device.clone();
    // Outputs are checked before any work: nothing a user owns is replaced.
    if let Some(output) = &args.output {
        outputs::check_output_file("output", output)?;
    }
    if let Some(dir) = &args.export_saelens {
        checkpoint::check_export_dir(dir)?;
    }
    let options = LoadOptions {
        format: args.format.parse::<Format>()?,
        k: args.k,
    };
    let mut ckpt = checkpoint::load_any::<B>(&args.checkpoint, &options, &device)?;
    ckpt.model = ckpt.model.with_kernels(backend::kernel_options());
    let model = &ckpt.model;
    println!("checkpoint: {}", args.checkpoint.display());
    println!(
        "d_in {}  d_sae {}  k {}",
        model.d_in(),
        model.d_sae(),
        model.k()
    );
    println!(
        "shapes: w_enc {:?}  b_enc {:?}  w_dec {:?}  b_dec {:?}",
        model.w_enc.dims(),
        model.b_enc.dims(),
        model.w_dec.dims(),
        model.b_dec.dims()
    );
    println!("normalisation: {:?}", ckpt.normalizer.kind);
    if ckpt.meta.step > 0 || !ckpt.meta.crate_version.is_empty() {
        println!(
            "step {}  samples seen {}  written by topk-sae {}",
            ckpt.meta.step, ckpt.meta.samples_seen, ckpt.meta.crate_version
        );
    }
    if let Some(train) = &ckpt.config.train {
        println!(
            "training config: {}",
            serde_json::to_string(train).expect("a training config serialises to JSON")
        );
    }
    let w_dec = to_host_vec(model.w_dec.val());
    let mut norms: Vec<f32> = w_dec
        .chunks_exact(model.d_in())
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    norms.sort_by(f32::total_cmp);
    let mean = norms.iter().sum::<f32>() / norms.len() as f32;
    println!(
        "decoder row norms: min {:.6}  median {:.6}  mean {:.6}  max {:.6}",
        norms[0],
        norms[norms.len() / 2],
        mean,
        norms[norms.len() - 1]
    );

    if let Some(input) = &args.input {
        let data = Embeddings::from_npy(input)?;
        data.check_width(model.d_in())?;
        if args.output.is_some() || args.expect.is_some() {
            reconstruct(args, &ckpt, &data, &device)?;
        }
        let bar = progress::rows_bar("evaluating", data.rows(), args.quiet);
        let metrics = evaluate_with_progress(
            model,
            &data,
            &ckpt.normalizer,
            args.batch,
            &device,
            |done| {
                bar.set_position(done as u64);
            },
        )?;
        bar.finish_and_clear();
        println!("metrics over {} ({} rows):", input.display(), data.rows());
        println!("{}\n{metrics}", Metrics::table_header());
    }
    if let Some(dir) = &args.export_saelens {
        checkpoint::export_saelens(dir, model, &ckpt.normalizer)?;
        println!("SAELens v6 folder written to {}", dir.display());
    }
    Ok(())
}

/// Reconstructs `data` in input space; writes it (--output) and/or compares it (--expect).
fn reconstruct<B: burn::tensor::backend::Backend>(
    args: &Args,
    ckpt: &checkpoint::Checkpoint<B>,
    data: &Embeddings,
    device: &B::Device,
) -> Result<()> {
    let device = device.clone();
    let model = &ckpt.model;
    let mut recon = Vec::with_capacity(data.rows() * data.d_in());
    // On a GPU, batches whose pre-activations would not fit in one buffer are made smaller.
    let batch = args.batch.max(1).min(model.max_batch_rows());
    let bar = progress::rows_bar("reconstructing", data.rows(), args.quiet);
    for start in (0..data.rows()).step_by(batch) {
        let end = (start + batch).min(data.rows());
        let x = data.normalized_rows(start..end, &ckpt.normalizer);
        let x = burn::tensor::Tensor::<B, 2>::from_data(
            burn::tensor::TensorData::new(x, [end - start, data.d_in()]),
            &device,
        );
        recon.extend(to_host_vec(
            ckpt.normalizer.invert(model.forward(x).reconstruction),
        ));
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();
    let recon = Embeddings::from_vec(recon, data.rows(), data.d_in())?;
    if let Some(output) = &args.output {
        recon.write_npy(output)?;
        println!("reconstructions written to {}", output.display());
    }
    if let Some(expect) = &args.expect {
        let want = Embeddings::from_npy(expect)?;
        want.check_width(recon.d_in())?;
        if want.rows() != recon.rows() {
            return Err(Error::Format {
                path: expect.clone(),
                reason: format!(
                    "holds {} rows, but --input holds {}",
                    want.rows(),
                    recon.rows()
                ),
            });
        }
        let (at, worst) = recon
            .as_slice()
            .iter()
            .zip(want.as_slice())
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold(
                (0, 0.0f32),
                |best, (i, d)| if d > best.1 { (i, d) } else { best },
            );
        let (row, col) = (at / recon.d_in(), at % recon.d_in());
        println!(
            "max |reconstruction - {}| = {worst:e} (tolerance {:e}), at row {row}, column {col}",
            expect.display(),
            args.tolerance
        );
        if worst > args.tolerance {
            return Err(Error::Format {
                path: expect.clone(),
                reason: format!(
                    "reconstructions differ by {worst:e} > {:e}, the most at row {row}, column {col} ({} against {})",
                    args.tolerance,
                    recon.row(row)[col],
                    want.row(row)[col]
                ),
            });
        }
    }
    Ok(())
}
