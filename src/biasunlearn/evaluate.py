"""Runs benchmarks through the one scoring path and the metric functions, and writes one results document.

A results document (``results.json``) is the only interface between running and reporting: a report can be rebuilt
from it alone. It holds the metrics, the model and adapter, package versions, the machine it ran on, the sha256 of each
data file, and the config and wall time of each benchmark.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import random
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, interrupt
from .data import SkipLog, data_dir, load_bbq, load_crows_pairs, load_stereoset, load_text_lines
from .data.common import check_against_sums
from .errors import BiasUnlearnError, ConfigError, DataError
from .io import (check_folder_path, comma_list, folder_lock, mkdtemp_pattern, read_jsonl, sha256_file, write_json,
                 write_jsonl)
from .metrics import bbq_scores, crows_pairs_scores, perplexity, ss_standard_error, stereoset_scores, term_scores
from .models import machine_info
from .scoring import score_sequences, score_texts, score_texts_shared

SE_RESAMPLES = 1000  # bootstrap resamples of the SS standard error in every StereoSet result
STEREOSET_SCORES = "stereoset_scores.jsonl.gz"  # the StereoSet rows of predictions.jsonl, compressed, kept with results
# every file one read writes in its folder (results.json last: it says the others are whole and of this read)
READ_FILES = ("predictions.jsonl", "stereoset_predictions.json", STEREOSET_SCORES, "results.json")
STAGING_PREFIX = ".biasunlearn-read-"  # a read is written whole in a folder of this name in its own, then moved
# (no dot after it: an export named anything stages in ".<name>.<8 characters>", which this never matches)
BENCHMARKS = ("stereoset", "crows_pairs", "bbq", "perplexity")
DEFAULT_PATHS = {
    "stereoset": "stereoset/ano1-yu__stereoset_adaptation",
    "crows_pairs": "crows_pairs/crows_pairs_anonymized.csv",
    "bbq": "bbq",
    "perplexity": "text/wikitext-2-raw/wiki.test.raw",
}
BBQ_PROMPT = "{context}\nQuestion: {question}\nAnswer:"
# how each StereoSet task is scored (results.json records it, so another tool can reproduce the scores)
STEREOSET_SCORING = {"intrasentence": "each sentence scored whole after the start token: the mean of its tokens' "
                                      "log-probabilities",
                     "intersentence": "each candidate scored as ' ' + candidate after the start token and the "
                                      "context sentence: the mean of the candidate's tokens' log-probabilities"}


@dataclass
class EvalConfig:
    benchmarks: tuple = ("stereoset", "crows_pairs", "bbq", "perplexity")
    data_dir: str | None = None
    paths: dict = field(default_factory=dict)  # benchmark -> file or folder (relative to data_dir or absolute)
    limit: int | None = None  # at most this many examples per benchmark (seeded sample), for quick looks
    seed: int = 0
    stereoset_intersentence: bool = True
    bbq_per_category: int | None = 200  # seeded sample per category; None = all 17,628 (slow on a CPU)
    ppl_window: int = 512
    ppl_stride: int = 256
    ppl_max_tokens: int | None = 32768  # first N tokens of the text; None = all
    max_tokens: int | None = None  # scoring batch budget in padded tokens (None: 256 on CPU, 8192 on CUDA)
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.benchmarks, str):  # "stereoset,crows_pairs", as on the command line
            self.benchmarks = tuple(comma_list(self.benchmarks))
        else:
            self.benchmarks = tuple(self.benchmarks)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "biasunlearn": __version__}
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "numpy", "gguf"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _files_checksums(path: Path) -> dict:
    """{file path: sha256} of a data file, or of every file under a data folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {p: sha256_file(p) for p in files}


def _sample(items: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(items):
        return items
    idx = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in idx]


def _skw(cfg: EvalConfig, desc: str) -> dict:
    return {"max_tokens": cfg.max_tokens, "progress": desc if cfg.progress else None}


