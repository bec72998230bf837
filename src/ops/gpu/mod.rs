//! Our cubecl kernels for burn-wgpu, behind the generic API: the row-wise top-k ([`topk`]) and
//! the grouped row sums of the sparse decode and gradient ([`sparse`]), the optimiser's update
//! ([`update`]), concatenations in one launch ([`pack`]), and the loss's batch statistics and
//! term values ([`stats`]); and read-backs issued at once and collected later ([`read`]).
//!
//! Each is used only when the backend's tensors are burn-wgpu's (`Fusion<CubeBackend<WgpuRuntime,
//! f32, i32, _>>`, the `backend::Wgpu` this crate exports): where `crate::ops::engine::Engine`
//! says so (it asks [`takes_tensors_of`]); for any other backend the callers run burn's tensor operations (or the host top-k) instead. The tensors are
//! resolved to cubecl tensors (which flushes the fusion queue), the kernel is launched, and its
//! outputs are registered back with the fusion client (an `Init` operation), all in safe code.

pub(crate) mod adapter;
pub(crate) mod pack;
pub(crate) mod read;
pub(crate) mod sparse;
pub(crate) mod stats;
pub(crate) mod topk;
pub(crate) mod update;

use std::any::{Any, TypeId};
use std::sync::OnceLock;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::CubeBackend;
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::client::GlobalFusionClient;
use burn_fusion::stream::OperationStreams;
use burn_fusion::{FusionTensor, NoOp};
use burn_ir::{InitOperationIr, OperationIr};
use burn_wgpu::WgpuRuntime;

use crate::ops::KernelStatus;
use crate::ops::engine::{Engine, KernelOptions};

/// burn-wgpu's inner backend (before fusion), for every element type we accept.
type Inner = CubeBackend<WgpuRuntime, f32, i32, u32>;
/// A burn-wgpu tensor as the fusion layer holds it.
type Fused = FusionTensor<FusionCubeRuntime<WgpuRuntime>>;
/// The fusion layer's client, which takes our kernels' outputs back.
type Client = GlobalFusionClient<FusionCubeRuntime<WgpuRuntime>>;

/// Whether a kernel runs: on burn-wgpu's tensors only, where the caller's [`KernelOptions`]
/// allow it, and only once its first-use check has passed. A kernel a driver miscompiles gives
/// wrong numbers without an error (seen while writing one: a kernel that did not compile left
/// its output uninitialised), so each kernel runs once on a small problem with a known answer
/// before it is trusted; if the answer is wrong, the callers use the portable path for the rest
/// of the process, a `log` warning says so, and [`crate::backend::gpu_kernels`] reports
/// [`KernelStatus::FailedCheck`] (the examples print it).
struct Switch {
    /// Whether the options allow the kernel.
    allowed: fn(&KernelOptions) -> bool,
    /// The kernel, for the warning.
    what: &'static str,
    checked: OnceLock<bool>,
}

impl Switch {
    const fn new(allowed: fn(&KernelOptions) -> bool, what: &'static str) -> Self {
        Self {
            allowed,
            what,
            checked: OnceLock::new(),
        }
    }

    /// The kernel's status for backend `B` under `options`; `check` (run once per process, the
    /// first time the rest allows it) launches the kernel on a small problem and says whether
    /// the answer was right.
    fn status<B: Backend>(
        &self,
        options: &KernelOptions,
        check: impl FnOnce() -> bool,
    ) -> KernelStatus {
        if Engine::of::<B>() != Engine::Wgpu {
            return KernelStatus::Unavailable;
        }
        if !(self.allowed)(options) {
            return KernelStatus::SwitchedOff;
        }
        let passed = *self.checked.get_or_init(|| {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).unwrap_or(false);
            if !ok {
                log::warn!(
                    "the GPU {} kernel gave a wrong answer in its first-use check on this \
                     device; the portable path runs instead (slower, same results).",
                    self.what,
                );
            }
            ok
        });
        if passed {
            KernelStatus::Runs
        } else {
            KernelStatus::FailedCheck
        }
    }
}

/// Whether our kernels take backend `B`'s tensors: burn-wgpu's fused tensors for both floats and
/// ints (the `backend::Wgpu` this crate exports). [`Engine::of`] asks this.
pub(crate) fn takes_tensors_of<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<Fused>()
        && TypeId::of::<B::IntTensorPrimitive>() == TypeId::of::<Fused>()
}

/// `#[cube]` helpers our kernels share.
mod cube_helpers {
    use cubecl::prelude::*;

    /// The sum of every unit's `value` over the cube, returned to every unit. Every unit must
    /// call it (it has barriers).
    #[cube]
    pub(super) fn cube_sum(scratch: &mut SharedMemory<f32>, value: f32) -> f32 {
        let unit = UNIT_POS_X as usize;
        scratch[unit] = value;
        sync_cube();
        // The cube's size read at run time: a loop variable cannot be a comptime value.
        let mut stride = CUBE_DIM_X as usize / 2;
        while stride > 0 {
            if unit < stride {
                scratch[unit] += scratch[unit + stride];
            }
            sync_cube();
            stride /= 2;
        }
        let total = scratch[0];
        // Before the scratch is written again.
        sync_cube();
        total
    }
}

use cube_helpers::cube_sum;

/// The largest buffer burn-wgpu allocates on `device`, in bytes; `None` for other backends.
pub(crate) fn max_buffer_bytes<B: Backend>(device: &B::Device) -> Option<u64> {
    use cubecl::Runtime;
    let device = cast::<B::Device, burn_wgpu::WgpuDevice>(device.clone())?;
    Some(
        WgpuRuntime::client(&device)
            .properties()
            .memory
            .max_page_size,
    )
}

