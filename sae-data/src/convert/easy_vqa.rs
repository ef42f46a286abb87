//! easy-VQA (the PyPI package `easy-vqa`: `data/{train,test}/images/<id>.png` and
//! `questions.json` holding `[question, answer, image_id]`) to standard chat rows: one row per
//! question, the image then the question in the user turn, the answer as the assistant turn.

use std::path::{Path, PathBuf};

use super::{Flow, Origin, SourceRow};
use crate::error::{DataError, Result, RowProblem};
use crate::record::{Body, Part, Record, Turn};

/// The folder holding `questions.json` and `images/`: `input` itself, `input/<split>` or
/// `input/data/<split>`.
fn split_dir(input: &Path, split: &str) -> Result<PathBuf> {
    [
        input.to_path_buf(),
        input.join(split),
        input.join("data").join(split),
    ]
    .into_iter()
    .find(|d| d.join("questions.json").is_file())
    .ok_or_else(|| DataError::NoInput {
        path: input.to_path_buf(),
        what: format!("questions.json (looked in ., {split}/ and data/{split}/)"),
    })
}

/// The `[question, answer, image_id]` triples.
fn questions(dir: &Path) -> Result<Vec<(String, String, u64)>> {
    let path = dir.join("questions.json");
    let text = super::read_to_string(&path)?;
    serde_json::from_str(&text).map_err(|e| DataError::Invalid {
        path,
        reason: format!("expected a list of [question, answer, image_id]: {e}"),
    })
}

/// Questions in the split.
pub(super) fn count(input: &Path, split: &str) -> Result<Option<u64>> {
    Ok(Some(questions(&split_dir(input, split)?)?.len() as u64))
}

/// Converts every question of the split.
pub(super) fn convert(
    input: &Path,
    split: &str,
    emit: &mut dyn FnMut(SourceRow) -> Result<Flow>,
) -> Result<()> {
    let dir = split_dir(input, split)?;
    let questions_path = dir.join("questions.json");
    for (index, (question, answer, image_id)) in questions(&dir)?.into_iter().enumerate() {
        let image = dir.join("images").join(format!("{image_id}.png"));
        let record = std::fs::read(&image)
            .map_err(|e| RowProblem::Image {
                index: 0,
                reason: format!("cannot read {}: {e}", image.display()),
            })
            .map(|bytes| Record {
                id: Some(format!("{split}-{index}")),
                source: Some(format!("easy-vqa/{split}")),
                body: Body::Chat {
                    messages: vec![
                        Turn {
                            role: "user".into(),
                            content: vec![Part::Image, Part::Text(question)],
                        },
                        Turn::text("assistant", answer),
                    ],
                    images: vec![bytes],
                },
            });
        let origin = Origin {
            path: questions_path.clone(),
            row: index,
        };
        if emit(SourceRow { origin, record })? == Flow::Stop {
            break;
        }
    }
    Ok(())
}
