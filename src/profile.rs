//! Where a GPU step's time goes: phase timings taken at marks in the training step and the
//! corpus encoding, each after a device sync. Off (one relaxed atomic load per mark) unless a
//! test switches it on; the ignored `profile_wgpu` test below prints the table the GPU figures
//! in `docs/benchmarks.md` are read from. Syncing at every mark keeps burn's fusion from
//! merging work across marks, so the phases add up to a little more than an unmarked step.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

static ON: AtomicBool = AtomicBool::new(false);

/// Time per phase, in the order the phases were first seen, and the last mark.
struct Phases {
    totals: Vec<(&'static str, Duration, u32)>,
    last: Option<Instant>,
}

static PHASES: Mutex<Phases> = Mutex::new(Phases {
    totals: Vec::new(),
    last: None,
});

/// Ends phase `name`: waits for `device`'s queued work, then adds the time since the previous
/// mark (or `restart`, in the tests) to `name`. Does nothing unless profiling is on.
pub(crate) fn mark<B: Backend>(device: &B::Device, name: &'static str) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    // A failed sync shows up as the same failure at the next read-back.
    let _ = B::sync(device);
    let now = Instant::now();
    let mut phases = PHASES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(last) = phases.last {
        let spent = now - last;
        match phases.totals.iter_mut().find(|(n, _, _)| *n == name) {
            Some(entry) => {
                entry.1 += spent;
                entry.2 += 1;
            }
            None => phases.totals.push((name, spent, 1)),
        }
    }
    phases.last = Some(now);
}

/// Starts the clock at `device`'s next idle moment without charging any phase.
#[cfg(all(test, feature = "wgpu"))]
pub(crate) fn restart<B: Backend>(device: &B::Device) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let _ = B::sync(device);
    PHASES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .last = Some(Instant::now());
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::{ON, Ordering, PHASES, restart};
    use crate::analysis::encode_corpus;
    use crate::data::{SyntheticConfig, synthetic};
    use crate::train::{TrainConfig, Trainer};
    use crate::{Normalizer, TopKSaeConfig};
    use burn::tensor::backend::Backend;
    use std::time::Instant;

    type B = crate::backend::Wgpu;

    fn reset() {
        let mut p = PHASES.lock().unwrap();
        p.totals.clear();
        p.last = None;
    }

    fn print(title: &str, per: u32) {
        let p = PHASES.lock().unwrap();
        let total: f64 = p.totals.iter().map(|(_, d, _)| d.as_secs_f64()).sum();
        println!(
            "{title}: {:.2} ms, the phases below added up",
            1e3 * total / f64::from(per)
        );
        for (name, d, n) in &p.totals {
            println!(
                "  {name:32} {:9.3} ms  ({n} marks)",
                1e3 * d.as_secs_f64() / f64::from(per)
            );
        }
    }

