"""The `biasunlearn` command. Thin: parses arguments and calls the Python API."""
from __future__ import annotations

import argparse
import sys

from . import interrupt
from .errors import BiasUnlearnError, ConfigError
from .io import comma_list


def _add_model_args(p: argparse.ArgumentParser, adapter_required: bool = False) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="hub id, save_pretrained folder, .gguf file, or built-in name (smollm2-135m, gemma3-270m); "
                        "default: smollm2-135m")
    p.add_argument("--adapter", default=None, required=adapter_required,
                   help="PEFT adapter folder" + (", e.g. runs/smol/adapter" if adapter_required else " to apply"))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                   help="float32 (default), bfloat16, or auto: bfloat16 where the device computes it natively "
                        "(a bf16 GPU; a CPU with AVX-512 BF16 or AMX), else float32")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--data-dir", default=None, help="benchmark data folder (default: $BIASUNLEARN_DATA or ../shared/data)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """The evaluation-budget options shared by eval, transfer and export."""
    p.add_argument("--benchmarks", default="stereoset,crows_pairs,bbq,perplexity",
                   help="comma-separated, from stereoset, crows_pairs, bbq, perplexity (default: all four)")
    p.add_argument("--limit", type=int, default=None,
                   help="at most N examples per benchmark (seeded sample; 0 = all)")
    p.add_argument("--bbq-per-category", type=int, default=200, help="BBQ examples per category (0 = all)")
    p.add_argument("--ppl-max-tokens", type=int, default=32768, help="perplexity on the first N tokens (0 = all)")
    p.add_argument("--no-intersentence", action="store_true", help="skip StereoSet intersentence")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="scoring batch budget in padded tokens (default: 256 on CPU, 8192 on CUDA)")


def check_eval_budget(a) -> None:
    """--limit, --bbq-per-category and --ppl-max-tokens: 0 means all, a negative value is refused."""
    for name in ("limit", "bbq_per_category", "ppl_max_tokens"):
        if getattr(a, name) is not None and getattr(a, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(a, name)}: must be 0 or more (0 = all)")


def eval_config_from_args(a):
    from .evaluate import EvalConfig

    check_eval_budget(a)
    if a.max_tokens is not None and a.max_tokens < 1:
        raise ConfigError(f"--max-tokens {a.max_tokens}: must be at least 1")
    return EvalConfig(benchmarks=tuple(comma_list(a.benchmarks)), data_dir=a.data_dir,
                      limit=a.limit or None, bbq_per_category=None if a.bbq_per_category == 0 else a.bbq_per_category,
                      ppl_max_tokens=None if a.ppl_max_tokens == 0 else a.ppl_max_tokens,
                      stereoset_intersentence=not a.no_intersentence, max_tokens=a.max_tokens)


def _eval_cmd(a) -> int:
    from .evaluate import run_eval
    from .report import eval_markdown

    cfg = eval_config_from_args(a)
    # the tables are printed before the files are written: a write that fails still leaves the numbers on screen
    run_eval(a.model, a.adapter, a.dtype, cfg, a.out, a.device, log=lambda s: print(s, file=sys.stderr),
             runtime=a.runtime, merge_adapter=a.merge_adapter,
             before_write=lambda doc: print(eval_markdown(doc), flush=True))
    if a.out:
        print(f"results written to {a.out}/results.json", file=sys.stderr)
    return 0


