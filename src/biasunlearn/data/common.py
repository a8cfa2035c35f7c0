"""Where the data lives, and a log of examples skipped on purpose (never dropped silently)."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

ENV_VAR = "BIASUNLEARN_DATA"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The benchmark data folder: `explicit`, else $BIASUNLEARN_DATA, else `../shared/data` beside the repository."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise ConfigError(f"--data-dir {p}: no such folder")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise ConfigError(f"${ENV_VAR}={env}: no such folder")
        return p
    candidates = [Path(__file__).resolve().parents[3] / ".." / "shared" / "data", Path.cwd() / ".." / "shared" / "data",
                  Path.cwd() / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise ConfigError(
        f"no data folder found: pass --data-dir or set ${ENV_VAR} (looked in: {', '.join(str(c) for c in candidates)})"
    )


def resolve_data_path(relative: str, root: str | os.PathLike | None = None) -> Path:
    p = Path(relative)
    if p.is_absolute():
        return p
    return data_dir(root) / relative


@dataclass
class SkipLog:
    """Counts examples skipped on purpose, by reason, with a few example keys for each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def skip(self, reason: str, key: str = "") -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if key and len(self.examples[reason]) < 5:
            self.examples[reason].append(key)

    def merge(self, other: "SkipLog") -> None:
        for r, n in other.counts.items():
            self.counts[r] += n
            self.examples.setdefault(r, []).extend(other.examples.get(r, [])[: 5])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}
