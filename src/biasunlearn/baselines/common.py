"""What the fine-tuning baselines share with BiasUnlearn and with each other.

Every baseline takes the same `UnlearnConfig` as BiasUnlearn (built with `biasunlearn.unlearn.make_config`), so the
train pool, the train/dev split (`splits_for`: the same seed and dev settings), the LoRA settings, the step
budget and the learning-rate policy (learning rate, linear schedule, warm-up, AdamW) are the same by construction.
A run folder gets the same files as a BiasUnlearn run: adapter/, splits.json, config.json, log.jsonl (per-step
losses), dev_log.jsonl (one line per dev check, same format: {"step", "ss": {bias_type: SS}, "ss_overall", "lms",
"elapsed_s"}) and train_summary.json.

Sentences are encoded as in the scoring path: one start token (BOS, else EOS) in front, never scored.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..data.splits import checked_splits, split_record, training_pairs
from ..errors import ConfigError
from ..evaluate import package_versions, stereoset_records
from ..io import write_json
from ..metrics import stereoset_scores
from ..models import load_model, machine_info, start_token_id


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def peak_memory_mb() -> float:
    """Peak memory so far: CUDA allocated when a GPU is present, else the process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024



def stops_early(cfg) -> bool:
    """Whether stop_at_step ends training before the end of its max_steps schedule."""
    return 0 < cfg.stop_at_step < cfg.max_steps


def schedule_words(cfg) -> str:
    """'250 steps', or '150 steps of a 250-step schedule' when stop_at_step cuts the schedule short."""
    if stops_early(cfg):
        return f"{cfg.stop_at_step} steps of a {cfg.max_steps}-step schedule"
    return f"{cfg.max_steps} steps"


