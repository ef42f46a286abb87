"""transformers on the scale benchmark's job: load a Qwen2.5-VL checkpoint folder in DTYPE, run
TOKENS token ids (the same as the Rust side's) to text layer AT and stop there (a forward hook
raises), on DEVICE (cpu, the default, or cuda). Prints the load time (to the device), the
forward pass's tokens/s and this process's peak resident memory (torch included), and on cuda
torch's peak GPU memory, in the benchmark's line format.

Usage: python bench_scale.py DIR AT DTYPE TOKENS [DEVICE]
Run by `cargo xtask bench scale` when SAE_BENCH_PYTHON is set.
"""

import sys
import time

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from peak_memory import peak_mib

folder, at, dtype, tokens = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]

start = time.perf_counter()
model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval().to(device)
if device == "cuda":
    torch.cuda.synchronize()
load_s = time.perf_counter() - start


class Reached(Exception):
    pass


def stop(module, inputs, output):
    raise Reached


model.model.language_model.layers[at].register_forward_hook(stop)
ids = torch.tensor([[100 + (i * 37) % 900 for i in range(tokens)]], device=device)


def forward():
    try:
        model(input_ids=ids)
    except Reached:
        if device == "cuda":
            torch.cuda.synchronize()
        return
    raise RuntimeError(f"layer {at} was not reached")


with torch.no_grad():
    forward()
    start = time.perf_counter()
    forward()
    elapsed = time.perf_counter() - start
peak = peak_mib()
print(f"scale-load-ref s={load_s:.1f}")
print(f"scale-forward-ref tokens_per_s={tokens / elapsed:.1f}")
print(f"scale-peak-mib-ref ref={peak:.0f}")
if device == "cuda":
    print(f"scale-gpu-peak-mib-ref ref={torch.cuda.max_memory_allocated() / 2**20:.0f}")