def stereoset_tasks(cfg: EvalConfig) -> tuple:
    """The StereoSet tasks a read scores."""
    return ("intrasentence", "intersentence") if cfg.stereoset_intersentence else ("intrasentence",)


def load_examples(name: str, path: Path, cfg: EvalConfig) -> tuple[list, SkipLog]:
    """(examples, skips) of one benchmark's data file or folder, parsed but not tokenized: for perplexity the text's
    lines. Each loader refuses a file without data rows (DataError naming it); a benchmark whose rows were all
    skipped, or that holds none of the StereoSet tasks read, is refused here, naming its data path, so that no read
    comes out without that benchmark's numbers. A --limit sample or the BBQ per-category sample come after this."""
    skips = SkipLog()
    if name == "perplexity":
        return load_text_lines(path), skips
    if name == "stereoset":
        examples = load_stereoset(path, skips=skips)
        left = [e for e in examples if e.task in stereoset_tasks(cfg)]
        what = f"{' or '.join(stereoset_tasks(cfg))} examples"
    elif name == "crows_pairs":
        examples = left = load_crows_pairs(path, skips)
        what = "pairs"
    elif name == "bbq":
        examples = left = load_bbq(path, skips)
        what = "examples"
    else:
        raise ConfigError(f"--benchmarks: unknown {name} (choose from {', '.join(BENCHMARKS)})")
    if not left:
        why = "; ".join(f"{n} {reason}" for reason, n in skips.counts.items())
        raise DataError(path, f"no {what} to score" + (f": every row was skipped ({why})" if why and not examples
                                                        else ""))
    return examples, skips


# --- StereoSet -------------------------------------------------------------------------------------------------

def stereoset_records(model, tok, examples, **skw) -> list[dict]:
    """Score the three sentences of each example (mean token log-prob). Intersentence candidates are scored given
    the context sentence (run once for the three when every example is intersentence); intrasentence sentences are
    scored whole."""
    texts, prefixes = [], []
    for e in examples:
        for lab in ("stereotype", "anti-stereotype", "unrelated"):
            if e.task == "intersentence":
                prefixes.append(e.context)
                texts.append(" " + e.sentence(lab))
            else:
                prefixes.append("")
                texts.append(e.sentence(lab))
    if examples and all(e.task == "intersentence" for e in examples):
        # the three candidates share the context sentence: it runs once per example
        scores = score_texts_shared(model, tok, prefixes[::3], texts, 3, **skw)
    else:
        use_prefix = any(prefixes)
        scores = score_texts(model, tok, texts, prefixes if use_prefix else None, **skw)
    recs = []
    for i, e in enumerate(examples):
        s, a, u = (scores[3 * i + k].mean for k in range(3))
        recs.append({"id": e.id, "task": e.task, "bias_type": e.bias_type, "target": e.target,
                     "s_stereo": s, "s_anti": a, "s_unrel": u, "sentence_ids": e.sentence_ids})
    return recs


def eval_stereoset(model, tok, cfg: EvalConfig, path: Path, parsed=None) -> dict:
    examples, skips = parsed if parsed is not None else load_examples("stereoset", path, cfg)
    out = {"metrics": {}, "predictions": [], "skipped": skips.to_dict(), "scoring": STEREOSET_SCORING}
    for task in stereoset_tasks(cfg):
        exs = _sample([e for e in examples if e.task == task], cfg.limit, cfg.seed)
        if not exs:
            continue
        recs = stereoset_records(model, tok, exs, **_skw(cfg, f"stereoset {task}"))
        out["metrics"][task] = stereoset_scores(recs)
        out.setdefault("ss_standard_error", {"resamples": SE_RESAMPLES, "seed": 0})[task] = ss_standard_error(
            recs, SE_RESAMPLES, 0)  # how far another draw of terms like these could move SS (see the metric)
        # each target term's SS, LMS and examples: a domain's SS is their mean, and one term can carry it
        out.setdefault("terms", {})[task] = {f"{b}/{t}": {"SS": ss, "LMS": lms, "n": n}
                                             for (b, t), (ss, lms, n) in sorted(term_scores(recs).items())}
        out["predictions"].extend(recs)
    return out


