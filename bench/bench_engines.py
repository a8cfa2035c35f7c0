"""The sharded engines on a real model: the recipe's first steps under DDP, FSDP2 and DeepSpeed ZeRO-3, each on two
CPU processes (gloo, one thread each), side by side.

accelerate runs FSDP and DeepSpeed only on accelerators, so each process switches accelerate's state to the engine
(tests/_ddp_worker.py: engine_settings), as the tests do. What it reports for each engine:
- the seconds per optimizer step (the median over the steps after the first) and each process's peak memory;
- the dev checks (SS per type, LMS) and the adapters, the last one and the one at the first dev check, against
  DDP's: the largest difference in a LoRA weight, relative to the weight's own size.
These are CPU processes: the times say what the engines' extra passes and gathers cost here, not on GPUs.

    python bench/bench_engines.py --model smollm2-135m --config configs/smollm2-cpu.yaml --steps 6 \\
        --out bench/results/engines_smollm2-135m.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("ddp", "fsdp", "zero3")


def worker(model: str, config: str, steps: int, engine: str, out: str, settings: str) -> None:
    """One process of one engine's run (started by torchrun)."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "tests"))
    from _ddp_worker import engine_settings, keep_trainer
    from transformers import TrainerCallback

    from biasunlearn.train_cli import read_recipe
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.pipeline import train_adapter

    engine_args = engine_settings(engine)
    times, seen = [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            seen["t"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - seen["t"])  # the step itself, the dev check after it left out

    kept = keep_trainer(Clock())
    values = read_recipe(config)
    values.update(json.loads(settings))
    values.update(max_steps=steps, stop_at_step=steps, skip_final_eval=True, disable_tqdm=True, use_cpu=True,
                  ddp_backend="gloo", save_steps=steps, report_to="none")
    cfg = make_config(output_dir=out, model=model, **{**values, **engine_args})
    t0 = time.perf_counter()
    train_adapter(cfg, log=lambda s: None)
    t = kept["trainer"]
    Path(out, f"rank{t.args.process_index}.json").write_text(json.dumps({
        "engine": t.accelerator.distributed_type.value, "sharded": t.sharded, "world": t.args.world_size,
        "bf16": bool(cfg.bf16), "step_s": times, "wall_s": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "controller": t.controller.state_dict()}))


def lora_diff(a_dir: Path, b_dir: Path) -> dict:
    """The largest |a - b| over the LoRA weights, and that over the largest |b|."""
    from safetensors.torch import load_file

    a, b = load_file(str(a_dir / "adapter_model.safetensors")), load_file(str(b_dir / "adapter_model.safetensors"))
    if a.keys() != b.keys():
        return {"same_keys": False}
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    scale = max(b[k].float().abs().max().item() for k in b)
    return {"same_keys": True, "tensors": len(a), "max_abs_diff": diff, "relative": diff / scale if scale else None}


def _texts(run: Path) -> list[str] | None:
    """The KL texts the run sampled (generated_unrelated.jsonl), or None."""
    path = run / "generated_unrelated.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--config", default="configs/smollm2-cpu.yaml")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--eval-every", type=int, default=3, help="dev check every N steps (the recipe's 50 is too far)")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (default float32)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="another setting of `biasunlearn train` for every engine's run, e.g. smaller "
                        "batches so that two processes of a larger model fit in memory")
    p.add_argument("--runs", default="runs/bench_engines", help="where the runs are written (not committed)")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--port", type=int, default=29611)
    p.add_argument("--compare-only", action="store_true",
                   help="train nothing: read the finished runs in --runs again and rewrite --out")
    p.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a.worker[0], a.worker[1], int(a.worker[2]), a.worker[3], a.worker[4], a.worker[5])
        return 0
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import UnlearnConfig, settings_from_pairs

    try:
        extra = settings_from_pairs(a.set)  # each value read and typed as compare's --set reads it
    except ConfigError as e:
        p.error(str(e))
    unknown = sorted(set(extra) - set(UnlearnConfig.__dataclass_fields__))
    if unknown:
        p.error(f"--set: {', '.join(unknown)}: not a setting of `biasunlearn train`")
    settings = json.dumps({"eval_every": a.eval_every, "bf16": a.bf16, "generated_count": 64, **extra})
    runs = Path(a.runs)
    results = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), "model": a.model,
               "config": a.config, "steps": a.steps, "eval_every": a.eval_every, "bf16": a.bf16, "settings": extra,
               "engines": {}}
    for i, engine in enumerate(a.engines.split(",")):
        out = runs / engine
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(a.port + i), __file__, "--out", "-", "--worker", a.model, a.config, str(a.steps), engine,
               str(out), settings]
        t0 = time.perf_counter()
        if not a.compare_only:
            print(f"[engines] {engine}: {a.steps} steps on two processes", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        else:
            proc = subprocess.CompletedProcess(cmd, 0 if (out / "rank1.json").exists() else 1, "", "no finished run")
        if proc.returncode != 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / "stderr.txt").write_text(proc.stderr)
            print(proc.stderr[-4000:], file=sys.stderr)
            print(f"[engines] {engine} failed: the whole log is {out / 'stderr.txt'}", file=sys.stderr)
            results["engines"][engine] = {"failed": proc.stderr[-2000:]}
            continue
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        r0 = ranks[0]
        results["engines"][engine] = {
            "engine": r0["engine"], "sharded": r0["sharded"],
            "launch_wall_s": None if a.compare_only else round(time.perf_counter() - t0, 1),
            "train_wall_s": round(r0["wall_s"], 1),
            "step_s_median": round(statistics.median(r0["step_s"][1:] or r0["step_s"]), 2),
            "step_s": [round(s, 2) for s in r0["step_s"]],
            "peak_rss_mb": [round(r["peak_rss_mb"]) for r in ranks],
            "ranks_agree": ranks[0]["controller"] == ranks[1]["controller"],
            "dev": [{"step": h["step"], "ss": {k: round(v, 2) for k, v in h["ss"].items()}, "lms": round(h["lms"], 2)}
                    for h in r0["controller"]["history"]],
        }
        print(json.dumps(results["engines"][engine]), file=sys.stderr, flush=True)
    ddp = results["engines"].get("ddp", {})
    for engine, r in results["engines"].items():
        if engine == "ddp" or "failed" in r or "failed" in ddp:
            continue
        r["vs_ddp"] = {"dev_same": r["dev"] == ddp["dev"],
                       "kl_texts_same": _texts(runs / engine) == _texts(runs / "ddp"),
                       "final_adapter": lora_diff(runs / engine / "final_adapter", runs / "ddp" / "final_adapter"),
                       "chosen_adapter": lora_diff(runs / engine / "adapter", runs / "ddp" / "adapter"),
                       "step_time_ratio": round(r["step_s_median"] / ddp["step_s_median"], 2)}
    if a.compare_only and Path(a.out).exists():  # the training runs' own command and launch times are kept
        before = json.loads(Path(a.out).read_text())
        results["recompared_by"], results["command"] = results["command"], before.get("command")
        for engine, r in results["engines"].items():
            r["launch_wall_s"] = before.get("engines", {}).get(engine, {}).get("launch_wall_s")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(a.out) + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(a.out)
    print("| engine | s/step (median) | ratio to DDP | peak memory per process (MB) | dev checks as DDP's | "
          "last adapter vs DDP (max rel. diff) |")
    print("|---|---|---|---|---|---|")
    for engine, r in results["engines"].items():
        if "failed" in r:
            print(f"| {engine} | failed | | | | |")
            continue
        v = r.get("vs_ddp", {})
        rel = v.get("final_adapter", {}).get("relative")
        print(f"| {engine} | {r['step_s_median']} | {v.get('step_time_ratio', 1.0)} | "
              f"{', '.join(map(str, r['peak_rss_mb']))} | {v.get('dev_same', True)} | "
              f"{'-' if rel is None else f'{rel:.1e}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
