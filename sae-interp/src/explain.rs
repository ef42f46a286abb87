//! Explaining latents with a larger model (`sae explain`): each latent's top contexts, its
//! activating tokens marked `<<token>>` with their activation on a 0-10 scale, go to a chat
//! model that answers with a short explanation (the scheme of delphi, which Multimodal-SAE's
//! explainer follows). Explanations are saved after each latent, so an interrupted run
//! continues where it stopped.

use std::fmt::Write as _;
use std::path::Path;

use sae_core::SaeError;
use sae_core::tensor_file::write_json;

use crate::cache::Cache;
use crate::chat_client::{ChatClient, Message, Progress, ask_concurrently};
use crate::error::{InterpError, Result};
use crate::examples::{Context, LatentExamples, SamplingConfig, latent_examples};
use crate::explanations::{EXPLANATIONS_FILE, Explanations, read_explanations};
use crate::heatmap::heatmap_png;

/// What to explain.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainConfig {
    /// The contexts shown per latent (`top`, `window`) and the images (`images`: the latent's
    /// most activating images, its activations drawn over them; 0 for a text-only model).
    pub sampling: SamplingConfig,
    /// Explain at most this many latents per hook point (the first that fired, by index).
    pub max_latents: Option<usize>,
    /// Explain only these latents (of every hook point), when given.
    pub latents: Option<Vec<usize>>,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for ExplainConfig {
    fn default() -> Self {
        ExplainConfig {
            sampling: SamplingConfig {
                images: 0,
                ..SamplingConfig::default()
            },
            max_latents: None,
            latents: None,
            concurrency: 4,
        }
    }
}

/// How an explanation run went.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ExplainSummary {
    /// Latents explained by this run.
    pub explained: usize,
    /// Latents the output already explained (an earlier, interrupted run).
    pub kept: usize,
}

/// The explainer's instructions.
const EXPLAINER_SYSTEM: &str = "You are studying one latent (a feature) of a sparse autoencoder \
trained on a neural network's activations. You will see text excerpts in which it activates. \
The tokens where it activates are marked <<like this>>, each followed by its activation \
strength on a 0 to 10 scale in parentheses. Work out what the latent detects: a token or word, \
a concept, a grammatical role, or a pattern in the surrounding text. Be short and specific. \
End your answer with one line of the form\n[EXPLANATION]: <your explanation>";

