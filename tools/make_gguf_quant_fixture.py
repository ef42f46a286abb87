"""Writes sae-models/tests/fixtures/gguf_quants/: a small GGUF file with one tensor of every
quantisation type we read, and the values gguf-py's own dequantiser gives for them.

Usage: python tools/make_gguf_quant_fixture.py   (needs numpy, gguf, safetensors)
"""

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, GGMLQuantizationType as Q
from gguf.quants import dequantize
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent.parent / "sae-models/tests/fixtures/gguf_quants"
rng = np.random.default_rng(0)

# (type, block bytes, byte offsets of f16 scale fields to keep finite)
TYPES = [
    (Q.Q4_0, 18, [0]),
    (Q.Q4_1, 20, [0, 2]),
    (Q.Q8_0, 34, [0]),
    (Q.Q4_K, 144, [0, 2]),
    (Q.Q5_K, 176, [0, 2]),
    (Q.Q6_K, 210, [208]),
]


def blocks(n_blocks, size, f16_offsets):
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in f16_offsets:
        scale = rng.uniform(0.001, 0.05, size=n_blocks).astype(np.float16)
        raw[:, off : off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw


OUT.mkdir(parents=True, exist_ok=True)
writer = GGUFWriter(str(OUT / "quants.gguf"), "llama")
expected = {}
rows = 2
for qtype, size, offs in TYPES:
    values_per_block = 32 if size in (18, 20, 34) else 256
    per_row = 2  # blocks per row
    raw = blocks(rows * per_row, size, offs).reshape(rows, per_row * size)
    writer.add_tensor(qtype.name.lower(), raw, raw_dtype=qtype)
    expected[qtype.name.lower()] = dequantize(raw, qtype).astype(np.float32).reshape(rows, per_row * values_per_block)
for name, dtype in [("f32", np.float32), ("f16", np.float16)]:
    data = rng.standard_normal((3, 8)).astype(dtype)
    writer.add_tensor(name, data)
    expected[name] = data.astype(np.float32)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
save_file(expected, str(OUT / "expected.safetensors"))
print("wrote", OUT)
