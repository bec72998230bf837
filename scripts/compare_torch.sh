#!/usr/bin/env bash
# Side-by-side: topk-sae's train example and scripts/torch_recipe.py on the same .npy, same steps,
# same thread count, in one run; prints ms/step, the ratio, both dataset NMSEs and peak RSS.
#
#   scripts/compare_torch.sh DATA.npy [K D_SAE K_AUX BATCH STEPS THREADS]
#
# Needs: a Python with torch and numpy (PYTHON, default python3), GNU time (/usr/bin/time,
# Debian package `time`), and a release build of the example (done here).
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 k=${2:-32} d_sae=${3:-3072} k_aux=${4:-64} batch=${5:-1024} steps=${6:-110} threads=${7:-$(nproc)}
py=${PYTHON:-python3}
out=$(mktemp -d)
cargo build -q --release --example train
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
/usr/bin/time -v target/release/examples/train --quiet --data "$data" --k "$k" --d-sae "$d_sae" \
  --k-aux "$k_aux" --batch "$batch" --max-steps "$steps" --json "$out/rust.json" >/dev/null 2>"$out/rust.time"
/usr/bin/time -v "$py" scripts/torch_recipe.py --data "$data" --k "$k" --d-sae "$d_sae" --k-aux "$k_aux" \
  --batch "$batch" --max-steps "$steps" --threads "$threads" --json "$out/torch.json" >/dev/null 2>"$out/torch.time"
"$py" - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
r, t = (json.load(open(f"{out}/{n}.json")) for n in ("rust", "torch"))
rss = {n: int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{out}/{n}.time").read()).group(1)) / 1024
       for n in ("rust", "torch")}
print(f"{'':10} {'ms/step':>9} {'encode s':>9} {'NMSE':>8} {'Log FD':>8} {'peak MiB':>9}")
for name, j, m in (("topk-sae", r, rss["rust"]), ("pytorch", t, rss["torch"])):
    print(f"{name:10} {j['ms_per_step_median']:9.1f} {j['encode_seconds']:9.2f} {j['nmse']:8.4f} {j['log_fd']:8.3f} {m:9.0f}")
print(f"speed-up (pytorch ms / topk-sae ms): {t['ms_per_step_median'] / r['ms_per_step_median']:.2f}x; "
      f"corpus encoding {t['encode_seconds'] / r['encode_seconds']:.2f}x; "
      f"NMSE difference {100 * (r['nmse'] - t['nmse']) / t['nmse']:+.2f}%; threads {t['threads']}, torch {t['torch']}")
PY
rm -rf "$out"
