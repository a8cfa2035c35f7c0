"""The BiasUnlearn trainer on a tiny model: it trains, writes everything, resumes exactly, and guards collapse."""
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from _tiny import load_bench

POOL_TERMS = {"gender": ["father", "brother", "uncle"], "race": ["Kenyan", "Korean", "Peruvian"]}
WORDS = [("lazy", "busy", "cloud"), ("strong", "gentle", "window"), ("rich", "poor", "bridge")]


def _pool():
    out, i = [], 0
    for bias, terms in POOL_TERMS.items():
        for t in terms:
            for s, a, u in WORDS:
                out.append({"id": f"p{i}", "target": t, "bias_type": bias, "context": f"The {t} was BLANK today.",
                            "data": {"stereotype": {"sentence": f"The {t} was {s} today.", "id": f"p{i}s"},
                                     "anti-stereotype": {"sentence": f"The {t} was {a} today.", "id": f"p{i}a"},
                                     "unrelated": {"sentence": f"The {t} was {u} today.", "id": f"p{i}u"}}})
                i += 1
    return out


@pytest.fixture()
def train_data(fake_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(fake_data, root)
    (root / "pool.json").write_text(json.dumps(_pool()))
    return root


def _cfg(tmp_path, model_path, data, **kw):
    from biasunlearn.unlearn.config import make_config

    base = dict(output_dir=str(tmp_path / "run"), model=str(model_path), data_dir=str(data), train_pool="pool.json",
                max_steps=4, eval_every=2, save_steps=2, forget_batch_size=2, retain_batch_size=4,
                unrelated_batch_size=3, learning_rate=5e-3, warmup_steps=0, logging_steps=1, dev_fraction=0.3,
                min_dev_per_type=1, skip_final_eval=True, use_cpu=True, bf16=False, disable_tqdm=True, seed=0,
                collapse_lms_drop=101.0)
    base.update(kw)
    return make_config(**base)


def _lora(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_train_writes_run_folder_and_changes_lora(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.unlearn.pipeline import train_adapter

    cfg = _cfg(tmp_path, tiny_llama_path, train_data)
    summary = train_adapter(cfg, log=lambda s: None)
    run = tmp_path / "run"
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "config.json", "splits.json",
                 "log.jsonl", "dev_log.jsonl", "losses.png", "dev_ss.png", "dev_margin.png", "train_summary.json"):
        assert (run / name).exists(), name
    assert summary["steps"] == 4
    w = _lora(run / "adapter")
    # LoRA B starts at zero: after training it must not be
    assert any(v.abs().sum() > 0 for k, v in w.items() if "lora_B" in k)
    splits = json.loads((run / "splits.json").read_text())
    assert set(splits["dev_ids"]).isdisjoint(splits["train_ids"])
    assert splits["overlap_with_test"]["shared_sentences"] == 0
    dev = [json.loads(x) for x in (run / "dev_log.jsonl").read_text().splitlines()]
    assert [d["step"] for d in dev] == [0, 2, 4]
    # the dev margin is logged per type and overall, and overall is the mean over all dev examples
    assert set(dev[0]["margin"]) == set(dev[0]["ss"]) | {"overall"}
    n = sum(splits["counts"]["dev"].values())
    per_type = sum(dev[0]["margin"][b] * splits["counts"]["dev"][b] for b in dev[0]["ss"]) / n
    assert dev[0]["margin"]["overall"] == pytest.approx(per_type, abs=1e-4)
    # each dev SS comes with its bootstrap standard error, per type and overall
    assert set(dev[0]["ss_se"]) == set(dev[0]["ss"]) | {"overall"} and all(v >= 0 for v in dev[0]["ss_se"].values())
    assert splits["dev_term_counts"].keys() == splits["counts"]["dev"].keys()
    logs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert all(k in logs[0] for k in ("loss_forget", "loss_retain", "loss_kl"))
    # at step 1 policy == reference, so NPO is 2/beta*log 2 and KL is 0
    assert logs[0]["loss_forget"] == pytest.approx(20 * 0.693147, rel=1e-4)
    assert logs[0]["loss_kl"] == pytest.approx(0.0, abs=1e-6)
    cfgdoc = json.loads((run / "config.json").read_text())
    assert cfgdoc["config"]["alpha_forget"] == 0.4 and cfgdoc["config"]["npo_beta"] == 0.1
    # the machine is recorded with the run: train's bf16 default follows it, so one config can differ by machine
    from biasunlearn.models import machine_info

    assert cfgdoc["machine"] == machine_info() and cfgdoc["machine"]["cpu"]


def test_retain_floor_starts_at_zero_and_never_goes_negative(tmp_path, tiny_llama_path, train_data):
    """With retain_floor the retain term is measured against the adapter-off model: at step 1 the adapter is the
    identity (LoRA B = 0), so every retain sentence sits exactly at its floor and the term is 0; without the floor it
    is the plain CE, well above 0."""
    from biasunlearn.unlearn.pipeline import train_adapter

    losses = {}
    for floor, margin in ((True, 0.0), (False, 0.0), (True, 1.5)):
        out = tmp_path / f"floor_{floor}_{margin}"
        cfg = _cfg(tmp_path, tiny_llama_path, train_data, output_dir=str(out), retain_floor=floor,
                   retain_floor_margin=margin, retain_reduction="sequence", adversarial_share=0.0,
                   swap_mode="none", lms_guard=100.0)
        train_adapter(cfg, log=lambda s: None)
        logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if "loss_retain" in x]
        losses[floor, margin] = [r["loss_retain"] for r in logs]
        assert json.loads((out / "config.json").read_text())["config"]["retain_floor"] is floor
    assert losses[True, 0.0][0] == pytest.approx(0.0, abs=1e-5)
    # with a margin every sentence starts that many nats below its target (policy = original at step 1)
    assert losses[True, 1.5][0] == pytest.approx(1.5, abs=1e-4)
    assert losses[False, 0.0][0] > 1.0
    assert all(v >= 0.0 for v in losses[True, 0.0])
    assert len(losses[True, 0.0]) == 4


def test_retain_floor_margin_needs_the_floor_and_is_not_negative(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="retain_floor_margin=1.0 needs retain_floor=true"):
        _cfg(tmp_path, tiny_llama_path, train_data, retain_floor_margin=1.0)
    with pytest.raises(ConfigError, match="retain_floor_margin=-0.5: must be 0 or more"):
        _cfg(tmp_path, tiny_llama_path, train_data, retain_floor=True, retain_floor_margin=-0.5)


@pytest.mark.parametrize("ckpt_kwargs", [None, {"use_reentrant": True}], ids=["default", "reentrant"])
def test_gradient_checkpointing_still_trains_lora(tmp_path, tiny_gpt2_path, train_data, monkeypatch, ckpt_kwargs):
    """Checkpointing is really on (torch's checkpoint runs the blocks), and LoRA still trains. The reentrant variant
    only passes gradients through a block whose input requires grad: with frozen embeddings that is the input-grad
    hook prepare_lora adds, without which the LoRA weights would not move."""
    import torch.utils.checkpoint
    import transformers.modeling_utils

    from biasunlearn.unlearn.pipeline import train_adapter

    calls = []
    real = torch.utils.checkpoint.checkpoint

    def spy(*a, **k):
        calls.append(k.get("use_reentrant"))
        return real(*a, **k)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    if getattr(transformers.modeling_utils, "checkpoint", None) is real:  # transformers binds the name at import
        monkeypatch.setattr(transformers.modeling_utils, "checkpoint", spy)
    kw = {} if ckpt_kwargs is None else {"gradient_checkpointing_kwargs": ckpt_kwargs}
    cfg = _cfg(tmp_path, tiny_gpt2_path, train_data, gradient_checkpointing=True, max_steps=2, **kw)
    assert cfg.gradient_checkpointing is True and cfg.gradient_checkpointing_kwargs == ckpt_kwargs
    train_adapter(cfg, log=lambda s: None)
    assert calls, "torch.utils.checkpoint.checkpoint was never called: gradient checkpointing was off"
    if ckpt_kwargs is not None:
        assert set(calls) == {True}, calls
    w = _lora(tmp_path / "run" / "adapter")
    assert any(v.abs().sum() > 0 for k, v in w.items() if "lora_B" in k)
    if ckpt_kwargs is None:
        return
    # recent transformers' Trainer adds an input-grad hook of its own when it switches checkpointing on, so check the
    # one prepare_lora adds alone: reentrant checkpointing switched on without transformers' hook, one step
    import functools

    from biasunlearn.models import load_model
    from biasunlearn.unlearn.pipeline import prepare_lora

    model, tok, _ = load_model(str(tiny_gpt2_path), device="cpu")
    model = prepare_lora(model, cfg)
    model.get_base_model()._set_gradient_checkpointing(
        enable=True, gradient_checkpointing_func=functools.partial(spy, use_reentrant=True))
    model.train()
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.requires_grad for p in lora_b.values())
    before = {n: p.detach().clone() for n, p in lora_b.items()}
    ids = tok(["The mother was very caring today."], return_tensors="pt")
    n_calls = len(calls)
    loss = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], labels=ids["input_ids"],
                 use_cache=False).loss
    assert len(calls) > n_calls  # the blocks ran through the (reentrant) checkpoint
    assert loss.requires_grad  # without the hook no block input requires grad and nothing reaches LoRA
    loss.backward()
    torch.optim.SGD(lora_b.values(), lr=1e-2).step()
    assert all(not torch.equal(p.detach(), before[n]) for n, p in lora_b.items())


