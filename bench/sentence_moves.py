"""How each kind of StereoSet sentence moved between two reads of the same examples, per bias type.

For two score files of the evaluation suite on the same StereoSet intrasentence examples (a model before and
after an adapter: `predictions.jsonl` or `stereoset_scores.jsonl.gz`), it prints per bias type the mean change,
in nats per token, of s(stereotype) - s(unrelated), of s(anti-stereotype) - s(unrelated) and of s(unrelated)
itself. SS counts whether the stereotype beats its anti-stereotype; these say which of the two moved: a type
whose stereotypes and anti-stereotypes rise together keeps its SS however far both rise. No model is loaded.

    python bench/sentence_moves.py --base base/stereoset_scores.jsonl.gz --after run/stereoset_scores.jsonl.gz \
        --out moves.json
"""
from __future__ import annotations

import argparse
import sys

from biasunlearn.errors import BiasUnlearnError
from biasunlearn.evaluate import read_stereoset_predictions
from biasunlearn.io import write_json


def mean_moves(pairs) -> dict:
    """Mean change, over (after, base) record pairs of the same examples, of the margin s(stereo) - s(anti), of
    s(stereo) - s(unrel), of s(anti) - s(unrel) and of s(unrel) itself (nats per token, rounded to 4 places)."""
    n, sums = 0, [0.0, 0.0, 0.0, 0.0]
    for r, q in pairs:
        n += 1
        sums[0] += (r["s_stereo"] - r["s_anti"]) - (q["s_stereo"] - q["s_anti"])
        sums[1] += (r["s_stereo"] - r["s_unrel"]) - (q["s_stereo"] - q["s_unrel"])
        sums[2] += (r["s_anti"] - r["s_unrel"]) - (q["s_anti"] - q["s_unrel"])
        sums[3] += r["s_unrel"] - q["s_unrel"]
    keys = ("d_margin", "d_stereo_vs_unrel", "d_anti_vs_unrel", "d_unrel")
    return {"n": n, **{k: round(v / n, 4) for k, v in zip(keys, sums)}}


def sentence_moves(base: list[dict], after: list[dict]) -> dict:
    """{bias type and 'overall': {n, d_stereo_vs_unrel, d_anti_vs_unrel, d_unrel}}, over the examples (by id) of
    `after`; every one of them must be in `base`."""
    by_id = {r["id"]: r for r in base}
    missing = [r["id"] for r in after if r["id"] not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} examples of the after read are not in the base read (first: {missing[0]})")
    groups: dict = {}
    for r in after:
        for key in (r["bias_type"], "overall"):
            groups.setdefault(key, []).append((r, by_id[r["id"]]))
    out = {}
    for b in sorted(groups):
        m = mean_moves(groups[b])
        out[b] = {k: m[k] for k in ("n", "d_stereo_vs_unrel", "d_anti_vs_unrel", "d_unrel")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="score file of the model before")
    ap.add_argument("--after", required=True, help="score file of the model after, on the same examples")
    ap.add_argument("--out", default=None, help="JSON file for the table")
    a = ap.parse_args(argv)
    try:
        table = sentence_moves(read_stereoset_predictions(a.base), read_stereoset_predictions(a.after))
    except (BiasUnlearnError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| bias type | n | d(stereo - unrel) | d(anti - unrel) | d(unrel) |\n|---|---|---|---|---|")
    for b, v in table.items():
        print(f"| {b} | {v['n']} | {v['d_stereo_vs_unrel']:+.4f} | {v['d_anti_vs_unrel']:+.4f} | {v['d_unrel']:+.4f} |")
    if a.out:
        write_json(a.out, {"base": a.base, "after": a.after, "moves": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
