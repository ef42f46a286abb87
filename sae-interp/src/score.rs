//! Scoring explanations by detection (`sae score`, delphi's detection scorer): the scorer model
//! reads a latent's explanation and a shuffled mix of excerpts where the latent fires (around
//! random firings, beyond the top contexts the explainer saw) and where it does not, and says
//! for each whether the latent would fire; the answers give accuracy, precision, recall and F1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use sae_core::tensor_file::{read_json, write_json};

use crate::cache::Cache;
use crate::chat_client::{ChatClient, Message, Progress, ask_concurrently};
use crate::error::{InterpError, Result};
use crate::examples::{Context, LatentExamples, SamplingConfig, latent_examples};
use crate::explanations::Explanations;

/// The file `sae score` writes.
pub const SCORES_FILE: &str = "scores.json";

/// How to score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreConfig {
    /// Activating and non-activating excerpts per latent (`random`, `non_activating`), their
    /// `window` and `seed`; `top` as when the explanations were made, so those contexts are
    /// left out.
    pub sampling: SamplingConfig,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            sampling: SamplingConfig {
                random: 10,
                non_activating: 10,
                images: 0,
                ..SamplingConfig::default()
            },
            concurrency: 4,
        }
    }
}

/// One explanation's detection score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentScore {
    /// The explanation scored.
    pub explanation: String,
    /// Excerpts where the latent fires.
    pub activating: usize,
    /// Excerpts where it does not.
    pub non_activating: usize,
    /// Fraction of excerpts judged right.
    pub accuracy: f64,
    /// Of the excerpts judged to fire, the fraction that do.
    pub precision: f64,
    /// Of the excerpts that fire, the fraction judged to.
    pub recall: f64,
    /// The harmonic mean of precision and recall.
    pub f1: f64,
    /// Why there is no score, when there is none (an unusable answer, no excerpt to score on;
    /// the numbers are then 0).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// Hook path -> latent -> score.
pub type Scores = BTreeMap<String, BTreeMap<usize, LatentScore>>;

/// The scorer's instructions.
const SCORER_SYSTEM: &str = "You are given the explanation of one latent (a feature) of a \
sparse autoencoder trained on a neural network's activations, and numbered text excerpts. For \
each excerpt decide whether the latent, as the explanation describes it, activates on some \
token of it. Answer with only a JSON list of 0s and 1s, one per excerpt, in order: 1 where it \
activates, 0 where it does not.";

/// Scores every explanation in `explanations` whose latent fired in `cache`, adding the scores
/// to `out/scores.json` after each latent (a latent that fires nowhere but in its top contexts
/// gets an `error` and no request). A latent the file already scores without error, for the
/// same explanation, is kept and not asked again, so a rerun continues an interrupted or
/// partly failed run. Fails when no latent has a score at the end. `progress` hears of each
/// latent scored.
pub fn score_explanations(
    cache: &Cache,
    explanations: &Explanations,
    client: &ChatClient,
    out: &Path,
    config: &ScoreConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Scores> {
    let sampling = &config.sampling;
    if sampling.random == 0 {
        return Err(InterpError::Invalid(
            "scoring needs at least 1 activating excerpt per latent".into(),
        ));
    }
    // One writer of scores.json at a time. Scores of earlier runs stay; the latents scored now
    // are replaced.
    let _lock = sae_core::FolderLock::acquire(out)?;
    let file = out.join(SCORES_FILE);
    let mut scores: Scores = if file.is_file() {
        read_json(&file)?
    } else {
        Scores::new()
    };
    // (hook, latent) of every explained latent that fired.
    let mut fired = Vec::new();
    for (hook, explained) in explanations {
        if !cache.info.hooks.contains_key(hook) {
            tracing::warn!(hook = %hook, "explanations for a hook point the cache does not hold; skipped");
            continue;
        }
        let latents = latent_examples(cache, hook, sampling)?;
        let explained: Vec<(&LatentExamples, &String)> = (latents.iter())
            .filter_map(|l| explained.get(&l.latent).map(|e| (l, e)))
            .collect();
        fired.extend(explained.iter().map(|(l, _)| (hook, l.latent)));
        let kept = |(l, e): &(&LatentExamples, &String)| {
            scores
                .get(hook)
                .and_then(|s| s.get(&l.latent))
                .is_some_and(|s| s.error.is_none() && s.explanation == **e)
        };
        let (scorable, unscorable): (Vec<_>, Vec<_>) = (explained.into_iter())
            .filter(|l| !kept(l))
            .partition(|(l, _)| !l.random.is_empty());
        for (latent, explanation) in unscorable {
            let reason = format!(
                "it fires nowhere apart from its {} top contexts: nothing to score on",
                latent.top.len()
            );
            let score = LatentScore {
                error: Some(reason),
                ..detection_score(explanation, &[], &[])
            };
            scores
                .entry(hook.clone())
                .or_default()
                .insert(latent.latent, score);
        }
        let mut done = 0;
        let ask = |&(latent, explanation): &(&LatentExamples, &String)| {
            let mut excerpts: Vec<(&Context, bool)> = (latent.random.iter().map(|c| (c, true)))
                .chain(latent.non_activating.iter().map(|c| (c, false)))
                .collect();
            let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed ^ latent.latent as u64);
            excerpts.shuffle(&mut rng);
            let answer = client.complete(&scorer_prompt(cache, explanation, &excerpts))?;
            let truth: Vec<bool> = excerpts.iter().map(|e| e.1).collect();
            Ok(match parse_judgements(&answer, excerpts.len()) {
                Ok(judged) => detection_score(explanation, &truth, &judged),
                Err(reason) => LatentScore {
                    error: Some(reason),
                    ..detection_score(explanation, &truth, &vec![false; truth.len()]).zeroed()
                },
            })
        };
        let done = |&(latent, _): &(&LatentExamples, &String), score: LatentScore| {
            scores
                .entry(hook.clone())
                .or_default()
                .insert(latent.latent, score);
            write_json(&file, &scores)?;
            done += 1;
            let total = scorable.len();
            progress(Progress {
                hook,
                latent: latent.latent,
                done,
                total,
            });
            Ok(())
        };
        ask_concurrently(&scorable, config.concurrency, ask, done)?;
    }
    if fired.is_empty() {
        let explained: usize = explanations.values().map(|e| e.len()).sum();
        return Err(InterpError::Invalid(format!(
            "none of the {explained} explained latents fired in the cache: score on a cache of the SAE the explanations are for"
        )));
    }
    write_json(&file, &scores)?;
    let score = |&(hook, latent): &(&String, usize)| &scores[hook][&latent];
    if fired.iter().all(|f| score(f).error.is_some()) {
        let (hook, latent) = fired[0];
        let reason = score(&fired[0]).error.clone().unwrap_or_default();
        return Err(InterpError::NothingScored {
            latents: fired.len(),
            first: format!("latent {latent} of {hook}: {reason}"),
            file,
        });
    }
    Ok(scores)
}

