//! The hook tap every model's forward pass goes through: calls the hooks at a module boundary
//! and ends the pass early after the last module anyone needs.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use sae_core::Hooks;

/// The forward pass stopped early because nothing later was needed.
#[derive(Debug)]
pub(crate) struct Stopped;

/// Calls hooks and reports when the pass may stop.
pub(crate) struct Tap<'a, B: Backend> {
    pub(crate) hooks: &'a mut dyn Hooks<B>,
}

impl<B: Backend> Tap<'_, B> {
    pub(crate) fn call(&mut self, path: &str, x: Tensor<B, 3>) -> Result<Tensor<B, 3>, Stopped> {
        let y = self.hooks.call(path, x);
        if self.hooks.stop_after() == Some(path) {
            return Err(Stopped);
        }
        Ok(y)
    }
}

/// `x W + b` for `[batch, tokens, in]` inputs, as one 2-D matmul over all tokens (Burn's
/// broadcasting batched matmul is several times slower on the CPU backends). The weight is a
/// transposed view of the stored `[out, in]` matrix (see
/// [`Weights::linear`](crate::weights::Weights::linear)).
pub(crate) fn linear<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    per_token(x, layer.bias.as_ref(), |x| {
        times_transposed(x, layer.weight.val().transpose())
    })
}

/// `times(x) + b` for `[batch, tokens, in]` inputs, `times` taking every token at once as
/// `[batch x tokens, in]` (a projection's `x W`).
pub(crate) fn per_token<B: Backend>(
    x: Tensor<B, 3>,
    bias: Option<&Param<Tensor<B, 1>>>,
    times: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let y = times(x.reshape([b * t, d]));
    let y = match bias {
        Some(bias) => y + bias.val().unsqueeze_dim(0),
        None => y,
    };
    let out = y.dims()[1];
    y.reshape([b, t, out])
}

/// `x W^T` for `x [n, in]` and a row-major `W [out, in]` (a linear layer's stored weight, a tied
/// embedding table), computed as `(W x^T)^T` so that `W` is the operand in its own layout: a
/// backend that copies strided operands (flex's bf16 matmul) then copies only the small `x^T`.
pub(crate) fn times_transposed<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    w.matmul(x.transpose()).transpose()
}
