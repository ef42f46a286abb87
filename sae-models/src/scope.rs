//! What part of a model a job loads, decided in one place by the hook points it reads: the text
//! layers up to the deepest of them, the final norm and LM head only when logits are needed,
//! and a vision-language model's vision tower only when images are given or hooked.
//!
//! A 7B model read at layer 24 of 28 then never loads the last four layers nor the 1 GB head,
//! and a text-only job on Qwen2.5-VL never loads its 1.3 GB vision tower. Under ZeRO-3 the
//! scope also says which ranks share the weights ([`LoadScope::sharded`]).

use sae_core::HookPoint;

use crate::shard::Shards;

/// The part of a model to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadScope {
    /// The deepest hook point the job reads; `None`: the whole model, logits included.
    last: Option<String>,
    /// The job gives images (load the vision tower).
    images: bool,
    /// The ranks that share the weights (ZeRO-3); `None`: this process holds them all.
    shards: Option<Shards>,
}

impl LoadScope {
    /// The whole model: for jobs that need logits (generation, evaluation). The vision tower
    /// is loaded when `images` is true.
    pub fn whole(images: bool) -> Self {
        LoadScope {
            last: None,
            images,
            shards: None,
        }
    }

    /// Up to the deepest of `paths` in `points` (the model's hook points in forward order; see
    /// [`crate::AnyModel::hook_points_of`]): the pass stops there, nothing later is loaded. No
    /// path, or one that is not a hook point, means the whole model.
    pub fn through<'a>(
        points: &[HookPoint],
        paths: impl IntoIterator<Item = &'a str>,
        images: bool,
    ) -> Self {
        let paths: Vec<&str> = paths.into_iter().collect();
        let position = |path: &str| points.iter().position(|p| p.path == path);
        let deepest = paths
            .iter()
            .map(|p| position(p))
            .collect::<Option<Vec<_>>>();
        let last = deepest
            .and_then(|d| d.into_iter().max())
            .map(|i| points[i].path.clone());
        LoadScope {
            last,
            images,
            shards: None,
        }
    }

    /// The same scope with the weight matrices shared between the ranks of `shards` (ZeRO-3):
    /// each rank keeps a slice, and each matrix of the text layers is gathered as it runs.
    pub fn sharded(self, shards: Shards) -> Self {
        LoadScope {
            shards: Some(shards),
            ..self
        }
    }

    /// The ranks that share the weights, under ZeRO-3.
    pub fn shards(&self) -> Option<&Shards> {
        self.shards.as_ref()
    }

    /// The deepest hook point read, if the job stops early.
    pub fn last(&self) -> Option<&str> {
        self.last.as_deref()
    }

    /// How many of a decoder's `layers` (its modules at `prefix.layers.N`) to load.
    pub fn text_layers(&self, prefix: &str, layers: usize) -> usize {
        match self.in_text(prefix) {
            Some(Some(layer)) => (layer + 1).min(layers),
            Some(None) => layers,
            None => 0,
        }
    }

    /// Whether to load the decoder's final norm and LM head (the job reads either, or logits).
    pub fn head(&self, prefix: &str) -> bool {
        matches!(self.in_text(prefix), Some(None))
    }

    /// Whether to load the vision tower: the job gives images, or reads a hook before the text.
    pub fn vision(&self, text_prefix: &str) -> bool {
        self.images || self.in_text(text_prefix).is_none()
    }

    /// Where the deepest hook lies: `None` before the decoder at `prefix` (the vision tower),
    /// `Some(Some(i))` in its layer `i`, `Some(None)` after its layers (or the whole model).
    fn in_text(&self, prefix: &str) -> Option<Option<usize>> {
        let Some(last) = &self.last else {
            return Some(None);
        };
        if last == "lm_head" {
            return Some(None);
        }
        let rest = last.strip_prefix(prefix)?.strip_prefix('.')?;
        if let Some(layer) = rest.strip_prefix("layers.") {
            let index = layer.split('.').next().and_then(|i| i.parse().ok())?;
            return Some(Some(index));
        }
        (rest == "norm").then_some(None)
    }
}

#[cfg(test)]
mod tests {
    use sae_core::HookKind;

    use super::*;

    fn points(names: &[&str]) -> Vec<HookPoint> {
        names
            .iter()
            .map(|n| HookPoint::new(*n, 8, HookKind::Other))
            .collect()
    }

    #[test]
    fn the_deepest_hook_decides() {
        let vl = points(&[
            "model.visual.blocks.0",
            "model.visual.merger",
            "model.language_model.layers.0.mlp",
            "model.language_model.layers.0",
            "model.language_model.layers.1.mlp.down_proj",
            "model.language_model.layers.1",
            "model.language_model.norm",
            "lm_head",
        ]);
        let text = "model.language_model";
        let scope = LoadScope::through(
            &vl,
            [
                "model.language_model.layers.1.mlp.down_proj",
                "model.language_model.layers.0",
            ],
            false,
        );
        assert_eq!(
            scope.last(),
            Some("model.language_model.layers.1.mlp.down_proj")
        );
        assert_eq!(scope.text_layers(text, 2), 2);
        assert!(!scope.head(text));
        assert!(!scope.vision(text));
        let with_images = LoadScope::through(&vl, ["model.language_model.layers.0.mlp"], true);
        assert_eq!(with_images.text_layers(text, 2), 1);
        assert!(with_images.vision(text));
        let vision = LoadScope::through(&vl, ["model.visual.merger"], false);
        assert_eq!(vision.text_layers(text, 2), 0);
        assert!(vision.vision(text) && !vision.head(text));
        for last in ["model.language_model.norm", "lm_head"] {
            let scope = LoadScope::through(&vl, [last], false);
            assert_eq!(scope.text_layers(text, 2), 2);
            assert!(scope.head(text) && !scope.vision(text));
        }
        let whole = LoadScope::whole(false);
        assert_eq!(whole.text_layers(text, 2), 2);
        assert!(whole.head(text) && !whole.vision(text));
        // A path the model does not have: nothing is cut.
        let unknown = LoadScope::through(&vl, ["model.layers.0", "lm_head"], false);
        assert_eq!(unknown, LoadScope::whole(false));
    }
}
