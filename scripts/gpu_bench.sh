#!/usr/bin/env bash
# GPU figures for the GPU issue, in one run on a machine with an NVIDIA GPU and PyTorch:
# topk-sae on burn-wgpu (training step and corpus encoding) and the PyTorch recipe with
# --device cuda, at (1536, 3072, 32, 1024) and (1536, 12288, 64, 1024), on the same generated data.
#
# Two halves, because the GPU machine has no Rust toolchain and no registry:
#   scripts/gpu_bench.sh build        # here: release build of the train example with wgpu, into .gpu/
#   scripts/gpu_bench.sh run [STEPS]  # there: generate data, time both, print the table
#   scripts/gpu_bench.sh perf-bundle  # here: this machine's perf and its libraries, into .perf/
#
# On the GPU machine: copy `.gpu` (and `.gl`, the Vulkan loader's Debian packages, where the
# machine has no loader), and run `for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig;
# scripts/gpu_bench.sh run`.
# The first wgpu step of each size includes shader compilation, autotuning and our kernels'
# first-use checks: the script reports the median step and, separately, the first step's time.
# topk-sae runs three times per size: with both GPU kernels (the default), with
# TOPK_SAE_DEVICE_TOPK=0 (pre-activations read back and selected on the host) and with
# TOPK_SAE_DEVICE_SPARSE=0 (burn's scatter-add gradient and gather decode instead of the
# grouped-sum kernel), so one run says what each kernel is worth. VARIANTS may also name
# rust-burn-update (TOPK_SAE_DEVICE_UPDATE=0: burn's operations for the optimiser's update),
# rust-device-loss (TOPK_SAE_DEVICE_LOSS=1: our opt-in kernels for the loss's batch statistics),
# rust-step-read (TOPK_SAE_DEVICE_STEP_READ=1: each queued step's read-back issued at once),
# rust-lazy-read (TOPK_SAE_DEVICE_READ=0: corpus chunks read back one after another, as before),
# rust-tasks8 and rust-tasks128 (CUBECL_WGPU_MAX_TASKS: kernel launches per submission to the
# GPU, 32 by default; at 128, cubecl also waits for the device once a step, after 64 uniform
# writes: docs/benchmarks.md), rust-radix-topk
# (TOPK_SAE_TOPK_FILTER=0: our top-k kernel runs its radix select on every row, whatever its
# chunk-maxima filter leaves), rust-perf (the host's CPU time by thread, library and function
# over 1,000 steps, sampled by perf: carry `.perf`, made by `scripts/gpu_bench.sh perf-bundle`),
# rust-profile (cubecl's profile log: each kernel timed alone, summed per training step over
# steps 11 to STEPS by scripts/kernel_times.py into kernels_SIZE.txt; its own step times are not
# comparable) and
# rust-again (the default once more, with a warm autotune cache). The comparison with PyTorch runs
# first. Each run has a time limit (RUN_LIMIT_S, 150 s) and none starts after DEADLINE_S (500 s):
# a hang on some driver (seen with burn's matmul on OpenGL, docs/decisions.md) costs that run
# only, and the table is printed anyway. Logs and JSON land in $OUT, the card's name on stdout.
# Give the whole run a limit of about 570 s.
#
# Last run on an NVIDIA H200 on 2026-11-28 (docs/benchmarks.md has the
# figures; a full run took 155 s). burn-wgpu's autotune keeps its results on disk: a second run on
# the same machine starts warm, which changed the small size's median step from 12-13 to 5.7 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
if [ "$mode" = build ]; then
  cargo build --release --features wgpu --example train
  mkdir -p .gpu
  rm -f .gpu/train .gpu/train.xz
  # Stripped and compressed: 57 MB becomes about 8 MB, quick to copy to the GPU machine.
  strip -o .gpu/train target/release/examples/train
  # The same binary with its symbols, kept here (not carried), for reading a `rust-perf` profile
  # from the device: the stripped copy has the same build id.
  mkdir -p target/gpu
  cp target/release/examples/train target/gpu/train.unstripped
  xz -T0 -6 .gpu/train
  # The figures name the code they measured.
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples Cargo.toml || echo +changes)" >.gpu/commit
  echo "built .gpu/train.xz ($(du -h .gpu/train.xz | cut -f1)); carry .gpu"
  exit 0
