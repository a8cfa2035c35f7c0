"""`biasunlearn compare`: baselines, ablations and BiasUnlearn on one model, one report (report.md, report.html)."""
from __future__ import annotations

import sys
from functools import partial

from .io import comma_list


# settings every trained method shares, recorded as the comparison's budget
BUDGET = ("max_steps", "learning_rate", "eval_every")


def _compare_cmd(a) -> int:
    from .compare import check_method_budget, resolve_methods, run_compare, write_compare_report
    from .compare_seeds import parse_seeds

    seeds = parse_seeds(a.seeds) if a.seeds is not None else None
    # the options every run reads, before anything loads (the base model is evaluated first)
    if a.methods is not None:
        resolve_methods(a.methods, a.ablations)
    check_method_budget(a.batch_size, a.dpo_pairs, a.dpo_beta)

    if a.report_only:
        from pathlib import Path

        from .compare_seeds import PLAN, write_seeds_report
        from .errors import ConfigError
        from .io import folder_lock

        # --methods / --ablations pick the folders reported (a folder assembled from several runs); else the plan's
        names = resolve_methods(a.methods, a.ablations) if a.methods or a.ablations else None
        out = Path(a.out)
        if not out.is_dir():  # checked before the lock, which would make the folder
            raise ConfigError(f"{out}: no such folder (--report-only rebuilds the report of an earlier compare --out)")
        with folder_lock(out):  # not while a compare still writes there: its report would mix two states
            if seeds or ((out / PLAN).exists() and not (out / "compare.json").exists()):
                paths = write_seeds_report(out, seeds, names)
            else:
                paths = write_compare_report(out, names)
        if paths.get("missing"):
            print(f"[compare] warning: no results.json for {', '.join(paths['missing'])} in {out}: left out of the "
                  "report", file=sys.stderr)
        print(f"report: {paths['report']}\nhtml:   {paths['html']}")
        return 0
    from .cli import check_eval_budget
    from .unlearn.config import settings_from_pairs

    overrides = {}
    if a.config:  # the recipe first; the budget flags and --set win over it
        from .train_cli import read_recipe

        overrides = read_recipe(a.config)
    given = settings_from_pairs(a.set or [])
    set_keys = set(given)
    overrides.update(given)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if seeds and "seed" in overrides and "seed" not in set_keys:  # --seeds wins over a config file's seed
        log(f"[compare] --config: seed {overrides.pop('seed')!r} left out (--seeds sets each run's seed)")
    for k in ("output_dir", "model"):  # every method has its own folder, and --model names the one model
        if k in overrides:
            log(f"[compare] --config: {k} {overrides.pop(k)!r} left out (compare sets it: --out, --model)")
    budget = {k: getattr(a, k) for k in BUDGET}
    steps_given = a.max_steps is not None or "max_steps" in set_keys  # on the command line, not the recipe's
    for k in BUDGET:
        value = overrides.pop(k, None)
        if value is not None and (budget[k] is None or k in set_keys):  # --set wins over the flag
            budget[k] = value
    stop = overrides.get("stop_at_step")
    if stop and budget["max_steps"] and "stop_at_step" not in set_keys:
        # a recipe that fixes its schedule keeps its last adapter, and every method (the baselines too) stops at the
        # same step of the same schedule; a step budget given on the command line replaces the recipe's schedule,
        # also when it is the recipe's own length
        if steps_given or stop > budget["max_steps"]:
            if stop != budget["max_steps"]:
                log(f"[compare] stop_at_step {stop} -> {budget['max_steps']}: every method trains max_steps steps")
            overrides["stop_at_step"] = budget["max_steps"]
        elif stop < budget["max_steps"]:
            log(f"[compare] every method stops at step {stop} of the recipe's {budget['max_steps']}-step schedule "
                "(stop_at_step)")
    check_eval_budget(a)
    if seeds:
        from .compare_seeds import run_compare_seeds

        run = partial(run_compare_seeds, seeds=seeds)
    else:
        run = run_compare
    res = run(a.model, a.methods, a.out, ablations=a.ablations, **budget, benchmarks=a.benchmarks,
                      limit=a.limit or None,
                      bbq_per_category=a.bbq_per_category, ppl_max_tokens=a.ppl_max_tokens, dtype=a.dtype,
                      data_dir=a.data_dir, rerun=a.rerun or (), config_overrides=overrides or None,
                      baseline_batch_size=a.batch_size, dpo_pairs_per_step=a.dpo_pairs, dpo_beta=a.dpo_beta,
                      ablation_checkpoint=a.ablation_checkpoint, stereoset_intersentence=not a.no_intersentence,
                      merge_adapter=a.merge_adapter, log=log)
    print(f"report: {res['report']}\nhtml:   {res['html']}")
    return 0