def stereoset_official_predictions(records: list[dict]) -> dict:
    """Predictions in the official StereoSet / bias-bench format: one score per sentence id."""
    out = {"intrasentence": [], "intersentence": []}
    for r in records:
        for lab, key in (("stereotype", "s_stereo"), ("anti-stereotype", "s_anti"), ("unrelated", "s_unrel")):
            out[r["task"]].append({"id": r["sentence_ids"][lab], "score": r[key]})
    return out


# --- CrowS-Pairs -----------------------------------------------------------------------------------------------

def eval_crows_pairs(model, tok, cfg: EvalConfig, path: Path, parsed=None) -> dict:
    pairs, skips = parsed if parsed is not None else load_examples("crows_pairs", path, cfg)
    pairs = _sample(pairs, cfg.limit, cfg.seed)
    texts = [t for p in pairs for t in (p.sent_more, p.sent_less)]
    scores = score_texts(model, tok, texts, **_skw(cfg, "crows_pairs"))
    recs = []
    for i, p in enumerate(pairs):
        more, less = scores[2 * i], scores[2 * i + 1]
        recs.append({"id": p.id, "bias_type": p.bias_type, "direction": p.direction,
                     "mean_more": more.mean, "mean_less": less.mean, "sum_more": more.sum, "sum_less": less.sum})
    norm = crows_pairs_scores({"bias_type": r["bias_type"], "s_more": r["mean_more"], "s_less": r["mean_less"]} for r in recs)
    summed = crows_pairs_scores({"bias_type": r["bias_type"], "s_more": r["sum_more"], "s_less": r["sum_less"]} for r in recs)
    return {"metrics": {"length_normalised": norm, "summed_logprob": summed}, "predictions": recs,
            "skipped": skips.to_dict(), "scoring": "each sentence scored whole after the start token: the mean "
            "(length_normalised) and the sum (summed_logprob) of its tokens' log-probabilities"}


# --- BBQ -------------------------------------------------------------------------------------------------------

def eval_bbq(model, tok, cfg: EvalConfig, path: Path, parsed=None) -> dict:
    examples, skips = parsed if parsed is not None else load_examples("bbq", path, cfg)
    if cfg.bbq_per_category is not None:
        by_cat: dict[str, list] = {}
        for e in examples:
            by_cat.setdefault(e.category, []).append(e)
        examples = [e for c in sorted(by_cat) for e in _sample(by_cat[c], cfg.bbq_per_category, cfg.seed)]
    examples = _sample(examples, cfg.limit, cfg.seed)
    prompts = [BBQ_PROMPT.format(context=e.context, question=e.question) for e in examples]
    texts = [" " + a for e in examples for a in e.answers]
    # the three answers share the context and question: that prompt runs once per example
    scores = score_texts_shared(model, tok, prompts, texts, 3, **_skw(cfg, "bbq"))
    recs = []
    for i, e in enumerate(examples):
        means = [scores[3 * i + k].mean for k in range(3)]
        pred = max(range(3), key=lambda k: means[k])
        recs.append({"id": e.id, "category": e.category, "condition": e.condition, "polarity": e.polarity,
                     "pred": pred, "label": e.label, "unknown_index": e.unknown_index,
                     "biased_index": e.biased_index, "scores": means})
    return {"metrics": bbq_scores(recs), "predictions": recs, "skipped": skips.to_dict(),
            "scoring": f"each answer scored as ' ' + answer after the prompt {BBQ_PROMPT!r}; the answer with the "
                       "highest mean token log-probability is the model's",
            "note": "answers ranked by length-normalised log-likelihood given context and question; bias scores "
                    "x100 use target options derived from group tags (approximate: the official target_loc "
                    "file is missing); 'skipped' counts the examples left out of the whole files, before any "
                    "sampling"}


