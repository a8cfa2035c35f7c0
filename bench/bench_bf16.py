"""Does this CPU compute bfloat16 natively? fp32 and bf16 matmuls of a head-sized shape, side by side.

Prints and writes the CPU capability torch sees, the seconds per matmul in each dtype (interleaved rounds, median)
and the ratio bf16 / fp32. On an AVX-512 BF16 or AMX CPU bf16 is the faster one; on an AVX2-only CPU it is emulated.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from biasunlearn.io import write_json
from biasunlearn.models import cpu_has_native_bf16


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=256, help="rows of the activation (tokens)")
    ap.add_argument("--hidden", type=int, default=640)
    ap.add_argument("--out-features", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.rows, a.hidden, generator=g)
    w = torch.randn(a.hidden, a.out_features, generator=g)
    pairs = {dt: (x.to(dt), w.to(dt)) for dt in (torch.float32, torch.bfloat16)}
    times: dict = {dt: [] for dt in pairs}
    for dt, (p, q) in pairs.items():
        p @ q  # warm-up
    for _ in range(a.rounds):
        for dt, (p, q) in pairs.items():
            t = time.perf_counter()
            p @ q
            times[dt].append(time.perf_counter() - t)
    fp32, bf16 = (statistics.median(times[dt]) for dt in pairs)
    res = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16(),
           "processor": platform.processor() or platform.machine(), "threads": a.threads,
           "shape": [a.rows, a.hidden, a.out_features], "rounds": a.rounds,
           "fp32_s": round(fp32, 5), "bf16_s": round(bf16, 5), "bf16_over_fp32": round(bf16 / fp32, 2)}
    print(json.dumps(res, indent=1))
    if a.out:
        write_json(a.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
