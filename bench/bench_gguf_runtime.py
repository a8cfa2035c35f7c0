"""Run GGUF files in llama.cpp, the runtime GGUF files are made for, and read StereoSet's test split with it: does
a file written by `biasunlearn export --gguf` keep the debiasing where it will be deployed, and does llama.cpp read
it as the evaluation suite (transformers, which dequantises the file) reads it?

Each `--read NAME=FILE.gguf[,PREDICTIONS]` is scored by llama.cpp (llama-cpp-python) on the intrasentence test
examples, exactly as the suite scores them: the mean log-probability of a sentence's tokens, with the start token
(BOS, else EOS) in front and not scored. The tokens are llama.cpp's own tokenization of each sentence, as a
deployment would make them; how often they differ from the transformers tokenizer of the same file is reported.
With PREDICTIONS (a `predictions.jsonl` or `stereoset_scores.jsonl.gz` of `biasunlearn eval` on the same file,
ideally in float32), each read is set beside the suite's: per-sentence score differences, how often each example's
two decisions (stereotype over anti-stereotype; each over the unrelated sentence) agree, and the paired SS
difference with its bootstrap error. Reads after the first are also paired with the first as llama.cpp reads
them (e.g. the exported file against the source file: how far the debiasing moves SS in the runtime).

    pip install llama-cpp-python     # builds llama.cpp for this CPU; not a dependency of biasunlearn
    python bench/bench_gguf_runtime.py --read base=smollm2-135m,BASE_FP32/stereoset_scores.jsonl.gz \\
        --read export=runs/x/gguf/x.gguf,runs/x_read_fp32/predictions.jsonl --out bench/results/gguf_runtime.json

A built-in model name stands for its GGUF file. No figure here times anything against anything else.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path


def _records(path: str) -> dict:
    """{id: record} of a suite read (predictions.jsonl, or stereoset_scores.jsonl.gz); intrasentence only."""
    from biasunlearn.evaluate import read_stereoset_predictions

    return {r["id"]: r for r in read_stereoset_predictions(path)}


def read_file(name: str, gguf: Path, examples, tok, threads: int, log) -> tuple[list[dict], dict]:
    """llama.cpp's records for the examples, and {"tokens_differ": n, "sentences": n, "ms_per_sentence": x}."""
    from biasunlearn.gguf_export import LlamaCppScorer

    with LlamaCppScorer(gguf, threads) as scorer:
        return _read(name, scorer, examples, tok, log)


def _read(name, scorer, examples, tok, log) -> tuple[list[dict], dict]:
    from biasunlearn.models import start_token_id

    if tok is not None and start_token_id(tok) != scorer.start:
        log(f"  {name}: start token differs: llama.cpp {scorer.start}, transformers {start_token_id(tok)}")
    recs, differ, t0 = [], 0, time.perf_counter()
    labels = ("stereotype", "anti-stereotype", "unrelated")
    for i, e in enumerate(examples):
        s = []
        for lab in labels:
            text = e.sentence(lab)
            body = scorer.tokens(text)
            if tok is not None and body != tok(text, add_special_tokens=False)["input_ids"]:
                differ += 1
            s.append(scorer.score_tokens(body))
        recs.append({"id": e.id, "task": e.task, "bias_type": e.bias_type, "target": e.target,
                     "s_stereo": s[0], "s_anti": s[1], "s_unrel": s[2]})
        if (i + 1) % 200 == 0 or i + 1 == len(examples):
            log(f"  {name}: {i + 1}/{len(examples)} examples, {time.perf_counter() - t0:.0f} s")
    n = 3 * len(examples)
    return recs, {"sentences": n, "tokens_differ": differ,
                  "ms_per_sentence": round(1000 * (time.perf_counter() - t0) / n, 2)}


def _decisions(r: dict) -> tuple[bool, bool, bool]:
    return r["s_stereo"] > r["s_anti"], r["s_stereo"] > r["s_unrel"], r["s_anti"] > r["s_unrel"]


