"""Markdown tables from results documents (no model needed: a report is rebuilt from the JSON alone)."""
from __future__ import annotations

DOMAINS = ("gender", "profession", "race", "religion", "overall")


def _f(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"


def _overall_last(keys) -> list:
    """Row names sorted, "overall" last, as the before/after tables order them."""
    return sorted(k for k in keys if k != "overall") + (["overall"] if "overall" in keys else [])


def sample_note(*docs) -> str | None:
    """A warning when any of the results documents read only a sample of each benchmark (`--limit`, eval_limit):
    its figures are a quick look, far less precise than a full read, and a table of them must say so."""
    limits = sorted({(d.get("eval_config") or {}).get("limit") for d in docs if d} - {None, 0})
    if not limits:
        return None
    return (f"**A quick look, not a measurement: at most {' / '.join(map(str, limits))} examples per benchmark (a "
            "seeded sample: --limit, eval_limit), so every figure below is far less precise than a full read.**")


def bbq_sample_line(*docs) -> str | None:
    """The line under a BBQ table saying that its examples are a per-category sample (BBQ defaults to one), if so."""
    ks = sorted({(d.get("eval_config") or {}).get("bbq_per_category") for d in docs if d} - {None, 0})
    if not ks:
        return None
    return (f"A seeded sample of at most {' / '.join(map(str, ks))} examples per category (`--bbq-per-category`, "
            "`eval_bbq_per_category`; 0 reads them all): n is what was scored.")


def eval_markdown(doc: dict) -> str:
    """One results document as markdown tables, one per benchmark present."""
    lines = []
    m = doc.get("model", {})
    lines.append(f"## Evaluation: {m.get('spec', '?')}" + (f" + adapter {m['adapter']}" if m.get("adapter") else ""))
    note = sample_note(doc)
    if note:
        lines += ["", note]
    b = doc.get("benchmarks", {})
    if "stereoset" in b:
        for task, mets in b["stereoset"]["metrics"].items():
            se = (b["stereoset"].get("ss_standard_error") or {}).get(task, {})  # absent in older results
            lines += ["", f"### StereoSet {task} (SS → 50, LMS ↑, ICAT ↑)", "",
                      "| domain | SS | SS ± (bootstrap SE) | LMS | ICAT | examples | terms |",
                      "|---|---|---|---|---|---|---|"]
            for d in DOMAINS:
                if d in mets:
                    r = mets[d]
                    lines.append(f"| {d} | {_f(r['SS'])} | {_f(se.get(d))} | {_f(r['LMS'])} | {_f(r['ICAT'])} | "
                                 f"{r['n_examples']} | {r['n_terms']} |")
            terms = terms_from_doc(doc, task)
            if terms:
                lines += ["", terms_farthest_markdown(terms, heading_level=4).rstrip("\n")]
    if "crows_pairs" in b:
        mets = b["crows_pairs"]["metrics"]
        lines += ["", "### CrowS-Pairs (% preferring sent_more, → 50)", "",
                  "| bias type | length-normalised | summed log-prob | pairs |", "|---|---|---|---|"]
        for k in _overall_last(mets["length_normalised"]):
            r = mets["length_normalised"][k]
            lines.append(f"| {k} | {_f(r['score'])} | {_f(mets['summed_logprob'][k]['score'])} | {r['n']} |")
    if "bbq" in b:
        lines += ["", "### BBQ (accuracy %, bias scores x100, approximate targets)", "",
                  "| category | acc | acc ambig | acc disambig | bias disambig | bias ambig | n |",
                  "|---|---|---|---|---|---|---|"]
        for k in _overall_last(b["bbq"]["metrics"]):
            r = b["bbq"]["metrics"][k]
            lines.append(f"| {k} | {_f(r['acc'])} | {_f(r['acc_ambig'])} | {_f(r['acc_disambig'])} | "
                         f"{_f(r['bias_disambig'])} | {_f(r['bias_ambig'])} | {r['n']} |")
        if bbq_sample_line(doc):
            lines += ["", bbq_sample_line(doc)]
    if "perplexity" in b:
        r = b["perplexity"]["metrics"]
        lines += ["", "### Perplexity (WikiText-2 raw test)", "", f"{_f(r['perplexity'], 3)} over {r['tokens_scored']} tokens "
                  f"({b['perplexity'].get('note', '')})"]
    times = ", ".join(f"{k} {v.get('wall_time_s', 0):.1f}s" for k, v in b.items())
    lines += ["", f"Wall time: {times}."]
    return "\n".join(lines) + "\n"


# --- before / after -------------------------------------------------------------------------------------------

BBQ_COLUMNS = (("acc", "acc"), ("acc_ambig", "acc ambig"), ("acc_disambig", "acc disambig"),
               ("bias_disambig", "bias disambig"), ("bias_ambig", "bias ambig"))
_BENCH_TITLES = {"stereoset": "StereoSet", "crows_pairs": "CrowS-Pairs", "bbq": "BBQ", "perplexity": "Perplexity"}


def _d(before, after, nd=2) -> str:
    if before is None or after is None:
        return "–"
    return f"{after - before:+.{nd}f}"


def _trio(before, after, nd=2) -> str:
    return f"{_f(before, nd)} | {_f(after, nd)} | {_d(before, after, nd)}"


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _model_label(doc: dict) -> str:
    m = doc.get("model", {}) or {}
    label = str(m.get("spec", "?"))
    if m.get("adapter"):
        label += f" + adapter {m['adapter']}"
    return label


def _config_differences(before: dict, after: dict) -> list[str]:
    a, b = before.get("eval_config", {}) or {}, after.get("eval_config", {}) or {}
    # batching only: same numbers either way; which benchmarks (and StereoSet tasks) ran: a section either side
    # lacks says "not measured" itself, and the sections both have are comparable
    skip = {"progress", "max_tokens", "benchmarks", "stereoset_intersentence"}
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


def _data_differences(before: dict, after: dict) -> list[str]:
    out = []
    for name in sorted(set(before.get("benchmarks", {})) & set(after.get("benchmarks", {}))):
        sa = _get(before, "benchmarks", name, "data", "sha256")
        sb = _get(after, "benchmarks", name, "data", "sha256")
        if sa is not None and sb is not None and sa != sb:
            out.append(name)
    return out


def before_after_markdown(before: dict, after: dict, before_label: str = "before", after_label: str = "after",
                          heading_level: int = 3, not_measured: bool = True) -> str:
    """Two results documents side by side: before | after | Δ (after − before) for every metric both measured.

    StereoSet per task and domain (SS, LMS, ICAT), CrowS-Pairs per bias type (both scorings), BBQ per category,
    perplexity with its relative change. A benchmark that either document lacks is listed as "not measured"
    (when `not_measured`). Differences in evaluation settings or data checksums are stated above the tables,
    because then the two columns are not comparable.
    """
    h = "#" * heading_level
    note = sample_note(before, after)
    lines = ([note, ""] if note else []) + [f"- {before_label}: {_model_label(before)}",
                                            f"- {after_label}: {_model_label(after)}"]
    diff_cfg = _config_differences(before, after)
    if diff_cfg:
        lines.append(f"- **warning:** the two evaluations used different settings ({', '.join(diff_cfg)}); "
                     "the columns are not directly comparable")
    diff_data = _data_differences(before, after)
    if diff_data:
        lines.append(f"- **warning:** different data files (sha256) for {', '.join(diff_data)}")
    lines.append("- Δ = after − before. SS and CrowS-Pairs: 50 is the unbiased point; BBQ bias scores: 0 is unbiased.")
    bb, ab = before.get("benchmarks", {}) or {}, after.get("benchmarks", {}) or {}
    head = f"{before_label} | {after_label} | Δ"
    sep3 = "---|---|---"
    for name in ("stereoset", "crows_pairs", "bbq", "perplexity"):
        if name not in bb or name not in ab:
            if not_measured:
                which = ("in neither read" if name not in bb and name not in ab
                         else f"in the {before_label if name not in bb else after_label} read")
                lines += ["", f"{h} {_BENCH_TITLES[name]}", "", f"not measured ({which})"]
            continue
        if name == "stereoset":
            mb, ma = bb[name].get("metrics", {}), ab[name].get("metrics", {})
            for task in [t for t in ("intrasentence", "intersentence") if t in mb or t in ma]:
                if task not in mb or task not in ma:
                    lines += ["", f"{h} StereoSet {task}", "", "not measured (" + (before_label if task not in mb else after_label) + ")"]
                    continue
                lines += ["", f"{h} StereoSet {task} (SS → 50, LMS ↑, ICAT ↑)", "",
                          f"| domain | SS {head} | LMS {head} | ICAT {head} | examples |",
                          f"|---|{sep3}|{sep3}|{sep3}|---|"]
                for d in DOMAINS:
                    if d in mb[task] or d in ma[task]:
                        rb, ra = mb[task].get(d, {}), ma[task].get(d, {})
                        lines.append(f"| {d} | {_trio(rb.get('SS'), ra.get('SS'))} | {_trio(rb.get('LMS'), ra.get('LMS'))} | "
                                     f"{_trio(rb.get('ICAT'), ra.get('ICAT'))} | {ra.get('n_examples', rb.get('n_examples', '–'))} |")
        elif name == "crows_pairs":
            mb, ma = bb[name].get("metrics", {}), ab[name].get("metrics", {})
            lines += ["", f"{h} CrowS-Pairs (% preferring the more stereotypical sentence, → 50)", "",
                      f"| bias type | length-normalised {head} | summed log-prob {head} | pairs |",
                      f"|---|{sep3}|{sep3}|---|"]
            types = list(ma.get("length_normalised", {}) or mb.get("length_normalised", {}))
            types = _overall_last(types)
            for t in types:
                nb, na = _get(mb, "length_normalised", t, "score"), _get(ma, "length_normalised", t, "score")
                sb, sa = _get(mb, "summed_logprob", t, "score"), _get(ma, "summed_logprob", t, "score")
                n = _get(ma, "length_normalised", t, "n") or _get(mb, "length_normalised", t, "n") or "–"
                lines.append(f"| {t} | {_trio(nb, na)} | {_trio(sb, sa)} | {n} |")
        elif name == "bbq":
            mb, ma = bb[name].get("metrics", {}), ab[name].get("metrics", {})
            lines += ["", f"{h} BBQ (accuracy %, bias scores ×100 → 0, approximate targets)", "",
                      "| category | " + " | ".join(f"{lab} {head}" for _, lab in BBQ_COLUMNS) + " | n |",
                      "|---|" + "|".join(sep3 for _ in BBQ_COLUMNS) + "|---|"]
            cats = _overall_last(set(ma) | set(mb))
            for c in cats:
                rb, ra = mb.get(c, {}), ma.get(c, {})
                cells = " | ".join(_trio(rb.get(k), ra.get(k)) for k, _ in BBQ_COLUMNS)
                lines.append(f"| {c} | {cells} | {ra.get('n', rb.get('n', '–'))} |")
            if bbq_sample_line(before, after):
                lines += ["", bbq_sample_line(before, after)]
        else:
            rb, ra = bb[name].get("metrics", {}), ab[name].get("metrics", {})
            pb, pa = rb.get("perplexity"), ra.get("perplexity")
            rel = f"{100.0 * (pa - pb) / pb:+.2f}%" if pb and pa is not None else "–"
            lines += ["", f"{h} Perplexity (WikiText-2 raw test, ↓)", "",
                      f"| {before_label} | {after_label} | Δ | relative change | tokens |", "|---|---|---|---|---|",
                      f"| {_f(pb, 3)} | {_f(pa, 3)} | {_d(pb, pa, 3)} | {rel} | {ra.get('tokens_scored', '–')} |"]
    return "\n".join(lines) + "\n"


def headline_metrics(doc: dict) -> dict:
    """The few numbers that summarise one results document (None where not measured)."""
    b = doc.get("benchmarks", {}) or {}
    return {
        "ss_intra": _get(b, "stereoset", "metrics", "intrasentence", "overall", "SS"),
        "lms_intra": _get(b, "stereoset", "metrics", "intrasentence", "overall", "LMS"),
        "icat_intra": _get(b, "stereoset", "metrics", "intrasentence", "overall", "ICAT"),
        "ss_inter": _get(b, "stereoset", "metrics", "intersentence", "overall", "SS"),
        "crows": _get(b, "crows_pairs", "metrics", "length_normalised", "overall", "score"),
        "bbq_acc": _get(b, "bbq", "metrics", "overall", "acc"),
        "bbq_bias_ambig": _get(b, "bbq", "metrics", "overall", "bias_ambig"),
        "bbq_bias_disambig": _get(b, "bbq", "metrics", "overall", "bias_disambig"),
        "ppl": _get(b, "perplexity", "metrics", "perplexity"),
    }


def summary_markdown(rows: list[tuple[str, dict]]) -> str:
    """One line per (label, results document): the headline numbers of each, for comparing several models."""
    lines = ["| model | SS intra (→50) | LMS intra ↑ | ICAT intra ↑ | SS inter (→50) | CrowS (→50) | BBQ acc ↑ | "
             "BBQ bias ambig (→0) | BBQ bias disambig (→0) | perplexity ↓ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, doc in rows:
        h = headline_metrics(doc)
        lines.append(f"| {label} | {_f(h['ss_intra'])} | {_f(h['lms_intra'])} | {_f(h['icat_intra'])} | "
                     f"{_f(h['ss_inter'])} | {_f(h['crows'])} | {_f(h['bbq_acc'])} | {_f(h['bbq_bias_ambig'])} | "
                     f"{_f(h['bbq_bias_disambig'])} | {_f(h['ppl'], 3)} |")
    return "\n".join(lines) + "\n"


# --- comparison of methods (biasunlearn compare) ----------------------------------------------------------------

SS_COLUMNS = (("gender", "Gend."), ("profession", "Prof."), ("race", "Race"), ("religion", "Reli."),
              ("overall", "Overall"))
CROWS_COLUMNS = (("gender", "Gend."), ("race-color", "Race-color"), ("religion", "Reli."), ("overall", "Overall"))


def _best(values: dict, better) -> set:
    """Keys whose value is best by `better` (a sort key, lower is better); None values never win."""
    scored = {k: better(v) for k, v in values.items() if v is not None}
    if not scored:
        return set()
    top = min(scored.values())
    return {k for k, s in scored.items() if abs(s - top) < 1e-9}


def _cell(v, bold: bool, nd=2, signed=False) -> str:
    if v is None:
        return "–"
    s = f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"
    return f"**{s}**" if bold else s


def stereoset_comparison_markdown(rows: list, base_label: str | None = "base", task: str = "intrasentence") -> str:
    """The paper's Table 1 layout: SS per domain and overall (→ 50), ΔLMS against the base model (→ 0) and ICAT (↑),
    one row per (label, results document). The best value of each column among the non-base rows is bold. The base
    row shows its LMS in the ΔLMS column, as the paper does."""
    base = dict(rows).get(base_label) if base_label else None
    base_lms = _get(base or {}, "benchmarks", "stereoset", "metrics", task, "overall", "LMS")
    vals: dict = {}
    for label, doc in rows:
        m = _get(doc, "benchmarks", "stereoset", "metrics", task) or {}
        r = {d: _get(m, d, "SS") for d, _ in SS_COLUMNS}
        lms = _get(m, "overall", "LMS")
        r["dlms"] = None if lms is None or base_lms is None else lms - base_lms
        r["lms"] = lms
        r["icat"] = _get(m, "overall", "ICAT")
        vals[label] = r
    cand = [lab for lab, _ in rows if lab != base_label]
    best = {d: _best({lab: vals[lab][d] for lab in cand}, lambda v: abs(v - 50)) for d, _ in SS_COLUMNS}
    best["dlms"] = _best({lab: vals[lab]["dlms"] for lab in cand}, abs)
    best["icat"] = _best({lab: vals[lab]["icat"] for lab in cand}, lambda v: -v)
    head = " | ".join(name for _, name in SS_COLUMNS)
    lines = [f"| Method | {head} | ΔLMS → 0 | ICAT ↑ |", "|---|" + "---|" * (len(SS_COLUMNS) + 2)]
    for label, _ in rows:
        r = vals[label]
        cells = " | ".join(_cell(r[d], label in best[d]) for d, _ in SS_COLUMNS)
        if label == base_label:
            dl = f"LMS {_f(r['lms'])}"
        else:
            dl = _cell(r["dlms"], label in best["dlms"], signed=True)
        lines.append(f"| {label} | {cells} | {dl} | {_cell(r['icat'], label in best['icat'])} |")
    n = _get(base or (rows[0][1] if rows else {}), "benchmarks", "stereoset", "metrics", task, "overall", "n_examples")
    lines += ["", f"StereoSet {task}, SS in % (→ 50). Examples: {n if n is not None else '–'}. Bold: best among the "
              "methods (base model excluded)."]
    return "\n".join(lines) + "\n"


def crows_comparison_markdown(rows: list, base_label: str | None = "base", scoring: str = "length_normalised") -> str:
    """The paper's Table 2 layout: CrowS-Pairs score (% preferring the more stereotypical sentence, → 50) for gender,
    race-color and religion, plus overall; best among the non-base rows in bold."""
    vals = {label: {t: _get(doc, "benchmarks", "crows_pairs", "metrics", scoring, t, "score") for t, _ in CROWS_COLUMNS}
            for label, doc in rows}
    cand = [lab for lab, _ in rows if lab != base_label]
    best = {t: _best({lab: vals[lab][t] for lab in cand}, lambda v: abs(v - 50)) for t, _ in CROWS_COLUMNS}
    lines = ["| Method | " + " | ".join(n for _, n in CROWS_COLUMNS) + " |", "|---|" + "---|" * len(CROWS_COLUMNS)]
    for label, _ in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(vals[label][t], label in best[t]) for t, _ in CROWS_COLUMNS) + " |")
    ns = {t: _get(rows[0][1], "benchmarks", "crows_pairs", "metrics", scoring, t, "n") for t, _ in CROWS_COLUMNS} if rows else {}
    how = "length-normalised (mean token) log-probability" if scoring == "length_normalised" else "summed log-probability"
    lines += ["", f"Sentences compared by {how}. Pairs: " + ", ".join(f"{n} {ns.get(t) or '–'}" for t, n in CROWS_COLUMNS)
              + ". Bold: closest to 50 among the methods (base model excluded)."]
    return "\n".join(lines) + "\n"


