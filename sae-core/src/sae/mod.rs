//! The sparse autoencoder module: encode (select latents, then compute only the selected
//! activations), sparse decode (gather the selected decoder rows; on the GPU backends one dense
//! matmul), and the training losses.
//!
//! Math, with `x` the activation and `W_enc`, `W_dec` both `[num_latents, d_in]`:
//! `pre = W_enc (x - b_dec) + b_enc` (optionally ReLU'd), keep a set `S` of latents per token
//! (top-k, batch top-k, threshold or all positive), `x_hat = sum_{i in S} pre_i W_dec[i] + b_dec`.

use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::config::{Architecture, SaeConfig};
pub mod device_grad;
pub mod device_select;
pub mod host_grad;
pub mod params;
pub mod share;

use self::device_select::PreActivations;
use self::share::BatchShare;
use crate::error::{Result, SaeError};
use crate::host::to_host;
use crate::kernels::reference::scatter_rows;
use crate::kernels::{SaeBackend, sparse_decode};
use crate::select::{self, Selection};

/// A sparse autoencoder attached to one activation of width `d_in`.
#[derive(Module, Debug)]
pub struct Sae<B: Backend> {
    /// Encoder, `[num_latents, d_in]` (sparsify's `encoder.weight`).
    pub w_enc: Param<Tensor<B, 2>>,
    /// Encoder bias, `[num_latents]`, when the configuration has one.
    pub b_enc: Option<Param<Tensor<B, 1>>>,
    /// Decoder, `[num_latents, d_in]`: row `i` is latent `i`'s direction.
    pub w_dec: Param<Tensor<B, 2>>,
    /// Decoder bias, `[d_in]`, also subtracted from the input before encoding.
    pub b_dec: Param<Tensor<B, 1>>,
    /// Per-latent thresholds, `[num_latents]` (JumpReLU only).
    pub threshold: Option<Param<Tensor<B, 1>>>,
    /// What this SAE is.
    #[module(skip)]
    pub config: SaeConfig,
}

/// The active latents of each token: `values[n, j]` is the activation of latent
/// `indices[n, j]`; padded slots have value 0.
#[derive(Debug, Clone)]
pub struct SparseLatents<B: Backend> {
    /// Activations, `[tokens, width]`.
    pub values: Tensor<B, 2>,
    /// Latent indices, `[tokens, width]`.
    pub indices: Tensor<B, 2, Int>,
}

/// Everything one forward pass of an SAE gives.
#[derive(Debug, Clone)]
pub struct SaeOutput<B: Backend> {
    /// The selected latents.
    pub latents: SparseLatents<B>,
    /// The reconstruction, `[tokens, d_in]`.
    pub reconstruction: Tensor<B, 2>,
    /// Fraction of variance unexplained: `sum((x - x_hat)^2) / sum((x - mean_0(x))^2)`.
    pub fvu: Tensor<B, 1>,
    /// AuxK loss (dead latents predicting the residual), when a dead mask was given.
    pub auxk_loss: Option<Tensor<B, 1>>,
    /// FVU of the top-`4k` reconstruction, when `multi_topk` is on.
    pub multi_topk_fvu: Option<Tensor<B, 1>>,
    /// Mean over tokens of `sum_i f_i ||W_dec[i]||` (ReLU architecture).
    pub l1_loss: Option<Tensor<B, 1>>,
    /// Mean over tokens of the number of active latents, with a straight-through gradient to
    /// the thresholds (JumpReLU architecture).
    pub l0_loss: Option<Tensor<B, 1>>,
}

impl<B: Backend> SaeOutput<B> {
    /// The training objective: `fvu + aux_k_alpha auxk + multi_topk_fvu / 8 + l1_coefficient l1
    /// + l0_coefficient l0`.
    pub fn loss(&self, config: &SaeConfig) -> Tensor<B, 1> {
        let mut loss = self.fvu.clone();
        if let Some(auxk) = &self.auxk_loss {
            loss = loss + auxk.clone().mul_scalar(config.aux_k_alpha);
        }
        if let Some(mt) = &self.multi_topk_fvu {
            loss = loss + mt.clone().div_scalar(8.0);
        }
        if let Some(l1) = &self.l1_loss {
            loss = loss + l1.clone().mul_scalar(config.l1_coefficient);
        }
        if let Some(l0) = &self.l0_loss {
            loss = loss + l0.clone().mul_scalar(config.l0_coefficient);
        }
        loss
    }
}

