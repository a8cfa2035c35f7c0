"""Pool the held-out folds of a cross-validated recipe (runs trained with dev_folds: K, dev_fold: 0..K-1).

Each run's adapter is scored on its own dev fold (the terms it never trained on) and the base model on every fold;
the records are pooled and SS (with its bootstrap standard error), LMS and the mean margin are printed per bias type,
for the base model and for the recipe. Only the train pool is read: nothing here touches the held-out test set.

    python bench/cv_pool.py --runs runs/cv0,runs/cv1,runs/cv2,runs/cv3 --adapter best_adapter --out cv.json
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
from biasunlearn.io import comma_list, write_json
from biasunlearn.models import load_model
from biasunlearn.unlearn.folds import missing_folds, pooled_summary, read_fold_splits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", required=True, help="comma-separated run folders, one per fold")
    ap.add_argument("--adapter", default="best_adapter", help="adapter folder inside each run (best_adapter: the "
                                                              "run's dev-chosen checkpoint; adapter: the same, "
                                                              "final_adapter: the last step)")
    ap.add_argument("--allow-partial", action="store_true", help="pool even if some folds have no run yet")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    runs = [Path(r) for r in comma_list(a.runs)]
    docs = read_fold_splits(runs)
    gone = missing_folds(docs)
    if gone and not a.allow_partial:
        raise SystemExit(f"folds {gone} of {docs[0]['dev_folds']} have no run; pass --allow-partial to pool the rest")
    cfg = json.loads((runs[0] / "config.json").read_text())["config"]
    pool, _ = load_train_pool(cfg.get("data_dir"), files=tuple(comma_list(cfg["train_pool"])))
    by_id = {e.id: e for e in pool}
    recs: dict[str, list] = {"base": [], "recipe": []}
    base, tok, _ = load_model(cfg["model"], dtype=a.dtype)
    with torch.no_grad():  # the base model on every fold at once
        recs["base"] = stereoset_records(base, tok, [by_id[i] for doc in docs for i in doc["dev_ids"]])
    print(f"[cv] base scored on folds {sorted(d['dev_fold'] for d in docs)}", file=sys.stderr, flush=True)
    del base
    gc.collect()
    for run, doc in zip(runs, docs):
        model, tok, _ = load_model(cfg["model"], adapter=str(run / a.adapter), dtype=a.dtype)
        with torch.no_grad():
            recs["recipe"] += stereoset_records(model, tok, [by_id[i] for i in doc["dev_ids"]])
        print(f"[cv] {run / a.adapter} scored on its fold {doc['dev_fold']}", file=sys.stderr, flush=True)
        del model
        gc.collect()
    result = {"runs": [str(r) for r in runs], "adapter": a.adapter, "folds": docs[0]["dev_folds"],
              "missing_folds": gone, "base": pooled_summary(recs["base"]), "recipe": pooled_summary(recs["recipe"])}
    for name in ("base", "recipe"):
        print(f"{name} (pooled held-out folds):")
        for b, v in result[name].items():
            print(f"  {b:>10}: SS {v['SS']:5.1f} ± {v['SS_se']:4.1f} ({v['n_terms']} terms, {v['n_examples']} "
                  f"examples)  LMS {v['LMS']:5.1f}  margin {v['margin']:+.4f}")
    write_json(Path(a.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
