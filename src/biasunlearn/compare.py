"""`biasunlearn compare`: baselines, ablations and BiasUnlearn on one model, evaluated on the same held-out data,
with one report.

    run_compare("smollm2-135m", ["base", "cda", "sft", "dpo", "self_debias", "biasunlearn"], "runs/compare")
    run_compare("smollm2-135m", None, "runs/ablate", ablations=True)

Each method gets a folder <out>/<method>/ with results.json (the evaluation document of biasunlearn.evaluate plus a
"method" section: settings, training summary, wall time and peak memory of training and evaluation, scoring cost
per sentence), and, for trained methods, the adapter and the training logs (log.jsonl, dev_log.jsonl). <out>/report.md
and the self-contained <out>/report.html are rebuilt from those files alone.

Reuse: a method whose results.json exists is not recomputed when its settings are the same; a trained adapter
whose evaluation did not finish is evaluated without retraining; an interrupted BiasUnlearn run resumes from its
last checkpoint. Different settings in an existing folder are an error (pass rerun=[method] or "all", or another out).

Fairness: every trained method uses the same UnlearnConfig (train pool, train/dev split and its seed, LoRA
settings, step budget, learning rate and schedule); every method is evaluated with the same EvalConfig and dtype on
the same held-out files; the report checks both (split checksum, data sha256) and says so.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from . import interrupt
from .errors import BiasUnlearnError, ConfigError, DataError
from .evaluate import (BENCHMARKS, EvalConfig, check_config, data_changes, evaluate_model, other_data_note,
                       package_versions)
from .io import (atomic_write_text, check_folder_path, comma_list, folder_entries, folder_lock, read_json_object,
                 write_json)
from .models import (cuda_has_native_bf16, free_device_memory, machine_info, merge_note, release_freed_memory,
                     resolve_model_path)

DEFAULT_METHODS = ("base", "cda", "sft", "dpo", "self_debias", "biasunlearn")
LABELS = {"base": "Base model", "cda": "CDA", "sft": "SFT", "dpo": "DPO", "self_debias": "Self-Debias",
          "biasunlearn": "BiasUnlearn"}
# name -> (UnlearnConfig overrides, label). The paper's section 4.4 plus the released code's schedule.
ABLATIONS = {
    "abl_full": ({}, "BiasUnlearn (all parts)"),
    "abl_no_retain": ({"alpha_retain": 0.0}, "w/o retention loss"),
    "abl_no_kl": ({"alpha_kl": 0.0}, "w/o KL"),
    "abl_no_adv": ({"adversarial_share": 0.0}, "w/o adversarial forget set"),
    "abl_no_swap": ({"swap_mode": "none"}, "w/o dynamic swapping"),
    "abl_focus_worst": ({"swap_mode": "focus_worst"}, "focus on the worst type (released code)"),
}
# Ablation runs use the whole step budget (no early stop, no collapse guard: the collapse without the retention loss
# is what the ablation shows) and, as in the paper (section 4.4), are evaluated at the final checkpoint.
ABLATION_RUN = {"early_stop_tolerance": -1.0, "collapse_lms_drop": 1.0e9}
KINDS = {"base": "base", "cda": "finetune", "sft": "finetune", "dpo": "finetune", "self_debias": "inference",
         "biasunlearn": "unlearn", **{k: "unlearn" for k in ABLATIONS}}
TRAINED = {k for k, v in KINDS.items() if v in ("finetune", "unlearn")}
DEV_CURVE_METHODS = ("cda", "sft", "dpo", "biasunlearn")


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def read_results(path) -> dict:
    """A method's results.json in a compare folder. One that is not JSON, or that holds no "method" section (an
    empty `{}`, or an evaluation document that compare did not finish), is a DataError naming it: taken as results,
    it would be reused or reported as a method that measured nothing."""
    path = Path(path)
    doc = read_json_object(path, "a compare method's results")
    if not isinstance(doc.get("method"), dict):
        raise DataError(path, f"not a compare method's results (no \"method\" section); remove it, or "
                              f"compute it again: compare --rerun {path.parent.name}")
    return doc


def read_plan(path) -> dict:
    """A compare folder's plan (compare.json, compare_seeds.json); one that is not a JSON object is a DataError
    naming it."""
    return read_json_object(path, "the plan of a compare run")


def label_of(name: str) -> str:
    return LABELS.get(name) or ABLATIONS.get(name, (None, name))[1]


def _plain(obj):
    """JSON-normalised copy (tuples -> lists, enums/paths -> str), so stored and current settings compare equal."""
    return json.loads(json.dumps(obj, default=lambda o: getattr(o, "value", str(o))))


class Measure:
    """Wall time and peak memory of a block: CUDA max allocated when a GPU is present; else the process's peak
    resident set, reset at the start of the block where Linux allows it (/proc/self/clear_refs)."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.kind = "cuda max allocated"
        else:
            # what an earlier block freed but malloc kept (cpu_malloc_tuning keeps it on purpose) is handed back
            # first, so this block's peak is its own
            release_freed_memory()
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.kind = "process peak RSS"
            except OSError:
                self.kind = "process peak RSS since start"
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self.t0
        self.peak_mb = self._peak()
        return False

    def _peak(self) -> float:
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def to_dict(self) -> dict:
        return {"wall_time_s": round(self.wall_s, 2), "peak_memory_mb": round(self.peak_mb, 1), "memory": self.kind}