impl<B: SaeBackend> Sae<B> {
    /// A freshly initialised SAE: the encoder as torch's `nn.Linear` (uniform in
    /// `±1/sqrt(d_in)`), the decoder a copy of it (unit-normed if configured), biases zero.
    pub fn new(d_in: usize, config: SaeConfig, device: &B::Device) -> Result<Self> {
        config.validate(d_in)?;
        let latents = config.latents_for(d_in);
        let bound = 1.0 / (d_in as f64).sqrt();
        let w_enc = Tensor::random(
            [latents, d_in],
            Distribution::Uniform(-bound, bound),
            device,
        );
        let w_dec = w_enc.clone();
        let b_enc = config
            .encoder_bias
            .then(|| Tensor::zeros([latents], device));
        let threshold = (config.architecture == Architecture::JumpRelu)
            .then(|| Tensor::full([latents], config.jumprelu_init_threshold, device));
        let sae = Self::from_tensors(
            config,
            w_enc,
            b_enc,
            w_dec,
            Tensor::zeros([d_in], device),
            threshold,
        )?;
        Ok(if sae.config.normalize_decoder {
            sae.with_unit_norm_decoder()
        } else {
            sae
        })
    }

    /// Builds an SAE from its tensors, checking every shape against the configuration.
    pub fn from_tensors(
        config: SaeConfig,
        w_enc: Tensor<B, 2>,
        b_enc: Option<Tensor<B, 1>>,
        w_dec: Tensor<B, 2>,
        b_dec: Tensor<B, 1>,
        threshold: Option<Tensor<B, 1>>,
    ) -> Result<Self> {
        let [latents, d_in] = w_enc.dims();
        if latents == 0 {
            return Err(SaeError::InvalidConfig(
                "W_enc has no rows: the SAE has no latents".into(),
            ));
        }
        let check = |name: &str, got: Vec<usize>, expected: Vec<usize>| {
            if got == expected {
                Ok(())
            } else {
                Err(SaeError::InvalidConfig(format!(
                    "{name} has shape {got:?}, expected {expected:?}"
                )))
            }
        };
        if config.num_latents != 0 {
            check("W_enc", vec![latents, d_in], vec![config.num_latents, d_in])?;
        }
        check("W_dec", w_dec.dims().to_vec(), vec![latents, d_in])?;
        check("b_dec", b_dec.dims().to_vec(), vec![d_in])?;
        if let Some(b) = &b_enc {
            check("b_enc", b.dims().to_vec(), vec![latents])?;
        }
        if let Some(t) = &threshold {
            check("threshold", t.dims().to_vec(), vec![latents])?;
        }
        if config.encoder_bias != b_enc.is_some() {
            return Err(SaeError::InvalidConfig(format!(
                "encoder_bias is {} but the encoder bias is {}",
                config.encoder_bias,
                if b_enc.is_some() { "present" } else { "absent" }
            )));
        }
        if (config.architecture == Architecture::JumpRelu) != threshold.is_some() {
            return Err(SaeError::InvalidConfig(
                "a threshold tensor is needed by, and only by, JumpReLU".into(),
            ));
        }
        // `k` and the like are checked against the latents the tensors hold.
        let config = SaeConfig {
            num_latents: latents,
            ..config
        };
        config.validate(d_in)?;
        Ok(Sae {
            w_enc: Param::from_tensor(w_enc),
            b_enc: b_enc.map(Param::from_tensor),
            w_dec: Param::from_tensor(w_dec),
            b_dec: Param::from_tensor(b_dec),
            threshold: threshold.map(Param::from_tensor),
            config,
        })
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.w_enc.dims()[1]
    }

    /// Dictionary size.
    pub fn num_latents(&self) -> usize {
        self.w_enc.dims()[0]
    }

    /// The same SAE with each decoder row divided by `(its norm + eps)`, as sparsify does.
    pub fn with_unit_norm_decoder(mut self) -> Self {
        self.w_dec = self.w_dec.map(unit_norm_rows);
        self
    }

    /// Checks that `x` is `[tokens, d_in]`.
    pub(crate) fn check_width(&self, x: &Tensor<B, 2>) -> Result<()> {
        let got = x.dims()[1];
        if got != self.d_in() {
            return Err(SaeError::WidthMismatch {
                expected: self.d_in(),
                got,
            });
        }
        Ok(())
    }

    /// `x - b_dec`.
    pub(crate) fn center(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x - self.b_dec.val().unsqueeze_dim(0)
    }

