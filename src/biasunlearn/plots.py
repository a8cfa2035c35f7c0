"""PNG plots from the run logs (no model needed)."""
from __future__ import annotations

from pathlib import Path

from .io import read_log_jsonl


def _read_jsonl(path) -> list[dict]:
    """A run log's rows; a line a kill cut short is skipped with a warning naming the file and line (a plot of the
    rows that were written, not a traceback)."""
    return read_log_jsonl(path)


def draw_or_warn(draw, src, out_png, *args, log, tag: str, **kw) -> None:
    """draw(src, out_png, *args, **kw), where a plot that fails is a warning in `log` ("[tag] warning: ... not
    drawn"), not an error: it comes after a run's adapter and summary are written, and can be drawn again from
    the logs."""
    try:
        draw(src, out_png, *args, **kw)
    except Exception as e:
        log(f"[{tag}] warning: {out_png} not drawn ({type(e).__name__}: {e})")


def _finish(fig, ax, out_png, xlabel, ylabel, title) -> Path:
    """Labels, legend and grid, then save the PNG and free the figure."""
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=10)  # a long title wraps instead of being cut
    if xlabel == "step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 0.25 on a short run
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def plot_losses(log_path, out_png, title="BiasUnlearn losses") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _read_jsonl(log_path) if "loss_forget" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss_forget", "forget (NPO)"), ("loss_retain", "retain (CE)"), ("loss_kl", "KL to original")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:  # few logged steps (a short run, a long logging_steps) still show as points
            ax.plot(*zip(*pts), label=label, marker="." if len(pts) <= 30 else None)
    if len(rows) < 3:
        title += f" ({len(rows)} logged step{'s' if len(rows) != 1 else ''}: logging_steps sets how often)"
    return _finish(fig, ax, out_png, "step", "loss", title)


TRAINED_ON_NOTE = "the dev slice was trained on (train_on_dev): not held out, a collapse guard only"


def _trained_on(rows) -> bool:
    """Whether a dev log's checks read data the run trained on (train_on_dev marks its rows trained_on)."""
    return any(r.get("trained_on") for r in rows)


def plot_dev_ss(dev_log, out_png, swaps=None, title="Dev SS per bias type") -> Path | None:
    """dev_log: a dev_log.jsonl path, or its rows already read (e.g. the pooled rows of a cross-validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = dev_log if isinstance(dev_log, list) else _read_jsonl(dev_log)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    types = sorted({b for r in rows for b in r["ss"]})
    for b in types:
        have = [r for r in rows if b in r["ss"]]
        line, = ax.plot([r["step"] for r in have], [r["ss"][b] for r in have], marker=".", label=b)
        band = [r for r in have if b in r.get("ss_se", {})]  # bootstrap standard error, when the log has it
        if band:
            ax.fill_between([r["step"] for r in band], [r["ss"][b] - r["ss_se"][b] for r in band],
                            [r["ss"][b] + r["ss_se"][b] for r in band], color=line.get_color(), alpha=0.12, lw=0)
    if any("ss_se" in r for r in rows):
        title += " (bands: ± bootstrap standard error over terms and examples)"
    if _trained_on(rows):
        title += f"; {TRAINED_ON_NOTE}"
    ax.axhline(50, color="black", lw=1, ls="--", label="50 (fair)")
    for i, ev in enumerate(swaps or []):
        ax.axvline(ev["step"], color="red", alpha=0.4, lw=1, label="swap" if i == 0 else None)
        # a swap fixed beforehand (scheduled_swaps) read no dev SS: its mark sits on the 50 line
        at = 50 if ev.get("ss") is None else ev["ss"]
        mark = f"{ev['bias_type'][:4]}{ev['direction']:+d}" + (" (scheduled)" if ev.get("scheduled") else "")
        ax.annotate(mark, (ev["step"], at), fontsize=7, color="red")
    return _finish(fig, ax, out_png, "step", "dev SS", title)


def plot_dev_margin(dev_log_path, out_png, swaps=None, title="Dev margin per bias type") -> Path | None:
    """The mean dev margin s(stereo) - s(anti) per type (nats per token; 0 = level) at every dev check, with the
    swap events and, when focus_worst left types out, an open circle on the checks after which the type was
    trained. None when the log has no margins (a baseline's log, or a run from before margins were logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _read_jsonl(dev_log_path) if r.get("margin")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    types = sorted({b for r in rows for b in r["margin"] if b != "overall"})
    for b in types + ["overall"]:
        sel = [r for r in rows if b in r["margin"]]
        pts = [(r["step"], r["margin"][b]) for r in sel]
        trained = [(r["step"], r["margin"][b]) for r in sel if r.get("directions", {}).get(b, 1) != 0]
        style = dict(color="black", lw=2) if b == "overall" else {}
        line, = ax.plot(*zip(*pts), marker=".", label=b, **style)
        if b != "overall" and len(trained) < len(pts) and trained:
            ax.plot(*zip(*trained), ls="none", marker="o", mfc="none", color=line.get_color())
    ax.axhline(0, color="grey", lw=1, ls="--", label="0 (level)")
    for i, ev in enumerate(swaps or []):
        ax.axvline(ev["step"], color="red", alpha=0.4, lw=1, label="swap" if i == 0 else None)
    if any(0 in r.get("directions", {}).values() for r in rows):
        ax.plot([], [], ls="none", marker="o", mfc="none", color="grey", label="type trained next (focus_worst)")
    if _trained_on(rows):
        title += f"; {TRAINED_ON_NOTE}"
    return _finish(fig, ax, out_png, "step", "dev margin, nats per token", title)


# --- comparison report (biasunlearn compare) -------------------------------------------------------------------

def plot_dev_ss_compare(runs: dict, out_png, title="Dev SS (overall) against training steps") -> Path | None:
    """One line per method: overall dev SS at every dev check (the paper's Figure 4). `runs`: label -> dev_log.jsonl
    (the format BiasUnlearn and the baselines write: step, ss_overall)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {label: _read_jsonl(p) for label, p in runs.items()}
    series = {label + (" (dev trained on)" if _trained_on(rows) else ""):
              [(r["step"], r["ss_overall"]) for r in rows if r.get("ss_overall") is not None]
              for label, rows in logs.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, pts in series.items():
        ax.plot(*zip(*pts), marker=".", label=label)
    ax.axhline(50, color="black", lw=1, ls="--", label="50 (fair)")
    return _finish(fig, ax, out_png, "training step", "dev SS (overall)", title)


def plot_ablation_losses(runs: dict, out_png, keys=(("loss_forget", "forgetting loss (NPO)"),
                                                     ("loss_retain", "retention loss (CE)")),
                         title="Ablations: losses against training steps") -> Path | None:
    """One panel per loss in `keys`, one line per run (the paper's Figure 3). `runs`: label -> log.jsonl. A run
    whose log has no value for a loss (a log written before switched-off losses were logged) has no line in that
    panel; the legend says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {label: _read_jsonl(p) for label, p in runs.items()}
    if not any(any(k in r for r in rows for k, _ in keys) for rows in logs.values()):
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, (key, name) in zip(axes[0], keys):
        for label, rows in logs.items():
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=label)
            else:
                ax.plot([], [], ls=":", label=f"{label} (not computed)")
        ax.set_xlabel("training step")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
