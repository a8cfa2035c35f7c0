"""`biasunlearn export --gguf` on a built-in model: which tensors it replaces and in which layout, the file sizes,
the time, and how closely the GGUF file (read back by transformers, and run in llama.cpp when llama-cpp-python is
installed) scores like the adapter model, against how far the adapter moved those scores. The adapter is random
(LoRA r 8 on every attention and MLP layer, lora_B ~ N(0, scale)) unless --adapter names a trained one.

    python bench/bench_gguf_export.py --model smollm2-135m --out bench/results/gguf_export_smollm2.json
    python bench/bench_gguf_export.py --model gemma3-270m --out bench/results/gguf_export_gemma.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="a built-in name or a .gguf file")
    ap.add_argument("--adapter", default=None, help="a trained adapter (default: a random one)")
    ap.add_argument("--scale", type=float, default=0.01, help="std of the random adapter's lora_B")
    ap.add_argument("--type", default="f16", choices=["f16", "f32"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--keep", default=None, help="export into this folder and keep it (default: a temporary one)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from biasunlearn.adapters import apply_adapter
    from biasunlearn.deploy import _score_probes, export_merged
    from biasunlearn.models import gguf_source, load_model, resolve_model_path

    work = Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    adapter = a.adapter
    if adapter is None:
        import _tiny

        adapter = _tiny.make_adapter(Path(resolve_model_path(a.model)[0]), work / "run" / "adapter", r=8,
                                     scale=a.scale)
    m, tok, _ = load_model(a.model)
    base_probe = _score_probes(m, tok)
    m = apply_adapter(m, adapter)
    adapter_probe = _score_probes(m, tok)
    del m
    t0 = time.perf_counter()
    dest = Path(a.keep) if a.keep else work / "export"
    res = export_merged(a.model, adapter, dest, gguf=a.type, log=lambda s: print(s, file=sys.stderr))
    wall = time.perf_counter() - t0
    g = res["gguf"]
    src = gguf_source(a.model)
    out = {"model": a.model, "adapter": str(a.adapter or f"random, lora_B ~ N(0, {a.scale})"), "type": a.type,
           "architecture": g["architecture"], "tensors": g["tensors"], "replaced": g["replaced"],
           "layouts": g["layouts"], "source_mb": round(src.stat().st_size / 2 ** 20, 1),
           "gguf_mb": round((dest / g["file"]).stat().st_size / 2 ** 20, 1),
           "max_abs_diff_gguf_vs_adapter": g["verification"]["max_abs_diff_mean_logprob"],
           "max_abs_diff_folder_vs_adapter": res["verification"]["max_abs_diff_mean_logprob"],
           "adapter_moved_probes_by": max(abs(x - y) for x, y in zip(base_probe, adapter_probe)),
           "runtime_check": g.get("runtime_check"),
           "export_wall_s": round(wall, 1), "threads": a.threads,
           "note": "export_wall_s covers loading, merging, saving and checking the folder, writing the GGUF file and "
                   "loading it back to check it (and, with llama-cpp-python installed, running it and the source file "
                   "in llama.cpp)"}
    print(json.dumps(out, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