def test_npo_alone_lowers_forget_logprob(tmp_path, tiny_llama_path, train_data):
    """Sign check on a real model: with only the forget loss, the forget sentences' log-probs go down."""
    from biasunlearn.models import load_model
    from biasunlearn.scoring import score_texts
    from biasunlearn.unlearn.pipeline import train_adapter

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, alpha_retain=0.0, alpha_kl=0.0, alpha_forget=1.0,
               adversarial_share=0.0, swap_mode="none", max_steps=6, lms_guard=100.0)
    train_adapter(cfg, log=lambda s: None)
    pool = _pool()
    stereo = [p["data"]["stereotype"]["sentence"] for p in pool]
    base, tok, _ = load_model(str(tiny_llama_path), device="cpu")
    before = sum(s.sum for s in score_texts(base, tok, stereo))
    # the last adapter, not the dev-selected one: compare the final state
    tuned, tok, _ = load_model(str(tiny_llama_path), adapter=str(tmp_path / "run" / "checkpoint-6"), device="cpu")
    after = sum(s.sum for s in score_texts(tuned, tok, stereo))
    assert after < before - 1.0


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_llama_path, train_data):
    from transformers import TrainerCallback

    from biasunlearn.unlearn import pipeline

    full = _cfg(tmp_path / "a", tiny_llama_path, train_data, max_steps=6, save_steps=2)
    summary_a = pipeline.train_adapter(full, log=lambda s: None)

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed")

    orig = pipeline.BiasUnlearnTrainer.__init__

    def patched(self, *a, **kw):
        orig(self, *a, **kw)
        self.add_callback(Kill())

    killed = _cfg(tmp_path / "b", tiny_llama_path, train_data, max_steps=6, save_steps=2)
    pipeline.BiasUnlearnTrainer.__init__ = patched
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.train_adapter(killed, log=lambda s: None)
    finally:
        pipeline.BiasUnlearnTrainer.__init__ = orig
    assert (tmp_path / "b" / "run" / "checkpoint-2").exists()
    assert not (tmp_path / "b" / "run" / "adapter").exists()
    # the packing layout is the one checked on the run's first step, kept in the checkpoint, not decided again on
    # the resumed step's batch: a marker written into the checkpoint's record comes back in the summary
    state = tmp_path / "b" / "run" / "checkpoint-2" / "biasunlearn_state.json"
    st = json.loads(state.read_text())
    assert st["packing"] == summary_a["packing"] and summary_a["packing"]["packed"] is True
    marker = {**st["packing"], "max_abs_diff_nats": 0.00123}
    state.write_text(json.dumps({**st, "packing": marker}))
    summary_b = pipeline.train_adapter(killed, resume=True, log=lambda s: None)
    assert summary_b["packing"] == marker
    wa = _lora(tmp_path / "a" / "run" / "checkpoint-6")
    wb = _lora(tmp_path / "b" / "run" / "checkpoint-6")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    sa = json.loads((tmp_path / "a" / "run" / "checkpoint-6" / "biasunlearn_state.json").read_text())
    sb = json.loads((tmp_path / "b" / "run" / "checkpoint-6" / "biasunlearn_state.json").read_text())
    assert sa["controller"]["directions"] == sb["controller"]["directions"]
    assert [h["ss"] for h in sa["controller"]["history"]] == [h["ss"] for h in sb["controller"]["history"]]
    # the LMS guard's baseline is the step-0 check, and the best check so far survives the kill
    assert sb["start_lms"] == sa["start_lms"] == sa["controller"]["history"][0]["lms"]
    assert sb["best"] == sa["best"] and sb["controller"]["rounds"] == sa["controller"]["rounds"]
    ja = json.loads((tmp_path / "a" / "run" / "best_adapter" / "dev_check.json").read_text())
    jb = json.loads((tmp_path / "b" / "run" / "best_adapter" / "dev_check.json").read_text())
    assert ja["step"] == jb["step"] == sa["best"][1]


def test_a_resume_logs_each_step_once_and_a_cut_short_line_or_a_failed_plot_loses_no_summary(
        tmp_path, tiny_llama_path, train_data, monkeypatch):
    from biasunlearn.deploy import run_files
    from biasunlearn.unlearn import pipeline, trainer

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, max_steps=6, save_steps=2)
    run = tmp_path / "run"
    real = trainer.DevCheckCallback.on_step_end

    def killed_after_the_check_of_step_4(self, args, state, control, **kw):
        out = real(self, args, state, control, **kw)
        if state.global_step == 4:  # its row is in dev_log.jsonl; checkpoint-4 is saved after this callback
            raise KeyboardInterrupt("killed")
        return out

    monkeypatch.setattr(trainer.DevCheckCallback, "on_step_end", killed_after_the_check_of_step_4)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_adapter(cfg, log=lambda s: None)
    monkeypatch.setattr(trainer.DevCheckCallback, "on_step_end", real)
    def read(path):  # every line whole JSON
        return [json.loads(line) for line in path.read_text().splitlines()]

    dev_before, log_before = read(run / "dev_log.jsonl"), read(run / "log.jsonl")
    assert [r["step"] for r in dev_before] == [0, 2, 4] and [r["step"] for r in log_before] == [1, 2, 3]
    assert (run / "checkpoint-2").exists() and not (run / "checkpoint-4").exists()
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 611, "grad_n')  # a line cut short by a kill

    def no_plot(*a, **kw):
        raise ValueError("no display")

    monkeypatch.setattr(pipeline, "plot_dev_margin", no_plot)
    said = []
    summary = pipeline.train_adapter(cfg, resume=True, log=said.append)
    # each step once (steps 3 and 4 were logged again after the resume from checkpoint-2), the line cut short gone
    dev, log = read(run / "dev_log.jsonl"), read(run / "log.jsonl")
    assert [r["step"] for r in dev] == [0, 2, 4, 6]
    assert [r["step"] for r in log if "loss_forget" in r] == [1, 2, 3, 4, 5, 6]
    assert "611" not in (run / "log.jsonl").read_text()
    # the resume continues exactly: the rows run again equal those of before the kill
    assert dev[2]["ss"] == pytest.approx(dev_before[2]["ss"]) and dev[2]["lms"] == pytest.approx(dev_before[2]["lms"])
    assert log[2]["loss_forget"] == pytest.approx(log_before[2]["loss_forget"], rel=1e-5)
    assert f"[resume] {run / 'dev_log.jsonl'}: 1 row after step 2 dropped (those steps run again); 2 kept" in said
    cut = [m for m in said if m.startswith(f"[resume] {run / 'log.jsonl'}: 1 row after step 2 dropped")]
    assert len(cut) == 1 and "and 1 unreadable line" in cut[0] and "line 4: not JSON" in cut[0]
    # a plot that fails is a warning: the summary is written, the other plots drawn
    assert summary["steps"] == 6 and json.loads((run / "train_summary.json").read_text())["steps"] == 6
    assert any(m.startswith(f"[train] warning: {run / 'dev_margin.png'} not drawn") and "no display" in m
               for m in said)
    assert (run / "losses.png").exists() and (run / "dev_ss.png").exists() and not (run / "dev_margin.png").exists()
    # the adapter's own record agrees with the config.json of the start that wrote it: the card reads config.json
    found = run_files(run / "adapter")
    assert found["config_path"] == str(run / "config.json") and "config_note" not in found


