//! A decoder-only language model covering Qwen2 (q/k/v biases) and Llama / SmolLM2 (no biases,
//! tied embeddings): token embedding, `L x` [pre-norm attention with RoPE and grouped-query
//! heads, then a SwiGLU MLP], a final RMSNorm and the LM head.
//!
//! Every module calls its hook with the HF in-memory path (`model.layers.3.mlp.down_proj`), in
//! the order HF's modules return; the pass stops after the module named by
//! [`Hooks::stop_after`].

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, RmsNorm};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use sae_core::host::int_to_host;
use sae_core::{HookPoint, HookedModule, Hooks};

use crate::config::DecoderConfig;
use crate::error::Result;
use crate::mask;
use crate::projection::{Projection, TORN_DOWN};
use crate::rope::{Rope, softmax_in_f32};
use crate::scope::LoadScope;
use crate::tap::{Stopped, Tap, times_transposed};
use crate::weights::Weights;

/// What a layer needs besides its input: RoPE tables, the additive mask, and its keys and
/// values of earlier positions (taken and put back by attention).
struct LayerContext<'a, B: Backend> {
    /// RoPE tables for the query heads and for the key/value heads.
    rope_q: &'a Rope<B>,
    rope_k: &'a Rope<B>,
    mask: &'a Tensor<B, 4>,
    past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

/// Keys and values of the positions seen so far, per layer, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// The attention mask of every cached position, `[batch, len]` row-major.
    mask: Vec<i64>,
    len: usize,
    /// Per row, what M-RoPE adds to a text token's position after the prompt (Qwen2-VL's
    /// `rope_deltas`: image tokens take fewer positions than tokens); empty means 0.
    rope_deltas: Vec<i64>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache {
            layers: Vec::new(),
            mask: Vec::new(),
            len: 0,
            rope_deltas: Vec::new(),
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Multi-head attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    q_proj: Projection<B>,
    k_proj: Projection<B>,
    v_proj: Projection<B>,
    o_proj: Projection<B>,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &mut LayerContext<'_, B>,
        tap: &mut Tap<B>,
        prefix: &str,
    ) -> Result<Tensor<B, 3>, Stopped> {
        let [b, t, _] = x.dims();
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let split = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, d]);
        let q = split(
            tap.call(&format!("{prefix}.q_proj"), self.q_proj.forward(x.clone()))?,
            h,
        );
        let k = split(
            tap.call(&format!("{prefix}.k_proj"), self.k_proj.forward(x.clone()))?,
            kv,
        );
        let v = split(
            tap.call(&format!("{prefix}.v_proj"), self.v_proj.forward(x))?,
            kv,
        );
        let heads_first = |y: Tensor<B, 4>| y.swap_dims(1, 2);
        let (q, k) = (
            heads_first(ctx.rope_q.apply(q)),
            heads_first(ctx.rope_k.apply(k)),
        );
        let v = heads_first(v);
        let (k, v) = match ctx.past.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        ctx.past = Some((k.clone(), v.clone()));
        let total = k.dims()[2];
        // Each key/value head serves the `h / kv` query heads after it (transformers'
        // `repeat_kv`): their queries stack into one `[h / kv x t, d]` matrix per key/value head,
        // so the keys and values are used as they are, in batched 3-D matmuls over (batch x
        // key/value head), much faster than 4-D ones on the CPU backends.
        let group = h / kv;
        let q = q.reshape([b * kv, group * t, d]);
        let k_t = k.reshape([b * kv, total, d]).swap_dims(1, 2);
        let scores = q
            .matmul(k_t)
            .reshape([b, h, t, total])
            .div_scalar((d as f64).sqrt())
            + ctx.mask.clone();
        let probs = softmax_in_f32(scores, 3).reshape([b * kv, group * t, total]);
        let out = probs
            .matmul(v.reshape([b * kv, total, d]))
            .reshape([b, h, t, d])
            .swap_dims(1, 2)
            .reshape([b, t, h * d]);
        let out = tap.call(&format!("{prefix}.o_proj"), self.o_proj.forward(out))?;
        tap.call(prefix, out)
    }
}

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    gate_proj: Projection<B>,
    up_proj: Projection<B>,
    down_proj: Projection<B>,
}

