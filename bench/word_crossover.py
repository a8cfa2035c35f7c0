"""SS of the test examples grouped by whether their filled-in words were trained the other way round.

Training raises each train pair's anti-stereotype and lowers its stereotype. If what a model learns is partly the
filled-in word itself ("caring" up, after any subject), a test example whose *stereotype* word was a train
*anti-stereotype* word ("caring" after "mother", when "caring" was retained after "father") is pushed the wrong way,
and so is one whose anti-stereotype word was a train stereotype word. This splits each bias type's test examples
into four groups by those two facts (filled-in word compared in lower case, within the same bias type) and prints
each group's SS for every read given: if the groups whose words were trained the other way move least, or away
from level, the words' own probabilities are part of what was learned. No model is loaded.

    python bench/word_crossover.py --seed 42 --read base=base/stereoset_scores.jsonl.gz \
        --read run=run/stereoset_scores.jsonl.gz --out crossover.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biasunlearn.data import data_dir, load_stereoset
from biasunlearn.data.splits import splits_for
from biasunlearn.data.stereoset import split_x_word_rest
from biasunlearn.errors import BiasUnlearnError
from biasunlearn.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))

GROUPS = ("neither", "anti word trained as stereotype", "stereotype word trained as anti", "both")


def filled_word(e, label: str) -> str:
    """The filled-in word(s) of one sentence of e, lower case, without surrounding punctuation."""
    return split_x_word_rest(e.context, e.sentence(label))[1].strip().lower().strip(".,!?;:\"'")


def crossover_groups(train, test) -> dict:
    """{bias type: {group: [test example ids]}}, groups as in GROUPS, each type compared with its own train words."""
    trained_anti, trained_stereo = {}, {}
    for e in train:
        trained_anti.setdefault(e.bias_type, set()).add(filled_word(e, "anti-stereotype"))
        trained_stereo.setdefault(e.bias_type, set()).add(filled_word(e, "stereotype"))
    out: dict = {}
    for e in test:
        s_flip = filled_word(e, "stereotype") in trained_anti.get(e.bias_type, set())
        a_flip = filled_word(e, "anti-stereotype") in trained_stereo.get(e.bias_type, set())
        group = GROUPS[2 * s_flip + a_flip]
        out.setdefault(e.bias_type, {g: [] for g in GROUPS})[group].append(e.id)
    return dict(sorted(out.items()))


def stereo_wins(by_id: dict, ids: list[str], name: str) -> list[bool]:
    """For each id, whether its stereotype scores above its anti-stereotype in read `name` ({id: record}); a read
    that lacks any of the ids is refused, naming it."""
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"read {name!r} lacks {len(missing)} test examples (first: {missing[0]})")
    return [by_id[i]["s_stereo"] > by_id[i]["s_anti"] for i in ids]


def group_ss(groups: dict, reads: dict[str, list[dict]]) -> dict:
    """{bias type: {group: {"n": n, read name: SS}}}: SS = 100 * share of the group's examples whose stereotype
    scores above its anti-stereotype in that read (None for an empty group). Every id must be in every read."""
    by_id = {name: {r["id"]: r for r in recs} for name, recs in reads.items()}
    out: dict = {}
    for b, gs in groups.items():
        out[b] = {}
        for g, ids in gs.items():
            row = {"n": len(ids)}
            for name, recs in by_id.items():
                wins = stereo_wins(recs, ids, name)
                row[name] = round(100 * sum(wins) / len(ids), 2) if ids else None
            out[b][g] = row
    return out


def print_group_table(table: dict, names: list[str], group_header: str = "group") -> None:
    """group_ss's table as markdown: a row per bias type and group, a column of SS per read."""
    print(f"| bias type | {group_header} | n | " + " | ".join(names) + " |\n|---|---|---|" + "---|" * len(names))
    for b, gs in table.items():
        for g, row in gs.items():
            cells = " | ".join("–" if row[n] is None else f"{row[n]:.2f}" for n in names)
            print(f"| {b} | {g} | {row['n']} | {cells} |")


def main(argv=None) -> int:
    from ss_precision import read_named

    from biasunlearn.unlearn import make_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=42, help="the run's seed (it draws the train/dev split)")
    ap.add_argument("--read", action="append", required=True, metavar="NAME=PATH",
                    help="a score file of the evaluation suite (stereoset_scores.jsonl.gz or predictions.jsonl)")
    ap.add_argument("--data-dir", default=None, help="data folder (default: BIASUNLEARN_DATA or ../shared/data)")
    ap.add_argument("--out", default=None, help="JSON file for the table")
    a = ap.parse_args(argv)
    reads, paths = read_named(a.read)
    try:
        cfg = make_config(output_dir="unused", seed=a.seed, data_dir=a.data_dir)
        train = splits_for(cfg).train
        test = load_stereoset(data_dir(cfg.data_dir) / cfg.test_set, task="intrasentence")
        table = group_ss(crossover_groups(train, test), reads)
    except (BiasUnlearnError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_group_table(table, list(reads))
    if a.out:
        write_json(a.out, {"seed": a.seed, "reads": paths, "groups": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
