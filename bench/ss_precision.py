"""How precise is a StereoSet test read, and is a difference between two reads larger than the test split's noise?

For each `predictions.jsonl` of the evaluation suite (one read of the test split), the SS of each bias type and
overall with its bootstrap standard error (`metrics.ss_standard_error`: target terms and their examples redrawn),
and for each read after the first its paired difference from the first (`metrics.paired_ss_difference`: the same
terms and examples redrawn for both reads). Also, from the first read's errors, how often a model whose true SS is
exactly 50 would still read outside 50 +- a band (normal approximation), per bias type and for at least one
of them: the chance that the issue's "every domain within 50 +- 4" fails on a perfectly level model. No model is loaded.

    python bench/ss_precision.py --read base=base/predictions.jsonl --read R1=runs/r1/eval_after/predictions.jsonl
"""
from __future__ import annotations

import argparse
import sys

from biasunlearn.errors import BiasUnlearnError
from biasunlearn.evaluate import read_stereoset_predictions
from biasunlearn.io import write_json
from biasunlearn.metrics import level_outside_any
from biasunlearn.metrics import level_outside_band as outside_band  # P(a level model reads outside the band)
from biasunlearn.metrics import paired_ss_difference, ss_standard_error, stereoset_scores


def precision(reads: dict, resamples: int, seed: int, band: float) -> dict:
    """reads: {name: records}, the first the reference ("vs"). Returns {"reads": {name: {domain: {SS, se}}},
    "paired": {name after the first: {domain: {diff, se}}}, "level_model_outside_band": {bias type: p},
    "level_model_any_domain_outside": p, "vs", "band", "resamples", "seed"}."""
    names = list(reads)
    out: dict = {"reads": {}, "band": band, "resamples": resamples, "seed": seed}
    for name, recs in reads.items():
        ss = stereoset_scores(recs)
        se = ss_standard_error(recs, resamples=resamples, seed=seed)
        out["reads"][name] = {d: {"SS": round(ss[d]["SS"], 2), "se": round(se[d], 2)} for d in se}
    ref = names[0]
    out["vs"] = ref
    out["paired"] = {name: {d: {"diff": round(v["diff"], 2), "se": round(v["se"], 2)}
                            for d, v in paired_ss_difference(reads[ref], reads[name], resamples, seed).items()}
                     for name in names[1:]}
    p = {d: outside_band(v["se"], band) for d, v in out["reads"][ref].items() if d != "overall"}
    out["level_model_outside_band"] = {d: round(v, 3) for d, v in p.items()}
    out["level_model_any_domain_outside"] = round(level_outside_any(p.values()), 3)
    return out


def markdown(res: dict) -> str:
    domains = list(next(iter(res["reads"].values())))
    head = "| read | " + " | ".join(domains) + " |\n|---|" + "---|" * len(domains) + "\n"
    lines = ["SS ± bootstrap standard error:", "", head.rstrip("\n")]
    for name, row in res["reads"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[d]['SS']:.2f} ± {row[d]['se']:.2f}" for d in domains) + " |")
    if res["paired"]:
        lines += ["", f"Paired difference from {res['vs']} (same terms and examples redrawn for both):", "",
                  head.rstrip("\n")]
        for name, row in res["paired"].items():
            lines.append(f"| {name} − {res['vs']} | "
                         + " | ".join(f"{row[d]['diff']:+.2f} ± {row[d]['se']:.2f}" for d in domains) + " |")
    p = res["level_model_outside_band"]
    lines += ["", f"A model at exactly 50 in every bias type would read outside 50 ± {res['band']:g} (with the errors "
              f"of {res['vs']}, normal approximation): " + ", ".join(f"{d} {100 * v:.0f}%" for d, v in p.items())
              + f"; at least one type {100 * res['level_model_any_domain_outside']:.0f}%."]
    return "\n".join(lines) + "\n"


def read_named(specs: list[str]) -> tuple[dict, dict]:
    """--read NAME=PATH values -> ({name: score records}, {name: path}), in the order given; a malformed value, a
    name given twice or an unreadable file stops with a message naming the value."""
    reads, paths = {}, {}
    for item in specs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--read {item!r}: expected NAME=PATH")
        if name in reads:
            raise SystemExit(f"--read {item!r}: the name {name!r} is given twice")
        try:
            reads[name] = read_stereoset_predictions(path)
        except (BiasUnlearnError, OSError) as e:
            raise SystemExit(f"--read {item!r}: {e}") from e
        paths[name] = path
    return reads, paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--read", action="append", required=True, metavar="NAME=PATH",
                    help="a predictions.jsonl of the test split, named; the first is the reference (repeatable)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--band", type=float, default=4.0, help="the per-domain target band around 50 (default 4)")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = ap.parse_args(argv)
    reads, _ = read_named(a.read)
    res = precision(reads, a.resamples, a.seed, a.band)
    print(markdown(res), end="")
    if a.out:
        write_json(a.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
