"""Scoring speed benchmark (issue 2): one sentence at a time vs the project's batched path, on the StereoSet test set.

Scores the 2106 intrasentence examples (3 sentences each) of the protocol's test set three ways, side by side:

  1. one_by_one_fp32  `score_texts_one_by_one` in float32: one sentence per forward pass, as the reference code does;
  2. batched_fp32     `stereoset_records` -> `score_texts` in float32 (length-sorted batches, dynamic padding);
  3. batched_bf16     the same with the model loaded in bfloat16.

This machine is shared and noisy, so the three are interleaved: the examples are cut into --chunks slices and each
slice is scored by all three methods in turn (rotating the order), and both wall time and process CPU time are
recorded. Throughput ratios use CPU time (robust to other jobs stealing the core) and are also given on wall time.

Achieved FLOP/s = 2 * (N_body + N_head) * T / t, with N_body the parameters outside the token embedding, N_head the
lm_head's vocab x hidden matrix (counted even when tied to the embedding: it is a real matmul), and T every token fed
to the model: start token, sentence tokens and padding. Attention score/value FLOPs (< 1% at these lengths) are
left out. It is given as a share of the best measured torch.matmul rate in the same dtype.

    python bench/bench_scoring.py                       # full run (one_by_one fp32 takes the longest)
    python bench/bench_scoring.py --limit 60 --chunks 2 # quick look
"""
from __future__ import annotations

import argparse
import os
import sys


METHODS = ("one_by_one_fp32", "batched_fp32", "batched_bf16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None, help="benchmark data folder (default: ../shared/data)")
    p.add_argument("--limit", type=int, default=None, help="score only N examples (evenly spaced) for a quick run")
    p.add_argument("--max-tokens", type=int, nargs="+", default=[256, 512, 1024, 4096],
                   help="batch budgets (padded tokens per forward pass) to try; the best per dtype is used")
    p.add_argument("--sweep-limit", type=int, default=150,
                   help="examples (evenly spaced) on which the --max-tokens budgets are compared")
    p.add_argument("--sweep-rounds", type=int, default=2)
    p.add_argument("--chunks", type=int, default=10, help="interleave the three methods over this many slices")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads for every method")
    p.add_argument("--no-profile", action="store_true", help="skip the per-stage time breakdown")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="a subset, e.g. only the two batched ones to check bf16 against fp32 on another model")
    p.add_argument("--out", default="bench/results/scoring.json")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # OpenMP reads this once, when torch is imported
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
    os.environ["MKL_NUM_THREADS"] = str(ARGS.threads)

import inspect  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from biasunlearn.data import data_dir, load_stereoset  # noqa: E402
from biasunlearn.evaluate import package_versions, stereoset_records  # noqa: E402
from biasunlearn.io import write_json  # noqa: E402
from biasunlearn.metrics import stereoset_scores  # noqa: E402
from biasunlearn.models import load_model  # noqa: E402
from biasunlearn.scoring import (encode_for_scoring, length_batches, pad_batch, score_mask,  # noqa: E402
                                 score_sequences, score_texts_one_by_one, token_logprobs)

LABELS = ("stereotype", "anti-stereotype", "unrelated")
MAX_BATCH = inspect.signature(score_sequences).parameters["max_batch"].default


# --- measuring ---------------------------------------------------------------------------------------------------

class Clock:
    """Accumulates wall time and this process's CPU time over several timed sections."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    @contextmanager
    def run(self):
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - w
            self.cpu += time.process_time() - c


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 7) -> dict:
    """Best GFLOP/s of an n x n @ n x n matmul, on wall and on CPU time."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best_w = best_c = float("inf")
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        torch.matmul(a, b)
        best_w, best_c = min(best_w, time.perf_counter() - w), min(best_c, time.process_time() - c)
    flop = 2 * n ** 3
    return {"n": n, "reps": reps, "gflops_wall": flop / best_w / 1e9, "gflops_cpu": flop / best_c / 1e9}


