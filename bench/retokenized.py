"""How many training sentences a model's tokenizer splits otherwise when their parts are tokenized apart.

The trainer scores only a sentence's y part (the filled-in word and the rest), so it needs the sentence's tokens cut
where y begins. Tokenized apart, x ("The mother was very") and y (" caring.") give most tokenizers the tokens of the
whole sentence; a SentencePiece tokenizer in its legacy mode gives y a lone "▁" in front. Since session 35 the
trainer then trains on the whole sentence's tokens, split at y (`scoring.tokenize_parts`), as the evaluation scores
them. This script counts, for every train and dev sentence of the pool under both score spans that split a sentence
(`y`, `word`), how many take that path, that is how many a model's training changed with the fix (0 means none).

    python bench/retokenized.py --models smollm2-135m,gemma3-270m [--out retokenized.json]
"""
from __future__ import annotations

import argparse
import json
import sys

from biasunlearn.data.splits import make_splits
from biasunlearn.io import comma_list, write_json
from biasunlearn.models import load_tokenizer, resolve_model_path
from biasunlearn.scoring import tokenize_parts
from biasunlearn.unlearn.sets import make_item


def count(tok, examples) -> dict:
    out = {}
    for span in ("y", "word"):
        n = whole = 0
        for e in examples:
            for label in ("stereotype", "anti-stereotype"):
                it = make_item(e, label, span)
                n += 1
                whole += tokenize_parts(tok, (it.x, it.y, it.z))[1]
        out[span] = {"sentences": n, "retokenized": whole}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2-135m", help="comma-separated --model values")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    splits = make_splits(a.data_dir, seed=a.seed)
    res = {}
    for spec in comma_list(a.models):
        tok = load_tokenizer(resolve_model_path(spec)[0])
        res[spec] = {"fast_tokenizer": bool(getattr(tok, "is_fast", False)), **count(tok, splits.train + splits.dev)}
        print(f"{spec}: " + ", ".join(f"score_span {s}: {v['retokenized']} of {v['sentences']} retokenized"
                                      for s, v in res[spec].items() if s != "fast_tokenizer"))
    if a.out:
        write_json(a.out, res)
    json.dump(res, sys.stderr, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
