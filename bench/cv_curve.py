"""The held-out curve of a cross-validated recipe: pooled dev SS per bias type at every dev check, from the dev logs
of its K fold runs (dev_folds: K, dev_fold: 0..K-1). No model is loaded; the test set is not read.

Each fold's dev SS rests on a few terms per type; pooled over the K folds it rests on every term of the train pool,
so the curve shows, within a few points, where the recipe stands on terms it did not train on at each step.

    python bench/cv_curve.py --runs runs/cv0,runs/cv1,runs/cv2,runs/cv3 --out cv_curve.json --png cv_curve.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biasunlearn.io import comma_list, write_json
from biasunlearn.plots import plot_dev_ss
from biasunlearn.unlearn.folds import pooled_dev_curve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", required=True, help="comma-separated run folders, one per fold (all K)")
    ap.add_argument("--out", required=True, help="JSON with the pooled rows")
    ap.add_argument("--allow-partial", action="store_true", help="pool even if some folds have no run")
    ap.add_argument("--png", default=None, help="also draw the pooled SS per type against steps")
    a = ap.parse_args(argv)
    runs = comma_list(a.runs)
    curve = pooled_dev_curve(runs, allow_partial=a.allow_partial)
    curve["runs"] = runs
    types = sorted(curve["rows"][0]["ss"])
    print("step  " + "  ".join(f"{b:>15}" for b in types) + "   overall      LMS  paused (folds)")
    for r in curve["rows"]:
        cells = [f"{r['ss'][b]:6.1f} ± {r.get('ss_se', {}).get(b, float('nan')):4.1f}  " for b in types]
        paused = ",".join(f"{b[:4]}{r['paused'][b]}" for b in types if r["paused"][b])
        print(f"{r['step']:4d}  " + " ".join(cells) + f" {r['ss_overall']:6.1f} ± "
              f"{r.get('ss_se', {}).get('overall', float('nan')):3.1f}  {r['lms']:5.1f}  {paused}")
    if curve["missing_folds"]:
        print(f"partial: folds {curve['missing_folds']} of {curve['folds']} have no run")
    if curve["dropped_steps"]:
        print(f"steps not reached by every run, left out: {curve['dropped_steps']}")
    write_json(Path(a.out), curve)
    if a.png:
        n = curve["rows"][0]["n_terms"]
        plot_dev_ss(curve["rows"], a.png, title=f"Held-out SS pooled over {len(runs)} of {curve['folds']} term "
                                                f"folds ({sum(n.values())} terms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