def against_suite(llama: list[dict], suite: dict, resamples: int) -> dict:
    """How llama.cpp's read of a file compares with the evaluation suite's read of the same file."""
    from biasunlearn.metrics import paired_ss_difference, stereoset_scores

    missing = [r["id"] for r in llama if r["id"] not in suite]
    if missing:
        raise SystemExit(f"the suite's read lacks {len(missing)} of llama.cpp's examples (first: {missing[0]}); "
                         "read the same test split")
    ref = [suite[r["id"]] for r in llama]
    diffs = [abs(a[k] - b[k]) for a, b in zip(llama, ref) for k in ("s_stereo", "s_anti", "s_unrel")]
    pro_agree = sum(_decisions(a)[0] == _decisions(b)[0] for a, b in zip(llama, ref))
    rel_agree = sum(_decisions(a)[1:] == _decisions(b)[1:] for a, b in zip(llama, ref))
    ss_s = stereoset_scores(ref)
    paired = paired_ss_difference(ref, llama, resamples, 0)
    return {
        "mean_abs_score_diff": round(sum(diffs) / len(diffs), 5),
        "max_abs_score_diff": round(max(diffs), 5),
        "rms_score_diff": round(math.sqrt(sum(d * d for d in diffs) / len(diffs)), 5),
        "examples": len(llama),
        "pro_decision_agrees": pro_agree,
        "related_decisions_agree": rel_agree,
        "suite": {d: {k: round(v[k], 2) for k in ("SS", "LMS", "ICAT")} for d, v in ss_s.items()},
        "paired_ss_llama_minus_suite": {d: {"diff": round(v["diff"], 2), "se": round(v["se"], 2)}
                                        for d, v in paired.items()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--read", action="append", required=True, metavar="NAME=FILE[,PREDICTIONS]",
                    help="a GGUF file (or a built-in model name) and, optionally, the suite's read of it")
    ap.add_argument("--limit", type=int, default=None, help="only this many examples (a seeded sample)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--scores-dir", default=None, help="write each read's records here as NAME_llama.jsonl.gz")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("this benchmark needs llama-cpp-python: pip install llama-cpp-python")

    from biasunlearn.data import data_dir, load_stereoset
    from biasunlearn.evaluate import DEFAULT_PATHS, _sample
    from biasunlearn.io import write_json
    from biasunlearn.metrics import paired_ss_difference, stereoset_scores
    from biasunlearn.models import gguf_source, load_tokenizer, resolve_model_path

    def log(s):
        print(s, file=sys.stderr, flush=True)

    reads = []
    for spec in a.read:
        name, sep, rest = spec.partition("=")
        if not sep or not rest:
            raise SystemExit(f"--read {spec}: expected NAME=FILE.gguf[,PREDICTIONS]")
        model, _, preds = rest.partition(",")
        gguf = gguf_source(model)
        if gguf is None:
            raise SystemExit(f"--read {spec}: {model} is not a .gguf file or a built-in GGUF model")
        reads.append((name, model, gguf, preds or None))
    path = data_dir() / DEFAULT_PATHS["stereoset"]
    examples = [e for e in load_stereoset(path) if e.task == "intrasentence"]
    examples = _sample(examples, a.limit, 0)
    out = {"llama_cpp_python": llama_cpp.__version__, "examples": len(examples), "threads": a.threads, "reads": {}}
    recs_by = {}
    for name, model, gguf, preds in reads:
        log(f"{name}: {gguf}")
        tok = load_tokenizer(resolve_model_path(model)[0])
        recs, info = read_file(name, gguf, examples, tok, a.threads, log)
        recs_by[name] = recs
        ss = stereoset_scores(recs)
        entry = {"file": str(gguf), "llama_cpp": {d: {k: round(v[k], 2) for k in ("SS", "LMS", "ICAT")}
                                                  for d, v in ss.items()}, **info}
        if preds:
            entry["against_suite"] = against_suite(recs, _records(preds), a.resamples)
        out["reads"][name] = entry
        if a.scores_dir:
            d = Path(a.scores_dir)
            d.mkdir(parents=True, exist_ok=True)
            with gzip.open(d / f"{name}_llama.jsonl.gz", "wt", encoding="utf-8") as f:
                for r in recs:
                    f.write(json.dumps(r) + "\n")
    first = reads[0][0]
    out["paired_vs_first_in_llama_cpp"] = {
        name: {d: {"diff": round(v["diff"], 2), "se": round(v["se"], 2)}
               for d, v in paired_ss_difference(recs_by[first], recs_by[name], a.resamples, 0).items()}
        for name, *_ in reads[1:]}
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        write_json(a.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
