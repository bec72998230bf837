//! Where a GPU training step's time goes, on burn-wgpu's default device: host-to-device upload
//! rates, single operations of the step timed alone, then for each size the step unprofiled and
//! its phases (`topk_sae::profile`: each mark waits for the device), and the corpus encoding
//! likewise. Synthetic rows; every latent counts as dead after each step (threshold 0), as in
//! `scripts/gpu_bench.sh`, so AuxK runs.
//!
//! ```sh
//! cargo run --release --features wgpu,profile --example profile_gpu
//! cargo run --release --features wgpu,profile --example profile_gpu -- --sizes "32 3072 64" --steps 50
//! ```

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use clap::Parser;
use topk_sae::analysis::encode_corpus;
use topk_sae::backend::{Wgpu, WgpuDevice};
use topk_sae::data::{SyntheticConfig, synthetic};
use topk_sae::sae::to_host_vec;
use topk_sae::{Normalizer, Result, TopKSae, TopKSaeConfig, TrainConfig, Trainer, profile};

type B = Wgpu;

/// Phase timings of the training step and the corpus encoding on a GPU.
#[derive(Parser, Debug)]
struct Args {
    /// Input width.
    #[arg(long, default_value_t = 1536)]
    d_in: usize,
    /// Synthetic rows (the corpus the encoding runs over).
    #[arg(long, default_value_t = 32_768)]
    rows: usize,
    /// Rows per step.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Steps timed unprofiled, then as many profiled (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Sizes as `k d_sae k_aux`, separated by `;`.
    #[arg(long, default_value = "32 3072 64;64 12288 128")]
    sizes: String,
    /// Only the training steps: no upload rates, single operations or encodings (for a kernel
    /// log of the steps alone).
    #[arg(long)]
    steps_only: bool,
    /// No phase table (for a CPU profile of unmarked steps).
    #[arg(long)]
    no_phases: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let device = WgpuDevice::default();
    let adapter = topk_sae::backend::wgpu_adapter(&device)?;
    println!("burn-wgpu runs on {adapter}");
    let (d_in, rows, batch) = (args.d_in, args.rows, args.batch);
    let data = synthetic(
        &SyntheticConfig::new()
            .with_rows(rows)
            .with_d_in(d_in)
            .with_n_directions(4096),
    )?
    .embeddings;
    if !args.steps_only {
        upload_rates(&device, d_in);
    }
    for size in args.sizes.split(';') {
        let v: Vec<usize> = size
            .split_whitespace()
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()
            .unwrap_or_default();
        let [k, d_sae, k_aux] = v[..] else {
            return Err(topk_sae::Error::InvalidArgument {
                name: "sizes",
                value: size.to_owned(),
                reason: "must be three numbers, k d_sae k_aux".to_owned(),
            });
        };
        let mut config = TrainConfig::new(TopKSaeConfig::new(d_in, d_sae, k))
            .with_batch_size(batch)
            .with_dead_threshold_samples(0);
        config.loss.k_aux = Some(k_aux);
        if !args.steps_only {
            kernel_times(&device, batch, d_in, d_sae, k);
        }
        let mut trainer = Trainer::<B>::new(config, &data, &device)?;
        let batch_x = |i: usize| {
            let start = (i * batch) % (rows - batch);
            let x = data.normalized_rows(start..start + batch, &Normalizer::identity());
            Tensor::<B, 2>::from_data(TensorData::new(x, [batch, d_in]), &device)
        };
        // Warm-up (kernel compilation, autotune), then unprofiled steps timed.
        for i in 0..3 {
            trainer.step(batch_x(i))?;
        }
        sync(&device);
        let started = Instant::now();
        for i in 0..args.steps as usize {
            trainer.step(batch_x(i))?;
        }
        sync(&device);
        println!(
            "k {k} d_sae {d_sae} k_aux {k_aux}: unprofiled {:.2} ms/step (upload included)",
            1e3 * started.elapsed().as_secs_f64() / f64::from(args.steps)
        );
        if args.no_phases {
            continue;
        }
        profile::start();
        for i in 0..args.steps as usize {
            let x = batch_x(i);
            profile::restart::<B>(&device);
            trainer.step(x)?;
        }
        profile::stop();
        print_phases(
            &format!("  step phases per step, k {k} d_sae {d_sae}"),
            args.steps,
        );
        if args.steps_only {
            continue;
        }
        let model = trainer.model();
        let norm = Normalizer::identity();
        let started = Instant::now();
        encode_corpus(&model, &data, &norm, 4096, &device)?;
        println!(
            "  encode {rows} rows: {:.3} s unprofiled",
            started.elapsed().as_secs_f64()
        );
        profile::start();
        profile::restart::<B>(&device);
        encode_corpus(&model, &data, &norm, 4096, &device)?;
        profile::stop();
        print_phases(&format!("  encode phases, {rows} rows"), 1);
    }
    Ok(())
}

