//! SAE Made Easy, sparsify and SAELens against our checkpoints, both ways (`tools/interop.py`):
//! what they write, we read with the same outputs; what `sae convert` writes, they load with
//! the same outputs and the names and dtype they expect. Runs when `SAE_TEST_PYTHON` names a
//! Python with torch, transformers, peft, eai-sparsify and sae-lens, and SAE Made Easy
//! importable (its `src/` on `PYTHONPATH`); says so and checks nothing otherwise.

mod common;

use std::path::Path;
use std::process::Command;

use common::{PROMPT, floats, ints, max_rel_diff, ok, s};

/// Runs `tools/interop.py args...` with `python`, which must succeed.
fn interop(python: &str, args: &[&Path]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/interop.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "interop.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_python_libraries_load_ours_and_we_load_theirs() {
    let Ok(python) = std::env::var("SAE_TEST_PYTHON") else {
        eprintln!("skipped: SAE_TEST_PYTHON names no Python with the SAE libraries");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = common::fixture("sae-models", "qwen2_tiny");
    let ids = common::fixture("sae-models", "smez_qwen2/reference.safetensors");
    interop(&python, &[Path::new("write"), d, &model, &ids]);
    let (theirs, written) = (d.join("theirs"), d.join("theirs.safetensors"));

    // Theirs, read by us.
    let encode = |sae: &Path| {
        let out = d.join("encoded.safetensors");
        ok(&[
            "encode",
            "--sae",
            s(sae),
            "--input",
            s(&written),
            "--key",
            "x",
            "--out",
            s(&out),
        ]);
        floats(&out, "sae_out")
    };
    for (sae, key) in [
        ("sparsify", "sparsify_out"),
        ("saelens_topk", "saelens_topk_out"),
        ("saelens_standard", "saelens_standard_out"),
    ] {
        let err = max_rel_diff(&encode(&theirs.join(sae)), &floats(&written, key));
        assert!(err < 1e-5, "{sae}: {err}");
    }
    let acts = d.join("acts.safetensors");
    ok(&[
        "activations",
        "--model",
        s(&model),
        "--text",
        PROMPT,
        "--sae",
        s(&theirs.join("smez")),
        "--out",
        s(&acts),
    ]);
    assert_eq!(
        ints(&acts, "inputs.input_ids"),
        ints(&ids, "inputs.input_ids")
    );
    let smez_logits = floats(&written, "smez_logits");
    let err = max_rel_diff(&floats(&acts, "logits"), &smez_logits);
    assert!(err < 1e-4, "SAE Made Easy's adapter: {err}");

    // Ours, read by them: SAE Made Easy's adapter through sparsify and back to PEFT (names
    // found on the model), SAELens' TopK SAE as sparsify, sparsify's as SAELens.
    let ours = d.join("ours");
    let convert = |from: &Path, to: &str, out: &str, extra: &[&str]| {
        let mut args = vec!["convert", "--sae", s(from), "--to", to, "--out"];
        let out = ours.join(out);
        args.push(s(&out));
        args.extend(extra);
        ok(&args);
    };
    let with_model = ["--model", s(&model)];
    convert(&theirs.join("smez"), "sparsify", "smez_sparsify", &[]);
    convert(&ours.join("smez_sparsify"), "peft", "peft", &with_model);
    convert(
        &theirs.join("saelens_topk"),
        "sparsify",
        "sparsify",
        &with_model,
    );
    convert(&theirs.join("sparsify"), "saelens", "saelens", &[]);
    convert(
        &theirs.join("sparsify"),
        "saelens",
        "saelens_bf16",
        &["--dtype", "bf16"],
    );
    interop(&python, &[Path::new("read"), d, &model, &ids]);
    let read = d.join("ours.safetensors");
    let err = max_rel_diff(&floats(&read, "peft_logits"), &smez_logits);
    assert!(err < 1e-5, "our PEFT adapter in SAE Made Easy: {err}");
    for (key, expected) in [
        ("sparsify_out", floats(&written, "saelens_topk_out")),
        ("saelens_out", floats(&written, "sparsify_out")),
        ("saelens_bf16_out", encode(&ours.join("saelens_bf16"))),
    ] {
        let err = max_rel_diff(&floats(&read, key), &expected);
        assert!(err < 1e-5, "{key}: {err}");
    }
    let configs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ours.json")).unwrap()).unwrap();
    assert_eq!(
        configs["sparsify_hookpoints"],
        serde_json::json!(["layers.1"])
    );
    assert_eq!(configs["saelens"]["hook_name"], "layers.1");
    assert_eq!(configs["saelens"]["architecture"], "topk");
    assert_eq!(configs["saelens"]["dtype"], "torch.float32");
    assert_eq!(configs["saelens_bf16"]["dtype"], "torch.bfloat16");
}
