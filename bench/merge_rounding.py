"""How much of a LoRA adapter's change a bfloat16 merge keeps: peft's merge into weights already rounded to bfloat16
(what `export --dtype bfloat16` did through session 32) against the merge in float32 rounded once
(`load_model(merge_adapter=True)`, what export and the merged reads do now). No evaluation; weights only.

For every weight the adapter changes, with W the float32 weight and D the adapter's change (float32):
- exact: W + D; once: bfloat16(W + D), the nearest bfloat16; naive: peft's merge of the adapter into bfloat16(W);
- per mode, the share of the weights whose bfloat16 value moved (≠ bfloat16(W)), and the error against exact
  (largest and root-mean-square, relative to the change D's root-mean-square);
- the share of weights where naive ≠ once.

    python bench/merge_rounding.py --model smollm2-135m --adapter runs/demo31/adapter \
        --out bench/results/merge_rounding_smollm2_s33.json
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--adapter", required=True)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = p.parse_args(argv)

    import torch

    from biasunlearn.io import write_json
    from biasunlearn.models import load_model

    half = getattr(torch, a.dtype)
    ref, _, _ = load_model(a.model, adapter=a.adapter, device="cpu")  # float32, unmerged
    exact = {}
    for name, mod in ref.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            w = mod.get_base_layer().weight.detach()
            exact[name.removeprefix("base_model.model.") + ".weight"] = (w.clone(), mod.get_delta_weight("default"))
    del ref
    once, _, _ = load_model(a.model, adapter=a.adapter, dtype=a.dtype, device="cpu", merge_adapter=True)
    naive, _, _ = load_model(a.model, adapter=a.adapter, dtype=a.dtype, device="cpu")
    naive = naive.merge_and_unload()
    n = 0
    tot = {m: {"moved": 0, "sq": 0.0, "max": 0.0} for m in ("once", "naive")}
    differ = 0
    d_sq = 0.0
    for name, (w, d) in exact.items():
        target = w + d
        start = w.to(half)
        n += w.numel()
        d_sq += float((d.double() ** 2).sum())
        got = {"once": once.get_parameter(name).detach(), "naive": naive.get_parameter(name).detach()}
        for m, g in got.items():
            err = (g.float() - target).double()
            tot[m]["moved"] += int((g != start).sum())
            tot[m]["sq"] += float((err ** 2).sum())
            tot[m]["max"] = max(tot[m]["max"], float(err.abs().max()))
        differ += int((got["once"] != got["naive"]).sum())
    d_rms = (d_sq / n) ** 0.5
    doc = {"model": a.model, "adapter": a.adapter, "dtype": a.dtype, "tensors": len(exact), "weights": n,
           "change_rms": d_rms, "naive_differs_from_once_share": differ / n,
           "modes": {m: {"moved_share": v["moved"] / n, "err_rms_over_change_rms": (v["sq"] / n) ** 0.5 / d_rms,
                         "err_max": v["max"]} for m, v in tot.items()}}
    print(f"{a.model} + {a.adapter}: {len(exact)} tensors, {n:,} weights, change rms {d_rms:.3e}")
    print("| merge | weights moved | error rms / change rms | largest error |")
    print("|---|---|---|---|")
    for m, v in doc["modes"].items():
        print(f"| {m} | {100 * v['moved_share']:.1f}% | {v['err_rms_over_change_rms']:.3f} | {v['err_max']:.2e} |")
    print(f"naive differs from once in {100 * doc['naive_differs_from_once_share']:.1f}% of the weights")
    if a.out:
        write_json(a.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
