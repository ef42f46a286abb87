"""transformers' forward pass of a GGUF model (dequantised to float32) on CPU, timed.

Usage: python bench_lm_forward.py GGUF BATCH TOKENS RUNS
Prints tokens per second. Run by `cargo xtask bench lm-forward` when SAE_BENCH_PYTHON is set.
The token ids follow the same fixed LCG as the Rust side.
"""

import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

from peak_memory import peak_mib

path, batch, tokens, runs = sys.argv[1], *map(int, sys.argv[2:5])
folder, name = os.path.split(path)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
vocab = model.config.vocab_size
mask = (1 << 64) - 1
ids = [(((i * 6364136223846793005 + 1442695040888963407) & mask) >> 33) % vocab for i in range(batch * tokens)]
ids = torch.tensor(ids).reshape(batch, tokens)
with torch.no_grad():
    model(ids)
    start = time.perf_counter()
    for _ in range(runs):
        model(ids)
    elapsed = time.perf_counter() - start
# Peak resident memory of this process, torch included.
print("peak_mib", peak_mib())
print(batch * tokens * runs / elapsed)