# --- Perplexity ------------------------------------------------------------------------------------------------

def perplexity_windows(ids: list[int], window: int, stride: int) -> tuple[list[list[int]], list[int]]:
    """Fixed windows over one token stream, `stride` apart. Each window scores only the tokens that no earlier
    window scored, so every token after the first is scored exactly once, with at least window - stride tokens of
    context (except in the first window; at least one token when stride == window). Returns (sequences, score_from)."""
    if window < 2:
        raise ConfigError(f"ppl window {window} must be at least 2 tokens (one of context, one scored)")
    if stride > window or stride <= 0:
        raise ConfigError(f"ppl stride {stride} must be in 1..window ({window})")
    seqs, starts = [], []
    begin, scored_until = 0, 1  # token 0 has no context and is never scored
    while scored_until < len(ids):
        # with stride == window the next window would start at the first unscored token, which then has no
        # context and would be skipped; start one token earlier so it is scored (a no-op when stride < window)
        begin = min(begin, scored_until - 1)
        end = min(begin + window, len(ids))
        seqs.append(ids[begin:end])
        starts.append(max(1, scored_until - begin))
        scored_until = end
        begin += stride
    return seqs, starts


def eval_perplexity(model, tok, cfg: EvalConfig, path: Path, parsed=None) -> dict:
    lines, _ = parsed if parsed is not None else load_examples("perplexity", path, cfg)
    ids = tok("\n".join(lines), add_special_tokens=False)["input_ids"]
    n_total = len(ids)
    limit = cfg.ppl_max_tokens if cfg.limit is None else min(cfg.ppl_max_tokens or n_total, cfg.limit * 64)
    if limit is not None:
        ids = ids[:limit]
    if len(ids) < 2:  # check_config refused ppl_max_tokens under 2: the file's text is that short
        raise DataError(path, f"{n_total} token(s) of text: perplexity needs at least 2 (one of context, one scored)")
    seqs, starts = perplexity_windows(ids, cfg.ppl_window, cfg.ppl_stride)
    sums, counts = score_sequences(model, seqs, starts, pad_id=tok.pad_token_id or 0,
                                   **_skw(cfg, "perplexity"))
    total, n = float(sums.sum()), int(counts.sum())
    return {"metrics": {"perplexity": perplexity(total, n), "nll_per_token": -total / n, "tokens_scored": n,
                        "tokens_in_file": n_total},
            "predictions": [], "skipped": {"total": 0},
            "note": f"windows of {cfg.ppl_window} tokens, stride {cfg.ppl_stride}, first {len(ids)} of {n_total} tokens"}


def _non_finite(obj) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_non_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_non_finite(v) for v in obj)
    return False


def check_finite(name: str, preds: list, metrics, dtype=None) -> None:
    """A score that is NaN or infinite (an overflow in a half-precision read, a model whose weights diverged) would
    count as a lost comparison (a NaN is never the larger) and move every metric without a sign: it stops the read,
    naming the benchmark, the first example and how many, before anything is written."""
    bad = [p for p in preds if _non_finite(p)]
    if bad or _non_finite(metrics):
        first = f"; the first is {bad[0].get('id', '?')}" if bad else ""
        raise BiasUnlearnError(
            f"{name}: {len(bad)} example(s) scored NaN or infinite{first}"
            + ("" if bad else " (in its metrics)")
            + "; nothing was written. "
            + (f"The model computes in {str(dtype).removeprefix('torch.')}: read" if dtype is not None else "Read")
            + " it in float32 (--dtype float32), and check that its weights are finite")


RUNNERS = {"stereoset": eval_stereoset, "crows_pairs": eval_crows_pairs, "bbq": eval_bbq, "perplexity": eval_perplexity}