def bbq_perplexity_comparison_markdown(rows: list, base_label: str | None = "base") -> str:
    """BBQ overall accuracy and bias scores (×100, → 0) and WikiText-2 perplexity with its change against the base
    model, one row per method."""
    base = dict(rows).get(base_label) if base_label else None
    base_ppl = _get(base or {}, "benchmarks", "perplexity", "metrics", "perplexity")
    lines = ["| Method | BBQ acc ↑ | acc ambig | acc disambig | bias ambig (→0) | bias disambig (→0) | perplexity ↓ | "
             "Δ perplexity | relative |", "|---|---|---|---|---|---|---|---|---|"]
    vals = {}
    for label, doc in rows:
        b = _get(doc, "benchmarks", "bbq", "metrics", "overall") or {}
        ppl = _get(doc, "benchmarks", "perplexity", "metrics", "perplexity")
        vals[label] = (b, ppl)
    cand = [lab for lab, _ in rows if lab != base_label]
    best_amb = _best({lab: vals[lab][0].get("bias_ambig") for lab in cand}, abs)
    best_dis = _best({lab: vals[lab][0].get("bias_disambig") for lab in cand}, abs)
    for label, _ in rows:
        b, ppl = vals[label]
        d = None if ppl is None or base_ppl is None else ppl - base_ppl
        rel = "–" if d is None or not base_ppl else f"{100.0 * d / base_ppl:+.2f}%"
        dtxt = "–" if label == base_label else _cell(d, False, 3, signed=True)
        rtxt = "–" if label == base_label else rel
        lines.append(f"| {label} | {_f(b.get('acc'))} | {_f(b.get('acc_ambig'))} | {_f(b.get('acc_disambig'))} | "
                     f"{_cell(b.get('bias_ambig'), label in best_amb)} | {_cell(b.get('bias_disambig'), label in best_dis)} | "
                     f"{_f(ppl, 3)} | {dtxt} | {rtxt} |")
    return "\n".join(lines) + "\n"


