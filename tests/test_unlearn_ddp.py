"""Two processes on the CPU (gloo): both must take the same swap decisions."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_unlearn_train import _pool

WORKER = Path(__file__).parent / "_ddp_worker.py"


def launch_workers(port, model, data, out, *args, launcher=(), ok=True, timeout=300):
    """Two processes of tests/_ddp_worker.py (its arguments: model, data, out, *args), started by torchrun or, with
    launcher (its flags), by `accelerate launch`. With ok, a failure fails the test with the end of its log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    start = (["-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--main_process_port", str(port), "--dynamo_backend", "no", *launcher] if launcher else
             ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)])
    cmd = [sys.executable, *start, str(WORKER), str(model), str(data), str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("bf16,port", [(False, 29531), (True, 29532)])
def test_two_processes_agree_on_swaps(bf16, port, tmp_path, tiny_llama_path, fake_data):
    """Both ranks take the same swap decisions; with bf16 mixed precision too, where the first-step packing check
    reaches the model inside DDP and accelerate's autocast wrapper."""
    data = tmp_path / "data"
    shutil.copytree(fake_data, data)
    (data / "pool.json").write_text(json.dumps(_pool()))
    out = tmp_path / "run"
    launch_workers(port, tiny_llama_path, data, out, "1" if bf16 else "0")
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["world"] == 2 and r1["world"] == 2
    assert len(r0["controller"]["history"]) == 3  # steps 0, 2, 4
    assert r0["controller"] == r1["controller"]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    for r in (r0, r1):
        assert r["mixed_precision"] == ("bf16" if bf16 else "no")
        assert r["packing"]["packed"] is True and r["packing"]["max_abs_diff_nats"] < 1e-4


def test_a_nan_loss_on_one_process_stops_both(tmp_path, tiny_llama_path, fake_data):
    """A non-finite loss on one process alone stops every process at the same step with a clear message, instead
    of leaving the others waiting in the gradient all-reduce."""
    data = tmp_path / "data"
    shutil.copytree(fake_data, data)
    (data / "pool.json").write_text(json.dumps(_pool()))
    out = tmp_path / "run"
    proc = launch_workers(29533, tiny_llama_path, data, out, "0", "1", ok=False, timeout=240)
    assert proc.returncode != 0
    assert (out / "rank0_collapse.txt").exists() and (out / "rank1_collapse.txt").exists(), proc.stderr[-3000:]
    r0 = (out / "rank0_collapse.txt").read_text()
    r1 = (out / "rank1_collapse.txt").read_text()
    assert r1.startswith("loss is nan at step 1 ") and "another process" not in r1
    assert "at step 1 " in r0 and "not finite on another process" in r0
