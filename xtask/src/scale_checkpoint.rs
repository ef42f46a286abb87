//! A Qwen2.5-VL-7B-shaped checkpoint of random bf16 weights, for the scale benchmark: the real
//! shapes (hidden 3584, MLP 18944, 28 query / 4 key-value heads, vocab 152064; a vision tower
//! of 32 blocks of 1280 with windowed attention), the hub's tensor names (`model.layers.N`,
//! `visual.blocks.N`, `lm_head`), sharded about 4 GB a file with `model.safetensors.index.json`.
//! `layers` cuts the language model (28 in the real one). The tokenizer and processor files are
//! the tiny fixture's (their special tokens are the config's).

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use half::bf16;
use serde_json::json;

const HIDDEN: usize = 3584;
const MLP: usize = 18944;
const HEADS: usize = 28;
const KV_HEADS: usize = 4;
const VOCAB: usize = 152064;
const VISION_WIDTH: usize = 1280;
const VISION_MLP: usize = 3420;
const VISION_DEPTH: usize = 32;
const SHARD_BYTES: usize = 4 << 30;

/// Every tensor's name and shape, in the order they are written.
pub fn tensors(layers: usize) -> Vec<(String, Vec<usize>)> {
    let kv = KV_HEADS * HIDDEN / HEADS;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN])];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![HIDDEN]),
            ("self_attn.q_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.q_proj.bias", vec![HIDDEN]),
            ("self_attn.k_proj.weight", vec![kv, HIDDEN]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, HIDDEN]),
            ("self_attn.v_proj.bias", vec![kv]),
            ("self_attn.o_proj.weight", vec![HIDDEN, HIDDEN]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
            ("mlp.gate_proj.weight", vec![MLP, HIDDEN]),
            ("mlp.up_proj.weight", vec![MLP, HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, MLP]),
        ] {
            out.push((format!("{p}.{name}"), shape));
        }
    }
    out.push(("model.norm.weight".into(), vec![HIDDEN]));
    out.push(("lm_head.weight".into(), vec![VOCAB, HIDDEN]));
    let (e, m) = (VISION_WIDTH, VISION_MLP);
    out.push((
        "visual.patch_embed.proj.weight".into(),
        vec![e, 3, 2, 14, 14],
    ));
    for i in 0..VISION_DEPTH {
        let p = format!("visual.blocks.{i}");
        for (name, shape) in [
            ("norm1.weight", vec![e]),
            ("attn.qkv.weight", vec![3 * e, e]),
            ("attn.qkv.bias", vec![3 * e]),
            ("attn.proj.weight", vec![e, e]),
            ("attn.proj.bias", vec![e]),
            ("norm2.weight", vec![e]),
            ("mlp.gate_proj.weight", vec![m, e]),
            ("mlp.gate_proj.bias", vec![m]),
            ("mlp.up_proj.weight", vec![m, e]),
            ("mlp.up_proj.bias", vec![m]),
            ("mlp.down_proj.weight", vec![e, m]),
            ("mlp.down_proj.bias", vec![e]),
        ] {
            out.push((format!("{p}.{name}"), shape));
        }
    }
    let merged = 4 * e;
    for (name, shape) in [
        ("ln_q.weight", vec![e]),
        ("mlp.0.weight", vec![merged, merged]),
        ("mlp.0.bias", vec![merged]),
        ("mlp.2.weight", vec![HIDDEN, merged]),
        ("mlp.2.bias", vec![HIDDEN]),
    ] {
        out.push((format!("visual.merger.{name}"), shape));
    }
    out
}

/// Writes the checkpoint to `out` (created) unless a complete one is there already.
pub fn write(out: &Path, layers: usize) -> Result<()> {
    if out.join("model.safetensors.index.json").is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let fixture = crate::bench::tools_dir().join("../sae-models/tests/fixtures/qwen2_5_vl_tiny");
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        std::fs::copy(fixture.join(file), out.join(file))?;
    }
    std::fs::write(
        out.join("config.json"),
        config(&fixture, layers)?.to_string(),
    )?;
    // Shards of about SHARD_BYTES, tensors whole and in order.
    let all = tensors(layers);
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut size = 0;
    for (name, shape) in all {
        let bytes = 2 * shape.iter().product::<usize>();
        if size + bytes > SHARD_BYTES && !shards.last().unwrap().is_empty() {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().unwrap().push((name, shape));
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        eprintln!("writing {file} ({} tensors)", shard.len());
        write_shard(&out.join(&file), shard, &mut rng)?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), json!(file));
        }
    }
    // The index last: its presence marks a complete checkpoint.
    let index = json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(out.join("model.safetensors.index.json"), index.to_string())?;
    Ok(())
}

/// The tiny fixture's config with the 7B's sizes and `layers` text layers.
fn config(fixture: &Path, layers: usize) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(fixture.join("config.json"))?;
    let mut c: serde_json::Value = serde_json::from_str(&text)?;
    c["dtype"] = json!("bfloat16");
    let t = &mut c["text_config"];
    t["hidden_size"] = json!(HIDDEN);
    t["intermediate_size"] = json!(MLP);
    t["num_attention_heads"] = json!(HEADS);
    t["num_key_value_heads"] = json!(KV_HEADS);
    t["num_hidden_layers"] = json!(layers);
    t["layer_types"] = json!(vec!["full_attention"; layers]);
    t["vocab_size"] = json!(VOCAB);
    t["max_position_embeddings"] = json!(128000);
    t["rope_parameters"]["mrope_section"] = json!([16, 24, 24]);
    t["dtype"] = json!("bfloat16");
    let v = &mut c["vision_config"];
    v["depth"] = json!(VISION_DEPTH);
    v["hidden_size"] = json!(VISION_WIDTH);
    v["intermediate_size"] = json!(VISION_MLP);
    v["num_heads"] = json!(16);
    v["out_hidden_size"] = json!(HIDDEN);
    v["window_size"] = json!(112);
    v["fullatt_block_indexes"] = json!([7, 15, 23, 31]);
    Ok(c)
}

/// One safetensors file of random bf16 tensors: norms 1, other weights uniform in +-0.035
/// (standard deviation 0.02, as transformers initialises), biases 0.
fn write_shard(path: &Path, tensors: &[(String, Vec<usize>)], rng: &mut u64) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let bytes = 2 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut w = BufWriter::with_capacity(
        8 << 20,
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    let mut buffer = Vec::new();
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        buffer.clear();
        let norm = ["norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight"];
        if norm.iter().any(|n| name.ends_with(n)) {
            buffer.resize(n, bf16::ONE);
        } else if name.ends_with(".bias") {
            buffer.resize(n, bf16::ZERO);
        } else {
            buffer.extend((0..n).map(|_| {
                // xorshift64*: 24 random bits to a uniform value in [-0.0346, 0.0346).
                *rng ^= *rng >> 12;
                *rng ^= *rng << 25;
                *rng ^= *rng >> 27;
                let bits = (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32;
                bf16::from_f32((bits / (1 << 24) as f32 - 0.5) * 0.0693)
            }));
        }
        w.write_all(bytemuck::cast_slice(&buffer))?;
    }
    w.flush()?;
    Ok(())
}
