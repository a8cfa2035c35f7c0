"""The whole default pipeline: splits -> LoRA -> BiasUnlearn training with dev checks -> best adapter ->
evaluation before and after on held-out data -> report.md and plots."""
from __future__ import annotations

import gc
import json
import re
import shutil
import sys
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters import lora_config, peft_quiet
from ..data import data_dir, load_text_lines
from ..data.splits import Splits, checked_splits, coarse_dev_types, split_record, training_pairs
from ..errors import BiasUnlearnError, ConfigError, DataError
from ..evaluate import (STEREOSET_SCORES, EvalConfig, check_data, evaluate_model, package_versions,
                        read_stereoset_predictions)
from ..io import (atomic_write_text, comma_list, folder_lock, read_json, read_log_jsonl, recover_folder,
                  write_json, write_jsonl)
from ..models import load_model, machine_info, merge_note, restore_glibc_malloc, tune_glibc_malloc
from ..plots import draw_or_warn, plot_dev_margin, plot_dev_ss, plot_losses
from .config import UnlearnConfig, legacy_value
from .controller import SwapController
from .generated import load_or_sample
from .sets import UnlearnSets
from .trainer import BiasUnlearnTrainer, DevCheckCallback, InterruptCheck, JsonlLogCallback, route_logs_to_stderr


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def checkpoint_problem(ck: Path) -> str | None:
    """What makes checkpoint `ck` unusable for a resume (a file cut short by a kill or a full disk), or None. Only
    the files it holds are read: a sharded (FSDP, DeepSpeed) checkpoint keeps its weights in other files."""
    for name in ("biasunlearn_state.json", "trainer_state.json"):
        f = ck / name
        if name == "trainer_state.json" and not f.exists():
            return f"no {name}"
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"{name} cannot be read ({e})"
        if not isinstance(doc, dict) or (name == "biasunlearn_state.json" and "controller" not in doc):
            return f"{name} is not a checkpoint's state"
    # a resume without these would go on silently with a fresh optimizer, a learning-rate schedule back at its
    # start, or other random draws; FSDP and DeepSpeed keep the optimizer (and DeepSpeed the schedule) in files
    # of their own, which only they read
    engine = any(p.name.startswith(("global_step", "optimizer_", "optimizer.bin", "pytorch_model_fsdp"))
                 for p in ck.iterdir())
    needed = [] if engine else ["optimizer.pt", "scheduler.pt"]
    missing = [n for n in needed if not (ck / n).is_file()] + ([] if any(ck.glob("rng_state*.pth"))
                                                                else ["rng_state.pth"])
    if missing:
        return f"no {', '.join(missing)}"
    weights = ck / "adapter_model.safetensors"
    if weights.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                list(f.keys())
        except Exception as e:
            return f"adapter_model.safetensors is damaged or cut short ({e})"
    import zipfile

    for f in sorted([*ck.glob("*.pt"), *ck.glob("*.pth")]):  # optimizer, scheduler, RNG: torch's zip files
        try:
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile) as e:
            return f"{f.name} is damaged or cut short ({e})"
        if bad is not None:
            return f"{f.name} is damaged (its entry {bad} fails its checksum)"
    return None


def checkpoint_step(ck: Path) -> int:
    """The step a checkpoint folder (checkpoint-<step>) was saved at."""
    return int(Path(ck).name.split("-")[1])


RUN_LOGS = ("log.jsonl", "dev_log.jsonl")


def truncate_logs(out: Path, step: int, log=_log) -> dict[str, int]:
    """On a resume from the checkpoint of `step`: the run's logs keep only their rows up to that step, rewritten
    atomically. The steps after it are trained, logged and dev-checked again, so their rows from before the kill
    would each appear twice (in the logs, the plots and compare's Figure 4); a kill between a dev check and its
    checkpoint leaves such a row too. A line the kill cut short goes as well: the rows appended after it would
    otherwise continue it into one unreadable line. Returns {log name: rows dropped}."""
    dropped = {}
    for name in RUN_LOGS:
        path = out / name
        if not path.exists():
            continue
        bad = []
        rows = read_log_jsonl(path, warn=bad.append)
        kept = [r for r in rows if isinstance(r.get("step"), int) and r["step"] <= step]
        if len(kept) == len(rows) and not bad:
            continue
        write_jsonl(path, kept)
        dropped[name] = len(rows) - len(kept) + len(bad)
        log(f"[resume] {path}: {len(rows) - len(kept)} row{'' if len(rows) - len(kept) == 1 else 's'} after step "
            f"{step} dropped (those steps run again)"
            + (f", and {len(bad)} unreadable line{'' if len(bad) == 1 else 's'} ({'; '.join(bad)})" if bad else "")
            + f"; {len(kept)} kept")
    return dropped


def last_checkpoint(out: Path, log=None) -> Path | None:
    """The newest usable checkpoint in `out`. A damaged one (a kill during its save) is passed over for the one
    before it, with a warning, and left where it is; if every checkpoint is damaged that is an error, not a start
    from step 0 over the run's logs."""
    cks = sorted((p for p in out.glob("checkpoint-*")
                  if (p / "biasunlearn_state.json").exists() and p.name.split("-")[1].isdigit()),
                 key=checkpoint_step, reverse=True)
    for i, ck in enumerate(cks):
        problem = checkpoint_problem(ck)
        if problem is None:
            return ck
        if i + 1 == len(cks):
            raise BiasUnlearnError(f"{ck}: {problem}; no usable checkpoint is left in {out} (--overwrite starts "
                                   "the run again)")
        if log:
            log(f"[resume] warning: {ck} cannot be used ({problem}); resuming from {cks[i + 1].name} instead "
                f"(the damaged folder is left as it is)")
    return None


