//! One row of the standard format: a plain text, or a chat with images.

use serde_json::{Value, json};

use crate::error::RowProblem;

/// A row as read: the record, or why it cannot be used.
pub type RowResult = Result<Record, RowProblem>;

/// One part of a chat turn's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Where the next image of the row goes.
    Image,
    /// A piece of text.
    Text(String),
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Its parts, in order.
    pub content: Vec<Part>,
}

impl Turn {
    /// A turn made of one text part.
    pub fn text(role: &str, text: impl Into<String>) -> Self {
        Turn {
            role: role.into(),
            content: vec![Part::Text(text.into())],
        }
    }
}

/// What a row holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A plain text (the `text` column).
    Text(String),
    /// Chat turns and the encoded images they show, in order (`messages`, `images`).
    Chat {
        messages: Vec<Turn>,
        images: Vec<Vec<u8>>,
    },
}

/// One row of a standard dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// A stable identifier, when the source has one.
    pub id: Option<String>,
    /// Where the row comes from (a subset or file name).
    pub source: Option<String>,
    /// The text or chat.
    pub body: Body,
}

impl Record {
    /// Checks what the standard format promises: non-empty text or turns, and as many image parts
    /// as images.
    pub fn validate(&self) -> Result<(), RowProblem> {
        match &self.body {
            Body::Text(text) if text.is_empty() => Err(RowProblem::EmptyText),
            Body::Text(_) => Ok(()),
            Body::Chat { messages, images } => {
                if messages.is_empty() || messages.iter().all(|t| t.content.is_empty()) {
                    return Err(RowProblem::EmptyConversation);
                }
                let shown = image_parts(messages);
                if shown != images.len() {
                    return Err(RowProblem::ImageCount {
                        shown,
                        held: images.len(),
                    });
                }
                Ok(())
            }
        }
    }
}

/// A row's encoded images decoded as the models' image processors take them; the index of the
/// first that does not decode, and why, otherwise.
pub fn decode_images(images: &[Vec<u8>]) -> Result<Vec<image::DynamicImage>, RowProblem> {
    images
        .iter()
        .enumerate()
        .map(|(index, bytes)| {
            sae_models::decode_image(bytes).map_err(|reason| RowProblem::Image { index, reason })
        })
        .collect()
}

/// How many image parts the turns hold.
pub fn image_parts(messages: &[Turn]) -> usize {
    messages
        .iter()
        .flat_map(|t| &t.content)
        .filter(|p| matches!(p, Part::Image))
        .count()
}

/// The turns as chat-template messages, as transformers takes them: a turn without images has
/// its text as a string (what text-only templates such as SmolLM2's expect), a turn with images
/// has the list of `{type: ...}` parts.
pub fn to_chat_messages(messages: &[Turn]) -> Vec<sae_models::Message> {
    messages
        .iter()
        .map(|turn| {
            let texts: Option<Vec<&str>> = turn
                .content
                .iter()
                .map(|part| match part {
                    Part::Image => None,
                    Part::Text(text) => Some(text.as_str()),
                })
                .collect();
            let content = match texts {
                Some(texts) => Value::String(texts.concat()),
                None => Value::Array(
                    turn.content
                        .iter()
                        .map(|part| match part {
                            Part::Image => json!({"type": "image"}),
                            Part::Text(text) => json!({"type": "text", "text": text}),
                        })
                        .collect(),
                ),
            };
            sae_models::Message {
                role: turn.role.clone(),
                content,
            }
        })
        .collect()
}
