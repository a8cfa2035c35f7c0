"""SS of the test examples grouped by the valence of their two filled-in words: is what the adapters learn "less
negative after a group", rather than "less stereotyped"?

Most StereoSet stereotypes are unflattering (lazy, violent, terrorist) and their anti-stereotypes flattering, but
not all: many gender stereotypes are flattering (a mother is caring, a schoolgirl sweet) and their
anti-stereotypes are not. A model that learned to lower negative words after a group would bring the first kind
down, and leave the second where it was or push it further up. This sorts each bias type's test examples by the
difference in valence between the stereotype and the anti-stereotype sentence (VADER's compound score of the whole
sentence, which differs only in the filled-in word: stereotype more negative, about the same (within `--margin`),
stereotype more positive) and prints each group's SS in every read given, with, for named groups of target terms,
how their examples fall into the three groups. A diagnosis of finished reads: no model is loaded, and nothing
here chose a recipe.

Needs the `vaderSentiment` package (a dependency of biasunlearn; its lexicon ships in the package),
through `biasunlearn.unlearn.valence`, which `balance_valence` uses too.

    python bench/valence.py --read base=base/stereoset_scores.jsonl.gz --read run=run/stereoset_scores.jsonl.gz \
        --terms feminine=herself,mommy,mother,schoolgirl,sister --out valence.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biasunlearn.data import data_dir, load_stereoset
from biasunlearn.errors import BiasUnlearnError
from biasunlearn.io import write_json
from biasunlearn.unlearn.valence import GROUPS, MARGIN, pair_valence, sentence_scorer

sys.path.insert(0, str(Path(__file__).resolve().parent))

LABELS = {"negative": "stereotype more negative", "same": "about the same", "positive": "stereotype more positive"}


def valence_groups(examples, score, margin: float, ids: set[str]) -> tuple[dict, dict]:
    """({bias type: {group label: [ids]}} over the examples in `ids`, {id: group})."""
    groups: dict = {}
    by_id = pair_valence([e for e in examples if e.id in ids], score, margin)
    for e in examples:
        if e.id in by_id:
            groups.setdefault(e.bias_type, {LABELS[g]: [] for g in GROUPS})[LABELS[by_id[e.id]]].append(e.id)
    return dict(sorted(groups.items())), by_id


def term_mix(by_id: dict, groups: dict[str, dict[str, list[str]]]) -> dict:
    """{name: {group label: count}} for each named set of target terms ({name: {term: example ids}}, as
    term_moves.parse_groups gives it)."""
    out = {}
    for name, terms in groups.items():
        counts = dict.fromkeys(LABELS.values(), 0)
        for ids in terms.values():
            for i in ids:
                counts[LABELS[by_id[i]]] += 1
        out[name] = counts
    return out


def main(argv=None) -> int:
    from ss_precision import read_named
    from term_moves import parse_groups, term_ids
    from word_crossover import group_ss, print_group_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--read", action="append", required=True, metavar="NAME=PATH",
                    help="a score file of the evaluation suite (stereoset_scores.jsonl.gz or predictions.jsonl); "
                         "the first is the reference (normally the base model)")
    ap.add_argument("--terms", action="append", default=[], metavar="NAME=TERM,TERM",
                    help="a named set of test target terms (any case) whose examples' valence groups are counted")
    ap.add_argument("--margin", type=float, default=MARGIN,
                    help="valence differences within this are 'about the same' (VADER's own neutral band)")
    ap.add_argument("--test-set", default="stereoset/ano1-yu__stereoset_adaptation")
    ap.add_argument("--data-dir", default=None, help="data folder (default: BIASUNLEARN_DATA or ../shared/data)")
    ap.add_argument("--out", default=None, help="JSON file for the tables")
    a = ap.parse_args(argv)
    reads, paths = read_named(a.read)
    first = next(iter(reads.values()))
    terms = parse_groups(a.terms, term_ids(first), "--terms")  # {name: {term: ids}}: each term a test term of the first read
    try:
        test = load_stereoset(data_dir(a.data_dir) / a.test_set, task="intrasentence")
        ids = {r["id"] for r in first}
        groups, by_id = valence_groups(test, sentence_scorer(), a.margin, ids)
        table = group_ss(groups, reads)
    except (BiasUnlearnError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_group_table(table, list(reads), "stereotype's valence")
    mix = term_mix(by_id, terms)
    for name, counts in mix.items():
        print(f"{name}: " + ", ".join(f"{g} {c}" for g, c in counts.items()))
    if a.out:
        write_json(a.out, {"reads": paths, "margin": a.margin, "scorer": "vaderSentiment compound, whole sentence",
                           "groups": table, "terms": {n: list(t) for n, t in terms.items()}, "term_mix": mix})
    return 0


if __name__ == "__main__":
    sys.exit(main())
