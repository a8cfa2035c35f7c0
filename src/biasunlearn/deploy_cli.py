"""`biasunlearn transfer` and `biasunlearn export` (registered by cli.py). Thin: parse, call biasunlearn.deploy."""
from __future__ import annotations

import sys

from .cli import eval_config_from_args


def _log(s: str) -> None:
    print(s, file=sys.stderr)


def _transfer_cmd(a) -> int:
    from .deploy import transfer

    res = transfer(a.adapter, a.model, a.out, dtype=a.dtype, device=a.device, cfg=eval_config_from_args(a),
                   reuse=a.reuse, merge_adapter=a.merge_adapter, log=_log)
    print(res["report"].read_text())
    return 0


def _export_cmd(a) -> int:
    from .deploy import export_merged

    res = export_merged(a.model, a.adapter, a.out, dtype=a.dtype, device=a.device,
                        run_eval=a.eval, cfg=eval_config_from_args(a), verify=not a.no_verify, overwrite=a.overwrite,
                        gguf=a.gguf, log=_log)
    print(f"exported to {res['out']} (model card: {res['card']})")
    if res.get("gguf"):
        print(f"GGUF: {res['out'] / res['gguf']['file']}")
    return 0


def register(subparsers) -> None:
    from .cli import _add_model_args, add_eval_args

    t = subparsers.add_parser(
        "transfer", allow_abbrev=False, help="apply an adapter to a fine-tuned variant of its base model and measure before/after",
        description="Check that --adapter fits --model (listing every module or shape that does not), evaluate "
                    "the model alone and with the adapter, and write report.md and eval_before/, eval_after/ "
                    "results to --out.")
    _add_model_args(t, adapter_required=True)
    t.add_argument("--out", required=True, help="folder for report.md and the before/after results")
    t.add_argument("--reuse", action="store_true",
                   help="keep results already in --out made with the same model, adapter and settings")
    t.add_argument("--merge-adapter", action="store_true",
                   help="merge --adapter into the model's weights for the after read (in float32, rounded once to "
                        "--dtype): the read a merged export gives, at the plain model's speed; with a bfloat16 "
                        "--dtype the model is read again in float32 in host memory")
    add_eval_args(t)
    t.set_defaults(func=_transfer_cmd)

    e = subparsers.add_parser(
        "export", allow_abbrev=False, help="merge an adapter into its base model and save a plain transformers folder + model card",
        description="Merge --adapter into --model (merge_and_unload; with --dtype bfloat16 the merge is done in "
                    "float32 and each weight rounded once, the model read again in float32 in host memory), save it "
                    "with save_pretrained (safetensors) "
                    "with the tokenizer and a README.md model card. The folder loads with "
                    "AutoModelForCausalLM.from_pretrained; biasunlearn is not needed to use it.")
    _add_model_args(e, adapter_required=True)
    e.add_argument("--out", required=True, help="folder to create (e.g. dist/smollm2-135m-debiased)")
    e.add_argument("--eval", action="store_true",
                   help="run the evaluation suite on the base and merged model when the training run beside the "
                        "adapter has no eval_before/eval_after results (stored under <out>/evaluation/)")
    e.add_argument("--no-verify", action="store_true",
                   help="skip reloading the saved folder (and the GGUF file) to check it scores like the adapter model")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out")
    e.add_argument("--gguf", nargs="?", const="f16", default=None, choices=["f16", "f32"],
                   help="also write <out>/gguf/<out name>.gguf for llama.cpp / Ollama: the model's own GGUF file with "
                        "the tensors the adapter changed replaced (stored as f16, the default, or f32) and the rest "
                        "copied; needs a model read from a GGUF file (a built-in name or a .gguf path). The check "
                        "reads it back with transformers and, when llama-cpp-python is installed, runs it in llama.cpp")
    add_eval_args(e)
    e.set_defaults(func=_export_cmd)
