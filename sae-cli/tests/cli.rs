//! The `sae` command line as outside scripts call it (DESIGN.md's contract).

mod common;

use std::path::{Path, PathBuf};

use common::{fails, floats, max_rel_diff, ok, s};
use sae_core::tensor_file::write_tensors;
use sae_core::{HostData, HostTensor, StorageDtype, TensorFile};

fn fixture(rel: &str) -> PathBuf {
    common::fixture("sae-core", rel)
}

#[test]
fn encode_matches_sparsify() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("latents.safetensors");
    let input = fixture("sparsify_topk/reference.safetensors");
    ok(&[
        "encode",
        "--sae",
        s(&fixture("sparsify_topk")),
        "--input",
        s(&input),
        "--key",
        "x",
        "--out",
        s(&out),
        "--chunk",
        "7",
    ]);

    let file = TensorFile::open(&out).unwrap();
    let shapes = file.describe();
    assert_eq!(
        shapes,
        [
            ("fvu".into(), "F32".into(), vec![1]),
            ("latent_acts".into(), "F32".into(), vec![32, 8]),
            ("latent_indices".into(), "I64".into(), vec![32, 8]),
            ("sae_out".into(), "F32".into(), vec![32, 64]),
        ]
    );
    let (HostData::I64(ours), HostData::I64(theirs)) = (
        file.get("latent_indices").unwrap().data,
        TensorFile::open(&input)
            .unwrap()
            .get("latent_indices")
            .unwrap()
            .data,
    ) else {
        panic!("indices are int64")
    };
    // Same index set per token, and the same value for each index.
    let pairs = |idx: &[i64], acts: &[f32]| -> Vec<Vec<(i64, u32)>> {
        idx.chunks(8)
            .zip(acts.chunks(8))
            .map(|(i, a)| {
                let mut row: Vec<(i64, u32)> = i
                    .iter()
                    .copied()
                    .zip(a.iter().map(|v| (v * 1e4).round() as u32))
                    .collect();
                row.sort();
                row
            })
            .collect()
    };
    assert_eq!(
        pairs(&ours, &floats(&out, "latent_acts")),
        pairs(&theirs, &floats(&input, "latent_acts"))
    );
    assert!(max_rel_diff(&floats(&out, "sae_out"), &floats(&input, "sae_out")) < 1e-5);
    assert!(max_rel_diff(&floats(&out, "fvu"), &floats(&input, "fvu")) < 1e-5);
}

#[test]
fn encode_flattens_batch_by_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("latents.safetensors");
    let input = fixture("smez_dummy/reference.safetensors");
    // `sae_eval_output` is the SAE applied to the DummyModel's output, `base_output`.
    ok(&[
        "encode",
        "--sae",
        s(&fixture("smez_dummy/adapter")),
        "--input",
        s(&input),
        "--key",
        "base_output",
        "--out",
        s(&out),
    ]);
    assert_eq!(
        TensorFile::open(&out).unwrap().shape("sae_out").unwrap(),
        [32, 10]
    );
    assert!(max_rel_diff(&floats(&out, "sae_out"), &floats(&input, "sae_eval_output")) < 1e-5);
}

#[test]
fn convert_round_trip_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("sparsify"),
        dir.path().join("saelens"),
        dir.path().join("peft"),
    );
    ok(&[
        "convert",
        "--sae",
        s(&fixture("smez_dummy/adapter")),
        "--to",
        "sparsify",
        "--out",
        s(&a),
    ]);
    ok(&["convert", "--sae", s(&a), "--to", "saelens", "--out", s(&b)]);
    // sparsify's names are relative to the model's base module: they write no PEFT adapter
    // without the model; SAELens keeps a full module path.
    let err = fails(&["convert", "--sae", s(&b), "--to", "peft", "--out", s(&c)]);
    assert!(err.contains("--model"), "{err}");
    let adapter = fixture("smez_dummy/adapter");
    ok(&[
        "convert",
        "--sae",
        s(&adapter),
        "--to",
        "saelens",
        "--out",
        s(&b),
        "--overwrite",
    ]);
    ok(&["convert", "--sae", s(&b), "--to", "peft", "--out", s(&c)]);
    let input = fixture("smez_dummy/reference.safetensors");
    let out = dir.path().join("o.safetensors");
    ok(&[
        "encode",
        "--sae",
        s(&c),
        "--input",
        s(&input),
        "--key",
        "base_output",
        "--out",
        s(&out),
    ]);
    assert!(max_rel_diff(&floats(&out, "sae_out"), &floats(&input, "sae_eval_output")) < 1e-5);

    let text = ok(&["inspect", s(&a)]);
    assert!(
        text.starts_with("layout: sparsify\nsae linear: TopK, d_in 10, 6 latents, k 2, relu false"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--sae", s(&c), "--json"])).unwrap();
    assert_eq!(json["layout"], "peft");
    assert_eq!(json["saes"][0]["hook"], "linear");
    assert_eq!(json["tensors"].as_array().unwrap().len(), 3);

    // An existing, non-empty output folder is left alone.
    let err = fails(&["convert", "--sae", s(&a), "--to", "peft", "--out", s(&c)]);
    assert!(err.contains("is not empty"), "{err}");

    // --overwrite replaces the checkpoint there, whatever its layout, and keeps other files.
    std::fs::write(a.join("notes.txt"), "mine").unwrap();
    fn overwrite<'a>(from: &'a Path, to: &'a str, out: &'a Path) -> [&'a str; 8] {
        let (from, out) = (s(from), s(out));
        [
            "convert",
            "--sae",
            from,
            "--to",
            to,
            "--out",
            out,
            "--overwrite",
        ]
    }
    ok(&overwrite(&c, "saelens", &a));
    let text = ok(&["inspect", s(&a)]);
    assert!(text.starts_with("layout: saelens"), "{text}");
    assert!(
        !a.join("linear").exists(),
        "the sparsify layout's folder is gone"
    );
    assert_eq!(
        std::fs::read_to_string(a.join("notes.txt")).unwrap(),
        "mine"
    );
    let mut names: Vec<String> = std::fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cfg.json", "notes.txt", "sae_weights.safetensors"]);
    // Converting a folder into itself is refused, and it stays as it was.
    let err = fails(&overwrite(&a, "peft", &a));
    assert!(err.contains("is the checkpoint being converted"), "{err}");
    assert!(ok(&["inspect", s(&a)]).starts_with("layout: saelens"));
}

