"""PNG plots from the run logs (no model needed)."""
from __future__ import annotations

import json
from pathlib import Path


def _read_jsonl(path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


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
        if pts:
            ax.plot(*zip(*pts), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def plot_dev_ss(dev_log_path, out_png, swaps=None, title="Dev SS per bias type") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_jsonl(dev_log_path)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    types = sorted({b for r in rows for b in r["ss"]})
    for b in types:
        ax.plot([r["step"] for r in rows if b in r["ss"]], [r["ss"][b] for r in rows if b in r["ss"]], marker=".", label=b)
    ax.axhline(50, color="black", lw=1, ls="--", label="50 (fair)")
    for i, ev in enumerate(swaps or []):
        ax.axvline(ev["step"], color="red", alpha=0.4, lw=1, label="swap" if i == 0 else None)
        ax.annotate(f"{ev['bias_type'][:4]}{ev['direction']:+d}", (ev["step"], ev["ss"]), fontsize=7, color="red")
    ax.set_xlabel("step")
    ax.set_ylabel("dev SS")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
