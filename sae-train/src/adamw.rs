//! AdamW with PyTorch's arithmetic (bias-corrected moments, `eps` added after the square root,
//! decoupled weight decay): one fused pass over host buffers, or tensor operations on the
//! device ([`Storage::adamw`]). A checkpoint stores the moments exactly.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use rayon::prelude::*;
use sae_core::Params;

use crate::storage::Storage;

/// Elements per parallel work item of an update.
const CHUNK: usize = 1 << 14;

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

/// The two moments of every parameter of an SAE, on the host (`T = Vec<f32>`) or the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments<T = Vec<f32>> {
    /// Running mean of the gradient.
    pub exp_avg: Params<T>,
    /// Running mean of the squared gradient.
    pub exp_avg_sq: Params<T>,
}

impl<T: Storage> Moments<T> {
    /// Zero moments shaped like `params`.
    pub fn zeros_like(params: &Params<T>) -> Self {
        Moments {
            exp_avg: params.map(Storage::zeros_like),
            exp_avg_sq: params.map(Storage::zeros_like),
        }
    }
}

impl Moments {
    /// A copy on `device`.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> Moments<Tensor<B, 1>> {
        Moments {
            exp_avg: self.exp_avg.to_device(device),
            exp_avg_sq: self.exp_avg_sq.to_device(device),
        }
    }
}

impl<B: Backend> Moments<Tensor<B, 1>> {
    /// A copy on the host.
    pub fn to_host(&self) -> Moments {
        Moments {
            exp_avg: self.exp_avg.to_host(),
            exp_avg_sq: self.exp_avg_sq.to_host(),
        }
    }
}

/// The f32 constants of update number `t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coefficients {
    /// `1 - lr weight_decay`, applied to the parameter first.
    pub decay: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// `1 - beta1`.
    pub one_m_beta1: f32,
    /// `1 - beta2`.
    pub one_m_beta2: f32,
    /// `sqrt(1 - beta2^t)`, the second moment's bias correction.
    pub bias2_sqrt: f32,
    /// `lr / (1 - beta1^t)`, the step with the first moment's bias correction.
    pub step_size: f32,
    /// Added to the corrected root of the second moment.
    pub eps: f32,
}

impl AdamW {
    /// The constants of update number `t` (1-based), computed in f64 as PyTorch does.
    pub fn coefficients(&self, t: u64) -> Coefficients {
        Coefficients {
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            one_m_beta1: (1.0 - self.beta1) as f32,
            one_m_beta2: (1.0 - self.beta2) as f32,
            bias2_sqrt: (1.0 - self.beta2.powi(t as i32)).sqrt() as f32,
            step_size: (self.lr / (1.0 - self.beta1.powi(t as i32))) as f32,
            eps: self.eps as f32,
        }
    }

    /// Update number `t` (1-based) of `param` with gradient `grad`, in place, moments included;
    /// `grad` is left at zero, ready to accumulate the next step's (in the same pass).
    pub fn update(
        &self,
        param: &mut [f32],
        grad: &mut [f32],
        exp_avg: &mut [f32],
        exp_avg_sq: &mut [f32],
        t: u64,
    ) {
        let Coefficients {
            decay,
            beta1,
            beta2,
            one_m_beta1,
            one_m_beta2,
            bias2_sqrt,
            step_size,
            eps,
        } = self.coefficients(t);
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks_mut(CHUNK))
            .zip(exp_avg.par_chunks_mut(CHUNK))
            .zip(exp_avg_sq.par_chunks_mut(CHUNK))
            .for_each(move |(((p, g), m), v)| {
                // Indexed over equal lengths, without branches: the loop vectorises.
                let n = p.len();
                let (g, m, v) = (&mut g[..n], &mut m[..n], &mut v[..n]);
                for i in 0..n {
                    let grad = g[i];
                    g[i] = 0.0;
                    m[i] = m[i] * beta1 + grad * one_m_beta1;
                    v[i] = v[i] * beta2 + grad * grad * one_m_beta2;
                    let denom = v[i].sqrt() / bias2_sqrt + eps;
                    p[i] = p[i] * decay - m[i] / denom * step_size;
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two AdamW steps on p = [1, -2] with gradients [0.5, 0.1] then [-0.2, 0.3], lr 0.1,
    // betas (0.9, 0.999), eps 1e-8, weight decay 0.01, computed by hand from torch.optim.AdamW's
    // documented algorithm (in f64, then compared at f32 precision).
    #[test]
    fn matches_the_adamw_algorithm() {
        let hp = AdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut p = [1.0f32, -2.0];
        let (mut m, mut v) = ([0.0f32; 2], [0.0f32; 2]);
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
            let mut g32 = [g[0] as f32, g[1] as f32];
            hp.update(&mut p, &mut g32, &mut m, &mut v, step as u64);
            assert_eq!(g32, [0.0; 2], "the gradient is consumed");
        }
        for (g, e) in p.iter().zip(expected) {
            assert!((f64::from(*g) - e).abs() < 1e-6, "{g} vs {e}");
        }
    }
}
