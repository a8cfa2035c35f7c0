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
