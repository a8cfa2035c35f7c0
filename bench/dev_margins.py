"""Dev-split diagnostics for choosing a recipe without looking at the test set.

Dev SS counts, per example, whether the stereotype sentence outscores its anti-stereotype twin. On a dev slice of
206 examples (24 of them gender) that count moves in steps of several points and often not at all, so it says little
about how far a checkpoint has moved. This script scores the run's own dev split (from its splits.json) with the
base model and with each given adapter, and prints, per bias type, dev SS together with the mean margin
s(stereo) - s(anti) in nats per token (continuous, so it shows movement the count hides) and dev LMS.

    python bench/dev_margins.py --run runs/s3_r1 --adapters best_adapter,final_adapter --threads 1

Only the dev split is read; nothing here touches the held-out test set.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

from biasunlearn.data.splits import load_train_pool
from biasunlearn.evaluate import stereoset_records
from biasunlearn.io import write_json
from biasunlearn.metrics import stereoset_scores
from biasunlearn.models import load_model


def dev_examples(run: Path):
    splits = json.loads((run / "splits.json").read_text())
    cfg = json.loads((run / "config.json").read_text())["config"]
    files = tuple(f.strip() for f in cfg["train_pool"].split(",") if f.strip())
    pool = load_train_pool(cfg.get("data_dir"), files=files)
    pool = pool[0] if isinstance(pool, tuple) else pool
    want = set(splits["dev_ids"])
    dev = [e for e in pool if e.id in want]
    if len(dev) != len(want):
        raise SystemExit(f"{run}/splits.json lists {len(want)} dev ids, the pool has {len(dev)} of them")
    return dev, cfg["model"] if "model" in cfg else None


def summarise(recs) -> dict:
    m = stereoset_scores(recs)
    out = {}
    for b in sorted({r["bias_type"] for r in recs}) + ["overall"]:
        rows = recs if b == "overall" else [r for r in recs if r["bias_type"] == b]
        margin = sum(r["s_stereo"] - r["s_anti"] for r in rows) / len(rows)
        out[b] = {"SS": round(m[b]["SS"], 2), "LMS": round(m[b]["LMS"], 2), "margin": round(margin, 4), "n": len(rows)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="run folder (splits.json, config.json, adapters)")
    ap.add_argument("--adapters", default="best_adapter", help="comma-separated adapter folders inside the run")
    ap.add_argument("--model", default=None, help="base model (default: the run's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    run = Path(a.run)
    dev, model_name = dev_examples(run)
    model_name = a.model or model_name
    results = {}
    for name in ["base"] + [s for s in a.adapters.split(",") if s]:
        adapter = None if name == "base" else str(run / name)
        model, tok, _ = load_model(model_name, adapter=adapter, dtype=a.dtype)
        with torch.no_grad():
            results[name] = summarise(stereoset_records(model, tok, dev))
        del model
        gc.collect()
        row = results[name]
        print(f"{name:>16}: " + "  ".join(f"{b} SS {v['SS']:.1f} m {v['margin']:+.3f}" for b, v in row.items())
              + f"  LMS {row['overall']['LMS']:.1f}", flush=True)
    write_json(run / "dev_margins.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