fi
if [ "$mode" = perf-bundle ]; then
  # This machine's `perf` with the shared libraries it loads (glibc's own left out: the device
  # machine has its own), for the `rust-perf` variant on a machine without perf. Carry `.perf`.
  tmp=$(mktemp -d)
  mkdir -p "$tmp/lib" .perf
  cp "$(command -v perf)" "$tmp/perf"
  ldd "$tmp/perf" | awk '$3 ~ /^\// {print $3}' | grep -vE '/(libc|libm|libpthread|libdl|librt)\.so' |
    while read -r lib; do cp -L "$lib" "$tmp/lib/"; done
  tar -C "$tmp" -cJf .perf/perf.tar.xz .
  rm -rf "$tmp"
  echo "built .perf/perf.tar.xz ($(du -h .perf/perf.tar.xz | cut -f1)); carry .perf"
  exit 0
fi
steps=${2:-50}
py=${PYTHON:-python3}
# Unpacked outside .gpu, so that a dry run here leaves the carried folder small, and at a fixed
# path, so that a `rust-perf` profile brought back can be read against the build's symbols.
mkdir -p /tmp/topk-sae-bench
bin=/tmp/topk-sae-bench/train
# Python's lzma, in case the machine has no xz.
"$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
  .gpu/train.xz "$bin"
chmod +x "$bin"
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
echo "topk-sae binary built from $(cat .gpu/commit 2>/dev/null || echo 'an unrecorded commit')"
# The card the figures are for (nothing on a machine without an NVIDIA driver).
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
# Where the loader finds no NVIDIA Vulkan driver, point it at the one the driver mount carries.
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ] &&
  ! ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json >/dev/null 2>&1; then
  export VK_DRIVER_FILES=$icd
  echo "VK_DRIVER_FILES=$icd"
fi
# Overridable for a dry run of the plumbing without a GPU, e.g.
# ROWS=4096 D_IN=64 SIZES="8 256 16" BATCH=256 TORCH_DEVICE=cpu scripts/gpu_bench.sh run 3
rows=${ROWS:-65536}
d_in=${D_IN:-1536}
sizes=${SIZES:-"32 3072 64;64 12288 128"}
batch=${BATCH:-1024}
torch_device=${TORCH_DEVICE:-cuda}
# Latents unused for more than this many samples are dead and feed the AuxK term. The recipe's
# 272,384 would leave AuxK off for the first 266 steps, so a short run would time a step without
# it. With 0, every latent that does not fire in a batch counts as dead, so AuxK runs in every step
# that leaves any latent unused (the `aux` column counts them), on both sides: the step of a long
# run with dead latents, which costs about the same however many there are beyond k_aux.
dead_threshold=${DEAD_THRESHOLD:-0}
# One call on the device machine may run 10 minutes: every run gets its own time limit, none starts
# past the deadline, and the table is printed whatever happened (a driver on which a kernel hangs
# costs one run, not the figures of the others).
deadline=$((SECONDS + ${DEADLINE_S:-500}))
run_limit=${RUN_LIMIT_S:-150}
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
# `timed NAME CMD...`: runs CMD within the run limit and the deadline; its output goes to
# $out/NAME.txt, and a failure or timeout is noted there and on stdout instead of stopping the script.
timed() {
  local name=$1 start=$SECONDS left=$((deadline - SECONDS))
  shift
  if [ "$left" -le 10 ]; then
    echo "$name: skipped (deadline)" | tee "$out/$name.txt"
    return 0
  fi
  local limit=$((left < run_limit ? left : run_limit)) rc=0
  timeout -k 5 "$limit" "$@" >"$out/$name.txt" 2>&1 || rc=$?
  if [ "$rc" -eq 124 ]; then
    echo "$name: stopped at its ${limit} s limit" | tee -a "$out/$name.txt"
  elif [ "$rc" -ne 0 ]; then
    echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/$name.txt"
  fi
}
tags=()
IFS=';' read -ra size_list <<<"$sizes"
for size in "${size_list[@]}"; do
  read -r k d_sae k_aux <<<"$size"
  tags+=("k${k}_dsae${d_sae}")
