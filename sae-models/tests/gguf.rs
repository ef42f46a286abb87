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

/// A GGUF v3 file: its metadata entries (already encoded: key, type, value) and tensors
/// (name, dims, ggml type), padded with `data` zero bytes of tensor data.
fn hand_made(metadata: &[Vec<u8>], tensors: &[(&str, &[u64], u32)], data: usize) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend((tensors.len() as u64).to_le_bytes());
    bytes.extend((metadata.len() as u64).to_le_bytes());
    metadata.iter().for_each(|m| bytes.extend(m));
    for (name, dims, kind) in tensors {
        bytes.extend((name.len() as u64).to_le_bytes());
        bytes.extend(name.as_bytes());
        bytes.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| bytes.extend(d.to_le_bytes()));
        bytes.extend(kind.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
    }
    bytes.resize(bytes.len().div_ceil(32) * 32 + data, 0);
    bytes
}

/// A metadata entry `key` of GGUF type `kind` whose value is `value`, already encoded.
fn entry(key: &str, kind: u32, value: &[u8]) -> Vec<u8> {
    let mut out = (key.len() as u64).to_le_bytes().to_vec();
    out.extend(key.as_bytes());
    out.extend(kind.to_le_bytes());
    out.extend(value);
    out
}

/// An array header: element type and count.
fn array(inner: u32, count: u64) -> Vec<u8> {
    [inner.to_le_bytes().to_vec(), count.to_le_bytes().to_vec()].concat()
}

fn open_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    match GgufFile::open(&path) {
        Ok(_) => panic!("a corrupt file was parsed"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn corrupt_headers_are_errors_not_panics_or_huge_allocations() {
    // An array that claims 2^40 elements in a file of a few hundred bytes.
    let huge = entry("a", 9, &array(4, 1 << 40));
    let err = open_err(&hand_made(&[huge], &[], 64));
    assert!(err.contains("bad or truncated metadata value a"), "{err}");
    // Arrays of arrays of arrays: no GGUF writes them; they would recurse without bound.
    let nested = [
        array(9, 1),
        array(9, 1),
        array(4, 1),
        7u32.to_le_bytes().to_vec(),
    ]
    .concat();
    let err = open_err(&hand_made(&[entry("n", 9, &nested)], &[], 64));
    assert!(err.contains("bad or truncated metadata value n"), "{err}");
    // A tensor whose element count overflows 64 bits.
    let dims: &[u64] = &[1 << 40, 1 << 40];
    let err = open_err(&hand_made(&[], &[("t", dims, 0)], 64));
    assert!(
        err.contains("tensor t runs past the end of the file"),
        "{err}"
    );
}
