"""The direct head path of `score_sequences` against the full forward pass, side by side.

Scores the same StereoSet test sentences both ways, interleaved slice by slice (A B, B A, ...) in one process, and
reports the ratio of CPU seconds, the largest difference in a sentence's mean log-probability, and the size of the
largest logits tensor each way (the direct path holds at most HEAD_ROWS x vocabulary float32 values at a time).

    python bench/bench_direct.py --models smollm2-135m,gemma3-270m --sentences 1200 --threads 1
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
ap.add_argument("--sentences", type=int, default=1200)
ap.add_argument("--slices", type=int, default=6)
ap.add_argument("--dtype", default="bfloat16")
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
from biasunlearn.scoring import HEAD_ROWS, encode_for_scoring, score_sequences  # noqa: E402


def main() -> int:
    torch.set_num_threads(A.threads)
    exs = load_stereoset(resolve_data_path(TEST_PATH), task="intrasentence")
    texts = [s for e in exs for s in (e.stereotype, e.anti_stereotype, e.unrelated)][: A.sentences]
    out = {"sentences": len(texts), "dtype": A.dtype, "threads": A.threads, "argv": sys.argv, "models": {}}
    for name in A.models.split(","):
        model, tok, _ = load_model(name, dtype=A.dtype, device="cpu")
        seqs, starts = encode_for_scoring(tok, texts)
        vocab = model.get_output_embeddings().weight.shape[0]
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
        del model
    write_json(A.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
