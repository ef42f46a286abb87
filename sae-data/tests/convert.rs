//! `preprocess` on real data: a LLaVA-OneVision-Data Parquet made from real easy-VQA images,
//! Shakespeare's texts, easy-VQA; golden checks of the converted rows and bad input.

mod common;

use std::path::Path;

use polars::prelude::*;
use sae_data::{
    Body, DataError, Format, Kind, OnError, Part, PreprocessOptions, Record, RowProblem, Turn,
    preprocess,
};

fn png(i: usize) -> Vec<u8> {
    std::fs::read(common::easy_vqa().join(format!("train/images/{i}.png"))).unwrap()
}

/// A row of LLaVA-OneVision-Data: id, image bytes, `(from, value)` turns, data source.
type OvRow<'a> = (&'a str, Option<Vec<u8>>, Vec<(&'a str, &'a str)>);

/// Writes `rows` as HF `datasets` writes LLaVA-OneVision-Data: `image` as `{bytes, path}`.
fn write_llava_ov(path: &Path, rows: &[OvRow]) {
    let n = rows.len();
    let ids = Series::new("id".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>());
    let bytes = Series::new(
        "bytes".into(),
        rows.iter().map(|r| r.1.as_deref()).collect::<Vec<_>>(),
    );
    let paths = Series::new(
        "path".into(),
        rows.iter()
            .map(|r| r.1.as_ref().map(|_| "img.png"))
            .collect::<Vec<_>>(),
    );
    let image = StructChunked::from_series("image".into(), n, [bytes, paths].iter())
        .unwrap()
        .into_series();
    let conversations: Vec<Series> = rows
        .iter()
        .map(|r| {
            let from = Series::new("from".into(), r.2.iter().map(|t| t.0).collect::<Vec<_>>());
            let value = Series::new("value".into(), r.2.iter().map(|t| t.1).collect::<Vec<_>>());
            StructChunked::from_series("".into(), r.2.len(), [from, value].iter())
                .unwrap()
                .into_series()
        })
        .collect();
    let conversations = Series::new("conversations".into(), conversations);
    let source = Series::new("data_source".into(), vec!["CLEVR-Math(MathV360K)"; n]);
    let mut frame = DataFrame::new(
        n,
        vec![
            ids.into_column(),
            image.into_column(),
            conversations.into_column(),
            source.into_column(),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    ParquetWriter::new(file).finish(&mut frame).unwrap();
}

fn llava_rows() -> Vec<OvRow<'static>> {
    vec![
        (
            "a",
            Some(png(0)),
            vec![
                ("human", "<image>\nWhat shape is this?"),
                ("gpt", "A rectangle."),
            ],
        ),
        (
            "b",
            Some(png(1)),
            vec![
                ("human", "How many shapes?<image>"),
                ("gpt", "One."),
                ("human", "And its colour?"),
                ("gpt", "Blue."),
            ],
        ),
        (
            "c",
            Some(png(2)),
            vec![
                ("system", "Be brief."),
                ("human", "Describe."),
                ("gpt", "A shape."),
            ],
        ),
        (
            "d",
            Some(b"\x89PNG\r\n\x1a\n truncated".to_vec()),
            vec![("human", "<image>Broken?"), ("gpt", "Yes.")],
        ),
        ("e", Some(png(3)), vec![]),
        ("f", None, vec![("human", "Text only."), ("gpt", "Fine.")]),
    ]
}

fn chat(id: &str, messages: Vec<Turn>, images: Vec<Vec<u8>>) -> Record {
    Record {
        id: Some(id.into()),
        source: Some("CLEVR-Math(MathV360K)".into()),
        body: Body::Chat { messages, images },
    }
}

fn turn(role: &str, content: Vec<Part>) -> Turn {
    Turn {
        role: role.into(),
        content,
    }
}

fn text(t: &str) -> Part {
    Part::Text(t.into())
}

#[test]
fn llava_ov_rows_convert_as_the_seed_script_does() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clevr.parquet");
    write_llava_ov(&input, &llava_rows());
    let output = dir.path().join("out");
    let mut options = PreprocessOptions::new(Format::LlavaOv, &input, &output);
    options.on_error = OnError::Skip;
    options.shards.rows_per_shard = 2;
    let summary = preprocess(&options, &mut |_| {}).unwrap();

    assert_eq!(summary.rows_written, 4);
    let skipped: Vec<(&str, usize)> = summary
        .skipped
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(skipped, [("empty_conversation", 1), ("image", 1)]);
    assert_eq!(
        summary.shards,
        [
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet"
        ]
    );
    // What llava_ov_clevr.py makes of each row: roles renamed, `<image>` removed, one image
    // part first in its turn; the row without a placeholder shows its image in the first user
    // turn; the row without an image has none.
    let expected = vec![
        chat(
            "a",
            vec![
                turn("user", vec![Part::Image, text("\nWhat shape is this?")]),
                turn("assistant", vec![text("A rectangle.")]),
            ],
            vec![png(0)],
        ),
        chat(
            "b",
            vec![
                turn("user", vec![Part::Image, text("How many shapes?")]),
                turn("assistant", vec![text("One.")]),
                turn("user", vec![text("And its colour?")]),
                turn("assistant", vec![text("Blue.")]),
            ],
            vec![png(1)],
        ),
        chat(
            "c",
            vec![
                turn("system", vec![text("Be brief.")]),
                turn("user", vec![Part::Image, text("Describe.")]),
                turn("assistant", vec![text("A shape.")]),
            ],
            vec![png(2)],
        ),
        chat(
            "f",
            vec![
                turn("user", vec![text("Text only.")]),
                turn("assistant", vec![text("Fine.")]),
            ],
            vec![],
        ),
    ];
    assert_eq!(common::read_all(&output), expected);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("sae_dataset.json")).unwrap())
            .unwrap();
    assert_eq!(info["kind"], "chat");
    assert_eq!(info["rows"], 4);
    assert_eq!(info["converted_from"], "llava-ov");
}

