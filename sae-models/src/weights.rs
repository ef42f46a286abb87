//! Model weights by Hugging Face tensor name, from a model folder (`model.safetensors`, or shards
//! listed in `model.safetensors.index.json`; F32, F16 and BF16) or from a GGUF file (names
//! mapped, tensors dequantised, llama.cpp's q/k row permutation undone). Under ZeRO-3 the weight
//! matrices are shared between the ranks of a job ([`crate::shard`]).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear, RmsNorm};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use sae_core::convert::float_data;
use sae_core::paths::{Links, join_inside};
use sae_core::{StorageDtype, TensorFile};
use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::projection::Projection;
use crate::scope::LoadScope;
use crate::shard::{Shards, Slices, is_split};

/// Model weights, by Hugging Face tensor name (cheap to clone: the files are shared).
#[derive(Clone)]
pub struct Weights {
    origin: PathBuf,
    store: Arc<Store>,
    /// The dtype tensors are created in, straight from the stored bytes.
    dtype: StorageDtype,
    /// Under ZeRO-3, this rank's slices of the weight matrices, which are gathered when read.
    slices: Option<Arc<Slices>>,
}

enum Store {
    Safetensors {
        files: Vec<TensorFile>,
        /// Tensor name -> index into `files`.
        index: HashMap<String, usize>,
    },
    Gguf {
        file: GgufFile,
        /// Query and key/value heads, when llama.cpp permuted the q/k rows (llama).
        permuted_heads: Option<(usize, usize)>,
    },
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
            // A hub snapshot's files are links into its `blobs` folder: links are followed, but a
            // name may not climb out of the folder.
            let path = join_inside(dir, name, Links::Follow).map_err(|escape| {
                ModelError::BadConfig {
                    file: index_path.clone(),
                    message: format!(
                        "weight_map shard {name:?} {escape}; weights are read only from inside the model folder"
                    ),
                }
            })?;
            if !path.is_file() {
                return Err(ModelError::MissingShard {
                    dir: dir.to_path_buf(),
                    shard: name.clone(),
                });
            }
            let file = TensorFile::open(path)?;
            for tensor in file.names() {
                index.insert(tensor, i);
            }
            files.push(file);
        }
        Ok(Weights {
            origin: dir.to_path_buf(),
            store: Arc::new(Store::Safetensors { files, index }),
            dtype: StorageDtype::F32,
            slices: None,
        })
    }

    /// Opens the checkpoint files of `dir` as a load of `scope` reads them: created as
    /// `dtype`, and shared between the ranks when the scope says so.
    pub fn open_for(dir: &Path, dtype: DType, scope: &LoadScope) -> Result<Self> {
        Ok(Self::open(dir)?.with_dtype(dtype)?.for_scope(scope))
    }

    /// The same weights, shared between the ranks when `scope` says so.
    pub fn for_scope(self, scope: &LoadScope) -> Self {
        match scope.shards() {
            Some(shards) => self.sharded(shards.clone()),
            None => self,
        }
    }

    /// The weights of a GGUF file; `permuted_heads` (query heads, key/value heads) undoes the
    /// q/k row permutation llama.cpp applies to llama-architecture models.
    pub fn from_gguf(path: &Path, file: GgufFile, permuted_heads: Option<(usize, usize)>) -> Self {
        Weights {
            origin: path.to_path_buf(),
            store: Arc::new(Store::Gguf {
                file,
                permuted_heads,
            }),
            dtype: StorageDtype::F32,
            slices: None,
        }
    }

    /// The same weights shared between the ranks of `shards` (ZeRO-3): each rank keeps its
    /// slice of every weight matrix, and reading one gathers it from the ranks, so every rank
    /// must read the same matrices in the same order.
    pub fn sharded(self, shards: Shards) -> Self {
        Weights {
            slices: Some(Arc::new(Slices::new(shards))),
            ..self
        }
    }

    /// True when the weights are shared between ranks: a model then gathers each weight
    /// matrix just before it runs.
    pub fn is_sharded(&self) -> bool {
        self.slices.is_some()
    }

    /// The dtype tensors are created in.
    pub fn dtype(&self) -> DType {
        self.dtype.into()
    }

    /// The same weights, created as `dtype` (the model's compute dtype: F32, F16 or BF16).
    pub fn with_dtype(self, dtype: DType) -> Result<Self> {
        let dtype = StorageDtype::try_from(dtype).map_err(ModelError::BadInput)?;
        Ok(Weights { dtype, ..self })
    }

    /// True if the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        match self.store.as_ref() {
            Store::Safetensors { index, .. } => index.contains_key(name),
            Store::Gguf { file, .. } => {
                gguf_name(name).is_some_and(|n| file.tensors.contains_key(&n))
            }
        }
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingWeight {
            dir: self.origin.clone(),
            name: name.to_string(),
        }
    }

    /// The tensor `name`, which must have `shape`, as data in the compute dtype, read straight
    /// from the mapped file; a split weight of sharded weights is gathered from the ranks.
    fn data(&self, name: &str, shape: &[usize]) -> Result<TensorData> {
        match &self.slices {
            Some(slices) if is_split(shape) => {
                slices.gather(name, shape, self.dtype, |rows| self.rows(name, shape, rows))
            }
            _ => self.stored(name, shape),
        }
    }

    /// Rows `rows` of the tensor `name` of `shape`, in the compute dtype (a rank's slice).
    fn rows(&self, name: &str, shape: &[usize], rows: Range<usize>) -> Result<TensorData> {
        match self.store.as_ref() {
            Store::Safetensors { files, index } => {
                let file = &files[*index.get(name).ok_or_else(|| self.missing(name))?];
                self.check(name, shape, file.shape(name)?)?;
                Ok(file.float_rows(name, rows, self.dtype)?)
            }
            // Quantised blocks are dequantised whole, then cut.
            Store::Gguf { .. } => {
                let whole = self.stored(name, shape)?;
                let row_bytes = whole.as_bytes().len() / shape[0].max(1);
                let bytes = whole.as_bytes()[rows.start * row_bytes..rows.end * row_bytes].to_vec();
                let mut cut = shape.to_vec();
                cut[0] = rows.len();
                Ok(TensorData::from_bytes_vec(bytes, cut, self.dtype.into()))
            }
        }
    }

    /// An error unless tensor `name` stored with shape `got` has `shape`.
    fn check(&self, name: &str, shape: &[usize], got: Vec<usize>) -> Result<()> {
        if got == shape {
            Ok(())
        } else {
            Err(ModelError::WeightShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got,
            })
        }
    }

    /// The whole tensor `name`, which must have `shape`, as data in the compute dtype.
    fn stored(&self, name: &str, shape: &[usize]) -> Result<TensorData> {
        match self.store.as_ref() {
            Store::Safetensors { files, index } => {
                let file = &files[*index.get(name).ok_or_else(|| self.missing(name))?];
                self.check(name, shape, file.shape(name)?)?;
                Ok(file.float_data(name, self.dtype)?)
            }
            Store::Gguf {
                file,
                permuted_heads,
            } => {
                let gguf = gguf_name(name).ok_or_else(|| self.missing(name))?;
                if !file.tensors.contains_key(&gguf) {
                    return Err(self.missing(name));
                }
                // Quantised blocks have no dtype to compute in: each tensor is dequantised to
                // f32 on its own, then converted.
                let (got, values) = file.dequantize(&gguf)?;
                self.check(name, shape, got)?;
                let heads = match permuted_heads {
                    Some((q, _)) if name.contains(".q_proj.") => Some(*q),
                    Some((_, kv)) if name.contains(".k_proj.") => Some(*kv),
                    _ => None,
                };
                let values = match heads {
                    Some(heads) => unpermute_rows(&values, shape[0], heads),
                    None => values,
                };
                Ok(float_data(
                    bytemuck::cast_slice(&values),
                    StorageDtype::F32,
                    shape,
                    self.dtype,
                ))
            }
        }
    }

    /// Reads this rank's slice of the split weight `name` of `shape` when the weights are
    /// shared between ranks (checking that it is stored with that shape); nothing otherwise.
    pub(crate) fn keep_slice(&self, name: &str, shape: &[usize]) -> Result<()> {
        match &self.slices {
            Some(slices) if is_split(shape) => {
                slices.keep(name, shape, |rows| self.rows(name, shape, rows))
            }
            _ => Ok(()),
        }
    }

    /// A [`Projection`] from `{prefix}.weight [d_out, d_in]` and, with `bias`,
    /// `{prefix}.bias [d_out]`: held, or shared between ranks (ZeRO-3: this rank's slice is read
    /// now, the whole weight gathered each time the projection runs).
    pub fn projection<B: Backend>(
        &self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Projection<B>> {
        if self.slices.is_none() {
            return Ok(Projection::held(
                self.linear(prefix, d_in, d_out, bias, device)?,
            ));
        }
        let name = format!("{prefix}.weight");
        self.keep_slice(&name, &[d_out, d_in])?;
        let bias = bias
            .then(|| self.tensor(&format!("{prefix}.bias"), [d_out], device))
            .transpose()?;
        Ok(Projection::shared(self, name, [d_out, d_in], bias))
    }

    /// The token embeddings of `ids` from the `[n, d]` table `name`, `[ids.len(), d]`. With
    /// sharded weights every rank calls it (with its own ids) and the table is never gathered
    /// whole.
    pub fn embedding_rows<B: Backend>(
        &self,
        name: &str,
        [n, d]: [usize; 2],
        ids: &[i64],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let data = match &self.slices {
            Some(slices) => slices.rows(name, [n, d], ids, self.dtype, |rows| {
                self.rows(name, &[n, d], rows)
            })?,
            None => {
                let table: Tensor<B, 2> = self.tensor(name, [n, d], device)?;
                let ids = Tensor::from_data(TensorData::new(ids.to_vec(), [ids.len()]), device);
                return Ok(table.select(0, ids));
            }
        };
        Ok(self.create(data, device))
    }

    /// Every rank's slice of the `[d_out, d_in]` weight `name` shared between ranks, in rank
    /// order, each handed to `each` and dropped before the next is exchanged; the whole weight
    /// at once when this process holds it.
    pub(crate) fn each_slice<B: Backend>(
        &self,
        name: &str,
        shape: [usize; 2],
        device: &B::Device,
        mut each: impl FnMut(Tensor<B, 2>),
    ) -> Result<()> {
        match &self.slices {
            Some(slices) => slices.each_slice(
                name,
                &shape,
                self.dtype,
                |rows| self.rows(name, &shape, rows),
                |data| each(self.create(data, device)),
            ),
            None => {
                each(self.tensor(name, shape, device)?);
                Ok(())
            }
        }
    }

    /// A tensor of rank `D` with a checked shape.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        Ok(self.create(self.data(name, &shape)?, device))
    }

    /// A tensor in the compute dtype (the data is in it already: no conversion).
    fn create<B: Backend, const D: usize>(
        &self,
        data: TensorData,
        device: &B::Device,
    ) -> Tensor<B, D> {
        Tensor::from_data(data, (device, DType::from(self.dtype)))
    }

    /// A [`Linear`] from `{prefix}.weight [d_out, d_in]` and, with `bias`, `{prefix}.bias [d_out]`.
    pub fn linear<B: Backend>(
        &self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        self.flattened_linear(prefix, &[d_out, d_in], bias, device)
    }

    /// A [`Linear`] from `{prefix}.weight` of shape `[d_out, ...]`, its other dimensions flattened
    /// into `d_in` (a convolution whose kernel equals its stride, over flattened patches), and,
    /// with `bias`, `{prefix}.bias [d_out]`.
    pub fn flattened_linear<B: Backend>(
        &self,
        prefix: &str,
        shape: &[usize],
        bias: bool,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let d_out = shape[0];
        let d_in = shape[1..].iter().product();
        // Burn's Linear multiplies by [in, out]: the weight is kept as stored, [out, in], and
        // used through a transposed view (Burn's own column layout), so a bf16 weight stays a
        // view of the mapped file and nothing is copied on the host.
        let mut stored = self.data(&format!("{prefix}.weight"), shape)?;
        stored.shape = Shape::new([d_out, d_in]);
        let weight = self.create::<B, 2>(stored, device).transpose();
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

    /// A LayerNorm from `weight [d]` and `bias [d]`.
    pub fn layer_norm<B: Backend>(
        &self,
        prefix: &str,
        d: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<LayerNorm<B>> {
        let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init(device);
        norm.gamma = Param::from_tensor(self.tensor(&format!("{prefix}.weight"), [d], device)?);
        norm.beta = Some(Param::from_tensor(self.tensor(
            &format!("{prefix}.bias"),
            [d],
            device,
        )?));
        Ok(norm)
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

/// The GGUF (llama.cpp) name of a Hugging Face tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let (module, kind) = module.rsplit_once('.')?;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

/// Undoes llama.cpp's permutation of q/k rows: within each head, GGUF row `2j + t` is
/// Hugging Face row `t * head_dim / 2 + j` (interleaved vs rotate-half RoPE layouts).
fn unpermute_rows(values: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    let cols = values.len() / rows;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..half {
                let hf = h * head_dim + t * half + j;
                let gg = h * head_dim + 2 * j + t;
                out[hf * cols..(hf + 1) * cols]
                    .copy_from_slice(&values[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.o_proj.weight").unwrap(),
            "blk.12.attn_output.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.q_proj.bias").unwrap(),
            "blk.0.attn_q.bias"
        );
        assert_eq!(
            gguf_name("model.layers.3.mlp.down_proj.weight").unwrap(),
            "blk.3.ffn_down.weight"
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").unwrap(),
            "token_embd.weight"
        );
        assert_eq!(gguf_name("model.layers.3.mlp.other.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, head_dim / 2, cols).swapaxes(1, 2).reshape(rows, cols).
        let (heads, head_dim, cols) = (2, 4, 3);
        let rows = heads * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for t in 0..2 {
                for j in 0..head_dim / 2 {
                    let src = (h * head_dim + t * head_dim / 2 + j) * cols;
                    let dst = (h * head_dim + j * 2 + t) * cols;
                    permuted[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, rows, heads), hf);
    }
}
