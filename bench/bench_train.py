"""Issue 3's benchmark: train BiasUnlearn on a shipped model, evaluate it on held-out data, check the targets.

1. trains with `biasunlearn train`'s settings (--config YAML plus --set NAME=VALUE), or reuses the finished run in
   --run (train_summary.json and adapter/ present);
2. evaluates base + adapter with the base figures' evaluation settings (bench/results/base_<model>/results.json, made
   by base_figures.py; StereoSet intersentence is left out, as in the training report), on the held-out test set;
3. writes <results>/summary.json (targets met or not, wall times, peak memory), <results>/report.md (before/after
   tables) and copies the run's small files (config, splits, logs, dev curves, plots) next to them.

Nothing here looks at the test set before training is over: the checkpoint is the run's own dev choice, or, with
--adapter checkpoint-N, a step chosen beforehand on the train pool (by cross-validation, bench/cv_curve.py).

    python bench/bench_train.py --model smollm2-135m --config configs/smollm2-cpu.yaml --run runs/smol-bal \
        --results bench/results/train_smollm2-135m --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

TARGETS = {"ss_overall": 2.0, "ss_domain": 4.0, "dlms": 1.5, "icat": 85.0, "ppl_rel": 3.0}
COPY = ("config.json", "splits.json", "log.jsonl", "dev_log.jsonl", "train_summary.json", "losses.png", "dev_ss.png",
        "dev_margin.png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--config", default=None, help="YAML of UnlearnConfig settings (as `biasunlearn train --config`)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="more settings (win over --config)")
    p.add_argument("--run", required=True, help="training output folder (reused when finished)")
    p.add_argument("--results", required=True, help="where summary.json, report.md and the logs go (committed)")
    p.add_argument("--base", default=None, help="base results.json (default bench/results/base_<model>/results.json)")
    p.add_argument("--base-scores", default=None,
                   help="the base read's stereoset_scores.jsonl.gz, for the report's paired precision table (default: "
                        "beside --base; the table is left out when there is none)")
    p.add_argument("--benchmarks", default="stereoset,crows_pairs,bbq,perplexity")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--adapter", default="adapter", help="adapter folder inside --run: 'adapter' (the run's own "
                                                        "dev-chosen checkpoint) or a checkpoint chosen elsewhere, "
                                                        "e.g. checkpoint-80 for a step chosen by cross-validation")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # OpenMP reads this once, when torch is imported
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)


def targets(before: dict, after: dict) -> dict:
    """The issue's acceptance figures from two results documents (held-out StereoSet intrasentence, perplexity)."""
    mb = before["benchmarks"]["stereoset"]["metrics"]["intrasentence"]
    ma = after["benchmarks"]["stereoset"]["metrics"]["intrasentence"]
    ov_b, ov_a = mb["overall"], ma["overall"]
    doms = {d: ma[d]["SS"] for d in ma if d != "overall"}
    out = {"ss_before": ov_b["SS"], "ss_after": ov_a["SS"], "lms_before": ov_b["LMS"], "lms_after": ov_a["LMS"],
           "icat_before": ov_b["ICAT"], "icat_after": ov_a["ICAT"], "ss_domains_before": {d: mb[d]["SS"] for d in doms},
           "ss_domains_after": doms, "dlms": ov_a["LMS"] - ov_b["LMS"]}
    met = {"ss_overall_within_2": abs(ov_a["SS"] - 50) <= TARGETS["ss_overall"],
           "every_domain_within_4": all(abs(v - 50) <= TARGETS["ss_domain"] for v in doms.values()),
           "abs_dlms_le_1.5": abs(out["dlms"]) <= TARGETS["dlms"],
           "icat_ge_85": ov_a["ICAT"] >= TARGETS["icat"]}
    pb = before["benchmarks"].get("perplexity", {}).get("metrics", {}).get("perplexity")
    pa = after["benchmarks"].get("perplexity", {}).get("metrics", {}).get("perplexity")
    if pb and pa:
        out["ppl_before"], out["ppl_after"] = pb, pa
        out["ppl_rel_change_pct"] = 100.0 * (pa / pb - 1)
        met["ppl_increase_le_3pct"] = out["ppl_rel_change_pct"] <= TARGETS["ppl_rel"]
    out["met"] = met
    return out


def _which_adapter(train_summary: dict) -> str:
    """What the run kept as `adapter/`, as its train_summary.json says: a fixed step (stop_at_step) or the best dev
    check (runs from before that field was recorded: the best dev check, then the only choice)."""
    kept = train_summary.get("adapter", "best dev check")
    return "its own dev-chosen checkpoint" if kept == "best dev check" else f"{kept}, fixed before the run"


