#!/usr/bin/env python3
"""The reference top-k SAE recipe (SPEC sections 1-4) in plain PyTorch, written from the spec for
side-by-side timing against topk-sae. Not part of CI.

    python3 scripts/torch_recipe.py --data emb.npy --k 32 --d-sae 3072 --k-aux 64 --batch 1024 \
        --max-steps 110 --threads 2 --device cpu --json torch.json

Prints one JSON object: ms_per_step_median, steps, nmse (dataset, around the mean), log_fd,
act_mean, dead_frac, train_seconds, first_step_ms, aux_steps (steps with a live AuxK term),
encode_seconds (data already on the device) and
encode_host_seconds (from host memory to host memory).
"""
import argparse
import json
import math
import statistics
import time

import numpy as np
import torch


def nmse(a, x):
    return ((a - x) ** 2).mean() / ((x - x.mean(0, keepdim=True)) ** 2).mean()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d-sae", type=int, default=3072)
    p.add_argument("--k-aux", type=int, default=None)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dead-threshold", type=int, default=272_384)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    x_all = torch.from_numpy(np.load(a.data).astype(np.float32, copy=False)).to(dev)
    n, d_in = x_all.shape
    d_sae, k = a.d_sae, a.k
    k_aux = a.k_aux or 2 * k

    # SPEC section 1 initialisation.
    b_dec = x_all[:10_000].median(dim=0).values.clone()  # lower middle for even counts, like torch
    bound = math.sqrt(6.0 / (d_in + d_sae))
    w_dec = torch.empty(d_sae, d_in, device=dev).uniform_(-bound, bound)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    w_enc = w_dec.T.clone().contiguous()
    b_enc = torch.zeros(d_sae, device=dev)
    params = [p_.requires_grad_() for p_ in (w_enc, b_enc, w_dec, b_dec)]
    opt = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=dev)

    def encode(x):
        pre = (x - b_dec) @ w_enc + b_enc
        top = torch.topk(pre, k, dim=-1)
        return pre, top.indices, torch.relu(top.values)

    def decode(idx, vals, bias=True):
        z = torch.zeros(idx.shape[0], d_sae, device=dev).scatter(-1, idx, vals)
        out = z @ w_dec
        return out + b_dec if bias else out

    steps_per_epoch = math.ceil(n / a.batch)
    total = steps_per_epoch * a.epochs if a.max_steps is None else a.max_steps
    times, step, aux_steps = [], 0, 0
    g = torch.Generator(device="cpu").manual_seed(a.seed)
    started = time.perf_counter()
    while step < total:
        order = torch.randperm(n, generator=g).to(dev)
        for s in range(0, n, a.batch):
            if step >= total:
                break
            t0 = time.perf_counter()
            x = x_all[order[s:s + a.batch]]
            pre, idx, vals = encode(x)
            x_hat = decode(idx, vals)
            loss = nmse(x_hat, x)
            since_fired += x.shape[0]
            since_fired[idx.flatten()] = 0
            dead = since_fired > a.dead_threshold
            if dead.any():
                aux_steps += 1
                masked = pre.masked_fill(~dead, float("-inf"))
                ka = min(k_aux, int(dead.sum()))
                top = torch.topk(masked, ka, dim=-1)
                e_hat = decode(top.indices, torch.relu(top.values), bias=False)
                loss = loss + nmse(e_hat, (x - x_hat).detach()) / 32
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                w_dec.grad -= (w_dec.grad * w_dec).sum(1, keepdim=True) * w_dec
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                w_dec /= w_dec.norm(dim=1, keepdim=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
            step += 1
    train_seconds = time.perf_counter() - started

    def best_of_3(run):
        """Seconds of the fastest of three calls of `run`, device work included."""
        best = float("inf")
        with torch.no_grad():
            for _ in range(3):
                t0 = time.perf_counter()
                run()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
        return best

    # Corpus encoding, timed on its own: top-k indices and values of every row, batches of 4096.
    def encode_on_device():
        codes = [encode(x_all[s:s + 4096])[1:] for s in range(0, n, 4096)]
        return torch.cat([c[0] for c in codes]), torch.cat([c[1] for c in codes])

    # The same from host memory to host memory (each chunk uploaded, its codes read back), as
    # topk-sae's encode_corpus does: the like-for-like figure when the corpus is not on the GPU.
    x_host = x_all.cpu()

    def encode_host_to_host():
        return [
            tuple(c.cpu() for c in encode(x_host[s:s + 4096].to(dev))[1:])
            for s in range(0, n, 4096)
        ]

    encode_seconds = best_of_3(encode_on_device)
    encode_host_seconds = best_of_3(encode_host_to_host)

    # SPEC section 4 metrics over the whole data set.
    with torch.no_grad():
        sq_err, fired, act_sum = 0.0, torch.zeros(d_sae, device=dev), 0.0
        for s in range(0, n, 4096):
            x = x_all[s:s + 4096]
            _, idx, vals = encode(x)
            sq_err += float(((decode(idx, vals) - x) ** 2).sum())
            fired += torch.bincount(idx.flatten(), minlength=d_sae).float()
            act_sum += float(vals.sum())
        total_var = float(((x_all - x_all.mean(0)) ** 2).sum())
        density = fired / n
        out = {
            "steps": step,
            "ms_per_step_median": statistics.median(times),
            "first_step_ms": times[0],
            "aux_steps": aux_steps,
            "train_seconds": train_seconds,
            "encode_seconds": encode_seconds,
            "encode_host_seconds": encode_host_seconds,
            "nmse": sq_err / total_var,
            "log_fd": float(torch.log10(density + 1e-10).mean()),
            "act_mean": act_sum / (n * k),
            "dead_frac": float((fired == 0).float().mean()),
            "threads": torch.get_num_threads(),
            "device": str(dev),
            "torch": torch.__version__,
        }
    print(json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