def prepare_lora(model, cfg: UnlearnConfig):
    from peft import get_peft_model

    with peft_quiet():
        model = get_peft_model(model, lora_config(model, cfg))
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def unrelated_texts(cfg: UnlearnConfig, model, tok, out_dir, model_id: str, write: bool = True,
                    log=_log) -> list[str] | None:
    """The KL term's text, by cfg.unrelated_source: None for 'stereoset' (UnlearnSets then takes the pool's unrelated
    sentences), WikiText-2 lines for 'wikitext', or for 'generated' texts sampled once from the original model (the
    adapter disabled), read back from out_dir/generated_unrelated.jsonl when made with the same settings."""
    if cfg.unrelated_source == "wikitext":
        lines = load_text_lines(data_dir(cfg.data_dir) / "text/wikitext-2-raw/wiki.test.raw")
        return [u for u in lines if not u.strip().startswith("=")][:2000]
    if cfg.unrelated_source == "generated":
        with model.disable_adapter(), zero3_gathered(model):  # the original model's own text
            return load_or_sample(Path(out_dir), model, tok, cfg.generated_count, cfg.generated_tokens, cfg.seed,
                                  model_id, write=write, log=log)
    return None


@contextmanager
def zero3_gathered(model):
    """The model's weights whole for passes outside the training engine. Under DeepSpeed ZeRO-3 the weights are
    partitioned as the model is loaded, and only the engine gathers them in its forward; this gathers every weight
    on every process (collectively: every process must enter) for as long as the block runs, so each holds the whole
    model meanwhile. Otherwise (weights whole) it does nothing."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def loads_unpartitioned() -> None:
    """After training: models loaded from here on are whole. While a DeepSpeed ZeRO-3 config is active, transformers
    partitions every model it loads over the processes, collectively; the report's evaluation loads models on the
    main process alone, after the others have finished."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        return
    if hf_deepspeed.is_deepspeed_zero3_enabled():
        hf_deepspeed.unset_hf_deepspeed_config()


def drop_term_texts(texts: list[str], terms) -> tuple[list[str], int]:
    """`texts` without those that name any of `terms` as a whole word (any case; a multi-word term matches with any
    run of spaces between its words). Returns (kept, how many were dropped)."""
    words = sorted({" ".join(t.split()).lower() for t in terms if t.strip()}, key=len, reverse=True)
    if not words:
        return list(texts), 0
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
                         + r")(?!\w)", re.IGNORECASE)
    kept = [t for t in texts if not pattern.search(t)]
    return kept, len(texts) - len(kept)


def run_lock(cfg: UnlearnConfig):
    """The run folder held for this run alone (io.folder_lock): a second `train --out` into it is refused, rather
    than both writing every log row and each other's config. Taken by the main process only: under accelerate
    launch the other processes write into the same folder as part of the same run."""
    return folder_lock(cfg.output_dir) if cfg.process_index == 0 else nullcontext()


def train_adapter(cfg: UnlearnConfig, resume: bool = False, log=_log, overwrite: bool = False) -> dict:
    """Train the BiasUnlearn adapter; returns a summary. Writes adapter/, splits.json, config.json, logs, plots.
    overwrite: the run already in the folder is removed (clear_run), once this one can start."""
    out = Path(cfg.output_dir)
    made = [p for p in (out, *out.parents) if not p.exists()]  # the folders this start creates, deepest first
    out.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(cfg):
            return _train_in(cfg, out, resume, log, overwrite)
    except BaseException:
        # a start that failed before writing anything (a model that does not load, ...) leaves no empty run
        # folder behind to be mistaken for a run; a folder that holds anything is kept
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                break
        raise


def _train_in(cfg: UnlearnConfig, out: Path, resume: bool, log, overwrite: bool = False) -> dict:
    done = finished_run(out, cfg) if resume else None
    if done is not None:
        log(f"[train] {out} holds a finished run ({done['steps']} steps); nothing to train (to train it further, "
            f"raise {'--stop_at_step (and --max_steps with it)' if cfg.stop_at_step else '--max_steps'})")
        return done
    ck = last_checkpoint(out, log) if resume else None
    if resume and ck is None:
        log(f"[train] --resume: no checkpoint in {out} yet; starting the run again from step 0")
    # refused before anything of the run is touched (before --overwrite clears the old one, before a resume
    # rewrites its config): a refusal must leave the folder as it was
    splits = check_train_pool(cfg, log)
    if ck is not None:
        check_adapter_settings(out / "config.json", cfg)
        check_same_pool(out / "splits.json", splits, log)
        _warn_changed_settings(out / "config.json", cfg, log)
    tuned = cfg.cpu_malloc_tuning and cfg.device.type == "cpu" and tune_glibc_malloc()
    if tuned:
        log("[train] glibc malloc set to keep freed memory for reuse (cpu_malloc_tuning)")
    try:
        return _train(cfg, out, ck, log, overwrite)
    finally:
        if tuned:  # the evaluations that follow in this process run under glibc's defaults again
            restore_glibc_malloc()


