//! What the optimiser step does to one parameter, on either storage: a host buffer (the CPU
//! backends, where the trainer's loops are fastest) or a flat device tensor (the GPU backends,
//! where parameters, gradients and moments stay on the device between steps). The trainer's
//! step is written once over [`Storage`].

use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use rayon::prelude::*;
use sae_core::reduce::{dot, norm_sq};

use crate::adamw::AdamW;

/// One parameter (or its gradient or moment), row-major, `d` values per row for the matrices.
pub trait Storage: Sized {
    /// Zeros of the same length, on the same device.
    fn zeros_like(&self) -> Self;
    /// The sum of squares (on the host one f32 partial sum per row of `d`, added in f64 in
    /// order: the same total on any thread count).
    fn norm_sq(&self, d: usize) -> f64;
    /// Multiplies every value by `factor`.
    fn scale(&mut self, factor: f32);
    /// Raises every value below `min` to `min`.
    fn clamp_min(&mut self, min: f32);
    /// Removes from each row its component along the same (unit) row of `w`.
    fn remove_parallel_component(&mut self, w: &Self, d: usize);
    /// Divides each row by (its L2 norm + eps), as sparsify normalises decoder rows.
    fn unit_norm_rows(&mut self, d: usize);
    /// AdamW's update number `t` of `self` with `grad`, moments included; `grad` is left at
    /// zero, ready to accumulate the next step's.
    fn adamw(&mut self, grad: &mut Self, moments: (&mut Self, &mut Self), hp: &AdamW, t: u64);
    /// Adds `other` value by value.
    fn add(&mut self, other: &Self);
    /// How many values.
    fn count(&self) -> usize;
    /// The values `range`, in the same storage.
    fn range(&self, range: Range<usize>) -> Self;
    /// The values, on the host (for the collectives, which run on the host).
    fn to_vec(&self) -> Vec<f32>;
    /// `values` in the storage of `self` (on its device).
    fn like(&self, values: Vec<f32>) -> Self;
    /// The values themselves when they are on the host (the collectives then need no copy).
    fn as_host(&self) -> Option<&[f32]>;
    /// The same, mutable.
    fn as_host_mut(&mut self) -> Option<&mut [f32]>;
    /// Sets every value to 0.
    fn fill_zero(&mut self);
}

impl Storage for Vec<f32> {
    fn zeros_like(&self) -> Self {
        vec![0.0; self.len()]
    }

    fn norm_sq(&self, d: usize) -> f64 {
        let rows: Vec<f64> = self
            .par_chunks(d)
            .map(|row| f64::from(norm_sq(row)))
            .collect();
        rows.into_iter().sum()
    }

    fn scale(&mut self, factor: f32) {
        self.iter_mut().for_each(|v| *v *= factor);
    }

    fn clamp_min(&mut self, min: f32) {
        self.iter_mut().for_each(|v| *v = v.max(min));
    }

    fn remove_parallel_component(&mut self, w: &Self, d: usize) {
        self.par_chunks_mut(d)
            .zip(w.par_chunks(d))
            .for_each(|(g, w)| {
                let along = dot(g, w);
                g.iter_mut().zip(w).for_each(|(g, w)| *g -= w * along);
            });
    }

    fn unit_norm_rows(&mut self, d: usize) {
        self.par_chunks_mut(d).for_each(|row| {
            let norm = norm_sq(row).sqrt() + f32::EPSILON;
            row.iter_mut().for_each(|v| *v /= norm);
        });
    }

    fn adamw(&mut self, grad: &mut Self, (m, v): (&mut Self, &mut Self), hp: &AdamW, t: u64) {
        hp.update(self, grad, m, v, t);
    }

    fn add(&mut self, other: &Self) {
        self.iter_mut().zip(other).for_each(|(a, b)| *a += b);
    }

    fn count(&self) -> usize {
        self.len()
    }

    fn range(&self, range: Range<usize>) -> Self {
        self[range].to_vec()
    }

    fn to_vec(&self) -> Vec<f32> {
        self.clone()
    }

    fn like(&self, values: Vec<f32>) -> Self {
        values
    }

    fn as_host(&self) -> Option<&[f32]> {
        Some(self)
    }

    fn as_host_mut(&mut self) -> Option<&mut [f32]> {
        Some(self)
    }

    fn fill_zero(&mut self) {
        self.fill(0.0);
    }
}

impl<B: Backend> Storage for Tensor<B, 1> {
    fn zeros_like(&self) -> Self {
        Tensor::zeros_like(self)
    }

    fn norm_sq(&self, _d: usize) -> f64 {
        f64::from(self.clone().square().sum().into_scalar().elem::<f32>())
    }

    fn scale(&mut self, factor: f32) {
        *self = self.clone().mul_scalar(factor);
    }

    fn clamp_min(&mut self, min: f32) {
        *self = self.clone().clamp_min(min);
    }

    fn remove_parallel_component(&mut self, w: &Self, d: usize) {
        let (g, w) = (rows(self.clone(), d), rows(w.clone(), d));
        let along = (g.clone() * w.clone()).sum_dim(1);
        *self = (g - w * along).flatten(0, 1);
    }

    fn unit_norm_rows(&mut self, d: usize) {
        *self = sae_core::sae::unit_norm_rows(rows(self.clone(), d)).flatten(0, 1);
    }

    fn adamw(&mut self, grad: &mut Self, (m, v): (&mut Self, &mut Self), hp: &AdamW, t: u64) {
        let c = hp.coefficients(t);
        let g = std::mem::replace(grad, Tensor::zeros_like(grad));
        *m = m.clone().mul_scalar(c.beta1) + g.clone().mul_scalar(c.one_m_beta1);
        *v = v.clone().mul_scalar(c.beta2) + g.square().mul_scalar(c.one_m_beta2);
        let denom = v.clone().sqrt().div_scalar(c.bias2_sqrt).add_scalar(c.eps);
        let step = m.clone().div(denom).mul_scalar(c.step_size);
        *self = self.clone().mul_scalar(c.decay) - step;
    }

    fn add(&mut self, other: &Self) {
        *self = self.clone() + other.clone();
    }

    fn count(&self) -> usize {
        self.dims()[0]
    }

    fn range(&self, range: Range<usize>) -> Self {
        self.clone().slice(range)
    }

    fn to_vec(&self) -> Vec<f32> {
        sae_core::host::to_host(self.clone())
    }

    fn like(&self, values: Vec<f32>) -> Self {
        let n = values.len();
        Tensor::from_data(burn::tensor::TensorData::new(values, [n]), &self.device())
    }

    fn as_host(&self) -> Option<&[f32]> {
        None
    }

    fn as_host_mut(&mut self) -> Option<&mut [f32]> {
        None
    }

    fn fill_zero(&mut self) {
        *self = Tensor::zeros_like(self);
    }
}

/// A flat tensor as `[len / d, d]` rows.
fn rows<B: Backend>(t: Tensor<B, 1>, d: usize) -> Tensor<B, 2> {
    let n = t.dims()[0];
    t.reshape([n / d, d])
}
