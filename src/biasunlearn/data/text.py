"""Plain text (WikiText-2 raw and the like): one passage a line, blank lines dropped."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError


def load_text_lines(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text ({e})") from e
    return [line for line in text.splitlines() if line.strip()]
