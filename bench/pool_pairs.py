"""Pool one change measured at several seeds: is it consistent, and how large is it once the seed's own spread counts?

Each --pair names two test reads trained at the same seed: a control and a candidate (their
`stereoset_scores.jsonl.gz` or `predictions.jsonl`). All reads are scored together on the same bootstrap redraws
of the test split's terms and examples (`metrics.ss_bootstrap_draws`), so the pairs' differences keep the
correlation they have through sharing one test split: a term that a change happens to help helps it at every
seed, and treating the pairs as independent would make them look more consistent and more precise than they are.
Per bias type and overall it prints:

- each pair's difference (candidate - control) ± its paired error (the same figures as `bench/ss_precision.py`);
- the correlation of the pairs' errors (their mean off-diagonal correlation over the redraws);
- the generalised-least-squares pool of the differences, ± its error: what the test split's noise alone allows;
- Q = (d - pool)' C^-1 (d - pool) with k - 1 degrees of freedom (C the differences' covariance over the redraws),
  and the chance of a Q this large if every seed measured the same change (chi-square): a small chance says the
  seeds differ by more than the test split's noise, that is, by training's own variation with the seed;
- tau, the extra spread between seeds that brings Q down to k - 1 (Paule-Mandel; 0 when Q <= k - 1), and the
  random-effects pool, whose error counts tau as well: the figure to judge a change by when the seed matters.

No model is loaded.

    python bench/pool_pairs.py --pair s42=NPG3P.jsonl.gz,TB.jsonl.gz --pair s7=NP7.jsonl.gz,TB7.jsonl.gz
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from biasunlearn.errors import BiasUnlearnError
from biasunlearn.evaluate import read_stereoset_predictions
from biasunlearn.io import write_json
from biasunlearn.metrics import ss_bootstrap_draws, stereoset_scores


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


def _gls(d: np.ndarray, cov: np.ndarray) -> tuple[float, float, float]:
    """(pooled mean, its standard error, Q) of differences d with covariance cov."""
    inv = np.linalg.inv(cov)
    one = np.ones(len(d))
    w = float(one @ inv @ one)
    mu = float(one @ inv @ d) / w
    r = d - mu
    return mu, 1.0 / math.sqrt(w), float(r @ inv @ r)


def pool(diffs, cov) -> dict:
    """Fixed (GLS) and random-effects (Paule-Mandel tau) pools of k differences with their k x k covariance."""
    d = np.asarray(diffs, dtype=float)
    c = np.atleast_2d(np.asarray(cov, dtype=float))
    k = len(d)
    if k == 0 or c.shape != (k, k):
        raise ValueError(f"{k} differences and a covariance of shape {c.shape}: need k >= 1 and k x k")
    if np.any(np.diag(c) <= 0) or np.linalg.matrix_rank(c) < k:
        raise ValueError(f"errors {np.sqrt(np.clip(np.diag(c), 0, None)).round(4).tolist()}: the differences' "
                         "covariance is singular (a pair with no error, or two pairs that move as one), so they "
                         "cannot be weighted")
    mu, se, q = _gls(d, c)
    out = {"k": k, "fixed": {"diff": mu, "se": se}}
    if k < 2:
        return out
    tau2 = 0.0
    if q > k - 1:  # Q(tau^2) falls as tau^2 grows: bisect for Q = k - 1
        lo, hi = 0.0, float(np.max(np.diag(c)))
        while _gls(d, c + hi * np.eye(k))[2] > k - 1:
            hi *= 2.0
        for _ in range(100):
            mid = (lo + hi) / 2.0
            lo, hi = (mid, hi) if _gls(d, c + mid * np.eye(k))[2] > k - 1 else (lo, mid)
        tau2 = (lo + hi) / 2.0
    rmu, rse, _ = _gls(d, c + tau2 * np.eye(k))
    out.update({"Q": q, "df": k - 1, "p_same_change": chi2_sf(q, k - 1), "tau": math.sqrt(tau2),
                "random": {"diff": rmu, "se": rse}})
    return out


def pool_pairs(pairs: dict, resamples: int = 1000, seed: int = 0) -> dict:
    """pairs: {name: (control records, candidate records)}, every read of the same test split ->
    {domain: {"pairs": {name: {diff, se}}, "error_correlation", **pool(...)}}; a domain that cannot be pooled (its
    differences have no error, or move as one) holds "not_pooled" with the reason instead."""
    names = list(pairs)
    reads = [recs for name in names for recs in pairs[name]]
    draws = ss_bootstrap_draws(reads, resamples, seed)
    scores = [stereoset_scores(r) for r in reads]
    res = {}
    for dom in sorted(draws):
        arr = np.asarray(draws[dom])  # [resamples, 2k]
        dd = arr[:, 1::2] - arr[:, 0::2]  # each pair's difference on each redraw
        cov = np.atleast_2d(np.cov(dd, rowvar=False))
        diffs = [scores[2 * i + 1][dom]["SS"] - scores[2 * i][dom]["SS"] for i in range(len(names))]
        sd = np.sqrt(np.diag(cov))
        k = len(names)
        corr = [cov[i, j] / (sd[i] * sd[j]) for i in range(k) for j in range(k) if i < j and sd[i] * sd[j] > 0]
        try:
            pooled = pool(diffs, cov)
        except ValueError as e:  # e.g. a type no pair changed: exact differences, nothing to weigh them by
            pooled = {"k": k, "not_pooled": str(e)}
        res[dom] = {"pairs": {n: {"diff": diffs[i], "se": float(sd[i])} for i, n in enumerate(names)},
                    "error_correlation": float(np.mean(corr)) if corr else None, **pooled}
    return res


def markdown(res: dict) -> str:
    names = list(next(iter(res.values()))["pairs"])
    k = len(names)
    head = ["domain", *names] + (["error corr."] if k > 1 else []) + ["fixed pool"] \
        + (["Q (df), p same", "tau", "random pool"] if k > 1 else [])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for dom, r in res.items():
        row = [dom, *(f"{r['pairs'][n]['diff']:+.2f} ± {r['pairs'][n]['se']:.2f}" for n in names)]
        if k > 1:
            row.append("–" if r["error_correlation"] is None else f"{r['error_correlation']:+.2f}")
        if "not_pooled" in r:
            lines.append("| " + " | ".join(row + [f"not pooled: {r['not_pooled']}"]) + " |")
            continue
        row.append(f"{r['fixed']['diff']:+.2f} ± {r['fixed']['se']:.2f}")
        if k > 1:
            row += [f"{r['Q']:.2f} ({r['df']}), {r['p_same_change']:.2f}", f"{r['tau']:.2f}",
                    f"{r['random']['diff']:+.2f} ± {r['random']['se']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", action="append", required=True, metavar="NAME=CONTROL,CANDIDATE",
                    help="two test reads (stereoset_scores.jsonl.gz or predictions.jsonl) trained at one seed, "
                         "the control first; repeatable, one per seed")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = ap.parse_args(argv)
    pairs: dict = {}
    paths_of: dict = {}
    for spec in a.pair:
        name, sep, rest = spec.partition("=")
        paths = rest.split(",")
        if not sep or not name or len(paths) != 2 or not all(paths):
            raise SystemExit(f"--pair {spec!r}: expected NAME=CONTROL,CANDIDATE")
        if name in pairs:
            raise SystemExit(f"--pair {spec!r}: the name {name!r} is given twice")
        try:
            pairs[name] = tuple(read_stereoset_predictions(p) for p in paths)
            paths_of[name] = paths
        except (BiasUnlearnError, OSError) as e:
            raise SystemExit(f"--pair {spec!r}: {e}") from e
    try:
        res = pool_pairs(pairs, a.resamples, a.seed)
    except ValueError as e:  # reads of different test splits
        raise SystemExit(f"--pair: {e}") from e
    print(markdown(res), end="")
    if a.out:
        write_json(a.out, {"pairs": paths_of, "resamples": a.resamples, "seed": a.seed, "domains": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
