#!/usr/bin/env python3
"""Writes tiny checkpoint fixtures in every foreign layout the crate reads, with PyTorch's own
reconstruction of a fixed input batch, into tests/fixtures/.

Run by hand (not by CI), from the repository root, with torch, numpy and safetensors installed:

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install torch numpy safetensors
    /tmp/fx/bin/python scripts/make_fixtures.py

d_in 16, d_sae 64, k 4. The weights are random but seeded; b_enc and b_dec are non-zero so every
term of the forward pass matters.
"""
import json
import os
import pickle
import zipfile

import numpy as np
import torch
from safetensors.torch import save_file

D_IN, D_SAE, K, K_AUX, BATCH = 16, 64, 4, 8, 8
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

g = torch.Generator().manual_seed(1234)
w_dec = torch.randn(D_SAE, D_IN, generator=g)
w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
w_enc = (w_dec.T + 0.1 * torch.randn(D_IN, D_SAE, generator=g)).contiguous()  # untied
b_enc = 0.05 * torch.randn(D_SAE, generator=g)
b_dec = 0.1 * torch.randn(D_IN, generator=g)
x = torch.randn(BATCH, D_IN, generator=g)


def reference(x, w_enc, b_enc, w_dec, b_dec, k):
    """SPEC section 1, in PyTorch: top-k on pre-activations, ReLU after, decode with b_dec."""
    pre = (x - b_dec) @ w_enc + b_enc
    top = torch.topk(pre, k, dim=-1)
    z = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    return z @ w_dec + b_dec


recon = reference(x, w_enc, b_enc, w_dec, b_dec, K)
os.makedirs(OUT, exist_ok=True)
np.save(os.path.join(OUT, "input.npy"), x.numpy().astype(np.float32))
np.save(os.path.join(OUT, "recon.npy"), recon.numpy().astype(np.float32))

# saerch: a plain state dict; encoder/decoder are nn.Linear weights ([out, in]).
saerch = {
    "pre_bias": b_dec.clone(),
    "latent_bias": b_enc.clone(),
    "encoder.weight": w_enc.T.contiguous(),
    "decoder.weight": w_dec.T.contiguous(),
}
torch.save(saerch, os.path.join(OUT, f"toy_{K}_{D_SAE}_{K_AUX}.pth"))

# OpenAI sparse_autoencoder: saerch's names, running-stat buffers, activation state.
openai = dict(saerch)
openai["stats_last_nonzero"] = torch.zeros(D_SAE, dtype=torch.long)
openai["latents_activation_frequency"] = torch.ones(D_SAE) / D_SAE
openai["latents_mean_square"] = torch.zeros(D_SAE)
openai["activation"] = "TopK"
openai["activation_state_dict"] = {"k": K}
torch.save(openai, os.path.join(OUT, "openai_ae.pt"))

# SAELens v6 folder.
saelens = os.path.join(OUT, "saelens")
os.makedirs(saelens, exist_ok=True)
save_file(
    {"W_enc": w_enc.contiguous(), "W_dec": w_dec.contiguous(), "b_enc": b_enc, "b_dec": b_dec},
    os.path.join(saelens, "sae_weights.safetensors"),
)
with open(os.path.join(saelens, "cfg.json"), "w") as f:
    json.dump(
        {
            "architecture": "topk",
            "d_in": D_IN,
            "d_sae": D_SAE,
            "k": K,
            "activation_fn_kwargs": {"k": K},
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "dtype": "float32",
            "device": "cpu",
            "metadata": {"model_name": "fixture"},
        },
        f,
        indent=2,
    )

# EleutherAI sparsify folder.
sparsify = os.path.join(OUT, "sparsify")
os.makedirs(sparsify, exist_ok=True)
save_file(
    {"encoder.weight": w_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": w_dec.contiguous(), "b_dec": b_dec},
    os.path.join(sparsify, "sae.safetensors"),
)
with open(os.path.join(sparsify, "cfg.json"), "w") as f:
    json.dump({"expansion_factor": D_SAE // D_IN, "normalize_decoder": True, "num_latents": D_SAE, "k": K,
               "multi_topk": False, "skip_connection": False, "d_in": D_IN}, f, indent=2)


# A .pth whose pickle calls a function when unpickled: loading it must fail, never execute.
class Evil:
    def __reduce__(self):
        return (os.system, ("echo this-must-never-run > /tmp/topk_sae_pwned",))


torch.save({"pre_bias": Evil()}, os.path.join(OUT, "malicious_4_64_8.pth"))

# Check the fixtures against the reference once more, through safetensors/torch readers.
from safetensors.torch import load_file  # noqa: E402

lens = load_file(os.path.join(saelens, "sae_weights.safetensors"))
again = reference(x, lens["W_enc"], lens["b_enc"], lens["W_dec"], lens["b_dec"], K)
assert torch.allclose(again, recon)
total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
print(f"fixtures written to {os.path.abspath(OUT)}: {total} bytes")
