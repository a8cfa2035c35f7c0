"""Plain text (WikiText-2 raw and the like): one passage a line, blank lines dropped."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .common import read_utf8


def load_text_lines(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    lines = [line for line in read_utf8(path).splitlines() if line.strip()]
    if not lines:
        raise DataError(path, "no text: the file is empty or holds only blank lines")
    return lines
