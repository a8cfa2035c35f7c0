"""Pool one change measured at several seeds: is it consistent, and how large is it once the seed's own spread counts?

Each input is a `bench/ss_precision.py --out` file holding a paired difference (a candidate minus its control, both
trained at the same seed and read on the same test split). Per bias type and overall this prints each pair's
difference ± its paired error, then:

- the fixed-effect pool: the inverse-variance mean of the differences, ± 1/sqrt(sum of weights). It counts only
  the test split's noise, as each paired error does;
- Cochran's Q (the weighted squared spread of the differences around that mean) with k - 1 degrees of freedom,
  and the chance of a Q at least this large if every pair measured the same change (chi-square): a small chance
  says the pairs differ by more than the test split's noise, that is, by training's own variation with the seed;
- tau, the DerSimonian-Laird estimate of that extra spread (0 when Q <= k - 1), and the random-effects pool, whose
  error counts tau as well: the figure to judge a change by when the seed matters.

No model is loaded.

    python bench/pool_pairs.py --pair s42=precision_TB_vs_NPG3P.json --pair s7=precision_TB7_vs_NP7.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from biasunlearn.io import write_json


def chi2_sf(q: float, df: int) -> float:
    """P(X >= q) for X ~ chi-square(df): 1 - the regularised lower incomplete gamma P(df/2, q/2), by its series."""
    if df < 1:
        raise ValueError(f"df={df}: need at least 1")
    if q <= 0:
        return 1.0
    a, x = df / 2.0, q / 2.0
    term = total = 1.0 / a
    n = 0
    while abs(term) > 1e-15 * abs(total) and n < 10000:
        n += 1
        term *= x / (a + n)
        total += term
    lower = math.exp(-x + a * math.log(x) - math.lgamma(a)) * total
    return min(1.0, max(0.0, 1.0 - lower))


def pool(diffs: list[float], ses: list[float]) -> dict:
    """Fixed- and random-effects (DerSimonian-Laird) pools of k paired differences with their errors."""
    k = len(diffs)
    if k == 0 or k != len(ses):
        raise ValueError(f"{k} differences and {len(ses)} errors: need the same number, at least one")
    if any(s <= 0 for s in ses):
        raise ValueError(f"errors {ses}: every paired error must be positive to weight it")
    w = [1.0 / s ** 2 for s in ses]
    sw = sum(w)
    fixed = sum(wi * d for wi, d in zip(w, diffs)) / sw
    out = {"k": k, "fixed": {"diff": fixed, "se": 1.0 / math.sqrt(sw)}}
    if k < 2:
        return out
    q = sum(wi * (d - fixed) ** 2 for wi, d in zip(w, diffs))
    c = sw - sum(wi ** 2 for wi in w) / sw
    tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
    wr = [1.0 / (s ** 2 + tau2) for s in ses]
    out.update({"Q": q, "df": k - 1, "p_same_change": chi2_sf(q, k - 1), "tau": math.sqrt(tau2),
                "random": {"diff": sum(wi * d for wi, d in zip(wr, diffs)) / sum(wr), "se": 1.0 / math.sqrt(sum(wr))}})
    return out


def load_pair(spec: str) -> tuple[str, dict]:
    """NAME=PATH[#READ] -> (name, {domain: {"diff", "se"}}) from a bench/ss_precision.py --out file."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"--pair {spec!r}: expected NAME=PATH or NAME=PATH#READ")
    path, _, read = rest.partition("#")
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"--pair {spec!r}: cannot read {path}: {e}") from e
    paired = doc.get("paired") if isinstance(doc, dict) else None
    if not paired:
        raise SystemExit(f"--pair {spec!r}: {path} holds no paired difference (write it with bench/ss_precision.py "
                         "--read CONTROL=... --read CANDIDATE=... --out)")
    if not read:
        if len(paired) > 1:
            raise SystemExit(f"--pair {spec!r}: {path} holds {len(paired)} paired reads ({', '.join(paired)}); "
                             "name one as PATH#READ")
        read = next(iter(paired))
    if read not in paired:
        raise SystemExit(f"--pair {spec!r}: {path} has no paired read {read!r} (it has {', '.join(paired)})")
    return name, paired[read]


def pool_pairs(pairs: dict) -> dict:
    """pairs: {name: {domain: {"diff", "se"}}} -> {domain: {"pairs": {name: {diff, se}}, **pool(...)}}, over the
    domains every pair has."""
    domains = sorted(set.intersection(*(set(p) for p in pairs.values())))
    if not domains:
        raise SystemExit("the pairs share no bias type")
    res = {}
    for d in domains:
        diffs = [pairs[n][d]["diff"] for n in pairs]
        ses = [pairs[n][d]["se"] for n in pairs]
        try:
            res[d] = {"pairs": {n: pairs[n][d] for n in pairs}, **pool(diffs, ses)}
        except ValueError as e:
            raise SystemExit(f"{d}: {e}") from e
    return res


def markdown(res: dict) -> str:
    names = list(next(iter(res.values()))["pairs"])
    k = len(names)
    head = ["domain", *names, "fixed pool"] + (["Q (df), p same", "tau", "random pool"] if k > 1 else [])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for d, r in res.items():
        row = [d, *(f"{r['pairs'][n]['diff']:+.2f} ± {r['pairs'][n]['se']:.2f}" for n in names),
               f"{r['fixed']['diff']:+.2f} ± {r['fixed']['se']:.2f}"]
        if k > 1:
            row += [f"{r['Q']:.2f} ({r['df']}), {r['p_same_change']:.2f}", f"{r['tau']:.2f}",
                    f"{r['random']['diff']:+.2f} ± {r['random']['se']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", action="append", required=True, metavar="NAME=PATH[#READ]",
                    help="a bench/ss_precision.py --out file with one paired difference (or name it as #READ); "
                         "repeatable, one per seed")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = ap.parse_args(argv)
    pairs: dict = {}
    for spec in a.pair:
        name, paired = load_pair(spec)
        if name in pairs:
            raise SystemExit(f"--pair {spec!r}: the name {name!r} is given twice")
        pairs[name] = paired
    res = pool_pairs(pairs)
    print(markdown(res), end="")
    if a.out:
        write_json(a.out, {"pairs": list(pairs), "domains": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
