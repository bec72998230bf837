//! Read-backs issued at once and collected later: the device copies the tensors to host-visible
//! memory as soon as the work before them is done, while the host goes on (uploading the next
//! chunk of a corpus, say); collecting then waits only for that copy.
//!
//! burn's own read-back (`Tensor::into_data`) is lazy: nothing is copied until it is awaited,
//! and then the copy is queued behind every operation registered since, so a read of chunk `i`
//! issued after chunk `i + 1` was queued waits for chunk `i + 1` too. cubecl's client issues a
//! read when it is called and returns a future for the bytes; [`issue`] calls it (through one
//! poll of an `async` block that owns the client) and keeps the future.
//!
//! While an issued read is outstanding, cubecl's polling thread waits on the device's latest
//! submission, and wgpu holds a lock across that wait that a new submission needs: a
//! submission made then waits for the device to finish the work before it.
//!
//! Where it is used ([`issued_for`]): corpus encoding and evaluation issue each chunk's read
//! (with `KernelOptions::issued_reads`, the default); they collect it before they issue the
//! next one, and queue between the two only the next chunk's upload and its few launches. A
//! queued training step issues its read only with `KernelOptions::issued_step_reads`: the next
//! step, built while that read is outstanding, submits its work in several pieces, each of
//! which would wait for the device as above; whether that costs more than the read saves is
//! for a GPU to tell.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Shape, Tensor, TensorData};
use burn_cubecl::tensor::CubeTensor;
use burn_wgpu::WgpuRuntime;
use cubecl::bytes::Bytes;
use cubecl::server::{CopyDescriptor, ServerError};

use super::{float_input, int_input};
use crate::ops::engine::{Engine, KernelOptions};
use crate::ops::transfer::ReadFor;

/// Whether reads for `what` are issued at once: a corpus chunk's with
/// [`KernelOptions::issued_reads`], a training step's with [`KernelOptions::issued_step_reads`].
pub(crate) fn issued_for(options: &KernelOptions, what: ReadFor) -> bool {
    match what {
        ReadFor::Chunk => options.issued_reads,
        ReadFor::Step => options.issued_step_reads,
    }
}

/// Tensors [`issue`] hands back unread: the floats, then the ints.
pub(crate) type Unread<B, const D: usize> = (Vec<Tensor<B, D>>, Vec<Tensor<B, D, Int>>);

/// The bytes of the issued copies, in order.
type Copies = Result<Vec<Bytes>, ServerError>;

/// Copies of device tensors to the host, issued by [`issue`].
pub(crate) struct Issued {
    /// `Ready` once the copies are done and collected by an earlier poll.
    state: Poll<Copies>,
    future: Pin<Box<dyn Future<Output = Copies> + Send>>,
    /// Each tensor's shape and element type, in order.
    layouts: Vec<(Shape, DType)>,
    /// How many of the tensors are floats (they come first).
    floats_n: usize,
}

impl Issued {
    /// Waits for the copies and returns the data of the floats and of the ints, each in the
    /// order given to [`issue`].
    ///
    /// # Panics
    /// If the device reports an error for the copy (as burn's `into_data` does).
    pub(crate) fn collect(self) -> (Vec<TensorData>, Vec<TensorData>) {
        let bytes = match self.state {
            Poll::Ready(copies) => copies,
            Poll::Pending => cubecl::future::block_on(self.future),
        }
        .unwrap_or_else(|e| panic!("reading tensors back from the GPU failed: {e}"));
        let mut floats: Vec<TensorData> = bytes
            .into_iter()
            .zip(self.layouts)
            .map(|(bytes, (shape, dtype))| TensorData::from_bytes(bytes, shape, dtype))
            .collect();
        let ints = floats.split_off(self.floats_n);
        (floats, ints)
    }
}

