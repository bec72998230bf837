//! Which engine runs an operation, decided in one place: [`Engine::of`] from the backend's types
//! (the host kernels on the CPU backends, our kernels on burn-wgpu's own tensors, burn's tensor
//! operations elsewhere), and which of our GPU kernels a model or trainer may use
//! ([`KernelOptions`], carried by the model and passed down to every operation).

use std::any::TypeId;

use burn::tensor::backend::Backend;

/// The engine a backend's operations run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    /// burn-ndarray or Flex (with or without autodiff): host buffers are the backend's own
    /// memory, and the host kernels are the fast path.
    Host,
    /// burn-wgpu's own tensors (`backend::Wgpu`, not wrapped in autodiff): our cubecl kernels
    /// where [`KernelOptions`] and their first-use checks allow, else burn's tensor operations.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    Wgpu,
    /// Any other backend: burn's tensor operations.
    Tensor,
}

impl Engine {
    /// The engine of backend `B`: the host kernels by the type of its device (autodiff wraps a
    /// backend and keeps its device type, so it keeps the host engine), our GPU kernels by the
    /// type of its tensors (they take burn-wgpu's fused tensors, which autodiff wraps).
    pub(crate) fn of<B: Backend>() -> Self {
        let device = TypeId::of::<B::Device>();
        #[cfg(feature = "ndarray")]
        if device == TypeId::of::<burn_ndarray::NdArrayDevice>() {
            return Self::Host;
        }
        #[cfg(feature = "flex")]
        if device == TypeId::of::<burn_flex::FlexDevice>() {
            return Self::Host;
        }
        #[cfg(feature = "wgpu")]
        if crate::ops::gpu::takes_tensors_of::<B>() {
            return Self::Wgpu;
        }
        let _ = device;
        Self::Tensor
    }

    /// Whether backend `B` runs the host kernels.
    pub(crate) fn is_host<B: Backend>() -> bool {
        Self::of::<B>() == Self::Host
    }
}

/// Which of this crate's GPU kernels may run (on burn-wgpu; other backends run none). A kernel
/// that is allowed still runs only once its first-use check has passed on the device
/// ([`crate::backend::gpu_kernels`] says which run). Results are the same either way to float
/// rounding; only the speed differs. A model carries its options
/// ([`crate::TopKSae::with_kernels`]); the trainer uses its model's.
///
/// ```
/// use topk_sae::backend::KernelOptions;
/// let mut options = KernelOptions::default();
/// assert!(options.top_k && !options.loss);
/// options.loss = true; // opt in to the loss statistics kernels
/// assert!(!KernelOptions::none().top_k);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[allow(
    clippy::struct_excessive_bools,
    reason = "each field switches one kernel on or off, independently of the others"
)]
pub struct KernelOptions {
    /// The row-wise top-k selection (on by default); without it the pre-activations are
    /// copied to the host and selected there.
    pub top_k: bool,
    /// The top-k kernel's filter pass ahead of its radix select (on by default; off times the
    /// radix select alone).
    pub top_k_filter: bool,
    /// Sparse decode and gradient: grouped row sums, gathered dot products (on by default);
    /// without it burn's gather and scatter-add run.
    pub sparse: bool,
    /// The optimiser's update in six launches (on by default); without it burn's tensor
    /// operations run.
    pub update: bool,
    /// Concatenation of a step's small pieces in one launch (on by default); without it burn's
    /// `cat` runs, a launch per piece.
    pub pack: bool,
    /// The loss's batch statistics and AuxK term in four launches. Off by default: on an H200
    /// it made the large step slower.
    pub loss: bool,
    /// Read-backs issued at once and collected later in evaluation and corpus encoding (on by
    /// default); without it each chunk's outputs are read when needed.
    pub issued_reads: bool,
    /// The same for the queued steps of [`crate::Trainer::fit`]. Off by default: the next
    /// step, built while the read is in flight, was slower on the GPUs tried.
    pub issued_step_reads: bool,
}

impl Default for KernelOptions {
    fn default() -> Self {
        Self {
            top_k: true,
            top_k_filter: true,
            sparse: true,
            update: true,
            pack: true,
            loss: false,
            issued_reads: true,
            issued_step_reads: false,
        }
    }
}

impl KernelOptions {
    /// Every kernel off: burn's tensor operations (and the host top-k) throughout.
    pub fn none() -> Self {
        Self {
            top_k: false,
            top_k_filter: false,
            sparse: false,
            update: false,
            pack: false,
            loss: false,
            issued_reads: false,
            issued_step_reads: false,
        }
    }
}