// SAE Made Easy's adapter on qwen2_tiny's `model.layers.1.mlp.down_proj`, through sparsify
// (named `layers.1.mlp.down_proj` there, as sparsify names hook points from the base module) and
// back to PEFT with the model: the same tensors under the same keys. A name the model has no
// hook point for, or at another width, is refused by name.
#[test]
fn convert_finds_module_paths_on_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture("sae-models", "qwen2_tiny");
    let adapter = common::fixture("sae-models", "smez_qwen2/adapter");
    let (sparsify, peft) = (dir.path().join("sparsify"), dir.path().join("peft"));
    let out = common::sae_with(
        &[
            "convert",
            "--sae",
            s(&adapter),
            "--to",
            "sparsify",
            "--out",
            s(&sparsify),
        ],
        &[],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no ReLU"), "{stderr}");
    assert!(sparsify.join("layers.1.mlp.down_proj/cfg.json").is_file());
    ok(&[
        "convert",
        "--sae",
        s(&sparsify),
        "--to",
        "peft",
        "--model",
        s(&model),
        "--out",
        s(&peft),
    ]);
    let (theirs, ours) = (
        TensorFile::open(adapter.join("adapter_model.safetensors")).unwrap(),
        TensorFile::open(peft.join("adapter_model.safetensors")).unwrap(),
    );
    let names = theirs.names();
    assert!(names.contains(&"base_model.model.model.layers.1.mlp.down_proj.sae_W_dec".into()));
    assert_eq!(ours.names(), names);
    for name in &names {
        assert_eq!(
            ours.get(name).unwrap().to_f32(),
            theirs.get(name).unwrap().to_f32(),
            "{name}"
        );
    }

    // The residual stream of layer 1 is no linear layer: SAE Made Easy could not load it.
    let out = common::sae_with(
        &[
            "convert",
            "--sae",
            s(&fixture("sparsify_topk")),
            "--to",
            "peft",
            "--model",
            s(&model),
            "--out",
            s(&dir.path().join("residual")),
        ],
        &[],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model.layers.1 is not a linear layer"),
        "{stderr}"
    );

    let err = fails(&[
        "convert",
        "--sae",
        s(&fixture("smez_dummy/adapter")),
        "--to",
        "peft",
        "--model",
        s(&model),
        "--out",
        s(&dir.path().join("none")),
    ]);
    assert!(err.contains("\"linear\""), "{err}");
}

#[test]
fn bad_input_gives_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let input = fixture("sparsify_topk/reference.safetensors");
    let err = fails(&[
        "encode",
        "--sae",
        s(&fixture("smez_dummy/adapter")),
        "--input",
        s(&input),
        "--key",
        "x",
        "--out",
        s(&out),
    ]);
    assert!(
        err.contains("activation width 64 does not match the SAE's d_in 10"),
        "{err}"
    );
    let err = fails(&[
        "encode",
        "--sae",
        s(&fixture("sparsify_topk")),
        "--input",
        s(&input),
        "--key",
        "nope",
        "--out",
        s(&out),
    ]);
    assert!(err.contains("has no tensor \"nope\""), "{err}");
    let err = fails(&["inspect", s(dir.path())]);
    assert!(err.contains("holds no SAE checkpoint"), "{err}");
    let err = fails(&[
        "encode",
        "--sae",
        s(&fixture("sparsify_topk")),
        "--input",
        s(&dir.path().join("missing.safetensors")),
        "--key",
        "x",
        "--out",
        s(&out),
    ]);
    assert!(err.contains("No such file"), "{err}");
    assert!(!out.exists(), "nothing is written on error");

    // Activations that are not a float token matrix, and an output that is the input.
    let odd = dir.path().join("odd.safetensors");
    let tensors = [
        ("empty", HostTensor::f32(vec![0, 64], vec![])),
        ("flat", HostTensor::f32(vec![64], vec![0.5; 64])),
        ("ints", HostTensor::i64(vec![2, 64], vec![1; 128])),
    ]
    .map(|(name, t)| (name.to_string(), t));
    write_tensors(&odd, &tensors, StorageDtype::F32, None).unwrap();
    let before = std::fs::read(&odd).unwrap();
    for (key, out_file, message) in [
        (
            "empty",
            &out,
            "invalid activations: shape [0, 64] holds no tokens",
        ),
        (
            "flat",
            &out,
            "invalid activations: shape [64], expected [N, d] or [B, T, d]",
        ),
        ("ints", &out, "invalid activations: they are integers"),
        ("flat", &odd, "is the input file"),
    ] {
        let err = fails(&[
            "encode",
            "--sae",
            s(&fixture("sparsify_topk")),
            "--input",
            s(&odd),
            "--key",
            key,
            "--out",
            s(out_file),
        ]);
        assert!(err.contains(message), "{key}: {err}");
    }
    assert!(!out.exists(), "nothing is written on error");
    assert_eq!(std::fs::read(&odd).unwrap(), before, "the input is intact");
}