/// Explains the latents of every hook point of `cache` with `client`, adding them to
/// `out/explanations.json` (kept explanations are not asked again); refuses an `out` that
/// another process writes. `progress` hears of each latent explained.
pub fn explain_latents(
    cache: &Cache,
    client: &ChatClient,
    out: &Path,
    config: &ExplainConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExplainSummary> {
    if config.sampling.top == 0 {
        return Err(InterpError::Invalid(
            "explaining needs at least 1 top context per latent".into(),
        ));
    }
    // One writer of explanations.json at a time.
    let _lock = sae_core::FolderLock::acquire(out)?;
    let mut explanations: Explanations = if out.join(EXPLANATIONS_FILE).is_file() {
        read_explanations(out)?
    } else {
        Explanations::new()
    };
    let mut summary = ExplainSummary::default();
    for hook in cache.info.hooks.keys() {
        let latents = latent_examples(cache, hook, &config.sampling)?;
        let latents: Vec<LatentExamples> = match &config.latents {
            Some(wanted) => {
                let fired: Vec<LatentExamples> = latents
                    .into_iter()
                    .filter(|l| wanted.contains(&l.latent))
                    .collect();
                if fired.len() < wanted.len() {
                    let missing = wanted
                        .iter()
                        .filter(|w| !fired.iter().any(|l| l.latent == **w));
                    let missing: Vec<String> = missing.map(|w| w.to_string()).collect();
                    tracing::warn!(hook = %hook, latents = %missing.join(", "), "never fire in the cache; not explained");
                }
                fired
            }
            None => latents,
        };
        let latents = &latents[..latents.len().min(config.max_latents.unwrap_or(usize::MAX))];
        let known = |l: &LatentExamples| {
            explanations
                .get(hook)
                .is_some_and(|e| e.contains_key(&l.latent))
        };
        let asked: Vec<&LatentExamples> = latents.iter().filter(|l| !known(l)).collect();
        summary.kept += latents.len() - asked.len();
        let before = summary.explained;
        let ask = |latent: &&LatentExamples| {
            let answer = client.complete(&explainer_prompt(cache, latent)?)?;
            parse_explanation(&answer).ok_or_else(|| InterpError::Api {
                url: client.base_url.clone(),
                reason: format!("the explanation of latent {} is empty", latent.latent),
            })
        };
        let done = |latent: &&LatentExamples, explanation: String| {
            let hook_explanations = explanations.entry(hook.clone()).or_default();
            hook_explanations.insert(latent.latent, explanation);
            write_json(&out.join(EXPLANATIONS_FILE), &explanations)?;
            summary.explained += 1;
            progress(Progress {
                hook,
                latent: latent.latent,
                done: summary.explained - before,
                total: asked.len(),
            });
            Ok(())
        };
        ask_concurrently(&asked, config.concurrency, ask, done)?;
    }
    if summary.explained == 0 && summary.kept == 0 {
        write_json(&out.join(EXPLANATIONS_FILE), &explanations)?;
    }
    Ok(summary)
}

/// The messages that ask for one latent's explanation: its top contexts, and its top images
/// with its activations drawn over them.
pub fn explainer_prompt(cache: &Cache, latent: &LatentExamples) -> Result<Vec<Message>> {
    let mut user = String::from("Excerpts where the latent activates:\n");
    for (i, context) in latent.top.iter().enumerate() {
        let _ = writeln!(
            user,
            "\nExcerpt {}: {}",
            i + 1,
            marked(cache, context, latent.max_activation)
        );
    }
    let mut images = Vec::new();
    for heat in &latent.images {
        let placement = &cache.info.images[heat.image];
        let file = cache.image_file(heat.image)?;
        let bytes = std::fs::read(&file).map_err(SaeError::io(&file))?;
        let (rows, cols) = (placement.rows, placement.cols);
        images.push(heatmap_png(
            &bytes,
            rows,
            cols,
            &heat.activations,
            latent.max_activation,
        )?);
    }
    if !images.is_empty() {
        user.push_str(IMAGES_NOTE);
    }
    let mut messages = Message::prompt(EXPLAINER_SYSTEM, user);
    messages[1].images = images;
    Ok(messages)
}

/// What the explainer is told about the images.
const IMAGES_NOTE: &str = "\nThe images that follow are the ones it activates on most; the \
regions where it activates are shaded red, deeper for stronger activation.\n";

/// A context's text, each token where the latent fires as `<<token>>(a)` with `a` its
/// activation scaled to 0-10 by `max`.
pub fn marked(cache: &Cache, context: &Context, max: f32) -> String {
    let mut text = String::new();
    for (&id, &a) in context.tokens.iter().zip(&context.activations) {
        let token = cache.text(id);
        if a > 0.0 && max > 0.0 {
            let scaled = (10.0 * a / max).round().clamp(0.0, 10.0) as u32;
            let _ = write!(text, "<<{token}>>({scaled})");
        } else {
            text.push_str(token);
        }
    }
    text
}

/// The explanation in an answer: what follows the last `[EXPLANATION]:`, else its last
/// non-empty line, trimmed; `None` when that is empty.
pub fn parse_explanation(answer: &str) -> Option<String> {
    let tail = match answer.rfind("[EXPLANATION]:") {
        Some(at) => &answer[at + "[EXPLANATION]:".len()..],
        None => answer.lines().rev().find(|l| !l.trim().is_empty())?,
    };
    let line = tail.lines().find(|l| !l.trim().is_empty())?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_explanation;

    #[test]
    fn the_explanation_is_the_tagged_line_or_the_last_one() {
        let tagged = "The latent fires on pronouns.\n[EXPLANATION]: relative pronouns\n";
        assert_eq!(parse_explanation(tagged).unwrap(), "relative pronouns");
        assert_eq!(
            parse_explanation("[EXPLANATION]:\n  the word 'not'  ").unwrap(),
            "the word 'not'"
        );
        assert_eq!(
            parse_explanation("Thinking...\n\nnegation words\n\n").unwrap(),
            "negation words"
        );
        assert_eq!(parse_explanation("  \n"), None);
        assert_eq!(parse_explanation("[EXPLANATION]:   "), None);
    }
}
