"""Two processes on the CPU (gloo): both must take the same swap decisions."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_unlearn_train import _pool

WORKER = Path(__file__).parent / "_ddp_worker.py"


def extensions_dir():
    """Where torch builds the ops DeepSpeed compiles at start-up (its shared-memory collectives on CPU processes): the
    folder the user names in TORCH_EXTENSIONS_DIR, else one inside this environment. torch's build lock is a bare
    file, so a build killed midway (a test run stopped in the middle) leaves it behind, and every later build in that
    folder waits on it for ever: in torch's default folder, shared by every environment of the user, one stopped run
    made the next run's DeepSpeed tests hang. A fresh environment builds afresh (about a minute, once). An
    environment the user cannot write to (a system Python) keeps torch's default folder."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if os.access(sys.prefix, os.W_OK):
        return Path(sys.prefix) / "torch_extensions"
    from torch.utils.cpp_extension import get_default_build_root
    return Path(get_default_build_root())


def worker_env() -> dict:
    """The environment of tests/_ddp_worker.py processes: one thread each, the tests folder importable, and
    extensions built in extensions_dir()."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent),
                TORCH_EXTENSIONS_DIR=str(extensions_dir()))


def run_group(cmd, env, timeout):
    """cmd run to its end like subprocess.run (output captured as text), in a process group of its own. A launcher
    (torchrun, `accelerate launch`) starts its workers as children: past the timeout, subprocess.run kills the
    launcher alone, and the workers live on (holding the port and the CPU). Here the whole group is killed first,
    then TimeoutExpired is raised as subprocess.run raises it."""
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch_workers(port, model, data, out, *args, launcher=(), ok=True, timeout=300):
    """Two processes of tests/_ddp_worker.py (its arguments: model, data, out, *args), started by torchrun or, with
    launcher (its flags), by `accelerate launch`. With ok, a failure fails the test with the end of its log."""
    env = worker_env()
    start = (["-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--main_process_port", str(port), "--dynamo_backend", "no", *launcher] if launcher else
             ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)])
    cmd = [sys.executable, *start, str(WORKER), str(model), str(data), str(out), *args]
    try:
        proc = run_group(cmd, env, timeout)
    except subprocess.TimeoutExpired:
        locks = sorted(str(f) for f in Path(env["TORCH_EXTENSIONS_DIR"]).rglob("lock"))
        if locks:
            pytest.fail(f"the processes ran past {timeout} s while torch's extension build lock {locks[0]} was held: "
                        "a build stopped midway leaves it behind; if no build is running, remove it")
        raise
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


def _adapter(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter" / "adapter_model.safetensors"))


def test_global_batch_two_processes_train_what_one_process_trains(tmp_path, tiny_llama_path, fake_data):
    """With global_batch the batch sizes are per optimizer step: two processes each draw half of the step's
    sentences, so (losses averaged per sentence, no dropout) they train the adapter one process trains with the
    whole batch. Per process (the default) the two train twice the sentences, and the adapter differs."""
    data = tmp_path / "data"
    shutil.copytree(fake_data, data)
    (data / "pool.json").write_text(json.dumps(_pool()))
    common = {"forget_batch_size": 4, "retain_batch_size": 4, "unrelated_batch_size": 4, "lora_dropout": 0.0,
              "retain_reduction": "sequence", "kl_reduction": "sequence"}
    one = subprocess.run([sys.executable, str(WORKER), str(tiny_llama_path), str(data), str(tmp_path / "one"), "0",
                          "", "ddp", "", "0", "", json.dumps({**common, "ddp_backend": None})], env=worker_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert json.loads((tmp_path / "one" / "rank0.json").read_text())["world"] == 1
    launch_workers(29534, tiny_llama_path, data, tmp_path / "two", "0", "", "ddp", "", "0", "",
                   json.dumps({**common, "global_batch": True}))
    launch_workers(29535, tiny_llama_path, data, tmp_path / "per_process", "0", "", "ddp", "", "0", "",
                   json.dumps(common))
    # the logged loss (averaged over the processes) and the gradient norm (before clipping) of every step: the
    # same step; per process, another loss
    logs = {n: [r for r in map(json.loads, (tmp_path / n / "log.jsonl").read_text().splitlines())
                if "loss" in r and "train_runtime" not in r] for n in ("one", "two", "per_process")}
    assert [r["step"] for r in logs["one"]] == [r["step"] for r in logs["two"]] == [1, 2, 3, 4]
    for a, b in zip(logs["one"], logs["two"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a.get("grad_norm") == pytest.approx(b.get("grad_norm"), rel=1e-4)
    assert logs["per_process"][1]["loss"] != pytest.approx(logs["one"][1]["loss"], rel=1e-3)
    # the adapters: the same up to float rounding, which Adam's first steps (updates of about the learning rate
    # for the tiniest gradients) magnify; per process, a different adapter
    ref, two, per = (_adapter(tmp_path / n) for n in ("one", "two", "per_process"))
    assert ref.keys() == two.keys()
    gap = max(float((ref[k] - two[k]).abs().max()) for k in ref)
    other = max(float((ref[k] - per[k]).abs().max()) for k in ref)
    assert gap < 0.02 * other, (gap, other)


def test_global_batch_refuses_sizes_that_do_not_share_out(tmp_path, tiny_llama_path):
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config

    cfg = make_config(output_dir=str(tmp_path / "r"), model=str(tiny_llama_path), global_batch=True,
                      forget_batch_size=4, retain_batch_size=6, unrelated_batch_size=8, gradient_accumulation_steps=4,
                      use_cpu=True)
    with pytest.raises(ConfigError, match=r"retain_batch_size=6.*divide by 4"):
        cfg.step_batch_sizes()
    cfg = make_config(output_dir=str(tmp_path / "r"), model=str(tiny_llama_path), global_batch=True,
                      forget_batch_size=4, retain_batch_size=8, unrelated_batch_size=12, gradient_accumulation_steps=4,
                      neutral_anchor_batch_size=4, use_cpu=True)
    assert cfg.step_batch_sizes() == (1, 2, 3, 1)
    cfg = make_config(output_dir=str(tmp_path / "r"), model=str(tiny_llama_path), forget_batch_size=3,
                      gradient_accumulation_steps=4, use_cpu=True)
    assert cfg.step_batch_sizes() == (3, 28, 28, 0)


def test_a_run_past_its_time_names_a_build_lock_left_behind(tmp_path, monkeypatch):
    """The launcher builds in TORCH_EXTENSIONS_DIR (the environment's own folder unless named). When the processes
    run past their time while a build lock lies there (torch's lock is a bare file, left by a build killed midway, on
    which every later build waits), the failure names the file; without one, the timeout itself is raised."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    seen = {}

    def timed_out(cmd, env, timeout):
        seen["dir"] = env["TORCH_EXTENSIONS_DIR"]
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(sys.modules[__name__], "run_group", timed_out)
    with pytest.raises(subprocess.TimeoutExpired):
        launch_workers(29599, tmp_path, tmp_path, tmp_path / "out", timeout=7)
    assert seen["dir"] == str(tmp_path / "ext")
    lock = tmp_path / "ext" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    message = f"past 7 s while torch's extension build lock {lock} was held"
    with pytest.raises(pytest.fail.Exception, match=re.escape(message)):
        launch_workers(29599, tmp_path, tmp_path, tmp_path / "out", timeout=7)
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert extensions_dir() == Path(sys.prefix) / "torch_extensions"
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # an environment the user cannot write to
    assert extensions_dir() != Path(sys.prefix) / "torch_extensions" and extensions_dir().name == "torch_extensions"


LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child not yet reaped by its (killed) parent is a zombie: gone for every purpose here
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:  # no /proc (not Linux), or the process went in between
        return os.path.exists(f"/proc/{pid}") or not os.path.exists("/proc")
    return state != "Z"


def test_a_launcher_past_its_time_takes_its_workers_with_it(tmp_path):
    """A launcher that runs past its time is killed with the workers it started (one sleeping child here, its output
    not tied to the launcher's, so that a child left alive cannot hold the test up), which would otherwise live on;
    a launcher that ends in time returns its output and exit status."""
    pid_file = tmp_path / "child.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_group([sys.executable, "-c", LAUNCHER, str(pid_file)], dict(os.environ), timeout=8)
    child = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.1)
    left = _alive(child)
    if left:  # the failure below leaves no sleeping process behind
        os.kill(child, signal.SIGKILL)
    assert not left
    done = run_group([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], dict(os.environ), timeout=60)
    assert (done.returncode, done.stdout) == (3, "out\n")
