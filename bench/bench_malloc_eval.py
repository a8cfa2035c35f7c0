"""What cpu_malloc_tuning does to an evaluation that runs after training in the same process (as `train`'s
before/after read and `compare` do): resident memory as the read starts, its peak, and its wall time, for one read
(StereoSet, CrowS-Pairs, 16k tokens of WikiText-2; --benchmarks chooses; --threads, one by default). Modes: glibc's defaults (default); the tuning left in place
(tuned: `train`'s after-read before session 27); the same with the kept memory handed back first (tuned+release:
what `compare` did); the tuning undone as `train_adapter` now does when training ends (restored). Before each read
the process allocates and frees 800 MB, as a training run has. Each mode runs in a fresh process (malloc settings
are process-wide), the modes interleaved over --rounds rounds; the SS of every read must be the same.
Mode restored-128k is session 27's restore (glibc's documented defaults set again, so every block above 128 KiB
became a fresh mapping); restored is what `restore_glibc_malloc` does now. --adapter reads the model with a LoRA
adapter on it (train's after-read); the kernel (system) CPU seconds of the read are reported beside its wall time.

    python bench/bench_malloc_eval.py --limit 400 --rounds 1 --out bench/results/malloc_eval_s27.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import ctypes, json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[7]))
from biasunlearn.evaluate import EvalConfig, evaluate_model
from biasunlearn.models import load_model, release_freed_memory, restore_glibc_malloc, tune_glibc_malloc
mode, model_spec, limit, dtype, adapter, benchmarks = sys.argv[1:7]
limit = int(limit)
if mode != "default":
    assert tune_glibc_malloc()
# a training process has already allocated and freed large tensors under the tuning before it evaluates
junk = [torch.ones(50_000_000) for _ in range(4)]
del junk
if mode == "restored":
    restore_glibc_malloc()
if mode == "restored-128k":  # session 27's restore: M_MMAP_MAX, M_TRIM_THRESHOLD, M_TOP_PAD to mallopt(3)'s defaults
    libc = ctypes.CDLL("libc.so.6")
    for param, value in ((-4, 65536), (-1, 128 * 1024), (-2, 128 * 1024)):
        assert libc.mallopt(param, value)
    release_freed_memory()
model, tok, info = load_model(model_spec, adapter=adapter or None, dtype=dtype)
if mode == "tuned+release":
    release_freed_memory()  # as compare's Measure does before each block
rss = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")][0] / 1024
Path("/proc/self/clear_refs").write_text("5")
u0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
cfg = EvalConfig(benchmarks=tuple(benchmarks.split(",")), limit=limit, stereoset_intersentence=False,
                 ppl_max_tokens=16384, bbq_per_category=limit // 11 or None, progress=False)
doc = evaluate_model(model, tok, cfg, info.to_dict(), None, log=None)
wall = time.perf_counter() - t0
u1 = resource.getrusage(resource.RUSAGE_SELF)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
ss = doc["benchmarks"]["stereoset"]["metrics"]["intrasentence"]["overall"]["SS"]
print(json.dumps({"mode": mode, "rss_before_read_mb": round(rss, 1), "peak_mb": round(hwm, 1),
                  "wall_s": round(wall, 2), "user_s": round(u1.ru_utime - u0.ru_utime, 2),
                  "system_s": round(u1.ru_stime - u0.ru_stime, 2), "ss": ss}))
"""


MODES = ("default", "tuned", "tuned+release", "restored-128k", "restored")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=600, help="StereoSet and CrowS-Pairs examples read")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES), help=f"some of {', '.join(MODES)}")
    ap.add_argument("--adapter", default="", help="a LoRA adapter folder to read the model with")
    ap.add_argument("--benchmarks", default="stereoset,crows_pairs,perplexity",
                    help="bbq reads --limit/11 examples a category")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        ap.error(f"--modes: choose from {', '.join(MODES)}")
    rows = []
    env = {"OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    for r in range(a.rounds):
        for mode in modes:
            clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            p = subprocess.run([sys.executable, "-c", CHILD, mode, a.model, str(a.limit), a.dtype, a.adapter,
                                a.benchmarks, str(a.threads)],
                               capture_output=True, text=True, env={**clean, **env})
            if p.returncode != 0:
                print(p.stderr[-3000:], file=sys.stderr)
                return 1
            row = {**json.loads(p.stdout.strip().splitlines()[-1]), "round": r + 1}
            rows.append(row)
            print(row, flush=True)
    if len({r["ss"] for r in rows}) != 1:
        print("the SS differs between modes", file=sys.stderr)
        return 1
    print("\n| mode | resident MB as the read starts | peak MB during the read | wall s | system CPU s |\n"
          "|---|---|---|---|---|")
    for mode in modes:
        rs = [r for r in rows if r["mode"] == mode]
        print(f"| {mode} | {', '.join(str(r['rss_before_read_mb']) for r in rs)} | "
              f"{', '.join(str(r['peak_mb']) for r in rs)} | {', '.join(str(r['wall_s']) for r in rs)} | "
              f"{', '.join(str(r['system_s']) for r in rs)} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"command": " ".join(["python", "bench/bench_malloc_eval.py"] +
                                                               (argv or sys.argv[1:])),
                                           "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
