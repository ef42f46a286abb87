//! Training loop, metrics, checkpoints, data parallel and ZeRO. Filled by the training issue.
