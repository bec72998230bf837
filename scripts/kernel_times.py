"""Sums the kernel durations in a cubecl profile log, by kernel.

cubecl writes one line per kernel run, `| 1.23ms | Name | Args...`, with
`CUBECL_DEBUG_LOG=FILE CUBECL_DEBUG_OPTION=profile` (each kernel is then timed on its own, so
the durations are the kernels' alone, without the gaps between them). Usage:

    python3 scripts/kernel_times.py FILE [STEPS]
    python3 scripts/kernel_times.py FILE --between MARKER FIRST LAST

prints the kernels by total time, with calls and median duration; with STEPS, the total per
step as well. With `--between`, only the runs after the FIRST-th run of a kernel whose name
starts with MARKER, up to and including its LAST-th, are counted, and a step is one MARKER run:
with a kernel that runs once a training step (`AdamRowsKernel`, the optimiser's update), that
leaves out the first-use checks, the warm-up steps (autotuning) and what runs after training
(evaluation, encoding), so a whole `train` example run can be profiled. Used for the GPU
figures in docs/benchmarks.md, and by `scripts/gpu_bench.sh`'s `rust-profile` variant.
"""

import collections
import re
import statistics
import sys

LINE = re.compile(r"^\| +([0-9.]+)(ns|µs|ms|s) +\| (.+)$")
MS = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}


def usage():
    sys.exit(__doc__.split("Usage:")[1].split("prints")[0].rstrip())


def main():
    args = sys.argv[1:]
    if not args:
        usage()
    path, steps, window = args[0], None, None
    if len(args) == 5 and args[1] == "--between":
        marker, first, last = args[2], int(args[3]), int(args[4])
        if not 0 <= first < last:
            sys.exit("--between: FIRST must be below LAST")
        window, steps = (marker, first, last), float(last - first)
    elif len(args) == 2:
        steps = float(args[1])
    elif len(args) != 1:
        usage()
    runs = collections.defaultdict(list)
    seen = 0
    with open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            m = LINE.match(line.rstrip())
            if not m:
                continue
            fields = [f.strip() for f in m.group(3).split("|")]
            if window:
                counting = window[1] <= seen < window[2]
                if fields[0].startswith(window[0]):
                    seen += 1
                if not counting:
                    continue
            # Matmul kernels share their first fields; their family names tell them apart.
            family = [f for f in fields[1:] if "Famil" in f or "Algorithm" in f]
            name = " ".join([fields[0]] + family)[:100]
            runs[name].append(float(m.group(1)) * MS[m.group(2)])
    if window and seen < window[2]:
        sys.exit(f"{path}: {seen} runs of {window[0]}, fewer than the {window[2]} asked for")
    total = sum(sum(v) for v in runs.values())
    print(f"{'total ms':>10} {'per step':>9} {'calls':>6} {'median ms':>10}  kernel")
    for name, v in sorted(runs.items(), key=lambda kv: -sum(kv[1]))[:40]:
        per = f"{sum(v) / steps:9.3f}" if steps else f"{'':9}"
        print(f"{sum(v):10.2f} {per} {len(v):6d} {statistics.median(v):10.3f}  {name}")
    per = f", {total / steps:.3f} ms per step" if steps else ""
    print(f"{total:10.2f} ms in {sum(len(v) for v in runs.values())} kernel runs{per}")


if __name__ == "__main__":
    main()
