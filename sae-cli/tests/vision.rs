//! `sae activations` and `sae generate` with `--image` on the Qwen2-VL and Qwen2.5-VL fixtures:
//! the file holds exactly what transformers' processor and model give (names, shapes, values).

mod common;

use std::path::PathBuf;

use common::{
    fails, fake_hub_model, ints, json_tokens, max_rel_diff, ok, ok_with, photo_questions, s,
};
use sae_core::TensorFile;
use sae_models::ProcessorSettings;

fn fixture(rel: &str) -> PathBuf {
    common::fixture("sae-models", rel)
}

const MODELS: [&str; 3] = ["qwen2_vl_tiny", "qwen2_5_vl_tiny", "llava_onevision_tiny"];

#[test]
fn activations_with_an_image_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("image_processors/images/image1.png");
    for model in MODELS {
        let out = dir.path().join(format!("{model}.safetensors"));
        ok(&[
            "activations",
            "--model",
            s(&fixture(model)),
            "--image",
            s(&image),
            "--chat",
            "Describe this image.",
            "--hooks",
            r"model\.visual\.(blocks\.\d+|merger)",
            "--hooks",
            r"model\.(vision_tower\.encoder\.layers\.\d+|multi_modal_projector)",
            "--hooks",
            r"model\.language_model\.layers\.\d+(\.self_attn\.o_proj|\.mlp\.down_proj)?",
            "--out",
            s(&out),
        ]);
        let ours = TensorFile::open(&out).unwrap();
        let theirs = TensorFile::open(fixture(&format!("{model}/reference.safetensors"))).unwrap();
        let mut names = ours.names();
        names.sort();
        let mut expected: Vec<String> = theirs
            .names()
            .into_iter()
            .filter(|n| n != "generate.greedy")
            .collect();
        expected.sort();
        assert_eq!(names, expected, "{model}: the fixture's tensors, no more");
        for name in names {
            assert_eq!(
                ours.shape(&name).unwrap(),
                theirs.shape(&name).unwrap(),
                "{model} {name}"
            );
            if name.starts_with("inputs.") && name != "inputs.pixel_values" {
                assert_eq!(
                    ints(&out, &name),
                    ints(&fixture(&format!("{model}/reference.safetensors")), &name)
                );
                continue;
            }
            let err = max_rel_diff(
                &ours.get(&name).unwrap().to_f32(),
                &theirs.get(&name).unwrap().to_f32(),
            );
            assert!(err < 1e-4, "{model}: {name} differs by {err}");
        }
    }
}

#[test]
fn generate_with_an_image_gives_the_greedy_tokens() {
    let image = fixture("image_processors/images/image1.png");
    for model in MODELS {
        let text = ok(&[
            "generate",
            "--model",
            s(&fixture(model)),
            "--image",
            s(&image),
            "--chat",
            "Describe this image.",
            "--max-new-tokens",
            "8",
            "--json",
        ]);
        let tokens = json_tokens(&text);
        assert_eq!(
            tokens,
            ints(
                &fixture(&format!("{model}/reference.safetensors")),
                "generate.greedy"
            ),
            "{model}"
        );
    }
}

#[test]
fn bad_images_and_text_models_with_images_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = fails(&[
        "generate",
        "--model",
        s(&fixture("qwen2_vl_tiny")),
        "--image",
        s(&corrupt),
        "--chat",
        "Hi",
        "--max-new-tokens",
        "1",
    ]);
    assert!(err.contains("corrupt.png"), "{err}");
    let err = fails(&[
        "generate",
        "--model",
        s(&fixture("qwen2_tiny")),
        "--image",
        s(&fixture("image_processors/images/image1.png")),
        "--chat",
        "Hi",
        "--max-new-tokens",
        "1",
    ]);
    assert!(err.contains("text-only model"), "{err}");
    // --text is tokenized as it is: without the image token, the error names it.
    let err = fails(&[
        "generate",
        "--model",
        s(&fixture("qwen2_vl_tiny")),
        "--image",
        s(&fixture("image_processors/images/image1.png")),
        "--text",
        "Hi",
        "--max-new-tokens",
        "1",
    ]);
    assert!(
        err.contains("with --text, the text holds one <|image_pad|> per --image"),
        "{err}"
    );
}

// A hub id resolved from the local cache (offline) brings the processor config along.
#[test]
fn a_vision_model_is_found_in_the_hub_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    let files = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
        "processor_config.json",
    ];
    fake_hub_model(
        home.path(),
        "test/qwen2-vl-tiny",
        &fixture("qwen2_vl_tiny"),
        &files,
    );
    let env = [
        ("HF_HOME", home.path()),
        ("HF_HUB_OFFLINE", std::path::Path::new("1")),
    ];
    let image = fixture("image_processors/images/image1.png");
    let text = ok_with(
        &[
            "generate",
            "--model",
            "test/qwen2-vl-tiny",
            "--image",
            s(&image),
            "--chat",
            "Describe this image.",
            "--max-new-tokens",
            "8",
            "--json",
        ],
        &env,
    );
    let tokens = json_tokens(&text);
    let reference = fixture("qwen2_vl_tiny/reference.safetensors");
    assert_eq!(tokens, ints(&reference, "generate.greedy"));
}

