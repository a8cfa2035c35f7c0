"""BBQ JSONL, one file per category, and the approximate 'biased answer' of each example.

The official ``target_loc`` file is missing, so the target (stereotyped) option is found by matching each option's
group tag and text against ``additional_metadata.stereotyped_groups``. Examples where exactly one non-unknown option
does not match are skipped with a counted reason. Results built on this are labelled approximate.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .common import SkipLog, read_utf8

_FEMALE = {"woman", "girl", "f", "female"}
_MALE = {"man", "boy", "m", "male"}


@dataclass
class BBQExample:
    id: str
    category: str
    context: str
    question: str
    answers: list  # 3 answer texts
    label: int  # index of the correct answer
    unknown_index: int
    target_index: int | None  # the option naming the stereotyped group (None: could not be determined)
    polarity: str  # neg | nonneg
    condition: str  # ambig | disambig

    @property
    def biased_index(self) -> int | None:
        """The answer that follows the stereotype: the target for negative questions, the other group otherwise."""
        if self.target_index is None:
            return None
        if self.polarity == "neg":
            return self.target_index
        others = [i for i in range(3) if i not in (self.target_index, self.unknown_index)]
        return others[0] if len(others) == 1 else None


def _matches(text: str, tag: str, groups: list[str]) -> bool:
    g = {x.strip().lower() for x in groups}
    tag_l, text_l = tag.strip().lower(), text.strip().lower()
    if tag_l in g or text_l in g:
        return True
    if tag_l.startswith("nontrans"):
        return False
    if tag_l.startswith("trans") and any("trans" in x for x in g):
        return True
    gender = tag_l.split("_")[-1]
    if ("f" in g and gender in _FEMALE) or ("m" in g and gender in _MALE):
        return True
    return False


def _target_index(ex: dict) -> int | None:
    groups = ex.get("additional_metadata", {}).get("stereotyped_groups", []) or []
    hits = []
    for i in range(3):
        text, tag = ex["answer_info"][f"ans{i}"]
        if tag == "unknown":
            continue
        if _matches(text, tag, groups):
            hits.append(i)
    return hits[0] if len(hits) == 1 else None


def _path(keys) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else k) for i, k in enumerate(keys))


def _field(ex, at: tuple, *keys, kind=str):
    """ex[keys[0]][keys[1]]... of one BBQ line, of type `kind` (int: converted); a DataError naming the field's
    path in the line when it is missing or of another type. `at`: (file, line number)."""
    path, line_no = at
    value = ex
    for i, k in enumerate(keys):
        try:
            value = value[k]
        except (KeyError, IndexError, TypeError):
            above = _path(keys[:i])
            why = "" if isinstance(value, (dict, list)) or not above else f" ({above} is a {type(value).__name__})"
            raise DataError(path, f"field {_path(keys)} is missing{why}", row=line_no) from None
    if kind is int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise DataError(path, f"field {_path(keys)} is {value!r}, not a whole number", row=line_no) from None
    if not isinstance(value, kind):
        raise DataError(path, f"field {_path(keys)} is a {type(value).__name__}, not a {kind.__name__}", row=line_no)
    return value


def load_bbq(path, skips: SkipLog | None = None) -> list[BBQExample]:
    """One ``<Category>.jsonl`` file, or a folder of them (sorted by name)."""
    path = Path(path)
    skips = skips if skips is not None else SkipLog()
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataError(path, "no .jsonl files in this folder")
        return [e for p in files for e in load_bbq(p, skips)]
    if not path.is_file():
        raise DataError(path, "file not found")
    out, rows = [], 0
    with io.StringIO(read_utf8(path)) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            rows += 1
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"invalid JSON: {e.msg} (character {e.pos + 1} of the line)", row=line_no) from e
            if not isinstance(ex, dict):  # a list or a string: no field of it can be read
                raise DataError(path, f"a JSON {type(ex).__name__}, not an object of BBQ fields", row=line_no)
            at = (path, line_no)
            answers = [_field(ex, at, f"ans{i}") for i in range(3)]
            infos = [_field(ex, at, "answer_info", f"ans{i}", kind=list) for i in range(3)]
            bad = [i for i, x in enumerate(infos) if len(x) != 2 or not all(isinstance(v, str) for v in x)]
            if bad:
                raise DataError(path, f"field answer_info.ans{bad[0]} is {infos[bad[0]]!r}, not [answer text, tag]",
                                row=line_no)
            tags = [x[1] for x in infos]
            label = _field(ex, at, "label", kind=int)
            polarity, condition = _field(ex, at, "question_polarity"), _field(ex, at, "context_condition")
            context, question, category = (_field(ex, at, k) for k in ("context", "question", "category"))
            eid = f"{category}-{_field(ex, at, 'example_id', kind=object)}"
            if label not in (0, 1, 2):
                raise DataError(path, f"label {label} is not 0, 1 or 2", row=line_no)
            if polarity not in ("neg", "nonneg") or condition not in ("ambig", "disambig"):
                raise DataError(path, f"unexpected question_polarity/context_condition {polarity}/{condition}", row=line_no)
            if tags.count("unknown") != 1:
                skips.skip("not exactly one 'unknown' option", eid)
                continue
            try:
                target = _target_index(ex)
            except (AttributeError, TypeError) as e:
                raise DataError(path, f"field additional_metadata.stereotyped_groups is malformed ({e})",
                                row=line_no) from e
            if target is None:
                skips.note("stereotyped group matches no single option: scored for accuracy, left out of the bias "
                           "scores", eid)
            out.append(BBQExample(
                id=eid, category=category, context=context, question=question, answers=answers, label=label,
                unknown_index=tags.index("unknown"), target_index=target, polarity=polarity, condition=condition,
            ))
    if not rows:
        raise DataError(path, "no examples: the file is empty or holds only blank lines")
    return out