def _clear_for_start(cfg: UnlearnConfig, out: Path, ck, overwrite: bool, log) -> None:
    """What an earlier start left in `out` that is not this one's, removed once this start can go ahead (its model
    loaded, its settings and LoRA targets checked): a start refused before then leaves the folder as it was. The
    main process alone clears (under accelerate launch the others may start before its lock refuses a second run
    into the folder, and must not remove that run's files); the others wait for it."""
    with cfg.main_process_first(local=False, desc="the run folder cleared"):
        if cfg.process_index != 0:
            return
        if overwrite:
            log(f"[train] --overwrite: removed the run in {out}: {', '.join(clear_run(out)) or 'nothing'}")
        # what the last start finished is not this run's: a kill from here on must not leave it looking finished,
        # nor its after-read beside a new adapter
        (out / "train_summary.json").unlink(missing_ok=True)
        shutil.rmtree(out / "eval_after", ignore_errors=True)
        if ck is not None:
            recover_folder(out / "best_adapter")  # a save killed half way (see save_adapter)
            truncate_logs(out, checkpoint_step(ck), log)
            return
        for stale in RUN_LOGS:  # a fresh start: nothing of an earlier start may mix into its logs
            (out / stale).unlink(missing_ok=True)
        for stale in BEST_FOLDERS:
            shutil.rmtree(out / stale, ignore_errors=True)


# the settings that fix what a checkpoint's LoRA weights are: their shape (rank, the layers they sit on) and the
# scale alpha / r they are applied at. A resume with another value would fail to load them, or silently continue
# from an adapter that computes something else than the one saved.
ADAPTER_SETTINGS = ("lora_r", "lora_alpha", "lora_targets")


def check_adapter_settings(saved: Path, cfg: UnlearnConfig) -> None:
    """On --resume from a checkpoint: a change of an ADAPTER_SETTINGS setting since the run started (its
    config.json) is a ConfigError naming the setting and the run's value."""
    try:
        before = read_json(saved).get("config", {})
    except (OSError, ValueError, AttributeError):
        return

    def same(name, a, b):  # layer names are a set: "q_proj, v_proj" is "v_proj,q_proj"
        if name == "lora_targets" and isinstance(a, str) and isinstance(b, str):
            return set(comma_list(a)) == set(comma_list(b))
        return a == b

    for name in ADAPTER_SETTINGS:
        if name in before and not same(name, before[name], getattr(cfg, name)):
            raise ConfigError(f"--resume {saved.parent}: {name}={getattr(cfg, name)!r}, but the run there started "
                              f"with {name}={before[name]!r}, which its checkpoints' LoRA weights are made for; "
                              f"resume with {name} {before[name]!r} (or without --{name}), or start a new run "
                              "(--overwrite, or another --out)")


