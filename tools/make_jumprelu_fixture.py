"""The JumpReLU training step's loss and gradients, by SAELens' own straight-through autograd
functions (sae_lens.saes.jumprelu_sae.JumpReLU and Step, DeepMind's estimator: the gradient
reaches the thresholds only), for sae-core/tests/parity_jumprelu.rs.

The loss is ours: FVU (sparsify's, over the batch) + l0_coefficient * mean_n sum_i Step(z_ni),
with z = (x - b_dec) W_enc^T + b_enc as SAELens computes it (apply_b_dec_to_input).

Usage: python make_jumprelu_fixture.py OUT.safetensors   (needs torch, safetensors, sae-lens)
"""

import sys

import torch
from safetensors.torch import save_file
from sae_lens.saes.jumprelu_sae import JumpReLU, Step

n, d, latents = 24, 8, 16
bandwidth, l0_coefficient = 0.5, 0.01
g = torch.Generator().manual_seed(7)
x = torch.randn(n, d, generator=g)
params = {
    "w_enc": torch.randn(latents, d, generator=g) / d**0.5,
    "b_enc": torch.randn(latents, generator=g) * 0.1,
    "w_dec": torch.randn(latents, d, generator=g) / d**0.5,
    "b_dec": torch.randn(d, generator=g) * 0.1,
    # Thresholds near the pre-activations' scale, so that many fall inside the kernel.
    "threshold": torch.rand(latents, generator=g) * 0.6,
}
for p in params.values():
    p.requires_grad_(True)

z = (x - params["b_dec"]) @ params["w_enc"].T + params["b_enc"]
acts = JumpReLU.apply(z, params["threshold"], bandwidth, False)
recon = acts @ params["w_dec"] + params["b_dec"]
fvu = (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
l0 = Step.apply(z, params["threshold"], bandwidth, False).sum(-1).mean()
loss = fvu + l0_coefficient * l0
loss.backward()

inside = ((z - params["threshold"]).abs() < bandwidth / 2).sum().item()
assert inside > 20, f"only {inside} pre-activations inside the kernel"
out = {"x": x, "fvu": fvu.reshape(1), "l0": l0.reshape(1), "loss": loss.reshape(1)}
out["settings"] = torch.tensor([bandwidth, l0_coefficient])
for name, p in params.items():
    out[name] = p.detach()
    out[f"{name}.grad"] = p.grad
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[1])
print(f"{inside} of {n * latents} pre-activations inside the kernel; loss {loss.item():.6f}")