def training_arguments(cfg, batch_size: int, cls=TrainingArguments, **extra):
    """TrainingArguments (or a subclass such as trl.DPOConfig) with BiasUnlearn's step budget and learning-rate
    policy copied from `cfg`. Checkpoints are not written: a baseline run is short and restarts from scratch."""
    kw = dict(output_dir=cfg.output_dir, per_device_train_batch_size=batch_size, max_steps=cfg.max_steps,
              learning_rate=cfg.learning_rate, lr_scheduler_type=str(getattr(cfg.lr_scheduler_type, "value",
                                                                             cfg.lr_scheduler_type)),
              warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
              optim=str(getattr(cfg.optim, "value", cfg.optim)), seed=cfg.seed, bf16=cfg.bf16, use_cpu=cfg.use_cpu,
              logging_steps=cfg.logging_steps, save_strategy="no", report_to="none", remove_unused_columns=False,
              dataloader_num_workers=0, disable_tqdm=cfg.disable_tqdm, max_grad_norm=cfg.max_grad_norm,
              # as BiasUnlearn's steps: with accumulation, each optimizer step takes that many batches
              gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    if cfg.gradient_checkpointing:  # under the name the installed transformers reads without a deprecation warning
        names = {f.name for f in dataclasses.fields(cls)}
        kw["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = True
    kw.update(extra)
    return cls(**kw)


class DevSSCallback(TrainerCallback):
    """Every `eval_every` steps (and at step 0 and at the last step): dev StereoSet SS per bias type and LMS through
    the one scoring path, appended to dev_log.jsonl in BiasUnlearn's format. It only records: a baseline has no
    swapping, early stopping or checkpoint choice. With trained_on (train_on_dev) each entry says that it reads
    trained data. With stop_at_step (a schedule fixed beforehand, as BiasUnlearn's recipes fix it) training stops at
    that step of the max_steps schedule, as BiasUnlearn's does, so every method of a comparison trains the same
    steps at the same learning rates."""

    def __init__(self, tokenizer, dev_examples, out_dir, eval_every: int, bf16: bool = False, log=_log,
                 trained_on: bool = False, stop_at_step: int = 0):
        self.tok, self.dev, self.out = tokenizer, dev_examples, Path(out_dir)
        self.trained_on, self.stop_at_step = trained_on, int(stop_at_step or 0)
        self.eval_every, self.bf16, self.log = max(int(eval_every), 1), bf16, log
        self.t0 = time.time()
        self.done: set[int] = set()
        self.history: list[dict] = []

    def check(self, model, step: int) -> dict:
        use_bf16 = bool(self.bf16) and not torch.cuda.is_available()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            recs = stereoset_records(model, self.tok, self.dev)
        m = stereoset_scores(recs)
        entry = {"step": step, "ss": {b: v["SS"] for b, v in m.items() if b != "overall"},
                 "ss_overall": m["overall"]["SS"], "lms": m["overall"]["LMS"],
                 "elapsed_s": round(time.time() - self.t0, 1), **({"trained_on": True} if self.trained_on else {})}
        with open(self.out / "dev_log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.done.add(step)
        self.history.append(entry)
        self.log(f"[dev{', trained on' if self.trained_on else ''}] step {step}: SS "
                 + " ".join(f"{b}={v:.1f}" for b, v in entry["ss"].items())
                 + f" overall={entry['ss_overall']:.1f} LMS={entry['lms']:.1f}")
        return entry

    def on_train_begin(self, args, state, control, model=None, **kw):
        if state.global_step == 0 and 0 not in self.done and state.is_world_process_zero:
            self.check(model, 0)

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step % self.eval_every == 0 and state.is_world_process_zero:
            self.check(model, state.global_step)
        if self.stop_at_step and state.global_step >= self.stop_at_step:
            self.log(f"[train] step {state.global_step}: stop_at_step reached; the adapter is this step's")
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, model=None, **kw):
        if state.global_step not in self.done and state.is_world_process_zero:
            self.check(model, state.global_step)


class SentenceDataset(torch.utils.data.Dataset):
    def __init__(self, seqs: list[list[int]]):
        self.seqs = seqs

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return {"input_ids": self.seqs[i]}


class SentenceCollator:
    """Right-padded batch; labels = the tokens after the start token (-100 on the start token and on padding)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.as_tensor(r["input_ids"])
            attn[i, : len(r["input_ids"])] = 1
        labels = ids.masked_fill(attn == 0, -100)
        labels[:, 0] = -100
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}


class LoraFineTune:
    """Base class of the fine-tuning baselines: load the model, put LoRA on it exactly as BiasUnlearn does
    (`prepare_lora`), train on `training_texts(split.train)` with the transformers Trainer for `cfg.max_steps` steps,
    record dev SS every `cfg.eval_every` steps and write the final adapter to <output_dir>/adapter.

    `batch_size`: sentences per step; default forget_batch_size + retain_batch_size of the config, i.e. as many
    training sentences per step as BiasUnlearn's forget and retain batches together.
    """

    name = "lora_finetune"
    description = "LoRA fine-tuning"

    def __init__(self, cfg, batch_size: int | None = None, log=_log):
        self.cfg = cfg
        self.batch_size = int(batch_size or (cfg.forget_batch_size + cfg.retain_batch_size))
        if self.batch_size < 1:
            raise ConfigError(f"{self.name}: batch_size must be at least 1")
        self.log = log
        self.out = Path(cfg.output_dir)

    # --- what subclasses define ---
    def training_texts(self, train) -> list[str]:
        raise NotImplementedError

    def settings(self) -> dict:
        """Everything that determines the trained adapter (for the run's config.json and for reuse checks)."""
        return {"method": self.name, "batch_size": self.batch_size, "config": self.cfg.method_dict()}

    # --- shared steps ---
    def _start(self):
        """Fresh run folder, model (float32) and tokenizer, seeded RNG, split; writes splits.json and config.json."""
        from transformers import set_seed

        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("log.jsonl", "dev_log.jsonl", "train_summary.json"):
            (self.out / stale).unlink(missing_ok=True)
        shutil.rmtree(self.out / "adapter", ignore_errors=True)
        model, tok, info = load_model(self.cfg.model, dtype="float32", device="cpu" if self.cfg.use_cpu else None)
        model.train()
        set_seed(self.cfg.seed)
        splits, test, overlap = checked_splits(self.cfg)
        from ..unlearn.pipeline import exclude_train_pairs

        # the pairs BiasUnlearn trains on: the split's (with the dev slice under train_on_dev), less those its
        # train_exclude_pattern leaves out
        self.pairs, excluded = exclude_train_pairs(training_pairs(splits, self.cfg), self.cfg.train_exclude_pattern)
        if excluded:
            self.log(f"[{self.name}] train_exclude_pattern: {len(excluded)} of {len(self.pairs) + len(excluded)} "
                     "train pairs left out")
        write_json(self.out / "splits.json", {**split_record(splits, self.cfg, test, overlap),
                                              "excluded_train_ids": [e.id for e in excluded]})
        write_json(self.out / "config.json", {**self.settings(), "model": info.to_dict(), "versions": package_versions(),
                                              "machine": machine_info()})
        return model, tok, info, splits

    def dev_callback(self, tok, splits) -> DevSSCallback:
        """The dev log of a run (records only; with train_on_dev its entries say they read trained data)."""
        return DevSSCallback(tok, splits.dev, self.out, self.cfg.eval_every, bf16=bool(self.cfg.bf16), log=self.log,
                             trained_on=self.cfg.train_on_dev, stop_at_step=self.cfg.stop_at_step)

    def _finish(self, trainer, model, info, splits, dev_cb, wall: float) -> dict:
        from .. import plots

        final = self.out / "adapter"
        shutil.rmtree(final, ignore_errors=True)
        trainer.accelerator.unwrap_model(model).save_pretrained(final)
        write_json(final / "biasunlearn_config.json", {"method": self.name, "config": self.settings(),
                                                       "base_model": info.to_dict(),
                                                       "splits_checksum": splits.to_dict()["checksum"]})
        summary = {"method": self.name, "train_wall_time_s": round(wall, 1), "steps": trainer.state.global_step,
                   "batch_size": self.batch_size, "dev_checks": len(dev_cb.history),
                   "last_dev": dev_cb.history[-1] if dev_cb.history else None, "peak_memory_mb": peak_memory_mb(),
                   "splits_checksum": splits.to_dict()["checksum"],
                   "kept": "final adapter (no checkpoint choice)" + (
                       f", step {self.cfg.stop_at_step} of a {self.cfg.max_steps}-step schedule (stop_at_step)"
                       if stops_early(self.cfg) else "")}
        write_json(self.out / "train_summary.json", summary)  # before the plot: a plot that fails loses no run
        plots.draw_or_warn(plots.plot_dev_ss, self.out / "dev_log.jsonl", self.out / "dev_ss.png", log=self.log,
                           tag=self.name, title=f"{self.name}: dev SS per bias type")
        return summary

    def encode(self, tok, texts: list[str]) -> list[list[int]]:
        start = start_token_id(tok)
        return [[start] + ids for ids in tok(list(texts), add_special_tokens=False)["input_ids"] if ids]

    def train(self) -> dict:
        from ..unlearn.pipeline import prepare_lora

        model, tok, info, splits = self._start()
        texts = self.training_texts(self.pairs)
        if not texts:
            raise ConfigError(f"{self.name}: no training sentences in the train pool")
        seqs = self.encode(tok, texts)
        model = prepare_lora(model, self.cfg)
        args = training_arguments(self.cfg, self.batch_size)
        trainer = Trainer(model=model, args=args, train_dataset=SentenceDataset(seqs),
                          data_collator=SentenceCollator(tok.pad_token_id or 0))
        dev_cb, wall = self._run(trainer, tok, splits, f"{len(seqs)} training sentences", "")
        summary = self._finish(trainer, model, info, splits, dev_cb, wall)
        del trainer, model
        gc.collect()
        return summary

    def _run(self, trainer, tok, splits, data: str, unit: str) -> tuple:
        """`trainer` trained with the callbacks every baseline runs with (Ctrl-C between steps, the dev SS checks,
        log.jsonl, the logs on stderr), its data and schedule said first; (the dev callback, wall time in s)."""
        from ..unlearn.trainer import InterruptCheck, JsonlLogCallback, route_logs_to_stderr

        trainer.add_callback(InterruptCheck())
        dev_cb = self.dev_callback(tok, splits)
        trainer.add_callback(dev_cb)
        trainer.add_callback(JsonlLogCallback(self.out / "log.jsonl"))
        route_logs_to_stderr(trainer)
        self.log(f"[{self.name}] {data}, {schedule_words(self.cfg)} of {self.batch_size}{unit}")
        t0 = time.time()
        trainer.train()
        return dev_cb, time.time() - t0
