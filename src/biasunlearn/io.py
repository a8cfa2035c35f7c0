"""Atomic file writes and checksums: a crash never leaves a half-written results file behind. Folder locks: two
processes never write into one output folder at once."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

LOCK_FILE = ".biasunlearn.lock"  # folder_lock's file in a folder; one a killed process left holds no lock


def check_folder_path(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be made or written in: a file, a path through a file,
    or one whose nearest existing folder is read-only (else a whole evaluation or training run would end in an
    error at its first write)."""
    from .errors import ConfigError

    path = Path(path)
    for p in (path, *path.parents):
        if p.is_symlink() and not p.exists():  # a dangling link: nothing can be made at it, or through it
            where = "is" if p == path else f"goes through {p}, which is"
            raise ConfigError(f"{flag} {path}: {where} a symbolic link to {os.readlink(p)}, which does not exist; "
                              "make that folder, or name another")
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


def read_json_object(path: str | os.PathLike, what: str = "a JSON object") -> dict:
    """The JSON object in the file at `path` (a results or settings file this tool wrote). One that is not JSON
    (damaged by hand, or cut short by a full disk), not UTF-8, or not an object is a DataError naming it; `what`
    says what it should hold. read_json itself still raises json.JSONDecodeError: callers that skip an unreadable
    file rely on it."""
    from .errors import DataError

    try:
        doc = read_json(path)
    except json.JSONDecodeError as e:
        raise DataError(path, f"not JSON ({e.msg}, line {e.lineno}); it should hold {what}") from None
    except UnicodeDecodeError:
        raise DataError(path, f"not a UTF-8 text file; it should hold {what}") from None
    if not isinstance(doc, dict):
        raise DataError(path, f"holds a JSON {type(doc).__name__}, not {what}")
    return doc


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


def mkdtemp_pattern(prefix: str) -> re.Pattern:
    """The names `tempfile.mkdtemp(prefix=prefix)` makes (the prefix and eight characters of
    tempfile._RandomNameSequence): how a staging folder a killed process left is told from anything else."""
    return re.compile(re.escape(prefix) + r"[a-z0-9_]{8}")


def folder_entries(folder: str | os.PathLike) -> list[Path]:
    """What `folder` holds, a lock file (folder_lock's, or one a killed process left) aside: the checks that ask
    whether a folder is empty or holds someone's files must not count it."""
    return [p for p in Path(folder).iterdir() if p.name != LOCK_FILE]


def recover_folder(path: str | os.PathLike, aside: str | os.PathLike | None = None) -> None:
    """Finish a replacement of the folder `path` that a kill left half done: `path` renamed to `aside` (default
    `path`.old) and the process killed before the new folder took its place. The old folder comes back."""
    path = Path(path)
    old = Path(aside) if aside is not None else path.with_name(path.name + ".old")
    if old.exists() and not path.exists():
        old.rename(path)


_HELD: set[str] = set()  # the lock files (absolute paths) this process holds
_LOCK_TRIES = 50  # folder_lock: how often its folder may vanish under it before that is taken as can't-be-made


@contextmanager
def folder_lock(folder: str | os.PathLike, lock_file: str | os.PathLike | None = None):
    """Hold `folder` for this process alone while the block runs: an exclusive, non-blocking `flock` on
    <folder>/.biasunlearn.lock (or `lock_file`, for a folder that is replaced whole), created as needed. When another
    process holds it, a ConfigError naming the folder. Re-entrant within a process (train holds its run folder, and
    train_adapter inside it takes it again). On release the lock file, and any folder the lock had to create that is
    still empty, are removed. The kernel drops a killed process's lock: the file it leaves locks nothing. Where
    there is no fcntl (Windows) it does nothing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    from .errors import ConfigError

    lock = Path(lock_file) if lock_file is not None else Path(folder) / LOCK_FILE
    key = os.path.abspath(lock)
    if key in _HELD:  # held by an outer block of this process, which lets it go
        yield
        return
    made = [p for p in (lock.parent, *lock.parent.parents) if not p.exists()]  # deepest first
    vanished = 0
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError as e:
            # the folder went away between the two (a holder letting go removes it): made again on the next try.
            # A folder that cannot be made at all (a path in /proc, say) fails the same way every time: after a
            # few tries no holder letting go explains it
            vanished += 1
            if vanished < _LOCK_TRIES:
                continue
            raise ConfigError(f"{folder}: cannot create the lock file {lock} ({e.strerror}: the folder cannot be "
                              "made there); name another folder") from e
        except OSError as e:
            raise ConfigError(f"{folder}: cannot create the lock file {lock} ({e.strerror})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise ConfigError(f"another biasunlearn process{f' (pid {holder})' if holder.isdigit() else ''} is "
                              f"writing to {folder} (it holds {lock}); wait for it to finish, or name another "
                              "folder") from None
        except OSError as e:  # a file system that takes no locks (some network mounts): unguarded, as without fcntl
            os.close(fd)
            fd = None
            print(f"[biasunlearn] warning: {folder}: its file system takes no lock ({e.strerror or e}), so another "
                  "biasunlearn process writing there at the same time is not kept out", file=sys.stderr)
            break
        # the holder before may have removed the file as it let go (see below): a lock on a file no longer at
        # `lock` keeps no one out, so it is taken again on the file there now
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    if fd is None:
        yield
        return
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # for the message another process gives
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        try:  # removed while still locked: a process that opened it meanwhile finds it gone once it has the lock
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)
        for p in made:  # a start that failed before writing anything leaves no empty folder behind
            try:
                p.rmdir()
            except OSError:  # not empty, or already gone
                break
