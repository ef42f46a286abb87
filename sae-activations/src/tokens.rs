//! Which tokens of a batch count (not padding, not excluded ids, not the first positions), and
//! the rows of a hook output an SAE sees.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use sae_core::{HookKind, HookPoint};
use sae_models::Tokenizer;

/// Which tokens of a batch count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFilter {
    /// Token ids left out (sorted).
    pub excluded: Vec<i64>,
    /// The first this many positions of every sequence are left out (attention sinks: the
    /// first position's activations are often hundreds of times larger than the rest).
    pub skip_first: usize,
}

impl TokenFilter {
    /// Leaves out the ids in `extra`, the tokenizer's special tokens when `special`, and the
    /// first `skip_first` positions.
    pub fn new(tokenizer: &Tokenizer, special: bool, extra: &[i64], skip_first: usize) -> Self {
        let mut excluded = extra.to_vec();
        if special {
            excluded.extend(tokenizer.special_token_ids());
        }
        excluded.sort_unstable();
        excluded.dedup();
        TokenFilter {
            excluded,
            skip_first,
        }
    }

    /// The flat indices of the tokens that count in a `[batch, seq_len]` batch: real (mask 1),
    /// not excluded, not among the first `skip_first` of their sequence.
    pub fn select(&self, input_ids: &[i64], attention_mask: &[i64], seq_len: usize) -> Vec<i64> {
        input_ids
            .iter()
            .zip(attention_mask)
            .enumerate()
            .filter(|&(i, (id, &m))| {
                m != 0 && i % seq_len >= self.skip_first && self.excluded.binary_search(id).is_err()
            })
            .map(|(i, _)| i as i64)
            .collect()
    }
}

/// The rows of hook `point`'s `[batch, seq, d]` output an SAE sees, as f32 `[rows, d]`: the
/// tokens that count (`tokens`) for a language-model hook, every image patch for a vision hook.
pub fn hook_rows<B: Backend>(x: Tensor<B, 3>, point: &HookPoint, tokens: &[i64]) -> Tensor<B, 2> {
    if point.kind == HookKind::Vision {
        let [b, n, d] = x.dims();
        return x.reshape([b * n, d]).cast(DType::F32);
    }
    select_tokens(x, tokens)
}

/// The rows `tokens` of a `[batch, seq, d]` activation, as f32 `[tokens.len(), d]`.
pub fn select_tokens<B: Backend>(x: Tensor<B, 3>, tokens: &[i64]) -> Tensor<B, 2> {
    let [b, t, d] = x.dims();
    let flat = x.reshape([b * t, d]).cast(DType::F32);
    if tokens.len() == b * t {
        return flat;
    }
    let device = flat.device();
    let index =
        Tensor::<B, 1, Int>::from_data(TensorData::new(tokens.to_vec(), [tokens.len()]), &device);
    flat.select(0, index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn padding_excluded_ids_and_first_positions_do_not_count() {
        // Two sequences of 3: the second is padded after one token; id 7 is excluded.
        let ids = [5, 7, 6, 8, 0, 0];
        let mask = [1, 1, 1, 1, 0, 0];
        let filter = TokenFilter {
            excluded: vec![7],
            skip_first: 0,
        };
        let tokens = filter.select(&ids, &mask, 3);
        assert_eq!(tokens, vec![0, 2, 3]);
        let skip = TokenFilter {
            excluded: vec![],
            skip_first: 1,
        };
        assert_eq!(skip.select(&ids, &mask, 3), vec![1, 2]);
        let device = Default::default();
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let x = Tensor::<Flex, 3>::from_data(TensorData::new(values, [2, 3, 2]), &device);
        let rows = select_tokens(x, &tokens)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(rows, vec![0.0, 1.0, 4.0, 5.0, 6.0, 7.0]);
    }
}
