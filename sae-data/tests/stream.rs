//! The streaming dataset and loader: shuffling, sharding and resume are exact; batches hold
//! what the tokenizer and chat template make of the rows.

mod common;

use std::path::Path;

use sae_data::{
    Batching, Body, DataError, Dataset, Format, Kind, Loader, OnError, Part, PreprocessOptions,
    Record, RowProblem, ShardOptions, ShardWriter, StreamConfig, Turn,
};
use sae_models::Tokenizer;

/// `n` text rows `row <i>` with id `<i>`, in shards of 300 rows and row groups of 16.
fn numbered(dir: &Path, n: usize) -> Dataset {
    let options = ShardOptions {
        rows_per_shard: 300,
        rows_per_group: Some(16),
        ..ShardOptions::default()
    };
    let mut writer = ShardWriter::new(dir, Kind::Text, options).unwrap();
    for i in 0..n {
        writer
            .push(Record {
                id: Some(i.to_string()),
                source: None,
                body: Body::Text(format!("row {i} of the numbered test set")),
            })
            .unwrap();
    }
    writer.finish("test").unwrap();
    Dataset::open(dir).unwrap()
}

fn ids(dataset: &Dataset, config: StreamConfig) -> Vec<usize> {
    dataset
        .stream(config)
        .unwrap()
        .map(|e| e.unwrap().record.id.unwrap().parse().unwrap())
        .collect()
}

fn shuffled(seed: u64) -> StreamConfig {
    StreamConfig {
        seed,
        window: 4,
        ..StreamConfig::default()
    }
}

#[test]
fn a_listed_shard_outside_the_dataset_folder_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    numbered(&data, 20);
    let info_file = data.join("sae_dataset.json");
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info_file).unwrap()).unwrap();
    let outside = dir.path().join("outside.parquet");
    std::fs::rename(data.join(info["shards"][0].as_str().unwrap()), &outside).unwrap();
    let mut refusal = |shard: &str| {
        info["shards"][0] = shard.into();
        std::fs::write(&info_file, info.to_string()).unwrap();
        Dataset::open(&data).unwrap_err().to_string()
    };
    let sentence = |shard: &str, why: String| {
        format!(
            "{} is not valid: shard {shard:?} {why}; a dataset reads only files inside its folder",
            info_file.display()
        )
    };
    assert_eq!(
        refusal("../outside.parquet"),
        sentence(
            "../outside.parquet",
            "leaves the folder through `..`".into()
        )
    );
    assert_eq!(
        refusal(outside.to_str().unwrap()),
        sentence(outside.to_str().unwrap(), "is an absolute path".into())
    );
    #[cfg(unix)]
    {
        let link = data.join("linked.parquet");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let why = format!("passes through the symbolic link {}", link.display());
        assert_eq!(refusal("linked.parquet"), sentence("linked.parquet", why));
    }
}

#[test]
fn an_epoch_is_a_seeded_permutation_of_all_rows() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = numbered(dir.path(), 1000);
    assert_eq!(dataset.rows(), 1000);
    assert_eq!(dataset.shards().len(), 4);
    let plain = ids(
        &dataset,
        StreamConfig {
            shuffle: false,
            ..StreamConfig::default()
        },
    );
    assert_eq!(plain, (0..1000).collect::<Vec<_>>());
    let first = ids(&dataset, shuffled(1));
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, plain);
    assert_ne!(first, plain);
    assert_eq!(first, ids(&dataset, shuffled(1)));
    assert_ne!(first, ids(&dataset, shuffled(2)));
    // Two epochs: each a permutation, in a different order.
    let two = ids(
        &dataset,
        StreamConfig {
            epochs: Some(2),
            ..shuffled(1)
        },
    );
    assert_eq!(two.len(), 2000);
    assert_eq!(two[..1000], first);
    assert_ne!(two[1000..], first);
    let mut second = two[1000..].to_vec();
    second.sort();
    assert_eq!(second, plain);
}

