"""CrowS-Pairs CSV (the anonymised original, or a per-type subset with an ``Unnamed: 0`` index column)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .common import SkipLog, csv_rows

_REQUIRED = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


@dataclass
class CrowsPair:
    id: str
    sent_more: str
    sent_less: str
    direction: str  # stereo | antistereo
    bias_type: str


def load_crows_pairs(path, skips: SkipLog | None = None) -> list[CrowsPair]:
    path = Path(path)
    skips = skips if skips is not None else SkipLog()
    cols, rows = csv_rows(path, _REQUIRED)
    index_col = cols[0] if cols and cols[0] in ("", "Unnamed: 0") else None
    out = []
    for row, (line, rec) in enumerate(rows):  # row: the data row, 0-based (the id without an index column)
        more, less = (rec.get("sent_more") or "").strip(), (rec.get("sent_less") or "").strip()
        direction, bias = (rec.get("stereo_antistereo") or "").strip(), (rec.get("bias_type") or "").strip()
        if not more or not less or not bias:
            raise DataError(path, "empty sent_more, sent_less or bias_type", row=line)
        if direction not in ("stereo", "antistereo"):
            raise DataError(path, f"stereo_antistereo is {direction!r}, expected 'stereo' or 'antistereo'", row=line)
        if more == less:
            skips.skip("sent_more identical to sent_less", str(line))
            continue
        pid = (rec.get(index_col) or "").strip() if index_col is not None else ""
        out.append(CrowsPair(id=pid or str(row), sent_more=more, sent_less=less, direction=direction,
                             bias_type=bias))
    return out
