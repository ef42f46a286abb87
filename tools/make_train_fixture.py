"""Writes sae-train/tests/fixtures/sparsify_train/reference.safetensors: six training steps of
EleutherAI sparsify's own SparseCoder (TopK SAE, ReLU + encoder bias + unit-norm decoder) with
torch.optim.Adam, following sparsify 1.3.3's Trainer.fit step by step, for the Rust parity test.

Usage: SPARSIFY_DISABLE_TRITON=1 /work/venv-ref/bin/python tools/make_train_fixture.py
(needs torch, safetensors, eai-sparsify 1.3.3; CPU only, float32; deterministic).

Per step s (x_s = x[s], N = 48 tokens), as in Trainer.fit with loss_fn="fvu", grad_acc_steps =
micro_acc_steps = 1, no excluded tokens, no LR scheduler (constant lr):
  1. s == 0: b_dec = x_s.mean(0)
  2. set_decoder_norm_to_unit_norm()
  3. dead_mask = num_tokens_since_fired > dead_feature_threshold   (a bool tensor every step,
     because auxk_alpha > 0; sparsify skips AuxK inside forward when it has no True entry)
  4. out = sae(x=x_s, y=x_s, dead_mask=dead_mask, total_variance=sum((x_s - x_s.mean(0))^2))
     did_fire[out.latent_indices.flatten()] = True
  5. loss = fvu + auxk_alpha * auxk_loss + multi_topk_fvu / 8; loss.backward()
  6. remove_gradient_parallel_to_decoder_directions(); adam.step(); adam.zero_grad()
  7. counts += N; counts[did_fire] = 0
Stores float32 tensors; the JSON string under metadata key "config" lists every setting.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import importlib.metadata as md

import torch
from safetensors.torch import save_file
from sparsify import SparseCoder, SparseCoderConfig
from sparsify import utils as sparsify_utils

OUT = Path(__file__).resolve().parent.parent / "sae-train/tests/fixtures/sparsify_train/reference.safetensors"

SEED = 0
D_IN = 16
NUM_LATENTS = 64
K = 4
STEPS = 6
N = 48  # tokens per step (batch)
LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
AUXK_ALPHA = 1 / 32
DEAD_FEATURE_THRESHOLD = 60  # tokens
HEAVY_ROWS = [(0, 5), (1, 17), (3, 40), (5, 2)]  # (step, token) rows scaled by HEAVY_SCALE
HEAVY_SCALE = 6.0

assert sparsify_utils.decoder_impl is sparsify_utils.eager_decode, "set SPARSIFY_DISABLE_TRITON=1"
torch.set_num_threads(1)  # bitwise-reproducible CPU reductions

# ---- model (the RNG draws of nn.Linear init come first, then the data) ----
torch.manual_seed(SEED)
cfg = SparseCoderConfig(num_latents=NUM_LATENTS, k=K, multi_topk=False, normalize_decoder=True)
sae = SparseCoder(D_IN, cfg, device="cpu", dtype=torch.float32)
tensors = {
    "init.encoder.weight": sae.encoder.weight.detach().clone(),
    "init.encoder.bias": sae.encoder.bias.detach().clone(),
    "init.W_dec": sae.W_dec.detach().clone(),
    "init.b_dec": sae.b_dec.detach().clone(),
}

# ---- data: anisotropic mixing + constant offset + a few heavy rows ----
mix = torch.randn(D_IN, D_IN) * torch.logspace(0, -1.5, D_IN)[:, None]  # decaying row scales
offset = 3.0 * torch.randn(D_IN)
x = torch.randn(STEPS, N, D_IN) @ mix + offset
for s, t in HEAVY_ROWS:
    x[s, t] *= HEAVY_SCALE
x = x.contiguous()
tensors["x"] = x.clone()

# ---- training, mirroring sparsify.trainer.Trainer.fit ----
adam = torch.optim.Adam(sae.parameters(), lr=LR, betas=BETAS, eps=EPS)
counts = torch.zeros(NUM_LATENTS, dtype=torch.long)  # Trainer.num_tokens_since_fired
did_fire = torch.zeros(NUM_LATENTS, dtype=torch.bool)
rec = {k: [] for k in ["loss", "fvu", "auxk", "dead_count", "dead_mask", "did_fire", "min_top_act"]}
aux_k_used = []
for s in range(STEPS):
    xs = x[s]
    if s == 0:
        sae.b_dec.data = xs.mean(0).to(sae.dtype)
    sae.set_decoder_norm_to_unit_norm()
    dead_mask = counts > DEAD_FEATURE_THRESHOLD
    total_variance = (xs - xs.mean(0)).pow(2).sum()
    out = sae(x=xs, y=xs, dead_mask=dead_mask, total_variance=total_variance)
    did_fire[out.latent_indices.flatten()] = True
    loss = out.fvu + AUXK_ALPHA * out.auxk_loss + out.multi_topk_fvu / 8
    loss.div(1).backward()  # acc_steps = 1
    sae.remove_gradient_parallel_to_decoder_directions()
    adam.step()
    adam.zero_grad()
    with torch.no_grad():
        counts += N
        counts[did_fire] = 0
        rec["did_fire"].append(did_fire.float())
        did_fire = torch.zeros_like(did_fire)

    num_dead = int(dead_mask.sum())
    aux_k_used.append(min(D_IN // 2, num_dead))
    rec["loss"].append(loss.item())
    rec["fvu"].append(out.fvu.item())
    rec["auxk"].append(out.auxk_loss.item())
    rec["dead_count"].append(float(num_dead))
    rec["dead_mask"].append(dead_mask.float())
    rec["min_top_act"].append(out.latent_acts.min().item())

# Every selected latent must be strictly positive: sparsify's did_fire marks all selected indices
# even at activation 0, and topk among tied zeros is implementation-defined, so zero ties would
# make the fixture ambiguous.
assert min(rec["min_top_act"]) > 0, rec["min_top_act"]
auxk_steps = [s for s in range(STEPS) if rec["auxk"][s] != 0.0]
assert auxk_steps, "AuxK never turned on; adjust the data or the threshold"

sae.set_decoder_norm_to_unit_norm()  # what the next forward would see
for name, t in [("loss", rec["loss"]), ("fvu", rec["fvu"]), ("auxk", rec["auxk"]), ("dead_count", rec["dead_count"])]:
    tensors[name] = torch.tensor(t, dtype=torch.float32)
tensors["dead_mask"] = torch.stack(rec["dead_mask"])
tensors["did_fire"] = torch.stack(rec["did_fire"])
tensors["final.encoder.weight"] = sae.encoder.weight.detach().clone()
tensors["final.encoder.bias"] = sae.encoder.bias.detach().clone()
tensors["final.W_dec"] = sae.W_dec.detach().clone()
tensors["final.b_dec"] = sae.b_dec.detach().clone()
tensors["final.tokens_since_fired"] = counts.float()
tensors = {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}

config = {
    "generator": "tools/make_train_fixture.py",
    "versions": {
        "eai-sparsify": md.version("eai-sparsify"),
        "torch": torch.__version__,
        "safetensors": md.version("safetensors"),
    },
    "device": "cpu",
    "dtype": "float32",
    "torch_num_threads": 1,
    "seed": SEED,
    "seed_note": "torch.manual_seed(seed), then SparseCoder(...), then the data draws (mix, offset, x)",
    "d_in": D_IN,
    "sae": {
        "num_latents": NUM_LATENTS,
        "k": K,
        "activation": cfg.activation,
        "multi_topk": cfg.multi_topk,
        "normalize_decoder": cfg.normalize_decoder,
        "skip_connection": cfg.skip_connection,
        "transcode": cfg.transcode,
        "encoder": "pre_acts = relu(x_centered @ W_enc^T + b_enc), x_centered = x - b_dec; "
        "top-k of pre_acts (topk, sorted=False)",
        "decoder": "sae_out = sum_j acts_j * W_dec[idx_j] + b_dec (eager embedding_bag)",
        "unit_norm": "W_dec /= (||W_dec row||_2 + finfo(float32).eps)",
        "init": "encoder = nn.Linear default init, encoder.bias zeroed, W_dec = unit-norm rows of "
        "encoder.weight clone, b_dec = 0 (saved as init.*)",
    },
    "steps": STEPS,
    "tokens_per_step": N,
    "optimizer": {
        "name": "torch.optim.Adam",
        "lr": LR,
        "betas": list(BETAS),
        "eps": EPS,
        "weight_decay": 0.0,
        "amsgrad": False,
        "lr_schedule": "constant (no warmup scheduler, unlike Trainer's adam path)",
    },
    "auxk_alpha": AUXK_ALPHA,
    "dead_feature_threshold": DEAD_FEATURE_THRESHOLD,
    "dead_mask": "num_tokens_since_fired > dead_feature_threshold, computed before the forward "
    "and passed to forward every step (Trainer passes a tensor whenever auxk_alpha > 0)",
    "aux_k": "y.shape[-1] // 2 = d_in // 2 = %d, then k_aux = min(aux_k, num_dead), "
    "scale = min(num_dead / (d_in // 2), 1); auxk_loss = scale * ||e_hat - e.detach()||^2 / "
    "total_variance, e_hat = decode of top-k_aux dead pre_acts WITHOUT b_dec; AuxK is skipped "
    "(auxk = 0) when num_dead == 0" % (D_IN // 2),
    "aux_k_per_step": aux_k_used,
    "auxk_steps": auxk_steps,
    "auxk_gradient_note": "sparsify's FusedEncoder.backward ignores the gradient w.r.t. pre_acts, "
    "so AuxK's gradient reaches only W_dec (rows of the selected dead latents), never the "
    "encoder or b_dec; e is detached",
    "auxk_ties_note": "pre_acts are post-ReLU, so many dead latents sit at exactly 0 and the top-k_aux "
    "choice among those zeros is implementation-defined; they add nothing to e_hat and get a zero "
    "W_dec gradient, so only the positive dead activations matter",
    "fvu": "||y - sae_out||^2 / total_variance, total_variance = sum((y - y.mean(0))^2)",
    "loss": "fvu + auxk_alpha * auxk + multi_topk_fvu / 8 (multi_topk_fvu = 0 here)",
    "b_dec_init": "step 0 only, before set_decoder_norm_to_unit_norm: b_dec = x[0].mean(0)",
    "grad_projection": "W_dec.grad -= (sum(W_dec.grad * W_dec, dim=1)) [:, None] * W_dec, on the "
    "unit-norm W_dec of this step, before adam.step()",
    "counter_update": "after adam.step(): counts += N; counts[did_fire] = 0, did_fire = every "
    "index in out.latent_indices (all top-k, zero activations included; here every selected "
    "activation is > 0: min per step %s)" % [round(v, 6) for v in rec["min_top_act"]],
    "data": "mix = randn(16,16) * logspace(0,-1.5,16)[:,None]; offset = 3*randn(16); "
    "x = randn(6,48,16) @ mix + offset; rows %s (step, token) multiplied by %g" % (HEAVY_ROWS, HEAVY_SCALE),
    "final_W_dec_note": "final.W_dec is saved after one more set_decoder_norm_to_unit_norm() (the "
    "normalisation sparsify applies at the start of the next forward); the other final.* are the raw "
    "parameters after the 6th adam.step()",
    "tensors": {k: list(v.shape) for k, v in tensors.items()},
}

OUT.parent.mkdir(parents=True, exist_ok=True)
save_file(tensors, str(OUT), metadata={"config": json.dumps(config)})
print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
print("step        loss         fvu        auxk  dead  aux_k  min_top_act")
for s in range(STEPS):
    print(
        f"{s:4d} {rec['loss'][s]:11.8f} {rec['fvu'][s]:11.8f} {rec['auxk'][s]:11.8f} "
        f"{int(rec['dead_count'][s]):5d} {aux_k_used[s]:6d} {rec['min_top_act'][s]:12.6f}"
    )
print("auxk active at steps", auxk_steps, "; final tokens_since_fired:", counts.tolist())