    /// Host-to-device rate for 4096 rows of `d_in` floats uploaded as pieces of 4096, 1024, 256
    /// and 64 rows (then joined on the device), best of 3 each, after a warm-up.
    fn upload_rates(device: &burn_wgpu::WgpuDevice, d_in: usize) {
        let rows = 4096;
        let host: Vec<f32> = (0..rows * d_in).map(|i| (i % 101) as f32).collect();
        let mb = (rows * d_in * 4) as f64 / 1e6;
        for piece in [4096, 4096, 1024, 256, 64] {
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let pieces: Vec<Vec<f32>> =
                    host.chunks(piece * d_in).map(<[f32]>::to_vec).collect();
                B::sync(device).unwrap();
                let started = Instant::now();
                let parts: Vec<_> = pieces
                    .into_iter()
                    .map(|c| {
                        let n = c.len() / d_in;
                        burn::tensor::Tensor::<B, 2>::from_data(
                            burn::tensor::TensorData::new(c, [n, d_in]),
                            device,
                        )
                    })
                    .collect();
                let joined = burn::tensor::Tensor::cat(parts, 0);
                B::sync(device).unwrap();
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
    fn time(device: &burn_wgpu::WgpuDevice, mut f: impl FnMut()) -> f64 {
        for _ in 0..2 {
            f();
            B::sync(device).unwrap();
        }
        let started = Instant::now();
        for _ in 0..20 {
            f();
            B::sync(device).unwrap();
        }
        started.elapsed().as_secs_f64() * 1e3 / 20.0
    }

    /// Single operations of the step at one size, each followed by a sync (the sync alone first).
    fn kernel_times(
        device: &burn_wgpu::WgpuDevice,
        batch: usize,
        d_in: usize,
        d_sae: usize,
        k: usize,
    ) {
        use burn::tensor::{Distribution, Tensor};
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
                crate::ops::transfer::to_host(one.clone());
            }),
        );
        print(
            "matmul [batch, d_in] x [d_in, d_sae]",
            time(device, || {
                let _ = x.clone().matmul(w.clone());
            }),
        );
        print(
            "top-k kernel, k",
            time(device, || {
                let _ = crate::ops::gpu::topk::topk(&Default::default(), &pre, k, None, false);
            }),
        );
        print(
            "top-k kernel, 2k, two thirds of the columns",
            time(device, || {
                let _ = crate::ops::gpu::topk::topk(
                    &Default::default(),
                    &pre,
                    2 * k,
                    Some(&mask),
                    false,
                );
            }),
        );
        let (indices, values) =
            crate::ops::gpu::topk::topk(&Default::default(), &pre, k, None, false).unwrap();
        let w_dec = w.clone().transpose().mul_scalar(1.0);
        print(
            "decode (sum_rows per row)",
            time(device, || {
                let _ = crate::ops::sparse::decode_rows(
                    &Default::default(),
                    &w_dec,
                    indices.clone(),
                    values.clone(),
                );
            }),
        );
        print(
            "read back [batch, k] indices",
            time(device, || {
                let _ = crate::ops::transfer::int_to_host(indices.clone());
            }),
        );
        print(
            "adam-like elementwise update of [d_in, d_sae]",
            time(device, || {
                let _ =
                    w.clone().mul_scalar(0.9) + w.clone().powi_scalar(2).sqrt().add_scalar(1e-8);
            }),
        );
    }

    fn env(name: &str, default: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Phase table of the training step and the corpus encoding on burn-wgpu's default device,
    /// at `PROFILE_SIZES` (`k d_sae k_aux;...`, default the GPU issue's two sizes), `d_in` 1536,
    /// batch 1024, 3 warm-up steps, then `PROFILE_STEPS` (20) unprofiled steps (timed) and as many
    /// profiled ones. Every latent counts as
    /// dead after each step (threshold 0), as in `scripts/gpu_bench.sh`. Run on a GPU:
    /// `cargo test --release --features wgpu --lib profile_wgpu -- --ignored --nocapture`.
    #[test]
    #[ignore = "needs a GPU; prints timings"]
    fn profile_wgpu() {
        let device = Default::default();
        let d_in = env("PROFILE_D_IN", 1536);
        let rows = env("PROFILE_ROWS", 32_768);
        let batch = env("PROFILE_BATCH", 1024);
        let steps = env("PROFILE_STEPS", 20) as u32;
        let sizes = std::env::var("PROFILE_SIZES")
            .unwrap_or_else(|_| "32 3072 64;64 12288 128".to_string());
        let data = synthetic(
            &SyntheticConfig::new()
                .with_rows(rows)
                .with_d_in(d_in)
                .with_n_directions(4096),
        )
        .expect("synthetic data")
        .embeddings;
        // PROFILE_PARTS=0 leaves out the upload rates, single operations and encodings (for a
        // kernel log of the training steps alone).
        let parts = env("PROFILE_PARTS", 1) == 1;
        if parts {
            upload_rates(&device, d_in);
        }
        for size in sizes.split(';') {
            let v: Vec<usize> = size
                .split_whitespace()
                .map(|s| s.parse().unwrap())
                .collect();
            let (k, d_sae, k_aux) = (v[0], v[1], v[2]);
            let mut config = TrainConfig::new(TopKSaeConfig::new(d_in, d_sae, k))
                .with_batch_size(batch)
                .with_dead_threshold_samples(0);
            config.loss.k_aux = Some(k_aux);
            if parts {
                kernel_times(&device, batch, d_in, d_sae, k);
            }
            let mut trainer = Trainer::<B>::new(config, &data, &device).expect("trainer");
            let batch_x = |i: usize| {
                let start = (i * batch) % (rows - batch);
                crate::ops::transfer::upload_rows::<B>(batch, d_in, &device, |piece| {
                    let rows = start + piece.start..start + piece.end;
                    data.normalized_rows(rows, &Normalizer::identity())
                })
            };
            // Warm-up (kernel compilation, autotune), then unprofiled steps timed.
            for i in 0..3 {
                trainer.step(batch_x(i)).expect("step");
            }
            B::sync(&device).unwrap();
            let started = Instant::now();
            for i in 0..steps as usize {
                trainer.step(batch_x(i)).expect("step");
            }
            B::sync(&device).unwrap();
            println!(
                "k {k} d_sae {d_sae} k_aux {k_aux}: unprofiled {:.2} ms/step (upload included)",
                1e3 * started.elapsed().as_secs_f64() / f64::from(steps)
            );
            // PROFILE_PHASES=0 leaves out the phase table (for a CPU profile of unmarked steps).
            if env("PROFILE_PHASES", 1) == 0 {
                continue;
            }
            reset();
            ON.store(true, Ordering::Relaxed);
            for i in 0..steps as usize {
                let x = batch_x(i);
                restart::<B>(&device);
                trainer.step(x).expect("step");
            }
            ON.store(false, Ordering::Relaxed);
            print(
                &format!("  step phases per step, k {k} d_sae {d_sae}"),
                steps,
            );
            if !parts {
                continue;
            }

            let model = trainer.model();
            let norm = Normalizer::identity();
            let started = Instant::now();
            encode_corpus(&model, &data, &norm, 4096, &device).expect("encode");
            println!(
                "  encode {rows} rows: {:.3} s unprofiled",
                started.elapsed().as_secs_f64()
            );
            reset();
            ON.store(true, Ordering::Relaxed);
            restart::<B>(&device);
            encode_corpus(&model, &data, &norm, 4096, &device).expect("encode");
            ON.store(false, Ordering::Relaxed);
            print(&format!("  encode phases, {rows} rows"), 1);
        }
    }
}
