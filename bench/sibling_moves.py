"""Do test terms that have a sibling in the train pool (Afghan / Afghanistan) move further than those that do not?

Per bias type, the mean change of per-term SS between two `predictions.jsonl` of the evaluation suite (the model
before and after an adapter), over the test split's target terms that begin with the same five letters as a train
pool term (`biasunlearn.data.splits.related_terms`) and over the rest. If unlearning reached unseen terms through
their spelled-alike siblings, the first group would move further. No model is loaded.

    python bench/sibling_moves.py --base base/predictions.jsonl --after run/eval_after/predictions.jsonl
"""
from __future__ import annotations

import argparse
import sys

from biasunlearn.data.splits import load_train_pool, related_terms
from biasunlearn.evaluate import read_stereoset_predictions
from biasunlearn.metrics import term_scores


def term_ss(path) -> dict:
    """{(bias type, term): SS} from the StereoSet intrasentence rows of a predictions.jsonl (as the metric: a tie
    counts as anti)."""
    return {k: ss for k, (ss, _, _) in term_scores(read_stereoset_predictions(path)).items()}


def sibling_moves(before: dict, after: dict, pool_terms: dict) -> dict:
    """pool_terms: {bias type: set of train pool terms}. Returns {type: {"sibling"|"no_sibling": {"terms", "move"}}}."""
    out = {}
    for b in sorted({k[0] for k in before}):
        terms = sorted(t for bb, t in before if bb == b and (bb, t) in after)
        rel = related_terms(pool_terms.get(b, set()), terms)
        groups: dict[str, list[float]] = {"sibling": [], "no_sibling": []}
        for t in terms:
            groups["sibling" if t in rel else "no_sibling"].append(after[(b, t)] - before[(b, t)])
        out[b] = {g: {"terms": len(v), "move": round(sum(v) / len(v), 2) if v else None} for g, v in groups.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="predictions.jsonl without the adapter")
    ap.add_argument("--after", required=True, help="predictions.jsonl with the adapter")
    ap.add_argument("--data", default=None, help="data folder (default: BIASUNLEARN_DATA or ../shared/data)")
    a = ap.parse_args(argv)
    pool, _ = load_train_pool(a.data)
    pool_terms: dict[str, set] = {}
    for e in pool:
        pool_terms.setdefault(e.bias_type, set()).add(e.target)
    res = sibling_moves(term_ss(a.base), term_ss(a.after), pool_terms)
    print("| type | terms with a pool sibling | their mean SS move | terms without | their mean SS move |")
    print("|---|---|---|---|---|")
    for b, g in res.items():
        s, n = g["sibling"], g["no_sibling"]
        fmt = (lambda v: "–" if v is None else f"{v:+.1f}")
        print(f"| {b} | {s['terms']} | {fmt(s['move'])} | {n['terms']} | {fmt(n['move'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
