"""How far one run's unlearning moved the test split against how far it moved held-out pool terms, in margins.

The margin of an example is s(stereotype) - s(anti-stereotype) (mean token log-probabilities, nats): SS counts its
sign, the margin says how far the pair sits from level. This compares, per bias type, the mean test margin before
and after an adapter (from two `predictions.jsonl` of the evaluation suite) with the pooled held-out margin of the
same schedule's cross-validation folds at the same step (`bench/cv_curve.py`'s JSON). The ratio of the two moves
says how much of what the folds saw carries to the test split's terms. No model is loaded.

    python bench/margin_shift.py --base base/predictions.jsonl --curve cv_curve.json \
        --after 60=run/eval_after_checkpoint-60/predictions.jsonl --after 140=run/eval_after_checkpoint-140/predictions.jsonl \
        --out margin_shift.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from biasunlearn.errors import BiasUnlearnError
from biasunlearn.evaluate import read_stereoset_predictions
from biasunlearn.io import write_json
from biasunlearn.metrics import mean_margins


def test_margins(path) -> dict:
    """Mean StereoSet intrasentence margin per bias type and overall from a predictions.jsonl."""
    return mean_margins(read_stereoset_predictions(path))


def margin_shift(base: dict, after: dict, curve: dict) -> dict:
    """base: test margins before; after: {step: test margins after}; curve: a pooled CV curve (rows with 'step' and
    'margin'). Returns, per step and type, the test and pooled margins and the ratio of their moves from step 0."""
    rows = {r["step"]: r["margin"] for r in curve["rows"]}
    if 0 not in rows:
        raise BiasUnlearnError("the CV curve has no step 0, so the pooled margins have no start")
    out = {"base": base, "pool_start": rows[0], "steps": {}}
    for step, test_after in sorted(after.items()):
        if step not in rows:
            raise BiasUnlearnError(f"the CV curve has no step {step} (it has {sorted(rows)})")
        per = {}
        for b in sorted(set(base) & set(test_after) & set(rows[step]) & set(rows[0])):
            test_move = test_after[b] - base[b]
            pool_move = rows[step][b] - rows[0][b]
            per[b] = {"test": test_after[b], "pool": rows[step][b], "test_move": round(test_move, 5),
                      "pool_move": round(pool_move, 5),
                      "ratio": round(test_move / pool_move, 3) if pool_move else None}
        out["steps"][step] = per
    return out


def _pair(text: str) -> tuple[int, str]:
    step, sep, path = text.partition("=")
    if not sep or not step.strip().isdigit():
        raise argparse.ArgumentTypeError(f"--after {text!r}: expected STEP=PATH, e.g. 60=run/predictions.jsonl")
    return int(step), path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="predictions.jsonl of the model without the adapter")
    ap.add_argument("--after", required=True, action="append", type=_pair,
                    help="STEP=predictions.jsonl of the adapter at that step (repeat for more steps)")
    ap.add_argument("--curve", required=True, help="the pooled CV curve JSON of the same schedule (cv_curve.py)")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON")
    a = ap.parse_args(argv)
    try:
        curve = json.loads(Path(a.curve).read_text())
        res = margin_shift(test_margins(a.base), {s: test_margins(p) for s, p in a.after}, curve)
    except (BiasUnlearnError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| type | test margin before | pooled held-out at step 0 | step | test after | pooled after "
          "| test move | pooled move | test / pooled |")
    print("|---|---|---|---|---|---|---|---|---|")
    for step, per in res["steps"].items():
        for b, v in per.items():
            ratio = "–" if v["ratio"] is None else f"{v['ratio']:.2f}"
            print(f"| {b} | {res['base'][b]:+.3f} | {res['pool_start'][b]:+.3f} | {step} | {v['test']:+.3f} "
                  f"| {v['pool']:+.3f} | {v['test_move']:+.3f} | {v['pool_move']:+.3f} | {ratio} |")
    if a.out:
        res["inputs"] = {"base": a.base, "after": {str(s): p for s, p in a.after}, "curve": a.curve}
        write_json(Path(a.out), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
