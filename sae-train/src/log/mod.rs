//! What a run writes as it trains: `metrics.jsonl` ([`metrics`]), TensorBoard event files
//! ([`tensorboard`]) and the loss curves as SVG ([`plot`]).

pub mod metrics;
pub mod plot;
pub mod tensorboard;
