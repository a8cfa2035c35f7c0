"""FSDP2 and DeepSpeed ZeRO on two CPU processes (gloo). accelerate runs both only on accelerators, so the worker
switches its state to them for CPU processes (tests/_ddp_worker.py: engine_settings);
the rest is the code a GPU user's run goes through: the reference passes and the dev check through the engine's
wrapper, uncached reference log-probabilities, adapters gathered from the shards, the engines' checkpoints and
their resume. DeepSpeed is optional (scripts/test.sh installs it): without it its tests are skipped."""
import gzip
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_unlearn_ddp import launch_workers as _launch
from test_unlearn_train import train_data  # noqa: F401  (a fixture)


def _lora(folder):
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def _decisions(controller):
    """What the swap controller decided and saw, without the margins' float rounding."""
    return (controller["directions"], controller["rounds"],
            [(e["step"], e["bias_type"], e["direction"], e["ss"]) for e in controller["events"]],
            [(h["step"], h["ss"], h["lms"]) for h in controller["history"]])


def test_fsdp_trains_what_ddp_trains(tmp_path, tiny_llama_path, train_data):
    """The same run under FSDP and under DDP: every process of the FSDP run holds its trainable weights sharded
    (DTensor), both ranks take the same swap decisions, and the gathered adapter equals DDP's (the two engines
    average the same gradients)."""
    _launch(29541, tiny_llama_path, train_data, tmp_path / "ddp", "0", "", "ddp")
    _launch(29542, tiny_llama_path, train_data, tmp_path / "fsdp", "0", "", "fsdp")
    ddp = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    r0, r1 = (json.loads((tmp_path / "fsdp" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert ddp["engine"] == "MULTI_CPU" and ddp["sharded"] is False and ddp["param_types"] == ["Parameter"]
    for r in (r0, r1):
        assert r["engine"] == "FSDP" and r["sharded"] is True and r["param_types"] == ["DTensor"]
        assert r["world"] == 2 and r["packing"]["packed"] is True
    assert len(r0["controller"]["history"]) == 3  # steps 0, 2, 4
    assert r0["controller"] == r1["controller"]
    # the dev check runs through FSDP's wrapper: the same SS, LMS and swaps as DDP's, margins to float rounding
    assert _decisions(r0["controller"]) == _decisions(ddp["controller"])
    for a, b in zip(r0["controller"]["history"], ddp["controller"]["history"]):
        assert a["margin"].keys() == b["margin"].keys()
        assert all(abs(a["margin"][t] - b["margin"][t]) < 1e-4 for t in a["margin"])
    for folder in ("final_adapter", "adapter"):  # the last one, and the one the dev checks chose
        w_ddp, w_fsdp = _lora(tmp_path / "ddp" / folder), _lora(tmp_path / "fsdp" / folder)
        assert w_ddp.keys() == w_fsdp.keys() and len(w_fsdp) > 0
        for k in w_ddp:
            torch.testing.assert_close(w_fsdp[k], w_ddp[k], rtol=1e-5, atol=1e-6)
    chosen = json.loads((tmp_path / "fsdp" / "adapter" / "dev_check.json").read_text())
    w_fsdp, w_chosen = _lora(tmp_path / "fsdp" / "final_adapter"), _lora(tmp_path / "fsdp" / "adapter")
    assert chosen["step"] == 2 and any(not torch.equal(w_fsdp[k], w_chosen[k]) for k in w_fsdp)  # 3, 4 trained


def _accelerate_fsdp2_loads_on_cuda() -> bool:
    """Older accelerate (1.6) moves each weight to CUDA when FSDP2 loads the model from rank 0's copy (accelerate
    launch's default, cpu_ram_efficient_loading): that cannot run on CPU processes."""
    import inspect

    from accelerate.utils import fsdp_utils

    return ".cuda()" in inspect.getsource(fsdp_utils.fsdp2_load_full_state_dict)


@pytest.mark.skipif(_accelerate_fsdp2_loads_on_cuda(), reason="this accelerate loads FSDP2 weights onto CUDA only")
def test_fsdp_from_accelerate_launch_in_bf16_resumes_exactly(tmp_path, tiny_llama_path, train_data):
    """FSDP asked for the way the README shows, `accelerate launch --use_fsdp`, as a GPU run goes by default: bf16
    mixed precision (FSDP's own policy: the weights gathered in bf16) and the frozen weights loaded in bf16. Both
    ranks agree; the LoRA weights train and are saved in float32. Its checkpoints are sharded (accelerate's default,
    SHARDED_STATE_DICT). Killed after step 3 and resumed from checkpoint-2, the run ends where the uninterrupted
    one does."""
    flags = ("--use_fsdp", "--fsdp_version", "2", "--mixed_precision", "bf16")
    _launch(29545, tiny_llama_path, train_data, tmp_path / "run", "1", "", "fsdp-env", "", "0", "bfloat16",
            launcher=flags)
    r0, r1 = (json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["mixed_precision"] == "bf16" and r0["engine"] == "FSDP" and r0["param_types"] == ["DTensor"]
    assert r0["trainable_dtypes"] == ["torch.float32"] and r0["frozen_dtypes"] == ["torch.bfloat16"]
    assert r0["controller"] == r1["controller"] and len(r0["controller"]["history"]) == 3
    assert (tmp_path / "run" / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    last = _lora(tmp_path / "run" / "final_adapter")
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in last.values())
    assert any(k.endswith("lora_B.weight") and last[k].abs().max() > 0 for k in last)  # LoRA's B starts at zero

    _launch(29546, tiny_llama_path, train_data, tmp_path / "killed", "1", "", "fsdp-env", "3", "0", "bfloat16",
            launcher=flags)
    assert (tmp_path / "killed" / "rank0_killed.txt").exists() and (tmp_path / "killed" / "rank1_killed.txt").exists()
    assert not (tmp_path / "killed" / "adapter").exists()
    _launch(29547, tiny_llama_path, train_data, tmp_path / "killed", "1", "", "fsdp-env", "", "1", "bfloat16",
            launcher=flags)
    resumed = json.loads((tmp_path / "killed" / "rank0.json").read_text())
    assert r0["steps"] == [1, 2, 3, 4] and resumed["steps"] == [3, 4]  # it went on from checkpoint-2
    assert _decisions(resumed["controller"]) == _decisions(r0["controller"])
    w_res = _lora(tmp_path / "killed" / "final_adapter")
    for k in last:
        torch.testing.assert_close(w_res[k], last[k], rtol=1e-5, atol=1e-6)


def test_deepspeed_zero3_trains_what_ddp_trains_and_resumes_exactly(tmp_path, tiny_llama_path, train_data):
    """The same run under DeepSpeed ZeRO-3 (weights partitioned: gathered in each forward and at each save) and
    ZeRO-2 (weights whole, as under DDP) ends with DDP's adapter, its chosen one included, and the same swaps.
    Killed after step 3, the ZeRO-3 run resumes from its DeepSpeed checkpoint and ends where the uninterrupted one
    does."""
    pytest.importorskip("deepspeed")
    _launch(29551, tiny_llama_path, train_data, tmp_path / "ddp", "0", "", "ddp")
    ddp = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    for stage, port in (("zero3", 29552), ("zero2", 29553)):
        _launch(port, tiny_llama_path, train_data, tmp_path / stage, "0", "", stage)
        r0, r1 = (json.loads((tmp_path / stage / f"rank{r}.json").read_text()) for r in (0, 1))
        assert r0["engine"] == r1["engine"] == "DEEPSPEED" and r0["world"] == 2
        assert r0["sharded"] is (stage == "zero3")
        assert r0["param_types"] == (["ZeRO-partitioned Parameter"] if stage == "zero3" else ["Parameter"])
        assert r0["controller"] == r1["controller"]
        assert _decisions(r0["controller"]) == _decisions(ddp["controller"])
        for folder in ("final_adapter", "adapter"):
            w_ddp, w_ds = _lora(tmp_path / "ddp" / folder), _lora(tmp_path / stage / folder)
            assert w_ddp.keys() == w_ds.keys() and len(w_ds) > 0
            for k in w_ddp:
                torch.testing.assert_close(w_ds[k], w_ddp[k], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "zero3" / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own checkpoint

    _launch(29554, tiny_llama_path, train_data, tmp_path / "killed", "0", "", "zero3", "3")
    assert not (tmp_path / "killed" / "adapter").exists()
    _launch(29555, tiny_llama_path, train_data, tmp_path / "killed", "0", "", "zero3", "", "1")
    resumed = json.loads((tmp_path / "killed" / "rank0.json").read_text())
    assert resumed["steps"] == [3, 4]
    assert _decisions(resumed["controller"]) == _decisions(ddp["controller"])
    w3, w_res = _lora(tmp_path / "zero3" / "final_adapter"), _lora(tmp_path / "killed" / "final_adapter")
    for k in w3:
        torch.testing.assert_close(w_res[k], w3[k], rtol=1e-5, atol=1e-6)


def test_zero3_without_gathering_at_saves_is_refused_at_the_start(tmp_path, tiny_llama_path, train_data):
    """ZeRO-3 without stage3_gather_16bit_weights_on_model_save could not write the adapter: the run is refused
    before its first step, naming the setting, with nothing trained."""
    pytest.importorskip("deepspeed")
    proc = _launch(29556, tiny_llama_path, train_data, tmp_path / "run", "0", "", "zero3-nogather", ok=False)
    assert proc.returncode != 0
    assert "stage3_gather_16bit_weights_on_model_save" in proc.stderr and "ConfigError" in proc.stderr
    assert not (tmp_path / "run" / "log.jsonl").exists() and not list((tmp_path / "run").glob("checkpoint-*"))


def test_zero3_check_reads_the_deepspeed_config():
    """The check on stand-ins: ZeRO-3 with gathering passes, without it (or with the key absent) raises; DDP,
    FSDP and ZeRO-2 (weights whole) are not concerned."""
    from types import SimpleNamespace

    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.trainer import check_zero3_gathers

    def trainer(deepspeed, sharded, zero):
        plugin = SimpleNamespace(deepspeed_config={"zero_optimization": zero})
        return SimpleNamespace(is_deepspeed_enabled=deepspeed, sharded=sharded,
                               accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)))

    check_zero3_gathers(trainer(True, True, {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}))
    check_zero3_gathers(trainer(True, True, {"stage": 3, "stage3_gather_16bit_weights_on_model_save": "true"}))
    for zero in ({"stage": 3}, {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}):
        with pytest.raises(ConfigError, match="stage3_gather_16bit_weights_on_model_save"):
            check_zero3_gathers(trainer(True, True, zero))
    check_zero3_gathers(trainer(True, False, {"stage": 2}))  # ZeRO-2
    check_zero3_gathers(trainer(False, True, {}))  # FSDP
    check_zero3_gathers(trainer(False, False, {}))  # DDP


def test_the_train_command_samples_the_kl_text_and_writes_the_report_as_under_ddp(tmp_path, tiny_llama_path,
                                                                                 train_data):
    """The whole of `biasunlearn train` under FSDP and ZeRO-3, with the KL text sampled from the model (the shipped
    recipes' unrelated_source: generated) and the report's evaluation at the end. ZeRO-3 partitions the weights as
    the model is loaded: the sampling runs with them gathered, and the evaluation loads whole models on the main
    process. The texts and the evaluation equal those of the same run under DDP. FSDP is started by `accelerate
    launch --use_fsdp` (whose default loads the model on rank 0 only) where this accelerate can on CPU processes."""
    # read in float32: the after-read merges the adapter, and in bfloat16 the engines' adapters, which differ by
    # float rounding, can round a merged weight to neighbouring bfloat16 values (1.5e-3 nats apart in one score)
    settings = json.dumps({"unrelated_source": "generated", "generated_count": 6, "generated_tokens": 5,
                           "skip_final_eval": False, "eval_benchmarks": "stereoset", "eval_dtype": "float32"})
    by_launch = not _accelerate_fsdp2_loads_on_cuda()
    fsdp = ("fsdp-env", ("--use_fsdp", "--fsdp_version", "2", "--mixed_precision", "no")) if by_launch else \
        ("fsdp", ())
    engines = {"ddp": ("ddp", ()), "fsdp": fsdp}
    if importlib.util.find_spec("deepspeed") is not None:
        engines["zero3"] = ("zero3", ())
    for port, (name, (engine, launcher)) in enumerate(engines.items(), start=29557):
        _launch(port, tiny_llama_path, train_data, tmp_path / name, "0", "", engine, "", "0", "", settings,
                launcher=launcher)
    from biasunlearn.io import sha256_file

    texts = {e: (tmp_path / e / "generated_unrelated.jsonl").read_text().splitlines() for e in engines}
    res = {e: json.loads((tmp_path / e / "eval_after" / "results.json").read_text()) for e in engines}
    scores = {e: [json.loads(line) for line in gzip.open(tmp_path / e / "eval_after" / "stereoset_scores.jsonl.gz",
                                                           "rt")] for e in engines}
    assert len(texts["ddp"]) > 1 and len(scores["ddp"]) > 0
    for e in engines:
        assert texts[e] == texts["ddp"], e
        assert (tmp_path / e / "report.md").is_file()
        assert res[e]["model"]["adapter_sha256"] == sha256_file(tmp_path / e / "adapter" / "adapter_model.safetensors")
        assert res[e]["benchmarks"]["stereoset"]["metrics"] == res["ddp"]["benchmarks"]["stereoset"]["metrics"], e
        assert [a["id"] for a in scores[e]] == [b["id"] for b in scores["ddp"]]
        for a, b in zip(scores[e], scores["ddp"]):  # the adapters differ by float rounding (3e-6 here)
            assert all(abs(a[k] - b[k]) < 1e-3 for k in ("s_stereo", "s_anti", "s_unrel")), e
