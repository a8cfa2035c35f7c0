"""SS of each test target term, before and after, and of named groups of terms: which terms a domain's read comes from.

A domain's SS is the mean of its target terms' SS (PROTOCOL), so a domain that misses 50 +- 4 may do so because of one
term, or because some of its terms move and others do not. For score files of the evaluation suite on the same
StereoSet examples (the first is the reference, normally the base model), this prints every term's SS in each read
and its change from the first, averaged over the later reads; and for each `--group` of terms (say the feminine and
the masculine gender terms), the group's SS (mean over its terms, as a domain's) with, for each later read, the
change from the first and its paired bootstrap error. The error redraws each term's examples (the same draws for
both reads) and keeps the terms: it asks how sure the change is on these terms, not on the domain. No model is loaded.

    python bench/term_moves.py --read base=base/stereoset_scores.jsonl.gz --read run=run/stereoset_scores.jsonl.gz \
        --group female=herself,mommy,mother,schoolgirl,sister --types gender,religion --out terms.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from biasunlearn.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))


def term_ids(records: list[dict], types: set[str] | None = None) -> dict:
    """{bias type: {target term: [example ids]}} of the reference read, sorted, optionally only some bias types."""
    out: dict = {}
    for r in records:
        if types is None or r["bias_type"] in types:
            out.setdefault(r["bias_type"], {}).setdefault(r["target"], []).append(r["id"])
    return {b: dict(sorted(ts.items(), key=lambda kv: kv[0].lower())) for b, ts in sorted(out.items())}


def term_table(terms: dict, reads: dict[str, list[dict]]) -> dict:
    """{bias type: {term: {"n", read name: SS, ..., "mean_change": mean over the later reads of SS - first SS,
    "down": in how many later reads SS is below the first}}}; SS rounded to 2 places."""
    from word_crossover import group_ss

    names = list(reads)
    out = group_ss(terms, reads)
    for ts in out.values():
        for row in ts.values():
            later = [row[n] - row[names[0]] for n in names[1:]]
            row["mean_change"] = round(sum(later) / len(later), 2) if later else None
            row["down"] = sum(d < 0 for d in later)
    return out


def group_change(ids_by_term: dict, ref: dict, run: dict, names: tuple[str, str], resamples: int,
                 seed: int) -> dict:
    """The group's SS (unweighted mean over its terms) in both reads, the change and its paired bootstrap error:
    each resample redraws every term's examples with replacement, the same draw for both reads (resamples >= 2)."""
    from word_crossover import stereo_wins

    rng = np.random.default_rng(seed)
    a = {t: np.array(stereo_wins(ref, ids, names[0]), dtype=float) for t, ids in ids_by_term.items()}
    b = {t: np.array(stereo_wins(run, ids, names[1]), dtype=float) for t, ids in ids_by_term.items()}
    ss_a = float(np.mean([100.0 * v.mean() for v in a.values()]))
    ss_b = float(np.mean([100.0 * v.mean() for v in b.values()]))
    draws = np.zeros(resamples)
    for t in ids_by_term:
        n = len(a[t])
        idx = rng.integers(0, n, size=(resamples, n))
        draws += 100.0 * (b[t][idx].mean(axis=1) - a[t][idx].mean(axis=1))
    draws /= len(ids_by_term)
    return {"SS_first": round(ss_a, 2), "SS": round(ss_b, 2), "diff": round(ss_b - ss_a, 2),
            "se": round(float(draws.std(ddof=1)), 2)}


def parse_groups(specs: list[str], terms: dict, flag: str = "--group") -> dict:
    """`flag` NAME=TERM,TERM values -> {name: {term: ids}}; a term is matched without regard to case and must be
    a test term of the reference read (of the bias types kept); a malformed value stops with a message naming it."""
    known = {t.lower(): (t, ids) for ts in terms.values() for t, ids in ts.items()}
    out: dict = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        wanted = [w.strip() for w in rest.split(",") if w.strip()]
        if not sep or not name or not wanted:
            raise SystemExit(f"{flag} {spec!r}: expected NAME=TERM,TERM,...")
        if name in out:
            raise SystemExit(f"{flag} {spec!r}: the name {name!r} is given twice")
        unknown = [w for w in wanted if w.lower() not in known]
        if unknown:
            raise SystemExit(f"{flag} {spec!r}: not a test target term of the types kept: {', '.join(unknown)}")
        out[name] = dict(known[w.lower()] for w in wanted)
    return out


def main(argv=None) -> int:
    from ss_precision import read_named

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--read", action="append", required=True, metavar="NAME=PATH",
                    help="a score file of the evaluation suite (stereoset_scores.jsonl.gz or predictions.jsonl); "
                         "the first is the reference")
    ap.add_argument("--group", action="append", default=[], metavar="NAME=TERM,TERM",
                    help="a group of test target terms whose mean SS is compared (repeatable)")
    ap.add_argument("--types", default=None, help="comma-separated bias types to list (default: all)")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for a group's paired error")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--out", default=None, help="JSON file for the tables")
    a = ap.parse_args(argv)
    if a.resamples < 2:
        raise SystemExit(f"--resamples {a.resamples}: must be 2 or more (the error is their spread)")
    reads, paths = read_named(a.read)
    if len(reads) < 2:
        raise SystemExit("give at least two --read values: the reference first, then the reads compared with it")
    names = list(reads)
    types = {t.strip() for t in a.types.split(",")} if a.types else None
    terms = term_ids(reads[names[0]], types)
    if not terms:
        raise SystemExit(f"--types {a.types!r}: no test example of these bias types in read {names[0]!r}")
    groups = parse_groups(a.group, terms)
    by_id = {n: {r["id"]: r for r in recs} for n, recs in reads.items()}
    try:
        table = term_table(terms, reads)
        gtable = {g: {"terms": list(ids), **{n: group_change(ids, by_id[names[0]], by_id[n], (names[0], n),
                                                                a.resamples, a.seed) for n in names[1:]}}
                  for g, ids in groups.items()}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| bias type | term | n | " + " | ".join(names) + " | mean change | down |\n|---|---|---|"
          + "---|" * (len(names) + 2))
    for b, ts in table.items():
        for t, row in ts.items():
            print(f"| {b} | {t} | {row['n']} | " + " | ".join(f"{row[n]:.1f}" for n in names)
                  + f" | {row['mean_change']:+.1f} | {row['down']} of {len(names) - 1} |")
    if gtable:
        print("\n| group | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
        for g, row in gtable.items():
            first = row[names[1]]["SS_first"]
            print(f"| {g} | {first:.1f} | " + " | ".join(
                f"{row[n]['SS']:.1f} ({row[n]['diff']:+.1f} ± {row[n]['se']})" for n in names[1:]) + " |")
    if a.out:
        write_json(a.out, {"reads": paths, "types": sorted(types) if types else None, "resamples": a.resamples,
                           "seed": a.seed, "terms": table, "groups": gtable})
    return 0


if __name__ == "__main__":
    sys.exit(main())
