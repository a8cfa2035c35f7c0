"""Dev-split diagnostics for choosing a recipe without looking at the test set.

Dev SS counts, per example, whether the stereotype sentence outscores its anti-stereotype twin. On a dev slice of
206 examples (24 of them gender) that count moves in steps of several points and often not at all, so it says little
about how far a checkpoint has moved. This script scores the run's own dev split (from its splits.json) with the
base model and with each given adapter, and prints, per bias type, dev SS together with the mean margin
s(stereo) - s(anti) in nats per token (continuous, so it shows movement the count hides) and dev LMS.

    python bench/dev_margins.py --run runs/smol-bal --adapters runs/smol-bal/best_adapter,runs/x/checkpoint-30

With --split train,dev it scores the run's train split too: the gap between the two shows how much of what an
adapter learned on its training pairs carries over to target terms it never saw (dev is disjoint by target term).

Per type it prints dev SS with its bootstrap standard error over target terms and examples
(`metrics.ss_standard_error`), the mean margin s(stereo) - s(anti) and its change from the base (negative: the
stereotype lost ground to its twin), and the change of s(stereo) - s(unrel) and s(anti) - s(unrel) (how the
meaningful sentences moved against the unrelated one: what LMS counts).

With --by-valence each bias type is split by the valence of its pairs (`biasunlearn.unlearn.valence`: the stereotype
more negative than its anti-stereotype, about the same, more positive; needs vaderSentiment), as `bench/valence.py`
splits the test reads: on the train split it shows whether a group the test read left in place was learned on the
pairs the run trained on and did not carry over to unseen terms, or was not learned at all.

Only the run's own train and dev splits are read; nothing here touches the held-out test set.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

from biasunlearn.data.splits import load_train_pool
from biasunlearn.evaluate import stereoset_records
from biasunlearn.io import comma_list, write_json
from biasunlearn.models import load_model
from biasunlearn.unlearn.folds import pooled_summary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sentence_moves import mean_moves  # noqa: E402


SPLITS = ("train", "dev")


def split_examples(run: Path, split: str = "dev"):
    """The examples of the run's `split` (train or dev), rebuilt from its splits.json ids and the train pool."""
    if split not in SPLITS:
        raise SystemExit(f"--split {split}: must be one of {', '.join(SPLITS)}")
    splits = json.loads((run / "splits.json").read_text())
    cfg = json.loads((run / "config.json").read_text())["config"]
    files = tuple(comma_list(cfg["train_pool"]))
    pool, _ = load_train_pool(cfg.get("data_dir"), files=files)
    want = set(splits[f"{split}_ids"])
    exs = [e for e in pool if e.id in want]
    if len(exs) != len(want):
        raise SystemExit(f"{run}/splits.json lists {len(want)} {split} ids, the pool has {len(exs)} of them")
    return exs, cfg["model"] if "model" in cfg else None


def dev_examples(run: Path):
    return split_examples(run, "dev")


def by_valence(recs, groups: dict[str, str]) -> list[dict]:
    """The records with each bias type split by its pair's valence group ("gender/positive")."""
    return [dict(r, bias_type=f"{r['bias_type']}/{groups[r['id']]}") for r in recs]


def summarise_by_valence(recs, groups: dict[str, str], base=None) -> dict:
    """summarise() per bias type and valence group ("gender/positive"), and overall as without the split (SS is a
    mean over a type's target terms, so a term split over two groups would otherwise count twice)."""
    out = summarise(by_valence(recs, groups), None if base is None else by_valence(base, groups))
    out["overall"] = summarise(recs, base)["overall"]
    return out


def summarise(recs, base=None) -> dict:
    """Per bias type and overall: SS, LMS, and the mean margins in nats per token (changes against `base`)."""
    summary = pooled_summary(recs)
    out = {}
    pairs = list(zip(recs, base)) if base is not None else [(r, None) for r in recs]
    for b in sorted({r["bias_type"] for r in recs}) + ["overall"]:
        rows = [(r, q) for r, q in pairs if b == "overall" or r["bias_type"] == b]
        v = summary[b]
        row = {"SS": v["SS"], "SS_se": v["SS_se"], "LMS": v["LMS"], "n": v["n_examples"], "terms": v["n_terms"],
               "margin": v["margin"]}
        if base is not None:
            moves = mean_moves(rows)
            row.update({k: moves[k] for k in ("d_margin", "d_stereo_vs_unrel", "d_anti_vs_unrel")})
        out[b] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="run folder (splits.json, config.json, adapters)")
    ap.add_argument("--adapters", default="", help="comma-separated adapter folders (trained on the same base "
                                                  "model, scored on this run's dev split)")
    ap.add_argument("--split", default="dev", help="comma-separated: dev, train or both (train,dev)")
    ap.add_argument("--out", default=None, help="JSON file for the results (default: RUN/dev_margins.json); with "
                                               "more than one split, {split: {adapter: ...}}")
    ap.add_argument("--model", default=None, help="base model (default: the run's)")
    ap.add_argument("--by-valence", action="store_true", help="split each bias type by the valence of its pairs "
                                                               "(needs vaderSentiment)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16 (only fast on CPUs with native bf16)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    run = Path(a.run)
    splits = comma_list(a.split)
    data = {s: split_examples(run, s) for s in splits}
    model_name = a.model or data[splits[0]][1]
    groups = None
    if a.by_valence:
        from biasunlearn.errors import ConfigError
        from biasunlearn.unlearn.valence import pair_valence
        try:
            groups = {s: pair_valence(data[s][0]) for s in splits}
        except ConfigError as e:
            raise SystemExit(f"--by-valence: {e}") from e
    results: dict = {s: {} for s in splits}
    base: dict = {}
    for name in ["base"] + comma_list(a.adapters):
        model, tok, _ = load_model(model_name, adapter=None if name == "base" else name, dtype=a.dtype)
        for split in splits:
            with torch.no_grad():
                recs = stereoset_records(model, tok, data[split][0])
            base.setdefault(split, recs)
            against = None if name == "base" else base[split]
            row = results[split][name] = summarise(recs, against) if groups is None else \
                summarise_by_valence(recs, groups[split], against)
            print(f"{name} ({split}):", flush=True)
            for b, v in row.items():
                extra = "" if "d_margin" not in v else (f"  d_margin {v['d_margin']:+.4f}  d(stereo-unrel) "
                                                        f"{v['d_stereo_vs_unrel']:+.4f}  d(anti-unrel) "
                                                        f"{v['d_anti_vs_unrel']:+.4f}")
                print(f"  {b:>10}: SS {v['SS']:5.1f} ± {v['SS_se']:4.1f} ({v['terms']} terms)  LMS {v['LMS']:5.1f}  margin {v['margin']:+.4f}{extra}",
                      flush=True)
        del model
        gc.collect()
    write_json(Path(a.out) if a.out else run / "dev_margins.json", results[splits[0]] if len(splits) == 1 else results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
