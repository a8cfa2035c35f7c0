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
from ..io import read_log_jsonl
from ..metrics import mean_margins, ss_standard_error, stereoset_scores


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
    margins = mean_margins(records)
    return {b: {"SS": round(v["SS"], 2), "SS_se": round(se[b], 2), "LMS": round(v["LMS"], 2),
                "margin": round(margins[b], 4), "n_examples": v["n_examples"], "n_terms": v["n_terms"]}
            for b, v in m.items()}


def _weighted_mean(pairs) -> float:
    """Mean of the values of (weight, value) pairs, weighted."""
    return sum(w * x for w, x in pairs) / sum(w for w, _ in pairs)


def _stratified_se(pairs) -> float:
    """Standard error of a weighted mean of independent strata from their (weight, standard error) pairs."""
    total = sum(w for w, _ in pairs)
    return sum((w / total * se) ** 2 for w, se in pairs) ** 0.5


def pooled_dev_curve(run_dirs, allow_partial: bool = False) -> dict:
    """The held-out curve of a cross-validated recipe, from the runs' dev logs alone (no model is loaded): at every
    dev check that all K runs reached, each bias type's SS pooled over the K folds, i.e. over every term of the pool.

    SS is a mean over target terms, so the pooled SS of a type is its fold SS weighted by the fold's number of terms
    of that type (`dev_term_counts` in splits.json), and the overall SS and LMS are weighted by the folds' total term
    counts: exactly what scoring the pooled records would give. The mean margin is a mean over examples, so it is
    weighted by the folds' dev example counts. The folds are disjoint draws, so the pooled standard error is the
    stratified one, sqrt(sum((w_k * se_k)^2)) over the folds' logged bootstrap errors.

    Each run's pauses and swaps were decided on its own fold, so the curve is that of the recipe as a whole
    (controller included), held out at every step. With allow_partial, fewer than K folds are pooled (over their
    terms only). Returns {"steps": [...], "rows": [dev_log-like rows],
    "dropped_steps": {run: [steps not reached by every run]}}."""
    runs = [Path(r) for r in run_dirs]
    docs = read_fold_splits(runs)
    if missing_folds(docs) and not allow_partial:
        raise ConfigError(f"folds {missing_folds(docs)} of {docs[0]['dev_folds']} have no run: a pooled curve "
                          "needs every fold")
    logs = []
    for run in runs:
        p = run / "dev_log.jsonl"
        if not p.exists():
            raise ConfigError(f"{p}: missing (the run made no dev check yet)")
        rows = {}
        for r in read_log_jsonl(p):  # a line a kill cut short is skipped with a warning (the run can resume)
            try:
                rows[int(r["step"])] = r
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{p}: not a dev check row (no whole-number step): {json.dumps(r)[:80]}") from None
        logs.append(rows)
    common = sorted(set.intersection(*(set(rows) for rows in logs)))
    if not common:
        raise ConfigError("the runs share no dev-check step: " +
                          "; ".join(f"{r}: {sorted(rows)[:3]}..." for r, rows in zip(runs, logs)))
    dropped = {str(r): sorted(set(rows) - set(common)) for r, rows in zip(runs, logs) if set(rows) - set(common)}
    # per fold, the weights each pooled number takes: terms for SS and LMS, examples for the margin
    term_w = [{**d["dev_term_counts"], "overall": sum(d["dev_term_counts"].values())} for d in docs]
    ex_w = [{**d["counts"]["dev"], "overall": sum(d["counts"]["dev"].values())} for d in docs]
    types = sorted(set().union(*(d["dev_term_counts"] for d in docs)))
    out_rows = []
    for step in common:
        rows = [rows[step] for rows in logs]
        row = {"step": step, "ss": {}, "ss_se": {}, "margin": {}}
        for b in types + ["overall"]:
            folds = [(t[b], e[b], r) for t, e, r in zip(term_w, ex_w, rows) if t.get(b, 0)]  # folds holding b
            ss = _weighted_mean([(t, r["ss_overall"] if b == "overall" else r["ss"][b]) for t, _, r in folds])
            if b == "overall":
                row["ss_overall"] = ss
                row["lms"] = _weighted_mean([(t, r["lms"]) for t, _, r in folds])
            else:
                row["ss"][b] = ss
            if all(b in r.get("ss_se", {}) for *_, r in folds):
                row["ss_se"][b] = round(_stratified_se([(t, r["ss_se"][b]) for t, _, r in folds]), 2)
            if all(b in r.get("margin", {}) for *_, r in folds):
                row["margin"][b] = round(_weighted_mean([(e, r["margin"][b]) for _, e, r in folds]), 5)
        for key in ("ss_se", "margin"):  # logs from before these were written have none
            if not row[key]:
                del row[key]
        row["n_terms"] = {b: sum(t.get(b, 0) for t in term_w) for b in types}
        row["paused"] = {b: sum(1 for r in rows if r.get("directions", {}).get(b, 1) == 0) for b in types}
        out_rows.append(row)
    return {"steps": common, "rows": out_rows, "dropped_steps": dropped, "folds": docs[0]["dev_folds"],
            "missing_folds": missing_folds(docs)}