/// The messages that ask the scorer about shuffled excerpts.
pub fn scorer_prompt(
    cache: &Cache,
    explanation: &str,
    excerpts: &[(&Context, bool)],
) -> Vec<Message> {
    let mut user = format!("Explanation: {explanation}\n");
    for (i, (context, _)) in excerpts.iter().enumerate() {
        let text: String = context.tokens.iter().map(|&id| cache.text(id)).collect();
        let _ = write!(user, "\nExcerpt {}: {text}\n", i + 1);
    }
    Message::prompt(SCORER_SYSTEM, user)
}

/// The `n` judgements of an answer: its first JSON list of 0/1 (or booleans); an error says why
/// it cannot be used.
pub fn parse_judgements(answer: &str, n: usize) -> std::result::Result<Vec<bool>, String> {
    let start = answer.find('[').ok_or("the answer holds no JSON list")?;
    let end = start
        + answer[start..]
            .find(']')
            .ok_or("the answer's list is not closed")?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&answer[start..=end])
        .map_err(|e| format!("the answer's list is not JSON: {e}"))?;
    if list.len() != n {
        return Err(format!(
            "the answer judges {} excerpts, not {n}",
            list.len()
        ));
    }
    (list.iter())
        .map(|v| match v {
            serde_json::Value::Bool(b) => Ok(*b),
            v if v.as_f64() == Some(1.0) => Ok(true),
            v if v.as_f64() == Some(0.0) => Ok(false),
            v => Err(format!("{v} is not 0 or 1")),
        })
        .collect()
}

/// Accuracy, precision, recall and F1 of `judged` against `truth` (true: the latent fires).
pub fn detection_score(explanation: &str, truth: &[bool], judged: &[bool]) -> LatentScore {
    let count = |t: bool, j: bool| {
        (truth.iter().zip(judged))
            .filter(|&(&a, &b)| a == t && b == j)
            .count() as f64
    };
    let (tp, fp, fn_, tn) = (
        count(true, true),
        count(false, true),
        count(true, false),
        count(false, false),
    );
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let (precision, recall) = (ratio(tp, tp + fp), ratio(tp, tp + fn_));
    LatentScore {
        explanation: explanation.to_string(),
        activating: (tp + fn_) as usize,
        non_activating: (fp + tn) as usize,
        accuracy: ratio(tp + tn, truth.len() as f64),
        precision,
        recall,
        f1: ratio(2.0 * precision * recall, precision + recall),
        error: None,
    }
}

impl LatentScore {
    /// The same counts with every measure 0 (an answer that could not be used).
    fn zeroed(self) -> Self {
        LatentScore {
            accuracy: 0.0,
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measures_follow_from_the_confusion_counts() {
        // 3 activating (2 judged so), 2 not (1 judged to fire): tp 2, fn 1, fp 1, tn 1.
        let truth = [true, true, true, false, false];
        let judged = [true, true, false, true, false];
        let s = detection_score("x", &truth, &judged);
        assert_eq!((s.activating, s.non_activating), (3, 2));
        assert_eq!(
            (s.accuracy, s.precision, s.recall),
            (3.0 / 5.0, 2.0 / 3.0, 2.0 / 3.0)
        );
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
        // Nothing judged to fire: precision and F1 are 0, not NaN.
        let s = detection_score("x", &truth, &[false; 5]);
        assert_eq!(
            (s.precision, s.recall, s.f1, s.accuracy),
            (0.0, 0.0, 0.0, 0.4)
        );
    }

    #[test]
    fn judgements_are_the_first_list_of_the_answer() {
        assert_eq!(
            parse_judgements("Sure: [1, 0, true]", 3).unwrap(),
            [true, false, true]
        );
        assert!(
            parse_judgements("[1, 0]", 3)
                .unwrap_err()
                .contains("judges 2 excerpts, not 3")
        );
        assert!(parse_judgements("no list", 1).is_err());
        assert!(
            parse_judgements("[2]", 1)
                .unwrap_err()
                .contains("2 is not 0 or 1")
        );
    }
}
