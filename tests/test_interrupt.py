"""Ctrl-C is never lost: a SIGINT whose KeyboardInterrupt Python swallows (raised inside a weakref or
garbage-collection callback) still stops the next method, seed, benchmark or training step, and the command exits
130 with a message on a line of its own."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import weakref

import pytest

from _tiny import run_cli

from biasunlearn import interrupt


@pytest.fixture
def sigint():
    """Python's own SIGINT handler for the test (pytest started in the background by a shell ignores SIGINT, and
    main leaves an ignored SIGINT alone), the swallowed exceptions collected instead of printed, and no recorded
    Ctrl-C left behind for the next test."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    swallowed = []
    hook, sys.unraisablehook = sys.unraisablehook, lambda u: swallowed.append(u.exc_type)
    try:
        yield swallowed
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGINT, before)
        interrupt._seen.clear()


def ctrl_c_in_a_weakref_callback():
    """A real SIGINT delivered while a weakref callback runs: Python prints its KeyboardInterrupt as 'Exception
    ignored' and goes on (what torch's WeakKeyDictionary callbacks did to `compare --seeds`)."""
    class Obj:
        pass

    obj = Obj()
    ref = weakref.ref(obj, lambda r: os.kill(os.getpid(), signal.SIGINT))  # noqa: F841  (kept alive until del obj)
    del obj  # the callback runs here, and the handler inside it


def test_a_swallowed_ctrl_c_is_recorded_and_raised_again_by_check(sigint):
    interrupt.check()  # nothing recorded: no-op
    with interrupt.recording():
        ctrl_c_in_a_weakref_callback()  # no KeyboardInterrupt gets out of here...
        assert sigint == [KeyboardInterrupt]  # ...Python swallowed it
        assert interrupt.interrupted()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):  # a Ctrl-C outside any callback still raises where it lands
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler there before is back
    with interrupt.recording():  # each run starts with nothing recorded
        assert not interrupt.interrupted()


def test_an_ignored_sigint_is_left_ignored(sigint):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupt.recording():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_evaluate_model_stops_before_the_next_benchmark(sigint, fake_data, monkeypatch):
    from biasunlearn import evaluate

    ran = []
    monkeypatch.setattr(evaluate, "RUNNERS", {n: (lambda m, t, c, p, parsed, n=n: ran.append(n) or {"predictions": []})
                                              for n in evaluate.RUNNERS})
    cfg = evaluate.EvalConfig(benchmarks=("crows_pairs", "perplexity"), data_dir=str(fake_data), progress=False)
    assert set(evaluate.evaluate_model(None, None, cfg, log=None)["benchmarks"]) == {"crows_pairs", "perplexity"}
    interrupt.mark()
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_model(None, None, cfg, log=None)
    assert ran == ["crows_pairs", "perplexity"]  # the first call's; none after the Ctrl-C


def test_compare_stops_before_the_next_method(sigint, tmp_path, monkeypatch):
    from biasunlearn import compare

    ran = []

    def run(self, name):
        ran.append(name)
        ctrl_c_in_a_weakref_callback()  # lands in the middle of the first method, swallowed
        return {}

    monkeypatch.setattr(compare._Runner, "run", run)
    with interrupt.recording(), pytest.raises(KeyboardInterrupt):
        compare.run_compare("some-model", "base,self_debias", tmp_path / "cmp", log=lambda s: None)
    assert ran == ["base"] and sigint == [KeyboardInterrupt]


def test_compare_seeds_stops_before_the_next_seed(sigint, tmp_path, monkeypatch):
    from biasunlearn import compare, compare_seeds

    seeds = []

    def run_compare(model, names, sub, **kw):
        seeds.append(kw["config_overrides"]["seed"])
        ctrl_c_in_a_weakref_callback()
        return {"results": {}}

    monkeypatch.setattr(compare, "run_compare", run_compare)
    with interrupt.recording(), pytest.raises(KeyboardInterrupt):
        compare_seeds.run_compare_seeds("some-model", "base", tmp_path / "cmp", seeds="1,2", log=lambda s: None)
    assert seeds == [1]


def test_training_stops_after_the_step_of_a_ctrl_c():
    from biasunlearn.unlearn.trainer import InterruptCheck

    cb = InterruptCheck()
    cb.on_step_end(None, None, None)  # nothing recorded: training goes on
    interrupt.mark()
    try:
        with pytest.raises(KeyboardInterrupt):
            cb.on_step_end(None, None, None)
    finally:
        interrupt._seen.clear()