#[test]
fn ranks_get_disjoint_equal_shares() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = numbered(dir.path(), 1000);
    let world = 3;
    let shares: Vec<Vec<usize>> = (0..world)
        .map(|rank| {
            ids(
                &dataset,
                StreamConfig {
                    rank,
                    world_size: world,
                    ..shuffled(5)
                },
            )
        })
        .collect();
    let len = shares[0].len();
    assert!(shares.iter().all(|s| s.len() == len));
    let mut all: Vec<usize> = shares.concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), world * len, "no row goes to two ranks");
    // 64 row groups (16 rows, the last of each shard shorter) in windows of 4: each window
    // leaves out its row count mod 3, so at most 2 rows per window.
    let windows = 64usize.div_ceil(4);
    assert!(all.len() <= 1000 && all.len() >= 1000 - 2 * windows);
    // Rank r's rows are the single-rank order's window-wise positions r, r + 3, ...: the
    // union in round-robin order is the single-rank order minus the remainders.
    let single = ids(&dataset, shuffled(5));
    let interleaved: Vec<usize> = (0..len)
        .flat_map(|i| shares.iter().map(move |s| s[i]))
        .collect();
    let kept: std::collections::HashSet<usize> = interleaved.iter().copied().collect();
    let single_kept: Vec<usize> = single.into_iter().filter(|i| kept.contains(i)).collect();
    assert_eq!(interleaved, single_kept);
}

#[test]
fn a_cursor_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = numbered(dir.path(), 700);
    let config = StreamConfig {
        rank: 1,
        world_size: 2,
        epochs: Some(2),
        ..shuffled(9)
    };
    let full = ids(&dataset, config);
    assert!(full.len() > 600);
    for cut in [
        0,
        1,
        17,
        250,
        full.len() / 2 + 3,
        full.len() - 1,
        full.len(),
    ] {
        let mut stream = dataset.stream(config).unwrap();
        let head: Vec<usize> = stream
            .by_ref()
            .take(cut)
            .map(|e| e.unwrap().record.id.unwrap().parse().unwrap())
            .collect();
        let saved = serde_json::to_string(&stream.cursor()).unwrap();
        drop(stream);
        let cursor = serde_json::from_str(&saved).unwrap();
        let tail: Vec<usize> = dataset
            .stream_from(config, Some(cursor))
            .unwrap()
            .map(|e| e.unwrap().record.id.unwrap().parse().unwrap())
            .collect();
        assert_eq!([head, tail].concat(), full, "cut at {cut}");
    }
    // A cursor of another stream (seed) is refused by name.
    let mut stream = dataset.stream(config).unwrap();
    stream.next();
    let other = StreamConfig { seed: 10, ..config };
    let error = dataset
        .stream_from(other, Some(stream.cursor()))
        .err()
        .unwrap();
    assert!(matches!(error, DataError::Cursor(_)), "{error}");
}

#[test]
fn bad_stored_rows_fail_with_their_index_or_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ShardWriter::new(dir.path(), Kind::Chat, ShardOptions::default()).unwrap();
    let turn = |content| Turn {
        role: "user".into(),
        content,
    };
    let good = Record {
        id: None,
        source: None,
        body: Body::Chat {
            messages: vec![turn(vec![Part::Text("hi".into())])],
            images: vec![],
        },
    };
    let bad = Record {
        id: None,
        source: None,
        body: Body::Chat {
            messages: vec![turn(vec![Part::Image, Part::Text("where?".into())])],
            images: vec![],
        },
    };
    for record in [good.clone(), bad, good.clone()] {
        writer.push(record).unwrap();
    }
    writer.finish("test").unwrap();
    let dataset = Dataset::open(dir.path()).unwrap();
    let plain = StreamConfig {
        shuffle: false,
        ..StreamConfig::default()
    };
    let results: Vec<_> = dataset.stream(plain).unwrap().collect();
    assert!(results[0].is_ok());
    match &results[1] {
        Err(DataError::BadRow { row: 1, reason, .. }) => {
            assert_eq!(*reason, RowProblem::ImageCount { shown: 1, held: 0 })
        }
        other => panic!("unexpected {other:?}"),
    }
    let skip = StreamConfig {
        on_error: OnError::Skip,
        ..plain
    };
    let mut stream = dataset.stream(skip).unwrap();
    let kept: Vec<Record> = stream.by_ref().map(|e| e.unwrap().record).collect();
    assert_eq!(kept, [good.clone(), good]);
    assert_eq!(stream.skipped(), 1);
}

#[test]
fn an_endless_stream_of_unusable_rows_ends_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ShardWriter::new(dir.path(), Kind::Chat, ShardOptions::default()).unwrap();
    let record = |parts| Record {
        id: None,
        source: None,
        body: Body::Chat {
            messages: vec![Turn {
                role: "user".into(),
                content: parts,
            }],
            images: vec![],
        },
    };
    // Two rows that show an image they do not hold.
    for _ in 0..2 {
        writer.push(record(vec![Part::Image])).unwrap();
    }
    writer.finish("test").unwrap();
    let dataset = Dataset::open(dir.path()).unwrap();
    let forever = StreamConfig {
        shuffle: false,
        epochs: None,
        on_error: OnError::Skip,
        ..StreamConfig::default()
    };
    let mut stream = dataset.stream(forever).unwrap();
    assert_eq!(stream.by_ref().count(), 0);
    assert_eq!(
        stream.skipped(),
        4,
        "one whole epoch is read twice, then it ends"
    );

    // Usable rows keep coming, epoch after epoch.
    let good = tempfile::tempdir().unwrap();
    let dataset = numbered(good.path(), 3);
    let rows = dataset.stream(forever).unwrap().take(10).count();
    assert_eq!(rows, 10);
}

