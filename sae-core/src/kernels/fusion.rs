//! [`SaeBackend`] on a fusion backend (the default wgpu and cuda backends): each kernel is
//! registered in the fusion stream as a custom operation, which runs the inner backend's kernel
//! when the stream executes.

use std::marker::PhantomData;

use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Element, Shape};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use super::SaeBackend;

/// Which kernel a custom operation runs.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    /// [`SaeBackend::top_k_rows`] with its `k`.
    TopKRows(usize),
    /// [`SaeBackend::sparse_decode`].
    SparseDecode,
    /// [`SaeBackend::sparse_dot`].
    SparseDot,
    /// [`SaeBackend::sparse_transpose_matmul`].
    SparseTransposeMatmul,
}

impl Kernel {
    /// The operation's name in the stream.
    fn name(self) -> &'static str {
        match self {
            Self::TopKRows(_) => "sae_top_k_rows",
            Self::SparseDecode => "sae_sparse_decode",
            Self::SparseDot => "sae_sparse_dot",
            Self::SparseTransposeMatmul => "sae_sparse_transpose_matmul",
        }
    }
}

/// A kernel of the inner backend `B` as a fusion operation.
#[derive(Debug, Clone)]
struct KernelOp<B> {
    desc: CustomOpIr,
    kernel: Kernel,
    _backend: PhantomData<B>,
}

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

impl<B: FusionBackend + SaeBackend> Operation<B::FusionRuntime> for KernelOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let (inputs, out) = (&self.desc.inputs, &self.desc.outputs[0].id);
        let float = |handles: &mut Handles<B>, i: usize| handles.get_float_tensor::<B>(&inputs[i]);
        let int = |handles: &mut Handles<B>, i: usize| handles.get_int_tensor::<B>(&inputs[i]);
        let result = match self.kernel {
            Kernel::TopKRows(k) => {
                let indices = B::top_k_rows(float(handles, 0), k);
                return handles.register_int_tensor::<B>(out, indices);
            }
            Kernel::SparseDecode => {
                let (values, indices) = (float(handles, 0), int(handles, 1));
                B::sparse_decode(values, indices, float(handles, 2))
            }
            Kernel::SparseDot => {
                let (dense, indices) = (float(handles, 0), int(handles, 1));
                B::sparse_dot(dense, indices, float(handles, 2))
            }
            Kernel::SparseTransposeMatmul => {
                let (coefs, indices) = (float(handles, 0), int(handles, 1));
                let (order, offsets) = (int(handles, 2), int(handles, 3));
                B::sparse_transpose_matmul(coefs, indices, order, offsets, float(handles, 4))
            }
        };
        handles.register_float_tensor::<B>(out, result);
    }
}

/// Registers `kernel` on `inputs` (in the order of its [`SaeBackend`] method) and returns its
/// output tensor, `shape` of `dtype`.
fn register<B: FusionBackend + SaeBackend>(
    kernel: Kernel,
    inputs: Vec<FusionTensor<B::FusionRuntime>>,
    shape: [usize; 2],
    dtype: DType,
) -> FusionTensor<B::FusionRuntime> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(&inputs);
    let out = TensorIr::uninit(client.create_empty_handle(), Shape::from(shape), dtype);
    let inputs: Vec<TensorIr> = inputs.into_iter().map(FusionTensor::into_ir).collect();
    let desc = CustomOpIr::new(kernel.name(), &inputs, &[out]);
    let op = KernelOp::<B> {
        desc: desc.clone(),
        kernel,
        _backend: PhantomData,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .output()
}

impl<B: FusionBackend + SaeBackend> SaeBackend for Fusion<B> {
    const DEVICE_SELECT: bool = B::DEVICE_SELECT;

    fn top_k_rows(values: FloatTensor<Self>, k: usize) -> IntTensor<Self> {
        let shape = [values.shape[0], k];
        register::<B>(
            Kernel::TopKRows(k),
            vec![values],
            shape,
            B::IntElem::dtype(),
        )
    }

    fn sparse_decode(
        values: FloatTensor<Self>,
        indices: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = [values.shape[0], weights.shape[1]];
        let dtype = values.dtype;
        register::<B>(
            Kernel::SparseDecode,
            vec![values, indices, weights],
            shape,
            dtype,
        )
    }

    fn sparse_dot(
        dense: FloatTensor<Self>,
        indices: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = [indices.shape[0], indices.shape[1]];
        let dtype = dense.dtype;
        register::<B>(
            Kernel::SparseDot,
            vec![dense, indices, weights],
            shape,
            dtype,
        )
    }

    fn sparse_transpose_matmul(
        coefs: FloatTensor<Self>,
        indices: IntTensor<Self>,
        order: IntTensor<Self>,
        offsets: IntTensor<Self>,
        dense: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = [offsets.shape[0] - 1, dense.shape[1]];
        let dtype = dense.dtype;
        let inputs = vec![coefs, indices, order, offsets, dense];
        register::<B>(Kernel::SparseTransposeMatmul, inputs, shape, dtype)
    }
}
