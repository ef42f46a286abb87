"""EleutherAI sparsify's Trainer on a GGUF model (transformers, dequantised to float32) on CPU,
timed: end-to-end SAE training (model forward with the hook, SAE step, Adam) on the token
batches that `cargo xtask bench train` trained on.

Usage: python bench_train.py GGUF TOKENS CONTEXT BATCH LAYER K LATENTS LR EXCLUDE DEAD SKIP
  TOKENS   the batches' token ids, little-endian uint16, CONTEXT ids per sequence, in order
  LAYER    the decoder layer whose output the SAE reads (sparsify's `layers`)
  EXCLUDE  a token id left out of the loss (the end-of-sequence token)
  DEAD     sparsify's dead_feature_threshold, in tokens
  SKIP     steps left out of the timing at the start
Prints the mean of the timed steps' tokens per second (tokens the SAE trains on), as the Rust
side does. Run by `cargo xtask bench train` when SAE_BENCH_PYTHON is set.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch  # noqa: E402
from sparsify import SparseCoderConfig, Trainer, TrainConfig  # noqa: E402
from sparsify.data import MemmapDataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from peak_memory import peak_mib  # noqa: E402

gguf, tokens_file = sys.argv[1], sys.argv[2]
context, batch, layer, k, latents = map(int, sys.argv[3:8])
lr = float(sys.argv[8])
exclude, dead, skip = map(int, sys.argv[9:12])

folder, name = os.path.split(gguf)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
dataset = MemmapDataset(tokens_file, context)

with tempfile.TemporaryDirectory() as out:
    cfg = TrainConfig(
        # sparsify's TopK variant: ReLU, encoder bias, unit-norm decoder (its defaults).
        SparseCoderConfig(num_latents=latents, k=k),
        batch_size=batch,
        optimizer="adam",
        lr=lr,
        auxk_alpha=1 / 32,
        dead_feature_threshold=dead,
        exclude_tokens=[exclude],
        layers=[layer],
        save_every=1 << 30,
        log_to_wandb=False,
        save_dir=out,
    )
    trainer = Trainer(cfg, dataset, model)

    # A step runs from one batch's model call to the next's: data, forward with the SAE's hook,
    # backward, Adam and sparsify's bookkeeping. The last batch only closes the step before it.
    starts, counts = [], []

    def stamp(module, args, kwargs):
        starts.append(time.perf_counter())
        ids = kwargs.get("input_ids", args[0] if args else None)
        counts.append(int(torch.isin(ids, torch.tensor([exclude]), invert=True).sum()))

    model.register_forward_pre_hook(stamp, with_kwargs=True)
    trainer.fit()

rates = [counts[i] / (starts[i + 1] - starts[i]) for i in range(skip, len(starts) - 1)]
# Peak resident memory of this process, torch included.
print("peak_mib", peak_mib())
print(sum(rates) / len(rates))
