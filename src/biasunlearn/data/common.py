"""Where the data lives, and a log of examples skipped on purpose (never dropped silently)."""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

ENV_VAR = "BIASUNLEARN_DATA"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The benchmark data folder: `explicit`, else $BIASUNLEARN_DATA, else `../shared/data` beside the repository."""
    if explicit is not None:
        if not str(explicit).strip():  # `--data-dir ""`: a folder meant and not named, not the default folder
            raise ConfigError("--data-dir is empty: name the benchmark data folder, or leave the option out for the "
                              f"default (${ENV_VAR} or ../shared/data)")
        p = Path(explicit).expanduser()
        return _named_folder(p, f"--data-dir {p}")
    env = os.environ.get(ENV_VAR)
    if env:
        return _named_folder(Path(env).expanduser(), f"${ENV_VAR}={env}")
    candidates = [Path(__file__).resolve().parents[3] / ".." / "shared" / "data", Path.cwd() / ".." / "shared" / "data",
                  Path.cwd() / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise ConfigError(
        f"no data folder found: pass --data-dir or set ${ENV_VAR} (looked in: {', '.join(str(c) for c in candidates)})"
    )


def _named_folder(p: Path, named: str) -> Path:
    """`p`, the data folder a setting names (`named`: how the error says it), or a ConfigError if it is not one."""
    if not p.is_dir():
        raise ConfigError(f"{named}: {'is a file, not a folder' if p.exists() else 'no such folder'}")
    return p


SUMS_FILE = "SHA256SUMS"
SKIP_CHECK_VAR = "BIASUNLEARN_SKIP_DATA_CHECK"


def check_against_sums(root: Path, checksums: dict) -> None:
    """Refuse data files whose sha256 differs from the one the data folder's SHA256SUMS lists for them (a copy cut
    short or edited): `checksums` is {path: sha256}. Files the list does not name, and a folder without the list,
    pass; ${SKIP_CHECK_VAR}=1 lets a deliberate edit through (the results record every file's sha256 anyway)."""
    from ..errors import DataError

    sums_path = Path(root) / SUMS_FILE
    if not sums_path.is_file() or os.environ.get(SKIP_CHECK_VAR, "") in ("1", "true"):
        return
    listed = {}
    for line in sums_path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            name = parts[1].lstrip("*").strip().replace("\\", "/")
            listed[os.path.normpath(name).replace(os.sep, "/")] = parts[0].lower()
    root_abs = os.path.abspath(root)  # not resolved: a linked file is checked under the name it has here
    for path, digest in checksums.items():
        rel = os.path.relpath(os.path.abspath(path), root_abs).replace(os.sep, "/")
        if rel.startswith("../"):
            continue
        if rel in listed and digest is not None and listed[rel] != digest:
            raise DataError(path, f"its sha256 {digest[:12]}... is not the {listed[rel][:12]}... that {sums_path} "
                                  f"lists: a copy cut short or edited? Restore it, or set {SKIP_CHECK_VAR}=1 to use "
                                  "it as it is")


def read_utf8(path: str | os.PathLike) -> str:
    """A data file's text; bytes that are not UTF-8 are a DataError naming the file, line and byte (a file saved in
    another encoding, or damaged), not a UnicodeDecodeError naming neither."""
    from ..errors import DataError

    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(path, f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} ({e.reason}); "
                              "save the file as UTF-8", row=line) from e


def csv_rows(path: Path, required) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line, record)]) of a CSV data file, each record with the line of the file it starts on (the
    header is line 1; a blank line or a quoted line break before it counts). A missing file, a file without a
    header, a header without one of the `required` columns, a record with more fields than the header (an unquoted
    comma in a sentence would shift every column after it) and a header without data rows are each a DataError
    naming the file (and the line)."""
    from ..errors import DataError

    if not path.is_file():
        raise DataError(path, "file not found")
    with io.StringIO(read_utf8(path), newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise DataError(path, "no examples: the file is empty (not even a header)")
        absent = [c for c in required if c not in reader.fieldnames]
        if absent:
            raise DataError(path, f"missing column(s): {', '.join(absent)}", row=1)
        rows = []
        for rec in reader:
            # reader.line_num is the record's last line: less the line breaks inside its quoted fields
            line = reader.line_num - sum(v.count("\n") for v in rec.values() if isinstance(v, str))
            if None in rec:
                raise DataError(path, f"{len(rec[None])} field(s) more than the header's {len(reader.fieldnames)} "
                                      "columns (a comma inside a field that is not quoted?)", row=line)
            rows.append((line, rec))
    if not rows:
        raise DataError(path, "no examples: a header and no data rows")
    return list(reader.fieldnames), rows


def resolve_data_path(relative: str, root: str | os.PathLike | None = None) -> Path:
    p = Path(relative)
    if p.is_absolute():
        return p
    return data_dir(root) / relative


@dataclass
class SkipLog:
    """Counts examples skipped on purpose, by reason, with a few example keys for each; and, apart (`note`), examples
    kept and scored but left out of one of a benchmark's figures (BBQ's bias score without a stereotyped option)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    noted: Counter = field(default_factory=Counter)

    def _count(self, counter: Counter, reason: str, key: str) -> None:
        counter[reason] += 1
        self.examples.setdefault(reason, [])
        if key and len(self.examples[reason]) < 5:
            self.examples[reason].append(key)

    def skip(self, reason: str, key: str = "") -> None:
        self._count(self.counts, reason, key)

    def note(self, reason: str, key: str = "") -> None:
        """An example kept (and scored), but left out of a figure, for `reason`; not counted as skipped."""
        self._count(self.noted, reason, key)

    def merge(self, other: "SkipLog") -> None:
        for mine, theirs in ((self.counts, other.counts), (self.noted, other.noted)):
            for r, n in theirs.items():
                mine[r] += n
                self.examples.setdefault(r, []).extend(other.examples.get(r, [])[: 5])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples,
                **({"kept_but_left_out_of_a_figure": dict(self.noted)} if self.noted else {})}
