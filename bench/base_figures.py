"""Base figures: the full evaluation suite on an unmodified model, written to bench/results/base_<model>/.

Runs `biasunlearn.evaluate.run_eval` with the default EvalConfig (StereoSet intra + inter, CrowS-Pairs, BBQ 200 per
category, WikiText-2 perplexity) and writes results.json, predictions.jsonl, stereoset_predictions.json and
report.md (the tables of `biasunlearn.report.eval_markdown`).

--dtype auto takes bfloat16 when bench/results/scoring.json (bench_scoring.py) found bf16 SS and LMS within 0.5 of
float32, and float32 otherwise; the choice and its reason are written into results.json under "bench".

    python bench/base_figures.py --model smollm2-135m
    python bench/base_figures.py --model gemma3-270m
    python bench/base_figures.py --model smollm2-135m --dtype float32 --benchmarks stereoset,crows_pairs,perplexity \
        --no-intersentence --out bench/results/explore_s11/base_fp32   # a like-for-like base for an fp32 test read
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--scoring-results", default="bench/results/scoring.json", help="read by --dtype auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="examples per benchmark, for a quick look")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="scoring batch budget (default: EvalConfig's). Peak memory is about max_tokens x vocab x 12 "
                        "bytes of logits, so lower it for large vocabularies (gemma3: 262k)")
    p.add_argument("--benchmarks", default="stereoset,crows_pairs,bbq,perplexity",
                   help="comma-separated subset (a float32 read for bench_train.py --base needs only "
                        "stereoset,crows_pairs,perplexity)")
    p.add_argument("--no-intersentence", action="store_true",
                   help="leave StereoSet intersentence out (the training report does)")
    p.add_argument("--out", default=None, help="default: bench/results/base_<model>")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # OpenMP reads this once, when torch is imported
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
    os.environ["MKL_NUM_THREADS"] = str(ARGS.threads)

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from biasunlearn.evaluate import EvalConfig, run_eval  # noqa: E402
from biasunlearn.io import atomic_write_text, comma_list, write_json  # noqa: E402
from biasunlearn.report import eval_markdown  # noqa: E402


def choose_dtype(requested: str, scoring_json: Path) -> tuple[str, str]:
    """(dtype, reason)."""
    if requested != "auto":
        return requested, "set on the command line"
    if not scoring_json.is_file():
        return "float32", f"{scoring_json} not found, so bf16 is unchecked"
    b = json.loads(scoring_json.read_text())["compare"]["bf16_vs_fp32"]
    verdict = f"bf16 vs fp32 on the StereoSet test set: dSS {b['delta_SS']:+.2f}, dLMS {b['delta_LMS']:+.2f} ({scoring_json})"
    return ("bfloat16", verdict + ", within 0.5") if b["within_0_5"] else ("float32", verdict + ", not within 0.5")


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    dtype, reason = choose_dtype(args.dtype, Path(args.scoring_results))
    out = Path(args.out or f"bench/results/base_{args.model.replace('/', '_')}")
    print(f"[base] {args.model} in {dtype} ({reason}); {torch.get_num_threads()} thread(s) -> {out}", flush=True)
    cfg = EvalConfig(data_dir=args.data_dir, limit=args.limit,
                     benchmarks=tuple(comma_list(args.benchmarks)),
                     stereoset_intersentence=not args.no_intersentence)
    if args.max_tokens:
        cfg.max_tokens = args.max_tokens
    doc = run_eval(args.model, dtype=dtype, cfg=cfg, out_dir=out)
    doc["bench"] = {"script": "bench/base_figures.py", "argv": sys.argv, "dtype": dtype, "dtype_reason": reason,
                    "threads": torch.get_num_threads()}
    write_json(out / "results.json", doc)
    md = eval_markdown(doc)
    atomic_write_text(out / "report.md", f"<!-- {' '.join(sys.argv)}; {dtype} ({reason}); "
                                         f"{torch.get_num_threads()} thread(s) -->\n{md}")
    print(md)
    return doc


if __name__ == "__main__":
    main(ARGS)