/// Issues copies of `floats` and then `ints` (all on the same burn-wgpu device) to the host
/// now. Hands the tensors back unread when they are not burn-wgpu's, or there are none.
pub(crate) fn issue<B: Backend, const D: usize>(
    floats: Vec<Tensor<B, D>>,
    ints: Vec<Tensor<B, D, Int>>,
) -> Result<Issued, Unread<B, D>> {
    if Engine::of::<B>() != Engine::Wgpu
        || floats.is_empty() && ints.is_empty()
        || floats.iter().any(|t| t.dtype() != DType::F32)
        || ints.iter().any(|t| t.dtype() != DType::I32)
    {
        return Err((floats, ints));
    }
    let floats_n = floats.len();
    // Resolved to contiguous cubecl tensors (the types and element types are checked above).
    let mut tensors: Vec<CubeTensor<WgpuRuntime>> = Vec::with_capacity(floats_n + ints.len());
    for t in floats {
        tensors.push(float_input(t).expect("checked: burn-wgpu's f32 tensors").0);
    }
    for t in ints {
        tensors.push(int_input(t).expect("checked: burn-wgpu's i32 tensors"));
    }
    let client = tensors[0].client.clone();
    let mut layouts = Vec::with_capacity(tensors.len());
    let descriptors: Vec<CopyDescriptor> = tensors
        .into_iter()
        .map(|t| {
            let elem_size = t.elem_size();
            layouts.push((t.meta.shape().clone(), t.dtype));
            let (shape, strides) = (t.meta.shape().clone(), t.meta.strides().clone());
            CopyDescriptor::new(t.handle.binding(), shape, strides, elem_size)
        })
        .collect();
    let mut future: Pin<Box<dyn Future<Output = Copies> + Send>> =
        Box::pin(async move { client.read_tensor_async(descriptors).await });
    // The first poll runs the block up to its first wait: the read is issued there.
    let state = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    Ok(Issued {
        state,
        future,
        layouts,
        floats_n,
    })
}

#[cfg(all(test, feature = "test-wgpu"))]
mod tests {
    use burn::tensor::{Int, Tensor, TensorData};

    type B = burn_wgpu::Wgpu;

    #[test]
    fn issued_reads_return_the_tensors_written_after_them_unchanged() {
        let device = Default::default();
        let floats: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let ints: Vec<i32> = (0..12).map(|i| 100 - i).collect();
        let f = Tensor::<B, 2>::from_data(TensorData::new(floats.clone(), [3, 4]), &device);
        let i = Tensor::<B, 2, Int>::from_data(TensorData::new(ints.clone(), [3, 4]), &device);
        // A lazy operation on the way, so the read has a queue to flush first.
        let doubled = f.clone().mul_scalar(2.0);
        let Ok(issued) = super::issue(vec![doubled, f], vec![i]) else {
            panic!("burn-wgpu's tensors were not read");
        };
        // The tensors read are dropped: work queued after the read, which may reuse their
        // memory, must not show in what it returns.
        let later: Vec<Tensor<B, 2>> = (0..8)
            .map(|s| {
                let t =
                    Tensor::<B, 2>::from_data(TensorData::new(vec![7.0f32; 12], [3, 4]), &device);
                t.add_scalar(s as f32)
            })
            .collect();
        let later_ints = Tensor::<B, 2, Int>::zeros([3, 4], &device).add_scalar(5);
        let (got, got_ints) = issued.collect();
        assert_eq!((got.len(), got_ints.len()), (2, 1));
        assert_eq!(got[0].shape, [3, 4].into());
        let want_doubled: Vec<f32> = floats.iter().map(|v| v * 2.0).collect();
        assert_eq!(got[0].to_vec::<f32>().unwrap(), want_doubled);
        assert_eq!(got[1].to_vec::<f32>().unwrap(), floats);
        assert_eq!(got_ints[0].to_vec::<i32>().unwrap(), ints);
        // And the later work ran as queued.
        assert_eq!(
            later[3].clone().into_data().to_vec::<f32>().unwrap(),
            vec![10.0; 12]
        );
        assert_eq!(later_ints.into_data().to_vec::<i32>().unwrap(), vec![5; 12]);
    }

    #[test]
    fn other_backends_issue_nothing() {
        let device = Default::default();
        let t = Tensor::<burn_ndarray::NdArray<f32>, 1>::zeros([3], &device);
        assert!(super::issue(vec![t], vec![]).is_err());
    }
}