// Training SAEs on a vision-language model: one on the language model's residual stream (the
// real tokens of padded chat batches, image tokens included) and one on a vision block (every
// patch of the batch's images).
#[test]
fn train_saes_on_both_towers_of_qwen2_vl() {
    let dir = tempfile::tempdir().unwrap();
    let data = photo_questions(dir.path());
    let out = dir.path().join("run");
    ok(&[
        "train",
        "--model",
        s(&fixture("qwen2_vl_tiny")),
        "--data",
        s(&data),
        "--hook",
        "model.visual.blocks.1",
        "--hook",
        "model.language_model.layers.0",
        "--k",
        "4",
        "--num-latents",
        "64",
        "--batch-size",
        "2",
        "--steps",
        "3",
        "--set",
        "data.shuffle=false",
        "--out",
        s(&out),
    ]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    // image1 (6 x 8 patches) and image2 in step 1: the vision SAE sees all their patches.
    let vision = &lines[0]["hooks"]["model.visual.blocks.1"];
    let text = &lines[0]["hooks"]["model.language_model.layers.0"];
    let grid = |name: &str| {
        let img = sae_models::load_image(&fixture(&format!("image_processors/images/{name}.png")))
            .unwrap();
        let p =
            sae_models::Qwen2VlImageProcessor::from_model_dir(&fixture("qwen2_vl_tiny")).unwrap();
        let g = p.preprocess(&[img]).unwrap().image_grid_thw[0];
        (g[0] * g[1] * g[2]) as u64
    };
    assert_eq!(
        vision["tokens"].as_u64().unwrap(),
        grid("image1") + grid("image2")
    );
    assert!(text["tokens"].as_u64().unwrap() > 0);
    for line in &lines {
        for hook in ["model.visual.blocks.1", "model.language_model.layers.0"] {
            let fvu = line["hooks"][hook]["fvu"].as_f64().unwrap();
            assert!(fvu.is_finite() && fvu > 0.0, "{hook}: fvu {fvu}");
        }
    }
    let adapter = std::fs::read_to_string(out.join("sae/adapter_config.json")).unwrap();
    assert!(
        adapter.contains("model.visual.blocks.1")
            && adapter.contains("model.language_model.layers.0")
    );

    // Cached, the language-model SAE records the image tokens with the text; the vision SAE is
    // skipped.
    let (cache, model, sae) = (
        dir.path().join("cache"),
        fixture("qwen2_vl_tiny"),
        out.join("sae"),
    );
    let mut args = vec!["cache", "--model", s(&model)];
    args.extend(["--sae", s(&sae), "--data", s(&data)]);
    args.extend(["--batches", "1", "--batch-size", "2", "--out", s(&cache)]);
    let summary: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let hooks = summary["hooks"].as_object().unwrap();
    assert_eq!(
        hooks.keys().collect::<Vec<_>>(),
        ["model.language_model.layers.0"]
    );
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cache.join("cache.json")).unwrap()).unwrap();
    let image_token = info["image_token"].as_i64().unwrap();
    let ids = common::ints(&cache.join("tokens.safetensors"), "input_ids");
    let image_tokens = ids.iter().filter(|&&id| id == image_token).count() as u64;
    // Qwen2-VL merges 2 x 2 patches into one image token.
    assert_eq!(image_tokens, (grid("image1") + grid("image2")) / 4);
    // Each image is placed on its tokens' grid and kept as the dataset holds it.
    let placed = info["images"].as_array().unwrap();
    assert_eq!(placed.len(), 2);
    for (i, name) in ["image1", "image2"].iter().enumerate() {
        let p = &placed[i];
        let cells = p["rows"].as_u64().unwrap() * p["cols"].as_u64().unwrap();
        assert_eq!(
            (p["sequence"].as_u64(), cells),
            (Some(i as u64), grid(name) / 4)
        );
        let kept = std::fs::read(cache.join(p["file"].as_str().unwrap())).unwrap();
        let original = fixture(&format!("image_processors/images/{name}.png"));
        assert_eq!(kept, std::fs::read(original).unwrap(), "{name}");
    }
    // The dashboard draws the latents that fire on image tokens over the images.
    let dash = dir.path().join("dash");
    ok(&["dashboard", "--cache", s(&cache), "--out", s(&dash)]);
    let pages = std::fs::read_dir(dash.join("0")).unwrap();
    let with_images = pages
        .filter(|p| {
            std::fs::read_to_string(p.as_ref().unwrap().path())
                .unwrap()
                .contains("<img src=\"../images/")
        })
        .count();
    assert!(with_images > 0);
    assert!(dash.join("images/000000.png").is_file());

    // Evaluated on text alone, the vision SAE sees nothing: one clear error, not a panic.
    let texts = dir.path().join("texts");
    std::fs::create_dir(&texts).unwrap();
    std::fs::write(texts.join("a.txt"), "words ".repeat(200)).unwrap();
    let text_data = dir.path().join("text-data");
    common::preprocess_texts(&texts, &text_data);
    let stderr = fails(&[
        "eval",
        "--model",
        s(&fixture("qwen2_vl_tiny")),
        "--sae",
        s(&out.join("sae")),
        "--data",
        s(&text_data),
        "--batch-size",
        "1",
        "--context",
        "32",
    ]);
    assert!(
        stderr.contains("the SAE for model.visual.blocks.1 saw no activations"),
        "{stderr}"
    );
}

