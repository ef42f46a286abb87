"""EleutherAI sparsify's TopK SAE training step (forward, backward, Adam) on CPU, timed.

Usage: python bench_sparsify_step.py D LATENTS K TOKENS WARMUP STEPS
Prints tokens per second. Run by `cargo xtask bench sae-step` when SAE_BENCH_PYTHON is set.
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
opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
x = torch.randn(tokens, d)
elapsed = 0.0
for step in range(warmup + steps):
    start = time.perf_counter()
    out = sae(x)
    out.fvu.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if step >= warmup:
        elapsed += time.perf_counter() - start
print(tokens * steps / elapsed)