def test_nan_loss_stops_with_clear_message(tmp_path, tiny_llama_path, train_data, monkeypatch):
    from biasunlearn.unlearn import pipeline, trainer

    real = trainer.npo_loss
    monkeypatch.setattr(trainer, "npo_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    cfg = _cfg(tmp_path, tiny_llama_path, train_data)
    with pytest.raises(trainer.TrainingCollapse, match="loss is nan at step 0"):
        pipeline.train_adapter(cfg, log=lambda s: None)


def test_malloc_tuning_is_undone_after_training_even_when_it_fails(tmp_path, tiny_llama_path, train_data,
                                                                   monkeypatch):
    """The kept-memory malloc settings suit the training loop only: the evaluations after it in the same process
    (train's before/after read, compare's) run under glibc's defaults again, also after a failed run."""
    from biasunlearn.unlearn import pipeline, trainer

    calls = []
    monkeypatch.setattr(pipeline, "tune_glibc_malloc", lambda: calls.append("tune") or True)
    monkeypatch.setattr(pipeline, "restore_glibc_malloc", lambda: calls.append("restore") or True)
    pipeline.train_adapter(_cfg(tmp_path, tiny_llama_path, train_data, max_steps=1, cpu_malloc_tuning=True),
                           log=lambda s: None)
    assert calls == ["tune", "restore"]
    calls.clear()
    pipeline.train_adapter(_cfg(tmp_path, tiny_llama_path, train_data, max_steps=1, cpu_malloc_tuning=False,
                                output_dir=str(tmp_path / "off")), log=lambda s: None)
    assert calls == []
    real = trainer.npo_loss
    monkeypatch.setattr(trainer, "npo_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(trainer.TrainingCollapse):
        pipeline.train_adapter(_cfg(tmp_path, tiny_llama_path, train_data, cpu_malloc_tuning=True,
                                    output_dir=str(tmp_path / "nan")), log=lambda s: None)
    assert calls == ["tune", "restore"]


def test_gradient_accumulation_draws_a_new_chunk_for_each_micro_batch(tmp_path, tiny_llama_path, train_data,
                                                                     monkeypatch):
    """With gradient_accumulation_steps k, the k micro-batches of an optimizer step are k consecutive chunks (not the
    same chunk k times), and the adapters written are whole folders with nothing left beside them."""
    from biasunlearn.unlearn import pipeline
    from biasunlearn.unlearn.sets import UnlearnSets

    drawn = []
    real = UnlearnSets.chunk

    def spy(self, step, *a, **k):
        drawn.append(step)
        return real(self, step, *a, **k)

    monkeypatch.setattr(UnlearnSets, "chunk", spy)
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, max_steps=3, eval_every=2, gradient_accumulation_steps=2)
    summary = pipeline.train_adapter(cfg, log=lambda s: None)
    assert summary["steps"] == 3
    assert drawn == [0, 1, 2, 3, 4, 5]
    run = tmp_path / "run"
    assert json.loads((run / "best_adapter" / "dev_check.json").read_text())["step"] == 2
    assert (run / "final_adapter" / "adapter_model.safetensors").exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_a_half_done_adapter_replacement_is_undone(tmp_path):
    """save_adapter renames the old folder aside before the new one takes its place: a process killed in between
    leaves `best_adapter.old` alone, and recover_folder puts it back; with both present nothing moves."""
    from biasunlearn.io import recover_folder

    old = tmp_path / "best_adapter.old"
    old.mkdir()
    (old / "dev_check.json").write_text('{"step": 40}')
    recover_folder(tmp_path / "best_adapter")
    assert (tmp_path / "best_adapter" / "dev_check.json").read_text() == '{"step": 40}' and not old.exists()
    old.mkdir()
    recover_folder(tmp_path / "best_adapter")
    assert old.exists() and (tmp_path / "best_adapter" / "dev_check.json").exists()


def test_resume_names_the_settings_that_changed_since_the_start(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.io import write_json
    from biasunlearn.unlearn.pipeline import _warn_changed_settings

    cfg = _cfg(tmp_path, tiny_llama_path, train_data)
    saved = tmp_path / "config.json"
    start = json.loads(json.dumps(cfg.method_dict(), default=str))
    write_json(saved, {"config": start})
    logs = []
    _warn_changed_settings(saved, cfg, logs.append)
    assert logs == []  # the same settings: nothing to say
    del start["unrelated_max_tokens"]  # a run started before this setting existed
    write_json(saved, {"config": start})
    cfg.npo_beta = 0.5
    cfg.cpu_malloc_tuning = not cfg.cpu_malloc_tuning  # speed and memory only: not named
    _warn_changed_settings(saved, cfg, logs.append)
    assert logs == ["[resume] warning: these settings differ from the run's start, so it will not continue exactly: "
                    "npo_beta 0.1 -> 0.5; unrelated_max_tokens '(not a setting then)' -> 256"]
    # transformers' arguments that change the steps, and the number of processes, are named too
    logs.clear()
    cfg.npo_beta = 0.1
    write_json(saved, {"config": json.loads(json.dumps(cfg.method_dict(), default=str)),
                       "settings": {**cfg.run_settings(), "gradient_accumulation_steps": 4}, "world_size": 2})
    _warn_changed_settings(saved, cfg, logs.append)
    assert logs == ["[resume] warning: these settings differ from the run's start, so it will not continue exactly: "
                    "gradient_accumulation_steps 4 -> '(default)'; processes 2 -> 1"]


def test_dev_lms_collapse_guard(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.unlearn import pipeline, trainer

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, collapse_lms_drop=-1.0)  # any dev check after start trips it
    with pytest.raises(trainer.TrainingCollapse, match="dev LMS fell") as e:
        pipeline.train_adapter(cfg, log=lambda s: None)
    # it names what is kept, not a best_adapter/ that was never written
    assert "No best adapter was kept (no dev check after step 0 came before this one); the last checkpoint before " \
           "this check remains in" in str(e.value)
    assert not (tmp_path / "run" / "best_adapter").exists()


def test_checkpoint_metric_margin_keeps_the_check_closest_to_level(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.unlearn.controller import SwapController
    from biasunlearn.unlearn.pipeline import train_adapter

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, max_steps=6, checkpoint_metric="margin", lms_guard=100.0)
    summary = train_adapter(cfg, log=lambda s: None)
    dev = [json.loads(x) for x in (tmp_path / "run" / "dev_log.jsonl").read_text().splitlines()]
    later = [d for d in dev if d["step"] > 0]
    crit = {d["step"]: SwapController.criterion({b: v for b, v in d["margin"].items() if b != "overall"}, 0.0)
            for d in later}
    want = min(crit, key=lambda s: (crit[s], s))  # the first check wins a tie
    assert summary["best"][1] == want
    kept = json.loads((tmp_path / "run" / "best_adapter" / "dev_check.json").read_text())
    assert kept["step"] == want and kept["margin"] == next(d["margin"] for d in dev if d["step"] == want)


def test_swap_signal_margin_sets_each_direction_from_the_logged_dev_margin(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.unlearn.pipeline import train_adapter

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, max_steps=6, swap_signal="margin", swap_margin_nats=0.0)
    summary = train_adapter(cfg, log=lambda s: None)
    dev = [json.loads(x) for x in (tmp_path / "run" / "dev_log.jsonl").read_text().splitlines()]
    assert [d["step"] for d in dev] == [0, 2, 4, 6]
    for d in dev:  # the rule with no dead band: swapped exactly when the type's dev margin is below 0
        assert d["directions"] == {b: (-1 if d["margin"][b] < 0 else 1) for b in d["ss"]}, d
    flips = [(d["step"], b) for prev, d in zip(dev, dev[1:]) for b in d["ss"]
             if d["directions"][b] != prev["directions"][b]]
    first = [(0, b) for b in dev[0]["ss"] if dev[0]["directions"][b] == -1]
    assert [(e["step"], e["bias_type"]) for e in summary["swaps"]] == first + flips


def test_npo_against_twins_lowers_stereotypes_against_their_twins(tmp_path, tiny_llama_path, train_data):
    """npo_reference 'twin' on a real model: the forget term alone lowers each stereotype against its anti-stereotype
    twin (StereoSet's per-token margin), and it is measured against the twin, not the reference model."""
    from biasunlearn.models import load_model
    from biasunlearn.scoring import score_texts
    from biasunlearn.unlearn.pipeline import train_adapter

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, alpha_retain=0.0, alpha_kl=0.0, alpha_forget=1.0,
               adversarial_share=0.0, swap_mode="none", max_steps=6, lms_guard=100.0, npo_beta=1.0,
               pair_retain=True, npo_reference="twin")
    train_adapter(cfg, log=lambda s: None)
    logs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # against the reference model, step 1 would give exactly 2/beta*log 2 (policy == reference)
    assert abs(logs[0]["loss_forget"] - 2 * math.log(2)) > 1e-3
    pool = _pool()

    def margin(model, tok):
        st = score_texts(model, tok, [p["data"]["stereotype"]["sentence"] for p in pool])
        an = score_texts(model, tok, [p["data"]["anti-stereotype"]["sentence"] for p in pool])
        return sum(a.mean - b.mean for a, b in zip(st, an)) / len(pool)

    base, tok, _ = load_model(str(tiny_llama_path), device="cpu")
    tuned, tok, _ = load_model(str(tiny_llama_path), adapter=str(tmp_path / "run" / "checkpoint-6"), device="cpu")
    assert margin(tuned, tok) < margin(base, tok) - 0.05


def test_twin_grad_reaches_the_trainer_and_raises_the_twins(tmp_path, tiny_llama_path, train_data):
    """npo_twin_grad on a real model, forget term only: step 1 is the same loss (same weights), then the runs part,
    and with the twin's gradient on the anti-stereotypes rise against the run without it."""
    from biasunlearn.models import load_model
    from biasunlearn.scoring import score_texts
    from biasunlearn.unlearn.pipeline import train_adapter

    pool = _pool()
    antis = [p["data"]["anti-stereotype"]["sentence"] for p in pool]
    got = {}
    for grad in (False, True):
        out = tmp_path / f"run_{grad}"
        cfg = _cfg(tmp_path, tiny_llama_path, train_data, output_dir=str(out), alpha_retain=0.0, alpha_kl=0.0,
                   alpha_forget=1.0, adversarial_share=0.0, swap_mode="none", max_steps=4, lms_guard=100.0,
                   npo_beta=1.0, pair_retain=True, npo_reference="twin", npo_twin_grad=grad)
        train_adapter(cfg, log=lambda s: None)
        assert json.loads((out / "config.json").read_text())["config"]["npo_twin_grad"] is grad
        logs = [json.loads(x)["loss_forget"] for x in (out / "log.jsonl").read_text().splitlines() if "loss_forget" in x]
        tuned, tok, _ = load_model(str(tiny_llama_path), adapter=str(out / "checkpoint-4"), device="cpu")
        got[grad] = (logs, sum(s.mean for s in score_texts(tuned, tok, antis)) / len(antis))
    assert got[True][0][0] == pytest.approx(got[False][0][0], rel=1e-5)
    assert got[True][0][1:] != pytest.approx(got[False][0][1:], rel=1e-4)
    assert got[True][1] > got[False][1]


def test_generated_unrelated_text_is_sampled_once_seeded_and_reused(tmp_path, tiny_llama_path, train_data,
                                                                    monkeypatch):
    """unrelated_source 'generated': texts sampled from the original model feed the KL term; they are written to the
    run folder, the same seed gives the same texts, the training RNG is untouched, and --resume reuses the file."""
    from biasunlearn.models import load_model
    from biasunlearn.unlearn import generated
    from biasunlearn.unlearn.pipeline import train_adapter

    model, tok, _ = load_model(str(tiny_llama_path), device="cpu")
    model.train()
    torch.manual_seed(123)
    want_next = torch.rand(3)
    torch.manual_seed(123)
    a = generated.sample_texts(model, tok, n=5, tokens=6, seed=7, batch_size=2)
    assert torch.equal(torch.rand(3), want_next)  # the caller's RNG stream is as if nothing was sampled
    assert model.training  # mode restored
    b = generated.sample_texts(model, tok, n=5, tokens=6, seed=7, batch_size=2)
    c = generated.sample_texts(model, tok, n=5, tokens=6, seed=8, batch_size=2)
    assert len(a) == 5 and all(isinstance(t, str) and t for t in a)
    assert a == b and a != c  # same seed, same texts; another seed, other texts
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) <= 6 + 2 for t in a)

    from biasunlearn.unlearn import pipeline

    seen = []
    real_sets = pipeline.UnlearnSets
    monkeypatch.setattr(pipeline, "UnlearnSets", lambda train, unrelated, **k: seen.append(unrelated) or
                        real_sets(train, unrelated, **k))
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, unrelated_source="generated", generated_count=6,
               generated_tokens=5, max_steps=2)
    train_adapter(cfg, log=lambda s: None)
    path = tmp_path / "run" / generated.FILE
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["settings"] == {"n": 6, "tokens": 5, "seed": 0, "model": str(tiny_llama_path)}
    texts = [x["text"] for x in lines[1:]]
    assert len(texts) == lines[0]["kept"] and 1 <= len(texts) <= 6
    assert seen == [texts]  # the KL term's text is the sampled text, not the pool's unrelated sentences
    logs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert logs[0]["loss_kl"] == pytest.approx(0.0, abs=1e-6) and logs[1]["loss_kl"] > 0
    # a resumed run reads the file instead of sampling again
    calls = []
    orig = generated.sample_texts
    generated.sample_texts = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        got = generated.load_or_sample(tmp_path / "run", model, tok, 6, 5, 0, str(tiny_llama_path), log=lambda s: None)
        assert got == texts and calls == []
        generated.load_or_sample(tmp_path / "run", model, tok, 6, 4, 0, str(tiny_llama_path), log=lambda s: None)
        assert calls == [1]  # other settings: sampled again (and the file rewritten)
    finally:
        generated.sample_texts = orig
    assert json.loads(path.read_text().splitlines()[0])["settings"]["tokens"] == 4


def test_generated_source_settings_are_checked(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="generated_count=0"):
        _cfg(tmp_path, tiny_llama_path, train_data, unrelated_source="generated", generated_count=0)
    with pytest.raises(ConfigError, match="unrelated_source='nope'"):
        _cfg(tmp_path, tiny_llama_path, train_data, unrelated_source="nope")


def test_drop_term_texts_matches_whole_words_in_any_case():
    """Hand-made: 'he' drops "He left." and "he's" but not "the", "here" or "shelf"; a two-word term matches across
    a line break; an empty term list drops nothing."""
    from biasunlearn.unlearn.pipeline import drop_term_texts

    texts = ["He left.", "the shelf is here", "and he's gone", "South\nAfrica today", "South Africans", "a poet."]
    kept, dropped = drop_term_texts(texts, {"he", "South Africa", "Poet", " "})
    assert kept == ["the shelf is here", "South Africans"] and dropped == 4
    assert drop_term_texts(texts, set()) == (texts, 0)


def test_unrelated_drop_terms_filters_the_kl_text_or_stops_when_none_is_left(tmp_path, tiny_llama_path,
                                                                             train_data, monkeypatch):
    """The pool's unrelated sentences all name their target term, so with the stereoset source nothing is left: a
    clear error before any step. With sampled text, the trainer gets exactly the texts that name no train term."""
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn import pipeline

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, unrelated_drop_terms=True, max_steps=2)
    with pytest.raises(ConfigError, match="unrelated_drop_terms=true left no text for the KL term"):
        pipeline.train_adapter(cfg, log=lambda s: None)
    assert not (tmp_path / "run" / "log.jsonl").exists()  # stopped before training

    texts = ["My father was here.", "A cloud over the sea.", "KOREAN food is good.", "Fathers and sons.", "Hello."]
    monkeypatch.setattr(pipeline, "load_or_sample", lambda *a, **k: list(texts))
    seen, logs = [], []
    real_sets = pipeline.UnlearnSets
    monkeypatch.setattr(pipeline, "UnlearnSets", lambda train, unrelated, **k: seen.append(unrelated) or
                        real_sets(train, unrelated, **k))
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, unrelated_source="generated", unrelated_drop_terms=True,
               max_steps=2, output_dir=str(tmp_path / "run2"))
    pipeline.train_adapter(cfg, log=logs.append)
    train_terms = {e["target"] for e in json.loads((train_data / "pool.json").read_text())
                   if e["id"] in set(json.loads((tmp_path / "run2" / "splits.json").read_text())["train_ids"])}
    want = [t for t in texts if not any(w.lower() in t.lower().replace(".", " ").split() for w in train_terms)]
    assert len(want) < len(texts) and seen == [want]
    assert "Fathers and sons." in want and "A cloud over the sea." in want  # whole words only
    assert any(f"{len(texts) - len(want)} of 5 KL texts name a target term" in m for m in logs)


