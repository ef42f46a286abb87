"""Extra Qwen2-VL / Qwen2.5-VL references beyond the shared fixture's single case.

For each tiny model in sae-models/tests/fixtures/{qwen2_vl_tiny,qwen2_5_vl_tiny}, runs
transformers' own processor and model (float32, eager attention) on:
  two_images: image1.png and tall.png in one chat turn;
  wide: wide.png alone (another aspect ratio and grid);
  batch: two prompts padded on the left, one with image2.png and one with image1.png plus
         a longer text;
and writes every processor output and the logits to <model>/extra.safetensors as
`<case>.inputs.<name>` and `<case>.logits`.

Run from the repository root with a Python that has torch, transformers, torchvision and
pillow: python tools/make_qwen2_vl_fixture.py
"""

from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

FIXTURES = Path("sae-models/tests/fixtures")
IMAGES = FIXTURES / "image_processors/images"


def chat(processor, images, text):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def main():
    img = {name: Image.open(IMAGES / f"{name}.png").convert("RGB") for name in ["image1", "image2", "tall", "wide"]}
    for model_name in ["qwen2_vl_tiny", "qwen2_5_vl_tiny"]:
        folder = FIXTURES / model_name
        processor = AutoProcessor.from_pretrained(folder)
        processor.tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
        cases = {
            "two_images": ([chat(processor, [img["image1"], img["tall"]], "Compare these images.")], [img["image1"], img["tall"]]),
            "wide": ([chat(processor, [img["wide"]], "What is this?")], [img["wide"]]),
            "batch": (
                [
                    chat(processor, [img["image2"]], "Describe it."),
                    chat(processor, [img["image1"]], "Shall I compare thee to a summer's day? Describe it."),
                ],
                [img["image2"], img["image1"]],
            ),
        }
        tensors = {}
        for case, (texts, images) in cases.items():
            inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
            with torch.no_grad():
                logits = model(**inputs).logits
            for key, value in inputs.items():
                tensors[f"{case}.inputs.{key}"] = value.contiguous()
            tensors[f"{case}.logits"] = logits.contiguous()
        save_file(tensors, folder / "extra.safetensors")
        print(model_name, {k: list(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
