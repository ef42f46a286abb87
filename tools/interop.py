"""The Python SAE libraries against our checkpoints, both ways (sae-cli/tests/interop.rs).

    interop.py write DIR MODEL IDS   the libraries write their own checkpoints into DIR/theirs,
                                     and their outputs into DIR/theirs.safetensors
    interop.py read DIR MODEL IDS    the libraries load what `sae convert` wrote into DIR/ours,
                                     and write their outputs into DIR/ours.safetensors and what
                                     they read of the configs into DIR/ours.json

MODEL is a Qwen2 model folder (the qwen2_tiny fixture), IDS a safetensors file whose
`inputs.input_ids` is the prompt. Needs torch, transformers, peft, eai-sparsify, sae-lens and
SAE Made Easy (`import sae`: its src/ folder on PYTHONPATH).
"""

import inspect
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

D, LATENTS, K = 64, 128, 8


def randomise(module, seed):
    """Every parameter random (biases too, which the libraries initialise to zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def smez():
    """SAE Made Easy, whose `set_adapter` predates the `inference_mode` argument peft 0.18 passes
    to it (the argument only says whether the adapter trains; SAE Made Easy ignores it)."""
    import sae
    from sae.models.topk_sae.model import TopKSaeModel

    original = TopKSaeModel.set_adapter
    if "inference_mode" not in inspect.signature(original).parameters:

        def set_adapter(self, adapter_name, inference_mode=False):
            return original(self, adapter_name)

        TopKSaeModel.set_adapter = set_adapter
    return sae


def smez_logits(model_dir, adapter, ids):
    PeftSaeModel = smez().PeftSaeModel

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    model = PeftSaeModel.from_pretrained(model, adapter)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[0].contiguous()


def write(out, model_dir, ids):
    TopKSaeConfig, get_peft_sae_model = smez().TopKSaeConfig, smez().get_peft_sae_model
    from sae_lens.saes import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sparsify import SparseCoder, SparseCoderConfig

    theirs = out / "theirs"
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(1))
    outputs = {"x": x, "input_ids": ids[0]}

    sparse = SparseCoder(D, SparseCoderConfig(num_latents=LATENTS, k=K))
    randomise(sparse, 2)
    # sparsify names a hook point from the model's base module down.
    sparse.save_to_disk(theirs / "sparsify" / "layers.1")
    with torch.no_grad():
        outputs["sparsify_out"] = sparse(x).sae_out

    for name, cls, cfg, seed in [
        ("saelens_topk", TopKSAE, TopKSAEConfig, 3),
        ("saelens_standard", StandardSAE, StandardSAEConfig, 4),
    ]:
        extra = {"k": K} if cls is TopKSAE else {}
        metadata = SAEMetadata(hook_name="model.layers.1")
        lens = cls(cfg(d_in=D, d_sae=LATENTS, metadata=metadata, **extra))
        randomise(lens, seed)
        lens.save_model(theirs / name)
        with torch.no_grad():
            outputs[f"{name}_out"] = lens(x)

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    config = TopKSaeConfig(k=4, num_latents=LATENTS, target_modules=["model.layers.1.mlp.down_proj"])
    peft_model = get_peft_sae_model(model, config)
    peft_model.save_pretrained(theirs / "smez")
    outputs["smez_logits"] = smez_logits(model_dir, theirs / "smez", ids)
    save_file({k: v.contiguous() for k, v in outputs.items()}, out / "theirs.safetensors")


def read(out, model_dir, ids):
    from sae_lens import SAE
    from sparsify import SparseCoder

    ours = out / "ours"
    x = load_file(out / "theirs.safetensors")["x"]
    outputs = {"peft_logits": smez_logits(model_dir, ours / "peft", ids)}
    # sparsify's own loading by hook point name.
    coders = SparseCoder.load_many(str(ours / "sparsify"), local=True)
    configs = {"sparsify_hookpoints": sorted(coders)}
    with torch.no_grad():
        outputs["sparsify_out"] = coders["layers.1"](x).sae_out
    for name in ["saelens", "saelens_bf16"]:
        lens = SAE.load_from_disk(ours / name)
        configs[name] = {
            "hook_name": lens.cfg.metadata.hook_name,
            "dtype": str(lens.W_enc.dtype),
            "architecture": lens.cfg.architecture(),
        }
        # Computed in f32 (bf16 weights widened), as `sae encode` computes.
        lens = SAE.load_from_disk(ours / name, dtype="float32")
        with torch.no_grad():
            outputs[f"{name}_out"] = lens(x)
    save_file({k: v.contiguous() for k, v in outputs.items()}, out / "ours.safetensors")
    (out / "ours.json").write_text(json.dumps(configs, indent=1))


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("write", "read"):
        sys.exit(__doc__)
    out, model_dir = Path(sys.argv[2]), sys.argv[3]
    ids = load_file(sys.argv[4])["inputs.input_ids"].long().reshape(1, -1)
    torch.manual_seed(0)
    {"write": write, "read": read}[sys.argv[1]](out, model_dir, ids)


if __name__ == "__main__":
    main()
