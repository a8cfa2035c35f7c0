"""DPO (the paper's section 4.5 comparison): the anti-stereotype continuation is preferred over the stereotype one,
on pairs built from the same train-pool examples, with TRL's DPOTrainer, a LoRA adapter and the reference model =
the same model with the adapter disabled (TRL's behaviour when it is given a `peft_config` and no `ref_model`).

A pair is tokenized exactly as BiasUnlearn and the scoring path see a sentence: prompt = start token + the context
before the blank (x), chosen = the anti-stereotype's y, rejected = the stereotype's y (`split_x_y`). Where x cannot
be split off, the prompt is the start token alone and the completions are the whole sentences. No EOS is appended:
the sentence's y tokens are what the StereoSet score compares.

Same step budget and learning-rate policy as BiasUnlearn (`training_arguments`); `pairs_per_step` defaults to half
of BiasUnlearn's forget + retain batch, so a step sees as many sentences as a BiasUnlearn step.
"""
from __future__ import annotations

import gc

from ..data.stereoset import split_x_y
from ..errors import ConfigError
from ..models import start_token_id
from ..scoring import tokenize_parts
from ..io import write_json
from ..adapters import lora_config
from .common import LoraFineTune, _log, training_arguments


def preference_pairs(train) -> list[dict]:
    """{"x", "chosen", "rejected", "id", "bias_type"} per example: anti-stereotype preferred over stereotype."""
    out = []
    for e in train:
        xs, ys = split_x_y(e.context, e.stereotype)
        xa, ya = split_x_y(e.context, e.anti_stereotype)
        if xs != xa or not ys.strip() or not ya.strip():
            xs, ys, ya = "", e.stereotype, e.anti_stereotype
        if ys == ya:
            continue
        out.append({"id": e.id, "bias_type": e.bias_type, "x": xs, "chosen": ya, "rejected": ys})
    return out


def _dpo_trainer_class():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer fed with our own token ids: the dataset already holds prompt_ids, chosen_ids and rejected_ids,
        so TRL's text tokenization (which would add EOS and its own special tokens) is skipped."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return PretokenizedDPOTrainer


class DPO(LoraFineTune):
    name = "dpo"
    description = "DPO (TRL): anti-stereotype preferred over stereotype, LoRA, adapter-disabled reference"

    def __init__(self, cfg, pairs_per_step: int | None = None, beta: float = 0.1, log=_log):
        batch = pairs_per_step or max(1, (cfg.forget_batch_size + cfg.retain_batch_size) // 2)
        super().__init__(cfg, batch_size=batch, log=log)
        self.beta = float(beta)

    def settings(self) -> dict:
        return {**super().settings(), "pairs_per_step": self.batch_size, "beta": self.beta}

    def encode_pairs(self, tok, pairs: list[dict]) -> list[dict]:
        start = start_token_id(tok)
        rows = []
        for p in pairs:
            # each completion split from its prompt as the whole sentence tokenizes (as BiasUnlearn's trainer
            # does); the two sentences share one prompt, so where their splits give it different tokens, all three
            # are tokenized apart
            (x, c), _ = tokenize_parts(tok, (p["x"], p["chosen"]))
            (xr, r), _ = tokenize_parts(tok, (p["x"], p["rejected"]))
            if xr != x:
                x, c, r = (tok(t, add_special_tokens=False)["input_ids"] if t else []
                           for t in (p["x"], p["chosen"], p["rejected"]))
            if c and r:
                rows.append({"prompt_ids": [start] + x, "chosen_ids": c, "rejected_ids": r})
        return rows

    def train(self) -> dict:
        from datasets import Dataset
        from trl import DPOConfig

        model, tok, info, splits = self._start()
        rows = self.encode_pairs(tok, preference_pairs(self.pairs))
        if not rows:
            raise ConfigError("dpo: no preference pairs in the train pool")
        args = training_arguments(self.cfg, self.batch_size, cls=DPOConfig, beta=self.beta, max_length=None,
                                  precompute_ref_log_probs=False)
        trainer = _dpo_trainer_class()(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                                       processing_class=tok, peft_config=lora_config(model, self.cfg))
        dev_cb, wall = self._run(trainer, tok, splits, f"{len(rows)} preference pairs", " pairs")
        summary = self._finish(trainer, trainer.model, info, splits, dev_cb, wall)
        summary["beta"] = self.beta
        write_json(self.out / "train_summary.json", summary)
        del trainer, model
        gc.collect()
        return summary
