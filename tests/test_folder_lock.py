"""io.folder_lock: one process at a time writes into an output folder (train, eval --out, transfer, export,
compare); a lock file a killed process left locks nothing and counts as no one's file."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _tiny import run_cli

from biasunlearn.errors import ConfigError
from biasunlearn.io import LOCK_FILE, folder_entries, folder_lock

SRC = Path(__file__).resolve().parents[1] / "src"
HOLD = textwrap.dedent("""
    import sys
    from biasunlearn.io import folder_lock
    with folder_lock(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None):
        print("held", flush=True)
        sys.stdin.read()
""")
TRY = textwrap.dedent("""
    import sys
    from biasunlearn.errors import ConfigError
    from biasunlearn.io import folder_lock
    try:
        with folder_lock(sys.argv[1]):
            print("took it")
    except ConfigError as e:
        print(e)
""")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC)}


@contextlib.contextmanager
def held_elsewhere(folder, lock_file=None):
    """Another process holding `folder` (its lock file `lock_file`) while the block runs; yields that process."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), *([str(lock_file)] if lock_file else [])],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        if p.poll() is None:
            p.stdin.close()
            p.wait(timeout=60)


def _try_elsewhere(folder) -> str:
    return subprocess.run([sys.executable, "-c", TRY, str(folder)], capture_output=True, text=True, env=_env(),
                          timeout=60).stdout.strip()


