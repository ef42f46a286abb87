//! Padded chat batches through a vision-language model's processor: real easy-VQA rows give
//! exactly the batch transformers' Qwen2-VL processor makes of them
//! (tools/make_vlm_batch_fixture.py): expanded image tokens, padding, pixel values, grids.

mod common;

use std::path::Path;

use burn::tensor::DType;
use sae_core::parity::max_abs_diff;
use sae_core::{HostData, TensorFile};
use sae_data::{Batching, Dataset, Format, Loader, OnError, PreprocessOptions, StreamConfig};
use sae_models::{Qwen2VlImageInputs, VisionLanguageModel};

type B = burn::backend::Flex;

fn ints(file: &TensorFile, name: &str) -> Vec<i64> {
    match file.get(name).unwrap().data {
        HostData::I64(v) => v,
        other => panic!("{name}: {other:?}"),
    }
}

fn easy_vqa_rows(dir: &Path, limit: usize) -> Dataset {
    let mut options = PreprocessOptions::new(Format::EasyVqa, &common::easy_vqa(), dir);
    options.limit = Some(limit);
    sae_data::preprocess(&options, &mut |_| {}).unwrap();
    Dataset::open(dir).unwrap()
}

fn qwen2_vl_tiny() -> VisionLanguageModel<B> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sae-models/tests/fixtures/qwen2_vl_tiny");
    VisionLanguageModel::load_as(dir.to_str().unwrap(), DType::F32, &Default::default()).unwrap()
}

fn plain() -> StreamConfig {
    StreamConfig {
        shuffle: false,
        ..StreamConfig::default()
    }
}

#[test]
fn image_rows_are_batched_as_transformers_processor_does() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = easy_vqa_rows(dir.path(), 8);
    let vlm = qwen2_vl_tiny();
    let pad = Batching::Pad {
        max_len: 256,
        truncate: false,
    };
    let mut loader = Loader::new(&dataset, &vlm.tokenizer, plain(), pad, 4, None)
        .unwrap()
        .with_image_tokens(&vlm);
    let batch = loader.next_batch().unwrap().unwrap();
    let reference = TensorFile::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_vl_batch.safetensors"),
    )
    .unwrap();
    assert_eq!(batch.input_ids, ints(&reference, "input_ids"));
    assert_eq!(batch.attention_mask, ints(&reference, "attention_mask"));
    let Some(Qwen2VlImageInputs {
        pixel_values,
        image_grid_thw,
    }) = batch.vision.as_ref().and_then(|v| v.downcast_ref())
    else {
        panic!("the rows have images, for Qwen2-VL");
    };
    let grids: Vec<i64> = image_grid_thw.iter().flatten().map(|&v| v as i64).collect();
    assert_eq!(grids, ints(&reference, "image_grid_thw"));
    let expected = reference.get("pixel_values").unwrap();
    assert_eq!(pixel_values.shape, expected.shape);
    let worst = max_abs_diff(&pixel_values.to_f32(), &expected.to_f32());
    assert!(worst < 1e-5, "pixel values differ by {worst}");
}

#[test]
fn ranks_process_the_images_of_their_part_of_each_batch() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = easy_vqa_rows(dir.path(), 8);
    let vlm = qwen2_vl_tiny();
    let pad = Batching::Pad {
        max_len: 256,
        truncate: false,
    };
    let loader = |rank: usize, ranks: usize| {
        let loader = Loader::new(&dataset, &vlm.tokenizer, plain(), pad, 4, None).unwrap();
        loader
            .with_shard(rank, ranks)
            .unwrap()
            .with_image_tokens(&vlm)
    };
    let pixels = |batch: &sae_data::Batch| {
        let inputs: &Qwen2VlImageInputs = batch.vision.as_ref().unwrap().downcast_ref().unwrap();
        (inputs.pixel_values.to_f32(), inputs.image_grid_thw.clone())
    };
    let whole = loader(0, 1).next_batch().unwrap().unwrap();
    let parts = [0, 1].map(|rank| loader(rank, 2).next_batch().unwrap().unwrap());
    assert_eq!(
        [parts[0].rows.clone(), parts[1].rows.clone()].concat(),
        whole.rows
    );
    let (a, b) = (pixels(&parts[0]), pixels(&parts[1]));
    let (all, grids) = pixels(&whole);
    assert_eq!([a.0, b.0].concat(), all);
    assert_eq!([a.1, b.1].concat(), grids);
    // Each part is padded to its own longest sequence; the real tokens are the whole's.
    for (part, rows) in parts.iter().zip([0..2, 2..4]) {
        for (i, row) in rows.enumerate() {
            let real = |b: &sae_data::Batch, r: usize| -> Vec<i64> {
                let ids = &b.input_ids[r * b.seq_len..(r + 1) * b.seq_len];
                let mask = &b.attention_mask[r * b.seq_len..(r + 1) * b.seq_len];
                ids.iter()
                    .zip(mask)
                    .filter(|(_, m)| **m != 0)
                    .map(|(i, _)| *i)
                    .collect()
            };
            assert_eq!(real(part, i), real(&whole, row));
        }
    }
}

#[test]
fn image_rows_too_long_are_never_cut_but_named_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = easy_vqa_rows(dir.path(), 8);
    let vlm = qwen2_vl_tiny();
    // Cutting would separate image tokens from their image: too long, even with truncate.
    let cut = Batching::Pad {
        max_len: 20,
        truncate: true,
    };
    let mut loader = Loader::new(&dataset, &vlm.tokenizer, plain(), cut, 2, None)
        .unwrap()
        .with_image_tokens(&vlm);
    let error = loader.next_batch().unwrap_err().to_string();
    assert!(
        error.contains("row 1 of") && error.contains("do not fit the context of 20"),
        "{error}"
    );
    let skip = StreamConfig {
        on_error: OnError::Skip,
        ..plain()
    };
    let mut loader = Loader::new(&dataset, &vlm.tokenizer, skip, cut, 2, None)
        .unwrap()
        .with_image_tokens(&vlm);
    assert!(loader.next_batch().unwrap().is_none());
    assert_eq!(loader.skipped(), 8);
}
