//! `target_modules` with PEFT's matching rules: a string is a regex that must match the whole
//! module path; a list matches exact paths or `.`-separated suffixes (`"down_proj"` matches
//! `model.layers.3.mlp.down_proj`).

use serde::{Deserialize, Serialize};

use crate::error::{Result, SaeError};
use crate::hooks::HookPoint;

/// Which modules get an SAE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// A regular expression matched against the whole path.
    Regex(String),
    /// Exact paths or path suffixes.
    Names(Vec<String>),
}

/// [`TargetModules`] ready to match paths: the regex compiled once.
#[derive(Debug, Clone)]
pub enum Matcher<'a> {
    /// A regex that must match the whole path.
    Regex(regex::Regex),
    /// Exact paths or `.`-separated path suffixes.
    Names(&'a [String]),
}

impl Matcher<'_> {
    /// True if `path` is targeted.
    pub fn is_match(&self, path: &str) -> bool {
        match self {
            Matcher::Regex(regex) => regex.is_match(path),
            Matcher::Names(names) => names.iter().any(|n| {
                path.strip_suffix(n.as_str())
                    .is_some_and(|head| head.is_empty() || head.ends_with('.'))
            }),
        }
    }
}

impl TargetModules {
    /// The matcher of these targets; an error names a regex that does not compile.
    pub fn matcher(&self) -> Result<Matcher<'_>> {
        Ok(match self {
            TargetModules::Regex(pattern) => Matcher::Regex(full_match(pattern)?),
            TargetModules::Names(names) => Matcher::Names(names),
        })
    }

    /// The hook points targeted, in the model's order; an error listing every available hook
    /// point when nothing matches.
    pub fn resolve(&self, points: &[HookPoint]) -> Result<Vec<HookPoint>> {
        let matcher = self.matcher()?;
        let matched: Vec<HookPoint> = (points.iter())
            .filter(|p| matcher.is_match(&p.path))
            .cloned()
            .collect();
        if matched.is_empty() {
            let available: Vec<&str> = points.iter().map(|p| p.path.as_str()).collect();
            return Err(SaeError::NoTargetMatched {
                targets: self.to_string(),
                available: available.join(", "),
            });
        }
        Ok(matched)
    }
}

impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetModules::Regex(p) => write!(f, "{p:?}"),
            TargetModules::Names(n) => write!(f, "{n:?}"),
        }
    }
}

/// `pattern` anchored at both ends, as Python's `re.fullmatch`.
pub(crate) fn full_match(pattern: &str) -> Result<regex::Regex> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|source| SaeError::BadTargetRegex {
        pattern: pattern.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookKind;

    fn points() -> Vec<HookPoint> {
        [
            "model.layers.0.mlp.down_proj",
            "model.layers.1.mlp.down_proj",
            "model.layers.1.self_attn.o_proj",
            "lm_head",
        ]
        .iter()
        .map(|p| HookPoint::new(*p, 8, HookKind::Other))
        .collect()
    }

    fn paths(t: &TargetModules) -> Vec<String> {
        t.resolve(&points())
            .unwrap()
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    #[test]
    fn list_matches_exact_names_and_dotted_suffixes() {
        let t = TargetModules::Names(vec!["down_proj".into(), "lm_head".into()]);
        assert_eq!(
            paths(&t),
            [
                "model.layers.0.mlp.down_proj",
                "model.layers.1.mlp.down_proj",
                "lm_head"
            ]
        );
        // "proj" is not a whole path component of any path, so it matches nothing.
        assert!(
            TargetModules::Names(vec!["proj".into()])
                .resolve(&points())
                .is_err()
        );
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let t = TargetModules::Regex(r".*layers\.1\..*".into());
        assert_eq!(
            paths(&t),
            [
                "model.layers.1.mlp.down_proj",
                "model.layers.1.self_attn.o_proj"
            ]
        );
        let partial = TargetModules::Regex("layers".into());
        let err = partial.resolve(&points()).unwrap_err().to_string();
        assert!(
            err.contains("available hook points: model.layers.0.mlp.down_proj"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_regex_is_an_error_not_a_panic() {
        assert!(TargetModules::Regex("(".into()).matcher().is_err());
    }
}
