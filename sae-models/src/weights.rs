//! Weights of a Hugging Face model folder: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`; F32, F16 and BF16 are read as f32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use sae_core::TensorFile;
use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The weights of one model folder, by tensor name.
pub struct Weights {
    dir: PathBuf,
    files: Vec<TensorFile>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Weights {
    /// Opens the checkpoint files of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if single.is_file() {
            vec!["model.safetensors".into()]
        } else if index_path.is_file() {
            let index: ShardIndex = sae_core::tensor_file::read_json(&index_path)?;
            let mut names: Vec<String> = index.weight_map.into_values().collect();
            names.sort();
            names.dedup();
            names
        } else {
            return Err(ModelError::NoWeights(dir.to_path_buf()));
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            let file = TensorFile::open(dir.join(name))?;
            for tensor in file.names() {
                index.insert(tensor, i);
            }
            files.push(file);
        }
        Ok(Weights {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }

    /// True if some file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The values of `name`, which must have `shape`.
    fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let file = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingWeight {
                dir: self.dir.clone(),
                name: name.to_string(),
            })?;
        let t = self.files[*file].get(name)?;
        if t.shape != shape {
            return Err(ModelError::WeightShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape,
            });
        }
        Ok(t.to_f32())
    }

    /// A tensor of rank `D` with a checked shape.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let values = self.values(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    /// A linear layer from torch's `weight [out, in]` (and `bias [out]` when `bias`).
    pub fn linear<B: Backend>(
        &self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let w = self.values(&format!("{prefix}.weight"), &[d_out, d_in])?;
        // Burn's Linear keeps [in, out]: transpose once here, on the host.
        let mut t = vec![0f32; w.len()];
        for o in 0..d_out {
            for i in 0..d_in {
                t[i * d_out + o] = w[o * d_in + i];
            }
        }
        let weight = Tensor::from_data(TensorData::new(t, [d_in, d_out]), device);
        let bias = bias
            .then(|| self.tensor(&format!("{prefix}.bias"), [d_out], device))
            .transpose()?;
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
        })
    }

    /// An RMSNorm from `weight [d]`.
    pub fn rms_norm<B: Backend>(
        &self,
        prefix: &str,
        d: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<RmsNorm<B>> {
        Ok(RmsNorm {
            gamma: Param::from_tensor(self.tensor(&format!("{prefix}.weight"), [d], device)?),
            epsilon: eps,
        })
    }

    /// An embedding table from `weight [n, d]`.
    pub fn embedding<B: Backend>(
        &self,
        prefix: &str,
        n: usize,
        d: usize,
        device: &B::Device,
    ) -> Result<Embedding<B>> {
        Ok(Embedding {
            weight: Param::from_tensor(self.tensor(&format!("{prefix}.weight"), [n, d], device)?),
        })
    }
}