def check_checkpoint_fits(model, ck: Path) -> None:
    """The LoRA weights of the checkpoint a resume starts from have the names and shapes of the model's adapter, or
    a ConfigError, raised before anything of the run is touched (not a size mismatch once the start has cleared
    it). Weights partitioned over the processes are left to the engine that partitioned them."""
    weights = ck / "adapter_model.safetensors"
    if not weights.exists():
        return
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    now = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    if any(0 in shape for shape in now.values()):  # ZeRO-3 partitioned
        return
    with safe_open(str(weights), framework="pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    differ = sorted(k for k in set(now) | set(saved) if now.get(k) != saved.get(k))
    if differ:
        raise ConfigError(f"--resume: {ck}'s LoRA weights do not fit this run's adapter ({len(differ)} of "
                          f"{len(saved | now)} differ, e.g. {differ[0]}: {saved.get(differ[0], 'none')} saved, "
                          f"{now.get(differ[0], 'none')} now); resume with the LoRA settings the run started with, "
                          "or start a new run (--overwrite, or another --out)")


def check_same_pool(path: Path, splits, log=_log) -> None:
    """A run resumes on the train pool it started with: a pool file changed since (its sha256 in the run's
    splits.json) is refused, since the steps to come would train on other data than the steps done. A split that
    differs only through a changed setting (seed, dev_fraction, train_exclude_pattern) is said in the log: the
    setting was named in the warning about changed settings."""
    if not path.exists():
        return
    try:
        old = read_json(path)
    except (json.JSONDecodeError, OSError):
        return  # a damaged splits.json is rewritten below; the checkpoint's own state decides the rest
    before, now = old.get("sources") or {}, splits.sources
    changed = sorted(f for f in set(before) | set(now) if before.get(f) != now.get(f))
    if changed:
        raise ConfigError(f"--resume: the train pool changed since this run started ({', '.join(changed)}: sha256 "
                          f"{str(before.get(changed[0]))[:12]}… then, {str(now.get(changed[0]))[:12]}… now); the "
                          f"rest of the run would train on other data. Restore the file(s), or start a new run "
                          f"(--overwrite, or another --out)")
    if old.get("checksum") != splits.to_dict()["checksum"]:
        log(f"[train] warning: the train/dev split differs from the one this run started with ({path}): the "
            "steps to come train on the new split")


def learning_rate_note(n_params: int, learning_rate: float) -> str:
    """A word when a model above 1B parameters is trained faster than the paper trained its 7B-8B models (2e-5;
    5e-5, the default, is the paper's rate for small models); empty otherwise."""
    if n_params > 1e9 and learning_rate > 2e-5:
        return (f"learning_rate {learning_rate:g} on a model of {n_params / 1e9:.1f}B parameters: the paper trained "
                "its 7B-8B models at 2e-5 (--learning_rate 2e-5)")
    return ""


@dataclass
class TrainingData:
    """What a run trains on, built from its config as `train` builds it (the bench measures the same batches)."""
    splits: Splits
    test: list
    overlap: dict  # checked_splits' overlap report (none shared, or it refuses)
    train: list
    excluded: list
    sets: UnlearnSets


def training_data(cfg: UnlearnConfig, model, tok, texts_dir: Path, model_id: str, write: bool = True,
                  log=_log) -> TrainingData:
    """The splits, the train pairs (dev too with train_on_dev, less train_exclude_pattern) and the sets the steps draw
    from, with every option of the config applied and logged; the KL texts come from (or, sampled, go to)
    `texts_dir`. ConfigError for settings that leave nothing to train on."""
    splits, test, overlap = checked_splits(cfg)
    coarse = coarse_dev_types(splits.dev)
    if coarse and not cfg.train_on_dev and "ss" in (cfg.swap_signal if cfg.swap_mode != "none" else "",
                                                    cfg.checkpoint_metric):
        log("[train] note: the dev SS of " + ", ".join(f"{b} ({n} examples, {t} target term{'' if t == 1 else 's'})"
                                                      for b, (n, t) in coarse.items())
            + " is a mean over fewer than 5 target terms: it moves by whole examples between checks and its "
              "standard error (ss_se in dev_log.jsonl) is large; dev_folds cross-validates a recipe over every "
              "term of the pool")
    pairs = training_pairs(splits, cfg)
    if cfg.train_on_dev:
        log(f"[train] train_on_dev: the {len(splits.dev)} dev pairs ({len({e.target for e in splits.dev})} target "
            f"terms) train too, {len(pairs)} pairs in all; the dev checks below read trained data and serve only "
            "as a collapse guard")
    train, excluded = exclude_train_pairs(pairs, cfg.train_exclude_pattern)
    if cfg.train_exclude_pattern:
        by_type = Counter(e.bias_type for e in excluded)
        log(f"[train] train_exclude_pattern: {len(excluded)} of {len(pairs)} train pairs left out ("
            + (", ".join(f"{b} {n}" for b, n in sorted(by_type.items())) or "none matched")
            + ("); the test set is as before" if cfg.train_on_dev
               else "); the dev slice and the test set are as before"))
    unrelated = unrelated_texts(cfg, model, tok, texts_dir, model_id, write=write, log=log)
    if cfg.unrelated_drop_terms:
        unrelated = kl_texts_kept(cfg, unrelated, train, log)
    held_out = {e.target for e in splits.dev + test}
    valence = None
    if cfg.balance_valence:
        from .valence import group_counts, pair_valence

        valence = pair_valence(train)
        log("[train] balance_valence: train pairs by valence (stereotype more negative / about the same / more "
            "positive): " + "; ".join(f"{b} {'/'.join(str(n) for n in c.values())}"
                                      for b, c in group_counts(train, valence).items())
            + (f"; slots per group: {cfg.valence_weights}" if cfg.valence_weights else ""))
    sets = UnlearnSets(train, unrelated, adversarial_share=cfg.adversarial_share, score_span=cfg.score_span,
                       seed=cfg.seed, gender_counterfactual=cfg.gender_counterfactual, blocked_terms=held_out,
                       neutral_anchor=cfg.neutral_anchor_batch_size > 0,
                       gender_term_variants=cfg.gender_term_variants, valence=valence)
    if cfg.neutral_anchor_batch_size > 0:
        if not sets.neutral:
            raise ConfigError("neutral_anchor_batch_size > 0, but no train pair names its target term before the "
                              "blank: there is no sentence to take the group out of")
        log(f"[train] neutral_anchor: {len(sets.neutral)} sentences with the group taken out, "
            f"{cfg.neutral_anchor_batch_size} added to each step's KL batch")
    if cfg.gender_term_variants:
        n_gender = sum(e.bias_type == "gender" for e in train)
        log(f"[train] gender_term_variants: {sets.term_variants} more gender pairs, the target term of some of the "
            f"{n_gender} gender pairs replaced by another person noun of its gender (never one of the "
            f"{len(held_out)} dev and test target terms)")
    if cfg.gender_counterfactual:
        n_gender = sum(e.bias_type == "gender" for e in train)
        log(f"[train] gender_counterfactual: {sets.counterfactuals} of {n_gender} gender "
            f"stereotypes get a counterfactual pair (the others name no gendered word, or their counterfactual would "
            f"name one of the {len(held_out)} dev and test target terms)")
    check_type_settings(cfg, sets.bias_types)
    return TrainingData(splits, test, overlap, train, excluded, sets)


def kl_texts_kept(cfg: UnlearnConfig, unrelated: list[str] | None, train: list, log=_log) -> list[str]:
    """unrelated_drop_terms: the KL texts (`unrelated`, or the train pairs' unrelated sentences where it is None)
    less those naming a target term of `train`; a ConfigError when none is left."""
    pool = unrelated if unrelated is not None else [e.unrelated for e in train]
    kept, dropped = drop_term_texts(pool, {e.target for e in train})
    log(f"[train] unrelated_drop_terms: {dropped} of {len(pool)} KL texts name a target term of the train "
        f"split and are left out; {len(kept)} remain")
    if not kept:
        raise ConfigError(f"unrelated_drop_terms=true left no text for the KL term (all {len(pool)} "
                          f"{cfg.unrelated_source} texts name a target term of the train split)")
    return kept


def check_type_settings(cfg: UnlearnConfig, bias_types) -> None:
    """type_weights and scheduled_swaps name only bias types the run trains (`bias_types`), or a ConfigError."""
    unknown = sorted(set(cfg.type_weight_map()) - set(bias_types))
    if unknown:
        raise ConfigError(f"type_weights names {', '.join(unknown)}: not a bias type of the train pool "
                          f"({', '.join(bias_types)})")
    absent = sorted(set(cfg.scheduled_swap_map()) - set(bias_types))
    if absent:
        raise ConfigError(f"scheduled_swaps names {', '.join(absent)}: not a bias type of the train pool "
                          f"({', '.join(bias_types)}), so there is nothing to swap")


def check_train_pool(cfg: UnlearnConfig, log=_log) -> Splits:
    """The train pool read, split and checked before the model loads and before anything in the run folder is
    touched: no overlap with the test set, a train_exclude_pattern that leaves pairs, type settings that name a
    type the run trains (check_type_settings), KL texts that can be read and that unrelated_drop_terms leaves some
    of (those sampled from the model come later). A dev slice larger than the train split is said in the log: its
    pairs do not train (without train_on_dev), and the split has few pairs left to train on. Returns the splits."""
    splits = checked_splits(cfg)[0]
    train, _ = exclude_train_pairs(training_pairs(splits, cfg), cfg.train_exclude_pattern)
    check_type_settings(cfg, sorted({e.bias_type for e in train}))
    if cfg.unrelated_source != "generated":  # the KL texts that need no model: read (and dropped from) here too
        unrelated = unrelated_texts(cfg, None, None, None, "")
        if cfg.unrelated_drop_terms:
            kl_texts_kept(cfg, unrelated, train, log=lambda _: None)
    if not cfg.train_on_dev and len(splits.dev) > len(splits.train):
        by_type = ", ".join(f"{b} {n}" for b, n in sorted(Counter(e.bias_type for e in splits.train).items()))
        how = f"dev_folds={cfg.dev_folds}" if cfg.dev_folds else f"dev_fraction={cfg.dev_fraction}"
        log(f"[train] warning: {how} holds out {len(splits.dev)} of the pool's {len(splits.dev) + len(splits.train)} "
            f"pairs as dev and leaves {len(splits.train)} to train on ({by_type}); the dev slice only checks the "
            "run (train_on_dev trains it too)")
    return splits


def _train(cfg: UnlearnConfig, out: Path, ck, log, overwrite: bool = False) -> dict:
    # Straight onto this process's own device (cfg.device: cuda:<local rank> under accelerate launch), not the first
    # GPU; FSDP and DeepSpeed take the model from host memory and place its shards themselves.
    device = "cpu" if cfg.use_cpu or cfg.engine_places_model() else cfg.device
    sizes = cfg.step_batch_sizes()  # sizes that cannot be shared out are refused before the model loads
    if cfg.global_batch and sizes[0] != cfg.forget_batch_size:
        log(f"[train] global_batch: each of {cfg.world_size} process(es) draws {sizes[0]} forget + {sizes[1]} retain "
            f"+ {sizes[2] + sizes[3]} KL sentences per micro-batch, {cfg.forget_batch_size} + "
            f"{cfg.retain_batch_size} + {cfg.unrelated_batch_size + cfg.neutral_anchor_batch_size} per optimizer step")
    model, tok, info = load_model(cfg.model, dtype=cfg.load_dtype(), device=device)
    model.train()
    note = learning_rate_note(info.n_params, cfg.learning_rate)
    if note:
        log(f"[train] {note}")
    from transformers import set_seed

    set_seed(cfg.seed)  # the LoRA initialisation draws from the RNG: same seed, same adapter start
    model = prepare_lora(model, cfg)  # the LoRA targets found on the model
    if ck is not None and not cfg.engine_places_model():  # FSDP and DeepSpeed keep the weights in files of their own
        check_checkpoint_fits(model, ck)
    _clear_for_start(cfg, out, ck, overwrite, log)  # this start can go ahead
    data = training_data(cfg, model, tok, out, info.resolved, write=cfg.process_index == 0, log=log)
    splits, test, overlap, excluded, sets = data.splits, data.test, data.overlap, data.excluded, data.sets
    if cfg.process_index == 0:
        write_json(out / "splits.json", {**split_record(splits, cfg, test, overlap),
                                         "excluded_train_ids": [e.id for e in excluded]})
        write_json(out / "config.json", {"method": "biasunlearn", "config": cfg.method_dict(),
                                         "settings": cfg.run_settings(), "world_size": cfg.world_size,
                                         "model": info.to_dict(),
                                         "versions": package_versions(),
                                         "machine": machine_info()})
    controller = SwapController(sets.bias_types, mode=cfg.swap_mode, tolerance=cfg.early_stop_tolerance,
                                signal=cfg.swap_signal,
                                margin=cfg.swap_margin_nats if cfg.swap_signal == "margin" else cfg.swap_margin,
                                schedule=cfg.scheduled_swap_map())
    trainer = BiasUnlearnTrainer(model=model, args=cfg, sets=sets, controller=controller, tokenizer=tok)
    trainer.add_callback(InterruptCheck())
    dev_cb = DevCheckCallback(trainer, splits.dev, out, log=log, trained_on=cfg.train_on_dev)
    trainer.add_callback(dev_cb)
    trainer.add_callback(JsonlLogCallback(out / "log.jsonl"))
    route_logs_to_stderr(trainer)
    if ck is not None:
        dev_cb.restore(ck)
        log(f"[train] resuming from {ck}")
    t0 = time.time()
    if ck is not None and stops_at(cfg, ck, dev_cb.stopped) and _load_checkpoint_adapter(trainer, model, ck):
        # the run had stopped at this checkpoint (killed before it wrote its adapter and summary): transformers
        # would train one more step before it looks at a stop, so the run is finished from the checkpoint as it is
        log(f"[train] {ck.name} is where the run stopped ({dev_cb.stopped}): finishing from it, no step trained")
        dev_cb.stop_reason = dev_cb.stopped
    else:
        trainer.train(resume_from_checkpoint=str(ck) if ck is not None else None)
    wall = time.time() - t0
    best = out / "best_adapter"
    last = out / "final_adapter"  # the last step's adapter (ablations are judged at a fixed step, as the paper)
    trainer.save_adapter(last)  # every process: a sharded adapter is gathered first
    if trainer.is_world_process_zero():
        final = out / "adapter"
        shutil.rmtree(final, ignore_errors=True)
        # stop_at_step: a step fixed beforehand is the adapter, not dev's choice
        shutil.copytree(best if best.exists() and not cfg.stop_at_step else last, final)
        write_json(final / "biasunlearn_config.json", {"method": "biasunlearn", "config": cfg.method_dict(),
                                                       "base_model": info.to_dict(), "splits_checksum":
                                                       splits.to_dict()["checksum"]})
    summary = {"train_wall_time_s": round(wall, 1), "steps": trainer.state.global_step,
               "swaps": controller.events, "best": dev_cb.best,
               "adapter": adapter_label(cfg, trainer.state.global_step, dev_cb.stop_reason, best.exists()),
               "peak_memory_mb": _peak_mem_mb(), "packing": trainer.packing_check}
    if trainer.is_world_process_zero():
        write_json(out / "train_summary.json", summary)  # before the plots: a plot that fails loses no run
        draw_plots(out, controller.events, log)
    del trainer, model
    gc.collect()
    return summary


def adapter_label(cfg: UnlearnConfig, step: int, stop_reason: str, best_kept: bool) -> str:
    """Which adapter adapter/ is, in words (train_summary.json's "adapter"; `compare` reads a label that starts with
    "step" as a step fixed by the run, not dev's choice)."""
    if cfg.stop_at_step:
        return (f"step {step} (stop_at_step)" if step >= cfg.stop_at_step
                else f"step {step} ({stop_reason or 'stopped'}, before stop_at_step {cfg.stop_at_step})")
    return "best dev check" if best_kept else f"step {step} (the last step: no dev check after step 0 chose one)"


def stops_at(cfg: UnlearnConfig, ck: Path, reason: str | None) -> bool:
    """Whether the run `cfg` describes ends at checkpoint `ck`, saved where a run stopped for `reason`: a dev check's
    stop (early stop, every type paused) stands, as the same check would decide it again; the end of the schedule
    stands unless `cfg` moves it later (a resume that trains further)."""
    if not reason:
        return False
    step = checkpoint_step(ck)
    if reason == "max_steps":
        return step >= (cfg.stop_at_step or cfg.max_steps)
    if reason == "stop_at_step":
        return bool(cfg.stop_at_step) and step >= cfg.stop_at_step
    return True


def _load_checkpoint_adapter(trainer, model, ck: Path) -> bool:
    """The LoRA weights of checkpoint `ck` loaded into `model`, and the trainer's step set to the checkpoint's; False
    (nothing loaded) where the checkpoint holds no adapter file of its own (FSDP and DeepSpeed keep the weights in
    files of theirs): the caller then resumes through transformers, which trains one more step."""
    path = Path(ck) / "adapter_model.safetensors"
    if not path.is_file():
        return False
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(path)))
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise BiasUnlearnError(f"{path}: {len(unexpected)} LoRA weights do not fit the model (e.g. {unexpected[0]})")
    trainer.state.global_step = checkpoint_step(ck)
    return True


