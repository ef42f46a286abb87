//! GGUF parsing and dequantisation against gguf-py's own dequantiser
//! (fixture made by tools/make_gguf_quant_fixture.py).

use std::path::PathBuf;

use sae_core::TensorFile;
use sae_models::gguf::GgufFile;

mod common;

use common::max_rel_diff;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf_quants")
        .join(rel)
}

#[test]
fn every_supported_type_dequantises_like_gguf_py() {
    let file = GgufFile::open(&fixture("quants.gguf")).unwrap();
    let expected = TensorFile::open(fixture("expected.safetensors")).unwrap();
    assert_eq!(
        file.get("general.architecture").and_then(|v| v.as_str()),
        Some("llama")
    );
    let names = expected.names();
    assert_eq!(names.len(), 8);
    for name in names {
        let (shape, ours) = file.dequantize(&name).unwrap();
        let reference = expected.get(&name).unwrap();
        assert_eq!(shape, reference.shape, "{name}");
        let err = max_rel_diff(&ours, &reference.to_f32());
        assert!(err < 1e-6, "{name}: {err}");
    }
}

#[test]
fn corrupt_files_are_errors() {
    let bytes = std::fs::read(fixture("quants.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    for (cut, what) in [
        (bytes.len() - 100, "truncated"),
        (40, "truncated"),
        (3, "bad magic"),
    ] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = GgufFile::open(&path)
            .err()
            .expect("a cut file must not parse")
            .to_string();
        assert!(err.contains(what), "{cut}: {err}");
    }
}
