"""Does a debiasing adapter trained on one model work on a fine-tuned variant of it? (BiasUnlearn §"transfer")

Measures, with one evaluation config for all:
  base                      the model the adapter was trained on
  base + adapter            the adapter where it was trained
  variant                   a fine-tuned variant (bench/make_variant.py)
  variant + adapter         the same adapter, transferred (biasunlearn.deploy.transfer)
  variant + own adapter     an adapter trained directly on the variant (optional, --variant-adapter)

    python bench/bench_transfer.py --adapter runs/smol/adapter --variant runs/variants/smollm2-135m-wt2 \\
        [--variant-adapter runs/smol-variant/adapter] --limit 300 --update BENCHMARKS.md

Every results document lands under --out (default runs/bench_transfer); a rerun reuses the ones made from the same
weights, adapter and settings. The markdown goes to <out>/transfer_benchmark.md and, with --update, replaces the
section between the bench_transfer markers in BENCHMARKS.md (appended when the markers are absent).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from biasunlearn.adapters import apply_adapter
from biasunlearn.deploy import adapter_base_name, cache_info, check_adapter_fits, evaluate_cached, transfer
from biasunlearn.evaluate import EvalConfig, package_versions
from biasunlearn.io import atomic_write_text, sha256_file
from biasunlearn.models import load_model
from biasunlearn.report import before_after_markdown, summary_markdown

BEGIN, END = "<!-- bench_transfer:begin -->", "<!-- bench_transfer:end -->"


def _log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def _eval_with_adapter(model_spec, adapter, cfg, out_dir, a) -> dict:
    m, tok, info = load_model(model_spec, dtype=a.dtype, device=a.device)
    if adapter is None:
        return evaluate_cached(m, tok, cfg, cache_info(info), out_dir, True, _log)
    check_adapter_fits(m, adapter, f"--model {model_spec}")
    m = apply_adapter(m, adapter)
    m.eval()
    return evaluate_cached(m, tok, cfg, cache_info(info, adapter), out_dir, True, _log)


def _wall(doc: dict) -> float:
    return sum(b.get("wall_time_s", 0) for b in (doc.get("benchmarks") or {}).values())


def update_section(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{body.rstrip()}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    atomic_write_text(path, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", default=None,
                   help="debiasing adapter trained on --base (e.g. runs/smol/adapter); without it only the base and "
                        "the variant are measured (cached for the full run)")
    p.add_argument("--variant", required=True, help="fine-tuned variant folder (bench/make_variant.py)")
    p.add_argument("--variant-adapter", default=None, help="adapter trained directly on the variant (optional)")
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--out", default="runs/bench_transfer")
    p.add_argument("--update", default=None, help="markdown file whose bench_transfer section to replace")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="at most N examples per benchmark (seeded)")
    p.add_argument("--bbq-per-category", type=int, default=200)
    p.add_argument("--ppl-max-tokens", type=int, default=32768)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = EvalConfig(data_dir=a.data_dir, limit=a.limit, bbq_per_category=a.bbq_per_category or None,
                     ppl_max_tokens=a.ppl_max_tokens or None, progress=False)
    out = Path(a.out)
    t0 = time.perf_counter()

    _log("[bench] base and base + adapter")
    base = _eval_with_adapter(a.base, None, cfg, out / "base" / "eval_before", a)
    if a.adapter:
        base_ad = _eval_with_adapter(a.base, a.adapter, cfg, out / "base" / "eval_after", a)
        _log("[bench] variant and variant + transferred adapter")
        tr = transfer(a.adapter, a.variant, out / "transfer", dtype=a.dtype, device=a.device, cfg=cfg, reuse=True,
                      log=_log)
    else:  # the same cache paths as the full run, so it reuses these
        _log("[bench] no --adapter: measuring the variant only")
        base_ad = None
        tr = {"before": _eval_with_adapter(a.variant, None, cfg, out / "transfer" / "eval_before", a), "after": None}
    own = None
    if a.variant_adapter:
        _log("[bench] variant + adapter trained on the variant")
        own = _eval_with_adapter(a.variant, a.variant_adapter, cfg, out / "variant_own" / "eval_after", a)

    vinfo = {}
    vpath = Path(a.variant) / "variant_info.json"
    if vpath.exists():
        vinfo = json.loads(vpath.read_text())
    rows = [(f"base `{a.base}`", base), ("base + adapter", base_ad), ("variant", tr["before"]),
            ("variant + transferred adapter", tr["after"])]
    rows = [(lab, d) for lab, d in rows if d is not None]
    if own is not None:
        rows.append(("variant + adapter trained on the variant", own))
    lim = "all examples" if a.limit is None else f"at most {a.limit} examples per benchmark (seeded sample)"
    words = list(sys.argv[1:] if argv is None else argv)
    if "--update" in words:  # where the markdown went is not how the numbers were made
        i = words.index("--update")
        del words[i:i + 2]
    L = ["## Transfer to a fine-tuned variant", "",
         "Made by `python bench/bench_transfer.py " + " ".join(shlex.quote(w) for w in words) + "`.", "",
         (f"- adapter: `{a.adapter}` (trained on `{adapter_base_name(a.adapter)}`), sha256 "
          f"`{sha256_file(Path(a.adapter) / 'adapter_model.safetensors')[:16]}…`" if a.adapter else
          "- adapter: **none yet**: the rows with an adapter are to be filled by rerunning with `--adapter`")]
    if vinfo:
        s = vinfo.get("settings", {})
        L.append(f"- variant: `{a.variant}`: {vinfo.get('method', 'fine-tuned')} of `{s.get('model', a.base)}` for "
                 f"{vinfo.get('steps')} steps × batch {s.get('batch')} × {s.get('seq')} tokens on WikiText-2 raw test "
                 f"tokens {vinfo.get('data', {}).get('trained_token_range')} (lr {s.get('lr')}, "
                 f"{'bf16 autocast' if s.get('bf16') else 'float32'}); training loss "
                 f"{sum(vinfo['loss_first10']) / len(vinfo['loss_first10']):.3f} → "
                 f"{sum(vinfo['loss_last10']) / len(vinfo['loss_last10']):.3f}; {vinfo.get('wall_time_s', 0) / 60:.0f} min")
        L.append("- the perplexity below is measured on the first tokens of the same file, which the variant did not "
                 "train on; being in-domain, the variant's perplexity drops by design")
    else:
        L.append(f"- variant: `{a.variant}`")
    if a.variant_adapter:
        L.append(f"- own adapter: `{a.variant_adapter}` (trained on `{adapter_base_name(a.variant_adapter)}`)")
    L += [f"- evaluation: {lim}; BBQ {a.bbq_per_category} per category; perplexity on the first "
          f"{a.ppl_max_tokens} tokens; {a.dtype}; device {tr['before'].get('model', {}).get('device', '?')}; "
          f"{torch.get_num_threads()} torch thread(s) on {os.cpu_count()} CPU(s) ({platform.machine()})",
          "- versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()),
          "- wall time of the evaluations: " + ", ".join(f"{lab.replace('`', '')} {_wall(d):.0f} s" for lab, d in rows),
          "", "### Summary", "", summary_markdown(rows),
          "### Variant: before and after the transferred adapter", ""]
    if tr["after"] is not None:
        L.append(before_after_markdown(tr["before"], tr["after"], "variant", "+ transferred", heading_level=4))
    else:
        L += ["to be filled (no adapter yet)", ""]
    if own is not None and tr["after"] is not None:
        L += ["### Variant: transferred adapter vs adapter trained on the variant", "",
              before_after_markdown(tr["after"], own, "transferred", "own", heading_level=4)]
    else:
        L += ["### Variant + adapter trained on the variant", "",
              "not measured yet: train one with `biasunlearn train --model <variant> --out <run>` and rerun with "
              "`--variant-adapter <run>/adapter`.", ""]
    if base_ad is not None:
        L += ["### Base: before and after the adapter", "",
              before_after_markdown(base, base_ad, "base", "+ adapter", heading_level=4)]
    L += ["### Base vs variant (what the fine-tuning changed, no adapter)", "",
          before_after_markdown(base, tr["before"], "base", "variant", heading_level=4)]
    body = "\n".join(L)
    atomic_write_text(out / "transfer_benchmark.md", body + "\n")
    if a.update:
        update_section(Path(a.update), body)
        _log(f"[bench] section updated in {a.update}")
    print(body)
    _log(f"[bench] done in {(time.perf_counter() - t0) / 60:.1f} min; markdown in {out / 'transfer_benchmark.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