    /// Dense pre-activations `[tokens, num_latents]` (ReLU'd if configured), differentiable.
    fn dense_pre_activations(&self, x_c: Tensor<B, 2>) -> Tensor<B, 2> {
        let mut pre = x_c.matmul(self.w_enc.val().transpose());
        if let Some(b) = &self.b_enc {
            pre = pre + b.val().unsqueeze_dim(0);
        }
        if self.config.relu { relu(pre) } else { pre }
    }

    /// The dense pre-activations on the host, without gradient tracking, for selection. Only
    /// the matmul runs on the backend; bias, ReLU and the finiteness check are one host pass
    /// (a broadcast bias add over `[tokens, latents]` is slow on the CPU backends).
    pub(crate) fn host_pre_activations(&self, x_c: &Tensor<B, 2>) -> Result<Vec<f32>> {
        let product = x_c
            .clone()
            .detach()
            .matmul(self.w_enc.val().detach().transpose());
        let mut values = to_host(product);
        let bias = self.b_enc.as_ref().map(|b| to_host(b.val()));
        finish_pre_activations(
            &mut values,
            self.num_latents(),
            bias.as_deref(),
            self.config.relu,
        )?;
        Ok(values)
    }

    /// The latents this SAE's architecture keeps, from host pre-activations.
    pub(crate) fn select(&self, pre: &[f32]) -> Selection {
        let cols = self.num_latents();
        match self.config.architecture {
            Architecture::TopK => select::top_k(pre, cols, self.config.k),
            Architecture::BatchTopK => {
                select::batch_top_k(pre, cols, self.config.k * (pre.len() / cols))
            }
            Architecture::JumpRelu => {
                let threshold = self.threshold.as_ref().expect("checked in from_tensors");
                select::above_threshold(pre, cols, &to_host(threshold.val()))
            }
            Architecture::Relu => select::above_threshold(pre, cols, &vec![0.0; cols]),
        }
    }

    /// Computes only the selected activations, differentiably (see [`Self::activations_of`]).
    fn activations_at(&self, x_c: Tensor<B, 2>, selection: &Selection) -> SparseLatents<B> {
        let indices = Tensor::<B, 2, Int>::from_data(
            TensorData::new(selection.indices.clone(), [selection.rows, selection.width]),
            &x_c.device(),
        );
        self.activations_of(x_c, indices, selection.valid.as_deref())
    }

    /// The activations of the latents at `indices` (`[tokens, width]`; slots `valid` marks
    /// false are zeroed), differentiably: the selected encoder rows times the centred input as
    /// a batched `[N,w,d] x [N,d,1]` matmul.
    fn activations_of(
        &self,
        x_c: Tensor<B, 2>,
        indices: Tensor<B, 2, Int>,
        valid: Option<&[bool]>,
    ) -> SparseLatents<B> {
        let [n, d] = x_c.dims();
        let w = indices.dims()[1];
        let flat = indices.reshape([n * w]);
        let rows = self.w_enc.val().select(0, flat.clone()).reshape([n, w, d]);
        let mut pre = rows.matmul(x_c.reshape([n, d, 1])).reshape([n, w]);
        if let Some(b) = &self.b_enc {
            pre = pre + b.val().select(0, flat.clone()).reshape([n, w]);
        }
        if self.config.relu {
            pre = relu(pre);
        }
        SparseLatents {
            values: zero_padding(pre, valid),
            indices: flat.reshape([n, w]),
        }
    }

    /// Encodes `[tokens, d_in]` activations into their sparse latents.
    pub fn encode(&self, x: Tensor<B, 2>) -> Result<SparseLatents<B>> {
        self.check_width(&x)?;
        let x_c = self.center(x);
        if let Some(selection) = self.select_on_device(&x_c)? {
            // Without autodiff the selected values are read from the pre-activations already
            // on the device; with it they are recomputed differentiably.
            if !B::ad_enabled(&x_c.device()) {
                let values = selection.values();
                let indices = selection.indices;
                return Ok(SparseLatents { values, indices });
            }
            let valid = selection.valid.as_deref();
            return Ok(self.activations_of(x_c, selection.indices, valid));
        }
        let pre = self.host_pre_activations(&x_c)?;
        Ok(self.activations_at(x_c, &self.select(&pre)))
    }

