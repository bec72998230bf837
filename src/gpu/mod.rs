//! Our cubecl kernels for burn-wgpu, behind the generic API: the row-wise top-k ([`topk`]) and
//! the grouped row sums of the sparse decode and gradient ([`sparse`]).
//!
//! Each is used only when the backend's tensors are burn-wgpu's (`Fusion<CubeBackend<WgpuRuntime,
//! f32, i32, _>>`, the `backend::Wgpu` this crate exports), checked by `TypeId`; for any other
//! backend the callers run burn's tensor operations (or the host top-k) instead. The tensors are
//! resolved to cubecl tensors (which flushes the fusion queue), the kernel is launched, and its
//! outputs are registered back with the fusion client (an `Init` operation), all in safe code.

pub(crate) mod sparse;
pub(crate) mod topk;

use std::any::{Any, TypeId};

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

/// burn-wgpu's inner backend (before fusion), for every element type we accept.
type Inner = CubeBackend<WgpuRuntime, f32, i32, u32>;
/// A burn-wgpu tensor as the fusion layer holds it.
type Fused = FusionTensor<FusionCubeRuntime<WgpuRuntime>>;
/// The fusion layer's client, which takes our kernels' outputs back.
type Client = GlobalFusionClient<FusionCubeRuntime<WgpuRuntime>>;

/// Whether `B`'s tensors are burn-wgpu's and the kernel is not switched off by `var=0`.
fn enabled<B: Backend>(switch: &'static std::sync::OnceLock<bool>, var: &str) -> bool {
    *switch.get_or_init(|| std::env::var(var).map_or(true, |v| v != "0"))
        && TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<Fused>()
        && TypeId::of::<B::IntTensorPrimitive>() == TypeId::of::<Fused>()
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