/// Whether `got` matches `want` to `1e-5` relative to `want`'s largest magnitude (at least 1).
fn close(got: &[f32], want: &[f32]) -> bool {
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| (g - w).abs() <= 1e-5 * scale)
}

/// A deterministic test pattern in `[-1, 1)`, with repeats (ties) every 97 entries.
fn pattern(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 37 + seed * 11) % 97) as f32 / 48.5) - 1.0)
        .collect()
}

/// Moves `value` into `U` when it is one (same type); `None` otherwise.
fn cast<T: 'static, U: 'static>(value: T) -> Option<U> {
    let boxed: Box<dyn Any> = Box::new(value);
    boxed.downcast::<U>().ok().map(|b| *b)
}

/// A float tensor as a contiguous `f32` cubecl tensor, with the fusion client that owns it.
fn float_input<B: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Option<(CubeTensor<WgpuRuntime>, Client)> {
    let TensorPrimitive::Float(t) = t.into_primitive() else {
        return None;
    };
    let t: Fused = cast(t)?;
    let client = t.client.clone();
    let t = client.resolve_tensor_float::<Inner>(t);
    (t.dtype == DType::F32).then(|| (into_contiguous(t), client))
}

/// An int tensor as a contiguous `i32` cubecl tensor.
fn int_input<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Option<CubeTensor<WgpuRuntime>> {
    let t: Fused = cast(t.into_primitive())?;
    let client = t.client.clone();
    let t = client.resolve_tensor_int::<Inner>(t);
    (t.dtype == DType::I32).then(|| into_contiguous(t))
}

/// The fusion client that holds an int tensor (where kernel outputs made from it go back).
fn int_client<B: Backend, const D: usize>(t: &Tensor<B, D, Int>) -> Option<Client> {
    let t: Fused = cast(t.clone().into_primitive())?;
    Some(t.client.clone())
}

/// A new, uninitialised device tensor beside `like`.
fn empty(like: &CubeTensor<WgpuRuntime>, shape: Shape, dtype: DType) -> CubeTensor<WgpuRuntime> {
    empty_device_dtype::<WgpuRuntime>(like.client.clone(), like.device.clone(), shape, dtype)
}

/// Hands a kernel output back to the fusion layer as a tensor of its stream.
fn to_fused(client: &Client, t: CubeTensor<WgpuRuntime>) -> Fused {
    let shape = t.meta.shape.clone();
    let dtype = t.dtype;
    let handle = t.into();
    let desc = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
    client
        .register(
            OperationStreams::default(),
            OperationIr::Init(desc),
            NoOp::<Inner>::new(),
        )
        .pop()
        .expect("an init operation has one output")
}

/// A float kernel output as a tensor of `B`.
fn float_output<B: Backend, const D: usize>(
    client: &Client,
    t: CubeTensor<WgpuRuntime>,
) -> Option<Tensor<B, D>> {
    let t = cast::<Fused, B::FloatTensorPrimitive>(to_fused(client, t))?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(t)))
}

/// An int kernel output as a tensor of `B`.
fn int_output<B: Backend, const D: usize>(
    client: &Client,
    t: CubeTensor<WgpuRuntime>,
) -> Option<Tensor<B, D, Int>> {
    let t = cast::<Fused, B::IntTensorPrimitive>(to_fused(client, t))?;
    Some(Tensor::from_primitive(t))
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::{KernelOptions, KernelStatus, Switch, close};

    type Wgpu = burn_wgpu::Wgpu;

    #[test]
    fn a_failed_or_panicking_first_use_check_switches_the_kernel_off() {
        static FAILS: Switch = Switch::new(|o| o.top_k, "failing");
        static PANICS: Switch = Switch::new(|o| o.top_k, "panicking");
        static PASSES: Switch = Switch::new(|o| o.top_k, "passing");
        static OTHER: Switch = Switch::new(|o| o.top_k, "other");
        static OFF: Switch = Switch::new(|o| o.loss, "off");
        let on = KernelOptions::default();

        let mut calls = 0;
        let mut check = |answer| {
            calls += 1;
            answer
        };
        assert_eq!(
            FAILS.status::<Wgpu>(&on, || check(false)),
            KernelStatus::FailedCheck
        );
        // Checked once per process: a later right answer does not switch it back on.
        assert_eq!(
            FAILS.status::<Wgpu>(&on, || check(true)),
            KernelStatus::FailedCheck
        );
        assert_eq!(calls, 1);

        let panics = PANICS.status::<Wgpu>(&on, || panic!("a launch that fails"));
        assert_eq!(panics, KernelStatus::FailedCheck);
        assert_eq!(PASSES.status::<Wgpu>(&on, || true), KernelStatus::Runs);
        // Other backends never run our kernels, nor their checks.
        let other = OTHER.status::<burn_ndarray::NdArray<f32>>(&on, || unreachable!());
        assert_eq!(other, KernelStatus::Unavailable);
        // A kernel the options leave out is switched off, its check never run.
        assert_eq!(
            OFF.status::<Wgpu>(&on, || unreachable!()),
            KernelStatus::SwitchedOff
        );
        let none = KernelOptions::none();
        assert_eq!(
            PASSES.status::<Wgpu>(&none, || unreachable!()),
            KernelStatus::SwitchedOff
        );
    }

    #[test]
    fn close_is_relative_to_the_largest_magnitude() {
        assert!(close(&[100.0, 0.0005], &[100.0, 0.0]));
        assert!(!close(&[100.0, 0.002], &[100.0, 0.0]));
        assert!(!close(&[1.0], &[1.0, 2.0]));
    }
}
