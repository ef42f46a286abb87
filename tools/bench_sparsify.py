"""EleutherAI sparsify's TopK SAE on CPU, timed: one training step as its Trainer takes it
(unit-norm decoder, forward with AuxK's dead mask, backward, parallel gradient removed, Adam,
dead-latent counters) or
inference (encode, then decode).

Usage: python bench_sparsify.py step|encode D LATENTS K TOKENS WARMUP STEPS [cpu|cuda]
Prints tokens per second. Run by `cargo xtask bench sae-step|sae-encode` when SAE_BENCH_PYTHON
is set (on cuda with `--backend cuda`).
"""

import os
import sys
import time

device = sys.argv[8] if len(sys.argv) > 8 else "cpu"
if device == "cpu":
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch  # noqa: E402
from sparsify import SparseCoder, SparseCoderConfig  # noqa: E402

from peak_memory import peak_mib  # noqa: E402

mode = sys.argv[1]
d, latents, k, tokens, warmup, steps = map(int, sys.argv[2:8])
torch.manual_seed(0)
sae = SparseCoder(d, SparseCoderConfig(num_latents=latents, k=k)).to(device)
opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
x = torch.randn(tokens, d, device=device)


num_tokens_since_fired = torch.zeros(latents, dtype=torch.long, device=device)


def train_step():
    # One step of sparsify's Trainer.fit: unit-norm decoder, forward with the dead mask (AuxK),
    # backward, the decoder gradient made orthogonal to its rows, Adam, dead-latent counters.
    sae.set_decoder_norm_to_unit_norm()
    dead_mask = num_tokens_since_fired > 10_000_000
    out = sae(x, dead_mask=dead_mask)
    (out.fvu + out.auxk_loss / 32).backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    opt.step()
    opt.zero_grad(set_to_none=True)
    did_fire = torch.zeros(latents, dtype=torch.bool, device=device)
    did_fire[out.latent_indices.flatten()] = True
    num_tokens_since_fired.add_(tokens)
    num_tokens_since_fired[did_fire] = 0


@torch.no_grad()
def inference():
    acts, indices, _ = sae.encode(x)
    sae.decode(acts, indices)


run = {"step": train_step, "encode": inference}[mode]
elapsed = 0.0
for step in range(warmup + steps):
    start = time.perf_counter()
    run()
    if device != "cpu":
        torch.cuda.synchronize()
    if step >= warmup:
        elapsed += time.perf_counter() - start
# Peak resident memory of this process, torch included.
print("peak_mib", peak_mib())
print(tokens * steps / elapsed)