def test_gender_counterfactual_never_names_a_held_out_term(tmp_path, tiny_llama_path, train_data, monkeypatch):
    """The trainer gets the dev and test target terms as blocked words; with 'brother' on dev (min_dev_per_type
    puts one gender term there) or not, a train example gets a counterfactual exactly when its counterpart (father
    -> mother, brother -> sister, uncle -> aunt) is not a held-out term, and the log says how many."""
    from biasunlearn.data import load_stereoset
    from biasunlearn.unlearn import pipeline

    seen, logs = [], []
    real_sets = pipeline.UnlearnSets
    monkeypatch.setattr(pipeline, "UnlearnSets", lambda train, unrelated, **k: seen.append((train, k)) or
                        real_sets(train, unrelated, **k))
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, gender_counterfactual=True, max_steps=1)
    pipeline.train_adapter(cfg, log=logs.append)
    (train, kw), = seen
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    test = load_stereoset(train_data / cfg.test_set, task="intrasentence")
    held = {e["target"] for e in _pool() if e["id"] in set(splits["dev_ids"])} | {e.target for e in test}
    assert kw["gender_counterfactual"] and set(kw["blocked_terms"]) == held
    counterpart = {"father": "mother", "brother": "sister", "uncle": "aunt"}
    gender = [e for e in train if e.bias_type == "gender"]
    want = sum(counterpart[e.target] not in {t.lower() for t in held} for e in gender)
    assert 0 < len(gender) and any(f"gender_counterfactual: {want} of {len(gender)} gender stereotypes" in m
                                   for m in logs)


def test_neutral_anchor_puts_group_free_sentences_into_the_kl_batch(tmp_path, tiny_llama_path, train_data,
                                                                     monkeypatch):
    """With neutral_anchor_batch_size 2, every step's KL batch is the unrelated draw plus two pool sentences with
    the term taken out ("The father was lazy today." -> "Someone was lazy today."), and the log says how many."""
    from biasunlearn.unlearn import pipeline
    from biasunlearn.unlearn.sets import UnlearnSets

    drawn, logs = [], []
    chunk = UnlearnSets.chunk

    def spy(self, step, directions, *a, **kw):
        out = chunk(self, step, directions, *a, **kw)
        drawn.append([it.y for it in out["unrelated"]])
        return out

    monkeypatch.setattr(UnlearnSets, "chunk", spy)
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, neutral_anchor_batch_size=2, max_steps=2)
    pipeline.train_adapter(cfg, log=logs.append)
    train_ids = set(json.loads((tmp_path / "run" / "splits.json").read_text())["train_ids"])
    want = {f"Someone was {w} today." for e in _pool() if e["id"] in train_ids for w in WORDS[0][:2] + WORDS[1][:2]
            + WORDS[2][:2]}
    assert drawn and all(len(u) == cfg.unrelated_batch_size + 2 for u in drawn)
    assert all(y in want for u in drawn for y in u[-2:])
    assert not any(y.startswith("Someone") for u in drawn for y in u[:-2])
    assert any(f"neutral_anchor: {2 * len(train_ids)} sentences with the group taken out, 2 added" in m
               for m in logs)


def _forced_margins(monkeypatch, schedule):
    """Make the trainer's dev checks read the given per-type margins, one dict per check, in order."""
    import biasunlearn.unlearn.trainer as tr

    calls = iter(schedule)
    monkeypatch.setattr(tr, "dev_margins", lambda recs: {**next(calls), "overall": 0.0})


def test_pause_mode_leaves_paused_types_out_of_training_and_stops_when_all_are_paused(
        tmp_path, tiny_llama_path, train_data, monkeypatch):
    from biasunlearn.unlearn.pipeline import train_adapter
    from biasunlearn.unlearn.sets import UnlearnSets

    _forced_margins(monkeypatch, [{"gender": 0.1, "race": -0.1}, {"gender": 0.1, "race": -0.1},
                                  {"gender": -0.1, "race": -0.1}])
    drawn = []
    chunk = UnlearnSets.chunk

    def spy(self, step, directions, *a, **kw):
        out = chunk(self, step, directions, *a, **kw)
        drawn.append((step, dict(directions), {i.bias_type for i in out["forget"] + out["retain"]}))
        return out

    monkeypatch.setattr(UnlearnSets, "chunk", spy)
    logs = []
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, max_steps=8, swap_mode="pause", swap_signal="margin",
               swap_margin_nats=0.0)
    summary = train_adapter(cfg, log=logs.append)
    dev = [json.loads(x) for x in (tmp_path / "run" / "dev_log.jsonl").read_text().splitlines()]
    assert [(d["step"], d["directions"]) for d in dev] == [
        (0, {"gender": 1, "race": 0}), (2, {"gender": 1, "race": 0}), (4, {"gender": 0, "race": 0})]
    assert summary["steps"] == 4  # stopped at the check where every type was paused, not at max_steps 8
    assert [(e["step"], e["bias_type"], e["direction"]) for e in summary["swaps"]] == [(0, "race", 0), (4, "gender", 0)]
    assert drawn and all(types == {"gender"} for _, _, types in drawn)  # race (paused) was never trained
    assert any("every bias type is past level and paused: early stop" in m for m in logs)


def test_pause_mode_under_stop_at_step_stops_when_every_type_is_paused(tmp_path, tiny_llama_path, train_data,
                                                                      monkeypatch):
    """stop_at_step fixes the schedule, so an early stop is not taken; but once every type is paused the next
    batches would be empty (a NaN loss, read as a collapse): the run stops there, and says so."""
    from biasunlearn.unlearn.pipeline import train_adapter

    _forced_margins(monkeypatch, [{"gender": 0.1, "race": -0.1}, {"gender": 0.1, "race": -0.1},
                                  {"gender": -0.1, "race": -0.1}])
    logs = []
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, max_steps=8, stop_at_step=6, swap_mode="pause",
               swap_signal="margin", swap_margin_nats=0.0)
    summary = train_adapter(cfg, log=logs.append)
    assert summary["steps"] == 4
    assert summary["adapter"] == "step 4 (every bias type is past level and paused, before stop_at_step 6)"
    assert ("[dev] every bias type is past level and paused: early stop at step 4, before stop_at_step 6; the "
            "adapter is this step's") in logs
    st = json.loads((tmp_path / "run" / "checkpoint-4" / "biasunlearn_state.json").read_text())
    assert st["stopped"] == "every bias type is past level and paused"


def test_a_resume_from_the_checkpoint_where_the_run_stopped_trains_no_further_step(tmp_path, tiny_llama_path,
                                                                                   train_data):
    """Killed after its last checkpoint but before its adapter and summary: the resume finishes the run from that
    checkpoint (transformers would train one more step before it looks at a stop)."""
    from biasunlearn.unlearn.pipeline import train_adapter

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, max_steps=6, stop_at_step=4)
    train_adapter(cfg, log=lambda s: None)
    run = tmp_path / "run"
    want = _lora(run / "adapter")
    assert json.loads((run / "checkpoint-4" / "biasunlearn_state.json").read_text())["stopped"] == "stop_at_step"
    for name in ("adapter", "final_adapter"):
        shutil.rmtree(run / name)
    (run / "train_summary.json").unlink()
    logs = []
    summary = train_adapter(cfg, resume=True, log=logs.append)
    assert summary["steps"] == 4 and summary["adapter"] == "step 4 (stop_at_step)"
    assert any("checkpoint-4 is where the run stopped (stop_at_step): finishing from it, no step trained" in m
               for m in logs)
    got = _lora(run / "adapter")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not (run / "checkpoint-5").exists()
    assert [json.loads(x)["step"] for x in (run / "dev_log.jsonl").read_text().splitlines()] == [0, 2, 4]


def test_a_stop_stands_on_resume_unless_the_schedule_now_ends_later(tmp_path):
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.pipeline import stops_at

    ck = tmp_path / "checkpoint-4"
    at = lambda **kw: make_config(output_dir="x", model="m", **kw)  # noqa: E731
    assert stops_at(at(max_steps=4), ck, "max_steps") and not stops_at(at(max_steps=6), ck, "max_steps")
    assert stops_at(at(max_steps=6, stop_at_step=4), ck, "stop_at_step")
    assert not stops_at(at(max_steps=6, stop_at_step=5), ck, "stop_at_step")
    assert not stops_at(at(max_steps=6), ck, "stop_at_step")  # stop_at_step since turned off
    assert stops_at(at(max_steps=6), ck, "every bias type within 50 +- 2")  # a dev check's stop stands
    assert not stops_at(at(max_steps=4), ck, None) and not stops_at(at(max_steps=4), ck, "")


def test_a_resume_puts_back_the_best_adapter_its_checkpoint_records(tmp_path):
    """best_adapter/ is written at a dev check, before that step's checkpoint: a kill in between (or a resume from an
    older checkpoint) leaves a later check's adapter there. The resume puts back the adapter of the best check the
    checkpoint records, from that check's checkpoint, or drops the record when that checkpoint is gone."""
    from types import SimpleNamespace

    from biasunlearn.io import write_json
    from biasunlearn.unlearn.controller import SwapController
    from biasunlearn.unlearn.trainer import DevCheckCallback

    out = tmp_path / "run"
    ctrl = SwapController(["gender"])
    stub = SimpleNamespace(controller=ctrl, is_world_process_zero=lambda: True)

    def adapter(folder, fill, step=None):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text('{"r": 2}')
        (folder / "adapter_model.safetensors").write_bytes(bytes([fill]) * 8)
        if step is not None:
            write_json(folder / "dev_check.json", {"step": step})

    def checkpoint(step, best_step):
        adapter(out / f"checkpoint-{step}", step)
        write_json(out / f"checkpoint-{step}" / "biasunlearn_state.json",
                   {"controller": ctrl.state_dict(), "start_lms": 90.0,
                    "best": [[0, [1.0]], best_step] if best_step else None, "stopped": None})

    checkpoint(4, 4)
    adapter(out / "best_adapter", 6, step=6)  # saved at step 6's check; checkpoint-6 was never written
    (out / "dev_log.jsonl").write_text("".join(json.dumps({"step": k, "ss": {"gender": 60 - k}}) + "\n"
                                               for k in (0, 2, 4, 6)))
    logs = []
    cb = DevCheckCallback(stub, [], out, log=logs.append)
    cb.restore(out / "checkpoint-4")
    assert (out / "best_adapter" / "adapter_model.safetensors").read_bytes() == bytes([4]) * 8
    assert json.loads((out / "best_adapter" / "dev_check.json").read_text()) == {"step": 4, "ss": {"gender": 56}}
    assert cb.best == ((0, (1.0,)), 4)
    assert logs == ["[resume] best_adapter/ held step 6's adapter, not the best check of checkpoint-4 (step 4): put "
                    "back from checkpoint-4"]
    # the folder already matches: nothing is touched
    logs.clear()
    cb.restore(out / "checkpoint-4")
    assert logs == [] and (out / "best_adapter" / "adapter_model.safetensors").read_bytes() == bytes([4]) * 8
    # the recorded best's checkpoint is gone: the record is dropped with the folder
    checkpoint(8, 2)
    cb.restore(out / "checkpoint-8")
    assert cb.best is None and not (out / "best_adapter").exists()
    assert logs == ["[resume] best_adapter/ held step 4's adapter, not the best check of checkpoint-8 (step 2, whose "
                    "checkpoint is gone): removed; the best adapter is chosen again among the dev checks from here on"]


