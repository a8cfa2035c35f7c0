"""Did an adapter learn which words follow a group, or just the words? Its train pairs scored with the group taken out.

For each example of a run's train split whose target term comes before the blank, the filled-in word of its
stereotype and of its anti-stereotype is scored (summed log-probability of the word alone, given what precedes
it) twice: in its own context ("The father was | polite") and in a neutral one, the target term (with "the", "a"
or "an" in front, and a plural or possessive ending) replaced by "someone" ("Someone was | polite"; the grammar is
not mended). Per bias type it prints the mean change (adapter - base) of the margin word(stereotype) -
word(anti-stereotype) in both contexts, and of each word in the neutral context. A neutral margin that falls
nearly as far as the in-context one means the adapter moved the words' own probabilities, whatever group is named;
one that stays near 0 means it learned them after the group.

    python bench/neutral_words.py --run runs/NPG3P --adapter runs/NPG3P/final_adapter --out neutral.json

By default only the run's own train split is read. `--split test` reads the held-out test split instead (a
diagnosis of a finished run, as any test read; never a basis for choosing a run), and `--by term` gives one row
per target term instead of per bias type: whether a term's test read moved with the words' own probabilities.
`summarise` reads such per-term tables back (no model) and gives, per bias type and overall, the example-weighted
mean changes, the part that depends on the group named (in context minus neutral) and the correlation over terms
of the in-context with the neutral change:

    python bench/neutral_words.py summarise runs_a_terms.json runs_b_terms.json
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from biasunlearn.data.stereoset import split_x_word_rest
from biasunlearn.io import write_json
from biasunlearn.unlearn.counterfactual import neutral_prefix

sys.path.insert(0, str(Path(__file__).resolve().parent))

LABELS = ("stereotype", "anti-stereotype")


def word_items(exs) -> list[dict]:
    """One row per usable example: its type, and per label the filled word with its own and its neutral prefix."""
    rows = []
    for e in exs:
        row = {"bias_type": e.bias_type, "id": e.id, "target": e.target}
        for lab in LABELS:
            x, word, _ = split_x_word_rest(e.context, e.sentence(lab))
            n = neutral_prefix(x, e.target) if x and word.strip() else None
            if n is None:
                break
            row[lab] = (x, word, n)
        else:
            rows.append(row)
    return rows


def row_key(row: dict, by: str = "type") -> str:
    """The group of a row: its bias type, or with by="term" "bias type/target term"."""
    if by not in ("type", "term"):
        raise ValueError(f"by={by!r}: must be 'type' or 'term'")
    return row["bias_type"] if by == "type" else f"{row['bias_type']}/{row['target']}"


def change_table(rows, base: dict, after: dict, by: str = "type") -> dict:
    """{group: {n, d_margin_context, d_margin_neutral, d_stereo_neutral, d_anti_neutral}} (nats, mean over
    examples), a group being a bias type or (by="term") a target term; base/after[(label, 'context' |
    'neutral')] are lists of summed word log-probs aligned with rows."""
    out = {}
    keys = [row_key(r, by) for r in rows]
    for b in sorted(set(keys)):
        idx = [i for i, k in enumerate(keys) if k == b]

        def d(lab, where):
            return [after[(lab, where)][i] - base[(lab, where)][i] for i in idx]

        mc = [s - a for s, a in zip(d("stereotype", "context"), d("anti-stereotype", "context"))]
        mn = [s - a for s, a in zip(d("stereotype", "neutral"), d("anti-stereotype", "neutral"))]
        out[b] = {"n": len(idx), "d_margin_context": round(statistics.mean(mc), 3),
                  "d_margin_neutral": round(statistics.mean(mn), 3),
                  "d_stereo_neutral": round(statistics.mean(d("stereotype", "neutral")), 3),
                  "d_anti_neutral": round(statistics.mean(d("anti-stereotype", "neutral")), 3)}
    return out


def term_summary(table: dict) -> dict:
    """From a by-term change table ({"type/term": {n, d_margin_context, d_margin_neutral, ...}}): per bias type and
    "overall", the number of terms and examples, the example-weighted mean of the in-context and the neutral margin
    change, their difference (what depends on the group named) and the Pearson correlation over terms of the two
    changes (None with fewer than 3 terms or no spread); nats, rounded to 3 places."""
    groups: dict = {}
    for key, v in table.items():
        b, sep, _ = key.partition("/")
        if not sep:
            raise ValueError(f"{key!r}: not a by-term row (expected 'bias type/term')")
        for g in (b, "overall"):
            groups.setdefault(g, []).append(v)
    out = {}
    for g in sorted(groups, key=lambda k: (k == "overall", k)):
        rows = groups[g]
        n = sum(r["n"] for r in rows)
        c = sum(r["n"] * r["d_margin_context"] for r in rows) / n
        m = sum(r["n"] * r["d_margin_neutral"] for r in rows) / n
        xs, ys = [r["d_margin_context"] for r in rows], [r["d_margin_neutral"] for r in rows]
        try:
            r_terms = round(statistics.correlation(xs, ys), 3) if len(rows) >= 3 else None
        except statistics.StatisticsError:
            r_terms = None
        out[g] = {"terms": len(rows), "n": n, "d_margin_context": round(c, 3), "d_margin_neutral": round(m, 3),
                  "d_group_dependent": round(c - m, 3), "r_terms": r_terms}
    return out


def summarise(paths: list[str]) -> int:
    """Print term_summary of each saved by-term table."""
    print("| table | bias type | terms | n | d margin, own context | d margin, neutral | group-dependent | r over "
          "terms |\n|---|---|---|---|---|---|---|---|")
    for p in paths:
        d = json.loads(Path(p).read_text())
        if d.get("by") != "term":
            raise SystemExit(f"{p}: not a by-term table (run with --by term)")
        for g, v in term_summary(d["changes_nats"]).items():
            r = "–" if v["r_terms"] is None else f"{v['r_terms']:.2f}"
            print(f"| {Path(p).stem} | {g} | {v['terms']} | {v['n']} | {v['d_margin_context']:+.3f} | "
                  f"{v['d_margin_neutral']:+.3f} | {v['d_group_dependent']:+.3f} | {r} |")
    return 0


def test_examples(run: Path):
    """The held-out test split named by the run's config (intrasentence StereoSet), and the run's model."""
    from biasunlearn.data import data_dir, load_stereoset

    cfg = json.loads((run / "config.json").read_text())["config"]
    return load_stereoset(data_dir(cfg.get("data_dir")) / cfg["test_set"], task="intrasentence"), cfg.get("model")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["summarise"]:
        return summarise(argv[1:])
    from dev_margins import split_examples
    from retain_rise import base_and_after, run_and_adapter_args

    from biasunlearn.scoring import score_texts

    def extra(ap):
        ap.add_argument("--split", choices=("train", "test"), default="train",
                        help="the run's train split, or the held-out test split (a diagnosis only)")
        ap.add_argument("--by", choices=("type", "term"), default="type", help="one row per bias type or per term")

    a = run_and_adapter_args(__doc__.split("\n")[0], argv, extra)
    exs, model_name = test_examples(Path(a.run)) if a.split == "test" else split_examples(Path(a.run), "train")
    rows = word_items(exs)

    def score(model, tok) -> dict:
        words = {lab: [r[lab][1] for r in rows] for lab in LABELS}
        return {(lab, where): [v.sum for v in score_texts(model, tok, words[lab], [r[lab][k] for r in rows])]
                for lab in LABELS for where, k in (("context", 0), ("neutral", 2))}

    scores = base_and_after(a.model or model_name, a.adapter, score)
    table = change_table(rows, scores["base"], scores["after"], a.by)
    print(f"{len(rows)} of {len(exs)} {a.split} examples name their target term before the blank")
    print(f"| {'bias type' if a.by == 'type' else 'term'} | n | d margin, own context | d margin, neutral | "
          "d stereotype word, neutral | d anti-stereotype word, neutral |\n|---|---|---|---|---|---|")
    for b, v in table.items():
        print(f"| {b} | {v['n']} | {v['d_margin_context']:+.3f} | {v['d_margin_neutral']:+.3f} | "
              f"{v['d_stereo_neutral']:+.3f} | {v['d_anti_neutral']:+.3f} |")
    write_json(a.out, {"run": a.run, "adapter": a.adapter, "split": a.split, "by": a.by,
                       "examples": len(rows), "of": len(exs),
                       "example": {lab: list(rows[0][lab]) for lab in LABELS} if rows else None,
                       "changes_nats": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
