//! Model ports with hook points (Qwen2-VL/Qwen2.5-VL, LLaVA-OneVision, decoder LMs). Filled by the models issues.
