"""Make a fine-tuned variant of a model to transfer a debiasing adapter onto (no base/instruct pair ships here).

A few hundred steps of FULL fine-tuning (every weight) on WikiText-2 windows, saved as a plain save_pretrained
folder with the tokenizer. Only WikiText-2 *test* is available locally, and `biasunlearn eval` measures perplexity
on its first 32,768 tokens, so training uses only the tokens after those (--skip-tokens): the perplexity tokens
are never trained on, but they come from the same distribution, so the variant's perplexity drops. That is the
point (a variant that really moved), and BENCHMARKS.md says so.

    python bench/make_variant.py --out runs/variants/smollm2-135m-wt2            # ~200 steps, CPU, 1 thread

Writes <out>/ (config.json, model.safetensors, tokenizer files) and <out>/variant_info.json (settings, data range
and sha256, loss curve, wall time).
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch

from biasunlearn.data import data_dir, load_text_lines
from biasunlearn.evaluate import DEFAULT_PATHS
from biasunlearn.io import sha256_file, write_json
from biasunlearn.models import load_model


def windows(ids: list[int], seq: int) -> list[list[int]]:
    return [ids[i:i + seq] for i in range(0, len(ids) - seq + 1, seq)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default="runs/variants/smollm2-135m-wt2")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--skip-tokens", type=int, default=32768,
                   help="leave the first N tokens (the perplexity evaluation's) out of training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for forward/backward (weights stay float32)")
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    if (out / "config.json").exists():
        print(f"{out} already holds a model; delete it to remake the variant", file=sys.stderr)
        return 1
    model, tok, info = load_model(a.model, device=a.device)
    text_path = data_dir(a.data_dir) / DEFAULT_PATHS["perplexity"]
    ids = tok("\n".join(load_text_lines(text_path)), add_special_tokens=False)["input_ids"]
    train_ids = ids[a.skip_tokens:]
    wins = windows(train_ids, a.seq)
    need = a.steps * a.batch
    rng = random.Random(a.seed)
    order = []
    while len(order) < need:  # epochs over shuffled windows
        perm = list(range(len(wins)))
        rng.shuffle(perm)
        order += perm
    print(f"[variant] {len(ids)} tokens in {text_path.name}; training on tokens {a.skip_tokens}..{len(ids)} "
          f"({len(wins)} windows of {a.seq}); {a.steps} steps x {a.batch} = {need / len(wins):.2f} epochs",
          file=sys.stderr)

    device = next(model.parameters()).device
    model.train()
    model.config.use_cache = False
    for prm in model.parameters():
        prm.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay, betas=(0.9, 0.95))

    def lr_at(step):  # linear warmup, cosine decay to 10%
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        t = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    losses, t0 = [], time.perf_counter()
    for step in range(a.steps):
        batch = torch.tensor([wins[i] for i in order[step * a.batch:(step + 1) * a.batch]], device=device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.detach().item(), 4))
        if step % 10 == 0 or step == a.steps - 1:
            el = time.perf_counter() - t0
            print(f"[variant] step {step + 1}/{a.steps} loss {loss.item():.4f} lr {lr_at(step):.2e} "
                  f"({el / (step + 1):.1f} s/step)", file=sys.stderr)
    wall = time.perf_counter() - t0

    model.eval()
    model.config.use_cache = True
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    del opt
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_json(out / "variant_info.json", {
        "base_model": info.to_dict(), "method": "full fine-tuning (all weights), causal LM loss",
        "data": {"file": str(text_path), "sha256": sha256_file(text_path), "tokens_in_file": len(ids),
                 "trained_token_range": [a.skip_tokens, len(ids)], "windows": len(wins),
                 "note": "the first --skip-tokens tokens are the perplexity evaluation's and are not trained on"},
        "settings": vars(a), "steps": a.steps, "loss_first10": losses[:10], "loss_last10": losses[-10:],
        "loss_curve": losses, "wall_time_s": round(wall, 1), "torch_threads": torch.get_num_threads()})
    head, tail = losses[:10], losses[-10:]
    print(f"[variant] saved to {out} ({wall / 60:.1f} min; mean loss of the first/last 10 steps "
          f"{sum(head) / len(head):.3f} -> {sum(tail) / len(tail):.3f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
