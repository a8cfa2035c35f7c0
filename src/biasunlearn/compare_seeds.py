"""`biasunlearn compare --seeds 42,7,11`: the comparison repeated at several training seeds, and one report of each
method's mean and spread over them.

    run_compare_seeds("smollm2-135m", ["base", "cda", "dpo", "biasunlearn"], "runs/compare", seeds=[42, 7, 11])

Each seed's comparison is an ordinary `compare` folder, <out>/seed-<s>/, run with the setting seed=<s>, which draws
the dev slice, the adapter's start, the batch order and the sampled KL text of every trained method. Methods that do
not train (the base model, Self-Debias) do not depend on the seed: they are evaluated once, in the first seed's
folder, and copied into the others, where `compare` reuses them because their settings are the same.

<out>/report.md and report.html give, for each method, the mean and the sample standard deviation over the seeds of
every headline number, the numbers of each seed, and each method's difference from BiasUnlearn paired by seed;
<out>/seeds_summary.json holds all of them. The spread over seeds is the training's own variation: every seed is read
on the same held-out files, so the test split's sampling noise, common to all of them, is not in it (each seed's
method's results.json holds StereoSet's per-type standard errors).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import sys
from pathlib import Path

from . import interrupt
from .errors import ConfigError
from .io import atomic_write_text, check_folder_path, comma_list, folder_lock, write_json

PLAN = "compare_seeds.json"
SUMMARY = "seeds_summary.json"
_DOMAINS = ("gender", "profession", "race", "religion", "overall")


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_seeds(seeds) -> list[int]:
    """'42,7,11' or [42, 7, 11] -> [42, 7, 11]; each an integer, none twice."""
    items = comma_list(seeds) if isinstance(seeds, str) else list(seeds or [])
    out = []
    for s in items:
        try:
            v = int(s)
        except (TypeError, ValueError):
            raise ConfigError(f"--seeds: {s!r} is not an integer (expected e.g. 42,7,11)") from None
        if isinstance(s, float) and s != v:
            raise ConfigError(f"--seeds: {s!r} is not an integer (expected e.g. 42,7,11)")
        if v in out:
            raise ConfigError(f"--seeds: seed {v} is given twice")
        out.append(v)
    if not out:
        raise ConfigError("--seeds: no seed given (expected e.g. 42,7,11)")
    return out


def seed_folder(out, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def run_compare_seeds(model: str = "smollm2-135m", methods=None, out="runs/compare", ablations: bool = False, *,
                      seeds=(42, 7, 11), config_overrides: dict | None = None, rerun=(), log=_log, **kw) -> dict:
    """`run_compare` once per seed into <out>/seed-<s>/ (finished methods there are reused, as by `compare`), then
    the pooled report. Keyword arguments other than these are `run_compare`'s. Returns {"seeds": [...],
    "results": {seed: {method: results document}}, "report": path, "html": path}."""
    from .compare import TRAINED, check_rerun, resolve_methods, run_compare

    seeds = parse_seeds(seeds)
    overrides = dict(config_overrides or {})
    if "seed" in overrides:
        raise ConfigError(f"--seeds {','.join(map(str, seeds))} and the setting seed={overrides['seed']} were both "
                          "given: --seeds sets each run's seed")
    names = resolve_methods(methods, ablations)
    out = check_folder_path(out)
    rerun = check_rerun(rerun, names)  # before any seed runs
    # one comparison at a time in a folder (each seed's run_compare also holds its own seed folder)
    with folder_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / PLAN, {"model": model, "methods": names, "ablations": ablations, "seeds": seeds,
                                "folders": {str(s): seed_folder(out, s).name for s in seeds},
                                "started": _dt.datetime.now(_dt.timezone.utc).isoformat()})
        untrained = [n for n in names if n not in TRAINED]
        results = {}
        for i, s in enumerate(seeds):
            interrupt.check()  # a Ctrl-C swallowed during the last seed stops here, before the next one starts
            sub = seed_folder(out, s)
            sub_rerun = rerun
            if i > 0:
                # the first seed's evaluation of a method that does not train stands for every seed
                first = seed_folder(out, seeds[0])
                for n in untrained:
                    if (first / n / "results.json").exists():
                        sub.mkdir(parents=True, exist_ok=True)
                        shutil.rmtree(sub / n, ignore_errors=True)
                        shutil.copytree(first / n, sub / n)
                trained_here = [n for n in names if n in TRAINED]
                sub_rerun = [n for n in (trained_here if "all" in rerun else rerun) if n not in untrained]
            log(f"[compare] seed {s} ({i + 1} of {len(seeds)}) -> {sub}")
            res = run_compare(model, names, sub, ablations=False, config_overrides={**overrides, "seed": s},
                              rerun=sub_rerun, log=log, **kw)
            results[s] = res["results"]
        paths = write_seeds_report(out, seeds, names)
        log(f"[compare] report over seeds {', '.join(map(str, seeds))}: {paths['report']} and {paths['html']}")
        return {"seeds": seeds, "results": results, **paths}


# --- numbers --------------------------------------------------------------------------------------------------

def headline(doc: dict, base: dict | None) -> dict:
    """The numbers pooled over seeds from one results document (report.headline_metrics, plus SS per bias type);
    ΔLMS and the perplexity change against `base`, the base model's document of the same seed (None where it or the
    number is missing)."""
    from .report import _get, headline_metrics

    h, hb = headline_metrics(doc), headline_metrics(base or {})
    r = {f"ss_{d}": _get(doc, "benchmarks", "stereoset", "metrics", "intrasentence", d, "SS") for d in _DOMAINS}
    lms, base_lms = h["lms_intra"], hb["lms_intra"]
    r["lms"] = lms
    r["dlms"] = None if lms is None or base_lms is None else lms - base_lms
    r["icat"] = h["icat_intra"]
    r["crows"] = h["crows"]
    r["bbq_bias_ambig"], r["bbq_bias_disambig"] = h["bbq_bias_ambig"], h["bbq_bias_disambig"]
    ppl, base_ppl = h["ppl"], hb["ppl"]
    r["ppl"] = ppl
    r["ppl_change_pct"] = None if ppl is None or not base_ppl else 100.0 * (ppl - base_ppl) / base_ppl
    return r


def mean_sd(values) -> dict:
    """{"n", "mean", "sd"} of the numbers that are not None; sd is the sample standard deviation (n − 1), None
    below two values."""
    v = [float(x) for x in values if x is not None]
    n = len(v)
    if not n:
        return {"n": 0, "mean": None, "sd": None}
    m = sum(v) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": m, "sd": sd}


def pool_seeds(per_seed: dict) -> dict:
    """per_seed {seed: {method: headline dict}} -> {"methods": {method: {metric: {"n", "mean", "sd", "values":
    {seed: value}}}}, "paired": {method: {metric: {...}}}, "paired_against": method}. "paired" is each method's
    difference from BiasUnlearn (in an ablation study without it, from the ablations' full method) at the same seed, over the seeds that have both: SS overall as the distance from 50 (|SS − 50|; negative: the
    method is nearer level than BiasUnlearn), |ΔLMS| (negative: nearer the base model's LMS), ICAT and the
    perplexity change."""
    methods = []
    for rows in per_seed.values():
        methods += [m for m in rows if m not in methods]
    metrics = []
    for rows in per_seed.values():
        for h in rows.values():
            metrics += [k for k in h if k not in metrics]
    pooled = {}
    for m in methods:
        pooled[m] = {}
        for k in metrics:
            vals = {str(s): rows[m].get(k) for s, rows in per_seed.items() if m in rows}
            pooled[m][k] = {**mean_sd(vals.values()), "values": vals}
    paired = {}
    ref = "biasunlearn" if "biasunlearn" in methods else "abl_full"  # an ablation study: the full method
    for m in methods:
        if m in (ref, "base"):
            continue
        diffs = {"ss_distance": {}, "abs_dlms": {}, "icat": {}, "ppl_change_pct": {}}
        for s, rows in per_seed.items():
            a, b = rows.get(m), rows.get(ref)
            if a is None or b is None:
                continue
            if a.get("ss_overall") is not None and b.get("ss_overall") is not None:
                diffs["ss_distance"][str(s)] = abs(a["ss_overall"] - 50) - abs(b["ss_overall"] - 50)
            if a.get("dlms") is not None and b.get("dlms") is not None:
                diffs["abs_dlms"][str(s)] = abs(a["dlms"]) - abs(b["dlms"])
            for k in ("icat", "ppl_change_pct"):
                if a.get(k) is not None and b.get(k) is not None:
                    diffs[k][str(s)] = a[k] - b[k]
        if any(diffs.values()):
            paired[m] = {k: {**mean_sd(v.values()), "values": v} for k, v in diffs.items()}
    return {"methods": pooled, "paired": paired, "paired_against": ref if paired else None}


# --- the report -----------------------------------------------------------------------------------------------

def _ms(stat: dict | None, nd=2, signed=False) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    m = f"{stat['mean']:+.{nd}f}" if signed else f"{stat['mean']:.{nd}f}"
    return m if stat.get("sd") is None else f"{m} ± {stat['sd']:.{nd}f}"


def _same_budget(plans: dict) -> list[str]:
    """Warnings when the seeds' comparisons differ in anything but the seed (budget, evaluation, model)."""
    def strip(p):
        p = json.loads(json.dumps(p or {}))
        b = p.get("budget") or {}
        b.pop("seed", None)
        (b.get("config_overrides") or {}).pop("seed", None)
        return json.dumps({"model": p.get("model"), "budget": b, "eval": p.get("eval")}, sort_keys=True)

    keys = {s: strip(p) for s, p in plans.items()}
    if len(set(keys.values())) <= 1:
        return []
    first = next(iter(keys))
    other = [str(s) for s, k in keys.items() if k != keys[first]]
    return [f"**warning: the comparisons of seed(s) {', '.join(other)} used another budget, evaluation or model "
            f"than seed {first}** (see their compare.json): the pooled numbers mix settings."]


def write_seeds_report(out, seeds=None, names: list[str] | None = None) -> dict:
    """Build <out>/report.md, report.html and seeds_summary.json from the seed folders <out>/seed-<s>/ alone."""
    from . import report as R
    from .compare import _consistency, label_of, read_plan, read_results

    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"{out}: no such folder (--report-only --seeds reports an earlier compare --seeds --out)")
    plan = read_plan(out / PLAN) if (out / PLAN).exists() else {}
    seeds = parse_seeds(seeds if seeds is not None else plan.get("seeds"))
    missing = [str(seed_folder(out, s)) for s in seeds if not seed_folder(out, s).is_dir()]
    if missing:
        raise ConfigError(f"no comparison folder for: {', '.join(missing)} (compare --seeds writes <out>/seed-<s>/)")
    docs, plans = {}, {}
    for s in seeds:
        sub = seed_folder(out, s)
        plans[s] = read_plan(sub / "compare.json") if (sub / "compare.json").exists() else {}
        want = names or plan.get("methods") or plans[s].get("methods") or \
            [p.name for p in sorted(sub.iterdir()) if (p / "results.json").exists()]
        docs[s] = {n: read_results(sub / n / "results.json") for n in want if (sub / n / "results.json").exists()}
    order = []
    for s in seeds:
        order += [n for n in docs[s] if n not in order]
    if not order:
        raise ConfigError(f"{out}: no method results in any seed folder")
    per_seed = {s: {n: headline(d, docs[s].get("base")) for n, d in docs[s].items()} for s in seeds}
    pooled = pool_seeds(per_seed)
    summary = {"seeds": seeds, "methods": order, "per_seed": {str(s): v for s, v in per_seed.items()}, **pooled,
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    write_json(out / SUMMARY, summary)

    P = pooled["methods"]
    model = plan.get("model") or next((p.get("model") for p in plans.values() if p.get("model")), "?")
    md = [f"# Comparison of debiasing methods over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}: {model}", "",
          f"Seeds {', '.join(map(str, seeds))}; each seed's comparison, with its budget, costs and figures, is in "
          "its own folder (each method's results.json there holds StereoSet's per-type standard errors): "
          + ", ".join(f"[seed-{s}](seed-{s}/report.md)" for s in seeds) + ". Created "
          f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
          "Each cell is the mean ± the sample standard deviation over the seeds that have the method (n in the "
          "second column). The seed draws the dev slice, the adapter's start, the batch order and the sampled KL "
          "text; every seed is read on the same held-out files, so the spread is the training's own variation, and "
          "the test split's sampling noise, common to every seed, is not in it. The base model and Self-Debias do "
          "not train: one evaluation stands for every seed (sd 0).", "", "## Held-out data and settings", ""]
    lines = []
    for s in seeds:
        for line in _consistency(docs[s], plans[s]):
            if "warning" in line:
                lines.append(f"- seed {s}: {line[2:]}")
    merged = {f"{n}@{s}": d for s in seeds for n, d in docs[s].items()}
    lines += [x for x in _consistency(merged, {}) if "warning" in x]
    lines += [f"- {x}" for x in _same_budget(plans)]
    md += lines or ["- Within each seed every trained method used the same train/dev split, and every method of "
                    "every seed was evaluated with the same settings on the same held-out files (sha256 checked); "
                    "the seeds' budgets differ only in the seed."]

    def n_of(m):
        return max((st.get("n", 0) for st in P[m].values()), default=0)

    md += ["", "## StereoSet intrasentence (Table 1 layout)", "",
           "| Method | seeds | " + " | ".join(name for _, name in R.SS_COLUMNS) + " | ΔLMS → 0 | ICAT ↑ |",
           "|---|---|" + "---|" * (len(R.SS_COLUMNS) + 2)]
    for m in order:
        cells = " | ".join(_ms(P[m].get(f"ss_{d}")) for d, _ in R.SS_COLUMNS)
        dl = f"LMS {_ms(P[m].get('lms'))}" if m == "base" else _ms(P[m].get("dlms"), signed=True)
        md.append(f"| {label_of(m)} | {n_of(m)} | {cells} | {dl} | {_ms(P[m].get('icat'))} |")
    same = {}
    for s in seeds:
        for n, d in docs[s].items():
            twin = (d.get("method") or {}).get("same_as")
            if twin:
                same[n] = twin
    md += [""] + [f"- {label_of(n)}: the same settings as {label_of(t)} under this config, so the same runs."
                  for n, t in same.items()] if same else []
    measured = {b for s in seeds for d in docs[s].values() for b in (d.get("benchmarks") or {})}
    md += ["", "## CrowS-Pairs, BBQ and perplexity", ""]
    if not measured & {"crows_pairs", "bbq", "perplexity"}:
        md.append("not measured (not in --benchmarks)")
    else:
        md += ["| Method | seeds | CrowS-Pairs (→ 50) | BBQ bias ambig (→ 0) | BBQ bias disambig (→ 0) | perplexity | "
               "Δ perplexity |", "|---|---|---|---|---|---|---|"]
        for m in order:
            dp = "–" if m == "base" else _ms(P[m].get("ppl_change_pct"), signed=True) + ("%" if P[m].get(
                "ppl_change_pct", {}).get("mean") is not None else "")
            md.append(f"| {label_of(m)} | {n_of(m)} | {_ms(P[m].get('crows'))} | {_ms(P[m].get('bbq_bias_ambig'))} | "
                      f"{_ms(P[m].get('bbq_bias_disambig'))} | {_ms(P[m].get('ppl'), 3)} | {dp} |")
    with_ppl = "perplexity" in measured
    md += ["", "## Each seed", "", "SS overall / ICAT" + (" / perplexity change (the base model: SS and ICAT)"
                                                         if with_ppl else "") + " per seed.", "",
           "| Method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for m in order:
        cells = []
        for s in seeds:
            h = per_seed[s].get(m)
            if h is None:
                cells.append("not run")
                continue
            cell = f"{R._cell(h.get('ss_overall'), False)} / {R._cell(h.get('icat'), False)}"
            if m != "base" and with_ppl:
                cell += f" / {R._cell(h.get('ppl_change_pct'), False, signed=True)}%" if h.get("ppl_change_pct") is not None else " / –"
            cells.append(cell)
        md.append(f"| {label_of(m)} | " + " | ".join(cells) + " |")
    if pooled["paired"]:
        ref = label_of(pooled["paired_against"])
        md += ["", f"## Against {ref}, paired by seed", "",
               f"Each method minus {ref} at the same seed, mean ± sd over the seeds that have both. Distance "
               f"from level is |SS − 50| (negative: nearer 50 than {ref}); the distance from the base "
               "model's LMS is |ΔLMS|, likewise; ICAT higher is better; the perplexity change in percentage points.", "",
               "| Method | seeds | Δ distance from SS 50 | Δ distance from base LMS | Δ ICAT | Δ perplexity change (points) | "
               f"{ref} nearer 50 |", "|---|---|---|---|---|---|---|"]
        for m, d in pooled["paired"].items():
            dist = d["ss_distance"]
            wins = sum(1 for x in dist["values"].values() if x > 0)
            md.append(f"| {label_of(m)} | {dist['n']} | {_ms(dist, signed=True)} | {_ms(d['abs_dlms'], signed=True)} | "
                      f"{_ms(d['icat'], signed=True)} | {_ms(d['ppl_change_pct'], signed=True)} | "
                      f"{wins} of {dist['n']} |")
    absent = [f"{label_of(n)} (seed {s})" for s in seeds for n in order if n not in docs[s]]
    if absent:
        md += ["", "Not finished (no results.json): " + ", ".join(absent) + "."]
    md += ["", f"Every number: [{SUMMARY}]({SUMMARY})."]
    text = "\n".join(md) + "\n"
    rep = atomic_write_text(out / "report.md", text)
    html = atomic_write_text(out / "report.html", R.markdown_to_html(text, base_dir=out, title="biasunlearn compare over seeds"))
    return {"report": str(rep), "html": str(html), "summary": str(out / SUMMARY)}


__all__ = ["run_compare_seeds", "write_seeds_report", "parse_seeds", "pool_seeds", "headline", "mean_sd"]
