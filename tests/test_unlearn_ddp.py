"""Two processes on the CPU (gloo): both must take the same swap decisions."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_unlearn_train import _pool


def test_two_processes_agree_on_swaps(tmp_path, tiny_llama_path, fake_data):
    data = tmp_path / "data"
    shutil.copytree(fake_data, data)
    (data / "pool.json").write_text(json.dumps(_pool()))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(Path(__file__).parent / "_ddp_worker.py"), str(tiny_llama_path), str(data), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["world"] == 2 and r1["world"] == 2
    assert len(r0["controller"]["history"]) == 3  # steps 0, 2, 4
    assert r0["controller"] == r1["controller"]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
