//! `sae preprocess` as scripts call it.

mod common;

use common::{fails, ok, s};

#[test]
fn preprocess_writes_shards_and_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts");
    std::fs::create_dir(&input).unwrap();
    for (name, text) in [("a.txt", "first"), ("b.txt", ""), ("c.txt", "third")] {
        std::fs::write(input.join(name), text).unwrap();
    }
    let output = dir.path().join("out");
    let args = [
        "preprocess",
        "--format",
        "text",
        "--input",
        s(&input),
        "--output",
        s(&output),
    ];
    // The empty b.txt stops a strict run, naming it.
    let stderr = fails(&args);
    assert!(
        stderr.contains(&format!(
            "row 1 of {}: the text is empty",
            input.join("b.txt").display()
        )),
        "{stderr}"
    );
    let stdout = ok(&[&args[..], &["--on-error", "skip", "--shard", "1"]].concat());
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["rows_written"], 2);
    assert_eq!(summary["skipped"]["empty_text"], 1);
    assert_eq!(
        summary["shards"],
        serde_json::json!([
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet"
        ])
    );
    assert!(output.join("data/train-00001-of-00002.parquet").is_file());
    // A second run into the same folder is refused and changes nothing.
    let stderr = fails(&[&args[..], &["--on-error", "skip"]].concat());
    assert!(stderr.contains("already holds a dataset"), "{stderr}");
    assert!(output.join("data/train-00001-of-00002.parquet").is_file());
}

#[test]
fn preprocess_names_a_missing_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let stderr = fails(&[
        "preprocess",
        "--format",
        "easy-vqa",
        "--input",
        s(&missing),
        "--output",
        s(&dir.path().join("out")),
    ]);
    assert!(stderr.contains("found no questions.json"), "{stderr}");
}

#[test]
fn counts_of_zero_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.txt"), "first").unwrap();
    let output = dir.path().join("out");
    for (flag, what) in [
        ("--limit", "the row limit"),
        ("--row-group", "rows per row group"),
        ("--shard", "rows per shard"),
    ] {
        let stderr = fails(&[
            "preprocess",
            "--format",
            "text",
            "--input",
            s(&input),
            "--output",
            s(&output),
            flag,
            "0",
        ]);
        assert!(
            stderr.contains(&format!("{what} must be at least 1")),
            "{flag}: {stderr}"
        );
        assert!(!output.exists(), "{flag}: nothing is written");
    }
}
