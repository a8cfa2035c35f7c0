"""Run by torchrun in test_unlearn_ddp.py: trains a few steps on a tiny model and writes this rank's swap decisions
and its first-step packing check.

Arguments: MODEL DATA OUT [BF16 [NAN_ON_RANK [ENGINE [KILL_AT [RESUME [MODEL_DTYPE [SETTINGS]]]]]]]. ENGINE is "ddp" (the default), "fsdp" (asked
for in the training arguments) or "fsdp-env" (by `accelerate launch --use_fsdp`'s environment);
KILL_AT a step after which every process stops as if killed; RESUME "1" continues the run in OUT; MODEL_DTYPE the
frozen weights' dtype (model_dtype; the default's by default); SETTINGS a JSON object of more settings (with
"skip_final_eval": false the run ends with the report's evaluation, as `biasunlearn train` does)."""
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)


def force_fsdp_on_cpu():
    """accelerate turns FSDP on only for accelerator processes (on CPU processes it silently runs DDP). Torch's FSDP2
    itself runs on CPU tensors over gloo, so this sets accelerate's state to FSDP after its own init, as it does on
    GPUs, whenever an FSDP plugin was asked for. Everything past that is accelerate's and transformers' FSDP code."""
    from accelerate import state
    from accelerate.utils import DistributedType

    orig = state.AcceleratorState.__init__

    def init(self, *a, fsdp_plugin=None, **kw):
        orig(self, *a, fsdp_plugin=fsdp_plugin, **kw)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    state.AcceleratorState.__init__ = init


def force_deepspeed_on_cpu():
    """The same for DeepSpeed: after accelerate's state is set up for CPU processes over gloo, it is switched to
    DeepSpeed with the plugin asked for, as accelerate does on GPUs."""
    from accelerate import state
    from accelerate.utils import DistributedType

    orig = state.AcceleratorState.__init__

    def init(self, *a, deepspeed_plugin=None, **kw):
        orig(self, *a, deepspeed_plugin=deepspeed_plugin, **kw)
        if deepspeed_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.DEEPSPEED
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
            self._mixed_precision = "no"
            state.PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED

    state.AcceleratorState.__init__ = init


def keep_trainer(*callbacks) -> dict:
    """Makes the next BiasUnlearnTrainer built in this process land in the returned dict (key "trainer") with
    `callbacks` added, so that a run started through the pipeline can be watched and read afterwards."""
    from biasunlearn.unlearn.trainer import BiasUnlearnTrainer

    kept, orig = {}, BiasUnlearnTrainer.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        kept["trainer"] = self
        for callback in callbacks:
            self.add_callback(callback)

    BiasUnlearnTrainer.__init__ = init
    return kept


def engine_settings(engine: str) -> dict:
    """Switches accelerate to the engine for this CPU process and returns the training settings that ask for it:
    "ddp" (none), "fsdp" (FSDP2 in the training arguments), "fsdp-env" (FSDP2 from `accelerate launch --use_fsdp`'s
    environment: no settings), "zero2" or "zero3" (DeepSpeed ZeRO stage 2 or 3 on its CPU accelerator, gloo), and
    "zero3-nogather" (ZeRO-3 without gathering the weights at saves)."""
    if engine.startswith("fsdp"):
        force_fsdp_on_cpu()
    if engine == "fsdp":
        return dict(fsdp=True, fsdp_config={"version": 2})
    if engine.startswith("zero"):
        force_deepspeed_on_cpu()
        return dict(deepspeed={
            "zero_optimization": {"stage": int(engine[4]),
                                  "stage3_gather_16bit_weights_on_model_save": not engine.endswith("nogather")},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "bf16": {"enabled": "auto"}})
    return {}


def main(model_path, data_dir, out_dir, bf16="0", nan_on_rank="", engine="ddp", kill_at="", resume="0",
         model_dtype="", settings="{}"):
    import os

    from transformers import TrainerCallback

    from biasunlearn.unlearn import trainer as trainer_mod
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.pipeline import run_training
    from biasunlearn.unlearn.trainer import TrainingCollapse

    rank_env = int(os.environ.get("RANK", "0"))
    if nan_on_rank and int(nan_on_rank) == rank_env:  # this process alone gets a NaN forget loss from step 1 on
        real, calls = trainer_mod.npo_loss, []

        def nan_later(*a, **k):
            calls.append(1)
            return real(*a, **k) * (float("nan") if len(calls) > 1 else 1.0)

        trainer_mod.npo_loss = nan_later
    engine_args = engine_settings(engine)
    if model_dtype:
        engine_args["model_dtype"] = model_dtype
    captured = {"param_types": set(), "steps": []}

    class Watch(TrainerCallback):
        """Records the class of the trainable weights as the engine holds them during training (DTensor: sharded),
        lists the steps this process trained, and stops every process after step KILL_AT as a kill would."""

        def on_step_end(self, args, state, control, **kw):
            model = kept["trainer"].model_wrapped
            captured["param_types"].update(("ZeRO-partitioned " if hasattr(p, "ds_tensor") else "") + type(p).__name__
                                           for p in model.parameters() if p.requires_grad)
            captured["steps"].append(state.global_step)
            for key, trainable in (("dtypes", True), ("frozen_dtypes", False)):
                captured[key] = sorted({str(getattr(p, "ds_tensor", p).dtype) for p in model.parameters()
                                        if p.requires_grad is trainable})
            if kill_at and state.global_step == int(kill_at):
                raise KeyboardInterrupt("killed")

    kept = keep_trainer(Watch())
    cfg = make_config(output_dir=out_dir, model=model_path, data_dir=data_dir, train_pool="pool.json", max_steps=4,
                      eval_every=2, save_steps=2, learning_rate=5e-2, warmup_steps=0, logging_steps=1,
                      dev_fraction=0.3, min_dev_per_type=1, bf16=bf16 == "1", disable_tqdm=True, seed=0,
                      collapse_lms_drop=101.0,
                      **{"ddp_backend": "gloo", "use_cpu": True, "skip_final_eval": True, "forget_batch_size": 2, "retain_batch_size": 2,
                         "unrelated_batch_size": 2, **engine_args, **json.loads(settings)})
    try:
        run_training(cfg, resume=resume == "1", log=lambda s: None)
    except TrainingCollapse as e:
        Path(out_dir, f"rank{rank_env}_collapse.txt").write_text(str(e))
        raise
    except KeyboardInterrupt:
        Path(out_dir, f"rank{rank_env}_killed.txt").write_text("killed")
        return
    t = kept["trainer"]
    rank = t.args.process_index
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
        "world": t.args.world_size, "controller": t.controller.state_dict(), "packing": t.packing_check,
        "mixed_precision": t.accelerator.mixed_precision, "engine": t.accelerator.distributed_type.value,
        "sharded": t.sharded, "param_types": sorted(captured["param_types"]),
        "steps": captured["steps"], "trainable_dtypes": captured["dtypes"],
        "frozen_dtypes": captured["frozen_dtypes"]}))


if __name__ == "__main__":
    main(*sys.argv[1:11])
