"""Writes sae-models/tests/fixtures/llava_onevision_tiny/extra.safetensors: what transformers'
LLaVA-OneVision makes of inputs the shared fixture's single 112x84 image does not reach, from the
same tiny model.

Usage: /work/venv-ref/bin/python tools/make_llava_fixture.py
(needs transformers, torch, torchvision, pillow, safetensors)

Cases (images from sae-models/tests/fixtures/image_processors/images, opened with PIL):
  wide   one prompt, `wide.png` (150x32): pinpoint 56x112 (1 x 2 tiles), 4 x 8 features
         unpadded to 2 x 8 rows
  batch  two prompts padded on the left: `tall.png` (30x84: pinpoint 112x56, 8 x 4 features
         unpadded to 8 x 2 columns) and `image2.png` (56x56: pinpoint 56x56, nothing unpadded)
  multi  two images in one prompt, `image2.png` and `gray.png`: one tile each, no anyres
  max2   `image1.png` (the shared fixture's image) with vision_aspect_ratio "anyres_max_2" (model
         and processor): its unpadded 6 x 8 feature map is bilinearly downsampled to 4 x 6
  tile60 `image2.png` with 60-pixel tiles (vision image_size, processor size and pinpoints
         [[60, 60], [60, 120], [120, 60], [120, 120]]): 60 is not a multiple of the 14-pixel
         patch, so the convolution leaves the last 4 pixel rows and columns unread, as the real
         checkpoints' 384-pixel tiles with 14-pixel patches do

Keys, per case `<case>.`: `inputs.input_ids`, `inputs.attention_mask`, `inputs.image_sizes`,
`inputs.batch_num_images` (int64), `logits` (float32 `[batch, T, vocab]`); `wide.` also has
`inputs.pixel_values`. The other cases' pixel values are left out to keep the file near 1 MB:
the Rust test makes them from the same image files with its image processor (which
tests/image_processor.rs checks against transformers).

Positions: transformers' plain forward numbers left padding as tokens; generate() numbers real
tokens from 0 (`attention_mask.cumsum(-1) - 1`, padding at 1). The batch case passes the
latter explicitly; logits at padding positions are not meaningful.

Before writing, the script checks that it reproduces the shared fixture's logits.
"""

from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration
from transformers.image_utils import SizeDict

ROOT = Path(__file__).resolve().parent.parent / "sae-models/tests/fixtures"
MODEL = ROOT / "llava_onevision_tiny"
IMAGES = ROOT / "image_processors/images"

# name -> (texts, images per prompt, vision_aspect_ratio, tile side, keep pixel values)
CASES = {
    "wide": (["<image>Hi"], [["wide.png"]], "anyres_max_9", 56, True),
    "batch": (["<image>Hi", "<image>Hello there"], [["tall.png"], ["image2.png"]], "anyres_max_9", 56, False),
    "multi": (["<image><image>Hi"], [["image2.png", "gray.png"]], "anyres_max_9", 56, False),
    "max2": (["<image>Hi"], [["image1.png"]], "anyres_max_2", 56, False),
    "tile60": (["<image>Hi"], [["image2.png"]], "anyres_max_9", 60, False),
}


def check_shared_fixture(model) -> None:
    reference = load_file(str(MODEL / "reference.safetensors"))
    inputs = {k[len("inputs.") :]: v for k, v in reference.items() if k.startswith("inputs.")}
    with torch.no_grad():
        logits = model(**inputs).logits
    err = (logits - reference["logits"]).abs().max() / reference["logits"].abs().max()
    assert err < 1e-5, f"the shared fixture's logits differ by {err}"


def run_case(model, processor, texts, prompts, aspect_ratio, tile) -> dict[str, torch.Tensor]:
    model.config.vision_aspect_ratio = aspect_ratio
    processor.vision_aspect_ratio = aspect_ratio
    pinpoints = [[tile, tile], [tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    model.config.vision_config.image_size = tile
    model.config.image_grid_pinpoints = pinpoints
    processor.image_processor.size = SizeDict(height=tile, width=tile)
    processor.image_processor.image_grid_pinpoints = pinpoints
    images = [[Image.open(IMAGES / name) for name in prompt] for prompt in prompts]
    if all(len(p) == 1 for p in images):
        images = [p[0] for p in images]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    mask = inputs["attention_mask"]
    # generate()'s positions: real tokens from 0 whatever the padding.
    position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        logits = model(**inputs, position_ids=position_ids).logits
    out = {f"inputs.{k}": v for k, v in inputs.items()}
    out["logits"] = logits.contiguous()
    return out


def main() -> None:
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(
        MODEL, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    processor = AutoProcessor.from_pretrained(MODEL)
    processor.tokenizer.padding_side = "left"
    check_shared_fixture(model)
    tensors = {}
    for name, (texts, prompts, aspect_ratio, tile, keep_pixels) in CASES.items():
        out = run_case(model, processor, texts, prompts, aspect_ratio, tile)
        for key, value in out.items():
            if key == "inputs.pixel_values" and not keep_pixels:
                continue
            tensors[f"{name}.{key}"] = value.contiguous()
        print(name, {k: list(v.shape) for k, v in out.items()})
    save_file(tensors, str(MODEL / "extra.safetensors"))
    print("wrote", MODEL / "extra.safetensors", (MODEL / "extra.safetensors").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
