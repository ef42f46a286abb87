"""Reference numbers for the SmolLM2-135M-Instruct GGUF test: transformers' own dequantised load
of the same GGUF file (float32), on one chat prompt.

Usage: python tools/make_smollm2_reference.py "$(tools/fetch_smollm2.sh)"
Writes sae-models/tests/fixtures/smollm2_gguf_reference.safetensors: input_ids, the logits of the
last two positions, and 16 greedy tokens. Needs torch, transformers, gguf, safetensors.
"""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "What is the capital of France?"
OUT = Path(__file__).resolve().parent.parent / "sae-models/tests/fixtures/smollm2_gguf_reference.safetensors"

folder, name = os.path.split(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
with torch.no_grad():
    logits = model(ids).logits
    greedy = model.generate(ids, max_new_tokens=16, do_sample=False)[:, ids.shape[1]:]
save_file({"input_ids": ids.contiguous(), "logits_last": logits[:, -2:].contiguous(), "greedy": greedy.contiguous()}, str(OUT))
print(text)
print(tokenizer.decode(greedy[0]))
