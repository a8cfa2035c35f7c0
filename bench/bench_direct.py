"""Two scoring shortcuts against the plain way, side by side, in one process, interleaved slice by slice (A B, B A).

1. The direct head path of `score_sequences` (lm_head + log-softmax on scored positions only) against the full
   forward pass, on StereoSet test sentences: ratio of CPU seconds, the largest difference in a sentence's mean
   log-probability, and the largest logits tensor each way.
2. Shared-prompt BBQ scoring (`score_texts_shared`: context and question once, cache repeated for the three
   answers) against scoring each answer with its own copy of the prompt: ratio of CPU seconds, largest difference,
   and how many predicted answers agree. Its one-time check (first batch scored both ways) runs before the clock.

    python bench/bench_direct.py --models smollm2-135m,gemma3-270m --sentences 1200 --bbq 210 --threads 1
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
ap.add_argument("--sentences", type=int, default=1200)
ap.add_argument("--bbq", type=int, default=210, help="BBQ examples (spread over the categories)")
ap.add_argument("--slices", type=int, default=6)
ap.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16 (only fast on CPUs with native bf16)")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--out", default="bench/results/direct.json")
A = ap.parse_args()
os.environ["OMP_NUM_THREADS"] = str(A.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from biasunlearn.data.stereoset import load_stereoset  # noqa: E402
from biasunlearn.data.splits import TEST_PATH  # noqa: E402
from biasunlearn.data.common import resolve_data_path  # noqa: E402
from biasunlearn.io import write_json  # noqa: E402
from biasunlearn.models import load_model  # noqa: E402
from biasunlearn.data.bbq import load_bbq  # noqa: E402
from biasunlearn.evaluate import BBQ_PROMPT  # noqa: E402
from biasunlearn.scoring import HEAD_ROWS, encode_for_scoring, score_sequences, score_texts, score_texts_shared  # noqa: E402


def bbq_side_by_side(model, tok, examples, slices: int) -> dict:
    prompts = [BBQ_PROMPT.format(context=e.context, question=e.question) for e in examples]
    texts = [" " + a for e in examples for a in e.answers]
    score_texts_shared(model, tok, prompts[:8], texts[:24], 3)  # the one-time check, off the clock
    cpu = {"plain": 0.0, "shared": 0.0}
    res = {"plain": [], "shared": []}
    for k, part in enumerate(np.array_split(np.arange(len(examples)), slices)):
        p = [prompts[i] for i in part]
        t = [texts[3 * i + j] for i in part for j in range(3)]
        for way in (("shared", "plain") if k % 2 == 0 else ("plain", "shared")):
            t0 = time.process_time()
            if way == "plain":
                out = score_texts(model, tok, t, [x for x in p for _ in range(3)])
            else:
                out = score_texts_shared(model, tok, p, t, 3)
            cpu[way] += time.process_time() - t0
            res[way] += [o.mean for o in out]
    a, b = np.array(res["plain"]).reshape(-1, 3), np.array(res["shared"]).reshape(-1, 3)
    return {"examples": len(examples), "cpu_s_plain": cpu["plain"], "cpu_s_shared": cpu["shared"],
            "speedup": cpu["plain"] / cpu["shared"], "max_abs_diff_mean_logprob": float(np.abs(a - b).max()),
            "same_predicted_answer": int((a.argmax(1) == b.argmax(1)).sum())}


def main() -> int:
    torch.set_num_threads(A.threads)
    exs = load_stereoset(resolve_data_path(TEST_PATH), task="intrasentence")
    texts = [s for e in exs for s in (e.stereotype, e.anti_stereotype, e.unrelated)][: A.sentences]
    bbq_all = load_bbq(resolve_data_path("bbq"))
    bbq = bbq_all[:: max(1, len(bbq_all) // A.bbq)][: A.bbq] if A.bbq else []
    out = {"sentences": len(texts), "dtype": A.dtype, "threads": A.threads, "argv": sys.argv, "models": {}}
    for name in A.models.split(","):
        model, tok, _ = load_model(name, dtype=A.dtype, device="cpu")
        seqs, starts = encode_for_scoring(tok, texts)
        vocab = model.get_output_embeddings().weight.shape[0]
        score_sequences(model, seqs[:16], starts[:16], pad_id=tok.pad_token_id or 0)  # its one-time check, off the clock
        cpu = {True: 0.0, False: 0.0}
        sums = {True: [], False: []}
        counts = []
        for k, part in enumerate(np.array_split(np.arange(len(seqs)), A.slices)):
            sub, st = [seqs[i] for i in part], [starts[i] for i in part]
            for direct in ((True, False) if k % 2 == 0 else (False, True)):
                t0 = time.process_time()
                s, c = score_sequences(model, sub, st, pad_id=tok.pad_token_id or 0, direct=direct)
                cpu[direct] += time.process_time() - t0
                sums[direct].append(s)
            counts.append(c)
        c = np.concatenate(counts)
        d = np.abs(np.concatenate(sums[True]) / c - np.concatenate(sums[False]) / c).max()
        longest = max(len(s) for s in seqs)
        out["models"][name] = {
            "vocab": vocab, "cpu_s_full": cpu[False], "cpu_s_direct": cpu[True], "speedup": cpu[False] / cpu[True],
            "max_abs_diff_mean_logprob": float(d),
            "largest_logits_values": {"full (one batch of the 256-token budget)": 256 * vocab,
                                      "direct": HEAD_ROWS * vocab},
            "longest_sequence": longest}
        print(name, {k: v for k, v in out["models"][name].items() if k != "largest_logits_values"}, flush=True)
        if bbq:
            out["models"][name]["bbq_shared_prompt"] = bbq_side_by_side(model, tok, bbq, A.slices)
            print(name, "bbq", out["models"][name]["bbq_shared_prompt"], flush=True)
        del model
    write_json(A.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