def make_method_config(name: str, out: Path, model: str, data_dir=None, budget: dict | None = None,
                       overrides: dict | None = None):
    """The UnlearnConfig of one method's run: the same for every method except the output folder and, for the
    ablations, the ablated setting."""
    from .unlearn.config import make_config

    kw = dict(output_dir=str(Path(out) / name), model=model, skip_final_eval=True)
    if data_dir is not None:
        kw["data_dir"] = str(data_dir)
    kw.update({k: v for k, v in (budget or {}).items() if v is not None})
    kw.update(overrides or {})
    if name in ABLATIONS:
        kw.update(ABLATION_RUN)
        kw.update(ABLATIONS[name][0])
    return make_config(**kw)


def _train_settings(name: str, cfg, extra: dict) -> dict:
    d = cfg.method_dict()
    d["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps  # sentences per optimizer step, every method
    for k in list(d):
        # the before/after report's settings (a compare reads every method itself); eval_every is not one of them:
        # it sets when the dev checks that swap and stop come
        if (k.startswith("eval_") and k != "eval_every") or k in ("skip_final_eval",):
            d.pop(k)
    return _plain({"method": name, "config": d, **extra})


def _eval_settings(ecfg: EvalConfig, dtype: str, extra: dict | None = None) -> dict:
    d = {k: v for k, v in ecfg.to_dict().items() if k not in ("progress", "max_tokens")}
    return _plain({"eval_config": d, "dtype": dtype, **(extra or {})})


def _diff(a: dict, b: dict, prefix="") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return keys


# settings a method's stored settings hold only since they were made part of the reuse check: a run stored without
# one is taken as made with the current value (it cannot be told), one stored with it must match
RECORDED_SINCE = {"eval_every", "gradient_accumulation_steps"}


def settings_added_since(stored: dict | None, current: dict) -> list[str]:
    """The training settings of `current` that the stored method's settings lack (the version that made it did not
    have them) and that are at their default now. A setting is added with a default that keeps what the earlier
    version did, so such a run is taken as made with them, not refused as made with other settings."""
    from .unlearn.config import setting_default

    old = ((stored or {}).get("train") or {}).get("config")
    new = (current.get("train") or {}).get("config")
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    out = []
    for k in sorted(set(new) - set(old)):
        if k in RECORDED_SINCE:  # a setting runs made before session 47 did not record, whatever its value then
            out.append(k)
            continue
        try:
            if new[k] == setting_default(k):
                out.append(k)
        except KeyError:  # not an UnlearnConfig setting (a method's own value): a real difference
            pass
    return out


def _same_settings(stored: dict | None, current: dict) -> tuple[list[str], list[str]]:
    """(the differences between a stored method's settings and the current ones, [] if none; the training settings
    added since the stored run was made, which are no difference while at their default: settings_added_since).
    A data folder counts by where it resolves, so `--data-dir` naming the default folder (or $BIASUNLEARN_DATA)
    matches a run made without it; the files' own sha256 are checked by the report across methods."""
    from .data.common import data_dir as resolve_data_dir

    added = settings_added_since(stored, current)

    def norm(doc):
        doc = json.loads(json.dumps(doc or {}))
        for h in ((doc.get("eval") or {}).get("eval_config"), (doc.get("train") or {}).get("config")):
            if isinstance(h, dict) and "data_dir" in h:
                try:
                    h["data_dir"] = str(resolve_data_dir(h["data_dir"]).resolve())
                except ConfigError:
                    pass  # a folder that is gone stays as written, and so differs
        return doc

    now = norm(current)
    for k in added:
        now["train"]["config"].pop(k)
    return _diff(norm(stored), now), added


def _copy_adapter(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.startswith("adapter_") or f.name in ("README.md",):
            shutil.copy2(f, dst / f.name)
    return dst


def _cost_texts(splits, n: int) -> list[str]:
    if splits is not None and splits.dev:
        texts = [s for e in splits.dev for s in (e.stereotype, e.anti_stereotype, e.unrelated)]
    else:
        texts = ["The river flows past the village and into the sea.", "My neighbor plays the piano every evening.",
                 "The doctor said the child was healthy and strong."]
    return [texts[i % len(texts)] for i in range(max(n, 1))]


def _time_scoring(model, tok, texts) -> float:
    from .scoring import score_texts

    score_texts(model, tok, texts[: min(4, len(texts))])  # warm-up
    t0 = time.perf_counter()
    score_texts(model, tok, texts)
    return 1000.0 * (time.perf_counter() - t0) / len(texts)


class _Runner:
    def __init__(self, model, out: Path, budget, overrides, data_dir, ecfg, dtype, rerun, baseline_batch_size,
                 dpo_pairs_per_step, dpo_beta, ablation_checkpoint, cost_texts, splits_checksum, log,
                 merge_adapter: bool = False):
        self.model, self.out, self.budget, self.overrides, self.data_dir = model, out, budget, overrides, data_dir
        self.merge_adapter = merge_adapter
        self.ecfg, self.dtype, self.rerun, self.log = ecfg, dtype, set(rerun), log
        self.baseline_batch_size, self.dpo_pairs_per_step, self.dpo_beta = baseline_batch_size, dpo_pairs_per_step, dpo_beta
        self.ablation_checkpoint, self.cost_texts, self.splits_checksum = ablation_checkpoint, cost_texts, splits_checksum
        self._train_configs: dict = {}

    # --- settings ---
    def _trainer_for(self, name: str, cfg):
        from .baselines import CDA, DPO, SFT

        if name == "cda":
            return CDA(cfg, batch_size=self.baseline_batch_size, log=self.log), {"batch_size": self.baseline_batch_size}
        if name == "sft":
            return SFT(cfg, batch_size=self.baseline_batch_size, log=self.log), {"batch_size": self.baseline_batch_size}
        if name == "dpo":
            return (DPO(cfg, pairs_per_step=self.dpo_pairs_per_step, beta=self.dpo_beta, log=self.log),
                    {"pairs_per_step": self.dpo_pairs_per_step, "beta": self.dpo_beta})
        extra = {"ablation": ABLATIONS[name][0], "evaluated": self.ablation_checkpoint} if name in ABLATIONS else {}
        return None, extra

    def settings(self, name: str):
        cfg = make_method_config(name, self.out, self.model, self.data_dir, self.budget, self.overrides)
        train = None
        trainer = None
        if name in TRAINED:
            trainer, extra = self._trainer_for(name, cfg)
            if trainer is not None:
                extra = {**extra, "batch_size": trainer.batch_size}
            train = _train_settings(name, cfg, extra)
        extra_eval = {}
        if name == "self_debias":
            from .baselines.self_debias import DEFAULT_DECAY, DEFAULT_EPSILON, DEFAULT_PREFIXES

            extra_eval = {"self_debias": {"prefixes": DEFAULT_PREFIXES, "decay": DEFAULT_DECAY,
                                          "epsilon": DEFAULT_EPSILON}}
        elif name in TRAINED and self.merge_adapter:  # recorded only when on: folders read unmerged still match
            extra_eval = {"merge_adapter": True}
        return cfg, trainer, {"model": self.model, "train": train, "eval": _eval_settings(self.ecfg, self.dtype, extra_eval)}

    def same_run_as(self, name: str, names: list[str]) -> str | None:
        """The ablation listed before `name` in `names` whose training settings are `name`'s, if any: under a config
        that already leaves a part out (a recipe with adversarial_share 0 or swap_mode none), switching it off
        again changes nothing, and that run is not trained twice."""
        if name not in ABLATIONS:
            return None
        memo = self._train_configs  # each ablation's settings are worked out once

        def config_of(n):
            if n not in memo:
                memo[n] = (self.settings(n)[2]["train"] or {}).get("config")
            return memo[n]

        mine = config_of(name)
        for other in names[:names.index(name)]:
            if other in ABLATIONS and config_of(other) == mine:
                return other
        return None

    def alias(self, name: str, twin: str, twin_doc: dict) -> dict:
        """`name`'s results: `twin`'s run, which has the same settings, recorded under `name` and marked as such
        (written afresh each time, so it follows a rerun of `twin`)."""
        self.log(f"[compare] {name}: the same settings as {twin} under this config; its run stands for both")
        doc = json.loads(json.dumps(twin_doc))
        doc["method"].update({"name": name, "label": label_of(name), "settings": self.settings(name)[2],
                              "same_as": twin})
        write_json(self.out / name / "results.json", doc)
        return doc

    def _note_added(self, name: str, added: list[str]) -> None:
        if added:
            self.log(f"[compare] {name}: made before these settings existed, which are at their defaults now and "
                     f"taken as what that version did: {', '.join(added)} (--rerun {name} makes it afresh)")

    # --- one method ---
    def run(self, name: str) -> dict:
        d = self.out / name
        cfg, trainer, settings = self.settings(name)
        res = d / "results.json"
        if name in self.rerun or "all" in self.rerun:
            if d.exists():
                self.log(f"[compare] {name}: --rerun: removing {d}")
                shutil.rmtree(d)
        if res.exists():
            doc = read_results(res)
            diffs, added = _same_settings((doc.get("method") or {}).get("settings"), settings)
            if diffs:
                raise ConfigError(f"{res} was made with other settings ({'; '.join(diffs[:6]) or 'unknown'}); pass "
                                  f"--rerun {name} (or all) to recompute it, or use another --out")
            self._note_added(name, added)
            changed = data_changes(doc, self.ecfg, self.log)
            if not changed:
                self.log(f"[compare] {name}: reusing {res}")
                return doc
            # only the read is redone, a trained adapter kept (a changed train pool shows in the report's check of
            # the split checksum across methods)
            self.log(f"[compare] {name}: {other_data_note(res, changed)}: evaluating again")
            res.unlink()
        d.mkdir(parents=True, exist_ok=True)
        train_info = None
        if name in TRAINED:
            train_info = self._train(name, d, cfg, trainer, settings)
        return self._evaluate(name, d, settings, train_info)

    def _train(self, name, d: Path, cfg, trainer, settings) -> dict:
        from .baselines.common import schedule_words, stops_early
        from .unlearn.pipeline import last_checkpoint, train_adapter

        ms = d / "method_settings.json"
        diffs, added = (_same_settings({"train": read_json_object(ms).get("train")}, {"train": settings["train"]})
                        if ms.exists() else ([], []))
        if diffs:
            raise ConfigError(f"{d} holds a training run with other settings ({'; '.join(diffs[:6])}); pass "
                              f"--rerun {name} (or all) to retrain it, or use another --out")
        self._note_added(name, added)
        summary_path = d / "train_summary.json"
        done = ms.exists() and (d / "adapter" / "adapter_config.json").exists() and summary_path.exists()
        if done and (d / "train_measure.json").exists():
            self.log(f"[compare] {name}: reusing the trained adapter in {d}")
            info = read_json_object(d / "train_measure.json")
        else:
            if not ms.exists() and folder_entries(d):  # a lock file a killed run left is no one's files
                self.log(f"[compare] {name}: {d} holds files of an unknown run; starting it afresh")
                shutil.rmtree(d)
                d.mkdir(parents=True)
            elif ms.exists() and trainer is not None:
                self.log(f"[compare] {name}: an earlier start did not finish; the baselines keep no checkpoints, "
                         "so it trains again from step 0")
            write_json(ms, {"train": settings["train"]})
            self.log(f"[compare] {name}: training ({schedule_words(cfg)}) into {d}")
            with Measure() as m:
                if trainer is not None:
                    summary = trainer.train()
                else:
                    resume = last_checkpoint(d) is not None
                    if resume:
                        self.log(f"[compare] {name}: resuming from {last_checkpoint(d)}")
                    summary = train_adapter(cfg, resume=resume, log=self.log)
            gc.collect()
            info = {**m.to_dict(), "steps": summary.get("steps")}
            write_json(d / "train_measure.json", info)
        summary = read_json_object(summary_path) if summary_path.exists() else {}
        adapter = d / "adapter"
        if trainer is not None:
            evaluated = "final adapter" + (f" (step {cfg.stop_at_step}, stop_at_step)"
                                           if stops_early(cfg) else "")
        elif str(summary.get("adapter", "")).startswith("step"):  # a schedule fixed beforehand (stop_at_step)
            evaluated = f"the adapter of {summary['adapter']}"
        else:
            evaluated = "best dev check (BiasUnlearn's checkpoint choice)"
        if name in ABLATIONS and self.ablation_checkpoint == "final":
            ck = last_checkpoint(d)
            if ck is not None:
                adapter = _copy_adapter(ck, d / "final_adapter")
                evaluated = f"final checkpoint ({ck.name})"
        return {**info, "summary": _plain(summary), "adapter": str(adapter), "evaluated": evaluated}

    def _evaluate(self, name, d: Path, settings, train_info) -> dict:
        from .models import load_model

        adapter = train_info["adapter"] if train_info else None
        merge = bool(adapter) and self.merge_adapter
        self.log(f"[compare] {name}: evaluating" + (f" {adapter}" + (" (merged)" if merge else "") if adapter else ""))
        with Measure() as m:
            model, tok, info = load_model(self.model, adapter=adapter, dtype=self.dtype, merge_adapter=merge)
            scored, plain, ecfg = model, model, self.ecfg
            if name == "self_debias":
                from .baselines import SelfDebias

                scored = SelfDebias(model, tok)
                # a quarter of the batch budget: four forward passes and three full-vocabulary distributions per
                # batch (batching changes no number)
                ecfg = dataclasses.replace(ecfg, max_tokens=max(256, (ecfg.max_tokens or 1024) // 4))
            doc = evaluate_model(scored, tok, ecfg, info.to_dict(), d / "eval", log=self.log)
        cost = {"n_sentences": len(self.cost_texts)}
        cost["ms_per_sentence"] = _time_scoring(scored, tok, self.cost_texts)
        if merge:  # a merged adapter cannot be switched off: the plain model is read again, the merged one freed
            del model, scored, plain
            free_device_memory()
            plain, tok, _ = load_model(self.model, dtype=self.dtype)
            scored = model = plain
            cost["plain_ms_per_sentence"] = _time_scoring(plain, tok, self.cost_texts)
            cost["adapter_merged"] = True
        elif adapter:
            with plain.disable_adapter():
                cost["plain_ms_per_sentence"] = _time_scoring(plain, tok, self.cost_texts)
        elif name == "self_debias":
            cost["plain_ms_per_sentence"] = _time_scoring(plain, tok, self.cost_texts)
            cost["forward_passes_per_batch"] = scored.n_forward_passes
        else:
            cost["plain_ms_per_sentence"] = cost["ms_per_sentence"]
        cost["ratio_to_plain"] = cost["ms_per_sentence"] / max(cost["plain_ms_per_sentence"], 1e-9)
        del model, scored, plain
        gc.collect()
        train = None
        if train_info:
            s = train_info.get("summary") or {}
            train = {"steps": train_info.get("steps", s.get("steps")), "wall_time_s": train_info.get("wall_time_s"),
                     "peak_memory_mb": train_info.get("peak_memory_mb"), "memory": train_info.get("memory"),
                     "trainer_wall_time_s": s.get("train_wall_time_s"), "evaluated": train_info.get("evaluated"),
                     "adapter": train_info.get("adapter"), "splits_checksum": s.get("splits_checksum"),
                     "best": s.get("best"), "swaps": s.get("swaps")}
            sp = d / "splits.json"
            if sp.exists():
                train["splits_checksum"] = read_json_object(sp).get("checksum")
        doc["method"] = {"name": name, "label": label_of(name), "kind": KINDS[name], "settings": settings,
                         "train": train, "eval": m.to_dict(), "scoring_cost": cost,
                         "finished": _dt.datetime.now(_dt.timezone.utc).isoformat()}
        write_json(d / "results.json", doc)
        self.log(f"[compare] {name}: done -> {d / 'results.json'}")
        return doc


def check_rerun(rerun, names: list[str]) -> list[str]:
    """`--rerun` as a list, each entry a method run here or 'all': a misspelt name would otherwise keep the old
    results without a word."""
    rerun = comma_list(rerun) if isinstance(rerun, str) else list(rerun or ())
    stray = [r for r in rerun if r != "all" and r not in names]
    if stray:
        raise ConfigError(f"--rerun: {', '.join(stray)} not among the methods run here ({', '.join(names)}; or 'all')")
    return rerun


def check_method_budget(baseline_batch_size=None, dpo_pairs_per_step=None, dpo_beta=0.1) -> None:
    """--batch-size and --dpo-pairs (None: the default) at least 1, --dpo-beta above 0: refused before anything
    loads (a 0 would fall back to the default without a word, a negative beta reverses DPO's preference)."""
    for flag, v in (("--batch-size", baseline_batch_size), ("--dpo-pairs", dpo_pairs_per_step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{flag} {v}: must be a whole number of at least 1 (leave it out for the default)")
    if isinstance(dpo_beta, bool) or not isinstance(dpo_beta, (int, float)) or not dpo_beta > 0 \
            or dpo_beta == float("inf"):
        raise ConfigError(f"--dpo-beta {dpo_beta}: must be a number above 0 (DPO's beta; default 0.1)")


def resolve_methods(methods, ablations: bool) -> list[str]:
    """The methods to run, in report order; the base model always comes first (ΔLMS and Δperplexity need it)."""
    if isinstance(methods, str):
        methods = comma_list(methods)
    if methods is not None and not methods:  # given, but naming none (--methods "")
        raise ConfigError(f"--methods: names none (choose from {', '.join(KINDS)}; leave it out for the default: "
                          f"{','.join(DEFAULT_METHODS)})")
    if methods is None:
        methods = ["base"] if ablations else list(DEFAULT_METHODS)
    names = list(methods) + (list(ABLATIONS) if ablations else [])
    unknown = [m for m in names if m not in KINDS]
    if unknown:
        raise ConfigError(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(KINDS)})")
    out = ["base"]
    for m in names:
        if m not in out:
            out.append(m)
    return out


def run_compare(model: str = "smollm2-135m", methods=None, out="runs/compare", ablations: bool = False, *,
                max_steps: int | None = None, learning_rate: float | None = None, eval_every: int | None = None,
                benchmarks=BENCHMARKS, limit: int | None = None, bbq_per_category: int | None = 200,
                ppl_max_tokens: int | None = 32768, dtype: str | None = None, data_dir=None, rerun=(),
                config_overrides: dict | None = None, baseline_batch_size: int | None = None,
                dpo_pairs_per_step: int | None = None, dpo_beta: float = 0.1, ablation_checkpoint: str = "final",
                cost_sentences: int = 60, progress: bool = True, stereoset_intersentence: bool = True,
                merge_adapter: bool = False, log=_log) -> dict:
    """Run (or reuse) every method, then write <out>/report.md and <out>/report.html. Returns
    {"results": {method: results document}, "report": path, "html": path}.

    max_steps / learning_rate / eval_every: the budget of every trained method (default: UnlearnConfig's).
    benchmarks / limit / bbq_per_category / ppl_max_tokens / stereoset_intersentence: the evaluation budget (the
    same for every method).
    config_overrides: further UnlearnConfig settings for every trained method (train_pool, LoRA, batch sizes, ...).
    merge_adapter: read each trained method with its adapter merged into the weights (in float32, rounded once to
    dtype), as an export ships it; its scoring cost is then timed against the model read again without it.
    """
    from .unlearn.config import unknown_settings

    out = check_folder_path(out)
    names = resolve_methods(methods, ablations)
    check_method_budget(baseline_batch_size, dpo_pairs_per_step, dpo_beta)
    if ablation_checkpoint not in ("final", "best"):
        raise ConfigError(f"ablation_checkpoint {ablation_checkpoint!r}: expected final or best")
    if isinstance(benchmarks, str):
        benchmarks = tuple(comma_list(benchmarks))
    rerun = check_rerun(rerun, names)
    if dtype is None:
        dtype = "bfloat16" if cuda_has_native_bf16() else "float32"
    ecfg = EvalConfig(benchmarks=tuple(benchmarks), data_dir=str(data_dir) if data_dir is not None else None,
                      limit=limit, bbq_per_category=bbq_per_category or None, ppl_max_tokens=ppl_max_tokens or None,
                      stereoset_intersentence=stereoset_intersentence, progress=progress)
    check_config(ecfg)
    bad = unknown_settings(config_overrides or {})
    if bad:
        raise ConfigError(f"--set / --config: unknown setting(s) {bad} (`biasunlearn train --settings` lists them)")
    budget = {"max_steps": max_steps, "learning_rate": learning_rate, "eval_every": eval_every}
    ref_cfg = make_method_config("_reference", out, model, data_dir, budget, config_overrides)
    # every trained method's settings checked now, not when its turn comes after hours of the others' training
    cfgs = {n: make_method_config(n, out, model, data_dir, budget, config_overrides) for n in names if n in TRAINED}
    on_wiki = sorted(n for n, c in cfgs.items() if KINDS[n] == "unlearn" and c.unrelated_source == "wikitext")
    if on_wiki and "perplexity" in benchmarks:
        raise ConfigError(f"unrelated_source=wikitext trains the KL term of {', '.join(on_wiki)} on WikiText-2's "
                          "test file, which the perplexity benchmark reads: no number is reported on trained data. "
                          "Leave perplexity out (--benchmarks), or choose another unrelated_source")
    splits, split_doc = None, None
    try:
        from .data.splits import checked_splits, split_record

        splits, test, overlap = checked_splits(ref_cfg)
        split_doc = split_record(splits, ref_cfg, test, overlap)
    except BiasUnlearnError as e:
        if any(n in TRAINED for n in names):
            raise
        log(f"[compare] no train/dev split ({e}); fine: no method here trains")
    resolve_model_path(model)  # a model that is not there is named before anything is written
    # one compare at a time in a folder: a second would train and write the same method folders
    with folder_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        plan = _plain({"model": model, "methods": names, "ablations": ablations, "out": str(out),
                       "budget": {"max_steps": ref_cfg.max_steps, "learning_rate": ref_cfg.learning_rate,
                                  "lr_scheduler_type": ref_cfg.lr_scheduler_type, "warmup_steps": ref_cfg.warmup_steps,
                                  "optim": ref_cfg.optim, "eval_every": ref_cfg.eval_every,
                                  "forget_batch_size": ref_cfg.forget_batch_size,
                                  "retain_batch_size": ref_cfg.retain_batch_size,
                                  "unrelated_batch_size": ref_cfg.unrelated_batch_size,
                                  "baseline_batch_size": baseline_batch_size or ref_cfg.forget_batch_size + ref_cfg.retain_batch_size,
                                  "dpo_pairs_per_step": dpo_pairs_per_step or max(1, (ref_cfg.forget_batch_size + ref_cfg.retain_batch_size) // 2),
                                  "dpo_beta": dpo_beta, "lora_r": ref_cfg.lora_r, "lora_alpha": ref_cfg.lora_alpha,
                                  "seed": ref_cfg.seed, "ablation_checkpoint": ablation_checkpoint,
                                  "stop_at_step": ref_cfg.stop_at_step, "train_on_dev": ref_cfg.train_on_dev,
                                  "config_overrides": config_overrides or {}},
                       "eval": {**_eval_settings(ecfg, dtype)["eval_config"], "dtype": dtype,
                                **({"merge_adapter": True} if merge_adapter else {})},
                       "splits": {k: split_doc[k] for k in ("checksum", "seed", "dev_fraction", "sources", "counts", "test")}
                       if split_doc else None,
                       "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
                       "versions": package_versions(), "machine": machine_info(),
                       "started": _dt.datetime.now(_dt.timezone.utc).isoformat()})
        write_json(out / "compare.json", plan)
        if split_doc:
            write_json(out / "splits.json", split_doc)
        runner = _Runner(model, out, budget, config_overrides, data_dir, ecfg, dtype, rerun, baseline_batch_size,
                         dpo_pairs_per_step, dpo_beta, ablation_checkpoint, _cost_texts(splits, cost_sentences),
                         split_doc["checksum"] if split_doc else None, log, merge_adapter=merge_adapter)
        results = {}
        for name in names:
            interrupt.check()  # a Ctrl-C swallowed during the last method stops here, before the next one starts
            twin = runner.same_run_as(name, names)
            results[name] = runner.alias(name, twin, results[twin]) if twin else runner.run(name)
        paths = write_compare_report(out, names, plan)
        log(f"[compare] report: {paths['report']} and {paths['html']}")
        return {"results": results, **paths}


# --- the report ------------------------------------------------------------------------------------------------


def _self_debias_rule(method: dict) -> str:
    """The Self-Debias settings a folder was read with: lambda, the floor epsilon (a read stored before epsilon was
    recorded had none) and the prefixes' bias types."""
    sd = (((method.get("settings") or {}).get("eval") or {}).get("self_debias")) or {}
    lam, eps = sd.get("decay"), sd.get("epsilon")
    return ("λ = " + ("?" if lam is None else f"{lam:g}") + ", "
            + ("no floor ε" if eps is None else f"floor ε = {eps:g}")
            + ", prefixes for " + ", ".join(sd.get("prefixes") or ["?"]))


def _fmt(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"


# the training budget every trained method of one comparison shares (no ablation changes these)
SHARED_BUDGET = ("max_steps", "stop_at_step", "learning_rate", "lr_scheduler_type", "warmup_steps", "seed", "lora_r",
                 "lora_alpha", "gradient_accumulation_steps")


def _consistency(docs: dict, plan: dict) -> list[str]:
    """Lines saying whether every method saw the same split and the same held-out files (and warnings if not)."""
    lines = []
    want = (plan.get("splits") or {}).get("checksum")
    trained = {n: ((d.get("method") or {}).get("train") or {}).get("splits_checksum") for n, d in docs.items()
               if n in TRAINED}
    bad = sorted(n for n, c in trained.items() if c != want)
    if trained:
        lines.append(f"- Train/dev split checksum `{want}` (seed {(plan.get('splits') or {}).get('seed')}, dev "
                     f"fraction {(plan.get('splits') or {}).get('dev_fraction')}): "
                     + ("the same for every trained method." if not bad else
                        f"**warning: different for {', '.join(bad)}** — those numbers are not comparable."))
    elif want:
        lines.append(f"- Train/dev split checksum `{want}` (no method here trains on it).")
    # the budget every trained method should share (folders copied in from other comparisons may not)
    budgets = {}
    for n, d in docs.items():
        c = (((d.get("method") or {}).get("settings") or {}).get("train") or {}).get("config")
        if n in TRAINED and isinstance(c, dict):
            budgets[n] = tuple((k, c.get(k)) for k in SHARED_BUDGET if k in c)
    if len(set(budgets.values())) > 1:
        groups: dict = {}
        for n, b in budgets.items():
            groups.setdefault(b, []).append(n)
        lines.append("- **warning: the trained methods did not all train with the same budget** — "
                     + "; ".join(f"{', '.join(ns)}: " + ", ".join(f"{k} {v}" for k, v in b) for b, ns in groups.items())
                     + ".")
    bench = sorted({b for d in docs.values() for b in (d.get("benchmarks") or {})})
    for b in bench:
        shas = {n: json.dumps((d.get("benchmarks", {}).get(b, {}).get("data") or {}).get("sha256"), sort_keys=True)
                for n, d in docs.items() if b in (d.get("benchmarks") or {})}
        missing = sorted(n for n, d in docs.items() if b not in (d.get("benchmarks") or {}))
        first = next(iter(docs.values())).get("benchmarks", {}).get(b, {}).get("data") or {}
        sha = first.get("sha256") or {}
        digest = next(iter(sha.values()))[:16] + "…" if len(sha) == 1 else f"{len(sha)} files"
        same = len(set(shas.values())) == 1
        lines.append(f"- {b}: `{first.get('path', '?')}` ({digest}): "
                     + ("the same files for every method" if same else "**warning: different files across methods**")
                     + (f"; not measured for {', '.join(missing)}" if missing else "") + ".")
    cfgs = {n: json.dumps({k: ((d.get("method") or {}).get("settings", {}).get("eval") or {}).get(k)
                           for k in ("eval_config", "dtype")}, sort_keys=True) for n, d in docs.items()}
    if len(set(cfgs.values())) > 1:
        lines.append("- **warning: the methods were evaluated with different settings** (see each results.json).")
    else:
        lines.append("- Every method was evaluated with the same settings and dtype.")
    return lines


def write_compare_report(out, names: list[str] | None = None, plan: dict | None = None) -> dict:
    """Build <out>/report.md and <out>/report.html (figures in <out>/figures/) from the method folders alone."""
    from . import report as R
    from .plots import plot_ablation_losses, plot_dev_ss_compare

    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"{out}: no such folder (--report-only rebuilds the report of an earlier compare --out)")
    plan = plan or (read_plan(out / "compare.json") if (out / "compare.json").exists() else {})
    names = names or plan.get("methods") or [p.name for p in sorted(out.iterdir())
                                             if p.name in KINDS and (p / "results.json").exists()]
    docs = {n: read_results(out / n / "results.json") for n in names if (out / n / "results.json").exists()}
    if not docs:
        raise ConfigError(f"{out}: no method results to report (no compare.json and no finished method folder: "
                          f"{', '.join(names) if names else 'none named ' + ', '.join(KINDS)}); is it a compare --out?")
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    main = [n for n in docs if n not in ABLATIONS]
    abl = [n for n in docs if n in ABLATIONS]
    rows_main = [(label_of(n), docs[n]) for n in main]
    rows_abl = [(label_of(n), docs[n]) for n in (["base"] if "base" in docs else []) + abl]
    base_label = label_of("base") if "base" in docs else None
    budget, ev = plan.get("budget", {}), plan.get("eval", {})
    measured = sorted({b for d in docs.values() for b in (d.get("benchmarks") or {})})

    def has(b):
        return b in measured

    # a schedule stop_at_step cuts short: every method stops there (the learning-rate schedule spans max_steps)
    steps = (f"{budget['stop_at_step']} steps of a {budget.get('max_steps')}-step schedule (stop_at_step)"
             if budget.get("stop_at_step") else f"{budget.get('max_steps')} steps")
    md = [f"# Comparison of debiasing methods: {plan.get('model', next(iter(docs.values())).get('model', {}).get('spec', '?'))}",
          "", f"Methods: {', '.join(label_of(n) for n in docs)}. Created {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC "
          f"on {plan.get('device', '?')} ({plan.get('threads', '?')} threads).", "",
          "## Budget", "",
          f"- Training (every trained method): {steps}, learning rate {budget.get('learning_rate')} "
          f"({budget.get('lr_scheduler_type')} schedule, warm-up {budget.get('warmup_steps')}, {budget.get('optim')}), dev "
          f"check every {budget.get('eval_every')} steps, LoRA r={budget.get('lora_r')} alpha={budget.get('lora_alpha')}, "
          f"seed {budget.get('seed')}.",
          f"- Batches: BiasUnlearn forget {budget.get('forget_batch_size')} + retain {budget.get('retain_batch_size')} + "
          f"unrelated {budget.get('unrelated_batch_size')} per step; CDA and SFT {budget.get('baseline_batch_size')} "
          f"sentences per step; DPO {budget.get('dpo_pairs_per_step')} pairs per step (beta {budget.get('dpo_beta')}).",
          f"- Evaluation: benchmarks {', '.join(ev.get('benchmarks') or measured)}; "
          + (f"at most {ev['limit']} examples per benchmark (seeded sample)" if ev.get("limit") else "all examples")
          + f"; BBQ {ev.get('bbq_per_category') or 'all'} per category; perplexity on the first "
          f"{ev.get('ppl_max_tokens') or 'all'} tokens; dtype {ev.get('dtype')}"
          + ("; the trained methods read with their adapters merged into the weights as an export ships them "
             f"({merge_note(ev.get('dtype'))})." if ev.get("merge_adapter") else "."),
          ]
    if budget.get("config_overrides"):
        md.append(f"- Other settings: `{json.dumps(budget['config_overrides'])}`.")
    if any(n in TRAINED for n in docs):
        md.append(f"- One training seed ({budget.get('seed')}): a method's numbers move with it; `compare --seeds` "
                  "repeats the comparison at several seeds and reports each method's mean and spread.")
    reduced = (budget.get("stop_at_step") or budget.get("max_steps") or 0) < 1000 or ev.get("limit") or \
        set(ev.get("benchmarks") or BENCHMARKS) != set(BENCHMARKS)
    if reduced:
        md.append("- **Reduced budget** (fewer than the paper's 1000 steps, a sample of each benchmark or not every "
                  "benchmark): the numbers show the pipeline and trends, not the paper's results.")
    md += ["", "## Held-out data", "",
           "All numbers below come from the same held-out test data for every method: StereoSet test (the StereoSet "
           "dev set, target terms disjoint from the train pool), CrowS-Pairs, BBQ and WikiText-2, none of them trained "
           "on. " + ("The dev slice of the train pool was trained too (train_on_dev): the dev curves below read "
                     "trained data, and no decision was taken on them." if budget.get("train_on_dev") else
                     "Dev checks and checkpoint choice used only the dev slice of the train pool."), ""]
    md += _consistency(docs, plan)

    md += ["", "## StereoSet (Table 1 layout)", ""]
    if has("stereoset"):
        md.append(R.stereoset_comparison_markdown(rows_main, base_label, "intrasentence"))
        if any(R._get(d, "benchmarks", "stereoset", "metrics", "intersentence") for d in docs.values()):
            md += ["### StereoSet intersentence", "", R.stereoset_comparison_markdown(rows_main, base_label, "intersentence")]
    else:
        md.append("not measured (not in --benchmarks)")

    md += ["", "## CrowS-Pairs (Table 2 layout)", ""]
    if has("crows_pairs"):
        md += [R.crows_comparison_markdown(rows_main, base_label, "length_normalised"),
               "### CrowS-Pairs, summed log-probability", "", R.crows_comparison_markdown(rows_main, base_label, "summed_logprob")]
    else:
        md.append("not measured (not in --benchmarks)")

    md += ["", "## BBQ and perplexity", ""]
    if has("bbq") or has("perplexity"):
        md.append(R.bbq_perplexity_comparison_markdown(rows_main, base_label))
        if has("bbq"):
            md += ["### BBQ bias scores per category", "", R.bbq_category_comparison_markdown(rows_main)]
        md.append("BBQ: answers ranked by length-normalised log-likelihood; bias scores use approximate target "
                  "options (see evaluate.eval_bbq). Perplexity: WikiText-2 raw test; Δ against the base model.")
    else:
        md.append("not measured (not in --benchmarks)")

    md += ["", "## Dev SS against training steps (Figure 4)", ""]
    curves = {label_of(n): out / n / "dev_log.jsonl" for n in DEV_CURVE_METHODS if n in docs and (out / n / "dev_log.jsonl").exists()}
    p = plot_dev_ss_compare(curves, figs / "dev_ss_compare.png") if curves else None
    if p:
        md += [f"Overall SS on the dev slice of the train pool at every dev check ({', '.join(curves)}). "
               "BiasUnlearn's curve is the run's own dev checks (its swaps and early stop act on them); the baselines "
               "only record.", "", "![Figure 4: dev SS (overall) against training steps](figures/dev_ss_compare.png)"]
    else:
        md.append("no dev logs (run sft, dpo or biasunlearn to get this figure)")

    md += ["", "## Ablations (Table 5 layout, Figure 3)", ""]
    if abl:
        md += [R.ablation_comparison_markdown(rows_abl, base_label),
               f"Every ablation trains the whole budget ({steps}; no early stop, no collapse guard) "
               f"and is evaluated at its {'final checkpoint, as in the paper (section 4.4)' if budget.get('ablation_checkpoint', 'final') == 'final' else 'best dev check'}.", ""]
        same = {n: (docs[n].get("method") or {}).get("same_as") for n in abl}
        md += [f"- {label_of(n)}: the same settings as {label_of(t)} under this config (it already leaves that "
               "part out), so the same run, trained once." for n, t in same.items() if t]
        md += [""] if any(same.values()) else []
        abl = [n for n in abl if not same[n]]  # the curves and costs below: each run once
        logs = {label_of(n): out / n / "log.jsonl" for n in abl}
        p3 = plot_ablation_losses(logs, figs / "ablation_losses.png")
        if p3:
            md += ["![Figure 3: forgetting and retention losses of the ablations](figures/ablation_losses.png)", "",
                   "A loss whose weight is 0 in a run is still computed and logged there (it adds nothing to that run's "
                   "training loss), so its line shows what training without it did to it."]
        dcurves = {label_of(n): out / n / "dev_log.jsonl" for n in abl if (out / n / "dev_log.jsonl").exists()}
        p4 = plot_dev_ss_compare(dcurves, figs / "ablation_dev_ss.png", title="Ablations: dev SS (overall)") if dcurves else None
        if p4:
            md += ["", "![Ablations: dev SS against training steps](figures/ablation_dev_ss.png)"]
    else:
        md.append("not run (pass --ablations)")

    md += ["", "## Cost: wall time and peak memory", "",
           R.cost_comparison_markdown([(label_of(n), docs[n].get("method")) for n in docs
                                       if not (docs[n].get("method") or {}).get("same_as")]),
           "Train: model loading, training and dev checks. Eval: the whole benchmark suite. Memory: "
           + ", ".join(sorted({str(((docs[n].get('method') or {}).get('eval') or {}).get('memory')) for n in docs}))
           + ". Scoring cost: ms per sentence on the same sentences, against the plain model in the same process "
             "(adapter disabled, or for a merged adapter the model read again without it; for Self-Debias the "
             "wrapped model)."]
    if "self_debias" in docs:
        sc = (docs["self_debias"].get("method") or {}).get("scoring_cost") or {}
        md += ["", f"Self-Debias costs {_fmt(sc.get('ratio_to_plain'))}× the plain model per sentence "
               f"({_fmt(sc.get('ms_per_sentence'))} vs {_fmt(sc.get('plain_ms_per_sentence'))} ms; "
               f"{sc.get('forward_passes_per_batch', '–')} forward passes per batch: the plain one and one per "
               "bias-describing prefix). The adapters of the trained methods cost nothing extra once merged."]

    md += ["", "## Methods", ""]
    for n, d in docs.items():
        m = d.get("method") or {}
        tr = m.get("train") or {}
        line = f"- **{label_of(n)}** (`{n}`, [{n}/results.json]({n}/results.json))"
        if tr:
            line += f": {tr.get('steps')} steps; evaluated: {tr.get('evaluated')}"
            if ((d.get("model") or {}).get("extra") or {}).get("adapter_merged"):
                line += " (merged into the weights)"
            if tr.get("swaps"):
                line += f"; {len(tr['swaps'])} swaps"
        elif n == "self_debias":
            line += ": inference-time, no training (" + _self_debias_rule(m) + ")"
        elif n == "base":
            line += ": the model as loaded"
        md.append(line)
    missing = [n for n in names if n not in docs]
    if missing:
        md.append(f"- not finished (no results.json yet): {', '.join(missing)}")
    text = "\n".join(md) + "\n"
    rep = atomic_write_text(out / "report.md", text)
    html = atomic_write_text(out / "report.html", R.markdown_to_html(text, base_dir=out, title="biasunlearn compare"))
    return {"report": str(rep), "html": str(html), "missing": missing}


__all__ = ["run_compare", "write_compare_report", "resolve_methods", "make_method_config", "DEFAULT_METHODS",
           "ABLATIONS", "Measure"]