def draw_plots(out: Path, swaps, log=_log) -> None:
    """losses.png, dev_ss.png and dev_margin.png from the run's logs. A plot that fails is a warning: the adapter
    and train_summary.json are written already, and the plots can be drawn again from the logs."""
    draw_or_warn(plot_losses, out / "log.jsonl", out / "losses.png", log=log, tag="train")
    draw_or_warn(plot_dev_ss, out / "dev_log.jsonl", out / "dev_ss.png", swaps, log=log, tag="train")
    draw_or_warn(plot_dev_margin, out / "dev_log.jsonl", out / "dev_margin.png", swaps, log=log, tag="train")


# transformers' arguments (beside method_dict's) that change what the steps compute
STEP_ARGS = ("gradient_accumulation_steps", "per_device_train_batch_size", "max_grad_norm", "adam_beta1",
             "adam_beta2", "adam_epsilon", "fp16")

# settings that change nothing a resumed run computes (speed, memory, what is read afterwards)
RESUME_NEUTRAL = {"cpu_malloc_tuning", "skip_final_eval", "eval_benchmarks", "eval_bbq_per_category", "eval_limit",
                  "eval_intersentence", "eval_dtype", "eval_merge_adapter", "data_dir"}


RUN_FILES = ("config.json", "splits.json", "log.jsonl", "dev_log.jsonl", "train_summary.json", "report.md",
             "losses.png", "dev_ss.png", "dev_margin.png", "dev_margins.json", "generated_unrelated.jsonl")