impl<B: Backend> Mlp<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        tap: &mut Tap<B>,
        prefix: &str,
    ) -> Result<Tensor<B, 3>, Stopped> {
        let gate = tap.call(
            &format!("{prefix}.gate_proj"),
            self.gate_proj.forward(x.clone()),
        )?;
        let up = tap.call(&format!("{prefix}.up_proj"), self.up_proj.forward(x))?;
        let down = tap.call(
            &format!("{prefix}.down_proj"),
            self.down_proj.forward(silu(gate) * up),
        )?;
        tap.call(prefix, down)
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    input_layernorm: RmsNorm<B>,
    self_attn: Attention<B>,
    post_attention_layernorm: RmsNorm<B>,
    mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// Layer `p` (its stored prefix, `model.layers.3`) of a decoder configured by `c`.
    fn load(c: &DecoderConfig, w: &Weights, p: &str, device: &B::Device) -> Result<Self> {
        let (hidden, inter, eps) = (c.hidden_size, c.intermediate_size, c.rms_norm_eps);
        let (q_dim, kv_dim) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let attn = |name: &str, d_in, d_out, bias| {
            w.projection(&format!("{p}.self_attn.{name}"), d_in, d_out, bias, device)
        };
        let mlp = |name: &str, d_in, d_out| {
            w.projection(&format!("{p}.mlp.{name}"), d_in, d_out, c.mlp_bias, device)
        };
        let norm = |name: &str| w.rms_norm(&format!("{p}.{name}"), hidden, eps, device);
        Ok(DecoderLayer {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention {
                q_proj: attn("q_proj", hidden, q_dim, c.attention_bias)?,
                k_proj: attn("k_proj", hidden, kv_dim, c.attention_bias)?,
                v_proj: attn("v_proj", hidden, kv_dim, c.attention_bias)?,
                o_proj: attn("o_proj", q_dim, hidden, false)?,
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
            },
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: Mlp {
                gate_proj: mlp("gate_proj", hidden, inter)?,
                up_proj: mlp("up_proj", hidden, inter)?,
                down_proj: mlp("down_proj", inter, hidden)?,
            },
        })
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &mut LayerContext<'_, B>,
        tap: &mut Tap<B>,
        prefix: &str,
    ) -> Result<Tensor<B, 3>, Stopped> {
        let normed = tap.call(
            &format!("{prefix}.input_layernorm"),
            self.input_layernorm.forward(x.clone()),
        )?;
        let x = x + self
            .self_attn
            .forward(normed, ctx, tap, &format!("{prefix}.self_attn"))?;
        let normed = tap.call(
            &format!("{prefix}.post_attention_layernorm"),
            self.post_attention_layernorm.forward(x.clone()),
        )?;
        let x = x + self.mlp.forward(normed, tap, &format!("{prefix}.mlp"))?;
        tap.call(prefix, x)
    }
}

/// Token ids and, for padded batches, the attention mask (1 = token, 0 = padding).
#[derive(Debug, Clone)]
pub struct LmInput<B: Backend> {
    /// `[batch, tokens]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, tokens]`; `None` means no padding.
    pub attention_mask: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> LmInput<B> {
    /// One unpadded sequence.
    pub fn from_ids(ids: &[i64], device: &B::Device) -> Self {
        LmInput {
            input_ids: Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device),
            attention_mask: None,
        }
    }
}

/// A vision-language forward pass's input: token ids with one placeholder per image token, the
/// padding mask, and the images in the model's own form `I`.
#[derive(Debug, Clone)]
pub struct VlInput<B: Backend, I> {
    /// `[batch, tokens]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, tokens]`; `None` means no padding.
    pub attention_mask: Option<Tensor<B, 2, Int>>,
    /// The images, when the prompts have any.
    pub images: Option<I>,
}

impl<B: Backend, I> VlInput<B, I> {
    /// The same input with the images in another form (on the device, or typed).
    pub fn map_images<J>(self, f: impl FnOnce(I) -> Result<J>) -> Result<VlInput<B, J>> {
        Ok(VlInput {
            input_ids: self.input_ids,
            attention_mask: self.attention_mask,
            images: self.images.map(f).transpose()?,
        })
    }
}

/// What the forward pass returns.
#[derive(Debug, Clone)]
pub struct LmOutput<B: Backend> {
    /// `[batch, tokens, vocab]`; `None` when the pass stopped after an earlier hook.
    pub logits: Option<Tensor<B, 3>>,
}

/// A decoder-only language model (Qwen2, Llama).
#[derive(Module, Debug)]
pub struct DecoderLm<B: Backend> {
    /// `None` when the weights are shared between ranks (ZeRO-3): tokens are then looked up
    /// in the ranks' slices of the table (`shared_table`).
    embed_tokens: Option<Embedding<B>>,
    /// The layers loaded: all of them, or those up to the deepest hook a job reads.
    layers: Vec<DecoderLayer<B>>,
    /// `None` when not loaded (the job stops in a layer); the pass ends before it.
    norm: Option<RmsNorm<B>>,
    /// `None` when tied to the held embedding, or not loaded with the norm.
    lm_head: Option<Projection<B>>,
    #[module(skip)]
    config: DecoderConfig,
    /// The module path of the decoder stack in memory: `model` for an LM,
    /// `model.language_model` inside a multimodal model.
    #[module(skip)]
    prefix: String,
    /// Under ZeRO-3, the shared weights and the name of the embedding table.
    #[module(skip)]
    shared_table: Option<SharedTable>,
}