def benchmark_names_problem(names) -> str | None:
    """What is wrong with a list of benchmark names ("unknown foo", "names none", "names bbq more than once")."""
    unknown = [b for b in names if b not in BENCHMARKS]
    if unknown or not names:
        return (f"{'unknown ' + ', '.join(unknown) if unknown else 'names none'} "
                f"(choose from {', '.join(BENCHMARKS)})")
    twice = [b for b in dict.fromkeys(names) if list(names).count(b) > 1]
    if twice:  # it would be read twice, and its predictions written twice
        return f"names {', '.join(twice)} more than once"
    return None


def check_config(cfg: EvalConfig) -> Path:
    """Fail on a bad benchmark name or data folder before any model is loaded. Returns the data folder."""
    problem = benchmark_names_problem(cfg.benchmarks)
    if problem:
        raise ConfigError(f"--benchmarks: {problem}")
    if "perplexity" in cfg.benchmarks and cfg.ppl_max_tokens is not None and cfg.ppl_max_tokens < 2:
        raise ConfigError(f"--ppl-max-tokens {cfg.ppl_max_tokens}: perplexity needs at least 2 tokens (one of "
                          "context, one scored; 0 = all)")
    return data_dir(cfg.data_dir)


def check_data(cfg: EvalConfig) -> dict:
    """{benchmark: (its data path, {file: sha256})}, every file there, checked against the data folder's SHA256SUMS
    and parsed (load_examples; nothing is tokenized): a missing, damaged, malformed or empty file stops a run
    before any model is loaded or scored (and `train` before training), whichever benchmark's turn it would be."""
    return _parsed_data(cfg)[1]


def _parsed_data(cfg: EvalConfig) -> tuple[Path, dict, dict]:
    """_checked_data's (data folder, {benchmark: (path, sums)}) and {benchmark: load_examples' (examples, skips)}:
    every benchmark's data parsed up front (check_data), and kept for its runner (a few tens of MB for the whole
    suite; BBQ's file alone takes about a second to parse)."""
    root, checked = _checked_data(cfg)
    return root, checked, {name: load_examples(name, path, cfg) for name, (path, _) in checked.items()}


def data_changes(doc: dict, cfg: EvalConfig, log=None) -> list[str]:
    """The data files of `cfg`'s benchmarks whose sha256 differs from what the results document `doc` recorded
    (a file changed, added or removed since that read), as "benchmark: file"; empty when every file is as it was.
    A read made from other data is not to be reused as this data's (a data folder without SHA256SUMS does not stop
    a file from changing). Where the data cannot be read (moved away, or refused by its SHA256SUMS), nothing can be
    compared: the read is kept as recorded, and `log` says so (a reread would fail on the same data)."""
    try:
        checked = _checked_data(cfg)[1]  # the files' sha256 only: a file that changed need not parse to count
    except (ConfigError, DataError) as e:
        if log:
            log(f"[eval] the data files could not be checked against the read's ({e}); its results are kept as "
                "recorded")
        return []
    out = []
    for name, (_, sums) in checked.items():
        old = ((doc.get("benchmarks") or {}).get(name) or {}).get("data", {}).get("sha256")
        if old is None:
            continue  # not measured in that read: nothing to compare (its settings check decides)
        out += [f"{name}: {f}" for f in sorted(set(old) | set(sums)) if old.get(f) != sums.get(f)]
    return out


def other_data_note(path, changed: list[str]) -> str:
    """'<path> was read from other data (<the first files data_changes named> changed since)', for the log."""
    more = ", ..." if len(changed) > 4 else ""
    return f"{path} was read from other data ({', '.join(changed[:4])}{more} changed since)"


