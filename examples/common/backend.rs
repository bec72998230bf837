//! `--backend ndarray|wgpu`, shared by the examples: runs a job generic over the backend on the
//! one named.

use burn::tensor::backend::Backend;
use topk_sae::{Error, Result};

/// Work that runs on any backend.
pub trait Job {
    /// Runs on backend `B` and its `device`.
    fn run<B: Backend>(self, device: &B::Device) -> Result<()>;
}

/// Runs `job` on the backend called `name` (`ndarray`, or `wgpu` when built with that feature).
pub fn run_on(name: &str, job: impl Job) -> Result<()> {
    match name {
        "ndarray" => job.run::<topk_sae::backend::NdArray<f32>>(&Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => job.run::<topk_sae::backend::Wgpu>(&Default::default()),
        other => Err(Error::InvalidConfig {
            field: "backend",
            value: other.to_owned(),
            reason: if cfg!(feature = "wgpu") {
                "must be ndarray or wgpu".into()
            } else {
                "must be ndarray (wgpu needs a build with --features wgpu)".into()
            },
        }),
    }
}
