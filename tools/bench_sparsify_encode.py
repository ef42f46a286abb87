"""EleutherAI sparsify's TopK SAE inference (encode, then decode) on CPU, timed.

Usage: python bench_sparsify_encode.py D LATENTS K TOKENS WARMUP STEPS
Prints tokens per second. Run by `cargo xtask bench sae-encode` when SAE_BENCH_PYTHON is set.
"""

import os
import sys
import time

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch  # noqa: E402
from sparsify import SparseCoder, SparseCoderConfig  # noqa: E402

d, latents, k, tokens, warmup, steps = map(int, sys.argv[1:7])
torch.manual_seed(0)
sae = SparseCoder(d, SparseCoderConfig(num_latents=latents, k=k))
x = torch.randn(tokens, d)
elapsed = 0.0
with torch.no_grad():
    for step in range(warmup + steps):
        start = time.perf_counter()
        acts, indices, _ = sae.encode(x)
        sae.decode(acts, indices)
        if step >= warmup:
            elapsed += time.perf_counter() - start
print(tokens * steps / elapsed)