def bbq_category_comparison_markdown(rows: list) -> str:
    """BBQ bias scores per category (the paper's Figure 2 as a table): 'ambiguous / disambiguated' per cell."""
    cats = sorted({c for _, doc in rows for c in (_get(doc, "benchmarks", "bbq", "metrics") or {}) if c != "overall"})
    if not cats:
        return "not measured\n"
    lines = ["| Method | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for label, doc in rows:
        m = _get(doc, "benchmarks", "bbq", "metrics") or {}
        lines.append(f"| {label} | " + " | ".join(
            f"{_f(_get(m, c, 'bias_ambig'), 1)} / {_f(_get(m, c, 'bias_disambig'), 1)}" for c in cats) + " |")
    lines += ["", "Cells: bias score in ambiguous / disambiguated contexts (×100, → 0)."]
    return "\n".join(lines) + "\n"


def ablation_comparison_markdown(rows: list, base_label: str | None = "base", task: str = "intrasentence") -> str:
    """The paper's Table 5 layout: overall SS, LMS, ICAT (and ΔLMS against the base model) per ablation."""
    base = dict(rows).get(base_label) if base_label else None
    base_lms = _get(base or {}, "benchmarks", "stereoset", "metrics", task, "overall", "LMS")
    vals = {}
    for label, doc in rows:
        m = _get(doc, "benchmarks", "stereoset", "metrics", task, "overall") or {}
        lms = m.get("LMS")
        vals[label] = {"SS": m.get("SS"), "LMS": lms, "ICAT": m.get("ICAT"),
                       "dlms": None if lms is None or base_lms is None else lms - base_lms}
    cand = [lab for lab, _ in rows if lab != base_label]
    best = {"SS": _best({lab: vals[lab]["SS"] for lab in cand}, lambda v: abs(v - 50)),
            "LMS": _best({lab: vals[lab]["LMS"] for lab in cand}, lambda v: -v),
            "ICAT": _best({lab: vals[lab]["ICAT"] for lab in cand}, lambda v: -v),
            "dlms": _best({lab: vals[lab]["dlms"] for lab in cand}, abs)}
    lines = ["| Method | SS → 50 | LMS ↑ | ΔLMS → 0 | ICAT ↑ |", "|---|---|---|---|---|"]
    for label, _ in rows:
        v = vals[label]
        dl = "–" if label == base_label else _cell(v["dlms"], label in best["dlms"], signed=True)
        lines.append(f"| {label} | {_cell(v['SS'], label in best['SS'])} | {_cell(v['LMS'], label in best['LMS'])} | "
                     f"{dl} | {_cell(v['ICAT'], label in best['ICAT'])} |")
    return "\n".join(lines) + "\n"


def cost_comparison_markdown(rows: list) -> str:
    """Wall time and peak memory of every method: rows of (label, method dict) where the method dict is the
    "method" section compare writes into results.json (train, eval, scoring_cost)."""
    lines = ["| Method | train steps | train wall time (s) | train peak memory (MB) | eval wall time (s) | "
             "eval peak memory (MB) | scoring ms / sentence | × plain model |", "|---|---|---|---|---|---|---|---|"]
    for label, m in rows:
        tr = (m or {}).get("train") or {}
        ev = (m or {}).get("eval") or {}
        sc = (m or {}).get("scoring_cost") or {}
        lines.append(f"| {label} | {tr.get('steps', '–')} | {_f(tr.get('wall_time_s'), 1)} | "
                     f"{_f(tr.get('peak_memory_mb'), 0)} | {_f(ev.get('wall_time_s'), 1)} | "
                     f"{_f(ev.get('peak_memory_mb'), 0)} | {_f(sc.get('ms_per_sentence'), 2)} | "
                     f"{_f(sc.get('ratio_to_plain'), 2)} |")
    return "\n".join(lines) + "\n"


def markdown_to_html(md: str, base_dir=None, title: str = "report") -> str:
    """A self-contained HTML page from the markdown subset the reports use: headings, paragraphs, '-' lists (two
    levels), pipe tables, **bold**, `code`, [links](url) and images, which are embedded as base64 data URIs when
    the file is found (relative to `base_dir`)."""
    import base64
    import html
    import re
    from pathlib import Path

    def inline(text: str) -> str:
        t = html.escape(text, quote=False)
        t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
        t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
        t = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', t)
        return t

    def image(alt: str, src: str) -> str:
        p = Path(src) if base_dir is None or Path(src).is_absolute() else Path(base_dir) / src
        if p.is_file():
            mime = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "svg": "image/svg+xml"}.get(
                p.suffix.lower().lstrip("."), "application/octet-stream")
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            return f'<figure><img alt="{html.escape(alt)}" src="data:{mime};base64,{data}"><figcaption>{inline(alt)}</figcaption></figure>'
        return f"<p><em>[figure missing: {html.escape(src)}]</em></p>"

    def cells(row: str) -> list[str]:
        return [c.strip() for c in row.strip().strip("|").split("|")]

    out, lines, i = [], md.splitlines(), 0
    para: list[str] = []

    def flush():
        if para:
            out.append("<p>" + inline(" ".join(para)) + "</p>")
            para.clear()

    img_re = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$")
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if not s:
            flush()
            i += 1
            continue
        h = re.match(r"^(#{1,6})\s+(.*)$", s)
        if h:
            flush()
            n = len(h.group(1))
            out.append(f"<h{n}>{inline(h.group(2))}</h{n}>")
            i += 1
            continue
        m = img_re.match(s)
        if m:
            flush()
            out.append(image(m.group(1), m.group(2)))
            i += 1
            continue
        if s.startswith("|"):
            flush()
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            has_head = len(block) > 1 and re.match(r"^\|?\s*:?-{3,}", block[1].strip()) is not None
            out.append("<table>")
            if has_head:
                out.append("<thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells(block[0])) + "</tr></thead>")
                body = block[2:]
            else:
                body = block
            out.append("<tbody>" + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(r)) + "</tr>"
                                           for r in body) + "</tbody></table>")
            continue
        if re.match(r"^\s*[-*]\s+", line):
            flush()
            out.append("<ul>")
            nested = False
            while i < len(lines) and re.match(r"^\s*[-*]\s+", lines[i]):
                item = lines[i]
                indent = len(item) - len(item.lstrip())
                text = re.sub(r"^\s*[-*]\s+", "", item)
                if indent >= 2 and not nested:
                    out.append("<ul>")
                    nested = True
                elif indent < 2 and nested:
                    out.append("</ul>")
                    nested = False
                out.append(f"<li>{inline(text)}</li>")
                i += 1
            if nested:
                out.append("</ul>")
            out.append("</ul>")
            continue
        para.append(s)
        i += 1
    flush()
    style = ("body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;"
             "padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0;font-size:.92em}"
             "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th:first-child,td:first-child{text-align:left}"
             "thead{background:#f3f3f3}code{background:#f5f5f5;padding:0 .2em}img{max-width:100%}"
             "figure{margin:1em 0}figcaption{font-size:.85em;color:#555}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


# --- how precise a StereoSet read is ---------------------------------------------------------------------------

def stereoset_precision_markdown(before: list, after: list, before_label: str = "before", after_label: str = "after",
                                 resamples: int = 1000, seed: int = 0, heading_level: int = 3, band: float = 4.0) -> str:
    """SS before and after, each ± its bootstrap standard error, and the paired change ± its standard error, per bias
    type and overall, from the StereoSet rows of two reads of the same examples (one task). A change within two
    paired errors is one that another draw of target terms like these could make or undo: with 10 to 40 terms a
    type, a domain's SS is uncertain by several points (see `biasunlearn.metrics.ss_standard_error`). Last, how
    often a model exactly at 50 would read more than `band` points from it with the after read's errors."""
    from .metrics import level_outside_any, level_outside_band, paired_ss_difference, ss_standard_error, stereoset_scores

    ss0, ss1 = stereoset_scores(before), stereoset_scores(after)
    se0, se1 = ss_standard_error(before, resamples, seed), ss_standard_error(after, resamples, seed)
    paired = paired_ss_difference(before, after, resamples, seed)
    h = "#" * heading_level
    lines = [f"{h} How precise the StereoSet SS is", "",
             f"Bootstrap standard errors ({resamples} resamples, seed {seed}; target terms and their examples redrawn "
             "within each bias type). The change is paired: both reads are scored on the same draws. "
             "A change smaller than two of its errors is within the test split's own noise.", "",
             f"| domain | terms | SS {before_label} | SS {after_label} | change | beyond 2 errors? |",
             "|---|---|---|---|---|---|"]
    for d in [d for d in DOMAINS if d in paired]:
        p = paired[d]
        resolved = "yes" if abs(p["diff"]) > 2 * p["se"] else "no"
        lines.append(f"| {d} | {ss1[d]['n_terms']} | {ss0[d]['SS']:.2f} ± {se0[d]:.2f} | {ss1[d]['SS']:.2f} ± {se1[d]:.2f} "
                     f"| {p['diff']:+.2f} ± {p['se']:.2f} | {resolved} |")
    chance = {d: level_outside_band(se1[d], band) for d in DOMAINS if d in se1 and d != "overall"}
    if chance:
        anyone = level_outside_any(chance.values())
        lines += ["", f"How far a level model reads by chance: with the {after_label} read's errors, a model exactly at "
                  f"50 in a type would read more than {band:g} points from 50 in "
                  + ", ".join(f"{d} {100 * v:.0f}%" for d, v in chance.items())
                  + f" of draws of a test split like this one, and in at least one type {100 * anyone:.0f}% "
                  "(normal approximation)."]
    return "\n".join(lines) + "\n"


def terms_from_doc(doc: dict, task: str = "intrasentence") -> dict | None:
    """{(bias_type, target): (SS_t, LMS_t, n_t)} from a results document's per-term StereoSet scores, or None when
    the document has none (results written before they were kept)."""
    terms = ((doc.get("benchmarks", {}).get("stereoset") or {}).get("terms") or {}).get(task)
    if not terms:
        return None
    return {tuple(k.split("/", 1)): (v["SS"], v["LMS"], v["n"]) for k, v in terms.items()}


def terms_farthest_markdown(after: dict, before: dict | None = None, before_label: str = "before",
                            after_label: str = "after", top: int = 3, heading_level: int = 3) -> str:
    """Per bias type, the `top` target terms farthest from 50 in `after` ({(bias_type, target): (SS, LMS, n)}),
    each with its SS (before → after when `before` is given) and its number of examples, and how many of the
    type's terms read outside 50 +- 10. A domain's SS is the mean of its terms' SS, so a domain off level may owe
    it to one term; a term of 25 examples carries an error near 10 points by itself."""
    if before is not None:
        missing = sorted(set(after) - set(before))
        if missing:
            raise ValueError(f"the {after_label} read has target terms the {before_label} read lacks: "
                             f"{', '.join(f'{b}/{t}' for b, t in missing[:3])}")
    h = "#" * heading_level
    shown = f"SS {before_label} → {after_label}" if before is not None else "SS"
    lines = [f"{h} Which target terms each domain's SS comes from", "",
             f"A domain's SS is the unweighted mean of its target terms' SS. The {top} terms of each domain farthest "
             f"from 50{f' in the {after_label} read' if before is not None else ''}, as {shown} (examples); one "
             "term's SS moves by 100/n per example.", "",
             "| domain | terms | outside 50 ± 10 | farthest from level |", "|---|---|---|---|"]
    for d in sorted({b for b, _ in after}):
        keys = sorted((k for k in after if k[0] == d), key=lambda k: (-abs(after[k][0] - 50.0), k[1].lower()))
        far = "; ".join(f"{k[1]} " + (f"{before[k][0]:.1f} → " if before is not None else "")
                        + f"{after[k][0]:.1f} ({after[k][2]})" for k in keys[:top])
        outside = sum(abs(after[k][0] - 50.0) > 10.0 for k in keys)
        lines.append(f"| {d} | {len(keys)} | {outside} | {far} |")
    return "\n".join(lines) + "\n"


def stereoset_terms_markdown(before: list, after: list, before_label: str = "before", after_label: str = "after",
                             top: int = 3, heading_level: int = 3) -> str:
    """`terms_farthest_markdown` from the StereoSet rows of two reads of the same examples (one task)."""
    from .metrics import term_scores

    return terms_farthest_markdown(term_scores(after), term_scores(before), before_label, after_label, top,
                                   heading_level)