def test_the_last_step_is_dev_checked_when_eval_every_does_not_divide_it(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.unlearn.pipeline import train_adapter

    summary = train_adapter(_cfg(tmp_path, tiny_llama_path, train_data, max_steps=5), log=lambda s: None)
    dev = [json.loads(x)["step"] for x in (tmp_path / "run" / "dev_log.jsonl").read_text().splitlines()]
    assert dev == [0, 2, 4, 5] and summary["steps"] == 5


def test_adapter_label_says_which_adapter_the_run_kept():
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.pipeline import adapter_label

    plain = make_config(output_dir="x", model="m", max_steps=10)
    assert adapter_label(plain, 10, "max_steps", True) == "best dev check"
    assert adapter_label(plain, 10, "max_steps", False) == \
        "step 10 (the last step: no dev check after step 0 chose one)"
    cut = make_config(output_dir="x", model="m", max_steps=10, stop_at_step=6)
    assert adapter_label(cut, 6, "stop_at_step", True) == "step 6 (stop_at_step)"
    assert adapter_label(cut, 4, "every bias type is past level and paused", True) == \
        "step 4 (every bias type is past level and paused, before stop_at_step 6)"


def test_pause_mode_with_every_type_past_level_before_training_is_a_clear_error(
        tmp_path, tiny_llama_path, train_data, monkeypatch):
    from biasunlearn.errors import BiasUnlearnError
    from biasunlearn.unlearn.pipeline import train_adapter

    _forced_margins(monkeypatch, [{"gender": -0.1, "race": -0.2}])
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, swap_mode="pause", swap_signal="margin", swap_margin_nats=0.0)
    with pytest.raises(BiasUnlearnError, match="nothing to train"):
        train_adapter(cfg, log=lambda s: None)


def _step_trainer(cfg):
    """The LoRA model, the unlearning sets and a BiasUnlearnTrainer built from cfg the way train_adapter builds them,
    for tests that drive single steps or checks by hand."""
    from biasunlearn.data.splits import make_splits
    from biasunlearn.models import load_model
    from biasunlearn.unlearn.controller import SwapController
    from biasunlearn.unlearn.pipeline import prepare_lora
    from biasunlearn.unlearn.sets import UnlearnSets
    from biasunlearn.unlearn.trainer import BiasUnlearnTrainer

    model, tok, _ = load_model(cfg.model, device="cpu")
    model = prepare_lora(model, cfg)
    splits = make_splits(cfg.data_dir, files=(cfg.train_pool,), seed=cfg.seed, dev_fraction=cfg.dev_fraction,
                         min_dev_per_type=cfg.min_dev_per_type)
    sets = UnlearnSets(splits.train, adversarial_share=cfg.adversarial_share, seed=cfg.seed)
    tr = BiasUnlearnTrainer(model=model, args=cfg, sets=sets, controller=SwapController(sets.bias_types),
                            tokenizer=tok)
    return model, sets, tr


@pytest.mark.parametrize("arch,extra", [("gpt2", {}), ("llama", {}),
                                        ("llama", {"retain_floor": True, "npo_variant": "token_mean"})])
def test_packed_step_gives_the_padded_step_losses_and_is_decided_once(arch, extra, tmp_path, tiny_model_paths,
                                                                       train_data):
    """pack_sequences: the first step checks packing against padding and records it; with dropout off, a packed
    step's three losses equal the padded step's (the KL's reference pass is packed too, and so are the cached
    reference log-probs of forget and, with retain_floor, retain sentences), and a run with packing off never packs."""
    losses = {}
    for pack in (True, False):
        cfg = _cfg(tmp_path / str(pack), tiny_model_paths[arch], train_data, pack_sequences=pack, lora_dropout=0.0,
                   forget_batch_size=3, retain_batch_size=5, unrelated_batch_size=4, adversarial_share=0.5, **extra)
        model, sets, tr = _step_trainer(cfg)
        model.eval()  # no dropout anywhere (GPT-2 has its own), so the two layouts must agree
        torch.manual_seed(0)
        for p in model.parameters():  # a non-zero adapter, so the policy differs from the reference
            if p.requires_grad:
                p.data.normal_(0, 0.05)
        tr.state.global_step = 1
        tr.compute_loss(model, {"step_index": torch.tensor([1])})
        losses[pack] = {k: v[-1] for k, v in tr._parts.items()}
        if pack:
            assert tr.packing_check["packed"] is True and tr.packing_check["max_abs_diff_nats"] < 1e-4
        else:
            assert tr.packing_check is None and tr._packed is False
    for k in ("loss_forget", "loss_retain", "loss_kl"):
        assert losses[True][k] == pytest.approx(losses[False][k], rel=1e-4, abs=1e-6), k
    assert losses[True]["loss_kl"] > 1e-4  # the adapter moved the policy: the KL is really compared


def test_reference_passes_run_without_the_models_own_dropout(tmp_path, tiny_model_paths, train_data, monkeypatch):
    """GPT-2 has dropout of its own (resid/embd/attn_pdrop 0.1), which switching the adapter off does not remove. The
    reference passes must run in eval mode: the cached forget log-probs and the KL's reference rows are the original
    model's, the same at every step whatever the dropout draw, while the policy pass keeps training's dropout.
    Before, both reference passes ran in training mode, so the cache kept one random draw for the whole run."""
    from biasunlearn.unlearn import trainer as trainer_mod

    cfg = _cfg(tmp_path, tiny_model_paths["gpt2"], train_data, lora_dropout=0.0, forget_batch_size=3,
               retain_batch_size=4, unrelated_batch_size=4, adversarial_share=0.0)
    model, sets, tr = _step_trainer(cfg)
    inner = tr.accelerator.unwrap_model(model)
    assert inner.config.resid_pdrop > 0  # the point of the test: a model with dropout of its own
    seen = []
    real_kl = trainer_mod.forward_kl_rows
    monkeypatch.setattr(trainer_mod, "forward_kl_rows", lambda ref, pol, *a: seen.append(ref.clone())
                        or real_kl(ref, pol, *a))
    asked = []
    real_ref = tr._ref_logp
    tr._ref_logp = lambda m, items, *a, **k: asked.extend(items) or real_ref(m, items, *a, **k)
    model.train()
    caches = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        tr._ref_cache = {}
        tr.state.global_step = 1
        tr.compute_loss(model, {"step_index": torch.tensor([1])})
        assert model.training  # the training mode is back after the reference passes
        caches.append(dict(tr._ref_cache))
    assert seen[0].shape == seen[1].shape and torch.equal(seen[0], seen[1])
    assert caches[0].keys() == caches[1].keys() and caches[0]
    assert all(caches[0][k][0] == caches[1][k][0] for k in caches[0])
    # and they are the original model's numbers: the adapter off, in eval mode
    items = asked[:2]
    model.eval()
    with torch.no_grad(), inner.disable_adapter():
        sb = tr._forward(model, items, torch.device("cpu"), packed=bool(tr._packed))
    for k, it in enumerate(items):
        assert float((sb.tok_lp[k] * sb.scored[k]).sum()) == pytest.approx(caches[0][it.key][0], abs=1e-4)


def test_packing_check_is_not_fooled_by_bf16_mixed_precision(tmp_path, tiny_model_paths, train_data):
    """Under bf16 mixed precision (train's default where the CPU or GPU has bf16) packed and padded scoring differ by
    rounding alone, so the packing check must run in full precision to pass on a model that packs correctly. It
    turned packing off for every bf16 SmolLM2 run (0.26 nats against a 0.01 tolerance): first because the check ran
    under autocast, then because accelerate wraps the prepared model's forward in an autocast of its own, entered
    inside the call, which an outer autocast(enabled=False) cannot switch off. The model here is prepared by the
    trainer's own accelerator, as Trainer.train prepares it."""
    cfg = _cfg(tmp_path, tiny_model_paths["llama"], train_data, lora_dropout=0.0, forget_batch_size=3,
               retain_batch_size=5, unrelated_batch_size=4, bf16=True)
    model, sets, tr = _step_trainer(cfg)
    assert tr.accelerator.mixed_precision == "bf16"
    wrapped = tr.accelerator.prepare_model(model)
    items = [it for its in sets.chunk(0, {}, 3, 5, 4).values() for it in its]
    cpu = torch.device("cpu")
    autocast_on = []  # whether autocast is on where the model computes (the lm_head's input)
    model.get_base_model().get_output_embeddings().register_forward_pre_hook(
        lambda mod, args: autocast_on.append(torch.is_autocast_enabled("cpu")))
    with torch.no_grad(), torch.autocast(device_type="cpu", enabled=False):  # what the check once relied on
        wrapped(input_ids=torch.tensor([[1, 2, 3]]), use_cache=False)
    assert autocast_on == [True]  # accelerate's wrapper switched it back on inside the call
    autocast_on.clear()
    wrapped.train()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):  # the step itself runs under autocast
        assert tr._use_packing(wrapped, items, cpu) is True
    assert autocast_on == [False, False]  # the check's packed and padded passes, both in full precision
    assert tr.packing_check["tolerance"] == 0.01 and tr.packing_check["max_abs_diff_nats"] < 1e-4
    assert wrapped.training  # the check restores train mode


def test_dev_folds_hold_out_every_pool_term_once_and_are_recorded(tmp_path, train_data):
    from biasunlearn.data.splits import make_splits
    from biasunlearn.errors import ConfigError

    pool_ids = {e["id"] for e in json.loads((train_data / "pool.json").read_text())}
    seen = []
    for k in range(3):
        sp = make_splits(train_data, files=("pool.json",), seed=5, folds=3, fold=k)
        assert {e.id for e in sp.dev}.isdisjoint(e.id for e in sp.train)
        assert {e.id for e in sp.dev} | {e.id for e in sp.train} == pool_ids
        doc = sp.to_dict()
        assert (doc["dev_fold"], doc["dev_folds"]) == (k, 3)
        seen += [e.id for e in sp.dev]
    assert sorted(seen) == sorted(pool_ids)  # the three dev folds cover the pool once
    with pytest.raises(ConfigError, match="dev_folds=3, dev_fold=3"):
        make_splits(train_data, files=("pool.json",), folds=3, fold=3)
    assert "dev_fold" not in make_splits(train_data, files=("pool.json",), dev_fraction=0.3).to_dict()


