"""Cross-validation by target term: pooling the held-out folds of K runs made with `dev_folds: K`, `dev_fold: k`.

One run's dev slice holds a few target terms per bias type, so its dev SS is uncertain by many points (see
`metrics.ss_standard_error`). K runs of one recipe, each holding out a different fold of the pool's terms, between
them hold out every term once; scoring each run's adapter on its own fold and pooling the records gives a held-out
estimate over all the pool's terms. Only runs that are folds of one partition may be pooled: the same pool files
(checksums), the same seed and K, and K distinct folds."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..metrics import ss_standard_error, stereoset_scores
from .trainer import dev_margins


def read_fold_splits(run_dirs) -> list[dict]:
    """Each run's splits.json, checked to be folds of one partition: returns them in the runs' order."""
    docs = []
    for run in map(Path, run_dirs):
        p = run / "splits.json"
        if not p.exists():
            raise ConfigError(f"{p}: missing (not a finished or started training run)")
        doc = json.loads(p.read_text())
        if "dev_folds" not in doc:
            raise ConfigError(f"{p}: this run's dev is not a term fold (train it with dev_folds: K, dev_fold: k)")
        docs.append((p, doc))
    first_p, first = docs[0]
    for p, doc in docs[1:]:
        for key in ("dev_folds", "seed", "sources"):
            if doc[key] != first[key]:
                raise ConfigError(f"{p}: {key} {doc[key]!r} differs from {first_p}'s {first[key]!r}; only folds of "
                                  "one partition can be pooled")
    seen: dict[int, Path] = {}
    for p, doc in docs:
        if doc["dev_fold"] in seen:
            raise ConfigError(f"{p}: fold {doc['dev_fold']} is also {seen[doc['dev_fold']]}'s")
        seen[doc["dev_fold"]] = p
    ids = [set(doc["dev_ids"]) for _, doc in docs]
    if sum(map(len, ids)) != len(set().union(*ids)):
        raise ConfigError("the runs' dev folds share examples: they are not folds of one partition")
    return [doc for _, doc in docs]


def missing_folds(docs: list[dict]) -> list[int]:
    return sorted(set(range(docs[0]["dev_folds"])) - {d["dev_fold"] for d in docs})


def pooled_summary(records: list[dict], resamples: int = 2000) -> dict:
    """SS (± bootstrap standard error), LMS, mean margin, examples and terms per bias type and overall, over the
    pooled held-out records."""
    m = stereoset_scores(records)
    se = ss_standard_error(records, resamples=resamples)
    margins = dev_margins(records)
    return {b: {"SS": round(v["SS"], 2), "SS_se": round(se[b], 2), "LMS": round(v["LMS"], 2),
                "margin": round(margins[b], 4), "n_examples": v["n_examples"], "n_terms": v["n_terms"]}
            for b, v in m.items()}