class _Version(argparse.Action):
    """--version: this package's version and those of the libraries a result depends on (no model is loaded)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .evaluate import package_versions

        v = package_versions()
        rest = ", ".join(f"{k} {v[k]}" for k in v if k not in ("biasunlearn", "python"))
        print(f"biasunlearn {v['biasunlearn']} (python {v['python']}; {rest})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="biasunlearn", description="Remove social bias from causal LMs by bias unlearning.",
                                allow_abbrev=False)
    p.add_argument("--version", action=_Version, help="print the versions of biasunlearn and its libraries, and exit")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("eval", allow_abbrev=False, help="measure bias: StereoSet, CrowS-Pairs, BBQ, perplexity")
    _add_model_args(e)
    e.add_argument("--out", default=None, help="folder for results.json and predictions")
    e.add_argument("--runtime", default=None, choices=["llama.cpp"],
                   help="run a GGUF file (--model file.gguf or a built-in name) in llama.cpp instead of transformers: "
                        "the deployed file, read by the same benchmarks (needs llama-cpp-python; no --adapter)")
    e.add_argument("--merge-adapter", action="store_true",
                   help="merge --adapter into the weights before reading (in float32, rounded once to --dtype): "
                        "the read a merged export gives, at the plain model's speed")
    add_eval_args(e)
    e.set_defaults(func=_eval_cmd)

    for register in _extra_commands:
        register(sub)
    return p


_extra_commands: list = []


def _register_optional() -> None:
    for mod in ("train_cli", "compare_cli", "deploy_cli"):
        try:
            m = __import__(f"biasunlearn.{mod}", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != f"biasunlearn.{mod}":
                raise
            continue
        if m.register not in _extra_commands:  # main() may run more than once in a process (tests, notebooks)
            _extra_commands.append(m.register)


def _underscores_as_hyphens(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`train` takes its settings with underscores (--data_dir, as transformers' arguments) or hyphens; the other
    commands are written with hyphens. Let them take the underscore spelling of their own options too, so a flag
    copied from one command to another works."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command = next((t for t in argv if not t.startswith("-")), None)
    if sub is None or command not in sub.choices or command == "train":
        return argv
    known = set(sub.choices[command]._option_string_actions)
    out = []
    for token in argv:
        name, eq, value = token.partition("=")
        if name.startswith("--") and "_" in name and name not in known and name.replace("_", "-") in known:
            token = name.replace("_", "-") + eq + value
        out.append(token)
    return out


def _quiet_deepspeed_on_cpu() -> None:
    """DeepSpeed, when installed, is imported by transformers and, finding no GPU, prints a warning to stdout each
    time it looks for one. Where torch sees no CUDA, tell it the accelerator is the CPU (what it picks anyway), so
    stdout keeps only a command's results. A value already set wins."""
    import os

    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


def _resume_hint(args) -> str:
    """For a `train` stopped after its run folder began (its config.json written): how to continue it."""
    folder = getattr(args, "run_folder", None)
    if folder is None:
        return ""
    import shlex

    from .train_cli import holds_run

    if not holds_run(folder):
        return ""
    return f"; `biasunlearn train --resume {shlex.quote(str(folder))}` continues from its last checkpoint"


def _os_error_text(e: OSError) -> str:
    """'Permission denied: runs/x/log.jsonl': what failed, on which file (both files of a failed rename)."""
    if not e.strerror:
        return str(e) or type(e).__name__
    if e.filename is None:
        return e.strerror
    return f"{e.strerror}: {e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")


def _run(args, extra) -> int:
    try:
        if getattr(args, "device", None):  # a device torch does not know is named before anything loads
            from .models import parse_device

            parse_device(args.device)
        if getattr(args, "dtype", None) == "auto":  # one concrete dtype for everything the command loads
            from .models import auto_dtype, default_device

            args.dtype = str(auto_dtype(args.device or default_device())).removeprefix("torch.")
        return args.func(args, extra) if getattr(args, "accepts_extra", False) else args.func(args)
    except BiasUnlearnError as e:
        print(f"biasunlearn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # a folder made read-only, removed or full while the command ran: one line, not a traceback
        print(f"biasunlearn: error: {_os_error_text(e)}{_resume_hint(args)}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    _register_optional()
    parser = build_parser()
    argv = _underscores_as_hyphens(parser, list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _quiet_deepspeed_on_cpu()
    with interrupt.recording():
        rc = _run(args, extra)
        # a Ctrl-C whose KeyboardInterrupt was swallowed after the last check (in a weakref callback, say) still
        # ends the command as interrupted: its caller must not take the run for a whole one
        if rc == 130 or interrupt.interrupted():
            # on a line of its own: a progress bar's line does not end until the bar closes
            print(f"\nbiasunlearn: interrupted{_resume_hint(args)}", file=sys.stderr)
            rc = 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