#[test]
fn packing_joins_documents_with_eos_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = numbered(dir.path(), 200);
    let tokenizer = Tokenizer::load(&common::qwen2_tiny()).unwrap();
    let eos = tokenizer.eos_token_id().unwrap();
    let config = shuffled(3);
    let (context, batch) = (16, 4);
    // sparsify's chunk_and_tokenize: EOS + document, for every document in stream order, cut
    // into contexts; the tail is dropped.
    let mut expected = Vec::new();
    for example in dataset.stream(config).unwrap() {
        let Body::Text(text) = example.unwrap().record.body else {
            unreachable!()
        };
        expected.push(eos);
        expected.extend(tokenizer.encode(&text, false).unwrap());
    }
    let pack = Batching::Pack { context };
    let batches: Vec<_> = Loader::new(&dataset, &tokenizer, config, pack, batch, None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(batches.len(), expected.len() / (context * batch));
    for (b, got) in batches.iter().enumerate() {
        let n = context * batch;
        assert_eq!(got.input_ids, expected[b * n..(b + 1) * n]);
        assert_eq!((got.batch_size, got.seq_len), (batch, context));
        assert_eq!(got.tokens(), n);
    }
    // Reading once, the complete contexts after the last full batch come as a smaller batch.
    let full = batches.len() * context * batch;
    let last = Loader::new(&dataset, &tokenizer, config, pack, batch, None)
        .unwrap()
        .with_last_partial_batch()
        .map(Result::unwrap)
        .last()
        .unwrap();
    let left = (expected.len() - full) / context;
    assert!(left > 0 && left < batch, "{left} contexts left");
    assert_eq!((last.batch_size, last.rows.len()), (left, left));
    assert_eq!(last.input_ids, expected[full..full + left * context]);
    // Each context lists the rows it overlaps; the first starts with the first row.
    let first_row = dataset.stream(config).unwrap().next().unwrap().unwrap().id;
    assert_eq!(batches[0].rows[0][0], first_row);
    assert!(batches.iter().all(|b| b.rows.iter().all(|r| !r.is_empty())));

    for cut in [1, 5, batches.len() - 1] {
        let mut loader = Loader::new(&dataset, &tokenizer, config, pack, batch, None).unwrap();
        for _ in 0..cut {
            loader.next_batch().unwrap();
        }
        let cursor = serde_json::to_string(&loader.cursor()).unwrap();
        let cursor = serde_json::from_str(&cursor).unwrap();
        let rest: Vec<_> = Loader::new(&dataset, &tokenizer, config, pack, batch, Some(cursor))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rest, batches[cut..], "resumed after batch {cut}");
    }

    // A saved cursor whose carried tokens lost their rows (a corrupt state.json) is refused.
    let mut loader = Loader::new(&dataset, &tokenizer, config, pack, batch, None).unwrap();
    loader.next_batch().unwrap();
    let mut saved = serde_json::to_value(loader.cursor()).unwrap();
    assert!(!saved["carry"].as_array().unwrap().is_empty());
    saved["carry_rows"] = serde_json::json!([]);
    let cursor = serde_json::from_value(saved).unwrap();
    let resumed = Loader::new(&dataset, &tokenizer, config, pack, batch, Some(cursor));
    assert!(matches!(resumed, Err(DataError::Cursor(_))));
}

