"""`biasunlearn train` from the command line: YAML config, flags overriding it, errors, and the whole pipeline
(train -> evaluate before/after -> report) on a tiny model."""
import json
import re
import shutil

import pytest

from biasunlearn.cli import main
from biasunlearn.errors import ConfigError
from biasunlearn.train_cli import parse_train_config
from test_unlearn_train import _pool


def test_yaml_then_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 2.5e-4\nnpo_beta: 1.0\nmax_steps: 80\n")
    cfg, resume = parse_train_config(["--config", str(y), "--out", str(tmp_path / "r"), "--max_steps", "7"])
    assert cfg.learning_rate == 2.5e-4 and cfg.npo_beta == 1.0 and cfg.max_steps == 7 and not resume
    assert cfg.output_dir == str(tmp_path / "r") and cfg.save_steps == cfg.eval_every == 20
    assert cfg.alpha_forget == 0.4 and cfg.retain_batch_size == 28 and cfg.adversarial_share == 0.25
    assert cfg.eval_dtype == "auto"  # the report is read in bf16 only where the machine computes it natively


def test_config_errors(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rat: 1e-4\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) learning_rat \(did you mean learning_rate\?\)"):
        parse_train_config(["--config", str(y), "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="eval_benchmarks='stereoset,foo': unknown foo"):
        parse_train_config(["--out", str(tmp_path), "--eval_benchmarks", "stereoset,foo"])
    with pytest.raises(ConfigError, match="eval_benchmarks='': names none"):
        parse_train_config(["--out", str(tmp_path), "--eval_benchmarks", ""])
    cfg, _ = parse_train_config(["--out", str(tmp_path), "--eval_benchmarks", "", "--skip_final_eval", "true"])
    assert cfg.eval_benchmarks == ""  # training alone needs none
    with pytest.raises(ConfigError, match="needs --out"):
        parse_train_config([])
    with pytest.raises(ConfigError, match="swap_mode"):
        parse_train_config(["--out", str(tmp_path), "--swap_mode", "sometimes"])
    with pytest.raises(ConfigError, match="eval_dtype='fp8': expected one of auto, float32, bfloat16"):
        parse_train_config(["--out", str(tmp_path), "--eval_dtype", "fp8"])


@pytest.mark.parametrize("name", ["smollm2-cpu.yaml", "gemma3-270m-cpu.yaml"])
def test_shipped_recipes_parse_to_what_the_yaml_says(tmp_path, name):
    import yaml
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / name
    values = yaml.safe_load(path.read_text())
    cfg, _ = parse_train_config(["--config", str(path), "--out", str(tmp_path / "r")])
    for k, v in values.items():  # every setting arrives unchanged (a typo'd key would have raised)
        assert getattr(cfg, k) == v, k
    assert cfg.save_steps == cfg.eval_every == values["eval_every"]
    # the same recipe by name, from the installed package (no checkout needed), with or without .yaml
    for ref in (name.removesuffix(".yaml"), name):
        by_name, _ = parse_train_config(["--config", ref, "--out", str(tmp_path / "r")])
        assert by_name.to_dict() == cfg.to_dict()


def test_config_names_a_file_or_a_shipped_recipe(tmp_path):
    from biasunlearn.train_cli import builtin_recipes

    assert set(builtin_recipes()) == {"smollm2-cpu", "gemma3-270m-cpu"}
    with pytest.raises(ConfigError, match=r"--config smollm2-gpu: no such file, and not a shipped recipe "
                                          r"\(gemma3-270m-cpu, smollm2-cpu\)"):
        parse_train_config(["--config", "smollm2-gpu", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="no such file"):  # a path is never taken for a recipe name
        parse_train_config(["--config", "elsewhere/smollm2-cpu.yaml", "--out", str(tmp_path)])


def test_train_cli_end_to_end(tmp_path, tiny_llama_path, fake_data, capsys):
    data = tmp_path / "data"
    shutil.copytree(fake_data, data)
    (data / "pool.json").write_text(json.dumps(_pool()))
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--model", str(tiny_llama_path), "--data_dir", str(data),
               "--train_pool", "pool.json", "--max_steps", "2", "--eval_every", "1", "--forget_batch_size", "2",
               "--retain_batch_size", "4", "--unrelated_batch_size", "2", "--dev_fraction", "0.3",
               "--min_dev_per_type", "1", "--use_cpu", "true", "--bf16", "false", "--disable_tqdm", "true",
               "--eval_dtype", "float32", "--collapse_lms_drop", "101", "--eval_bbq_per_category", "0",
               "--logging_steps", "1"])
    assert rc == 0
    printed = capsys.readouterr()
    # stdout holds the results alone; the Trainer's own log lines go to stderr with the rest of the progress
    assert printed.out.lstrip().startswith("## Evaluation:") and "'loss_forget'" not in printed.out
    assert "'loss_forget'" in printed.err and "'train_runtime'" in printed.err
    report = (out / "report.md").read_text()
    assert "held-out" in report and "StereoSet" in report
    assert "How precise the StereoSet SS is" in report  # from the two reads' stereoset_scores.jsonl.gz
    assert "Which target terms each domain's SS comes from" in report
    for png in ("losses.png", "dev_ss.png", "dev_margin.png"):  # every plot the run wrote is in the report
        assert (out / png).exists() and f"]({png})" in report
    assert "- adapter/ (the one evaluated above): best dev check; merged into the weights for the read: " \
        "`merge_and_unload`, in float32\n" in report
    summary = json.loads((out / "train_summary.json").read_text())
    (score, step) = summary["best"]
    assert f"- best dev check (best_adapter/): step {step}, largest |dev SS - 50| over the bias types " \
        f"{score[1][0]:.2f}" in report
    assert (out / "eval_before" / "stereoset_scores.jsonl.gz").exists()
    before = json.loads((out / "eval_before" / "results.json").read_text())
    after = json.loads((out / "eval_after" / "results.json").read_text())
    assert before["model"]["adapter"] is None and after["model"]["adapter"] == str(out / "adapter")
    assert before["model"]["extra"] == {} and after["model"]["extra"] == {"adapter_merged": True}
    assert set(after["benchmarks"]) == {"stereoset", "crows_pairs", "bbq", "perplexity"}
    assert "StereoSet intrasentence" in printed.out


def test_settings_lists_every_biasunlearn_setting_with_its_default(capsys):
    from dataclasses import fields

    from transformers import TrainingArguments

    from biasunlearn.unlearn.config import UnlearnConfig

    assert main(["train", "--settings"]) == 0
    text = capsys.readouterr().out
    own = [f for f in fields(UnlearnConfig) if f.name not in TrainingArguments.__dataclass_fields__]
    assert len(own) > 40
    for f in own:
        assert f"  {f.name} (default {f.default!r})\n" in text, f.name
    assert "  npo_beta (default 0.1)\n      NPO's beta:" in text


def test_dry_run_prints_what_the_recipe_and_flags_resolve_to_and_trains_nothing(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "smollm2-cpu", "--dry-run", "--max_steps", "300", "--npo_beta", "2.5"]) == 0
    printed = capsys.readouterr().out
    got = yaml.safe_load(printed)
    recipe = yaml.safe_load(open(builtin_path("smollm2-cpu")))
    assert got["max_steps"] == 300 and got["npo_beta"] == 2.5  # the flags win
    for k, v in recipe.items():
        if k not in ("max_steps", "npo_beta"):
            assert got[k] == v, k  # the rest is the recipe
    assert got["alpha_forget"] == 0.4 and "output_dir" not in got  # no folder was named
    assert printed.startswith("# output_dir: not given (pass --out DIR")
    (tmp_path / "none.yaml").write_text(printed)  # read back, it still needs a folder, as the words given did
    with pytest.raises(ConfigError, match="train needs --out"):
        parse_train_config(["--config", str(tmp_path / "none.yaml")])
    (tmp_path / "none.yaml").unlink()
    assert list(tmp_path.iterdir()) == []  # nothing written
    # the run folder a real run would use: from --out, else from the YAML
    y = tmp_path / "c.yaml"
    y.write_text("output_dir: runs/from-yaml\nmax_steps: 7\n")
    assert main(["train", "--config", str(y), "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["output_dir"] == "runs/from-yaml"
    assert main(["train", "--config", str(y), "--out", "runs/x", "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["output_dir"] == "runs/x"
    # the underscore spelling too, as every other flag takes (it once stopped with "train needs --out DIR")
    assert main(["train", "--config", str(y), "--dry_run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["output_dir"] == "runs/from-yaml"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # still nothing written
    # a bad setting is refused as it would be by a real run
    assert main(["train", "--config", "smollm2-cpu", "--dry-run", "--swap_mode", "sometimes"]) == 2
    assert capsys.readouterr().err == ("biasunlearn: error: swap_mode='sometimes': expected one of swap, focus_worst, "
                                       "pause, none\n")


def builtin_path(name):
    from biasunlearn.train_cli import builtin_recipes

    return builtin_recipes()[name]


def test_resume_continues_with_the_settings_the_run_started_with(tmp_path, capsys):
    """--resume DIR reads DIR/config.json: the run's settings (transformers' own included) come back without being
    repeated, a --config and the flags given win over them (a flag given with its default value too), and a
    folder with no run is an error rather than a fresh 1000-step run."""
    from biasunlearn.io import write_json
    from biasunlearn.unlearn.config import make_config

    run = tmp_path / "run"
    started = make_config(output_dir=str(run), max_steps=6, eval_every=3, logging_steps=1,
                          gradient_accumulation_steps=2, npo_beta=2.5, lr_scheduler_type="constant", bf16=False)
    write_json(run / "config.json", {"method": "biasunlearn", "config": started.method_dict(),
                                     "settings": started.run_settings()})
    for words in (["--resume", str(run)], ["--out", str(run), "--resume"]):
        cfg, resume = parse_train_config(words)
        assert resume and cfg.output_dir == str(run)
        assert (cfg.max_steps, cfg.eval_every, cfg.save_steps, cfg.logging_steps) == (6, 3, 3, 1)
        assert (cfg.gradient_accumulation_steps, cfg.npo_beta, cfg.bf16) == (2, 2.5, False)
        assert cfg.method_dict() == started.method_dict()
    cfg, _ = parse_train_config(["--resume", str(run), "--max_steps", "9", "--npo_beta", "0.1"])
    assert (cfg.max_steps, cfg.npo_beta, cfg.eval_every) == (9, 0.1, 3)  # 0.1 is the default: given, so it wins
    y = tmp_path / "more.yaml"
    y.write_text("max_steps: 12\n")
    cfg, _ = parse_train_config(["--resume", str(run), "--config", str(y)])
    assert (cfg.max_steps, cfg.gradient_accumulation_steps) == (12, 2)
    # a run written before config.json kept every setting: its method settings, enums as their repr
    old = {**started.method_dict(), "lr_scheduler_type": "SchedulerType.CONSTANT", "optim": "OptimizerNames.ADAMW_TORCH"}
    write_json(run / "config.json", {"method": "biasunlearn", "config": old})
    cfg, _ = parse_train_config(["--resume", str(run)])
    assert cfg.max_steps == 6 and cfg.lr_scheduler_type.value == "constant" and cfg.optim.value == "adamw_torch"
    # a setting this version no longer has is left out, with a warning, rather than failing the resume
    write_json(run / "config.json", {"method": "biasunlearn", "settings": {"max_steps": 6, "retired_knob": 1}})
    cfg, _ = parse_train_config(["--resume", str(run)])
    assert cfg.max_steps == 6 and "left out: retired_knob" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"--resume .*typo: no run there \(no config.json\); to start a run in it, "
                                          r"use --out"):
        parse_train_config(["--resume", str(tmp_path / "typo")])
    with pytest.raises(ConfigError, match="name two folders"):
        parse_train_config(["--resume", str(run), "--out", str(tmp_path / "other")])
    # save_steps follows eval_every when a resume changes it; dict settings come back; the engine is not carried, the data
    # folder is (a resumed run reads the same data; --data_dir moves it)
    started = make_config(output_dir=str(run), max_steps=6, eval_every=3, lr_scheduler_type="cosine_with_min_lr",
                          lr_scheduler_kwargs={"min_lr": 1e-6}, data_dir=str(tmp_path))
    kept = started.run_settings()
    assert "save_steps" not in kept and "fsdp" not in kept and kept["data_dir"] == str(tmp_path)
    write_json(run / "config.json", {"method": "biasunlearn", "settings": kept})
    cfg, _ = parse_train_config(["--resume", str(run), "--eval_every", "2"])
    assert (cfg.eval_every, cfg.save_steps, cfg.lr_scheduler_kwargs) == (2, 2, {"min_lr": 1e-6})


def test_bad_values_and_shortened_flags_are_refused_before_anything_loads(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 1e-4\nmax_steps: '40'\npack_sequences: 'false'\n")  # YAML reads 1e-4 as text
    cfg, _ = parse_train_config(["--config", str(y), "--out", str(tmp_path / "r")])
    assert (cfg.learning_rate, cfg.max_steps, cfg.pack_sequences) == (1e-4, 40, False)
    y.write_text("max_steps: five\n")
    with pytest.raises(ConfigError, match=r"--config .*c.yaml: max_steps='five': expected a whole number"):
        parse_train_config(["--config", str(y), "--out", str(tmp_path / "r")])
    y.write_text("max_steps: 2.5\n")
    with pytest.raises(ConfigError, match="max_steps=2.5: expected a whole number"):
        parse_train_config(["--config", str(y), "--out", str(tmp_path / "r")])
    for text, message in (("swap_mode: off\n", "swap_mode=False: expected text"),  # YAML 1.1 reads off as false
                          ("max_steps: .inf\n", "max_steps=inf: expected a whole number"),
                          ("type_weights: {gender: 2}\n", "type_weights=.*expected text"),
                          ("learning_rate: true\n", "learning_rate=True: expected a number")):
        y.write_text(text)
        with pytest.raises(ConfigError, match=message):
            parse_train_config(["--config", str(y), "--out", str(tmp_path / "r")])
    out = ["--out", str(tmp_path / "r")]
    for flag, value, message in (("--learning_rate", "-1", "learning_rate=-1.0: must be above 0"),
                                 ("--eval_every", "0", "eval_every=0: must be above 0"),
                                 ("--alpha_forget", "-0.5", "alpha_forget=-0.5: must be 0 or more"),
                                 ("--adversarial_share", "1.5", "adversarial_share=1.5"),
                                 ("--max_step", "5", "unrecognised argument"),  # a shortening is not guessed
                                 ("--learning_rat", "1e-3", "unrecognised argument")):
        with pytest.raises(ConfigError, match=message):
            parse_train_config(out + [flag, value])


def test_dry_run_output_reads_back_as_a_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "smollm2-cpu", "--out", "runs/x", "--dry-run"]) == 0
    (tmp_path / "resolved.yaml").write_text(capsys.readouterr().out)
    again, _ = parse_train_config(["--config", str(tmp_path / "resolved.yaml")])
    recipe, _ = parse_train_config(["--config", "smollm2-cpu", "--out", "runs/x"])
    assert again.method_dict() == recipe.method_dict() and again.output_dir == "runs/x"
    assert again.method_dict()["lr_scheduler_type"] == "linear"


def _tiny_run_words(tmp_path, out, model, fake_data) -> list[str]:
    """`train` words for a 2-step run of `model` on a copy of the fake data with a small train pool."""
    data = tmp_path / "data"
    shutil.copytree(fake_data, data)
    (data / "pool.json").write_text(json.dumps(_pool()))
    return ["train", "--out", str(out), "--model", str(model), "--data_dir", str(data),
            "--train_pool", "pool.json", "--max_steps", "2", "--eval_every", "1", "--forget_batch_size", "2",
            "--retain_batch_size", "4", "--unrelated_batch_size", "2", "--dev_fraction", "0.3",
            "--min_dev_per_type", "1", "--use_cpu", "true", "--bf16", "false", "--disable_tqdm", "true",
            "--collapse_lms_drop", "101", "--skip_final_eval", "true"]


def test_a_folder_holding_a_run_is_refused_resumed_when_finished_is_left_as_it_is_or_overwritten(
        tmp_path, tiny_llama_path, fake_data, capsys):
    out = tmp_path / "run"
    words = _tiny_run_words(tmp_path, out, tiny_llama_path, fake_data)
    assert main(words) == 0
    summary = (out / "train_summary.json").read_bytes()
    log = (out / "log.jsonl").read_bytes()
    capsys.readouterr()
    assert main(words) == 2  # the same --out again, without --resume or --overwrite
    assert "holds a run already: --resume continues it" in capsys.readouterr().err
    assert (out / "train_summary.json").read_bytes() == summary
    # --resume on the finished run: its settings come from config.json; nothing is trained or rewritten
    assert main(["train", "--resume", str(out)]) == 0
    assert "holds a finished run (2 steps); nothing to train" in capsys.readouterr().err
    assert (out / "train_summary.json").read_bytes() == summary and (out / "log.jsonl").read_bytes() == log
    # --overwrite: a new run in its place (no earlier checkpoint or log mixed in)
    (out / "checkpoint-99").mkdir()
    assert main(words + ["--overwrite", "--max_steps", "1"]) == 0
    assert "--overwrite: removed the run in" in capsys.readouterr().err
    assert not (out / "checkpoint-99").exists() and json.loads((out / "train_summary.json").read_text())["steps"] == 1
    steps = [json.loads(x)["step"] for x in (out / "dev_log.jsonl").read_text().splitlines()]
    assert steps == [0, 1]
    # resumed to report it, with a quick look at 2 examples a benchmark: evaluated and reported, not retrained
    assert main(["train", "--resume", str(out), "--skip_final_eval", "false", "--eval_limit", "2",
                 "--eval_benchmarks", "stereoset,crows_pairs", "--eval_dtype", "float32"]) == 0
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 1
    after = json.loads((out / "eval_after" / "results.json").read_text())
    assert after["eval_config"]["limit"] == 2 and set(after["benchmarks"]) == {"stereoset", "crows_pairs"}
    assert after["benchmarks"]["crows_pairs"]["metrics"]["length_normalised"]["overall"]["n"] == 2
    assert "A quick look, not a measurement: at most 2 examples per benchmark" in (out / "report.md").read_text()
    first = after["model"]["adapter_sha256"]
    # read again with other evaluation settings: not the quick look's results
    assert main(["train", "--resume", str(out), "--skip_final_eval", "false", "--eval_limit", "3",
                 "--eval_benchmarks", "stereoset,crows_pairs", "--eval_dtype", "float32"]) == 0
    after = json.loads((out / "eval_after" / "results.json").read_text())
    assert after["eval_config"]["limit"] == 3 and after["model"]["adapter_sha256"] == first
    assert after["model"]["extra"] == {"adapter_merged": True}  # the after-read merges the adapter by default
    # the same adapter read unmerged: read again (not the merged read reused), with the same scores in float32
    assert main(["train", "--resume", str(out), "--skip_final_eval", "false", "--eval_limit", "3",
                 "--eval_benchmarks", "stereoset,crows_pairs", "--eval_dtype", "float32",
                 "--eval_merge_adapter", "false"]) == 0
    unmerged = json.loads((out / "eval_after" / "results.json").read_text())
    assert unmerged["model"]["extra"] == {} and unmerged["created"] != after["created"]
    for bench, keys in (("stereoset", ("intrasentence", "overall", "SS")),
                        ("crows_pairs", ("length_normalised", "overall", "score"))):
        a, b = after["benchmarks"][bench]["metrics"], unmerged["benchmarks"][bench]["metrics"]
        for k in keys:
            a, b = a[k], b[k]
        assert a == pytest.approx(b, abs=1e-9)
    # trained further: the after-read is of the new adapter, and the summary of the longer run
    assert main(["train", "--resume", str(out), "--max_steps", "3", "--stop_at_step", "3",
                 "--skip_final_eval", "false", "--eval_limit", "3",
                 "--eval_benchmarks", "stereoset,crows_pairs", "--eval_dtype", "float32"]) == 0
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 3
    after = json.loads((out / "eval_after" / "results.json").read_text())
    assert after["model"]["adapter_sha256"] != first
    # a finished run whose checkpoints were deleted to save space is still finished
    for ck in out.glob("checkpoint-*"):
        shutil.rmtree(ck)
    summary = (out / "train_summary.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    assert "holds a finished run (3 steps)" in capsys.readouterr().err
    assert (out / "train_summary.json").read_bytes() == summary
    # a folder holding something else's config.json (a model's) is not a run
    from biasunlearn.train_cli import holds_run

    assert holds_run(out) and not holds_run(tiny_llama_path)
    # ... so it is neither resumed nor trained into: a run there would write over the model's config.json
    model_copy = tmp_path / "model_copy"
    shutil.copytree(tiny_llama_path, model_copy)
    model_config = (model_copy / "config.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(model_copy)]) == 2
    assert f"--resume {model_copy}: no run there" in capsys.readouterr().err
    assert main(words[:1] + ["--out", str(model_copy)] + words[3:]) == 2
    assert f"--out {model_copy}: a run there would write over it ({model_copy / 'config.json'} is not a run's: " \
        "a model's, model_type 'llama'); name another --out" in capsys.readouterr().err
    assert (model_copy / "config.json").read_bytes() == model_config
    assert sorted(p.name for p in model_copy.iterdir()) == sorted(p.name for p in tiny_llama_path.iterdir())
    cda = tmp_path / "cda"  # another method's run (a compare folder)
    cda.mkdir()
    (cda / "config.json").write_text(json.dumps({"method": "cda", "config": {}}))
    assert main(words[:1] + ["--out", str(cda)] + words[3:]) == 2
    assert "holds a 'cda' run (from `biasunlearn compare`?), not a BiasUnlearn one" in capsys.readouterr().err
    assert main(["train", "--resume", str(cda)]) == 2
    assert f"--resume {cda}: it holds a 'cda' run" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(words[:1] + ["--out", str(afile)] + words[3:]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and afile.read_text() == "mine"
    # a run continues on the model it started on
    assert main(["train", "--resume", str(out), "--model", str(model_copy)]) == 2
    assert f"was started on {tiny_llama_path}, not {model_copy}" in capsys.readouterr().err


def test_a_start_that_fails_to_load_the_model_leaves_no_empty_run_folder(tmp_path, fake_data, capsys):
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "README.md").write_text("no weights here")
    out = tmp_path / "runs" / "new"
    data = tmp_path / "data"  # with a train pool: the pool is read before the model loads
    shutil.copytree(fake_data, data)
    (data / "pool.json").write_text(json.dumps(_pool()))
    args = ["train", "--model", str(not_a_model), "--data_dir", str(data), "--train_pool", "pool.json",
            "--use_cpu", "true", "--skip_final_eval", "true"]
    assert main(args + ["--out", str(out)]) == 2
    said = (f"biasunlearn: error: --model {not_a_model}: a local model must be a save_pretrained folder with "
            "config.json")
    err = capsys.readouterr().err
    assert err.endswith(said + "\n") and err.count("error:") == 1, err
    assert not (tmp_path / "runs").exists()  # both folders the start made are gone
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(args + ["--out", str(kept)]) == 2
    assert capsys.readouterr().err.endswith(said + "\n")
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    assert (kept / "notes.txt").read_text() == "mine"  # a folder that held something is left as it was


def test_set_pairs_are_read_as_yaml_and_typed_as_config_values():
    from biasunlearn.unlearn.config import settings_from_pairs

    got = settings_from_pairs(["lora-r=4", "learning_rate=1e-4", "lora_targets=q_proj,v_proj",
                               "pack_sequences=false"])
    assert got == {"lora_r": 4, "learning_rate": 1e-4, "lora_targets": "q_proj,v_proj", "pack_sequences": False}
    with pytest.raises(ConfigError, match=r"--set: swap_mode=False: expected text"):  # YAML reads off as false
        settings_from_pairs(["swap_mode=off"])
    with pytest.raises(ConfigError, match=r"--set 'lora_r': expected NAME=VALUE"):
        settings_from_pairs(["lora_r"])
    with pytest.raises(ConfigError, match=r"--set: max_steps='ten': expected a whole number"):
        settings_from_pairs(["max_steps=ten"])


def test_resume_passes_over_a_damaged_checkpoint_and_refuses_when_none_is_usable(tmp_path, tiny_llama_path,
                                                                                 fake_data, capsys):
    out = tmp_path / "run"
    words = _tiny_run_words(tmp_path, out, tiny_llama_path, fake_data) + ["--save_steps", "1",
                                                                          "--early_stop_tolerance", "-1"]
    assert main(words) == 0
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()
    (out / "train_summary.json").unlink()  # as if killed after the last save
    weights = out / "checkpoint-2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short by the kill
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint-2'} cannot be used (adapter_model.safetensors is damaged or cut short" in err
    assert "resuming from checkpoint-1 instead" in err and f"resuming from {out / 'checkpoint-1'}" in err
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 2
    # every checkpoint damaged: an error naming it, not a start from step 0 over the run's logs
    (out / "train_summary.json").unlink()
    for ck in out.glob("checkpoint-*"):
        (ck / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")
    log = (out / "log.jsonl").read_bytes()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "optimizer.pt is damaged or cut short" in err and "no usable checkpoint is left" in err
    assert (out / "log.jsonl").read_bytes() == log


def test_a_disk_error_mid_run_is_one_line_that_says_how_to_continue(tmp_path, tiny_llama_path, fake_data, capsys,
                                                                     monkeypatch, read_only_folder):
    import argparse
    import errno

    from biasunlearn import cli
    from biasunlearn.unlearn.trainer import JsonlLogCallback

    out = tmp_path / "run"

    def on_log(self, *a, **kw):  # the run folder made read-only after the run began
        raise PermissionError(errno.EACCES, "Permission denied", str(self.path))

    monkeypatch.setattr(JsonlLogCallback, "on_log", on_log)
    assert main(_tiny_run_words(tmp_path, out, tiny_llama_path, fake_data) + ["--logging_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"biasunlearn: error: Permission denied: {out / 'log.jsonl'}; `biasunlearn "
                                    f"train --resume {out}` continues from its last checkpoint")
    assert "Traceback" not in err
    # a run folder removed (no run left to continue): no such advice
    assert cli._resume_hint(argparse.Namespace(run_folder=tmp_path / "gone")) == ""
    # a read-only --out is refused before anything loads
    assert main(["train", "--out", str(read_only_folder / "run"), "--model", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"biasunlearn: error: --out {read_only_folder / 'run'}: {read_only_folder}, where it would be made, is not "
        "writable (no permission, or a read-only file system); name another folder"]


def _files(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refused_on_a_bad_setting_leaves_the_old_run_as_it_was(tmp_path, tiny_llama_path, fake_data,
                                                                          capsys):
    out = tmp_path / "run"
    words = _tiny_run_words(tmp_path, out, tiny_llama_path, fake_data)
    assert main(words) == 0
    before = _files(out)
    assert {"config.json", "train_summary.json", "log.jsonl", "adapter/adapter_model.safetensors"} <= set(before)
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "README.md").write_text("no weights here")
    capsys.readouterr()
    for extra, message in ((["--lora_targets", "foo"], "lora_targets: foo is not a linear layer"),
                           (["--model", str(not_a_model)], f"--model {not_a_model}"),
                           (["--lora_dropout", "1.5"], "lora_dropout=1.5: must be 0 or more and below 1"),
                           (["--balance_types", "true", "--type_weights", "religion=2"],
                            "type_weights names religion: not a bias type"),
                           (["--swap_mode", "none", "--scheduled_swaps", "religion=1"],
                            "scheduled_swaps names religion: not a bias type"),
                           (["--unrelated_drop_terms", "true"], "unrelated_drop_terms=true left no text")):
        assert main(words + ["--overwrite"] + extra) == 2
        err = capsys.readouterr().err
        assert message in err.splitlines()[-1] and "removed the run" not in err and "Traceback" not in err
        assert _files(out) == before  # every file of the old run still there, unchanged
    # a start that can go ahead removes it (the message says what went), and trains the new run in its place
    assert main(words + ["--overwrite", "--max_steps", "1"]) == 0
    assert f"--overwrite: removed the run in {out}: config.json, splits.json" in capsys.readouterr().err
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 1


def test_resume_refuses_a_changed_adapter_shape_before_touching_the_run(tmp_path, tiny_llama_path, fake_data,
                                                                        capsys, monkeypatch):
    from biasunlearn.unlearn import pipeline

    out = tmp_path / "run"
    assert main(_tiny_run_words(tmp_path, out, tiny_llama_path, fake_data)) == 0
    kept = {n: (out / n).read_bytes() for n in ("config.json", "train_summary.json", "log.jsonl", "dev_log.jsonl")}
    capsys.readouterr()
    for flag, value, then in (("--lora_r", "4", "lora_r=8"), ("--lora_targets", "q_proj", "lora_targets='auto'"),
                              ("--lora_alpha", "8", "lora_alpha=16")):
        assert main(["train", "--resume", str(out), "--max_steps", "3", flag, value]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith(f"biasunlearn: error: --resume {out}: {flag[2:]}=")
        assert f"the run there started with {then}" in err and "Traceback" not in err
        assert {n: (out / n).read_bytes() for n in kept} == kept  # byte-identical
    assert json.loads((out / "config.json").read_text())["config"]["lora_r"] == 8
    from biasunlearn.unlearn.config import make_config

    saved = json.loads((out / "config.json").read_text())
    saved["config"]["lora_targets"] = "q_proj,v_proj"
    (tmp_path / "named.json").write_text(json.dumps(saved))
    # the same layers spelled otherwise (spaces, order) are the same adapter; another set of layers is not
    pipeline.check_adapter_settings(tmp_path / "named.json", make_config(output_dir=str(tmp_path / "x"),
                                                                          lora_targets=" v_proj , q_proj"))
    with pytest.raises(ConfigError, match="lora_targets='q_proj', but the run there started with "
                                          "lora_targets='q_proj,v_proj'"):
        pipeline.check_adapter_settings(tmp_path / "named.json", make_config(output_dir=str(tmp_path / "x"),
                                                                              lora_targets="q_proj"))
    # past the settings' check (say a config.json without them), the checkpoint's weights are checked against the
    # adapter before anything is cleared: a refusal, not a size mismatch after the run was cleared
    with monkeypatch.context() as m:
        m.setattr(pipeline, "check_adapter_settings", lambda *a: None)
        assert main(["train", "--resume", str(out), "--max_steps", "3", "--lora_r", "4"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: {out / 'checkpoint-2'}'s LoRA weights do not fit this run's adapter (" in err
    assert "(28 of 28 differ, e.g. base_model.model.model.layers.0.mlp.down_proj.lora_A.weight: (8, 64) saved, "\
        "(4, 64) now)" in err and "Traceback" not in err
    assert {n: (out / n).read_bytes() for n in kept} == kept
    # a plain resume still works, and trains on with the run's own adapter shape
    assert main(["train", "--resume", str(out), "--max_steps", "3"]) == 0
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 3
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.parametrize("text, name", [("max_steps:\n", "max_steps"), ("lora_r: null\n", "lora_r"),
                                        ("seed: ~\n", "seed"), ("model:\n", "model")])
def test_a_setting_without_a_value_is_refused_naming_the_file_and_setting(tmp_path, text, name):
    y = tmp_path / "c.yaml"
    y.write_text(text)
    with pytest.raises(ConfigError, match=rf"^--config {y}: {name} has no value \(null"):
        parse_train_config(["--config", str(y), "--out", str(tmp_path / "r")])
    y.write_text("data_dir: null\n")  # a setting whose value may be none (its default)
    cfg, _ = parse_train_config(["--config", str(y), "--out", str(tmp_path / "r")])
    assert cfg.data_dir is None


@pytest.mark.parametrize("words, message", [
    (["--lora_r", "0"], "lora_r=0: must be above 0"),
    (["--lora_alpha", "-4"], "lora_alpha=-4: must be above 0"),
    (["--lora_dropout", "1.5"], "lora_dropout=1.5: must be 0 or more and below 1"),
    (["--lora_dropout", "-0.1"], "lora_dropout=-0.1: must be 0 or more and below 1"),
    (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps=0: must be above 0"),
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size=0: must be above 0"),
    (["--eval_bbq_per_category", "-1"], "eval_bbq_per_category=-1: must be 0 or more"),
    (["--dev_folds", "3", "--dev_fold", "5"], "dev_folds=3, dev_fold=5: need dev_folds 0 (off) or >= 2"),
    (["--dev_folds", "1"], "dev_folds=1, dev_fold=0: need dev_folds 0 (off) or >= 2"),
    (["--dev_folds", "-2"], "dev_folds=-2, dev_fold=0: need"),
])
def test_out_of_range_settings_are_refused_before_anything_is_made(tmp_path, capsys, words, message):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--model", str(tmp_path / "nope"), "--skip_final_eval", "true"]
                + words) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"biasunlearn: error: {message}")  # one line, naming the setting
    assert list(tmp_path.iterdir()) == []  # no run folder, no stub config.json
    with pytest.raises(ConfigError, match=re.escape(message)):  # --dry-run's and the API's check too
        parse_train_config(["--out", str(out)] + words)


def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    y = tmp_path / "bad.yaml"
    y.write_bytes(b"\xff\xfe\x00bad")
    assert main(["train", "--config", str(y), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"biasunlearn: error: --config {y}: not UTF-8 text (") and \
        "Traceback" not in err


def test_config_given_twice_is_refused(tmp_path, capsys):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("max_steps: 7\n")
    b.write_text("npo_beta: 2.0\n")
    assert main(["train", "--config", str(a), "--config", str(b), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"biasunlearn: error: --config given 2 times ({a}, {b}): give one file (put the settings of both in one, or "
        "give the extra ones as flags)"]
    with pytest.raises(ConfigError, match="--config given 2 times"):
        parse_train_config(["--config", str(a), "--config", str(b), "--out", str(tmp_path / "r")])
    cfg, _ = parse_train_config(["--config", str(a), "--out", str(tmp_path / "r")])  # one is read as before
    assert cfg.max_steps == 7


def test_a_checkpoint_without_its_optimizer_scheduler_or_rng_state_is_passed_over(tmp_path, tiny_llama_path,
                                                                                   fake_data, capsys):
    from biasunlearn.unlearn.pipeline import checkpoint_problem

    out = tmp_path / "run"
    words = _tiny_run_words(tmp_path, out, tiny_llama_path, fake_data) + ["--save_steps", "1", "--logging_steps",
                                                                          "1", "--early_stop_tolerance", "-1"]
    assert main(words) == 0
    assert checkpoint_problem(out / "checkpoint-2") is None

    def step_2_rate():
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        return [r["learning_rate"] for r in rows if r.get("step") == 2 and "learning_rate" in r]

    rate = step_2_rate()
    assert len(rate) == 1
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        copy = tmp_path / "copies" / name / "checkpoint-2"
        shutil.copytree(out / "checkpoint-2", copy)
        (copy / name).unlink()
        assert checkpoint_problem(copy) == f"no {name}"
    (out / "train_summary.json").unlink()  # as if killed after the last save, whose optimizer.pt never came
    (out / "checkpoint-2" / "optimizer.pt").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint-2'} cannot be used (no optimizer.pt); resuming from checkpoint-1 instead" in err
    assert f"resuming from {out / 'checkpoint-1'}" in err
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 2
    assert step_2_rate() == rate  # the schedule went on from checkpoint-1's, not from a fresh one


def test_a_setting_given_twice_in_a_config_file_is_refused_naming_its_lines(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("max_steps: 7\nlearning_rate: 1.0e-4\nmax_steps: 9\n")
    assert main(["train", "--config", str(y), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"biasunlearn: error: --config {y}: max_steps is set twice (lines 1 and 3) (YAML keeps the last value without "
        "a word: keep the one you mean)"]
    y.write_text("max_steps: 7\nlearning_rate: 1.0e-4\n")  # each once: read as before
    cfg, _ = parse_train_config(["--config", str(y), "--out", str(tmp_path / "r")])
    assert (cfg.max_steps, cfg.learning_rate) == (7, 1e-4)