def test_main_exits_130_when_the_last_benchmark_swallowed_a_ctrl_c(sigint, tiny_gpt2_path, fake_data, tmp_path,
                                                                   monkeypatch):
    """The command ran to its end (the interrupt came during its last benchmark and was swallowed): its caller must
    still not take the run for a whole one."""
    from biasunlearn import evaluate

    real = evaluate.RUNNERS["crows_pairs"]

    def crows_pairs(*a, **kw):
        res = real(*a, **kw)
        ctrl_c_in_a_weakref_callback()
        return res

    monkeypatch.setitem(evaluate.RUNNERS, "crows_pairs", crows_pairs)
    rc, out, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data), "--device", "cpu",
                            "--benchmarks", "crows_pairs", "--limit", "2", "--out", str(tmp_path / "ev")])
    assert rc == 130 and sigint == [KeyboardInterrupt]
    assert "### CrowS-Pairs" in out  # finished: its tables were printed
    assert err.endswith("\n\nbiasunlearn: interrupted\n")  # on a line of its own, whatever the last line left
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupted_train_says_how_to_continue(sigint, tmp_path, tiny_llama_path, fake_data, monkeypatch):
    from biasunlearn.unlearn.trainer import BiasUnlearnTrainer
    from test_train_cli import _tiny_run_words

    step = BiasUnlearnTrainer.training_step

    def training_step(self, *a, **kw):
        loss = step(self, *a, **kw)
        ctrl_c_in_a_weakref_callback()  # in the first step, swallowed
        return loss

    monkeypatch.setattr(BiasUnlearnTrainer, "training_step", training_step)
    out = tmp_path / "run with space"
    rc, _, err = run_cli(_tiny_run_words(tmp_path, out, tiny_llama_path, fake_data) + ["--save_steps", "1"])
    assert rc == 130, err
    assert err.endswith(f"\n\nbiasunlearn: interrupted; `biasunlearn train --resume '{out}'` continues from its "
                        "last checkpoint\n")
    # stopped at the end of step 1 of 2, before its dev check and its checkpoint (as a Ctrl-C that got through would)
    assert [json.loads(x)["step"] for x in (out / "dev_log.jsonl").read_text().splitlines()] == [0]
    assert not (out / "train_summary.json").exists() and not list(out.glob("checkpoint-*"))


CHILD = textwrap.dedent("""
    import os, signal, sys, weakref
    from biasunlearn import cli, compare

    def run_compare(model, names, sub, **kw):
        print(f"[child] seed {kw['config_overrides']['seed']}", file=sys.stderr, flush=True)
        class Obj:
            pass
        obj = Obj()
        ref = weakref.ref(obj, lambda r: os.kill(os.getpid(), signal.SIGINT))
        del obj
        return {"results": {}}

    compare.run_compare = run_compare
    sys.exit(cli.main(["compare", "--model", "m", "--methods", "base", "--seeds", "1,2", "--out", sys.argv[1]]))
""")


def test_compare_seeds_process_exits_130_on_a_swallowed_ctrl_c(tmp_path):
    """The reviewer's case in a process of its own: the SIGINT lands in a weakref callback during seed 1."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "cmp")], capture_output=True, text=True,
                          timeout=120, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr
    assert "[child] seed 1" in proc.stderr and "[child] seed 2" not in proc.stderr
    assert "Exception ignored" in proc.stderr and "KeyboardInterrupt" in proc.stderr  # it was swallowed
    assert proc.stderr.endswith("\n\nbiasunlearn: interrupted\n")


def test_the_flag_does_not_outlive_the_command(sigint):
    """A Ctrl-C recorded while `main` ran ends that command, not the next API call in the same process (a
    notebook, a test): the flag is cleared when the recording block ends."""
    with interrupt.recording():
        interrupt.mark()
        assert interrupt.interrupted()
    assert not interrupt.interrupted()
    interrupt.check()  # no KeyboardInterrupt


def test_scoring_stops_at_the_next_batch_after_a_swallowed_ctrl_c(sigint, tiny_gpt2_path, monkeypatch):
    """Inside a benchmark: the scoring loop checks at each batch, so a Ctrl-C swallowed there stops the read after
    the batch it landed in, not at the end of the benchmark."""
    from transformers import AutoModelForCausalLM

    from biasunlearn import scoring

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_path)
    seqs = [[1, 2, 3, 4, 5]] * 6
    batches = []
    real = scoring._batch_full

    def one_batch(*a):
        batches.append(1)
        if len(batches) == 2 and mark:
            interrupt.mark()  # as the handler does when the KeyboardInterrupt itself is swallowed
        return real(*a)

    monkeypatch.setattr(scoring, "_batch_full", one_batch)
    mark = False
    sums, counts = scoring.score_sequences(model, seqs, [1] * 6, max_batch=2, direct=False)
    assert len(batches) == 3 and counts.tolist() == [4] * 6
    batches.clear()
    mark = True
    with interrupt.recording():
        with pytest.raises(KeyboardInterrupt):
            scoring.score_sequences(model, seqs, [1] * 6, max_batch=2, direct=False)
    assert len(batches) == 2  # stopped after the batch the Ctrl-C came in; the third never ran
