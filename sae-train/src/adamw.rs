//! AdamW with PyTorch's arithmetic (bias-corrected moments, `eps` added after the square root,
//! decoupled weight decay), on the non-autodiff backend. Its moments are plain tensors, so a
//! checkpoint stores them exactly.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Hyper-parameters of one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    /// Learning rate of this step.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the square root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (0 for biases).
    pub weight_decay: f64,
}

/// The two moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend, const D: usize> {
    /// Running mean of the gradient.
    pub exp_avg: Tensor<B, D>,
    /// Running mean of the squared gradient.
    pub exp_avg_sq: Tensor<B, D>,
}

impl<B: Backend, const D: usize> Moments<B, D> {
    /// Zero moments shaped like `param`.
    pub fn zeros_like(param: &Tensor<B, D>) -> Self {
        Moments {
            exp_avg: param.zeros_like(),
            exp_avg_sq: param.zeros_like(),
        }
    }
}

impl AdamW {
    /// The parameter after update number `t` (1-based) with gradient `grad`; updates `moments`.
    pub fn update<B: Backend, const D: usize>(
        &self,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        moments: &mut Moments<B, D>,
        t: u64,
    ) -> Tensor<B, D> {
        let param = if self.weight_decay != 0.0 {
            param.mul_scalar(1.0 - self.lr * self.weight_decay)
        } else {
            param
        };
        moments.exp_avg = moments
            .exp_avg
            .clone()
            .mul_scalar(self.beta1)
            .add(grad.clone().mul_scalar(1.0 - self.beta1));
        moments.exp_avg_sq = moments
            .exp_avg_sq
            .clone()
            .mul_scalar(self.beta2)
            .add(grad.clone().mul(grad).mul_scalar(1.0 - self.beta2));
        let bias1 = 1.0 - self.beta1.powi(t as i32);
        let bias2_sqrt = (1.0 - self.beta2.powi(t as i32)).sqrt();
        let denom = moments
            .exp_avg_sq
            .clone()
            .sqrt()
            .div_scalar(bias2_sqrt)
            .add_scalar(self.eps);
        param.sub(
            moments
                .exp_avg
                .clone()
                .div(denom)
                .mul_scalar(self.lr / bias1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    // Two AdamW steps on p = [1, -2] with gradients [0.5, 0.1] then [-0.2, 0.3], lr 0.1,
    // betas (0.9, 0.999), eps 1e-8, weight decay 0.01, computed by hand from torch.optim.AdamW's
    // documented algorithm (in f64, then compared at f32 precision).
    #[test]
    fn matches_the_adamw_algorithm() {
        let device = Default::default();
        let hp = AdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let t = |v: [f32; 2]| Tensor::<Flex, 1>::from_data(TensorData::from(v), &device);
        let mut p = t([1.0, -2.0]);
        let mut m = Moments::zeros_like(&p);
        let grads = [[0.5f64, 0.1], [-0.2, 0.3]];
        let mut expected = [1.0f64, -2.0];
        let (mut em, mut ev) = ([0.0f64; 2], [0.0f64; 2]);
        for (i, g) in grads.iter().enumerate() {
            let step = i as i32 + 1;
            for j in 0..2 {
                expected[j] *= 1.0 - 0.1 * 0.01;
                em[j] = 0.9 * em[j] + 0.1 * g[j];
                ev[j] = 0.999 * ev[j] + 0.001 * g[j] * g[j];
                let m_hat = em[j] / (1.0 - 0.9f64.powi(step));
                let v_hat = ev[j] / (1.0 - 0.999f64.powi(step));
                expected[j] -= 0.1 * m_hat / (v_hat.sqrt() + 1e-8);
            }
            p = hp.update(p, t([g[0] as f32, g[1] as f32]), &mut m, step as u64);
        }
        let got = p.into_data().to_vec::<f32>().unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((f64::from(*g) - e).abs() < 1e-6, "{g} vs {e}");
        }
    }
}
