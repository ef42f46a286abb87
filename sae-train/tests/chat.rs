//! Training on chat rows: one conversation per sequence, right-padded; the SAE must see exactly
//! the conversations' own tokens, without padding and (here) without special tokens.

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use sae_core::TargetModules;
use sae_data::record::to_chat_messages;
use sae_data::{Body, Kind, Record, ShardOptions, ShardWriter, Turn};
use sae_models::Tokenizer;
use sae_train::TrainConfig;
use sae_train::collective::Single;
use sae_train::config::parse_value;

#[test]
fn padding_and_special_tokens_stay_out_of_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sae-models/tests/fixtures/qwen2_tiny");
    let questions = [
        "What colour is the circle?",
        "How many shapes are there in this picture, counting every small one?",
        "Is it red?",
        "Which shape is on the left of the blue triangle and what is its colour?",
        "Yes?",
        "Describe the image.",
    ];
    let conversations: Vec<Vec<Turn>> = questions
        .iter()
        .map(|q| {
            vec![
                Turn::text("user", *q),
                Turn::text("assistant", "A blue square."),
            ]
        })
        .collect();
    let data = dir.path().join("chat");
    let mut writer = ShardWriter::new(&data, Kind::Chat, ShardOptions::default()).unwrap();
    for messages in &conversations {
        let body = Body::Chat {
            messages: messages.clone(),
            images: Vec::new(),
        };
        writer
            .push(Record {
                id: None,
                source: None,
                body,
            })
            .unwrap();
    }
    writer.finish("test").unwrap();

    let overrides: Vec<(String, toml::Value)> = [
        ("out", format!("{:?}", dir.path().join("run"))),
        ("model.name", format!("{model:?}")),
        ("data.path", format!("{data:?}")),
        ("data.shuffle", "false".into()),
        ("target_modules", "[\"model.layers.1\"]".into()),
        ("sae.k", "4".into()),
        ("sae.num_latents", "64".into()),
        ("train.steps", "2".into()),
        ("train.batch_size", "3".into()),
        ("train.exclude_special_tokens", "true".into()),
        ("log.tensorboard", "false".into()),
        ("log.progress", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), parse_value(&v)))
    .collect();
    let config = TrainConfig::parse("", "test", &overrides).unwrap();
    assert_eq!(
        config.target_modules,
        TargetModules::Names(vec!["model.layers.1".into()])
    );
    let summary =
        sae_train::train::<Autodiff<Flex>>(config, &Default::default(), Single::shared()).unwrap();
    assert!(summary.finished);

    // The tokens of each conversation as the chat template renders it, minus special tokens.
    let tokenizer = Tokenizer::load(&model).unwrap();
    let special = tokenizer.special_token_ids();
    assert!(!special.is_empty());
    let counted: Vec<u64> = conversations
        .iter()
        .map(|turns| {
            let text = tokenizer
                .apply_chat_template(&to_chat_messages(turns), false)
                .unwrap();
            let ids = tokenizer.encode(&text, false).unwrap();
            ids.iter().filter(|id| !special.contains(id)).count() as u64
        })
        .collect();
    let metrics = std::fs::read_to_string(summary.run_dir.join("metrics.jsonl")).unwrap();
    let tokens: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["tokens"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        tokens,
        vec![counted[..3].iter().sum::<u64>(), counted[3..].iter().sum()]
    );
}