def _checked_data(cfg: EvalConfig) -> tuple[Path, dict]:
    root = check_config(cfg)
    out, every = {}, {}
    for name in cfg.benchmarks:
        rel = cfg.paths.get(name, DEFAULT_PATHS[name])
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        if not path.exists():
            raise ConfigError(f"benchmark {name}: data not found at {path}")
        sums = _files_checksums(path)
        every.update({str(p): d for p, d in sums.items()})
        out[name] = (path, {str(p.name if not path.is_dir() else p.relative_to(path)): d for p, d in sums.items()})
    check_against_sums(root, every)  # the folder's list read once for every benchmark
    return root, out


def evaluate_model(model, tok, cfg: EvalConfig, model_info: dict | None = None, out_dir=None, log=print, *,
                   before_write=None, checked_data=None) -> dict:
    """Run the configured benchmarks on an already loaded model; write results.json and predictions to out_dir, in
    place of an earlier read there (_write_read). `before_write(doc)`, when given, is called with the results before
    any file is written (the CLI prints its tables there: a folder that cannot be written then does not lose the
    numbers of the whole run). Every benchmark's data is checked and parsed before the first is scored (check_data);
    `checked_data`: what _parsed_data(cfg) gave the caller that has just done that (run_eval, before the model's
    load), so it is not done twice. Each runner scores the examples parsed there: a file is read once per read."""
    root, checked, parsed = checked_data if checked_data is not None else _parsed_data(cfg)
    doc = {"biasunlearn_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
           "model": model_info or {}, "versions": package_versions(), "machine": machine_info(),
           "eval_config": cfg.to_dict(),
           "data_dir": str(root), "benchmarks": {}}
    all_preds = []
    official = {"intrasentence": [], "intersentence": []}
    for name in cfg.benchmarks:
        interrupt.check()  # a Ctrl-C swallowed during the last benchmark (or the model's load) stops here
        path, checksums = checked[name]
        t0 = time.perf_counter()
        res = RUNNERS[name](model, tok, cfg, path, parsed=parsed.pop(name))  # not held past its turn
        wall = time.perf_counter() - t0
        preds = res.pop("predictions")
        check_finite(name, preds, res.get("metrics"), getattr(model, "dtype", None))
        if name == "stereoset":
            official = stereoset_official_predictions(preds)
        all_preds.extend({"benchmark": name, **p} for p in preds)
        res.update({"wall_time_s": round(wall, 3), "data": {"path": str(path), "sha256": checksums}})
        doc["benchmarks"][name] = res
        if log:
            log(f"[eval] {name} done in {wall:.1f}s")
            skipped = res.get("skipped") or {}
            if skipped.get("total"):  # left out on purpose (a StereoSet row without its BLANK, ...): said, not only kept
                why = "; ".join(f"{n} {reason}" for reason, n in (skipped.get("by_reason") or {}).items())
                log(f"[eval] {name}: {skipped['total']} example(s) of the data skipped ({why}); results.json lists "
                    f"them under benchmarks.{name}.skipped")
            for reason, n in (skipped.get("kept_but_left_out_of_a_figure") or {}).items():
                log(f"[eval] {name}: {n} example(s) scored but left out of a figure ({reason})")
    if before_write is not None:
        before_write(doc)
    if out_dir is not None:
        _write_read(Path(out_dir), doc, all_preds, official if "stereoset" in cfg.benchmarks else None, log)
    return doc