def test_a_folder_another_process_holds_is_refused_with_its_name_and_pid(tmp_path):
    folder = tmp_path / "cc"
    with held_elsewhere(folder) as holder:
        assert (folder / LOCK_FILE).read_text() == f"{holder.pid}\n"
        with pytest.raises(ConfigError) as e:
            with folder_lock(folder):
                pass
        assert str(e.value) == (f"another biasunlearn process (pid {holder.pid}) is writing to {folder} (it holds "
                                f"{folder / LOCK_FILE}); wait for it to finish, or name another folder")
    # let go: the lock file is gone, and so is the folder it had to create (nothing else was written there)
    assert not folder.exists()
    with folder_lock(folder):
        assert folder_entries(folder) == [] and (folder / LOCK_FILE).is_file()
        (folder / "results.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["results.json"]  # a folder with files in it stays


def test_the_lock_is_reentrant_in_a_process_and_held_until_the_outer_block_ends(tmp_path):
    folder = tmp_path / "run"
    with folder_lock(folder):
        with folder_lock(folder):  # train holds its run folder, and train_adapter takes it again inside
            pass
        assert "is writing to" in _try_elsewhere(folder)  # the inner block's end let nothing go
    assert _try_elsewhere(folder) == "took it"


def test_a_lock_file_a_killed_process_left_locks_nothing_and_is_no_ones_file(tmp_path):
    from biasunlearn.deploy import _prepare_out
    from biasunlearn.train_cli import holds_run

    folder = tmp_path / "cc"
    with held_elsewhere(folder) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert [p.name for p in folder.iterdir()] == [LOCK_FILE]  # the kill left it
    assert folder_entries(folder) == [] and not holds_run(folder)
    _prepare_out(folder, overwrite=False)  # export: an empty folder still, not "not empty"
    with folder_lock(folder):  # the kernel dropped the killed process's lock
        pass
    (folder / "keep.txt").write_text("mine")
    assert folder_entries(folder) == [folder / "keep.txt"]
    with pytest.raises(ConfigError, match="not empty"):
        _prepare_out(folder, overwrite=False)


def test_only_the_main_process_of_a_distributed_run_takes_the_run_folder(tmp_path, monkeypatch):
    from biasunlearn.unlearn.config import UnlearnConfig, make_config
    from biasunlearn.unlearn.pipeline import run_lock

    cfg = make_config(output_dir=str(tmp_path / "run"), use_cpu=True)
    with held_elsewhere(tmp_path / "run"):
        with pytest.raises(ConfigError, match="is writing to"):
            with run_lock(cfg):
                pass
        # the other processes of an accelerate launch write into the folder as part of the main process's run
        monkeypatch.setattr(UnlearnConfig, "process_index", property(lambda self: 1))
        with run_lock(cfg):
            pass


def test_every_writing_command_refuses_a_folder_another_process_holds(tmp_path, tiny_llama_path, fake_data):
    sys.path.insert(0, str(Path(__file__).parent))
    import _tiny

    adapter = _tiny.make_adapter(tiny_llama_path, tmp_path / "run" / "adapter")
    cc = tmp_path / "cc"
    cc.mkdir()
    earlier = {"method": "biasunlearn", "config": {"seed": 1}}
    (cc / "config.json").write_text(json.dumps(earlier))
    model = ["--model", str(tiny_llama_path), "--data-dir", str(fake_data), "--device", "cpu"]
    with held_elsewhere(cc) as holder:
        refused = (f"biasunlearn: error: another biasunlearn process (pid {holder.pid}) is writing to {cc} (it "
                   f"holds {cc / LOCK_FILE}); wait for it to finish, or name another folder")
        train = ["train", "--model", str(tiny_llama_path), "--data_dir", str(fake_data), "--use_cpu", "true",
                 "--out", str(cc)]
        for argv in (train + ["--seed", "2", "--overwrite"],  # refused before --overwrite clears the run there
                     train + ["--resume"],
                     ["eval", *model, "--benchmarks", "crows_pairs", "--out", str(cc)],
                     ["compare", "--model", str(tiny_llama_path), "--data-dir", str(fake_data), "--methods", "base",
                      "--benchmarks", "crows_pairs", "--out", str(cc)],
                     ["compare", "--out", str(cc), "--report-only"]):
            rc, _, err = run_cli(argv)
            assert (rc, err.strip().splitlines()[-1]) == (2, refused), argv[0]
        assert sorted(p.name for p in cc.iterdir()) == [LOCK_FILE, "config.json"]  # nothing cleared or written
        assert json.loads((cc / "config.json").read_text()) == earlier
        rc, _, err = run_cli(["compare", "--model", str(tiny_llama_path), "--data-dir", str(fake_data), "--methods",
                              "base", "--benchmarks", "crows_pairs", "--seeds", "1,2", "--out", str(cc)])
        assert rc == 2 and err.strip().endswith(refused.removeprefix("biasunlearn: error: "))
    # transfer: refused a run's folder before its lock (deploy.check_transfer_out), so here a folder of its own
    tr = tmp_path / "tr"
    with held_elsewhere(tr) as holder:
        rc, _, err = run_cli(["transfer", *model, "--adapter", str(adapter), "--benchmarks", "crows_pairs", "--out",
                              str(tr)])
        refused = (f"biasunlearn: error: another biasunlearn process (pid {holder.pid}) is writing to {tr} (it "
                   f"holds {tr / LOCK_FILE}); wait for it to finish, or name another folder")
        assert (rc, err.strip().splitlines()[-1]) == (2, refused)
        assert [p.name for p in tr.iterdir()] == [LOCK_FILE]
    # export: its folder is replaced whole, so its lock lies beside it
    dist = tmp_path / "dist"
    dist.mkdir()
    staged = dist / ".e1.abcd1234"  # what a killed export leaves: kept while another export may be writing it
    staged.mkdir()
    lock = dist / ".e1.biasunlearn.lock"
    with held_elsewhere(dist / "e1", lock) as holder:
        rc, _, err = run_cli(["export", *model[:2], "--adapter", str(adapter), "--device", "cpu", "--out",
                              str(dist / "e1")])
        assert rc == 2 and err.strip() == (f"biasunlearn: error: another biasunlearn process (pid {holder.pid}) is "
                                           f"writing to {dist / 'e1'} (it holds {lock}); wait for it to finish, or "
                                           "name another folder")
    assert staged.is_dir() and not (dist / "e1").exists()


def test_a_file_system_without_locks_runs_unguarded_and_says_so(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    folder = tmp_path / "nfs"
    with folder_lock(folder):
        (folder / "x.txt").write_text("written")
    assert (folder / "x.txt").read_text() == "written"
    err = capsys.readouterr().err
    assert err.strip() == (f"[biasunlearn] warning: {folder}: its file system takes no lock (No locks available), "
                           "so another biasunlearn process writing there at the same time is not kept out")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_cannot_be_made_is_an_error_naming_it_not_an_endless_retry(tmp_path):
    # mkdir in /proc fails with "No such file or directory" every time, as a folder removed under the lock would
    # once: the retry for that must end (in a process of its own, so a hang fails the test instead of the suite)
    folder = "/proc/biasunlearn-no-such-folder/run"
    assert _try_elsewhere(folder) == (f"{folder}: cannot create the lock file {folder}/{LOCK_FILE} (No such file or "
                                      "directory: the folder cannot be made there); name another folder")
    rc, _, err = run_cli(["eval", "--model", "x", "--out", "/proc/biasunlearn-no-such-folder", "--limit", "2"])
    assert rc == 2 and "/proc/biasunlearn-no-such-folder: cannot create the lock file" in err


def test_a_folder_removed_under_the_lock_once_is_made_again(tmp_path, monkeypatch):
    from biasunlearn import io as bio

    folder = tmp_path / "cc"
    real_open, calls = os.open, []

    def vanishing_open(path, *a, **k):  # the holder before removes the empty folder as it lets go
        calls.append(path)
        if len(calls) == 1:
            os.rmdir(folder)
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(bio.os, "open", vanishing_open)
    with folder_lock(folder):
        assert (folder / LOCK_FILE).is_file()
    assert len(calls) == 2 and not folder.exists()


def test_a_folder_that_keeps_vanishing_ends_in_an_error_after_a_few_tries(tmp_path, monkeypatch):
    from biasunlearn import io as bio

    calls = []

    def gone(path, *a, **k):
        calls.append(path)
        if len(calls) > 10 * bio._LOCK_TRIES:  # an endless retry: fail here rather than hang the suite
            raise RuntimeError("folder_lock retried without end")
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr(bio.os, "open", gone)
    folder = tmp_path / "a" / "b"
    with pytest.raises(ConfigError, match=r"b: cannot create the lock file .*No such file or directory: the folder "
                                          "cannot be made there"):
        with folder_lock(folder):
            pass
    assert len(calls) == bio._LOCK_TRIES
