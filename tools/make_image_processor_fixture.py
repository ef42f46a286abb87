"""Writes sae-models/tests/fixtures/image_processors/: input images made from the shared fixtures'
real photos, and what transformers' Qwen2-VL and LLaVA-OneVision image processors (torchvision
backend, the one `AutoImageProcessor` picks) make of them.

Usage: /work/venv-ref/bin/python tools/make_image_processor_fixture.py [--shared /work/shared/fixtures]
(needs transformers, torch, torchvision, pillow, safetensors)

Output:
  images/                 the inputs, as the Rust tests decode them
  <config>/               processor_config.json (copied) or preprocessor_config.json (older hub layout)
  <config>.safetensors    `<case>.pixel_values` and `<case>.image_grid_thw` (Qwen2-VL) or
                          `<case>.image_sizes` and `<case>.batch_num_images` (LLaVA-OneVision)
  cases.json              every case: config, processor, images (a list of prompts' image lists)
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor

OUT = Path(__file__).resolve().parent.parent / "sae-models/tests/fixtures/image_processors"

# Older hub layouts (`preprocessor_config.json`, top-level keys), with small sizes to keep the
# fixture small; the Qwen one uses `min_pixels`/`max_pixels` instead of `size`.
QWEN2_VL_LEGACY = {
    "min_pixels": 28 * 28,
    "max_pixels": 28 * 28 * 2,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}
LLAVA_ONEVISION_LEGACY = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_grid_pinpoints": [[28, 28], [28, 56], [56, 28], [56, 56], [84, 28]],
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "LlavaOnevisionImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaOnevisionProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 28, "width": 28},
}


def make_images(shared: Path, out: Path) -> None:
    """The inputs: the two real photos and variants cut and scaled from them with PIL."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ["image1.png", "image2.png"]:  # 112x84 and 56x56 RGB
        shutil.copyfile(shared / name, out / name)
    photo = Image.open(shared / "image1.png").convert("RGB")
    square = Image.open(shared / "image2.png").convert("RGB")
    photo.crop((40, 0, 70, 84)).save(out / "tall.png")  # 30x84
    photo.crop((0, 30, 112, 54)).resize((150, 32), Image.BICUBIC).save(out / "wide.png")
    photo.resize((20, 15), Image.LANCZOS).save(out / "tiny.png")  # below min_pixels
    photo.resize((200, 150), Image.BICUBIC).save(out / "large.png")  # above max_pixels
    photo.convert("L").resize((70, 70), Image.BILINEAR).save(out / "gray.png")  # 70/28 = 2.5
    rgba = square.resize((60, 45), Image.BICUBIC).convert("RGBA")
    alpha = np.add.outer(np.arange(45) * 3, np.arange(60) * 4).clip(0, 255).astype(np.uint8)
    rgba.putalpha(Image.fromarray(alpha, "L"))
    rgba.save(out / "rgba.png")
    palette = square.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.save(out / "palette.png", transparency=0)  # tRNS: colour 0 transparent
    photo.resize((90, 64), Image.BICUBIC).save(out / "photo.jpg", quality=90)
    # PIL's (libjpeg-turbo's) decoding of it, losslessly: Rust's JPEG decoder differs by a few levels.
    Image.open(out / "photo.jpg").convert("RGB").save(out / "photo.pil.png")
    photo.crop((20, 10, 80, 60)).save(out / "lossless.webp", lossless=True)


# (case name, config folder, prompts' image lists). One prompt of one image is the usual call;
# a flat list of several images is several one-image prompts (`[[a], [b]]`); only LLaVA-OneVision
# treats a prompt with several images differently (pad to square, no tiles).
IMAGE_FILES = {
    name: f"{name}.png" for name in ["image1", "image2", "tall", "wide", "tiny", "large", "gray", "rgba", "palette"]
} | {"photo": "photo.jpg", "lossless": "lossless.webp"}
SINGLES = list(IMAGE_FILES)
CASES = (
    # The fixtures' own configs (min 3136 / max 12544 pixels; 56x56 tiles): the real photo, upscaling
    # below min_pixels, a half-way rounding (70 / 28 = 2.5), several prompts.
    [(name, "qwen2_vl", [[name]]) for name in ["image1", "tiny", "gray"]]
    + [(name, "llava_onevision", [[name]]) for name in ["image1", "tall"]]
    + [("multi", "llava_onevision", [["image2"], ["tall", "gray"]])]
    # The small older-layout configs: every input, and batches.
    + [(name, "qwen2_vl_legacy", [[name]]) for name in SINGLES]
    + [("batch", "qwen2_vl_legacy", [["image1"], ["tiny"], ["gray"]])]
    + [(name, "llava_onevision_legacy", [[name]]) for name in SINGLES]
    + [
        ("batch", "llava_onevision_legacy", [["image1"], ["image2"], ["wide"]]),
        ("multi", "llava_onevision_legacy", [["tiny", "rgba"], ["wide"]]),
    ]
)


def write_configs(shared: Path, out: Path) -> None:
    for name in ["qwen2_vl", "llava_onevision"]:
        (out / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / f"{name}_tiny/processor_config.json", out / name / "processor_config.json")
    for name, config in [("qwen2_vl_legacy", QWEN2_VL_LEGACY), ("llava_onevision_legacy", LLAVA_ONEVISION_LEGACY)]:
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def run_case(processor, prompts: list[list[str]], images_dir: Path) -> dict[str, torch.Tensor]:
    # Opened as a user would (`Image.open`, no conversion), so the processor's own RGB conversion runs.
    opened = [[Image.open(images_dir / IMAGE_FILES[name]) for name in prompt] for prompt in prompts]
    is_llava = type(processor).__name__.startswith("Llava")
    images = opened if is_llava and any(len(p) > 1 for p in prompts) else [im for p in opened for im in p]
    out = processor(images=images, return_tensors="pt")
    assert processor.backend == "torchvision", processor.backend
    return {key: value.contiguous() for key, value in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=Path("/work/shared/fixtures"))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.iterdir():  # everything this script wrote before; README.md stays
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.name != "README.md":
            stale.unlink()
    images_dir = OUT / "images"
    make_images(args.shared, images_dir)
    write_configs(args.shared, OUT)

    tensors: dict[str, dict[str, torch.Tensor]] = {}
    cases = []
    for case, config, prompts in CASES:
        processor = AutoImageProcessor.from_pretrained(OUT / config)
        for key, value in run_case(processor, prompts, images_dir).items():
            tensors.setdefault(config, {})[f"{case}.{key}"] = value
        cases.append(
            {
                "name": case,
                "config": config,
                "processor": type(processor).__name__,
                "images": [[IMAGE_FILES[name] for name in prompt] for prompt in prompts],
            }
        )
    # The shared fixtures' model inputs came from the same processors: check that they agree.
    for config in ["qwen2_vl", "llava_onevision"]:
        shared_inputs = load_file(str(args.shared / f"{config}_tiny/reference.safetensors"))
        assert torch.equal(shared_inputs["inputs.pixel_values"], tensors[config]["image1.pixel_values"]), config
    for config, values in tensors.items():
        save_file(values, str(OUT / f"{config}.safetensors"))
    (OUT / "cases.json").write_text("[\n" + ",\n".join(json.dumps(case) for case in cases) + "\n]\n")
    versions = dict(
        transformers=transformers.__version__,
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        pillow=PIL.__version__,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )
    print("wrote", OUT, versions)


if __name__ == "__main__":
    main()