#[test]
fn a_bad_row_fails_with_its_index_and_leaves_no_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("clevr.parquet");
    write_llava_ov(&input, &llava_rows());
    let output = dir.path().join("out");
    let mut options = PreprocessOptions::new(Format::LlavaOv, &input, &output);
    options.shards.rows_per_shard = 1;
    let error = preprocess(&options, &mut |_| {}).unwrap_err();
    match &error {
        DataError::BadRow { row, reason, .. } => {
            assert_eq!(*row, 3);
            assert!(matches!(reason, RowProblem::Image { index: 0, .. }));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(
        error
            .to_string()
            .starts_with(&format!("row 4 of {}", input.display()))
    );
    assert!(!output.exists(), "a failed run leaves nothing behind");
}

#[test]
fn shakespeare_becomes_one_row_per_play() {
    let texts = common::shakespeare();
    let dir = tempfile::tempdir().unwrap();
    let options = PreprocessOptions::new(Format::Text, &texts, dir.path());
    let summary = preprocess(&options, &mut |_| {}).unwrap();
    let files = std::fs::read_dir(&texts).unwrap().count();
    assert_eq!(files, 78);
    assert_eq!(summary.rows_written, files);
    let rows = common::read_all(dir.path());
    let lear = rows
        .iter()
        .find(|r| r.id.as_deref() == Some("lear_gut"))
        .unwrap();
    assert_eq!(lear.source.as_deref(), Some("lear_gut.txt"));
    let original = std::fs::read_to_string(texts.join("lear_gut.txt")).unwrap();
    assert_eq!(lear.body, Body::Text(original));
    assert!(matches!(&lear.body, Body::Text(t) if t.starts_with("THE TRAGEDY OF KING LEAR")));
    let dataset = sae_data::Dataset::open(dir.path()).unwrap();
    assert_eq!(dataset.kind(), Kind::Text);
}

#[test]
fn seed_and_limit_shuffle_and_cut_the_rows() {
    let texts = common::shakespeare();
    let convert = |seed: Option<u64>, limit: Option<usize>| {
        let dir = tempfile::tempdir().unwrap();
        let mut options = PreprocessOptions::new(Format::Text, &texts, dir.path());
        options.shards.seed = seed;
        options.limit = limit;
        preprocess(&options, &mut |_| {}).unwrap();
        common::read_all(dir.path())
            .into_iter()
            .map(|r| r.id.unwrap())
            .collect::<Vec<_>>()
    };
    let plain = convert(None, None);
    let mut sorted = plain.clone();
    sorted.sort();
    assert_eq!(
        plain, sorted,
        "without a seed rows keep the sorted file order"
    );
    let shuffled = convert(Some(7), None);
    assert_ne!(shuffled, plain);
    assert_eq!(shuffled, convert(Some(7), None));
    let mut same = shuffled.clone();
    same.sort();
    assert_eq!(same, plain);
    assert_eq!(convert(None, Some(5)), plain[..5]);
}

#[test]
fn jsonl_and_parquet_text_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("docs.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"first\"}\nnot json\n{\"body\": \"no text key\"}\n\n{\"text\": \"last\"}\n",
    )
    .unwrap();
    let fail = PreprocessOptions::new(Format::Text, &jsonl, &dir.path().join("a"));
    let error = preprocess(&fail, &mut |_| {}).unwrap_err().to_string();
    assert!(error.starts_with(&format!("row 2 of {}: not a JSON object", jsonl.display())));

    let mut skip = PreprocessOptions::new(Format::Text, &jsonl, &dir.path().join("b"));
    skip.on_error = OnError::Skip;
    let summary = preprocess(&skip, &mut |_| {}).unwrap();
    assert_eq!(summary.rows_written, 2);
    assert_eq!(summary.skipped.get("json"), Some(&1));
    assert_eq!(summary.skipped.get("null"), Some(&1));
    let texts: Vec<Body> = common::read_all(&dir.path().join("b"))
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(
        texts,
        [Body::Text("first".into()), Body::Text("last".into())]
    );

    let parquet = dir.path().join("docs.parquet");
    let mut frame = DataFrame::new(
        2,
        vec![
            Series::new("content".into(), ["x y", "z"]).into_column(),
            Series::new("n".into(), [1i64, 2]).into_column(),
        ],
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(&parquet).unwrap())
        .finish(&mut frame)
        .unwrap();
    let mut options = PreprocessOptions::new(Format::Text, &parquet, &dir.path().join("c"));
    options.text_column = "content".into();
    assert_eq!(preprocess(&options, &mut |_| {}).unwrap().rows_written, 2);
    options.text_column = "n".into();
    options.output = dir.path().join("d");
    let error = preprocess(&options, &mut |_| {}).unwrap_err().to_string();
    assert!(
        error.contains("column `n`") && error.contains("i64") && error.contains("content: str"),
        "{error}"
    );
}

