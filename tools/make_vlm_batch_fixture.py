"""A padded Qwen2-VL training batch from real easy-VQA rows, made by transformers' processor.

The first four train questions of easy-VQA (PyPI `easy-vqa`, fetched by tools/fetch_data.sh),
each a user turn with the image then the question and an assistant turn with the answer,
rendered with the chat template of sae-models/tests/fixtures/qwen2_vl_tiny and processed as
one right-padded batch: `input_ids`, `attention_mask`, `pixel_values`, `image_grid_thw` go to
sae-data/tests/fixtures/qwen2_vl_batch.safetensors.

Run from the repository root: python tools/make_vlm_batch_fixture.py [ASSETS_DIR]
"""

import json
import sys
from pathlib import Path

from PIL import Image
from safetensors.torch import save_file
from transformers import AutoProcessor

assets = Path(sys.argv[1] if len(sys.argv) > 1 else Path.home() / ".cache/sae-assets")
data = assets / "easy_vqa/data/train"
questions = json.loads((data / "questions.json").read_text())[:4]
processor = AutoProcessor.from_pretrained("sae-models/tests/fixtures/qwen2_vl_tiny")
processor.tokenizer.padding_side = "right"
texts, images = [], []
for question, answer, image in questions:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    texts.append(processor.apply_chat_template(messages, add_generation_prompt=False))
    images.append(Image.open(data / f"images/{image}.png"))
inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
save_file(
    {k: v.contiguous() for k, v in inputs.items()},
    "sae-data/tests/fixtures/qwen2_vl_batch.safetensors",
)
print({k: list(v.shape) for k, v in inputs.items()})
