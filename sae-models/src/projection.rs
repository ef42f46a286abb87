//! A linear projection whose weight a process holds, or, under ZeRO-3, shares with the other
//! ranks of its job ([`crate::shard`]): the projection then runs by each rank's slice of the
//! weight in turn (each exchanged when it is needed and dropped after), so a rank holds its
//! own slices and one slice of the matrix that runs.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::tap::{linear, per_token};
use crate::weights::Weights;

/// `x W^T + b`, with `W [d_out, d_in]` held, or shared between ranks.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// The layer, when this process holds its weight.
    held: Option<Linear<B>>,
    /// The bias of a shared weight (every rank keeps it whole).
    bias: Option<Param<Tensor<B, 1>>>,
    /// Where a shared weight is gathered from.
    #[module(skip)]
    shared: Option<Shared>,
}

/// A weight matrix shared between ranks.
#[derive(Clone)]
struct Shared {
    weights: Weights,
    name: String,
    /// `[d_out, d_in]`.
    shape: [usize; 2],
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shared({} {:?})", self.name, self.shape)
    }
}

/// What a failed exchange of weight slices means inside a forward pass: the job is being torn
/// down (an MPI failure aborts every rank), so the pass cannot go on.
pub(crate) const TORN_DOWN: &str = "the ranks stopped exchanging the model's weight slices";

impl<B: Backend> Projection<B> {
    /// A projection by a layer this process holds.
    pub fn held(layer: Linear<B>) -> Self {
        Projection {
            held: Some(layer),
            bias: None,
            shared: None,
        }
    }

    /// A projection by the weight `name` of `[d_out, d_in]` in `weights`, which share it
    /// between ranks, and `bias`.
    pub(crate) fn shared(
        weights: &Weights,
        name: String,
        shape: [usize; 2],
        bias: Option<Tensor<B, 1>>,
    ) -> Self {
        Projection {
            held: None,
            bias: bias.map(Param::from_tensor),
            shared: Some(Shared {
                weights: weights.clone(),
                name,
                shape,
            }),
        }
    }

    /// The projection of `[batch, tokens, d_in]` inputs.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match (&self.held, &self.shared) {
            (Some(layer), _) => linear(layer, x),
            (None, Some(shared)) => per_token(x, self.bias.as_ref(), |x| {
                // Rank r's slice W_r holds rows of W (output features): (W x^T)^T is the
                // rows W_r x^T of every rank, stacked, then transposed.
                let xt = x.transpose();
                let mut rows = Vec::new();
                (shared.weights)
                    .each_slice::<B>(&shared.name, shared.shape, &xt.device(), |w| {
                        rows.push(w.matmul(xt.clone()))
                    })
                    .expect(TORN_DOWN);
                Tensor::cat(rows, 0).transpose()
            }),
            (None, None) => unreachable!("a projection holds its weight or shares it"),
        }
    }
}