def test_fold_runs_are_checked_before_pooling_and_pooled_by_hand(tmp_path, train_data):
    from biasunlearn.data.splits import make_splits
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.folds import missing_folds, pooled_summary, read_fold_splits

    def run(name, **kw):
        d = tmp_path / name
        d.mkdir()
        (d / "splits.json").write_text(json.dumps(make_splits(train_data, files=("pool.json",), **kw).to_dict()))
        return d

    r0, r1, r2 = (run(f"f{k}", seed=2, folds=3, fold=k) for k in range(3))
    docs = read_fold_splits([r2, r0])
    assert [d["dev_fold"] for d in docs] == [2, 0] and missing_folds(docs) == [1]
    assert missing_folds(read_fold_splits([r0, r1, r2])) == []
    with pytest.raises(ConfigError, match="fold 0 is also"):
        read_fold_splits([r0, run("again", seed=2, folds=3, fold=0)])
    with pytest.raises(ConfigError, match="seed 3 differs"):
        read_fold_splits([r0, run("other_seed", seed=3, folds=3, fold=1)])
    with pytest.raises(ConfigError, match="not a term fold"):
        read_fold_splits([r0, run("plain", dev_fraction=0.3)])
    with pytest.raises(ConfigError, match="splits.json: missing"):
        read_fold_splits([r0, tmp_path / "nothing"])

    def rec(b, t, ds, da, du=-9.0):
        return {"bias_type": b, "target": t, "s_stereo": ds, "s_anti": da, "s_unrel": du}

    # gender: term a 2/2 pro, term b 0/1 -> SS 50; race: one term 1/2 -> 50; margins by hand
    recs = [rec("gender", "a", -1.0, -2.0), rec("gender", "a", -1.0, -1.5), rec("gender", "b", -3.0, -1.0),
            rec("race", "c", -1.0, -1.2), rec("race", "c", -2.0, -1.0)]
    s = pooled_summary(recs, resamples=200)
    assert s["gender"]["SS"] == 50.0 and s["race"]["SS"] == 50.0 and s["overall"]["SS"] == pytest.approx(50.0)
    assert s["gender"]["margin"] == pytest.approx((1.0 + 0.5 - 2.0) / 3, abs=1e-4)
    assert s["race"]["margin"] == pytest.approx((0.2 - 1.0) / 2, abs=1e-4)
    assert (s["gender"]["n_terms"], s["gender"]["n_examples"], s["overall"]["n_terms"]) == (2, 3, 3)
    assert s["gender"]["SS_se"] > 0 and s["race"]["LMS"] == 100.0