def main(a) -> int:
    import torch

    from biasunlearn.evaluate import STEREOSET_SCORES, EvalConfig, read_stereoset_predictions, run_eval
    from biasunlearn.io import atomic_write_text, comma_list, read_json, write_json
    from biasunlearn.report import before_after_markdown, stereoset_precision_markdown, stereoset_terms_markdown
    from biasunlearn.train_cli import parse_train_config
    from biasunlearn.unlearn.pipeline import train_adapter

    torch.set_num_threads(a.threads)
    run, res = Path(a.run), Path(a.results)
    base_path = Path(a.base or f"bench/results/base_{a.model}/results.json")
    before = read_json(base_path)
    argv = ["--model", a.model, "--out", str(run), "--skip_final_eval", "True"]
    if a.config:
        argv += ["--config", a.config]
    for item in a.set:
        k, _, v = item.partition("=")
        argv += [f"--{k}", v]
    cfg, _ = parse_train_config(argv)
    t0 = time.perf_counter()
    config, differs = json.loads(json.dumps(cfg.method_dict(), default=str)), {}
    if (run / "train_summary.json").exists() and (run / "adapter" / "adapter_config.json").exists():
        print(f"[bench] reusing the finished run in {run}", file=sys.stderr)
        # the run's own settings are what produced the adapter; record those, and say where the command differs
        if (run / "config.json").exists():
            used = read_json(run / "config.json")["config"]
            differs = {k: {"run": v, "command": config.get(k)} for k, v in used.items()
                       if k not in ("skip_final_eval",) and config.get(k) != v}
            config = used
            if differs:
                print(f"[bench] the run was trained with settings other than this command's: {sorted(differs)}; "
                      f"summary.json records the run's", file=sys.stderr)
    else:
        train_adapter(cfg, resume=(run / "biasunlearn_state.json").exists() or any(run.glob("checkpoint-*")))
    train_s = time.perf_counter() - t0
    summary = read_json(run / "train_summary.json")
    ecfg_b = before["eval_config"]
    ecfg = EvalConfig(benchmarks=tuple(comma_list(a.benchmarks)), stereoset_intersentence=False,
                      bbq_per_category=ecfg_b.get("bbq_per_category"), ppl_window=ecfg_b["ppl_window"],
                      ppl_stride=ecfg_b["ppl_stride"], ppl_max_tokens=ecfg_b["ppl_max_tokens"], data_dir=cfg.data_dir)
    t1 = time.perf_counter()
    adapter = run / a.adapter
    if not (adapter / "adapter_config.json").exists():
        raise SystemExit(f"{adapter}: no adapter there (adapter_config.json missing)")
    eval_dir = run / ("eval_after" if a.adapter == "adapter" else f"eval_after_{a.adapter}")
    after_path = eval_dir / "results.json"
    if after_path.exists() and read_json(after_path)["eval_config"]["benchmarks"] == list(ecfg.benchmarks):
        after = read_json(after_path)
    else:
        after = run_eval(a.model, adapter=str(adapter), dtype=before["bench"]["dtype"], cfg=ecfg,
                         out_dir=eval_dir, log=lambda s: print(s, file=sys.stderr, flush=True))
    eval_s = time.perf_counter() - t1
    res.mkdir(parents=True, exist_ok=True)
    for f in COPY:
        if (run / f).exists():
            shutil.copy2(run / f, res / f)
    write_json(res / "eval_after.json", after)
    if (eval_dir / STEREOSET_SCORES).exists():  # kept (committed) so that a later read can be paired with this one
        shutil.copy2(eval_dir / STEREOSET_SCORES, res / STEREOSET_SCORES)
    doc = {"model": a.model, "run": str(run), "adapter": str(adapter), "base": str(base_path), "argv": sys.argv,
           "threads": a.threads,
           "config": config, **({"command_config_differs": differs} if differs else {}),
           "targets": targets(before, after),
           "train": {"steps": summary.get("steps"), "wall_time_s": summary.get("train_wall_time_s"),
                     "peak_memory_mb": summary.get("peak_memory_mb"), "best": summary.get("best"),
                     "swaps": summary.get("swaps"), "stopped": summary.get("stopped"),
                     "this_call_s": round(train_s, 1)},
           "eval_after_wall_time_s": {k: v.get("wall_time_s") for k, v in after["benchmarks"].items()},
           "eval_this_call_s": round(eval_s, 1)}
    write_json(res / "summary.json", doc)
    md = [f"# BiasUnlearn on {a.model}: held-out before/after", "",
          f"Run `{run}`; before = `{base_path}`; after = " + (f"the run's adapter ({_which_adapter(summary)})."
                                                              if a.adapter == "adapter" else f"`{adapter}`."), "",
          before_after_markdown(before, after)]
    base_scores = Path(a.base_scores) if a.base_scores else base_path.parent / STEREOSET_SCORES
    if base_scores.exists() and (res / STEREOSET_SCORES).exists():
        base_rows = read_stereoset_predictions(base_scores)
        after_rows = read_stereoset_predictions(res / STEREOSET_SCORES)
        md += ["", f"Base StereoSet scores: `{base_scores}`.", "",
               stereoset_precision_markdown(base_rows, after_rows), "", stereoset_terms_markdown(base_rows, after_rows)]
    atomic_write_text(res / "report.md", "\n".join(md))
    t = doc["targets"]
    print(f"SS {t['ss_before']:.2f} -> {t['ss_after']:.2f}, LMS {t['dlms']:+.2f}, ICAT {t['icat_before']:.2f} -> "
          f"{t['icat_after']:.2f}; met: {t['met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