    /// Encodes like [`Self::encode`], with the pre-activations of some latents replaced before
    /// selection: each `(latent, value)` of `overrides` is set at every token (steering by
    /// clamping, as Multimodal-SAE's `clamp_features_max`). The selected activations are read
    /// from the replaced pre-activations, without gradient.
    pub fn encode_with_overrides(
        &self,
        x: Tensor<B, 2>,
        overrides: &[(usize, f32)],
    ) -> Result<SparseLatents<B>> {
        self.check_width(&x)?;
        let cols = self.num_latents();
        if let Some(&(latent, _)) = overrides.iter().find(|(latent, _)| *latent >= cols) {
            let num_latents = cols;
            return Err(SaeError::NoSuchLatent {
                latent,
                num_latents,
            });
        }
        if overrides.iter().any(|(_, value)| !value.is_finite()) {
            return Err(SaeError::NonFinite("a latent override".into()));
        }
        let device = x.device();
        let mut pre = self.host_pre_activations(&self.center(x))?;
        for row in pre.chunks_mut(cols) {
            for &(latent, value) in overrides {
                row[latent] = value;
            }
        }
        let selection = self.select(&pre);
        let values: Vec<f32> = (selection.indices.iter().enumerate())
            .map(|(slot, &latent)| match &selection.valid {
                Some(valid) if !valid[slot] => 0.0,
                _ => pre[slot / selection.width * cols + latent as usize],
            })
            .collect();
        let shape = [selection.rows, selection.width];
        Ok(SparseLatents {
            values: Tensor::from_data(TensorData::new(values, shape), &device),
            indices: Tensor::from_data(TensorData::new(selection.indices, shape), &device),
        })
    }

    /// Sparse decode: gathers the decoder rows of the active latents and combines them with a
    /// batched `[N,1,w] x [N,w,d]` matmul (on the GPU backends, one dense matmul), then adds
    /// `b_dec`.
    pub fn decode(&self, latents: &SparseLatents<B>) -> Tensor<B, 2> {
        self.decode_directions(latents) + self.b_dec.val().unsqueeze_dim(0)
    }

    /// `sum_i f_i W_dec[i]` over the active latents, without `b_dec`.
    fn decode_directions(&self, latents: &SparseLatents<B>) -> Tensor<B, 2> {
        let [n, w] = latents.values.dims();
        let d = self.d_in();
        let device = latents.values.device();
        if B::DEVICE_SELECT {
            // On the GPU backends, without a `[tokens, k, d_in]` gather: the sparse decode
            // kernel, or under autodiff (differentiable) the latents scattered into
            // `[tokens, latents]` and one matmul.
            let (values, indices) = (latents.values.clone(), latents.indices.clone());
            if !B::ad_enabled(&device) {
                return sparse_decode(values, indices, self.w_dec.val());
            }
            let coefs = scatter_rows(values, indices, self.num_latents());
            return coefs.matmul(self.w_dec.val());
        }
        let flat = latents.indices.clone().reshape([n * w]);
        let rows = self.w_dec.val().select(0, flat).reshape([n, w, d]);
        latents
            .values
            .clone()
            .reshape([n, 1, w])
            .matmul(rows)
            .reshape([n, d])
    }

    /// Encodes and decodes `[tokens, d_in]` activations and computes the losses.
    ///
    /// `dead_mask` (one flag per latent) turns on the AuxK loss: the top `aux_k` dead latents
    /// are asked to reconstruct the residual `x - x_hat`, as in sparsify.
    pub fn forward(&self, x: Tensor<B, 2>, dead_mask: Option<&[bool]>) -> Result<SaeOutput<B>> {
        self.forward_share(x, dead_mask, None)
    }

