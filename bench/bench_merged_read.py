"""The read after training with the LoRA adapter merged into the weights, against the adapter applied unmerged (what
`train`'s after-read did through session 31): wall time per benchmark, peak memory, and whether the scores stay the
same.

Modes (each in a fresh process, in the order given, on --threads threads):
- unmerged: the adapter applied as PEFT layers, in --dtype (bfloat16 by default, as `train` reads on this CPU);
- merged: the model loaded in float32, the adapter merged there, the sum rounded to --dtype once
  (`load_model(merge_adapter=True)`);
- merged-naive: loaded in --dtype and merged there (what `merge_and_unload` does on a bfloat16 model): every change
  smaller than half a bfloat16 step of its weight is lost;
- base: the model without the adapter, in --dtype (the read before training; its scores are not comparable);
- float32: unmerged in float32, the reference without any rounding of the change (slow on a bf16-capable CPU).

The read is the run's own after-training read (`eval_config_for` of RUN/config.json: its benchmarks and limits),
so mode `unmerged` must give RUN/eval_after's numbers. Per mode: each benchmark's wall time and headline scores,
and against the first mode (base excepted), the StereoSet examples whose choice (stereotype over anti-stereotype, meaningful over
unrelated) changed, and the largest change of an example's score gap.

    python bench/bench_merged_read.py --run runs/demo31 --modes unmerged,merged,base \
        --out bench/results/merged_read_smollm2_s32.json
    python bench/bench_merged_read.py --run runs/demo31 --modes float32,unmerged,merged --benchmarks stereoset \
        --out bench/results/merged_read_fp32ref_smollm2_s32.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
mode, run, dtype, threads, out_dir, benchmarks = sys.argv[1:7]
torch.set_num_threads(int(threads))
from biasunlearn.evaluate import evaluate_model
from biasunlearn.models import load_model
from biasunlearn.train_cli import saved_run_settings
from biasunlearn.unlearn.config import make_config
from biasunlearn.unlearn.pipeline import eval_config_for
run = Path(run)
cfg = make_config(**saved_run_settings(run))
ecfg = eval_config_for(cfg)
if benchmarks:
    ecfg.benchmarks = tuple(benchmarks.split(","))
adapter = str(run / "adapter")
t0 = time.perf_counter()
if mode == "base":
    model, tok, info = load_model(cfg.model, dtype=dtype)
elif mode == "merged-naive":
    model, tok, info = load_model(cfg.model, adapter=adapter, dtype=dtype)
    model = model.merge_and_unload()
else:
    model, tok, info = load_model(cfg.model, adapter=adapter, dtype="float32" if mode == "float32" else dtype,
                                  merge_adapter=mode == "merged")
load_s = time.perf_counter() - t0
doc = evaluate_model(model, tok, ecfg, info.to_dict(), Path(out_dir), log=None)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
print(json.dumps({"mode": mode, "load_s": round(load_s, 2), "peak_mb": round(hwm, 1),
                  "wall_s": {k: v["wall_time_s"] for k, v in doc["benchmarks"].items()},
                  "dtype": info.dtype, "lora_layers_left": sum("lora_A" in n for n, _ in model.named_modules())}))
"""


def headline(results: dict) -> dict:
    b = results["benchmarks"]
    out = {}
    if "stereoset" in b:
        intra = b["stereoset"]["metrics"]["intrasentence"]
        out["stereoset"] = {k: {m: round(v[m], 3) for m in ("SS", "LMS", "ICAT")} for k, v in intra.items()}
    if "crows_pairs" in b:
        out["crows_pairs_overall"] = round(b["crows_pairs"]["metrics"]["length_normalised"]["overall"]["score"], 3)
    if "perplexity" in b:
        out["perplexity"] = round(b["perplexity"]["metrics"]["perplexity"], 4)
    if "bbq" in b:
        m = b["bbq"]["metrics"]
        overall = m.get("overall") or {}
        out["bbq_overall"] = {k: round(v, 3) for k, v in overall.items() if isinstance(v, float)}
    return out


def stereoset_rows(folder: Path) -> dict:
    import gzip

    with gzip.open(folder / "stereoset_scores.jsonl.gz", "rt") as f:
        return {r["id"]: r for r in map(json.loads, f)}


def against(rows: dict, ref: dict) -> dict:
    flips_ss = flips_lms = 0
    gap = 0.0
    for k, r in rows.items():
        q = ref[k]
        flips_ss += (r["s_stereo"] > r["s_anti"]) != (q["s_stereo"] > q["s_anti"])
        flips_lms += sum((r[a] > r["s_unrel"]) != (q[a] > q["s_unrel"]) for a in ("s_stereo", "s_anti"))
        gap = max(gap, abs((r["s_stereo"] - r["s_anti"]) - (q["s_stereo"] - q["s_anti"])))
    return {"examples": len(rows), "ss_choice_flips": flips_ss, "lms_choice_flips": flips_lms,
            "largest_gap_change": round(gap, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished `biasunlearn train` folder (config.json, adapter/)")
    p.add_argument("--modes", default="unmerged,merged,merged-naive")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--benchmarks", default="", help="comma-separated: read these instead of the run's own")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    run = Path(a.run)
    modes = a.modes.split(",")
    doc = {"run": str(run), "dtype": a.dtype, "benchmarks": a.benchmarks or "the run's own", "threads": a.threads, "command": " ".join(sys.argv), "modes": {}}
    ref_rows = None
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            folder = Path(tmp) / mode
            proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(run), a.dtype, str(a.threads), str(folder),
                                   a.benchmarks],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"mode {mode} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["total_wall_s"] = round(sum(res["wall_s"].values()), 2)
            res["scores"] = headline(json.loads((folder / "results.json").read_text()))
            rows = stereoset_rows(folder) if (folder / "stereoset_scores.jsonl.gz").exists() else None
            if rows is None or mode == "base":
                pass
            elif ref_rows is None:
                ref_rows = rows
            else:
                res[f"stereoset_against_{modes[0]}"] = against(rows, ref_rows)
            doc["modes"][mode] = res
            print(json.dumps(res), flush=True)
    first = doc["modes"][modes[0]]
    for mode, res in doc["modes"].items():
        res["time_ratio_to_first"] = {k: round(v / first["wall_s"][k], 3) for k, v in res["wall_s"].items()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