def _write_read(out: Path, doc: dict, all_preds: list, official: dict | None, log=print) -> None:
    """Put one read's files in `out` in place of an earlier read's, so that a results.json there always goes with
    the files beside it: they are written whole into a staging folder first; then the old results.json goes, with
    every file of the old read that this one does not write (a read without StereoSet leaves no StereoSet files of
    another beside it), the new files move in, and results.json last. A kill before the moves leaves the old read
    as it was; a kill during them leaves no results.json. Nothing else in `out` is touched. The caller holds the
    folder (io.folder_lock: eval --out, train, transfer, compare), so a staging folder found there is one a killed
    read left."""
    out.mkdir(parents=True, exist_ok=True)
    staged = mkdtemp_pattern(STAGING_PREFIX)
    for p in out.iterdir():
        if p.is_dir() and staged.fullmatch(p.name):
            if log:
                log(f"[eval] removing {p}: the files of a read into {out} that was killed before it finished")
            shutil.rmtree(p, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=STAGING_PREFIX))
    try:
        write_jsonl(stage / "predictions.jsonl", all_preds)
        if official is not None:
            write_json(stage / "stereoset_predictions.json", official)
            # the StereoSet scores alone, compressed and small enough to keep beside results.json (about 75 kB for
            # the 2106 test examples): what a later paired comparison of two reads needs (bench/ss_precision.py)
            write_jsonl(stage / STEREOSET_SCORES, [{k: v for k, v in p.items() if k != "sentence_ids"}
                                                   for p in all_preds if p["benchmark"] == "stereoset"])
        write_json(stage / "results.json", doc)
        (out / "results.json").unlink(missing_ok=True)  # first: from here the folder holds no whole read
        for name in READ_FILES:
            if (stage / name).exists():
                os.replace(stage / name, out / name)
            elif (out / name).is_file():
                (out / name).unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def run_eval(model: str, adapter: str | None = None, dtype: str = "float32", cfg: EvalConfig | None = None,
             out_dir=None, device=None, log=print, runtime: str | None = None, merge_adapter: bool = False,
             before_write=None) -> dict:
    """Load a model and run the suite. `runtime="llama.cpp"` runs a GGUF file in llama.cpp instead of transformers
    (models.load_llama_cpp): the deployed file, read with the same benchmarks and metrics. `merge_adapter` folds
    the adapter into the weights first (models.load_model). `before_write` is evaluate_model's."""
    from .models import load_llama_cpp, load_model

    cfg = cfg or EvalConfig()
    check_config(cfg)
    if out_dir is not None:
        check_folder_path(out_dir)
    if runtime is None:
        if merge_adapter and not adapter:
            raise ConfigError("--merge-adapter: there is no --adapter to merge")
    else:
        if runtime != "llama.cpp":
            raise ConfigError(f"--runtime {runtime}: expected llama.cpp")
        if merge_adapter:
            raise ConfigError("--merge-adapter is for a transformers read, not --runtime llama.cpp (leave it out)")
        if dtype not in (None, "float32") or (device is not None and str(device) != "cpu"):
            raise ConfigError(f"--runtime llama.cpp runs the file's weights as stored, on the CPU build of llama.cpp: "
                              f"--dtype {dtype} / --device {device} do not apply (leave them out)")
    checked = _parsed_data(cfg)  # every benchmark's data, before the model loads
    # one read at a time in a folder: two would write their files over each other's
    with folder_lock(out_dir) if out_dir is not None else nullcontext():
        if runtime is None:
            m, tok, info = load_model(model, adapter=adapter, dtype=dtype, device=device, merge_adapter=merge_adapter)
            return evaluate_model(m, tok, cfg, info.to_dict(), out_dir, log, before_write=before_write,
                                  checked_data=checked)
        m, tok, info = load_llama_cpp(model, adapter, n_ctx=max(1024, cfg.ppl_window + 8))
        try:
            return evaluate_model(m, tok, cfg, info.to_dict(), out_dir, log, before_write=before_write,
                                  checked_data=checked)
        finally:
            m.close()


def read_stereoset_predictions(path, task: str = "intrasentence") -> list[dict]:
    """The StereoSet rows of one task from a predictions.jsonl (or its stereoset_scores.jsonl.gz) that `evaluate`
    wrote (each with bias_type, target, s_stereo, s_anti, s_unrel), for the metrics of `biasunlearn.metrics`.
    Raises DataError naming the file when it holds none."""
    recs = [r for r in read_jsonl(path) if r.get("benchmark") == "stereoset" and r.get("task") == task]
    if not recs:
        raise DataError(path, f"no StereoSet {task} predictions")
    return recs
