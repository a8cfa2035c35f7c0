"""How the test examples move, split by which way they leaned at base.

The margin of an example is s(stereotype) - s(anti-stereotype) (mean token log-probabilities, nats); SS counts its
sign. This splits the examples of a StereoSet read by the sign of their margin under the base model (leaning
stereotype: margin > 0; leaning anti-stereotype or level: margin <= 0) and gives, per group and bias type, the mean
change of the margin under each adapter read, and how many examples crossed level each way. It asks whether an
adapter pushes examples that already lean anti-stereotype further (an overshoot a per-pair swap could stop) or
mostly moves those that lean stereotype. A diagnosis of finished reads: no model is loaded, nothing is chosen.

    python bench/lean_moves.py --base base/stereoset_scores.jsonl.gz --read VBS=run/stereoset_scores.jsonl.gz \
        --out lean_moves.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biasunlearn.errors import BiasUnlearnError
from biasunlearn.evaluate import read_stereoset_predictions
from biasunlearn.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))


def margin(r: dict) -> float:
    return r["s_stereo"] - r["s_anti"]


def moves(base: dict[str, dict], after: dict[str, dict], label: str = "the read") -> dict:
    missing = sorted(set(base) - set(after))
    if missing:
        raise SystemExit(f"error: {label}: {len(missing)} base examples have no score, e.g. {missing[0]}")
    out = {}
    for t in sorted({r["bias_type"] for r in base.values()}) + ["all"]:
        ids = [k for k, r in base.items() if t == "all" or r["bias_type"] == t]
        for lean, pick in (("stereotype", lambda m: m > 0), ("anti_or_level", lambda m: m <= 0)):
            sel = [k for k in ids if pick(margin(base[k]))]
            d = [margin(after[k]) - margin(base[k]) for k in sel]
            crossed = sum((margin(base[k]) > 0) != (margin(after[k]) > 0) for k in sel)
            out.setdefault(t, {})[lean] = {"n": len(sel), "mean_margin_change": sum(d) / len(d) if d else None,
                                           "crossed_level": crossed}
    return out


def _fmt(group: dict) -> str:
    v = group["mean_margin_change"]
    return "   –  " if v is None else f"{v:+.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the base model's stereoset_scores.jsonl(.gz)")
    ap.add_argument("--read", action="append", required=True, metavar="NAME=PATH", help="an adapter's read")
    ap.add_argument("--out", help="write the JSON here too")
    a = ap.parse_args(argv)
    from ss_precision import read_named

    try:
        base = {r["id"]: r for r in read_stereoset_predictions(a.base)}
    except (BiasUnlearnError, OSError) as e:
        raise SystemExit(f"--base {a.base!r}: {e}") from e
    reads, paths = read_named(a.read)
    doc = {"base": a.base, "reads": paths, "moves": {}}
    for name, recs in reads.items():
        doc["moves"][name] = moves(base, {r["id"]: r for r in recs}, f"--read {name} ({paths[name]})")
        for t, g in doc["moves"][name].items():
            s, n = g["stereotype"], g["anti_or_level"]
            print(f"{name:8s} {t:10s} leaning stereotype: n={s['n']:4d} change {_fmt(s)}, "
                  f"{s['crossed_level']} crossed | leaning anti/level: n={n['n']:4d} change "
                  f"{_fmt(n)}, {n['crossed_level']} crossed")
    if a.out:
        write_json(a.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
