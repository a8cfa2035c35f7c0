"""How far did an adapter raise (or lower) the sentences it was trained on, per bias type?

For each example of a run's train split (from its splits.json), the summed log-probability of the scored span of
its anti-stereotype and stereotype sentences (the span the forget and retain losses see, `score_span`) is taken
under the base model and under the adapter. Per bias type it prints the quantiles of the change (after - base, in
nats summed over the span) and writes them to JSON. This is what `retain_floor_margin` caps: with the floor on, a
retain sentence stops counting once it is that many nats above the original model.

    python bench/retain_rise.py --run runs/NPG3P --adapter runs/NPG3P/final_adapter --out rise.json

Only the run's own train split is read; nothing here touches the held-out test set.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from pathlib import Path

import torch

from biasunlearn.io import write_json
from biasunlearn.models import load_model
from biasunlearn.scoring import score_texts
from biasunlearn.unlearn.sets import make_item

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_margins import split_examples  # noqa: E402

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
LABELS = ("anti-stereotype", "stereotype")


def quantile(sorted_xs: list, p: float) -> float:
    """The lower-nearest-rank quantile of a sorted list (no interpolation)."""
    return sorted_xs[int(p * (len(sorted_xs) - 1))]


def rise_table(exs, base: dict, after: dict) -> dict:
    """{label: {bias type: {n, tokens, mean, quantiles}}} from per-label lists of Scores, aligned with `exs`."""
    out: dict = {}
    for lab in LABELS:
        rows = out[lab] = {}
        for b in sorted({e.bias_type for e in exs}):
            idx = [i for i, e in enumerate(exs) if e.bias_type == b]
            d = sorted(after[lab][i].sum - base[lab][i].sum for i in idx)
            rows[b] = {"n": len(d), "tokens": round(statistics.mean(base[lab][i].n for i in idx), 2),
                       "mean": round(statistics.mean(d), 2),
                       "quantiles": {str(p): round(quantile(d, p), 2) for p in QUANTILES}}
    return out


def run_and_adapter_args(description: str, argv=None, extra=None):
    """The arguments of a script that reads a run's train split under the base model and under an adapter; `extra`,
    if given, adds the script's own arguments to the parser."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--run", required=True, help="run folder (splits.json, config.json)")
    ap.add_argument("--adapter", required=True, help="adapter folder trained on that run's base model")
    ap.add_argument("--out", required=True, help="JSON file for the table")
    ap.add_argument("--model", default=None, help="base model (default: the run's)")
    ap.add_argument("--threads", type=int, default=None)
    if extra is not None:
        extra(ap)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    return a


def base_and_after(model_name: str, adapter: str, score) -> dict:
    """{"base": score(model, tokenizer), "after": the same with the adapter}, float32, one model loaded at a time."""
    out = {}
    for name, path in (("base", None), ("after", adapter)):
        model, tok, _ = load_model(model_name, adapter=path, dtype="float32")
        with torch.no_grad():
            out[name] = score(model, tok)
        del model
        gc.collect()
    return out


def main(argv=None) -> int:
    a = run_and_adapter_args(__doc__.split("\n")[0], argv)
    run = Path(a.run)
    exs, model_name = split_examples(run, "train")
    span = json.loads((run / "config.json").read_text())["config"].get("score_span", "y")
    items = {lab: [make_item(e, lab, span) for e in exs] for lab in LABELS}
    scores = base_and_after(a.model or model_name, a.adapter, lambda model, tok: {
        lab: score_texts(model, tok, [i.y for i in it], [i.x for i in it]) for lab, it in items.items()})
    table = rise_table(exs, scores["base"], scores["after"])
    for lab, rows in table.items():
        for b, v in rows.items():
            q = " ".join(f"{v['quantiles'][str(p)]:+.2f}" for p in QUANTILES)
            print(f"{lab:>16} {b:>10}: n {v['n']:4d}  mean {v['mean']:+.2f}  quantiles 10/25/50/75/90 {q}")
    write_json(a.out, {"run": str(run), "adapter": a.adapter, "score_span": span, "rise_nats": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