#[test]
fn easy_vqa_questions_become_chat_rows() {
    let data = common::easy_vqa();
    let dir = tempfile::tempdir().unwrap();
    let mut options = PreprocessOptions::new(Format::EasyVqa, &data, dir.path());
    options.shards.split = "test".into();
    let mut total = None;
    let summary = preprocess(&options, &mut |p| total = p.total).unwrap();
    // easy-VQA's README: 1000 test images and 9673 test questions.
    assert_eq!(total, Some(9673));
    assert_eq!(summary.rows_written, 9673);
    assert_eq!(summary.shards, ["data/test-00000-of-00001.parquet"]);

    let questions: Vec<(String, String, usize)> =
        serde_json::from_str(&std::fs::read_to_string(data.join("test/questions.json")).unwrap())
            .unwrap();
    let rows = common::read_all(dir.path());
    for i in [0, 1, 4321, 9672] {
        let (question, answer, image) = &questions[i];
        let bytes = std::fs::read(data.join(format!("test/images/{image}.png"))).unwrap();
        assert_eq!(
            rows[i],
            Record {
                id: Some(format!("test-{i}")),
                source: Some("easy-vqa/test".into()),
                body: Body::Chat {
                    messages: vec![
                        turn("user", vec![Part::Image, text(question)]),
                        turn("assistant", vec![text(answer)]),
                    ],
                    images: vec![bytes],
                },
            }
        );
    }
}