// The same on LLaVA-OneVision: the vision SAE sees every patch of every real tile (the padding
// tiles of a batch are never run).
#[test]
fn train_saes_on_both_towers_of_llava_onevision() {
    let dir = tempfile::tempdir().unwrap();
    let data = photo_questions(dir.path());
    let out = dir.path().join("run");
    let (vision_hook, text_hook) = (
        "model.vision_tower.encoder.layers.1",
        "model.language_model.layers.0",
    );
    ok(&[
        "train",
        "--model",
        s(&fixture("llava_onevision_tiny")),
        "--data",
        s(&data),
        "--hook",
        vision_hook,
        "--hook",
        text_hook,
        "--k",
        "4",
        "--num-latents",
        "64",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--set",
        "data.shuffle=false",
        "--out",
        s(&out),
    ]);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    // 56-pixel tiles of 14-pixel patches: 16 patches per tile.
    let tiles = |name: &str| {
        let img = sae_models::load_image(&fixture(&format!("image_processors/images/{name}.png")))
            .unwrap();
        let p = sae_models::LlavaOnevisionImageProcessor::from_model_dir(&fixture(
            "llava_onevision_tiny",
        ))
        .unwrap();
        p.preprocess(&[img]).unwrap().pixel_values.shape[1] as u64
    };
    let vision = first["hooks"][vision_hook]["tokens"].as_u64().unwrap();
    assert_eq!(vision, 16 * (tiles("image1") + tiles("image2")));
    assert!(
        first["hooks"][text_hook]["fvu"]
            .as_f64()
            .unwrap()
            .is_finite()
    );

    // Cached, each (tiled) image is placed on its reassembled tile map: after the whole-image
    // view's 16 tokens, rows ending in a newline token, in the image's own aspect ratio.
    let (cache, model, sae) = (
        dir.path().join("cache"),
        fixture("llava_onevision_tiny"),
        out.join("sae"),
    );
    let mut args = vec![
        "cache",
        "--model",
        s(&model),
        "--sae",
        s(&sae),
        "--data",
        s(&data),
    ];
    args.extend(["--batches", "1", "--batch-size", "2", "--out", s(&cache)]);
    ok(&args);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cache.join("cache.json")).unwrap()).unwrap();
    let image_token = info["image_token"].as_i64().unwrap();
    let ids = common::ints(&cache.join("tokens.safetensors"), "input_ids");
    let starts = common::ints(&cache.join("tokens.safetensors"), "sequence_starts");
    let placed = info["images"].as_array().unwrap();
    assert_eq!(placed.len(), 2);
    for (i, name) in ["image1", "image2"].iter().enumerate() {
        let p = &placed[i];
        let get = |key: &str| p[key].as_u64().unwrap() as usize;
        let (rows, cols) = (get("rows"), get("cols"));
        assert_eq!((get("sequence"), get("stride")), (i, cols + 1));
        let sequence = &ids[starts[i] as usize..starts[i + 1] as usize];
        let run = sequence.iter().position(|&id| id == image_token).unwrap();
        let len = sequence[run..]
            .iter()
            .take_while(|&&id| id == image_token)
            .count();
        assert_eq!(
            (get("start"), len),
            (run + 16, 16 + rows * (cols + 1)),
            "{name}"
        );
        let img = sae_models::load_image(&fixture(&format!("image_processors/images/{name}.png")))
            .unwrap();
        let aspect = f64::from(img.width()) / f64::from(img.height());
        assert!(
            (cols as f64 - rows as f64 * aspect).abs() <= 1.0,
            "{name}: {rows} x {cols}, aspect {aspect}"
        );
    }
}
