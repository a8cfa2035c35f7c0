"""Run by torchrun in test_unlearn_ddp.py: trains a few steps on a tiny model and writes this rank's swap decisions
and its first-step packing check."""
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)


def main(model_path, data_dir, out_dir, bf16="0", nan_on_rank=""):
    import os

    from biasunlearn.unlearn import trainer as trainer_mod
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.pipeline import train_adapter
    from biasunlearn.unlearn.trainer import BiasUnlearnTrainer, TrainingCollapse

    rank_env = int(os.environ.get("RANK", "0"))
    if nan_on_rank and int(nan_on_rank) == rank_env:  # this process alone gets a NaN forget loss from step 1 on
        real, calls = trainer_mod.npo_loss, []

        def nan_later(*a, **k):
            calls.append(1)
            return real(*a, **k) * (float("nan") if len(calls) > 1 else 1.0)

        trainer_mod.npo_loss = nan_later

    captured = {}
    orig = BiasUnlearnTrainer.__init__

    def keep(self, *a, **kw):
        orig(self, *a, **kw)
        captured["trainer"] = self

    BiasUnlearnTrainer.__init__ = keep
    cfg = make_config(output_dir=out_dir, model=model_path, data_dir=data_dir, train_pool="pool.json", max_steps=4,
                      eval_every=2, save_steps=2, forget_batch_size=2, retain_batch_size=2, unrelated_batch_size=2,
                      learning_rate=5e-2, warmup_steps=0, logging_steps=1, dev_fraction=0.3, min_dev_per_type=1,
                      skip_final_eval=True, use_cpu=True, bf16=bf16 == "1", disable_tqdm=True, seed=0,
                      collapse_lms_drop=101.0, ddp_backend="gloo")
    try:
        train_adapter(cfg, log=lambda s: None)
    except TrainingCollapse as e:
        Path(out_dir, f"rank{rank_env}_collapse.txt").write_text(str(e))
        raise
    t = captured["trainer"]
    rank = t.args.process_index
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
        "world": t.args.world_size, "controller": t.controller.state_dict(), "packing": t.packing_check,
        "mixed_precision": t.accelerator.mixed_precision}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
