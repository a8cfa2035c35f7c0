"""Text sampled from the original model, for the KL term (`unrelated_source: generated`).

The KL term keeps the adapted model close to the original one, but only on the text it is computed on. StereoSet's
unrelated sentences are short and all alike, so the model may drift on everything else (what WikiText-2 perplexity
measures). Sampling from the original model itself gives text spread over what that model actually writes, and the
forward KL(pi_ref || pi_theta) on samples of pi_ref is the natural estimate of how far the whole distribution moved.
No data is needed, and nothing is taken from an evaluation set.

The samples are drawn once, with the adapter disabled and a fixed seed (the training RNG is left untouched), and
written to the run folder, so a resumed run reuses exactly the same text and a reader can see it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import interrupt
from ..errors import ConfigError
from ..io import atomic_write_text
from ..models import start_token_id

FILE = "generated_unrelated.jsonl"


def _settings(n: int, tokens: int, seed: int, model_id: str) -> dict:
    return {"n": n, "tokens": tokens, "seed": seed, "model": model_id}


def sample_texts(model, tokenizer, n: int, tokens: int, seed: int, batch_size: int = 32,
                 progress: str | None = None) -> list[str]:
    """n texts of up to `tokens` new tokens each, sampled (temperature 1, no top-k/top-p) from the start token.

    Runs under the caller's adapter state (disable it first); eval mode for the sampling (no dropout), then the
    module's previous mode is restored. The global RNG is forked, so training draws are the same as without it.
    Texts that decode to nothing (an immediate end-of-text) are dropped. `progress`: a progress bar's label.
    """
    from tqdm.auto import tqdm

    if n < 1 or tokens < 1:
        raise ConfigError(f"generated_count={n}, generated_tokens={tokens}: both must be at least 1")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    start = start_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    bar = tqdm(total=n, desc=progress, unit="text", disable=progress is None, leave=False, mininterval=1.0)
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            for b in range(0, n, batch_size):
                k = min(batch_size, n - b)
                ids = torch.full((k, 1), start, dtype=torch.long, device=dev)
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                     temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=tokens, pad_token_id=pad)
                for row in gen[:, 1:].tolist():
                    text = tokenizer.decode(row, skip_special_tokens=True).strip()
                    if text:
                        out.append(text)
                bar.update(k)
                interrupt.check()  # a Ctrl-C swallowed in generate() stops the sampling here
    finally:
        bar.close()
        model.train(was_training)
    if not out:
        raise ConfigError("unrelated_source='generated': every sampled text was empty (the model ended each one "
                          "at once); use another unrelated_source")
    return out


def load_or_sample(out_dir: Path, model, tokenizer, n: int, tokens: int, seed: int, model_id: str,
                   write: bool = True, log=print) -> list[str]:
    """The run's generated texts: read from OUT/generated_unrelated.jsonl when it was made with the same settings
    (a resumed run), else sampled and (on the main process) written there atomically."""
    path = Path(out_dir) / FILE
    want = _settings(n, tokens, seed, model_id)
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        head = json.loads(lines[0]) if lines else {}
        if head.get("settings") == want:
            return [json.loads(x)["text"] for x in lines[1:]]
        log(f"[train] {path} was made with other settings ({head.get('settings')}); sampling again")
    log(f"[train] sampling {n} texts of up to {tokens} tokens from the original model for the KL term")
    texts = sample_texts(model, tokenizer, n, tokens, seed, progress="sampling KL text")
    if write:
        body = [json.dumps({"settings": want, "kept": len(texts)})] + [json.dumps({"text": t}) for t in texts]
        atomic_write_text(path, "\n".join(body) + "\n")
    return texts
