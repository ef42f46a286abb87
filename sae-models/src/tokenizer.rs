//! The tokenizer (`tokenizer.json` through the `tokenizers` crate), its special tokens
//! (`tokenizer_config.json`) and the chat template (`chat_template.jinja` or the config's
//! `chat_template`), rendered with minijinja the way transformers renders it with jinja2.

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::Serialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// One chat message: `content` is a string or a list of `{type: "image"}` / `{type: "text",
/// text}` parts, as in transformers.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// A string or a list of parts.
    pub content: Value,
}

impl Message {
    /// A user turn: the images first, then the text (what `sae activations --chat` sends).
    pub fn user(text: &str, images: usize) -> Self {
        let content = if images == 0 {
            Value::String(text.to_string())
        } else {
            let mut parts: Vec<Value> = (0..images)
                .map(|_| serde_json::json!({"type": "image"}))
                .collect();
            parts.push(serde_json::json!({"type": "text", "text": text}));
            Value::Array(parts)
        };
        Message {
            role: "user".into(),
            content,
        }
    }
}

/// A model's tokenizer, special tokens and chat template.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
}

/// Texts longer than this many bytes are tokenised in pieces of at most this size.
pub const PIECE_BYTES: usize = 64 * 1024;

/// `text` cut into pieces of at most [`PIECE_BYTES`] (one piece when it is no longer). Each cut
/// is just before a space that follows a non-whitespace character, in the last half of the
/// piece: the byte-level BPE pre-tokenizers of GPT-2, Llama 3 and Qwen2 (their split regexes)
/// never join a non-whitespace character to a following space, and the cut leaves the piece
/// before it ending in non-whitespace, where the regexes' only lookahead (`\s+(?!\S)`) sees
/// the same either way; so the pieces' pre-tokens, hence their ids, are the whole text's (NFC
/// normalisation does not compose across a space either). Ids may differ from the whole text's
/// only at a cut made where no such space exists (a run of half a piece without one: the piece
/// is cut at a character boundary), for a tokenizer that adds a prefix to every input (a
/// SentencePiece `Prepend("▁")` normaliser), or for an added token that holds a space.
pub fn pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > PIECE_BYTES {
        let window = &rest[..rest.floor_char_boundary(PIECE_BYTES)];
        let clean = (window.rmatch_indices(' '))
            .map(|(at, _)| at)
            .take_while(|&at| at >= PIECE_BYTES / 2)
            .find(|&at| {
                window[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| !c.is_whitespace())
            });
        let (piece, after) = rest.split_at(clean.unwrap_or(window.len()));
        pieces.push(piece);
        rest = after;
    }
    pieces.push(rest);
    pieces
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::MissingTokenizer(dir.to_path_buf()));
        }
        let inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::BadTokenizer {
                file: path.clone(),
                message: e.to_string(),
            })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.is_file() {
            sae_core::tensor_file::read_json(&config_path)?
        } else {
            Value::Null
        };
        let template_path = dir.join("chat_template.jinja");
        let chat_template = if template_path.is_file() {
            Some(
                std::fs::read_to_string(&template_path)
                    .map_err(sae_core::SaeError::io(&template_path))?,
            )
        } else {
            config
                .get("chat_template")
                .and_then(Value::as_str)
                .map(String::from)
        };
        Ok(Tokenizer {
            inner,
            chat_template,
            bos_token: token_string(config.get("bos_token")),
            eos_token: token_string(config.get("eos_token")),
            pad_token: token_string(config.get("pad_token")),
        })
    }

    /// Builds one from parts (e.g. a GGUF file's metadata).
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        chat_template: Option<String>,
        bos: Option<String>,
        eos: Option<String>,
    ) -> Self {
        Tokenizer {
            inner,
            chat_template,
            bos_token: bos,
            eos_token: eos,
            pad_token: None,
        }
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (BOS).
    /// A text longer than [`PIECE_BYTES`] is tokenised piece by piece (see [`pieces`]), so that
    /// memory stays proportional to the text (the `tokenizers` crate keeps about a hundred bytes
    /// of alignments and splits per byte of its input); the post-processor's tokens go before
    /// the first piece's and after the last piece's. A tokenizer that truncates or pads is given
    /// the whole text, as those apply to it.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let tokenize = |text: &str, special: bool| {
            (self.inner.encode(text, special)).map_err(|e| ModelError::Tokenize(e.to_string()))
        };
        let whole = self.inner.get_truncation().is_some() || self.inner.get_padding().is_some();
        let pieces = if whole { vec![text] } else { pieces(text) };
        let mut ids = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let (first, last) = (i == 0, i + 1 == pieces.len());
            let encoding = tokenize(piece, add_special_tokens && (first || last))?;
            // The post-processor's tokens (marked in the special-tokens mask) lead the first
            // piece's ids and end the last piece's: the text's own are between.
            let mask = encoding.get_special_tokens_mask();
            let leading = mask.iter().take_while(|&&m| m == 1).count();
            let trailing = mask.iter().rev().take_while(|&&m| m == 1).count();
            let start = if first { 0 } else { leading };
            let end = if last {
                mask.len()
            } else {
                mask.len() - trailing
            };
            let own = &encoding.get_ids()[start.min(end)..end];
            ids.extend(own.iter().map(|&id| i64::from(id)));
        }
        Ok(ids)
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| ModelError::Tokenize(e.to_string()))
    }

    /// Errors when some token id would fall outside a model's `vocab_size` embeddings (a
    /// tokenizer that does not belong to the model of `origin`).
    pub fn check_fits(&self, vocab_size: usize, origin: &Path) -> Result<()> {
        let tokens = self.inner.get_vocab_size(true);
        if tokens > vocab_size {
            return Err(ModelError::BadConfig {
                file: origin.to_path_buf(),
                message: format!(
                    "the tokenizer has {tokens} tokens, more than the model's vocab_size {vocab_size}: they do not belong together"
                ),
            });
        }
        Ok(())
    }

    /// The token string of an id, special tokens included, if it is in the vocabulary.
    pub fn token(&self, id: i64) -> Option<String> {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.id_to_token(id))
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// Ids of every special token (BOS, EOS, chat markers, image placeholders), sorted.
    pub fn special_token_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| i64::from(id))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The end-of-sequence token's id.
    pub fn eos_token_id(&self) -> Option<i64> {
        self.eos_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// The padding token's id (else the end-of-sequence one).
    pub fn pad_token_id(&self) -> Option<i64> {
        self.pad_token
            .as_deref()
            .and_then(|t| self.token_id(t))
            .or(self.eos_token_id())
    }

    /// Renders the chat template (as `apply_chat_template(..., tokenize=False)`).
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or(ModelError::NoChatTemplate)?;
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        let render = |e: JinjaError| ModelError::ChatTemplate(e.to_string());
        env.add_template("chat", template).map_err(render)?;
        env.get_template("chat")
            .map_err(render)?
            .render(context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.clone().unwrap_or_default(),
                eos_token => self.eos_token.clone().unwrap_or_default(),
            })
            .map_err(render)
    }
}

/// transformers' `strftime_now(format)` for chat templates (Llama 3 puts today's date in its
/// system prompt): the current UTC date with `%d`, `%m`, `%y`, `%Y`, `%b`, `%B` and `%%`.
fn strftime_now(format: &str) -> std::result::Result<String, JinjaError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    format_date(format, year, month, day)
}

/// `format` with the date's fields filled in.
fn format_date(
    format: &str,
    year: i64,
    month: u32,
    day: u32,
) -> std::result::Result<String, JinjaError> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('Y') => out.push_str(&year.to_string()),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('%') => out.push('%'),
            other => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.unwrap_or(' ')
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_from_day_counts() {
        // Hand-checked: day 0 is 1970-01-01, 11016 is 2000-02-29, 20784 is 2026-11-27.
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
    }

    #[test]
    fn dates_format_like_strftime() {
        assert_eq!(format_date("%d %b %Y", 2026, 11, 7).unwrap(), "07 Nov 2026");
        assert_eq!(
            format_date("%B %d, %y (%m) 100%%", 2024, 7, 26).unwrap(),
            "July 26, 24 (07) 100%"
        );
        assert!(format_date("%H", 2024, 1, 1).is_err());
    }
}