BEST_FOLDERS = ("best_adapter", "best_adapter.old", "best_adapter.tmp")  # with save_adapter's replacement steps
RUN_FOLDERS = ("adapter", *BEST_FOLDERS, "final_adapter", "final_adapter.old", "final_adapter.tmp", "eval_before",
               "eval_after")


def clear_run(out: Path) -> list[str]:
    """Remove what a training run writes in `out` (files of other names stay); returns the names removed."""
    out = Path(out)
    gone = []
    for name in RUN_FILES:
        if (out / name).is_file():
            (out / name).unlink()
            gone.append(name)
    for d in [*(out / n for n in RUN_FOLDERS), *sorted(out.glob("checkpoint-*"))]:
        if d.is_dir():
            shutil.rmtree(d)
            gone.append(d.name + "/")
    return gone


def finished_run(out: Path, cfg: UnlearnConfig) -> dict | None:
    """The summary of the finished run in `out` (train_summary.json and adapter/ written at its end), unless `cfg`
    asks it to train further (a later max_steps or stop_at_step than the run had); else None."""
    summary_path, adapter = out / "train_summary.json", out / "adapter" / "adapter_model.safetensors"
    if not (summary_path.is_file() and adapter.is_file()):
        return None
    try:
        before = read_json(out / "config.json").get("config", {})
    except (OSError, ValueError):
        before = {}
    end_then = before.get("stop_at_step") or before.get("max_steps")
    end_now = cfg.stop_at_step or cfg.max_steps
    if end_then is not None and end_now > end_then:
        return None
    return read_json(summary_path)