    /// As [`forward`](Self::forward); with `share`, `x` is one rank's part of that batch and
    /// the losses are its shares of the batch's (they add up over the ranks).
    pub fn forward_share(
        &self,
        x: Tensor<B, 2>,
        dead_mask: Option<&[bool]>,
        share: Option<&BatchShare>,
    ) -> Result<SaeOutput<B>> {
        self.check_width(&x)?;
        let n = share.map_or(x.dims()[0], |s| s.tokens);
        let x_c = self.center(x.clone());
        let dense = matches!(
            self.config.architecture,
            Architecture::JumpRelu | Architecture::Relu
        );
        let (latents, reconstruction, mut pre, l1_loss, l0_loss) = if dense {
            // JumpReLU's thresholds and ReLU's L1 penalty need every latent: dense.
            let pre = self.dense_pre_activations(x_c.clone());
            let host = finite_on_host(pre.clone().detach())?;
            let latents = self.gather_dense(&pre, &self.select(&host));
            let (acts, l1_loss, l0_loss) = if self.config.architecture == Architecture::JumpRelu {
                let (acts, l0) = self.jumprelu_with_straight_through(pre, n);
                (acts, None, Some(l0))
            } else {
                let dec_norms = self
                    .w_dec
                    .val()
                    .powi_scalar(2)
                    .sum_dim(1)
                    .sqrt()
                    .reshape([1, self.num_latents()]);
                let l1 = (pre.clone() * dec_norms).sum().div_scalar(n as f32);
                (pre, Some(l1), None)
            };
            let recon = acts.matmul(self.w_dec.val()) + self.b_dec.val().unsqueeze_dim(0);
            (latents, recon, PreActivations::Host(host), l1_loss, l0_loss)
        } else {
            let (latents, pre) = match self.select_on_device(&x_c)? {
                Some(selection) => (
                    self.activations_of(x_c.clone(), selection.indices, selection.valid.as_deref()),
                    PreActivations::Device(selection.pre),
                ),
                None => {
                    let pre = self.host_pre_activations(&x_c)?;
                    let latents = self.activations_at(x_c.clone(), &self.select(&pre));
                    (latents, PreActivations::Host(pre))
                }
            };
            let recon = self.decode(&latents);
            (latents, recon, pre, None, None)
        };

        let residual = x.clone() - reconstruction.clone();
        let total_variance = match share {
            Some(share) => Tensor::from_data([share.total_variance as f32], &x.device()),
            None => total_variance(x.clone()),
        };
        let fvu = residual.clone().powi_scalar(2).sum() / total_variance.clone();

        let auxk_loss = dead_mask.and_then(|mask| {
            let (selection, scale) = self.auxk_selection(&mut pre, mask)?;
            let scale = scale as f32;
            // As sparsify: the residual already holds b_dec, so the dead latents' prediction
            // has none; and only the decoder learns from AuxK (sparsify's fused encoder drops
            // the gradient of the pre-activations AuxK selects from).
            let aux = self.activations_at(x_c.clone(), &selection);
            let aux = SparseLatents {
                values: aux.values.detach(),
                indices: aux.indices,
            };
            let e_hat = self.decode_directions(&aux);
            let loss = (e_hat - residual.clone().detach()).powi_scalar(2).sum();
            Some((loss / total_variance.clone()).mul_scalar(scale))
        });

        let multi_topk_fvu = self.config.multi_topk.then(|| {
            let selection = select::top_k(pre.host(), self.num_latents(), 4 * self.config.k);
            let recon = self.decode(&self.activations_at(x_c.clone(), &selection));
            (recon - x.clone()).powi_scalar(2).sum() / total_variance.clone()
        });

        Ok(SaeOutput {
            latents,
            reconstruction,
            fvu,
            auxk_loss,
            multi_topk_fvu,
            l1_loss,
            l0_loss,
        })
    }

    /// JumpReLU's activations `z H(z - theta)` of dense pre-activations `z`, and the L0 penalty
    /// `sum_n sum_i H(z_ni - theta_i) / tokens`, with the straight-through gradients of Rajamanoharan
    /// et al. (SAELens' `JumpReLU` and `Step`): with `K = rect((z - theta) / eps) / eps`, the
    /// activations pass `-theta K` to the thresholds and `H` to `z`, and the L0 passes `-K` to
    /// the thresholds and nothing to `z`. Each surrogate term is `t - detach(t)`: zero forward,
    /// the wanted gradient backward.
    fn jumprelu_with_straight_through(
        &self,
        z: Tensor<B, 2>,
        tokens: usize,
    ) -> (Tensor<B, 2>, Tensor<B, 1>) {
        let latents = z.dims()[1];
        let eps = self.config.jumprelu_bandwidth;
        let theta = self
            .threshold
            .as_ref()
            .expect("checked in from_tensors")
            .val()
            .reshape([1, latents]);
        let (z_d, theta_d) = (z.clone().detach(), theta.clone().detach());
        let gap = z_d.clone() - theta_d.clone();
        let gate = gap.clone().greater_elem(0.0).float();
        let kernel = gap.abs().lower_elem(eps / 2.0).float().div_scalar(eps);
        let surrogate = |t: Tensor<B, 2>| t.clone() - t.detach();
        let acts = z * gate.clone() - surrogate(theta.clone() * (kernel.clone() * theta_d));
        let l0 = (gate - surrogate(theta * kernel))
            .sum()
            .div_scalar(tokens as f32);
        (acts, l0)
    }

