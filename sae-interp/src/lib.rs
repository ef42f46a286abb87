//! Latent caching, explanation, scoring, steering and dashboards. Filled by the interpretation issue.