fn sync(device: &WgpuDevice) {
    // A failed sync shows up as the same failure at the next read-back.
    let _ = B::sync(device);
}

/// Prints the phases recorded, per `per` steps.
fn print_phases(title: &str, per: u32) {
    let phases = profile::take();
    let total: f64 = phases.iter().map(|p| p.total.as_secs_f64()).sum();
    println!(
        "{title}: {:.2} ms, the phases below added up",
        1e3 * total / f64::from(per)
    );
    for p in &phases {
        println!(
            "  {:32} {:9.3} ms  ({} marks)",
            p.name,
            1e3 * p.total.as_secs_f64() / f64::from(per),
            p.marks
        );
    }
}

/// Host-to-device rate for 4096 rows of `d_in` floats uploaded as pieces of 4096, 1024, 256
/// and 64 rows (then joined on the device), best of 3 each, after a warm-up.
fn upload_rates(device: &WgpuDevice, d_in: usize) {
    let rows = 4096;
    let host: Vec<f32> = (0..rows * d_in).map(|i| (i % 101) as f32).collect();
    let mb = (rows * d_in * 4) as f64 / 1e6;
    for piece in [4096, 4096, 1024, 256, 64] {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let pieces: Vec<Vec<f32>> = host.chunks(piece * d_in).map(<[f32]>::to_vec).collect();
            sync(device);
            let started = Instant::now();
            let parts: Vec<_> = pieces
                .into_iter()
                .map(|c| {
                    let n = c.len() / d_in;
                    Tensor::<B, 2>::from_data(TensorData::new(c, [n, d_in]), device)
                })
                .collect();
            let joined = Tensor::cat(parts, 0);
            sync(device);
            best = best.min(started.elapsed().as_secs_f64());
            drop(joined);
        }
        println!(
            "upload {mb:.1} MB in pieces of {piece} rows: {:.2} ms, {:.2} GB/s",
            best * 1e3,
            mb / 1e3 / best
        );
    }
    let started = Instant::now();
    let copy = host.clone();
    println!(
        "host copy of {mb:.1} MB into a new buffer: {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    drop(copy);
}

/// Mean time of `f` over 20 calls after 2, each call ended by a device sync.
fn time(device: &WgpuDevice, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
        sync(device);
    }
    let started = Instant::now();
    for _ in 0..20 {
        f();
        sync(device);
    }
    started.elapsed().as_secs_f64() * 1e3 / 20.0
}

/// Single operations of the step at one size, each followed by a sync (the sync alone first).
fn kernel_times(device: &WgpuDevice, batch: usize, d_in: usize, d_sae: usize, k: usize) {
    let x = Tensor::<B, 2>::random([batch, d_in], Distribution::Normal(0.0, 1.0), device);
    let w = Tensor::<B, 2>::random([d_in, d_sae], Distribution::Normal(0.0, 0.03), device);
    let pre = x.clone().matmul(w.clone());
    let one = Tensor::<B, 1>::ones([1], device);
    let mask: Vec<bool> = (0..d_sae).map(|j| j % 3 != 0).collect();
    let print = |what: &str, ms: f64| println!("  {what:44} {ms:8.3} ms");
    println!("single operations at batch {batch}, d_in {d_in}, d_sae {d_sae}, k {k}:");
    print("sync alone", time(device, || {}));
    print(
        "read back one float",
        time(device, || {
            to_host_vec(one.clone());
        }),
    );
    print(
        "matmul [batch, d_in] x [d_in, d_sae]",
        time(device, || {
            let _ = x.clone().matmul(w.clone());
        }),
    );
    print(
        "top-k, k",
        time(device, || {
            let _ = topk_sae::topk::topk_tensor(pre.clone(), k, None);
        }),
    );
    print(
        "top-k, 2k, two thirds of the columns",
        time(device, || {
            let _ = topk_sae::topk::topk_tensor(pre.clone(), 2 * k, Some(&mask));
        }),
    );
    let (indices, values) = topk_sae::topk::topk_tensor(pre.clone(), k, None);
    let model = TopKSae::from_parts(
        w.clone(),
        Tensor::zeros([d_sae], device),
        w.clone().transpose().mul_scalar(1.0),
        Tensor::zeros([d_in], device),
        k,
    );
    print(
        "decode (decode_sparse)",
        time(device, || {
            let _ = model.decode_sparse(indices.clone(), values.clone());
        }),
    );
    print(
        "read back [batch, k] indices",
        time(device, || {
            let _ = indices.clone().into_data();
        }),
    );
    print(
        "adam-like elementwise update of [d_in, d_sae]",
        time(device, || {
            let _ = w.clone().mul_scalar(0.9) + w.clone().powi_scalar(2).sqrt().add_scalar(1e-8);
        }),
    );
}