#[test]
fn padded_chat_batches_follow_the_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = PreprocessOptions::new(Format::EasyVqa, &common::easy_vqa(), dir.path());
    options.limit = Some(20);
    sae_data::preprocess(&options, &mut |_| {}).unwrap();
    let dataset = Dataset::open(dir.path()).unwrap();
    let tokenizer = Tokenizer::load(&common::qwen2_tiny()).unwrap();
    let plain = StreamConfig {
        shuffle: false,
        ..StreamConfig::default()
    };
    let pad = Batching::Pad {
        max_len: 64,
        truncate: false,
    };
    let mut loader = Loader::new(&dataset, &tokenizer, plain, pad, 4, None).unwrap();
    let batch = loader.next_batch().unwrap().unwrap();
    // 20 rows in batches of 6: 3 batches, and a last one of 2 when reading once.
    let sizes = |partial: bool| {
        let loader = Loader::new(&dataset, &tokenizer, plain, pad, 6, None).unwrap();
        let loader = if partial {
            loader.with_last_partial_batch()
        } else {
            loader
        };
        let sizes: Vec<usize> = loader.map(|b| b.unwrap().batch_size).collect();
        sizes
    };
    assert_eq!(
        (sizes(false), sizes(true)),
        (vec![6, 6, 6], vec![6, 6, 6, 2])
    );
    // easy-VQA's first train question, through the fixture's Qwen2-VL style template.
    let questions: Vec<(String, String, usize)> = serde_json::from_str(
        &std::fs::read_to_string(common::easy_vqa().join("train/questions.json")).unwrap(),
    )
    .unwrap();
    let rendered: Vec<String> = questions[..4]
        .iter()
        .map(|(q, a, _)| {
            format!(
                "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n\
                 <|im_start|>assistant\n{a}<|im_end|>\n"
            )
        })
        .collect();
    assert_eq!(questions[0].0, "what is the blue shape?");
    let encoded: Vec<Vec<i64>> = rendered
        .iter()
        .map(|r| tokenizer.encode(r, false).unwrap())
        .collect();
    let longest = encoded.iter().map(Vec::len).max().unwrap();
    assert_eq!(batch.seq_len, longest);
    let pad_id = tokenizer.pad_token_id().unwrap();
    for (i, ids) in encoded.iter().enumerate() {
        let row = &batch.input_ids[i * longest..(i + 1) * longest];
        let mask = &batch.attention_mask[i * longest..(i + 1) * longest];
        assert_eq!(&row[..ids.len()], ids.as_slice());
        assert!(row[ids.len()..].iter().all(|&t| t == pad_id));
        assert!(mask[..ids.len()].iter().all(|&m| m == 1));
        assert!(mask[ids.len()..].iter().all(|&m| m == 0));
        let image = questions[i].2;
        let bytes = std::fs::read(common::easy_vqa().join(format!("train/images/{image}.png")));
        assert_eq!(batch.images[i], [bytes.unwrap()]);
    }

    // Too long: named with its row, or skipped and counted.
    let short = Batching::Pad {
        max_len: 8,
        truncate: false,
    };
    let mut loader = Loader::new(&dataset, &tokenizer, plain, short, 4, None).unwrap();
    let error = loader.next_batch().unwrap_err().to_string();
    assert!(error.contains("row 1 of") && error.contains("do not fit the context of 8"));
    let skip = StreamConfig {
        on_error: OnError::Skip,
        ..plain
    };
    let mut loader = Loader::new(&dataset, &tokenizer, skip, short, 4, None).unwrap();
    assert!(loader.next_batch().unwrap().is_none());
    assert_eq!(loader.skipped(), 20);
    let cut = Batching::Pad {
        max_len: 8,
        truncate: true,
    };
    let mut loader = Loader::new(&dataset, &tokenizer, plain, cut, 4, None).unwrap();
    let batch = loader.next_batch().unwrap().unwrap();
    assert_eq!(batch.seq_len, 8);
    assert_eq!(batch.input_ids[..8], encoded[0][..8]);
}

#[test]
fn ranks_read_equal_parts_of_each_batch_and_keep_one_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = numbered(dir.path(), 200);
    let tokenizer = Tokenizer::load(&common::qwen2_tiny()).unwrap();
    let config = shuffled(3);
    let pack = Batching::Pack { context: 16 };
    let loader = |shard: Option<(usize, usize)>| {
        let loader = Loader::new(&dataset, &tokenizer, config, pack, 4, None).unwrap();
        match shard {
            Some((rank, ranks)) => loader.with_shard(rank, ranks).unwrap(),
            None => loader,
        }
    };
    let mut whole = loader(None);
    let mut parts = [loader(Some((0, 2))), loader(Some((1, 2)))];
    for _ in 0..3 {
        let batch = whole.next_batch().unwrap().unwrap();
        let [a, b] = parts.each_mut().map(|p| p.next_batch().unwrap().unwrap());
        assert_eq!((a.batch_size, b.batch_size), (2, 2));
        assert_eq!([a.input_ids, b.input_ids].concat(), batch.input_ids);
        assert_eq!([a.rows, b.rows].concat(), batch.rows);
        for part in &parts {
            assert_eq!(part.cursor(), whole.cursor());
        }
    }
    let uneven = Loader::new(&dataset, &tokenizer, config, pack, 4, None)
        .unwrap()
        .with_shard(0, 3);
    assert!(matches!(uneven, Err(DataError::Batching(_))));
}
