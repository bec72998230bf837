"""Sums the kernel durations in a cubecl profile log, by kernel.

cubecl writes one line per kernel run, `| 1.23ms | Name | Args...`, with
`CUBECL_DEBUG_LOG=FILE CUBECL_DEBUG_OPTION=profile` (each kernel is then timed on its own, so
the durations are the kernels' alone, without the gaps between them). Usage:

    python3 scripts/kernel_times.py FILE [STEPS]

prints the kernels by total time, with calls and median duration; with STEPS, the total per
step as well. Used for the GPU figures in docs/benchmarks.md.
"""

import collections
import re
import statistics
import sys

LINE = re.compile(r"^\| +([0-9.]+)(ns|µs|ms|s) +\| (.+)$")
MS = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}


def main():
    runs = collections.defaultdict(list)
    with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
        for line in log:
            m = LINE.match(line.rstrip())
            if not m:
                continue
            fields = [f.strip() for f in m.group(3).split("|")]
            # Matmul kernels share their first fields; their family names tell them apart.
            family = [f for f in fields[1:] if "Famil" in f or "Algorithm" in f]
            name = " ".join([fields[0]] + family)[:100]
            runs[name].append(float(m.group(1)) * MS[m.group(2)])
    steps = float(sys.argv[2]) if len(sys.argv) > 2 else None
    total = sum(sum(v) for v in runs.values())
    print(f"{'total ms':>10} {'per step':>9} {'calls':>6} {'median ms':>10}  kernel")
    for name, v in sorted(runs.items(), key=lambda kv: -sum(kv[1]))[:40]:
        per = f"{sum(v) / steps:9.3f}" if steps else f"{'':9}"
        print(f"{sum(v):10.2f} {per} {len(v):6d} {statistics.median(v):10.3f}  {name}")
    print(f"{total:10.2f} ms in {sum(len(v) for v in runs.values())} kernel runs")


if __name__ == "__main__":
    main()