def register(sub) -> None:
    from .compare import ABLATIONS, DEFAULT_METHODS, KINDS

    c = sub.add_parser(
        "compare", allow_abbrev=False, help="baselines (CDA, SFT, DPO, Self-Debias), ablations and BiasUnlearn: one report",
        description="Train and evaluate debiasing methods on one model with the same split, step budget and "
                    "held-out data, and write <out>/report.md and a self-contained <out>/report.html. Finished "
                    "method runs found in --out are reused. Methods: " + ", ".join(KINDS) + ".")
    c.add_argument("--model", default="smollm2-135m",
                   help="hub id, save_pretrained folder, .gguf file or built-in name (default: smollm2-135m)")
    c.add_argument("--methods", default=None,
                   help=f"comma-separated (default: {','.join(DEFAULT_METHODS)}; with --ablations alone: base). "
                        "The base model is always evaluated.")
    c.add_argument("--ablations", action="store_true",
                   help="add the BiasUnlearn ablations: " + ", ".join(ABLATIONS))
    c.add_argument("--out", required=True, help="output folder (method folders, report.md, report.html)")
    c.add_argument("--config", default=None,
                   help="YAML file of UnlearnConfig settings, or a shipped recipe (smollm2-cpu, gemma3-270m-cpu), for "
                        "every trained method: BiasUnlearn runs it as it stands and the baselines share its split, "
                        "LoRA settings, batch sizes, step budget and learning rate; the flags below and --set win")
    c.add_argument("--max_steps", "--max-steps", dest="max_steps", type=int, default=None,
                   help="training steps of every trained method (default 1000)")
    c.add_argument("--learning_rate", "--learning-rate", dest="learning_rate", type=float, default=None,
                   help="learning rate of every trained method (default 5e-5, linear schedule)")
    c.add_argument("--eval_every", "--eval-every", dest="eval_every", type=int, default=None,
                   help="dev check every N steps (default 20)")
    c.add_argument("--benchmarks", default="stereoset,crows_pairs,bbq,perplexity",
                   help="comma-separated, from stereoset, crows_pairs, bbq, perplexity (default: all four)")
    c.add_argument("--no-intersentence", action="store_true",
                   help="skip StereoSet intersentence (the headline table is intrasentence; halves StereoSet's cost)")
    c.add_argument("--limit", type=int, default=None, help="at most N examples per benchmark (seeded sample)")
    c.add_argument("--bbq-per-category", type=int, default=200, help="BBQ examples per category (0 = all)")
    c.add_argument("--ppl-max-tokens", type=int, default=32768, help="perplexity on the first N tokens (0 = all)")
    c.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "auto"],
                   help="evaluation dtype (default: bfloat16 on a GPU that computes it, else float32; auto: also "
                        "bfloat16 on a CPU with AVX-512 BF16 or AMX)")
    c.add_argument("--data-dir", default=None, help="benchmark data folder (default: $BIASUNLEARN_DATA or ../shared/data)")
    c.add_argument("--batch-size", type=int, default=None,
                   help="CDA/SFT sentences per step (default: forget + retain batch of BiasUnlearn)")
    c.add_argument("--dpo-pairs", type=int, default=None, help="DPO pairs per step (default: half of that)")
    c.add_argument("--dpo-beta", type=float, default=0.1, help="DPO beta")
    c.add_argument("--ablation-checkpoint", default="final", choices=["final", "best"],
                   help="evaluate ablations at the final checkpoint (the paper) or at the best dev check")
    c.add_argument("--merge-adapter", action="store_true",
                   help="read each trained method with its adapter merged into the weights (in float32, rounded "
                        "once to --dtype), as an export ships it: the read runs at the plain model's speed. Off by "
                        "default: method folders read unmerged are reused as they are")
    c.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="any UnlearnConfig setting for every trained method, e.g. --set lora_r=16 (repeatable)")
    c.add_argument("--rerun", default=None, type=comma_list,
                   help="comma-separated methods to recompute although results exist ('all' for every one)")
    c.add_argument("--seeds", default=None,
                   help="comma-separated training seeds, e.g. 42,7,11: the comparison once per seed, each in "
                        "<out>/seed-<s>/, and <out>/report.md with every method's mean ± sd over the seeds and its "
                        "difference from BiasUnlearn paired by seed (the base model and Self-Debias, which do not "
                        "train, are evaluated once)")
    c.add_argument("--report-only", action="store_true",
                   help="only rebuild the report from the folders in --out (those of --methods / --ablations when "
                        "given, else the methods of the last run there)")
    c.set_defaults(func=_compare_cmd)