done
# The comparison first (both kernels, and PyTorch), at both sizes; then what each kernel is worth:
# the top-k on the host, and burn's scatter-add gradient and gather decode instead of the
# grouped-sum kernel.
# VARIANTS picks some of them (e.g. VARIANTS=rust for a quick look after a change); `rust-again`
# is `rust` once more, in a process that finds the autotune cache the first one left (warm).
variants=${VARIANTS:-rust torch rust-host-topk rust-burn-scatter}
# rust-perf: the host's CPU time by thread, library and function, sampled by perf (the device
# machine has none: `scripts/gpu_bench.sh perf-bundle` here packs this machine's into .perf). The
# profile, brought back, can be read here against the build's symbols: `perf report -i
# perf_TAG.data --symfs DIR --sort comm,dso,sym`, with target/gpu/train.unstripped copied to
# DIR/tmp/topk-sae-bench/train (where the binary runs).
perf_cmd=()
if [[ " $variants " == *" rust-perf "* ]]; then
  if [ -f .perf/perf.tar.xz ]; then
    perf_dir=$(mktemp -d)
    "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .perf/perf.tar.xz "$perf_dir"
    # The machine's own copy of a library wins (it matches the machine's glibc, which may be
    # older than this one's 2.36); the bundle fills in the rest (libperl, libpython3.11, ...).
    for lib in "$perf_dir"/lib/*; do
      if ldconfig -p 2>/dev/null | grep -q "^[[:space:]]$(basename "$lib") "; then rm -f "$lib"; fi
    done
    perf_cmd=(env LD_LIBRARY_PATH="$perf_dir/lib" "$perf_dir/perf")
  elif command -v perf >/dev/null; then
    perf_cmd=(perf)
  fi
  if [ ${#perf_cmd[@]} -gt 0 ] && ! "${perf_cmd[@]}" --version; then
    echo "rust-perf: perf does not start here; its libraries:"
    env LD_LIBRARY_PATH="$perf_dir/lib" ldd "$perf_dir/perf" 2>&1 | grep -i "not found\|version" || true
    perf_cmd=()
  fi
fi
for variant in $variants; do
  for i in "${!size_list[@]}"; do
    read -r k d_sae k_aux <<<"${size_list[$i]}"
    tag=${tags[$i]}
    # The profile runs PERF_STEPS steps (1,000; as many epochs as they take), so that the
    # settled steps outweigh the start (shaders, autotuning) and the encoding timed after them.
    run_steps=$steps
    [ "$variant" = rust-perf ] && run_steps=${PERF_STEPS:-1000}
    flags=(--data "$data/x.npy" --k "$k" --d-sae "$d_sae" --k-aux "$k_aux" --batch "$batch"
      --max-steps "$run_steps" --dead-threshold "$dead_threshold" --json "$out/${variant}_$tag.json")
    case $variant in
      rust | rust-again) cmd=(env) ;;
      rust-host-topk) cmd=(env TOPK_SAE_DEVICE_TOPK=0) ;;
      rust-burn-scatter) cmd=(env TOPK_SAE_DEVICE_SPARSE=0) ;;
      rust-burn-update) cmd=(env TOPK_SAE_DEVICE_UPDATE=0) ;;
      rust-device-loss) cmd=(env TOPK_SAE_DEVICE_LOSS=1) ;;
      rust-step-read) cmd=(env TOPK_SAE_DEVICE_STEP_READ=1) ;;
      rust-lazy-read) cmd=(env TOPK_SAE_DEVICE_READ=0) ;;
      rust-tasks8) cmd=(env CUBECL_WGPU_MAX_TASKS=8) ;;
      rust-tasks128) cmd=(env CUBECL_WGPU_MAX_TASKS=128) ;;
      rust-radix-topk) cmd=(env TOPK_SAE_TOPK_FILTER=0) ;;
      rust-profile) cmd=(env CUBECL_DEBUG_LOG="$out/profile_$tag.log" CUBECL_DEBUG_OPTION=profile) ;;
      # The bundled libraries are perf's only: the binary and the GPU driver get the machine's.
      rust-perf) cmd=("${perf_cmd[@]}" record -e cpu-clock -F 499 -o "$out/perf_$tag.data" -- env -u LD_LIBRARY_PATH) ;;
      torch) cmd=("$py" scripts/torch_recipe.py --device "$torch_device") ;;
      *) echo "unknown variant: $variant" >&2; exit 1 ;;
    esac
    if [ "$variant" = rust-perf ] && [ ${#perf_cmd[@]} -eq 0 ]; then
      echo "${variant}_$tag: skipped (no perf, and no .perf/perf.tar.xz)" | tee "$out/${variant}_$tag.txt"
      continue
    fi
    [ "$variant" = torch ] || cmd+=("$bin" --backend wgpu --quiet)
    timed "${variant}_$tag" "${cmd[@]}" "${flags[@]}"
    if [ "$variant" = rust-perf ] && [ -s "$out/perf_$tag.data" ]; then
      # Here the binary's own functions show as addresses (it is stripped); the driver's
      # libraries keep their exported names.
      "${perf_cmd[@]}" report -i "$out/perf_$tag.data" --sort comm,dso --stdio -q \
        >"$out/perf_threads_$tag.txt" 2>&1 || true
      "${perf_cmd[@]}" report -i "$out/perf_$tag.data" --sort comm,dso,sym --stdio -q 2>&1 |
        head -150 >"$out/perf_syms_$tag.txt" || true
      echo "host CPU by thread and library, $tag:"
      head -25 "$out/perf_threads_$tag.txt"
    fi
    if [ "$variant" = rust-profile ]; then
      # The optimiser's update kernel runs once a step, after a first-use check: its runs 11 to
      # STEPS + 1 bound steps 11 to STEPS (the first ten autotune burn's matmul).
      "$py" scripts/kernel_times.py "$out/profile_$tag.log" --between AdamRowsKernel 11 $((steps + 1)) \
        >"$out/kernels_$tag.txt" 2>&1 || true
      echo "kernels alone, ms per step, $tag:"
      head -16 "$out/kernels_$tag.txt"
      tail -1 "$out/kernels_$tag.txt"
    fi
  done
done
VARIANTS=$variants "$py" - "$out" "${tags[@]}" <<'PY'
import json, os, sys
out = sys.argv[1]
sides = list(dict.fromkeys(os.environ["VARIANTS"].split()))
# encode s: the corpus encoded in chunks of 4,096 rows, best of 3; host s: the same from host
# memory to host memory (topk-sae always works that way; PyTorch's first figure has the data on
# the GPU already); aux: steps with a live AuxK term, of all; wait ms: of a step, the median time
# the host waited for its results (topk-sae only: the device's work not overlapped with the host's);
# late ms: the median of the second half of the steps (topk-sae only: a process still autotuning
# shows it in the first half).
print(f"{'size':16} {'side':17} {'ms/step':>9} {'late ms':>8} {'wait ms':>8} {'first step ms':>14} {'encode s':>9} {'host s':>8} {'NMSE':>8} {'aux':>7}  kernels")
for tag in sys.argv[2:]:
    for side in sides:
        try:
            j = json.load(open(f"{out}/{side}_{tag}.json"))
        except (OSError, ValueError):
            print(f"{tag:16} {side:17} no result: see {side}_{tag}.txt")
            continue
        first = j.get("first_step_ms", float("nan"))
        kernels = ",".join(n for n, st in j.get("gpu_kernels", {}).items() if st == "runs") or "-"
        host = j.get("encode_host_seconds", j["encode_seconds"])
        aux = f"{j.get('aux_steps', '?')}/{j.get('steps', '?')}"
        wait = j.get("device_wait_ms_median", float("nan"))
        steps_ms = j.get("step_ms", [])
        late_half = sorted(steps_ms[len(steps_ms) // 2:])
        late = late_half[len(late_half) // 2] if late_half else float("nan")
        print(f"{tag:16} {side:17} {j['ms_per_step_median']:9.2f} {late:8.2f} {wait:8.2f} {first:14.1f} {j['encode_seconds']:9.3f} {host:8.3f} {j['nmse']:8.4f} {aux:>7}  {kernels}")
PY
rm -rf "$data" "$(dirname "$bin")" ${perf_dir:+"$perf_dir"}