    /// AuxK's latents (the top `aux_k` dead ones, `d_in / 2` by default, as sparsify) and its
    /// loss scale `min(dead / aux_k, 1)`; `None` when no latent is dead.
    pub(crate) fn auxk_selection(
        &self,
        pre: &mut PreActivations<B>,
        dead: &[bool],
    ) -> Option<(Selection, f64)> {
        let (k_aux, scale) = self.auxk_width(dead)?;
        let selection = select::top_k_among(pre.host(), self.num_latents(), k_aux, Some(dead));
        Some((selection, scale))
    }

    /// How many dead latents AuxK selects (`aux_k`, `d_in / 2` by default, at most the dead
    /// ones) and its loss scale `min(dead / aux_k, 1)`; `None` when no latent is dead.
    pub(crate) fn auxk_width(&self, dead: &[bool]) -> Option<(usize, f64)> {
        let num_dead = dead.iter().filter(|&&m| m).count();
        if num_dead == 0 {
            return None;
        }
        let k_aux = self.config.aux_k.unwrap_or(self.d_in() / 2).max(1);
        let scale = (num_dead as f64 / k_aux as f64).min(1.0);
        Some((k_aux.min(num_dead), scale))
    }

    /// The selected entries of a dense activation matrix, with padding zeroed.
    fn gather_dense(&self, dense: &Tensor<B, 2>, selection: &Selection) -> SparseLatents<B> {
        let device = dense.device();
        let shape = [selection.rows, selection.width];
        let indices = Tensor::<B, 2, Int>::from_data(
            TensorData::new(selection.indices.clone(), shape),
            &device,
        );
        let values = zero_padding(
            dense.clone().gather(1, indices.clone()),
            selection.valid.as_deref(),
        );
        SparseLatents { values, indices }
    }
}

/// `sum((x - mean_0(x))^2)`, sparsify's FVU denominator (the mean per feature over the batch).
pub(crate) fn total_variance<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 1> {
    (x.clone() - x.mean_dim(0)).powi_scalar(2).sum()
}

/// Each row divided by `(its L2 norm + eps)`, as sparsify normalises decoder rows.
pub fn unit_norm_rows<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = w.clone().powi_scalar(2).sum_dim(1).sqrt();
    w.div(norm.add_scalar(f32::EPSILON))
}

/// `values` (`[rows, width]`) with the slots `valid` marks false set to zero.
pub(crate) fn zero_padding<B: Backend>(
    values: Tensor<B, 2>,
    valid: Option<&[bool]>,
) -> Tensor<B, 2> {
    match valid {
        None => values,
        Some(valid) => {
            let mask: Vec<f32> = valid.iter().map(|&v| f32::from(u8::from(v))).collect();
            let device = values.device();
            let mask = TensorData::new(mask, values.dims());
            values * Tensor::from_data(mask, &device)
        }
    }
}

/// Pre-activations on the host; an error when any is NaN or infinite (which is how a bad
/// input shows up).
fn finite_on_host<B: Backend>(pre: Tensor<B, 2>) -> Result<Vec<f32>> {
    let values = to_host(pre);
    if values.iter().any(|v| !v.is_finite()) {
        return Err(non_finite_input());
    }
    Ok(values)
}

/// Adds the encoder bias to host `x_c W_enc^T` rows (`cols` wide), checks they are finite and
/// applies the ReLU when `relu`.
pub(crate) fn finish_pre_activations(
    values: &mut [f32],
    cols: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<()> {
    if !values
        .par_chunks_mut(cols)
        .all(|row| finish_row(row, bias, relu))
    {
        return Err(non_finite_input());
    }
    Ok(())
}

/// One row of [`finish_pre_activations`]; false when a value is not finite.
pub(crate) fn finish_row(row: &mut [f32], bias: Option<&[f32]>, relu: bool) -> bool {
    // One pass; the finiteness check comes before the ReLU (`f32::max` would turn NaN into 0)
    // and is a branch-free fold, so the loop vectorises.
    let finish = |finite: bool, v: &mut f32, b: f32| {
        let biased = *v + b;
        *v = if relu { biased.max(0.0) } else { biased };
        finite & biased.is_finite()
    };
    match bias {
        Some(bias) => row
            .iter_mut()
            .zip(bias)
            .fold(true, |finite, (v, &b)| finish(finite, v, b)),
        None => row
            .iter_mut()
            .fold(true, |finite, v| finish(finite, v, 0.0)),
    }
}

/// The error for NaN or infinite SAE inputs.
pub(crate) fn non_finite_input() -> SaeError {
    SaeError::NonFinite("the SAE input".into())
}
