"""Step cost of BiasUnlearn against a bare forward+backward of the same chunk through the same LoRA model.

Both are measured side by side in one process, interleaved (A B A B ...), on the same chunks, so machine noise hits
both alike; the figure that matters is the ratio of medians. The BiasUnlearn step includes everything compute_loss
does: the adapter forward on forget+retain+unrelated, the adapter-disabled reference pass for the KL term (and for
forget examples not yet in the reference cache), NPO, CE and full-vocabulary KL, and the backward pass.

    python bench/bench_step.py --model smollm2-135m --steps 8 [--bf16] [--threads 2] [--config configs/smollm2-cpu.yaml]
        [--layout packed|padded|both]

Both ways use the same batch layout: with `both` (the default) the chunk is timed packed (pack_sequences, no
padding) and padded, four timings interleaved per step, so the report also gives what packing saves.

--config takes a recipe's settings from a training YAML, and the pairs and batches are built from them by the code
`train` uses (pipeline.training_data, BiasUnlearnTrainer.draw_chunk): the figure is for the chunk that recipe
really trains on, its dev pairs with train_on_dev and its valence dealing with balance_valence included.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for both ways (as training on this CPU does)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--config", default=None, help="training YAML whose settings shape the chunk")
    ap.add_argument("--layout", choices=["packed", "padded", "both"], default="both",
                    help="batch layout: sentences packed end to end (pack_sequences, the default) or padded to the "
                         "longest; 'both' times the two side by side")
    ap.add_argument("--texts-dir", default="/tmp/bench_step",
                    help="with unrelated_source: generated, the folder whose generated_unrelated.jsonl (made with the "
                         "same settings, e.g. a run folder) gives the KL texts; sampled and written there if absent. "
                         "The KL text is chosen as `train` chooses it (stereoset, wikitext or generated)")
    ap.add_argument("--out", default="bench/results/step.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from biasunlearn.models import load_model
    from biasunlearn.train_cli import parse_train_config
    from biasunlearn.unlearn.controller import SwapController
    from biasunlearn.unlearn.losses import retention_loss
    from biasunlearn.unlearn.pipeline import prepare_lora, training_data
    from biasunlearn.unlearn.trainer import BiasUnlearnTrainer

    # the recipe's settings read as `biasunlearn train --config` reads them; these flags win over it
    argv = ["--out", "/tmp/bench_step", "--skip_final_eval", "True", "--bf16", str(a.bf16), "--use_cpu", "True",
            "--max_steps", "1000"] + (["--config", a.config] if a.config else [])
    cfg, _ = parse_train_config(argv)
    model, tok, info = load_model(a.model, device="cpu")
    model.train()
    model = prepare_lora(model, cfg)
    # the pairs and sets `train` builds from this config (train_on_dev, balance_valence, counterfactuals, ...) and
    # the KL text it uses
    sets = training_data(cfg, model, tok, Path(a.texts_dir), info.resolved, log=print).sets
    ctl = SwapController(sets.bias_types)
    tr = BiasUnlearnTrainer(model=model, args=cfg, sets=sets, controller=ctl, tokenizer=tok)
    opt_params = [p for p in model.parameters() if p.requires_grad]
    dev = torch.device("cpu")
    inputs = {"step_index": torch.tensor([0])}

    layouts = ["packed", "padded"] if a.layout == "both" else [a.layout]

    def bare(step, packed):
        ch = tr.draw_chunk(step)  # the items the BiasUnlearn step of the same index draws
        items = ch["forget"] + ch["retain"] + ch["unrelated"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            sb = tr._forward(model, items, dev, packed)
            loss = retention_loss(sb.tok_lp, sb.scored)
        loss.backward()

    def unlearn(step, packed):
        tr.state.global_step = step
        tr._packed = packed  # the layout under test (training decides it once, on its first step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = tr.compute_loss(model, inputs)
        loss.backward()

    times = {f"{kind}_{lay}": [] for lay in layouts for kind in ("bare", "biasunlearn")}
    import resource

    for i in range(a.warmup + a.steps):
        for lay in layouts:
            for kind, fn in (("bare", bare), ("biasunlearn", unlearn)):
                for p in opt_params:
                    p.grad = None
                t = time.perf_counter()
                fn(i, lay == "packed")
                dt = time.perf_counter() - t
                if i >= a.warmup:
                    times[f"{kind}_{lay}"].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {lay: med[f"biasunlearn_{lay}"] / med[f"bare_{lay}"] for lay in layouts}
    res = {"model": a.model, "bf16_autocast": a.bf16, "threads": torch.get_num_threads(), "steps": a.steps,
           "config": a.config, "layouts": layouts,
           "chunk": {"forget": cfg.forget_batch_size, "retain": cfg.retain_batch_size,
                     "unrelated": cfg.unrelated_batch_size, "pair_retain": cfg.pair_retain,
                     "retain_reduction": cfg.retain_reduction, "score_span": cfg.score_span,
                     "unrelated_source": cfg.unrelated_source, "kl_reduction": cfg.kl_reduction,
                     "balance_types": cfg.balance_types, "balance_terms": cfg.balance_terms,
                     "balance_valence": cfg.balance_valence, "valence_weights": cfg.valence_weights,
                     "train_on_dev": cfg.train_on_dev,
                     **({"generated_tokens": cfg.generated_tokens} if cfg.unrelated_source == "generated" else {})},
           "median_s": med, "all_s": times, "ratio": ratios,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "model_params": info.n_params,
           "second_copy_would_add_mb": info.n_params * 4 / 2**20}
    if len(layouts) == 2:  # what packing saves, on the same chunks, side by side
        res["packed_over_padded"] = {kind: med[f"{kind}_packed"] / med[f"{kind}_padded"]
                                     for kind in ("bare", "biasunlearn")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    for lay in layouts:
        print(f"[{lay}] bare fwd+bwd median {med[f'bare_{lay}']:.2f}s | BiasUnlearn step median "
              f"{med[f'biasunlearn_{lay}']:.2f}s | ratio {ratios[lay]:.3f}")
    if len(layouts) == 2:
        print("packed / padded time: " + ", ".join(f"{k} {v:.3f}" for k, v in res["packed_over_padded"].items()))
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
