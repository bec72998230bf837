#!/usr/bin/env bash
# GPU figures for the GPU issue, in one run on a machine with an NVIDIA GPU and PyTorch:
# topk-sae on burn-wgpu (training step and corpus encoding) and the PyTorch recipe with
# --device cuda, at (1536, 3072, 32, 1024) and (1536, 12288, 64, 1024), on the same generated data.
#
# Two halves, because the GPU machine has no Rust toolchain and no registry:
#   scripts/gpu_bench.sh build        # here: release build of the train example with wgpu, into .gpu/
#   scripts/gpu_bench.sh run [STEPS]  # there: generate data, time both, print the table
#
# With the `device` tool (see its README): carry `.gpu` (and `.gl` with the Vulkan loader
# packages), and run `for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; scripts/gpu_bench.sh run`.
# The first wgpu step of each size includes shader compilation, autotuning and our kernels'
# first-use checks: the script reports the median step and, separately, the first step's time.
# topk-sae runs three times per size: with both GPU kernels (the default), with
# TOPK_SAE_DEVICE_TOPK=0 (pre-activations read back and selected on the host) and with
# TOPK_SAE_DEVICE_SPARSE=0 (burn's scatter-add gradient and gather decode instead of the
# grouped-sum kernel), so one run says what each kernel is worth.
#
# Status: written without a GPU (this task was not lent one). Checked here (2026-11-27): the build
# half (6 min, 7.5 MB compressed) and a dry run of the run half on lavapipe with PyTorch on the CPU
# (the command in the overrides' comment below, about a minute; last with the three variants and
# the kernels column); the run half has not run on a GPU yet.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
if [ "$mode" = build ]; then
  cargo build --release --features wgpu --example train
  mkdir -p .gpu
  rm -f .gpu/train .gpu/train.xz
  # Stripped and compressed: 57 MB becomes about 8 MB, well inside the device tool's 64 MiB.
  strip -o .gpu/train target/release/examples/train
  xz -T0 -6 .gpu/train
  # The figures name the code they measured.
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples Cargo.toml || echo +changes)" >.gpu/commit
  echo "built .gpu/train.xz ($(du -h .gpu/train.xz | cut -f1)); carry .gpu"
  exit 0
fi
steps=${2:-50}
py=${PYTHON:-python3}
if [ ! -x .gpu/train ]; then
  # Python's lzma, in case the machine has no xz.
  "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    .gpu/train.xz .gpu/train
  chmod +x .gpu/train
fi
out=${OUT:-$(mktemp -d)}
echo "topk-sae binary built from $(cat .gpu/commit 2>/dev/null || echo 'an unrecorded commit')"
# Overridable for a dry run of the plumbing without a GPU, e.g.
# ROWS=4096 D_IN=64 SIZES="8 256 16" BATCH=256 TORCH_DEVICE=cpu scripts/gpu_bench.sh run 3
rows=${ROWS:-65536}
d_in=${D_IN:-1536}
sizes=${SIZES:-"32 3072 64;64 12288 128"}
batch=${BATCH:-1024}
torch_device=${TORCH_DEVICE:-cuda}
data=$(mktemp -d)
"$py" - "$data/x.npy" "$rows" "$d_in" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
n, d, m = int(sys.argv[2]), int(sys.argv[3]), 4096
dirs = rng.standard_normal((m, d), dtype=np.float32)
dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
idx = rng.integers(0, m, (n, 8))
coef = rng.uniform(0.2, 1, (n, 8)).astype(np.float32)
x = np.einsum("nk,nkd->nd", coef, dirs[idx]) + 0.01 * rng.standard_normal((n, d), dtype=np.float32)
np.save(sys.argv[1], (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
PY
tags=()
IFS=';' read -ra size_list <<<"$sizes"
for size in "${size_list[@]}"; do
  set -- $size
  tag="k$1_dsae$2"
  tags+=("$tag")
  # Both kernels (the default), then the top-k on the host, then burn's scatter-add gradient
  # and gather decode instead of the grouped-sum kernel.
  for variant in rust rust-host-topk rust-burn-scatter; do
    case $variant in
      rust) vars=() ;;
      rust-host-topk) vars=(TOPK_SAE_DEVICE_TOPK=0) ;;
      rust-burn-scatter) vars=(TOPK_SAE_DEVICE_SPARSE=0) ;;
    esac
    env "${vars[@]}" .gpu/train --backend wgpu --quiet --data "$data/x.npy" --k "$1" \
      --d-sae "$2" --k-aux "$3" --batch "$batch" --max-steps "$steps" \
      --json "$out/${variant}_$tag.json" | tee "$out/${variant}_$tag.txt"
  done
  "$py" scripts/torch_recipe.py --device "$torch_device" --data "$data/x.npy" --k "$1" \
    --d-sae "$2" --k-aux "$3" --batch "$batch" --max-steps "$steps" \
    --json "$out/torch_$tag.json" >/dev/null
done
"$py" - "$out" "${tags[@]}" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'size':16} {'side':17} {'ms/step':>9} {'first step ms':>14} {'encode s':>9} {'NMSE':>8}  kernels")
for tag in sys.argv[2:]:
    for side in ("rust", "rust-host-topk", "rust-burn-scatter", "torch"):
        j = json.load(open(f"{out}/{side}_{tag}.json"))
        first = j.get("first_step_ms", float("nan"))
        kernels = ",".join(n for n, st in j.get("gpu_kernels", {}).items() if st == "runs") or "-"
        print(f"{tag:16} {side:17} {j['ms_per_step_median']:9.2f} {first:14.1f} {j['encode_seconds']:9.3f} {j['nmse']:8.4f}  {kernels}")
PY
rm -rf "$data"