#[test]
fn unreadable_or_foreign_parquet_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("broken.parquet");
    std::fs::write(&garbage, b"PAR1 this is not parquet").unwrap();
    let options = PreprocessOptions::new(Format::LlavaOv, &garbage, &dir.path().join("a"));
    let error = preprocess(&options, &mut |_| {}).unwrap_err();
    assert!(matches!(error, DataError::Parquet { .. }), "{error}");
    assert!(error.to_string().contains("is not a readable Parquet file"));

    let foreign = dir.path().join("foreign.parquet");
    let mut frame = DataFrame::new(
        1,
        vec![Series::new("question".into(), ["why?"]).into_column()],
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(&foreign).unwrap())
        .finish(&mut frame)
        .unwrap();
    let options = PreprocessOptions::new(Format::LlavaOv, &foreign, &dir.path().join("b"));
    let error = preprocess(&options, &mut |_| {}).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "{} has no column `conversations` (its schema: {{question: str}})",
            foreign.display()
        )
    );
}

#[test]
fn a_text_that_is_not_utf8_is_refused_by_name_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts");
    std::fs::create_dir(&texts).unwrap();
    std::fs::write(texts.join("good.txt"), "fine text").unwrap();
    std::fs::write(texts.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
    let mut options = PreprocessOptions::new(Format::Text, &texts, &dir.path().join("a"));
    let error = preprocess(&options, &mut |_| {}).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "row 1 of {}: the text is not UTF-8 (byte 3 starts an invalid sequence)",
            texts.join("latin1.txt").display()
        )
    );
    assert!(!dir.path().join("a").exists());
    std::fs::write(
        texts.join("lines.jsonl"),
        b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n",
    )
    .unwrap();
    options.on_error = OnError::Skip;
    options.output = dir.path().join("b");
    let summary = preprocess(&options, &mut |_| {}).unwrap();
    assert_eq!(summary.rows_written, 2);
    assert_eq!(summary.skipped.get("not_utf8"), Some(&2));
}

#[test]
fn an_image_over_the_pixel_limit_is_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let huge = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sae-models/tests/fixtures/huge_header.png"),
    )
    .unwrap();
    let input = dir.path().join("huge.parquet");
    let rows: Vec<OvRow> = vec![
        (
            "text",
            None,
            vec![("human", "Text only."), ("gpt", "Fine.")],
        ),
        (
            "huge",
            Some(huge),
            vec![("human", "<image>Big?"), ("gpt", "Yes.")],
        ),
    ];
    write_llava_ov(&input, &rows);
    let mut options = PreprocessOptions::new(Format::LlavaOv, &input, &dir.path().join("a"));
    let error = preprocess(&options, &mut |_| {}).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "row 2 of {}: image 0 cannot be decoded: it is 20000 x 20000 = 400000000 pixels, more than the limit of 178956970 (PIL's MAX_IMAGE_PIXELS), so it was not decoded",
            input.display()
        )
    );
    options.on_error = OnError::Skip;
    let summary = preprocess(&options, &mut |_| {}).unwrap();
    assert_eq!(summary.rows_written, 1);
    assert_eq!(summary.skipped.get("image"), Some(&1));
}

#[test]
fn an_existing_dataset_is_never_overwritten() {
    let texts = common::shakespeare();
    let dir = tempfile::tempdir().unwrap();
    let mut options = PreprocessOptions::new(Format::Text, &texts, dir.path());
    options.limit = Some(3);
    preprocess(&options, &mut |_| {}).unwrap();
    let shard = dir.path().join("data/train-00000-of-00001.parquet");
    let before = std::fs::read(&shard).unwrap();
    options.limit = None;
    let error = preprocess(&options, &mut |_| {}).unwrap_err().to_string();
    assert!(error.contains("already holds a dataset"), "{error}");
    assert_eq!(std::fs::read(&shard).unwrap(), before);
}
