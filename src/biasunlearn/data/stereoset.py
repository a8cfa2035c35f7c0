"""StereoSet loaders for the three formats in shared/data:

* the official ``{"version", "data": {"intrasentence": [...], "intersentence": [...]}}`` JSON;
* the ZJUNLP list-of-examples JSON (``sentences`` with gold labels, and/or a ``data`` map);
* the per-task, per-bias-type CSV export (``{task}_{bias_type}_data.csv``), which has no ids: ids are made
  deterministically from the file and row so predictions can be traced back and re-scored.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .common import SkipLog, csv_rows, read_utf8

LABELS = ("stereotype", "anti-stereotype", "unrelated")
TASKS = ("intrasentence", "intersentence")
BIAS_TYPES = ("gender", "profession", "race", "religion")
_CSV_RE = re.compile(r"^(intrasentence|intersentence)_([a-z]+)_data\.csv$")
_CSV_COLUMNS = ("Domain", "Target", "Context", "Unrelated Sentence", "Anti-stereotype Sentence", "Stereotype Sentence")


@dataclass
class StereoSetExample:
    id: str
    task: str  # intrasentence | intersentence
    bias_type: str
    target: str
    context: str
    stereotype: str
    anti_stereotype: str
    unrelated: str
    sentence_ids: dict = field(default_factory=dict)  # label -> sentence id
    source: str = ""

    def sentence(self, label: str) -> str:
        return {"stereotype": self.stereotype, "anti-stereotype": self.anti_stereotype, "unrelated": self.unrelated}[label]


def split_x_y(context: str, sentence: str) -> tuple[str, str]:
    """Split an intrasentence sentence into x (the context before the blank) and y (the filled word and the rest).

    ``x + y == sentence``. The context's text before ``BLANK`` is matched case-insensitively (the sentences are
    sentence-cased copies of the context). When the prefix does not match, x is empty and y is the whole sentence.
    """
    i = context.find("BLANK")
    if i <= 0:
        return "", sentence
    prefix = context[:i].rstrip()
    if sentence[: len(prefix)].lower() == prefix.lower():
        return sentence[: len(prefix)], sentence[len(prefix):]
    return "", sentence


def split_x_word_rest(context: str, sentence: str) -> tuple[str, str, str]:
    """Split an intrasentence sentence into x (before the blank), the filled word(s), and the rest after the blank.

    ``x + word + rest == sentence``. Both ends are matched against the context case-insensitively; where the
    sentence does not follow its context (x or rest cannot be matched), the word is everything after x and rest is
    empty, which is `split_x_y`'s y.
    """
    x, y = split_x_y(context, sentence)
    i = context.find("BLANK")
    suffix = context[i + len("BLANK"):].strip() if i >= 0 else ""
    if not x or not suffix:
        return x, y, ""
    # the rest keeps its leading space (" for many years."), so each part tokenises as in the whole sentence
    k = y.lower().rfind(suffix.lower())
    if k <= 0 or k + len(suffix) != len(y):
        return x, y, ""
    while k > 0 and y[k - 1] == " ":
        k -= 1
    word, rest = y[:k], y[k:]
    if not word.strip():
        return x, y, ""
    return x, word, rest


def _example_from_sentences(ex: dict, task: str, path: Path, item: int, skips: SkipLog) -> StereoSetExample | None:
    """One example of a JSON list; `item` is its 0-based place in the list (errors say it 1-based)."""
    for key in ("id", "target", "bias_type", "context"):
        if key not in ex:
            raise DataError(path, f"example has no '{key}' field", item=item)
        if key != "id" and not (isinstance(ex[key], str) and ex[key].strip()):
            raise DataError(path, f"'{key}' is {ex[key]!r}, not a non-empty string", item=item)
    by_label: dict[str, dict] = {}
    if "sentences" in ex:
        if not isinstance(ex["sentences"], list):
            raise DataError(path, f"'sentences' is a {type(ex['sentences']).__name__}, not a list", item=item)
        for s in ex["sentences"]:
            if not isinstance(s, dict) or "gold_label" not in s or "sentence" not in s:
                raise DataError(path, "a sentence lacks 'sentence' or 'gold_label'", item=item)
            by_label[s["gold_label"]] = {"sentence": s["sentence"], "id": s.get("id", "")}
    elif "data" in ex:
        if not isinstance(ex["data"], dict):
            raise DataError(path, f"'data' is a {type(ex['data']).__name__}, not an object of labelled sentences",
                            item=item)
        for label in LABELS:
            if label in ex["data"]:
                by_label[label] = ex["data"][label]
    else:
        raise DataError(path, "example has neither 'sentences' nor 'data'", item=item)
    missing = [lab for lab in LABELS if lab not in by_label]
    if missing:
        skips.skip(f"missing gold label(s) {','.join(missing)}", str(ex["id"]))
        return None
    for lab in LABELS:
        got = by_label[lab]
        if not isinstance(got, dict) or not isinstance(got.get("sentence"), str) or not got["sentence"].strip():
            raise DataError(path, f"the {lab} sentence is {got!r}, not an object with a non-empty 'sentence'",
                            item=item)
    return StereoSetExample(
        id=str(ex["id"]), task=task, bias_type=ex["bias_type"], target=ex["target"], context=ex["context"],
        stereotype=by_label["stereotype"]["sentence"], anti_stereotype=by_label["anti-stereotype"]["sentence"],
        unrelated=by_label["unrelated"]["sentence"],
        sentence_ids={lab: by_label[lab].get("id", "") for lab in LABELS}, source=path.name,
    )


def load_stereoset_json(path, task: str | None = None, skips: SkipLog | None = None) -> list[StereoSetExample]:
    """Load the official StereoSet JSON or a ZJUNLP list-of-examples JSON (intrasentence only)."""
    path = Path(path)
    skips = skips if skips is not None else SkipLog()
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        doc = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise DataError(path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    groups: dict[str, list] = {}
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        groups = {t: doc["data"].get(t, []) for t in TASKS}
    elif isinstance(doc, list):
        groups = {"intrasentence": doc}
    else:
        raise DataError(path, "neither the official {version, data} StereoSet document nor a list of examples")
    if not any(groups.values()):  # a task filter may leave nothing of a file that has examples: that is no error
        raise DataError(path, "no examples: " + ("the list is empty" if isinstance(doc, list)
                                                 else "its intrasentence and intersentence lists are empty"))
    out = []
    for t, items in groups.items():
        if task and t != task:
            continue
        for row, ex in enumerate(items):
            if not isinstance(ex, dict):
                raise DataError(path, f"{t} item is not an object", item=row)
            e = _example_from_sentences(ex, t, path, row, skips)
            if e is not None:
                out.append(e)
    return out


def load_stereoset_csv(path, skips: SkipLog | None = None) -> list[StereoSetExample]:
    """One ``{task}_{bias_type}_data.csv`` file. Ids: ``{task}-{bias_type}-{row:04d}`` (row = data row, 0-based)."""
    path = Path(path)
    skips = skips if skips is not None else SkipLog()
    m = _CSV_RE.match(path.name)
    if not m:
        raise DataError(path, "expected a file named {intrasentence|intersentence}_{bias_type}_data.csv")
    task, bias_file = m.groups()
    _, rows = csv_rows(path, _CSV_COLUMNS)
    out = []
    for row, (line, rec) in enumerate(rows):  # row: the data row, 0-based (the id); line: its line in the file
        vals = {c: (rec.get(c) or "").strip() for c in _CSV_COLUMNS}
        empty = [c for c, v in vals.items() if not v]
        if empty:
            raise DataError(path, f"empty field(s): {', '.join(empty)}", row=line)
        if task == "intrasentence" and "BLANK" not in vals["Context"]:
            skips.skip("intrasentence context without BLANK", f"{path.name}:{line}")
            continue
        ex_id = f"{task}-{bias_file}-{row:04d}"
        out.append(StereoSetExample(
            id=ex_id, task=task, bias_type=vals["Domain"], target=vals["Target"], context=vals["Context"],
            stereotype=vals["Stereotype Sentence"], anti_stereotype=vals["Anti-stereotype Sentence"],
            unrelated=vals["Unrelated Sentence"],
            sentence_ids={"stereotype": f"{ex_id}-s", "anti-stereotype": f"{ex_id}-a", "unrelated": f"{ex_id}-u"},
            source=path.name,
        ))
    return out


def load_stereoset_csv_dir(folder, task: str | None = None, skips: SkipLog | None = None) -> list[StereoSetExample]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "folder not found")
    files = sorted(p for p in folder.iterdir() if _CSV_RE.match(p.name))
    if not files:
        raise DataError(folder, "no {task}_{bias_type}_data.csv files in this folder")
    out = []
    for p in files:
        if task and not p.name.startswith(task):
            continue
        out.extend(load_stereoset_csv(p, skips))
    return out


def load_stereoset(path, task: str | None = None, skips: SkipLog | None = None) -> list[StereoSetExample]:
    """Any supported StereoSet source: a CSV folder, one CSV file, or a JSON file."""
    path = Path(path)
    if path.is_dir():
        return load_stereoset_csv_dir(path, task, skips)
    if path.suffix == ".csv":
        exs = load_stereoset_csv(path, skips)
        return [e for e in exs if not task or e.task == task]
    return load_stereoset_json(path, task, skips)