/// A token embedding table shared between ranks ([`crate::shard`]).
#[derive(Clone)]
struct SharedTable {
    weights: Weights,
    name: String,
}

impl std::fmt::Debug for SharedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedTable({})", self.name)
    }
}

impl<B: Backend> DecoderLm<B> {
    /// Loads a Hugging Face model folder (`config.json` + safetensors).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        Self::load_as(dir, DType::F32, device)
    }

    /// Loads a Hugging Face model folder computing in `dtype` (F32, F16 or BF16).
    pub fn load_as(dir: &Path, dtype: DType, device: &B::Device) -> Result<Self> {
        Self::load_scoped(dir, dtype, &LoadScope::whole(false), device)
    }

    /// Loads what `scope` needs of a Hugging Face model folder, computing in `dtype`.
    pub fn load_scoped(
        dir: &Path,
        dtype: DType,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        let config = DecoderConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::open_for(dir, dtype, scope)?;
        Self::from_weights(config, &weights, scope, device)
    }

    /// Builds what `scope` needs of the model from its config and weights (HF tensor names).
    pub fn from_weights(
        config: DecoderConfig,
        w: &Weights,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        Self::from_weights_at(config, w, "model", "model", scope, device)
    }

    /// The same with the decoder's tensors stored under `stored` (`model` in Qwen2-VL
    /// checkpoints) and its modules at `prefix` in memory (`model.language_model`); the head is
    /// `lm_head` in both.
    pub fn from_weights_at(
        config: DecoderConfig,
        w: &Weights,
        stored: &str,
        prefix: &str,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        Self::from_weights_with_head(config, w, stored, "lm_head", prefix, scope, device)
    }

    /// The same with the head stored as `stored_head` (`language_model.lm_head` in LLaVA hub
    /// checkpoints); in memory it is `lm_head` whatever the checkpoint says.
    pub fn from_weights_with_head(
        config: DecoderConfig,
        w: &Weights,
        stored: &str,
        stored_head: &str,
        prefix: &str,
        scope: &LoadScope,
        device: &B::Device,
    ) -> Result<Self> {
        let c = &config;
        let head = scope.head(prefix);
        let layers = (0..scope.text_layers(prefix, c.num_hidden_layers))
            .map(|i| DecoderLayer::load(c, w, &format!("{stored}.layers.{i}"), device))
            .collect::<Result<Vec<_>>>()?;
        let norm = head
            .then(|| {
                w.rms_norm(
                    &format!("{stored}.norm"),
                    c.hidden_size,
                    c.rms_norm_eps,
                    device,
                )
            })
            .transpose()?;
        let table = format!("{stored}.embed_tokens");
        let shape = [c.vocab_size, c.hidden_size];
        // Some tied checkpoints still store lm_head.weight; tying wins, as in transformers.
        // Shared between ranks, the tied head is a projection by the shared table.
        let (embed_tokens, shared_table, head_weight) = if w.is_sharded() {
            let name = format!("{table}.weight");
            w.keep_slice(&name, &shape)?;
            let shared = SharedTable {
                weights: w.clone(),
                name,
            };
            let head_weight = if c.tie_word_embeddings {
                table.as_str()
            } else {
                stored_head
            };
            (None, Some(shared), Some(head_weight))
        } else {
            let embedding = w.embedding(&table, c.vocab_size, c.hidden_size, device)?;
            let head_weight = (!c.tie_word_embeddings).then_some(stored_head);
            (Some(embedding), None, head_weight)
        };
        let lm_head = match head_weight {
            Some(name) if head => {
                Some(w.projection(name, c.hidden_size, c.vocab_size, false, device)?)
            }
            _ => None,
        };
        Ok(DecoderLm {
            embed_tokens,
            layers,
            norm,
            lm_head,
            config,
            prefix: prefix.to_string(),
            shared_table,
        })
    }

    /// The forward pass over new tokens after those in `cache`, which it extends (incremental
    /// decoding); hooks see the new tokens only.
    pub fn forward_cached(
        &self,
        input: LmInput<B>,
        cache: &mut KvCache<B>,
        hooks: &mut dyn Hooks<B>,
    ) -> LmOutput<B> {
        let embeds = self.embed(input.input_ids);
        let logits = self
            .run(
                embeds,
                input.attention_mask,
                None,
                &mut Tap { hooks },
                cache,
            )
            .ok();
        LmOutput { logits }
    }

    /// The token embeddings of `ids`, `[batch, tokens, hidden]`.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match (&self.embed_tokens, &self.shared_table) {
            (Some(table), _) => table.forward(ids),
            (None, Some(shared)) => {
                let [b, t] = ids.dims();
                let (device, d) = (ids.device(), self.config.hidden_size);
                let shape = [self.config.vocab_size, d];
                (shared.weights)
                    .embedding_rows::<B>(&shared.name, shape, &int_to_host(ids), &device)
                    .expect(TORN_DOWN)
                    .reshape([b, t, d])
            }
            (None, None) => unreachable!("a decoder holds its embeddings or shares them"),
        }
    }

    /// The dtype the model computes in (that of its weights).
    pub fn dtype(&self) -> DType {
        match (&self.embed_tokens, &self.shared_table) {
            (Some(table), _) => table.weight.val().dtype(),
            (None, Some(shared)) => shared.weights.dtype(),
            (None, None) => unreachable!("a decoder holds its embeddings or shares them"),
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The forward pass over new positions whose input embeddings are `embeds`, after those in
    /// `cache` (which it extends). `positions` (`[batch x tokens]` of (t, h, w), with the rows'
    /// M-RoPE deltas) replace the default ones, which count real tokens from 0 (so left padding
    /// starts at 0 on the first real token) plus the cached delta.
    pub(crate) fn run(
        &self,
        embeds: Tensor<B, 3>,
        mask: Option<Tensor<B, 2, Int>>,
        positions: Option<(Vec<[i64; 3]>, Vec<i64>)>,
        tap: &mut Tap<B>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, Stopped> {
        let device = embeds.device();
        let [b, t, _] = embeds.dims();
        let new_mask: Vec<i64> = match mask {
            Some(m) => int_to_host(m),
            None => vec![1; b * t],
        };
        // The mask over every position, cached ones first.
        let past = cache.len;
        let total = past + t;
        let full: Vec<i64> = (0..b)
            .flat_map(|r| {
                let old = cache.mask.get(r * past..(r + 1) * past).unwrap_or_default();
                old.iter()
                    .chain(&new_mask[r * t..(r + 1) * t])
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        let positions = match positions {
            Some((positions, deltas)) => {
                cache.rope_deltas = deltas;
                positions
            }
            None => full
                .chunks(total)
                .enumerate()
                .flat_map(|(row, mask)| {
                    let delta = cache.rope_deltas.get(row).copied().unwrap_or(0);
                    let mut seen = 0i64;
                    let counts: Vec<[i64; 3]> = mask
                        .iter()
                        .map(|&v| {
                            seen += v;
                            [(seen - 1).max(0) + delta; 3]
                        })
                        .collect();
                    counts[past..].to_vec()
                })
                .collect(),
        };
        let dtype = self.dtype();
        let rope = Rope::new(
            &positions,
            self.config.mrope_section.as_deref(),
            (b, t),
            self.config.head_dim,
            self.config.rope_theta,
            &device,
        )
        .cast(dtype);
        let (rope_q, rope_k) = (
            rope.for_heads(self.config.num_attention_heads),
            rope.for_heads(self.config.num_key_value_heads),
        );
        // Repeated over heads once, so every layer adds it without broadcasting.
        let mask = mask::causal::<B>(&full, (b, t, past), dtype, &device)
            .repeat_dim(1, self.config.num_attention_heads);
        cache.layers.resize(self.layers.len(), None);
        cache.mask = full;
        cache.len = total;

        let mut x = embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut ctx = LayerContext {
                rope_q: &rope_q,
                rope_k: &rope_k,
                mask: &mask,
                past: cache.layers[i].take(),
            };
            let out = layer.forward(x, &mut ctx, tap, &format!("{}.layers.{i}", self.prefix));
            cache.layers[i] = ctx.past;
            x = out?;
        }
        // Loaded up to a layer only: the job's hooks end the pass before this point.
        let norm = self.norm.as_ref().ok_or(Stopped)?;
        let x = tap.call(&format!("{}.norm", self.prefix), norm.forward(x))?;
        let logits = match (&self.lm_head, &self.embed_tokens) {
            (Some(head), _) => head.forward(x),
            (None, Some(table)) => {
                let [b, t, d] = x.dims();
                let logits = times_transposed(x.reshape([b * t, d]), table.weight.val());
                logits.reshape([b, t, self.config.vocab_size])
            }
            (None, None) => unreachable!("a shared decoder's head is a projection"),
        };
        tap.call("lm_head", logits)
    }
}

impl<B: Backend> HookedModule<B> for DecoderLm<B> {
    type Input = LmInput<B>;
    type Output = LmOutput<B>;

    fn hook_points(&self) -> Vec<HookPoint> {
        self.config.hook_points(&self.prefix)
    }

    fn forward_hooked(&self, input: LmInput<B>, hooks: &mut dyn Hooks<B>) -> LmOutput<B> {
        self.forward_cached(input, &mut KvCache::new(), hooks)
    }
}
