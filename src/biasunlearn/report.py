"""Markdown tables from results documents (no model needed: a report is rebuilt from the JSON alone)."""
from __future__ import annotations

DOMAINS = ("gender", "profession", "race", "religion", "overall")


def _f(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"


def eval_markdown(doc: dict) -> str:
    """One results document as markdown tables, one per benchmark present."""
    lines = []
    m = doc.get("model", {})
    lines.append(f"## Evaluation: {m.get('spec', '?')}" + (f" + adapter {m['adapter']}" if m.get("adapter") else ""))
    b = doc.get("benchmarks", {})
    if "stereoset" in b:
        for task, mets in b["stereoset"]["metrics"].items():
            lines += ["", f"### StereoSet {task} (SS → 50, LMS ↑, ICAT ↑)", "",
                      "| domain | SS | LMS | ICAT | examples | terms |", "|---|---|---|---|---|---|"]
            for d in DOMAINS:
                if d in mets:
                    r = mets[d]
                    lines.append(f"| {d} | {_f(r['SS'])} | {_f(r['LMS'])} | {_f(r['ICAT'])} | {r['n_examples']} | {r['n_terms']} |")
    if "crows_pairs" in b:
        mets = b["crows_pairs"]["metrics"]
        lines += ["", "### CrowS-Pairs (% preferring sent_more, → 50)", "",
                  "| bias type | length-normalised | summed log-prob | pairs |", "|---|---|---|---|"]
        for k, r in mets["length_normalised"].items():
            lines.append(f"| {k} | {_f(r['score'])} | {_f(mets['summed_logprob'][k]['score'])} | {r['n']} |")
    if "bbq" in b:
        lines += ["", "### BBQ (accuracy %, bias scores x100, approximate targets)", "",
                  "| category | acc | acc ambig | acc disambig | bias disambig | bias ambig | n |",
                  "|---|---|---|---|---|---|---|"]
        for k, r in b["bbq"]["metrics"].items():
            lines.append(f"| {k} | {_f(r['acc'])} | {_f(r['acc_ambig'])} | {_f(r['acc_disambig'])} | "
                         f"{_f(r['bias_disambig'])} | {_f(r['bias_ambig'])} | {r['n']} |")
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
    skip = {"progress", "max_tokens"}  # batching only: same numbers either way
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
    lines = [f"- {before_label}: {_model_label(before)}", f"- {after_label}: {_model_label(after)}"]
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
                which = "either" if name not in bb and name not in ab else (before_label if name not in bb else after_label)
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
            types = sorted(t for t in types if t != "overall") + (["overall"] if "overall" in types else [])
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
            cats = sorted(c for c in set(ma) | set(mb) if c != "overall") + (["overall"] if "overall" in ma or "overall" in mb else [])
            for c in cats:
                rb, ra = mb.get(c, {}), ma.get(c, {})
                cells = " | ".join(_trio(rb.get(k), ra.get(k)) for k, _ in BBQ_COLUMNS)
                lines.append(f"| {c} | {cells} | {ra.get('n', rb.get('n', '–'))} |")
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