def _warn_changed_settings(saved: Path, cfg: UnlearnConfig, log) -> None:
    """On --resume: the settings that differ from those the run started with (its config.json), logged. A run
    resumed with other settings does not continue exactly; a setting the run's version did not have is listed with
    the value it now takes."""
    try:
        doc = read_json(saved)
        before = doc.get("config", {})
    except (OSError, ValueError, AttributeError):
        return
    now = json.loads(json.dumps(cfg.method_dict(), default=str))
    changed = {k: (before.get(k, "(not a setting then)"), v) for k, v in now.items()
               if legacy_value(before.get(k)) != v and k not in RESUME_NEUTRAL}
    # transformers' own arguments that change the steps: the chunk a step draws and the effective batch follow the
    # accumulation and the number of processes (run_settings leaves a default out: absent is the default)
    then_args, now_args = doc.get("settings") or {}, cfg.run_settings()
    for k in STEP_ARGS:
        if then_args.get(k) != now_args.get(k):
            changed[k] = (then_args.get(k, "(default)"), now_args.get(k, "(default)"))
    if doc.get("world_size") is not None and doc["world_size"] != cfg.world_size:
        changed["processes"] = (doc["world_size"], cfg.world_size)
    if changed:
        log("[resume] warning: these settings differ from the run's start, so it will not continue exactly: "
            + "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items())))


def _peak_mem_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report_benchmarks(cfg: UnlearnConfig) -> tuple[str, ...]:
    """The benchmarks of the before/after report. WikiText-2 perplexity is left out when the KL term was trained on
    WikiText-2 (`unrelated_source: wikitext`): it is the same file, and no number is reported on trained data."""
    names = tuple(comma_list(cfg.eval_benchmarks))
    if cfg.unrelated_source == "wikitext":
        names = tuple(b for b in names if b != "perplexity")
    return names


def eval_config_for(cfg: UnlearnConfig) -> EvalConfig:
    return EvalConfig(benchmarks=report_benchmarks(cfg), data_dir=cfg.data_dir, limit=cfg.eval_limit or None,
                      bbq_per_category=cfg.eval_bbq_per_category or None,
                      stereoset_intersentence=cfg.eval_intersentence)


def before_after(cfg: UnlearnConfig, adapter_dir: Path, out: Path, log=_log) -> tuple[dict, dict]:
    """Evaluate the base model and base + adapter on held-out data (reusing finished results)."""
    ecfg = eval_config_for(cfg)
    if "perplexity" in set(comma_list(cfg.eval_benchmarks)) and "perplexity" not in ecfg.benchmarks:
        log("[eval] perplexity left out: the KL term was trained on WikiText-2 (unrelated_source: wikitext)")
    from ..deploy import read_results
    from ..io import sha256_file

    docs = []
    for name, adapter in (("eval_before", None), ("eval_after", adapter_dir)):
        res = out / name / "results.json"
        weights = sha256_file(Path(adapter) / "adapter_model.safetensors") if adapter else None
        merge = bool(adapter) and cfg.eval_merge_adapter
        doc = read_results(res, ecfg, log)
        read = (doc or {}).get("model") or {}
        if (doc is not None and read.get("adapter_sha256") == weights
                and bool((read.get("extra") or {}).get("adapter_merged")) == merge):
            log(f"[eval] reusing {res} (the same settings{' and adapter' if adapter else ''})")
            docs.append(doc)
            continue
        log(f"[eval] {name}: {cfg.model}" + (f" + {adapter}" + (" (merged)" if merge else "") if adapter else ""))
        model, tok, info = load_model(cfg.model, adapter=str(adapter) if adapter else None, dtype=cfg.eval_dtype,
                                      merge_adapter=merge)
        docs.append(evaluate_model(model, tok, ecfg, {**info.to_dict(), "adapter_sha256": weights}, out / name,
                                   log=log))
        del model
        gc.collect()
    return docs[0], docs[1]


def _stereoset_rows(eval_dir: Path, task: str = "intrasentence") -> list | None:
    """The StereoSet rows an evaluation kept (stereoset_scores.jsonl.gz, else predictions.jsonl), or None."""
    for name in (STEREOSET_SCORES, "predictions.jsonl"):
        if (eval_dir / name).exists():
            try:
                return read_stereoset_predictions(eval_dir / name, task)
            except DataError:
                return None
    return None


def exclude_train_pairs(train: list, pattern: str) -> tuple[list, list]:
    """(kept, left out): the train pairs whose stereotype or anti-stereotype sentence matches `pattern` (a regular
    expression, case-insensitive) are left out; '' leaves out none."""
    if not pattern:
        return list(train), []
    pat = re.compile(pattern, re.IGNORECASE)
    kept, out = [], []
    for e in train:
        (out if pat.search(e.stereotype) or pat.search(e.anti_stereotype) else kept).append(e)
    if not kept:
        raise ConfigError(f"train_exclude_pattern={pattern!r} leaves out all {len(train)} train pairs")
    return kept, out


def describe_best(best, metric: str = "ss") -> str:
    """The best dev check of a run's summary ((score, step), as the trainer keeps it) in words."""
    if not best:
        return "none (no dev check after step 0)"
    (guard, crit), step = best
    if guard:
        return f"step {step}; no check stayed within the LMS guard, this one dropped least ({crit[0]:.2f} points)"
    what, nd = ("|dev margin|", 4) if metric == "margin" else ("|dev SS - 50|", 2)
    rest = (f" (the other types' {', '.join(f'{c:.{nd}f}' for c in crit[1:])}, which break ties)"
            if len(crit) > 1 else "")
    return f"step {step}, largest {what} over the bias types {crit[0]:.{nd}f}{rest}, within the LMS guard"


def write_report(out: Path, before: dict, after: dict, summary: dict, cfg: UnlearnConfig) -> Path:
    from .. import report

    parts = [f"# BiasUnlearn run: {cfg.model}", "",
             "All figures below are on held-out data: StereoSet test = StereoSet dev intrasentence (target terms "
             "disjoint from the train pool), CrowS-Pairs, BBQ and WikiText-2 were never trained on. "
             + ("The dev slice trained too (train_on_dev): the schedule was fixed beforehand, and no choice read "
                "the dev checks, which serve only as a collapse guard." if cfg.train_on_dev else
                "Checkpoint choice and swapping used only the dev slice of the train pool."), ""]
    parts.append(report.before_after_markdown(before, after))  # it says so when the reads were a sample
    rows = [_stereoset_rows(out / name) for name in ("eval_before", "eval_after")]
    if all(rows):
        try:
            parts += ["", report.stereoset_precision_markdown(*rows), "", report.stereoset_terms_markdown(*rows)]
        except ValueError as e:  # e.g. the two reads hold different examples: the tables above still stand
            parts += ["", f"(no precision table: {e})"]
    parts += ["", "## Training", "", f"- steps: {summary.get('steps')}, wall time {summary.get('train_wall_time_s')} s, "
              f"peak memory {summary.get('peak_memory_mb', 0):.0f} MB",
              f"- adapter/ (the one evaluated above): {summary.get('adapter', 'best dev check')}"
              + (f"; merged into the weights for the read: {merge_note((after.get('model') or {}).get('dtype'))}"
                 if ((after.get("model") or {}).get("extra") or {}).get("adapter_merged") else ""),
              ("- best dev check: none kept (the dev slice trained: train_on_dev)" if cfg.train_on_dev else
               f"- best dev check (best_adapter/): {describe_best(summary.get('best'), cfg.checkpoint_metric)}"),
              f"- swaps: {len(summary.get('swaps', []))}" + "".join(
                  f"\n  - step {e['step']}: {e['bias_type']} "
                  + ("swapped as scheduled (scheduled_swaps)" if e.get("ss") is None else f"dev SS {e['ss']:.1f}")
                  + f" -> direction {e['direction']:+d}" for e in summary.get("swaps", [])),
              ""] + [f"![{alt}]({png})\n" for alt, png in (("losses", "losses.png"), ("dev SS", "dev_ss.png"),
                                                                   ("dev margin", "dev_margin.png"))
                     if (out / png).exists()]
    return atomic_write_text(out / "report.md", "\n".join(parts))


def run_training(cfg: UnlearnConfig, resume: bool = False, log=_log, overwrite: bool = False) -> dict:
    """Train, then evaluate before and after and report. overwrite: the run already in the folder is removed once
    this one can start (train_adapter)."""
    out = Path(cfg.output_dir)
    if not cfg.skip_final_eval:
        check_data(eval_config_for(cfg))  # the report's data, checked before an hour of training rather than after
    with run_lock(cfg):  # training, the before/after reads and the report: one run's, start to end
        summary = train_adapter(cfg, resume=resume, log=log, overwrite=overwrite)
        if cfg.skip_final_eval or not cfg.process_index == 0:
            return {"summary": summary}
        loads_unpartitioned()
        before, after = before_after(cfg, out / "adapter", out, log=log)
        write_report(out, before, after, summary, cfg)
    log(f"[done] report: {out / 'report.md'}")
    return {"summary": summary, "before": before, "after": after}


__all__ = ["run_training", "train_adapter", "before_after", "write_report", "BiasUnlearnError"]