def flop_params(model) -> dict:
    """Parameter counts for the FLOP formula: body (all but the token embedding) and lm_head (vocab x hidden)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # a tied head is counted once here
    body = total - emb.numel() - (head.numel() if head.data_ptr() != emb.data_ptr() else 0)
    return {"body": body, "lm_head": head.numel(), "per_token_flop": 2 * (body + head.numel()),
            "tied": head.data_ptr() == emb.data_ptr()}


def texts_of(examples) -> list[str]:
    """The sentences in the order `stereoset_records` scores them (intrasentence: whole sentences, no prefix)."""
    return [e.sentence(lab) for e in examples for lab in LABELS]


def records_from_scores(examples, scores) -> list[dict]:
    recs = []
    for i, e in enumerate(examples):
        s, a, u = (scores[3 * i + k].mean for k in range(3))
        recs.append({"id": e.id, "bias_type": e.bias_type, "target": e.target, "s_stereo": s, "s_anti": a, "s_unrel": u})
    return recs


def token_counts(tok, texts, max_tokens: int | None) -> dict:
    """Real tokens (start token included) and, for a batch budget, padded tokens fed the way score_sequences does."""
    seqs, _ = encode_for_scoring(tok, texts)
    lengths = [len(s) for s in seqs]
    out = {"sentences": len(seqs), "real_tokens": sum(lengths), "processed_tokens": sum(lengths), "forward_passes": len(seqs)}
    if max_tokens is not None:
        batches = length_batches(lengths, max_tokens, MAX_BATCH)
        out["processed_tokens"] = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        out["forward_passes"] = len(batches)
    return out


def evenly_spaced(items: list, n: int | None) -> list:
    if n is None or n >= len(items):
        return items
    return [items[round(i * len(items) / n)] for i in range(n)]


# --- the budget sweep --------------------------------------------------------------------------------------------

def sweep(models, tok, examples, budgets, rounds) -> dict:
    texts = texts_of(examples)
    cpu = {(dt, mt): [] for dt in models for mt in budgets}
    wall = {(dt, mt): [] for dt in models for mt in budgets}
    for r in range(rounds):
        for mt in budgets if r % 2 == 0 else budgets[::-1]:
            for dt, model in models.items():
                clk = Clock()
                with clk.run():
                    stereoset_records(model, tok, examples, max_tokens=mt)
                cpu[(dt, mt)].append(clk.cpu)
                wall[(dt, mt)].append(clk.wall)
    out = {}
    for dt in models:
        rows = []
        for mt in budgets:
            n = token_counts(tok, texts, mt)
            c, w = min(cpu[(dt, mt)]), min(wall[(dt, mt)])
            rows.append({"max_tokens": mt, "cpu_s_best": c, "wall_s_best": w, "sentences_per_cpu_s": n["sentences"] / c,
                         "padding_share": 1 - n["real_tokens"] / n["processed_tokens"], "forward_passes": n["forward_passes"]})
        best = min(rows, key=lambda r: r["cpu_s_best"])
        out[dt] = {"rows": rows, "best_max_tokens": best["max_tokens"]}
        print(f"[sweep] {dt}: " + ", ".join(f"{r['max_tokens']}: {r['sentences_per_cpu_s']:.1f} sent/cpu-s" for r in rows)
              + f" -> best {best['max_tokens']}", flush=True)
    return {"examples": len(examples), "sentences": len(texts), "rounds": rounds, "by_dtype": out}


# --- where the time goes -----------------------------------------------------------------------------------------

def breakdown(model, tok, texts, max_tokens: int | None) -> dict:
    """CPU seconds in the transformer body, the lm_head matmul and log-softmax + gather, mirroring score_sequences'
    full path (direct=False; max_tokens None: one sentence per pass, like score_texts_one_by_one)."""
    seqs, starts = encode_for_scoring(tok, texts)
    lengths = [len(s) for s in seqs]
    batches = [[i] for i in range(len(seqs))] if max_tokens is None else length_batches(lengths, max_tokens, MAX_BATCH)
    body, head, lsm = Clock(), Clock(), Clock()
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
    with torch.inference_mode():
        for idx in batches:
            ids, attn = pad_batch([seqs[i] for i in idx], tok.pad_token_id or 0, "cpu")
            with body.run():
                h = decoder(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
            with head.run():
                logits = lm_head(h)
            with lsm.run():
                lp = token_logprobs(logits, ids)
                m = score_mask(attn.sum(1), torch.as_tensor([starts[i] for i in idx]), ids.shape[1])
                (lp * m).sum(1)
            del logits, lp
    total = body.cpu + head.cpu + lsm.cpu
    return {"max_tokens": max_tokens, "sentences": len(seqs), "cpu_s": {"body": body.cpu, "lm_head": head.cpu, "log_softmax_gather": lsm.cpu},
            "share": {"body": body.cpu / total, "lm_head": head.cpu / total, "log_softmax_gather": lsm.cpu / total}}


def profile(models, tok, examples, budgets: dict, one_by_one_n: int) -> dict:
    texts = texts_of(examples)
    out = {"sentences": len(texts)}
    out["one_by_one_fp32"] = breakdown(models["float32"], tok, texts[:one_by_one_n], None)
    for dt, model in models.items():
        out[f"batched_{dt}"] = breakdown(model, tok, texts, budgets[dt])
    # the head on scored rows only, once a prototype here, is now score_sequences' direct path: bench_direct.py
    return out


# --- the main comparison -----------------------------------------------------------------------------------------

def compare(models, tok, examples, budgets, n_chunks, per_token_flop, peaks, methods=METHODS) -> dict:
    chunks = [c for c in np.array_split(np.arange(len(examples)), max(1, n_chunks)) if len(c)]
    methods = [m for m in METHODS if m in methods]
    clocks = {m: Clock() for m in methods}
    recs = {m: [] for m in methods}
    processed = {m: 0 for m in methods}
    passes = {m: 0 for m in methods}
    for k, c in enumerate(chunks):
        exs = [examples[i] for i in c]
        texts = texts_of(exs)
        order = methods[k % len(methods):] + methods[:k % len(methods)]
        for meth in order:
            if meth == "one_by_one_fp32":
                with clocks[meth].run():
                    scores = score_texts_one_by_one(models["float32"], tok, texts)
                recs[meth] += records_from_scores(exs, scores)
                n = token_counts(tok, texts, None)
            else:
                dt = "float32" if meth.endswith("fp32") else "bfloat16"
                with clocks[meth].run():
                    recs[meth] += stereoset_records(models[dt], tok, exs, max_tokens=budgets[dt])
                n = token_counts(tok, texts, budgets[dt])
            processed[meth] += n["processed_tokens"]
            passes[meth] += n["forward_passes"]
        done = {m: f"{clocks[m].cpu:.0f}" for m in methods}
        print(f"[compare] slice {k + 1}/{len(chunks)} ({len(exs)} examples); cpu-s so far {done}", flush=True)

    n_all = token_counts(tok, texts_of(examples), None)
    base = clocks.get("one_by_one_fp32")
    out = {"examples": len(examples), "sentences": n_all["sentences"], "real_tokens": n_all["real_tokens"],
           "slices": len(chunks), "methods": {}}
    for meth in methods:
        clk = clocks[meth]
        dt = "float32" if meth.endswith("fp32") else "bfloat16"
        achieved_cpu = per_token_flop * processed[meth] / clk.cpu
        out["methods"][meth] = {
            "dtype": dt, "max_tokens": None if meth.startswith("one") else budgets[dt],
            "wall_s": clk.wall, "cpu_s": clk.cpu, "cpu_share_of_wall": clk.cpu / clk.wall,
            "sentences_per_s_wall": n_all["sentences"] / clk.wall, "sentences_per_s_cpu": n_all["sentences"] / clk.cpu,
            "tokens_per_s_wall": n_all["real_tokens"] / clk.wall, "tokens_per_s_cpu": n_all["real_tokens"] / clk.cpu,
            "processed_tokens": processed[meth], "padding_share": 1 - n_all["real_tokens"] / processed[meth],
            "forward_passes": passes[meth],
            "speedup_vs_one_by_one_cpu": base.cpu / clk.cpu if base else None,
            "speedup_vs_one_by_one_wall": base.wall / clk.wall if base else None,
            "achieved_gflops_cpu": achieved_cpu / 1e9,
            "share_of_matmul_peak_cpu": achieved_cpu / (peaks[dt]["gflops_cpu"] * 1e9),
            "metrics": stereoset_scores(recs[meth])}

    def means(rs):
        return np.array([[r["s_stereo"], r["s_anti"], r["s_unrel"]] for r in rs]).ravel()

    def decisions(rs):
        return [(r["s_stereo"] > r["s_anti"], r["s_stereo"] > r["s_unrel"], r["s_anti"] > r["s_unrel"]) for r in rs]

    ref = recs.get("one_by_one_fp32")
    for meth in methods[1:] if ref is not None else []:
        mo = out["methods"][meth]["metrics"]["overall"]
        ro = out["methods"]["one_by_one_fp32"]["metrics"]["overall"]
        out["methods"][meth]["vs_one_by_one"] = {
            "max_abs_mean_logprob_diff": float(np.abs(means(recs[meth]) - means(ref)).max()),
            "examples_with_a_different_decision": sum(a != b for a, b in zip(decisions(recs[meth]), decisions(ref))),
            "delta_SS": mo["SS"] - ro["SS"], "delta_LMS": mo["LMS"] - ro["LMS"], "delta_ICAT": mo["ICAT"] - ro["ICAT"]}
    if "batched_fp32" not in recs or "batched_bf16" not in recs:
        return out
    fp32 = out["methods"]["batched_fp32"]["metrics"]["overall"]
    bf16 = out["methods"]["batched_bf16"]["metrics"]["overall"]
    out["bf16_vs_fp32"] = {"delta_SS": bf16["SS"] - fp32["SS"], "delta_LMS": bf16["LMS"] - fp32["LMS"],
                           "delta_ICAT": bf16["ICAT"] - fp32["ICAT"],
                           "within_0_5": abs(bf16["SS"] - fp32["SS"]) <= 0.5 and abs(bf16["LMS"] - fp32["LMS"]) <= 0.5}
    return out


def _x(ratio) -> str:
    return "–" if ratio is None else f"{ratio:.2f}x"


def markdown(res: dict) -> str:
    c = res["compare"]
    lines = [f"Model {res['model']['spec']}, {c['examples']} examples / {c['sentences']} sentences / {c['real_tokens']} "
             f"real tokens, {res['threads']} thread, {c['slices']} interleaved slices.", "",
             "| method | max_tokens | wall s | CPU s | sent/s (CPU) | tok/s (CPU) | speed-up (CPU) | speed-up (wall) "
             "| padding | GFLOP/s (CPU) | share of peak | SS | LMS | ICAT |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for meth, r in c["methods"].items():
        o = r["metrics"]["overall"]
        lines.append(f"| {meth} | {r['max_tokens'] or '–'} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['sentences_per_s_cpu']:.1f} "
                     f"| {r['tokens_per_s_cpu']:.0f} | {_x(r['speedup_vs_one_by_one_cpu'])} | {_x(r['speedup_vs_one_by_one_wall'])} "
                     f"| {100 * r['padding_share']:.1f}% | {r['achieved_gflops_cpu']:.1f} | {100 * r['share_of_matmul_peak_cpu']:.1f}% "
                     f"| {o['SS']:.2f} | {o['LMS']:.2f} | {o['ICAT']:.2f} |")
    p = res["matmul_peak"]
    lines += ["", f"Matmul peak ({p['float32']['n']}^3, best of {p['float32']['reps']}, CPU time): "
              f"fp32 {p['float32']['gflops_cpu']:.1f} GFLOP/s, bf16 {p['bfloat16']['gflops_cpu']:.1f} GFLOP/s."]
    for meth, r in c["methods"].items():
        if "vs_one_by_one" in r:
            v = r["vs_one_by_one"]
            lines.append(f"{meth} vs one_by_one_fp32: max |mean log-prob diff| {v['max_abs_mean_logprob_diff']:.2e}, "
                         f"{v['examples_with_a_different_decision']} examples with a different decision, "
                         f"ΔSS {v['delta_SS']:+.3f}, ΔLMS {v['delta_LMS']:+.3f}.")
    if "bf16_vs_fp32" in c:
        b = c["bf16_vs_fp32"]
        lines.append(f"bf16 vs fp32 (batched): ΔSS {b['delta_SS']:+.2f}, ΔLMS {b['delta_LMS']:+.2f}, "
                     f"ΔICAT {b['delta_ICAT']:+.2f} -> {'within' if b['within_0_5'] else 'NOT within'} 0.5.")
    if "profile" in res:
        lines += ["", "| stage share of CPU time | body | lm_head | log-softmax + gather |", "|---|---|---|---|"]
        for k, r in res["profile"].items():
            if isinstance(r, dict) and "share" in r:
                s = r["share"]
                lines.append(f"| {k} (max_tokens {r['max_tokens'] or '–'}) | {100 * s['body']:.0f}% | {100 * s['lm_head']:.0f}% "
                             f"| {100 * s['log_softmax_gather']:.0f}% |")
    return "\n".join(lines) + "\n"


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    root = data_dir(args.data_dir)
    examples = load_stereoset(root / "stereoset/ano1-yu__stereoset_adaptation", task="intrasentence")
    examples = evenly_spaced(examples, args.limit)
    models, infos = {}, {}
    for dt in ("float32", "bfloat16"):
        models[dt], tok, info = load_model(args.model, dtype=dt, device="cpu")
        infos[dt] = info.to_dict()
    fp = flop_params(models["float32"])
    res = {"model": infos["float32"], "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "argv": sys.argv, "platform": platform.platform(), "processor": platform.processor(),
           "versions": package_versions(), "load_average_start": os.getloadavg(), "flop_params": fp,
           "flop_formula": "2 * (body params + lm_head vocab*hidden) * tokens fed (start token + text + padding)"}
    print(f"[bench] {len(examples)} examples, threads {torch.get_num_threads()}, "
          f"body {fp['body'] / 1e6:.1f}M + lm_head {fp['lm_head'] / 1e6:.1f}M params", flush=True)
    res["matmul_peak"] = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(f"[bench] matmul peak {res['matmul_peak']}", flush=True)

    sweep_exs = evenly_spaced(examples, args.sweep_limit)
    if len(args.max_tokens) > 1:
        res["sweep"] = sweep(models, tok, sweep_exs, args.max_tokens, args.sweep_rounds)
        budgets = {dt: res["sweep"]["by_dtype"][dt]["best_max_tokens"] for dt in models}
    else:
        budgets = {dt: args.max_tokens[0] for dt in models}
    if not args.no_profile:
        res["profile"] = profile(models, tok, sweep_exs, budgets, one_by_one_n=min(150, 3 * len(sweep_exs)))
        print(f"[bench] profile {res['profile']}", flush=True)
    res["compare"] = compare(models, tok, examples, budgets, args.chunks, fp["per_token_flop"], res["matmul_peak"],
                             args.methods)
    # the peak again at the end, so a busier machine during the run shows up
    res["matmul_peak_end"] = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    res["load_average_end"] = os.getloadavg()
    write_json(Path(args.out), res)
    md = markdown(res)
    print(md)
    return res


if __name__ == "__main__":
    main(ARGS)
