//! Before training on a CPU backend: does the machine have the memory? A mistyped `--d-sae`
//! otherwise runs until the kernel's out-of-memory killer ends the process, with no message.

use topk_sae::{Error, Result};

/// Bytes a training run holds on the host, roughly: about six `f32` copies of the parameters
/// (the weights, their gradients, Adam's two moments and the step's working copies) and one of
/// a batch's `[batch, d_sae]` activations. Measured on burn-ndarray (the `train` example on the
/// arXiv embeddings, d_in 384, 3 steps): the peak resident memory was 0.60 GB at d_sae 24,576
/// and 1.14 GB at 49,152 with batch 1,024 (5.8 floats more per parameter, after the batch's
/// share), and 1.74 GB at 49,152 with batch 4,096 (this estimate: 1.71 GB).
fn training_bytes(d_in: usize, d_sae: usize, batch: usize) -> f64 {
    let params = 2.0 * d_in as f64 * d_sae as f64 + d_sae as f64 + d_in as f64;
    4.0 * (6.0 * params + batch as f64 * d_sae as f64)
}

/// Refuses a CPU training run whose estimated memory exceeds what Linux says is available
/// (`MemAvailable` in `/proc/meminfo`); passes where that cannot be read (other systems) and on
/// the GPU backend, whose weights live on the device. `batch` is the largest batch the run
/// takes (`--batch` capped at the rows); the message names `batch` where a batch's activations
/// are most of the estimate, `d_sae` where the weights are.
pub fn check_training_memory(backend: &str, d_in: usize, d_sae: usize, batch: usize) -> Result<()> {
    if backend == "wgpu" {
        return Ok(());
    }
    let Some(available) = available_bytes() else {
        return Ok(());
    };
    let need = training_bytes(d_in, d_sae, batch);
    if need <= available {
        return Ok(());
    }
    let gib = |b: f64| b / f64::from(1u32 << 30);
    let activations = 4.0 * batch as f64 * d_sae as f64;
    let (field, value) = if activations > need / 2.0 {
        ("batch", batch)
    } else {
        ("d_sae", d_sae)
    };
    Err(Error::InvalidConfig {
        field,
        value: value.to_string(),
        reason: format!(
            "needs about {:.1} GiB of memory to train with d_in {d_in} and batch {batch} on the \
             CPU (the weights, their gradients and Adam's two moments, and a batch's \
             activations), more than the {:.1} GiB this machine has available: lower --d-sae \
             or --batch",
            gib(need),
            gib(available)
        ),
    })
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn available_bytes() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}
