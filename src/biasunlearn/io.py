"""Atomic file writes and checksums: a crash never leaves a half-written results file behind."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable


def check_folder_path(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be made or written in: a file, a path through a file,
    or one whose nearest existing folder is read-only (else a whole evaluation or training run would end in an
    error at its first write)."""
    from .errors import ConfigError

    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"goes through {p}, which is a file"
                raise ConfigError(f"{flag} {path}: {where}, not a folder")
            # writing a file or making a folder in p needs both (search, then add an entry)
            if not os.access(p, os.W_OK | os.X_OK):
                where = "the folder" if p == path else f"{p}, where it would be made,"
                raise ConfigError(f"{flag} {path}: {where} is not writable (no permission, or a read-only file "
                                  "system); name another folder")
            break
    return path


def comma_list(spec: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: how every comma-separated setting (benchmarks, files, methods, layers) is read."""
    return [x.strip() for x in (spec or "").split(",") if x.strip()]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same folder and an atomic rename: readers see the old file or
    the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results should be as readable as any other file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _default(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_default) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """JSON Lines, atomically; a path ending in .gz is gzip-compressed (byte-for-byte reproducible: no timestamp)."""
    text = "".join(json.dumps(r, ensure_ascii=False, default=_default) + "\n" for r in rows)
    if str(path).endswith(".gz"):
        return atomic_write_bytes(path, gzip.compress(text.encode("utf-8"), mtime=0))
    return atomic_write_text(path, text)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON Lines file, gzip-compressed when its name ends in .gz (blank lines skipped); a line that is
    not JSON is a DataError naming it."""
    from .errors import DataError

    rows = []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(path, f"not JSON ({e.msg})", row=i) from None
    return rows


def _warn_stderr(msg: str) -> None:
    print(f"[log] warning: {msg}", file=sys.stderr, flush=True)


def read_log_jsonl(path: str | os.PathLike, warn=_warn_stderr) -> list[dict]:
    """The rows of a training log (log.jsonl, dev_log.jsonl), [] when there is none. A log is appended to a line at
    a time, so a kill can cut its last line short: a line that is not a JSON object is skipped, and `warn` is told
    (the file and the 1-based line), rather than an error that loses the plots and the summary after a whole run."""
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text(encoding="utf-8", errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines, 1) if line.strip()), default=0)
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            why = "not a JSON object"
        except json.JSONDecodeError as e:
            row, why = None, f"not JSON ({e.msg})"
        if isinstance(row, dict):
            rows.append(row)
        else:
            warn(f"{p}, line {i}: {why}; skipped" + (" (its last line: cut short by a kill?)" if i == last else ""))
    return rows