def test_cv_pool_script_pools_two_fold_runs(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.unlearn.pipeline import train_adapter

    runs = []
    for k in range(2):
        cfg = _cfg(tmp_path / f"k{k}", tiny_llama_path, train_data, dev_folds=2, dev_fold=k, max_steps=2)
        train_adapter(cfg, log=lambda s: None)
        runs.append(tmp_path / f"k{k}" / "run")
    mod = load_bench("cv_pool")
    out = tmp_path / "cv.json"
    assert mod.main(["--runs", ",".join(map(str, runs)), "--adapter", "best_adapter", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    pool_n = len(json.loads((train_data / "pool.json").read_text()))
    assert res["folds"] == 2 and res["missing_folds"] == []
    for name in ("base", "recipe"):  # every pool example is held out exactly once
        assert res[name]["overall"]["n_examples"] == pool_n
    with pytest.raises(SystemExit, match=r"folds \[1\] of 2 have no run"):
        mod.main(["--runs", str(runs[0]), "--out", str(tmp_path / "x.json")])


def test_pooled_dev_curve_weights_folds_by_terms_and_examples_by_hand(tmp_path):
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.folds import pooled_dev_curve

    def run(k, terms, examples, rows):
        d = tmp_path / f"f{k}"
        d.mkdir()
        doc = {"dev_folds": 2, "dev_fold": k, "seed": 0, "sources": {"pool.json": "abc"}, "dev_ids": [f"{k}-{i}" for
               i in range(sum(examples.values()))], "dev_term_counts": terms, "counts": {"dev": examples}}
        (d / "splits.json").write_text(json.dumps(doc))
        (d / "dev_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return d

    def row(step, g, r, se_g, se_r, overall, lms, m_g, m_r, m_all, dirs=None):
        return {"step": step, "ss": {"gender": g, "race": r}, "ss_se": {"gender": se_g, "race": se_r, "overall": 4.0},
                "ss_overall": overall, "lms": lms, "margin": {"gender": m_g, "race": m_r, "overall": m_all},
                "directions": dirs or {"gender": 1, "race": 1}}

    # fold 0: gender 1 term (2 examples), race 3 terms (6 examples); fold 1: gender 3 terms (6), race 1 term (2)
    f0 = run(0, {"gender": 1, "race": 3}, {"gender": 2, "race": 6},
             [row(0, 100.0, 40.0, 10.0, 6.0, 55.0, 90.0, 0.3, -0.1, 0.0),
              row(10, 50.0, 40.0, 10.0, 6.0, 42.5, 88.0, 0.1, -0.1, -0.05, {"gender": 1, "race": 0}),
              row(20, 50.0, 50.0, 10.0, 6.0, 50.0, 88.0, 0.0, 0.0, 0.0)])
    f1 = run(1, {"gender": 3, "race": 1}, {"gender": 6, "race": 2},
             [row(0, 60.0, 80.0, 8.0, 12.0, 65.0, 80.0, 0.2, 0.4, 0.25),
              row(10, 60.0, 80.0, 8.0, 12.0, 65.0, 84.0, 0.2, 0.4, 0.25, {"gender": 0, "race": 0})])
    c = pooled_dev_curve([f1, f0])
    assert c["steps"] == [0, 10] and c["dropped_steps"] == {str(f0): [20]}
    r0, r10 = c["rows"]
    assert r0["ss"]["gender"] == pytest.approx((1 * 100 + 3 * 60) / 4)  # 70: weighted by terms, not by folds
    assert r0["ss"]["race"] == pytest.approx((3 * 40 + 1 * 80) / 4)  # 50
    assert r0["ss_se"]["gender"] == pytest.approx(((0.25 * 10) ** 2 + (0.75 * 8) ** 2) ** 0.5, abs=0.01)  # 6.5
    assert r0["ss_se"]["race"] == pytest.approx(((0.75 * 6) ** 2 + (0.25 * 12) ** 2) ** 0.5, abs=0.01)  # 5.41
    assert r0["ss_se"]["overall"] == pytest.approx((2 * (0.5 * 4.0) ** 2) ** 0.5, abs=0.01)
    assert r0["ss_overall"] == pytest.approx(60.0) and r0["lms"] == pytest.approx(85.0)  # 4 terms each
    assert r0["margin"]["gender"] == pytest.approx((2 * 0.3 + 6 * 0.2) / 8, abs=1e-5)  # by examples
    assert r0["margin"]["race"] == pytest.approx((6 * -0.1 + 2 * 0.4) / 8, abs=1e-5)
    assert r0["margin"]["overall"] == pytest.approx((8 * 0.0 + 8 * 0.25) / 16, abs=1e-5)
    assert r0["n_terms"] == {"gender": 4, "race": 4}
    assert r0["paused"] == {"gender": 0, "race": 0} and r10["paused"] == {"gender": 1, "race": 2}
    assert r10["ss"]["gender"] == pytest.approx((50 + 180) / 4) and r10["lms"] == pytest.approx(86.0)

    with pytest.raises(ConfigError, match=r"folds \[1\] of 2 have no run"):
        pooled_dev_curve([f0])
    part = pooled_dev_curve([f0], allow_partial=True)  # one fold alone: its own numbers
    assert part["missing_folds"] == [1] and part["rows"][0]["ss"] == {"gender": 100.0, "race": 40.0}
    assert part["rows"][0]["ss_se"]["race"] == 6.0
    with (f1 / "dev_log.jsonl").open("a") as f:
        f.write('{"step": 20, "ss": {"gend')  # fold 1's run killed while writing its check of step 20
    cut = pooled_dev_curve([f0, f1])  # that line skipped: pooled as before, not a failure
    assert cut["steps"] == [0, 10] and cut["rows"] == c["rows"] and cut["dropped_steps"] == {str(f0): [20]}
    (f1 / "dev_log.jsonl").write_text('{"step": 0}\n{"ss": {}}\n')
    with pytest.raises(ConfigError, match=r'dev_log.jsonl: not a dev check row \(no whole-number step\): {"ss": {}}'):
        pooled_dev_curve([f0, f1])


def test_cv_curve_script_writes_json_and_plot(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.unlearn.pipeline import train_adapter

    runs = []
    for k in range(2):
        cfg = _cfg(tmp_path / f"k{k}", tiny_llama_path, train_data, dev_folds=2, dev_fold=k, max_steps=2, eval_every=1)
        train_adapter(cfg, log=lambda s: None)
        runs.append(tmp_path / f"k{k}" / "run")
    mod = load_bench("cv_curve")
    out, png = tmp_path / "curve.json", tmp_path / "curve.png"
    assert mod.main(["--runs", ",".join(map(str, runs)), "--out", str(out), "--png", str(png)]) == 0
    res = json.loads(out.read_text())
    logs = [[json.loads(x) for x in (r / "dev_log.jsonl").read_text().splitlines()] for r in runs]
    assert res["steps"] == [r["step"] for r in logs[0]] and len(res["steps"]) >= 2
    n = [json.loads((r / "splits.json").read_text())["dev_term_counts"] for r in runs]
    overall = [sum(x.values()) for x in n]
    want = sum(k * lg[-1]["ss_overall"] for k, lg in zip(overall, logs)) / sum(overall)
    assert res["rows"][-1]["ss_overall"] == pytest.approx(want)
    assert png.exists() and png.stat().st_size > 1000


def test_stop_at_step_keeps_that_steps_adapter_and_the_full_schedule(tmp_path, tiny_llama_path, train_data):
    """A step fixed beforehand (e.g. by cross-validation): the run stops there, its adapter is that step's (not dev's
    choice), and it is the very adapter a full-length run has at that step, since the schedule spans max_steps."""
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.pipeline import train_adapter

    full = _cfg(tmp_path / "full", tiny_llama_path, train_data, max_steps=6, save_total_limit=None)
    train_adapter(full, log=lambda s: None)
    cut = _cfg(tmp_path / "cut", tiny_llama_path, train_data, max_steps=6, stop_at_step=4)
    summary = train_adapter(cut, log=lambda s: None)
    run = tmp_path / "cut" / "run"
    assert summary["steps"] == 4 and summary["adapter"] == "step 4 (stop_at_step)"
    a, f4, last = _lora(run / "adapter"), _lora(tmp_path / "full" / "run" / "checkpoint-4"), _lora(run / "final_adapter")
    assert a.keys() == f4.keys() and all(torch.equal(a[k], f4[k]) and torch.equal(a[k], last[k]) for k in a)
    assert any(not torch.equal(a[k], _lora(tmp_path / "full" / "run" / "adapter")[k]) for k in a)
    logs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if "learning_rate" in x]
    assert logs[-1]["step"] == 4 and logs[-1]["learning_rate"] == pytest.approx(5e-3 * (6 - 3) / 6)  # 6-step decay
    assert [json.loads(x)["step"] for x in (run / "dev_log.jsonl").read_text().splitlines()] == [0, 2, 4]
    with pytest.raises(ConfigError, match=r"stop_at_step=7: must be 0 \(off\) or between 1 and max_steps \(6\)"):
        _cfg(tmp_path / "bad", tiny_llama_path, train_data, max_steps=6, stop_at_step=7)


def test_a_multimodal_checkpoint_trains_its_text_decoder_only(tmp_path, tiny_llama_path, train_data):
    """A Gemma-3-style checkpoint (text decoder + vision encoder, loaded by AutoModelForCausalLM as
    Gemma3ForConditionalGeneration) trains end to end, and its adapter holds LoRA on the decoder's layers only."""
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration

    from biasunlearn.unlearn.pipeline import train_adapter

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    v = len(tok) + 8
    mcfg = Gemma3Config(
        text_config=dict(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, max_position_embeddings=256, sliding_window=64,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=v - 1, boi_token_index=v - 3, eoi_token_index=v - 2)
    torch.manual_seed(0)
    path = tmp_path / "mm"
    Gemma3ForConditionalGeneration(mcfg).save_pretrained(path)
    tok.save_pretrained(path)
    cfg = _cfg(tmp_path, path, train_data, max_steps=2, eval_every=1)
    assert train_adapter(cfg, log=lambda s: None)["steps"] == 2
    keys = list(_lora(tmp_path / "run" / "final_adapter"))
    assert keys and not [k for k in keys if "vision" in k]
    layers = {k.split(".layers.")[1].split(".")[0] for k in keys}
    assert layers == {"0", "1"} and any(".q_proj." in k for k in keys) and any(".up_proj." in k for k in keys)
    # the adapter fits its model for transfer and export: the excluded vision layers are not "targeted but missing"
    from transformers import AutoModelForCausalLM

    from biasunlearn.deploy import fit_problems

    fresh = AutoModelForCausalLM.from_pretrained(path)
    assert fit_problems(fresh, tmp_path / "run" / "final_adapter") == []


def test_a_pool_that_shares_a_term_or_a_sentence_with_the_test_set_is_refused(tmp_path, tiny_llama_path, train_data):
    """Training, and every baseline (the same checked_splits), refuse a pool that shares a target term (in any case)
    or a sentence with the held-out test set, before any model is trained; the report names what is shared."""
    from biasunlearn.data.splits import checked_splits, overlap_report
    from biasunlearn.data.stereoset import StereoSetExample
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.pipeline import train_adapter

    def ex(i, target, stereo):
        return StereoSetExample(id=f"x{i}", task="intrasentence", bias_type="gender", target=target,
                                context="c", stereotype=stereo, anti_stereotype=f"{target} a{i}.",
                                unrelated=f"{target} u{i}.")

    rep = overlap_report([ex(0, "Mother", "Same sentence."), ex(1, "uncle", "Other.")],
                         [ex(2, "mother", "same sentence."), ex(3, "aunt", "Third.")])
    assert rep["shared_target_terms"] == ["mother"] and rep["shared_sentences"] == 1
    assert (rep["train_terms"], rep["test_terms"]) == (2, 2)

    pool = _pool()
    pool[0] = {**pool[0], "target": "Mother"}  # the fake test set's gender term, capitalised
    (train_data / "leaky.json").write_text(json.dumps(pool))
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, train_pool="leaky.json")
    with pytest.raises(ConfigError, match=r"overlaps the test set .*shared target term\(s\) \['mother'\]"):
        checked_splits(cfg)
    with pytest.raises(ConfigError, match="overlaps the test set"):
        train_adapter(cfg, log=lambda s: None)
    assert not (tmp_path / "run" / "adapter").exists()
    clean, test, overlap = checked_splits(_cfg(tmp_path, tiny_llama_path, train_data))
    assert overlap["shared_target_terms"] == [] and overlap["shared_sentences"] == 0 and len(test) > 0


def test_the_step_loss_is_the_weighted_sum_of_its_three_logged_parts(tmp_path, tiny_llama_path, train_data):
    """loss = alpha_forget * NPO + alpha_retain * CE + alpha_kl * KL, each weight on its own term: three different
    weights, so a weight on the wrong term shows; the KL is nonzero from the second step on (the adapter moved)."""
    from biasunlearn.unlearn.pipeline import train_adapter

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, max_steps=3, alpha_forget=0.5, alpha_retain=0.35,
               alpha_kl=0.15, swap_mode="none", lms_guard=100.0)
    train_adapter(cfg, log=lambda s: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_forget" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        want = 0.5 * r["loss_forget"] + 0.35 * r["loss_retain"] + 0.15 * r["loss_kl"]
        assert r["loss"] == pytest.approx(want, rel=2e-3, abs=2e-4), r
    assert steps[-1]["loss_kl"] > 1e-4
    assert abs(steps[-1]["loss_retain"] - steps[-1]["loss_kl"]) > 0.1  # a retain/KL weight swap would show


def test_resume_refuses_a_train_pool_changed_since_the_start(tmp_path, tiny_llama_path, train_data):
    """The steps after a resume must train on the data the steps before did: a pool file changed since the run
    started (its sha256 in splits.json) stops --resume with the file named; the same pool resumes."""
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn import pipeline

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, max_steps=2, save_steps=2)
    pipeline.train_adapter(cfg, log=lambda s: None)
    before = json.loads((tmp_path / "run" / "splits.json").read_text())
    kept = {n: (tmp_path / "run" / n).read_bytes() for n in ("train_summary.json", "log.jsonl", "dev_log.jsonl")}
    pool = json.loads((train_data / "pool.json").read_text())
    (train_data / "pool.json").write_text(json.dumps(pool[:-1]))  # one item fewer
    more = _cfg(tmp_path, tiny_llama_path, train_data, max_steps=4, save_steps=2)
    with pytest.raises(ConfigError, match=r"train pool changed since this run started \(pool.json: sha256"):
        pipeline.train_adapter(more, resume=True, log=lambda s: None)
    assert json.loads((tmp_path / "run" / "splits.json").read_text()) == before  # nothing rewritten
    # refused before anything of the run is touched: it still reads as the finished run it was
    assert {n: (tmp_path / "run" / n).read_bytes() for n in kept} == kept
    assert not (tmp_path / "run" / "checkpoint-4").exists()
    (train_data / "pool.json").write_text(json.dumps(pool))
    pipeline.train_adapter(more, resume=True, log=lambda s: None)
    assert (tmp_path / "run" / "checkpoint-4").exists()



def test_balance_valence_reaches_the_trainer_and_logs_the_groups(tmp_path, tiny_llama_path, train_data,
                                                                 monkeypatch):
    """The pool's words by VADER: lazy/busy (stereotype more negative), strong/gentle and rich/poor (more
    positive): the log counts each type's train pairs so, and every step deals a type's forget draws over the two
    groups in turn."""
    from biasunlearn.unlearn import pipeline
    from biasunlearn.unlearn.sets import UnlearnSets

    drawn, logs = [], []
    chunk = UnlearnSets.chunk

    def spy(self, step, directions, *a, **kw):
        out = chunk(self, step, directions, *a, **kw)
        drawn.append((kw.get("balance_valence"), [it.y for it in out["forget"]]))
        return out

    monkeypatch.setattr(UnlearnSets, "chunk", spy)
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, balance_types=True, balance_valence=True, max_steps=2,
               forget_batch_size=4, adversarial_share=0.0)
    pipeline.train_adapter(cfg, log=logs.append)
    train_ids = set(json.loads((tmp_path / "run" / "splits.json").read_text())["train_ids"])
    pool = [e for e in _pool() if e["id"] in train_ids]
    want = {}
    for b in ("gender", "race"):
        words = [e["data"]["stereotype"]["sentence"].split()[-2] for e in pool if e["bias_type"] == b]
        want[b] = f"{b} {words.count('lazy')}/0/{len(words) - words.count('lazy')}"
    assert any(m.startswith("[train] balance_valence: train pairs by valence") and f"{want['gender']}; "
               f"{want['race']}" in m for m in logs), logs
    assert drawn and all(flag is True for flag, _ in drawn)
    # draws go to the types in turn (gender, race, gender, race), and each type's draws to its groups in turn
    # (negative: lazy; positive: strong or rich)
    for _, ys in drawn:
        assert [y.split()[0] == "lazy" for y in ys] == [True, True, False, False], ys


def test_train_on_dev_trains_every_pool_pair_and_keeps_no_dev_choice(tmp_path, tiny_llama_path, train_data,
                                                                      monkeypatch):
    """train_on_dev: the dev pairs join the train pairs (the sets are built from both), the dev checks are marked as
    read on trained data and choose nothing (no best adapter), and the adapter is the fixed step's. Without a
    schedule fixed beforehand, or with swaps (which read dev), the setting is refused."""
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn import pipeline
    from biasunlearn.unlearn.sets import UnlearnSets

    seen, logs = {}, []
    init = UnlearnSets.__init__

    def spy(self, train, *a, **kw):
        seen["ids"] = sorted(e.id for e in train)
        init(self, train, *a, **kw)

    monkeypatch.setattr(UnlearnSets, "__init__", spy)
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, train_on_dev=True, swap_mode="none", max_steps=4,
               stop_at_step=4, early_stop_tolerance=-1.0)
    summary = pipeline.train_adapter(cfg, log=logs.append)
    run = tmp_path / "run"
    splits = json.loads((run / "splits.json").read_text())
    assert splits["dev_ids"] and splits["dev_trained_on"] is True
    assert seen["ids"] == sorted(splits["train_ids"] + splits["dev_ids"]) == sorted(e["id"] for e in _pool())
    n_dev = len(splits["dev_ids"])
    assert any(m.startswith(f"[train] train_on_dev: the {n_dev} dev pairs") for m in logs), logs
    checks = [json.loads(x) for x in (run / "dev_log.jsonl").read_text().splitlines()]
    assert [c["step"] for c in checks] == [0, 2, 4] and all(c["trained_on"] is True for c in checks)
    assert any(m.startswith("[dev, trained on] step 2: SS") for m in logs)
    assert summary["best"] is None and not (run / "best_adapter").exists()
    a, last = _lora(run / "adapter"), _lora(run / "final_adapter")
    assert all(torch.equal(a[k], last[k]) for k in a)
    # without the setting, the same run trains the train split alone and keeps a best adapter
    plain = _cfg(tmp_path / "plain", tiny_llama_path, train_data, swap_mode="none", max_steps=4, stop_at_step=4)
    plain_logs = []
    pipeline.train_adapter(plain, log=plain_logs.append)
    # the note on a dev SS of few terms speaks of a choice: none is made on trained dev checks
    coarse = [m for m in plain_logs if "is a mean over fewer than 5 target terms" in m]
    assert coarse and not any("is a mean over fewer than 5 target terms" in m for m in logs)
    assert seen["ids"] == sorted(splits["train_ids"])
    assert (tmp_path / "plain" / "run" / "best_adapter").exists()
    assert "trained_on" not in (tmp_path / "plain" / "run" / "dev_log.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"train_on_dev=true with stop_at_step=0, swap_mode='none'"):
        _cfg(tmp_path / "bad", tiny_llama_path, train_data, train_on_dev=True, swap_mode="none")
    with pytest.raises(ConfigError, match=r"train_on_dev=true with stop_at_step=4, swap_mode='swap'"):
        _cfg(tmp_path / "bad", tiny_llama_path, train_data, train_on_dev=True, stop_at_step=4)


def test_scheduled_swap_trains_the_type_swapped_from_its_step_and_records_it(tmp_path, tiny_llama_path, train_data,
                                                                             monkeypatch):
    """scheduled_swaps race=2: the chunks of steps 0 and 1 forget race's stereotypes, those of steps 2 and 3 its
    anti-stereotypes (gender's stereotypes throughout); the swap is logged, recorded with the run's swaps, and the
    dev check at step 2 already shows it. A type the pool lacks is refused before training."""
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn import pipeline
    from biasunlearn.unlearn.sets import UnlearnSets

    drawn, logs = [], []
    chunk = UnlearnSets.chunk

    def spy(self, step, directions, *a, **kw):
        out = chunk(self, step, directions, *a, **kw)
        drawn.append((step, dict(directions), {(it.bias_type, it.key.rpartition(":")[2]) for it in out["forget"]}))
        return out

    monkeypatch.setattr(UnlearnSets, "chunk", spy)
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, swap_mode="none", scheduled_swaps="race=2", max_steps=4,
               balance_types=True, forget_batch_size=4, adversarial_share=0.0)
    summary = pipeline.train_adapter(cfg, log=logs.append)
    assert [s for s, _, _ in drawn] == [0, 1, 2, 3]
    for step, directions, labels in drawn:
        race = "stereotype" if step < 2 else "anti-stereotype"
        assert directions == {"gender": 1, "race": 1 if step < 2 else -1}, step
        assert labels == {("gender", "stereotype"), ("race", race)}, (step, labels)
    assert summary["swaps"] == [{"step": 2, "bias_type": "race", "ss": None, "direction": -1, "scheduled": True}]
    assert any(m.startswith("[train] step 2: race swapped as scheduled") for m in logs), logs
    dev = [json.loads(x) for x in (tmp_path / "run" / "dev_log.jsonl").read_text().splitlines()]
    assert [(d["step"], d["directions"]["race"]) for d in dev] == [(0, 1), (2, -1), (4, -1)]
    # the plots mark a swap that read no dev SS too (a failed plot would be a warning in the log, not a file)
    assert (tmp_path / "run" / "dev_ss.png").stat().st_size > 0 and not any("not drawn" in m for m in logs), logs
    with pytest.raises(ConfigError, match="scheduled_swaps names religion: not a bias type of the train pool "
                                          r"\(gender, race\)"):
        pipeline.train_adapter(_cfg(tmp_path / "bad", tiny_llama_path, train_data, swap_mode="none",
                                    scheduled_swaps="religion=1"), log=lambda s: None)


def test_the_run_report_lists_scheduled_and_dev_swaps(tmp_path):
    """report.md's swap list: a dev swap with the dev SS it read, a scheduled one (no dev SS) said to be scheduled."""
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.pipeline import write_report

    cfg = make_config(output_dir=str(tmp_path), swap_mode="none", scheduled_swaps="religion=100")
    doc = {"model": {"name": "tiny"}, "benchmarks": {}}
    summary = {"steps": 150, "swaps": [{"step": 50, "bias_type": "race", "ss": 47.25, "direction": -1},
                                       {"step": 100, "bias_type": "religion", "ss": None, "direction": -1,
                                        "scheduled": True}]}
    report = write_report(tmp_path, doc, doc, summary, cfg).read_text()
    assert ("- swaps: 2\n  - step 50: race dev SS 47.2 -> direction -1\n"
            "  - step 100: religion swapped as scheduled (scheduled_swaps) -> direction -1\n") in report, report


def test_training_data_and_draw_chunk_are_what_train_and_the_step_bench_use(tmp_path, tiny_llama_path, train_data,
                                                                             monkeypatch):
    """pipeline.training_data builds the pairs and sets `train` trains on, with the config's options applied (here the
    dev pairs trained too, one pair left out by pattern, batches dealt over valence), and the trainer's draw_chunk
    deals a step's chunk with every one of those options; bench/bench_step.py builds its chunks through both, so the
    step cost it reports is for the recipe's real batches (its JSON says which options were on)."""
    import sys

    from biasunlearn.models import load_model
    from biasunlearn.unlearn.controller import SwapController
    from biasunlearn.unlearn.pipeline import prepare_lora, training_data
    from biasunlearn.unlearn.trainer import BiasUnlearnTrainer

    opts = dict(train_on_dev=True, swap_mode="none", stop_at_step=4, early_stop_tolerance=-1.0, balance_types=True,
                balance_valence=True, valence_weights="positive=2", train_exclude_pattern="Korean was lazy")
    cfg = _cfg(tmp_path, tiny_llama_path, train_data, **opts)
    model, tok, info = load_model(str(tiny_llama_path))
    model = prepare_lora(model, cfg)
    logs = []
    data = training_data(cfg, model, tok, tmp_path / "texts", info.resolved, log=logs.append)
    pool = {e["id"]: e for e in _pool()}
    # every pool pair (train split and dev slice) trains, but the one the pattern names
    assert [e.id for e in data.excluded] == [i for i, e in pool.items() if e["target"] == "Korean"
                                             and "lazy" in e["data"]["stereotype"]["sentence"]]
    assert sorted(e.id for e in data.train) == sorted(set(pool) - {data.excluded[0].id})
    assert {e.id for e in data.splits.dev} <= {e.id for e in data.train}
    # VADER's groups: lazy/busy more negative, strong/gentle and rich/poor more positive
    assert data.sets.valence == {e.id: "negative" if "lazy" in e.stereotype else "positive" for e in data.train}
    assert any(m.startswith("[train] balance_valence:") for m in logs)
    assert any(m.startswith("[train] train_exclude_pattern: 1 of 18 train pairs left out") for m in logs)
    tr = BiasUnlearnTrainer(model=model, args=cfg, sets=data.sets, controller=SwapController(data.sets.bias_types),
                            tokenizer=tok)
    dirs = {b: 1 for b in data.sets.bias_types}
    valence_draws = [data.sets.chunk(i, dirs, 2, 4, 3, balance_types=True, balance_valence=True,
                                     valence_weights={"positive": 2}) for i in range(6)]
    even_draws = [data.sets.chunk(i, dirs, 2, 4, 3, balance_types=True, balance_valence=True) for i in range(6)]
    plain_draws = [data.sets.chunk(i, dirs, 2, 4, 3, balance_types=True) for i in range(6)]
    drawn = [tr.draw_chunk(i) for i in range(6)]
    assert drawn == valence_draws and drawn != even_draws and drawn != plain_draws
    assert any(m.startswith("[train] balance_valence:") and m.endswith("; slots per group: positive=2") for m in logs)

    # the step bench on the same settings: its chunks come from the same two functions
    bench = load_bench("bench_step")
    (tmp_path / "r.yaml").write_text("\n".join(
        [f"data_dir: {train_data}", "train_pool: pool.json", "dev_fraction: 0.3", "min_dev_per_type: 1",
         "forget_batch_size: 2", "retain_batch_size: 4", "unrelated_batch_size: 3", "seed: 0", "max_steps: 4",
         "eval_every: 2"] + [f"{k}: {v}" for k, v in opts.items()]) + "\n")
    seen = []
    orig = BiasUnlearnTrainer.draw_chunk

    def spy(self, index):
        seen.append(index)
        return orig(self, index)

    monkeypatch.setattr(BiasUnlearnTrainer, "draw_chunk", spy)
    out = tmp_path / "step.json"
    monkeypatch.setattr(sys, "argv", ["bench_step.py", "--model", str(tiny_llama_path), "--config",
                                      str(tmp_path / "r.yaml"), "--steps", "2", "--warmup", "0", "--layout",
                                      "packed", "--texts-dir", str(tmp_path / "texts"), "--out", str(out)])
    bench.main()
    res = json.loads(out.read_text())
    assert res["chunk"]["train_on_dev"] is True and res["chunk"]["balance_valence"] is True
    assert res["chunk"]["valence_weights"] == "positive=2"
    assert [len(res["all_s"][k]) for k in ("bare_packed", "biasunlearn_packed")] == [2, 2]
    assert res["ratio"]["packed"] == pytest.approx(res["median_s"]["biasunlearn_packed"]
                                                   / res["median_s"]["bare_packed"])
    assert seen == [0, 0, 1, 1]  # bare and BiasUnlearn draw the same chunk at each step


def test_the_train_pool_is_checked_before_the_model_loads_and_a_dev_slice_larger_than_train_is_said(tmp_path,
                                                                                                     train_data):
    """check_train_pool (called before the model loads, before --overwrite clears an old run): a type setting
    naming a type the run does not train is refused; a dev slice larger than the train split is a warning that
    names how many pairs of each type are left to train on; the usual split says nothing."""
    from biasunlearn.errors import ConfigError, DataError
    from biasunlearn.unlearn.pipeline import check_train_pool

    logs = []
    splits = check_train_pool(_cfg(tmp_path, "unused", train_data), log=logs.append)
    assert (len(splits.train), len(splits.dev), logs) == (12, 6, [])  # 9 pairs per type, one 3-pair term as dev
    splits = check_train_pool(_cfg(tmp_path, "unused", train_data, dev_fraction=0.9), log=logs.append)
    # each type keeps one of its three terms to train on, whatever the fraction
    assert (len(splits.train), len(splits.dev)) == (6, 12)
    assert logs == ["[train] warning: dev_fraction=0.9 holds out 12 of the pool's 18 pairs as dev and leaves 6 to "
                    "train on (gender 3, race 3); the dev slice only checks the run (train_on_dev trains it too)"]
    logs.clear()
    check_train_pool(_cfg(tmp_path, "unused", train_data, dev_fraction=0.9, train_on_dev=True, stop_at_step=4,
                          swap_mode="none"),
                     log=logs.append)
    assert logs == []  # the dev pairs train too
    with pytest.raises(ConfigError, match=r"scheduled_swaps names religion: not a bias type of the train pool "
                                          r"\(gender, race\)"):
        check_train_pool(_cfg(tmp_path, "unused", train_data, swap_mode="none", scheduled_swaps="religion=1"))
    # a type left without pairs by train_exclude_pattern is not one the run trains
    with pytest.raises(ConfigError, match=r"type_weights names race: not a bias type of the train pool \(gender\)"):
        check_train_pool(_cfg(tmp_path, "unused", train_data, balance_types=True, type_weights="race=2",
                              train_exclude_pattern="Kenyan|Korean|Peruvian"))
    # the KL texts that need no model: every pool sentence names its term, so dropping them leaves none
    with pytest.raises(ConfigError, match=r"^unrelated_drop_terms=true left no text for the KL term \(all 12 "
                                          r"stereoset texts name a target term of the train split\)$"):
        check_train_pool(_cfg(tmp_path, "unused", train_data, unrelated_drop_terms=True))
    assert len(check_train_pool(_cfg(tmp_path, "unused", train_data, unrelated_source="wikitext",
                                     unrelated_drop_terms=True), log=logs.append).train) == 12
    wiki = train_data / "text" / "wikitext-2-raw" / "wiki.test.raw"
    wiki.unlink()
    with pytest.raises(DataError) as ei:
        check_train_pool(_cfg(tmp_path, "unused", train_data, unrelated_source="wikitext"))
    assert ei.value.path == str(wiki)


def test_an_ablation_without_kl_may_draw_no_kl_batch(tmp_path, tiny_llama_path, train_data):
    """alpha_kl 0 with unrelated_batch_size 0 (the config allows it: the KL term is off): no reference pass over an
    empty batch (it raised on the first step), loss_kl logged as 0, and the loss is the other two terms alone."""
    from biasunlearn.io import read_log_jsonl
    from biasunlearn.unlearn.pipeline import train_adapter

    cfg = _cfg(tmp_path, tiny_llama_path, train_data, alpha_kl=0.0, unrelated_batch_size=0, max_steps=2)
    assert train_adapter(cfg, log=lambda s: None)["steps"] == 2
    rows = [r for r in read_log_jsonl(tmp_path / "run" / "log.jsonl") if "loss_forget" in r]
    assert len(rows) == 2
    for r in rows:
        assert r["loss_kl"] == 0.0
        assert r["loss"] == pytest.approx(0.4 * r["loss_forget"] + 0.4 * r["loss_retain"], rel=1e-5)
