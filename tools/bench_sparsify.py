"""EleutherAI sparsify's TopK SAE on CPU, timed: one training step (forward, backward, Adam) or
inference (encode, then decode).

Usage: python bench_sparsify.py step|encode D LATENTS K TOKENS WARMUP STEPS
Prints tokens per second. Run by `cargo xtask bench sae-step|sae-encode` when SAE_BENCH_PYTHON
is set.
"""

import os
import sys
import time

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch  # noqa: E402
from sparsify import SparseCoder, SparseCoderConfig  # noqa: E402

mode = sys.argv[1]
d, latents, k, tokens, warmup, steps = map(int, sys.argv[2:8])
torch.manual_seed(0)
sae = SparseCoder(d, SparseCoderConfig(num_latents=latents, k=k))
opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
x = torch.randn(tokens, d)


def train_step():
    sae(x).fvu.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@torch.no_grad()
def inference():
    acts, indices, _ = sae.encode(x)
    sae.decode(acts, indices)


run = {"step": train_step, "encode": inference}[mode]
elapsed = 0.0
for step in range(warmup + steps):
    start = time.perf_counter()
    run()
    if step >= warmup:
        elapsed += time.perf_counter() - start
print(tokens * steps / elapsed)
