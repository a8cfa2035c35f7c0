"""transfer / export / model card, on tiny random models built locally (no network, seconds on one thread)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _tiny  # noqa: E402

from biasunlearn.deploy import PROBE_TEXTS, check_adapter_fits, export_merged, model_card, transfer  # noqa: E402
from biasunlearn.errors import ConfigError, ModelLoadError  # noqa: E402
from biasunlearn.evaluate import EvalConfig  # noqa: E402
from biasunlearn.models import load_model  # noqa: E402
from biasunlearn.report import before_after_markdown  # noqa: E402
from biasunlearn.scoring import score_texts  # noqa: E402

torch.set_num_threads(1)
QUIET = None  # log=None: no progress lines


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    ns = {"root": root}
    ns["llama"] = _tiny.make_model(root / "llama")
    ns["variant"] = _tiny.make_model(root / "variant", seed=7)  # same shapes, other weights: a "fine-tuned variant"
    ns["wide"] = _tiny.make_model(root / "wide", hidden=48)
    ns["deep"] = _tiny.make_model(root / "deep", layers=3)
    ns["gpt2"] = _tiny.make_model(root / "gpt2", arch="gpt2")
    ns["adapter"] = _tiny.make_adapter(ns["llama"], root / "run" / "adapter")
    ns["gpt2_adapter"] = _tiny.make_adapter(ns["gpt2"], root / "gpt2run" / "adapter")
    ns["data"] = _tiny.make_data_dir(root / "data")
    return ns


def _cfg(data) -> EvalConfig:
    return EvalConfig(data_dir=str(data), progress=False, ppl_window=16, ppl_stride=8, ppl_max_tokens=200,
                      bbq_per_category=None)


def _adapter_scores(model_dir, adapter, texts) -> list:
    m, tok, _ = load_model(str(model_dir), adapter=str(adapter), device="cpu")
    return score_texts(m, tok, texts)


# --- export ------------------------------------------------------------------------------------------------------

EXTERNAL_LOADER = textwrap.dedent("""
    import json, sys
    sys.modules["biasunlearn"] = None          # the editable install's .pth would still find it otherwise
    sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("/src")]
    try:
        import biasunlearn  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("biasunlearn is importable; the test would prove nothing")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(1)
    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    sums = []
    for t in texts:
        ids = [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
        sums.append(float(lp[torch.arange(len(ids) - 1), x[0, 1:]].sum()))
    print(json.dumps({"sums": sums, "loaded": [m for m in sys.modules if m.startswith("biasunlearn") and sys.modules[m]],
                      "class": type(model).__name__}))
""")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_export_loads_without_biasunlearn_and_scores_like_adapter(tiny, tmp_path, arch):
    model_dir = tiny[arch]
    adapter = tiny["adapter"] if arch == "llama" else tiny["gpt2_adapter"]
    out = tmp_path / "dist" / f"{arch}-debiased"
    res = export_merged(str(model_dir), adapter, out, device="cpu", log=QUIET)
    assert res["verification"]["checked"] and res["verification"]["max_abs_diff_mean_logprob"] < 1e-4

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "biasunlearn_export.json"} <= names
    assert "tokenizer.json" in names or "tokenizer_config.json" in names
    assert not any(n.startswith("adapter_") for n in names)  # merged, not an adapter folder
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert "biasunlearn" not in (out / "config.json").read_text()

    texts = list(PROBE_TEXTS[:3]) + ["The mother was very caring.", "Women are bad at driving cars."]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-I", "-c", EXTERNAL_LOADER, str(out), json.dumps(texts)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["loaded"] == []
    want = _adapter_scores(model_dir, adapter, texts)
    assert len(got["sums"]) == len(want)
    for g, w in zip(got["sums"], want):
        assert abs(g - w.sum) < 1e-4, (g, w.sum)

    # the merged model is not the base model: the adapter changed the scores
    m, tok, _ = load_model(str(model_dir), device="cpu")
    plain = score_texts(m, tok, texts)
    assert max(abs(p.sum - w.sum) for p, w in zip(plain, want)) > 1e-3


def test_merged_in_process_equals_adapter_model(tiny, tmp_path):
    out = tmp_path / "m"
    export_merged(str(tiny["llama"]), tiny["adapter"], out, device="cpu", verify=False, log=QUIET)
    texts = ["The engineer explained how the bridge was built over the river.", "My sister is strong."]
    merged, tok, _ = load_model(str(out), device="cpu")
    a = _adapter_scores(tiny["llama"], tiny["adapter"], texts)
    b = score_texts(merged, tok, texts)
    assert all(abs(x.sum - y.sum) < 1e-4 and x.n == y.n for x, y in zip(a, b))


def test_export_refuses_to_overwrite_and_mismatched_model(tiny, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_merged(str(tiny["llama"]), tiny["adapter"], out, device="cpu", log=QUIET)
    with pytest.raises(ConfigError, match="not an earlier export"):
        export_merged(str(tiny["llama"]), tiny["adapter"], out, device="cpu", overwrite=True, log=QUIET)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ModelLoadError, match="does not fit"):
        export_merged(str(tiny["wide"]), tiny["adapter"], tmp_path / "w", device="cpu", log=QUIET)
    assert not (tmp_path / "w").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".w.")]  # no staging folder left behind
    # a fresh --out: the whole export is written
    again = tmp_path / "again"
    res = export_merged(str(tiny["llama"]), tiny["adapter"], again, device="cpu", verify=False, log=QUIET)
    assert Path(res["out"]) == again
    names = sorted(p.name for p in again.iterdir())
    assert {"config.json", "model.safetensors", "README.md", "biasunlearn_export.json"} <= set(names), names
    files = [n for n in names if (again / n).is_file()]
    stamp = lambda: {n: ((again / n).stat().st_ino, (again / n).stat().st_mtime_ns) for n in files}  # noqa: E731
    first, first_dir, first_bytes = stamp(), again.stat().st_ino, {n: (again / n).read_bytes() for n in files}
    # the same --out again without overwrite: refused, and the earlier export is left as it was
    with pytest.raises(ConfigError) as exc:
        export_merged(str(tiny["llama"]), tiny["adapter"], again, device="cpu", verify=False, log=QUIET)
    assert str(exc.value) == f"--out {again}: folder exists and is not empty (pass --overwrite to replace it)"
    assert stamp() == first and again.stat().st_ino == first_dir
    # with overwrite: a new folder is written and moved in, the earlier one deleted (every file is a new one)
    export_merged(str(tiny["llama"]), tiny["adapter"], again, device="cpu", verify=False, overwrite=True, log=QUIET)
    assert sorted(p.name for p in again.iterdir()) == names
    assert again.stat().st_ino != first_dir
    now = stamp()
    assert all(now[n] != first[n] for n in files), (first, now)
    assert (again / "model.safetensors").read_bytes() == first_bytes["model.safetensors"]  # the same merge
    assert json.loads((again / "biasunlearn_export.json").read_text())["adapter"] == \
        json.loads(first_bytes["biasunlearn_export.json"])["adapter"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "o"]  # nothing moved aside is left behind


# an export run in another process and SIGKILLed at a chosen moment
KILLED_EXPORT = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from transformers import PreTrainedModel
    from biasunlearn import cli

    when, words = sys.argv[1], sys.argv[2:]
    out = Path(words[words.index("--out") + 1]).resolve()
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def save_pretrained(self, folder, *a, **k):  # killed half way through writing the model's shards
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst):  # the new folder moving into place
        if when == "before the move in" and Path(dst).resolve() == out:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    def rmtree(path, *a, **k):  # the earlier export, deleted once the new one is in place
        if when == "before the old one is deleted" and Path(path).name == f".{out.name}.old":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rmtree(path, *a, **k)

    if when == "writing shards":
        PreTrainedModel.save_pretrained = save_pretrained
    os.replace, shutil.rmtree = replace, rmtree
    sys.exit(cli.main(words))
""")


def test_what_a_killed_export_leaves_is_cleared_and_overwrite_never_loses_the_old_export(tiny, tmp_path):
    import signal

    dist = tmp_path / "dist"
    e1 = dist / "e1"
    words = ["export", "--model", str(tiny["llama"]), "--adapter", str(tiny["adapter"]), "--device", "cpu",
             "--no-verify", "--out", str(e1)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}

    def killed(when, *more):
        proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, when, *words, *more], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    def export(log, overwrite=False):
        return export_merged(str(tiny["llama"]), tiny["adapter"], e1, device="cpu", verify=False, overwrite=overwrite,
                             log=log.append)

    # killed writing the model: its unfinished, owner-only folder is left beside, and no export
    killed("writing shards")
    staged = [p for p in dist.iterdir() if p.is_dir()]
    assert len(staged) == 1 and staged[0].name.startswith(".e1.") and staged[0].stat().st_mode & 0o777 == 0o700
    assert (staged[0] / "model.safetensors").read_bytes() == b"half" and not e1.exists()
    # the next export removes it, and says so; folders of like names are not the staging folders it makes
    keep = [".e1.keep", ".e1.abcdefghi", ".e1x.abcdefgh", ".e10.abcdefgh", ".e1.ABCDEFGH", "e1.old"]
    for name in keep:
        (dist / name).mkdir()
    log = []
    export(log)
    assert log[0] == (f"[export] removing {staged[0]}: the unfinished folder of an export into {e1} that was killed "
                      "before it finished")
    assert not staged[0].exists() and all((dist / name).is_dir() for name in keep)
    first = (e1 / "biasunlearn_export.json").read_bytes()

    # --overwrite killed between moving the old export aside and moving the new one in: the next start puts the
    # old one back (here refused then, without --overwrite, with the export as it was)
    killed("before the move in", "--overwrite")
    assert not e1.exists() and (dist / ".e1.old" / "biasunlearn_export.json").read_bytes() == first
    log = []
    with pytest.raises(ConfigError, match="not empty"):
        export(log)
    assert log[0] == (f"[export] put {e1} back from {dist / '.e1.old'}: an --overwrite export was killed before its "
                      "new folder took the old one's place")
    assert log[1].startswith("[export] removing ") and "the unfinished folder of an export" in log[1]
    assert (e1 / "biasunlearn_export.json").read_bytes() == first and not (dist / ".e1.old").exists()

    # killed with the new export in place, before the old one was deleted: the next start deletes the old copy
    killed("before the old one is deleted", "--overwrite")
    assert (dist / ".e1.old" / "biasunlearn_export.json").read_bytes() == first
    assert json.loads((e1 / "biasunlearn_export.json").read_text())["adapter"] == str(tiny["adapter"])
    log = []
    export(log, overwrite=True)
    assert log[0] == (f"[export] removing {dist / '.e1.old'}: the export that {e1} replaced (the process was killed "
                      "before it removed it)")
    # nothing of the killed exports is left (their lock file beside the folder included)
    assert sorted(p.name for p in dist.iterdir()) == sorted(["e1", *keep])


# --- model card --------------------------------------------------------------------------------------------------

CARD_SECTIONS = ("## Base model", "## Adapter and training config", "## Data and splits",
                 "## Evaluation: before and after debiasing", "## Intended use", "## Limitations")


def test_model_card_reads_the_training_run(tiny, tmp_path):
    run = tmp_path / "run"
    adapter = run / "adapter"
    import shutil

    shutil.copytree(tiny["adapter"], adapter)
    (run / "config.json").write_text(json.dumps({"method": "biasunlearn", "lr": 2e-4, "steps": 300,
                                                  "loss_weights": {"forget": 1.0, "retain": 1.0, "kl": 0.5}}))
    (run / "splits.json").write_text(json.dumps({
        "train": {"n": 800, "source": "stereoset/zjunlp__EditBias/dev.json", "sha256": "c" * 64},
        "dev": {"n": 100, "sha256": "d" * 64}}))
    for side, ss, ppl in (("eval_before", 62.0, 20.0), ("eval_after", 51.0, 21.0)):
        (run / side).mkdir()
        (run / side / "results.json").write_text(json.dumps(_tiny.results_doc("tiny", None if side == "eval_before" else "a", ss, ppl)))
    out = tmp_path / "dist" / "tiny-debiased"
    export_merged(str(tiny["llama"]), adapter, out, device="cpu", log=QUIET)
    card = (out / "README.md").read_text()
    for s in CARD_SECTIONS:
        assert s in card, s
    assert card.startswith("---\n")
    # training config and LoRA settings
    assert '"lr": 0.0002' in card and "| r | 4 |" in card and "lora_alpha" in card
    # data and splits with checksums
    assert "c" * 64 in card and "d" * 64 in card and "a" * 64 in card and "b" * 64 in card
    # before/after tables for the four measurements
    assert "StereoSet intrasentence" in card and "| overall | 62.00 | 51.00 | -11.00 |" in card
    assert "CrowS-Pairs" in card and "BBQ" in card and "Perplexity" in card and "+5.00%" in card
    # limitations say what the issue asks
    lim = card.split("## Limitations", 1)[1]
    assert "SS = 50" in lim and "does not prove a model unbiased" in lim
    assert "Limitations section" in lim and "groups" in lim
    assert "not measured" not in card.split("## Evaluation", 1)[1].split("## Intended use")[0]
    assert "these results were measured on `tiny`" in card  # the hand-written results name another model
    prov = json.loads((out / "biasunlearn_export.json").read_text())
    assert prov["training_config"]["steps"] == 300 and prov["adapter_sha256"]["adapter_model.safetensors"]


def test_the_card_describes_the_adapter_when_a_later_start_rewrote_the_runs_config(tiny, tmp_path):
    import shutil

    from biasunlearn.deploy import run_files

    run = tmp_path / "run"
    adapter = run / "adapter"
    shutil.copytree(tiny["adapter"], adapter)
    settings = {"max_steps": 200, "learning_rate": 5e-5, "seed": 0}
    (adapter / "biasunlearn_config.json").write_text(json.dumps({
        "method": "biasunlearn", "config": settings, "base_model": {"spec": "tiny"}, "splits_checksum": "e" * 64}))
    # the same settings in both: the run's config.json, which holds more (versions, the run's settings), is read
    (run / "config.json").write_text(json.dumps({"method": "biasunlearn", "config": settings,
                                                 "settings": {"max_steps": 200}, "versions": {"torch": "2.x"}}))
    found = run_files(adapter)
    assert found["config"]["versions"] == {"torch": "2.x"} and found["config_path"] == str(run / "config.json")
    assert "config_note" not in found
    # a baseline's adapter record nests its settings one deeper; the same settings still read as the same
    (adapter / "biasunlearn_config.json").write_text(json.dumps({
        "method": "sft", "config": {"method": "sft", "batch_size": 6, "config": settings}}))
    (run / "config.json").write_text(json.dumps({"method": "sft", "batch_size": 6, "config": settings}))
    assert run_files(adapter)["config_path"] == str(run / "config.json")
    # train --resume F --max_steps 400, stopped at step 250: config.json is that start's, the adapter still step 200's
    (adapter / "biasunlearn_config.json").write_text(json.dumps({
        "method": "biasunlearn", "config": settings, "base_model": {"spec": "tiny"}, "splits_checksum": "e" * 64}))
    (run / "config.json").write_text(json.dumps({"method": "biasunlearn", "config": {**settings, "max_steps": 400},
                                                 "settings": {"max_steps": 400}}))
    out = tmp_path / "dist" / "tiny-debiased"
    export_merged(str(tiny["llama"]), adapter, out, device="cpu", log=QUIET)
    card = (out / "README.md").read_text()
    prov = json.loads((out / "biasunlearn_export.json").read_text())
    assert prov["training_config"]["config"]["max_steps"] == 200
    assert prov["training_config"]["splits_checksum"] == "e" * 64
    assert prov["training_config_source"] == str(adapter / "biasunlearn_config.json")
    assert '"max_steps": 200' in card and '"max_steps": 400' not in card
    assert ("Training config (resolved, from `biasunlearn_config.json`, written with the adapter; the run's "
            "`config.json` differs: a later start of the run rewrote it):") in card


def test_model_card_degrades_when_nothing_was_recorded(tiny, tmp_path):
    card = model_card(base={"spec": "smollm2-135m", "description": "x", "dtype": "float32", "n_params": 10},
                      adapter_dir=tiny["adapter"], adapter_config={}, name="x")
    for s in CARD_SECTIONS:
        assert s in card
    ev = card.split("## Evaluation", 1)[1].split("## Intended use")[0]
    for bench in ("StereoSet", "CrowS-Pairs", "BBQ", "Perplexity"):
        assert f"{bench}: not measured" in ev
    assert "Training config: not recorded" in card and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "with a LoRA adapter (how it was trained is not recorded beside it) merged" in card
    assert "bias-unlearning" not in card


def test_model_card_names_the_method_that_trained_the_adapter_and_says_when_its_numbers_are_a_sample(tiny):
    before, after = _tiny.results_doc("tiny", None, 62.0, 20.0), _tiny.results_doc("tiny", "a", 51.0, 21.0)
    for d in (before, after):
        d["eval_config"]["limit"] = 3
    base = {"spec": "tiny", "description": "x", "dtype": "float32", "n_params": 10}
    card = model_card(base=base, adapter_dir=tiny["adapter"], training_config={"method": "cda", "config": {}},
                      before=before, after=after, name="x")
    assert "with a LoRA adapter of the CDA baseline of `biasunlearn compare`" in card
    assert "not a bias-unlearning one" in card and "- bias-unlearning" not in card.split("---", 2)[1]
    assert "**A quick look, not a measurement: at most 3 examples per benchmark" in card
    card = model_card(base=base, adapter_dir=tiny["adapter"], training_config={"method": "biasunlearn"},
                      before=_tiny.results_doc("tiny", None, 62.0, 20.0), after=_tiny.results_doc("tiny", "a", 51.0, 21.0),
                      name="x")
    assert "with a bias-unlearning LoRA adapter (BiasUnlearn, Liu et al., EMNLP 2025) merged" in card
    assert "- bias-unlearning" in card.split("---", 2)[1] and "A quick look" not in card


def test_export_eval_flag_measures_when_run_has_no_results(tiny, tmp_path):
    out = tmp_path / "e"
    res = export_merged(str(tiny["gpt2"]), tiny["gpt2_adapter"], out, device="cpu", run_eval=True,
                        cfg=_cfg(tiny["data"]), log=QUIET)
    assert (out / "evaluation" / "before" / "results.json").exists()
    assert (out / "evaluation" / "after" / "results.json").exists()
    card = (out / "README.md").read_text()
    assert "Perplexity (WikiText-2 raw test" in card and "wiki.test.raw" in card
    assert res["after"]["benchmarks"]["perplexity"]["metrics"]["perplexity"] > 0


# --- transfer ----------------------------------------------------------------------------------------------------

def test_transfer_onto_mismatched_model_lists_modules_and_shapes(tiny, tmp_path):
    with pytest.raises(ModelLoadError) as e:
        transfer(tiny["adapter"], str(tiny["wide"]), tmp_path / "t", cfg=_cfg(tiny["data"]), device="cpu", log=QUIET)
    msg = str(e.value)
    assert "does not fit" in msg and "hidden_size 48" in msg
    for mod in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert mod in msg
    assert "adapter expects input size 32, model has 48" in msg
    assert not (tmp_path / "t" / "report.md").exists()  # failed before evaluating anything

    with pytest.raises(ModelLoadError) as e:
        transfer(tiny["adapter"], str(tiny["gpt2"]), tmp_path / "t2", cfg=_cfg(tiny["data"]), device="cpu", log=QUIET)
    assert "not in the model" in str(e.value)

    with pytest.raises(ConfigError, match="unknown nope"):  # settings are checked before a model is loaded
        transfer(tiny["adapter"], str(tiny["variant"]), tmp_path / "t3",
                 cfg=EvalConfig(benchmarks=("nope",), data_dir=str(tiny["data"])), log=QUIET)


def test_check_adapter_fits_other_layer_counts(tiny):
    m, _, _ = load_model(str(tiny["llama"]), device="cpu")
    check_adapter_fits(m, tiny["adapter"])
    deep, _, _ = load_model(str(tiny["deep"]), device="cpu")
    with pytest.raises(ModelLoadError, match=r"model\.layers\.2\.mlp\.up_proj: targeted by the adapter config"):
        check_adapter_fits(deep, tiny["adapter"])  # a 3-layer model: layer 2 would get no adapter weights
    m2 = m
    deep_adapter = _tiny.make_adapter(tiny["deep"], tiny["root"] / "deeprun" / "adapter")
    with pytest.raises(ModelLoadError, match=r"model\.layers\.2\.self_attn\.q_proj: not in the model"):
        check_adapter_fits(m2, deep_adapter)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_load_model_merge_adapter_reads_like_the_adapter(tiny, arch):
    adapter = tiny["adapter"] if arch == "llama" else tiny["gpt2_adapter"]
    texts = ["The engineer explained how the bridge was built over the river.", "My sister is strong."]
    merged, tok, info = load_model(str(tiny[arch]), adapter=str(adapter), device="cpu", merge_adapter=True)
    assert not any("lora" in n for n, _ in merged.named_modules())  # plain layers: nothing left to apply per call
    assert info.extra == {"adapter_merged": True} and info.adapter == str(adapter)
    want = _adapter_scores(tiny[arch], adapter, texts)
    got = score_texts(merged, tok, texts)
    assert all(abs(x.sum - y.sum) < 1e-4 and x.n == y.n for x, y in zip(got, want))
    _, _, plain_info = load_model(str(tiny[arch]), adapter=str(adapter), device="cpu")
    assert plain_info.extra == {}
    with pytest.raises(ConfigError, match="merge_adapter needs an adapter"):
        load_model(str(tiny[arch]), device="cpu", merge_adapter=True)
    with pytest.raises(ConfigError, match="merge_adapter needs an adapter"):  # said before the model path is read
        load_model(str(tiny["root"] / "no-such-model"), device="cpu", merge_adapter=True)


def _float32_merge(model_dir, adapter) -> dict:
    """{parameter name: (float32 weight, float32 weight + the adapter's change)} of every layer the adapter wraps."""
    ref, _, _ = load_model(str(model_dir), adapter=str(adapter), device="cpu")  # float32, unmerged
    want = {}
    for name, mod in ref.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            w = mod.get_base_layer().weight.detach()
            want[name.removeprefix("base_model.model.") + ".weight"] = (w, w + mod.get_delta_weight("default"))
    return want


def test_merge_adapter_rounds_once_to_bfloat16(tiny):
    """Merged for a bfloat16 read, each weight is the bfloat16 nearest to (float32 weight + the adapter's change),
    not the change added to weights already rounded to bfloat16, which loses every change under half a step."""
    small = _tiny.make_adapter(tiny["llama"], tiny["root"] / "smallrun" / "adapter", seed=3, scale=1e-4)
    want = _float32_merge(tiny["llama"], small)
    assert len(want) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    merged, _, info = load_model(str(tiny["llama"]), adapter=str(small), dtype="bfloat16", device="cpu",
                                 merge_adapter=True)
    naive, _, _ = load_model(str(tiny["llama"]), adapter=str(small), dtype="bfloat16", device="cpu")
    naive = naive.merge_and_unload()  # the change added in bfloat16
    assert info.dtype == "bfloat16"
    moved = lost = 0
    for name, (w, exact) in want.items():
        got, worse = merged.get_parameter(name), naive.get_parameter(name)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, exact.to(torch.bfloat16)), name
        assert ((worse.float() - exact).abs() >= (got.float() - exact).abs()).all()
        moved += int((got != w.to(torch.bfloat16)).sum())
        lost += int((got != worse).sum())
    assert moved > 0 and lost > 0  # the change moved weights, and the naive merge dropped some of it
    # buffers as a bfloat16 load makes them: the rotary inv_freq stays float32 (model.to(bfloat16) would round it)
    direct, _, _ = load_model(str(tiny["llama"]), dtype="bfloat16", device="cpu")
    bufs = dict(direct.named_buffers())
    assert bufs["model.rotary_emb.inv_freq"].dtype == torch.float32
    assert {n: (b.dtype, b.tolist()) for n, b in merged.named_buffers()} == \
        {n: (b.dtype, b.tolist()) for n, b in bufs.items()}
    assert merged.config.dtype == direct.config.dtype == torch.bfloat16


def test_bfloat16_export_merges_in_float32_and_rounds_once(tiny, tmp_path):
    """export --dtype bfloat16 saves each merged weight as the bfloat16 nearest to (float32 weight + the adapter's
    change), as the merged read does; peft's merge into a bfloat16 model would lose every change under half a step.
    The folder still reloads and scores like the adapter model, and says how it was merged."""
    from safetensors.torch import load_file

    small = _tiny.make_adapter(tiny["llama"], tiny["root"] / "smallexp" / "adapter", seed=5, scale=1e-4)
    want = _float32_merge(tiny["llama"], small)
    assert len(want) == 14
    out = tmp_path / "bf16"
    res = export_merged(str(tiny["llama"]), small, out, dtype="bfloat16", device="cpu", log=QUIET)
    saved = load_file(str(out / "model.safetensors"))
    naive, _, _ = load_model(str(tiny["llama"]), adapter=str(small), dtype="bfloat16", device="cpu")
    naive = naive.merge_and_unload()
    moved = lost = 0
    for name, (w, exact) in want.items():
        got = saved[name]
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, exact.to(torch.bfloat16)), name
        moved += int((got != w.to(torch.bfloat16)).sum())
        lost += int((got != naive.get_parameter(name)).sum())
    assert moved > 0 and lost > 0  # the change moved weights, and the naive merge would have dropped some of it
    assert res["verification"]["checked"] and res["verification"]["max_abs_diff_mean_logprob"] < 5e-2
    w = res["verification"]["weights"]  # the bfloat16 rows hold the merge within two roundings
    assert w["lora_layers"] == 14 and w["max_error_over_tolerance"] <= 1.0 and w["tolerance"] == "2·eps(bfloat16)·|weight|"
    prov = json.loads((out / "biasunlearn_export.json").read_text())
    assert prov["dtype"] == "bfloat16" and prov["merge"].endswith("rounded once to bfloat16")
    assert "each merged weight then rounded once to bfloat16" in (out / "README.md").read_text()
    export_merged(str(tiny["llama"]), small, tmp_path / "fp32", device="cpu", verify=False, log=QUIET)
    assert json.loads((tmp_path / "fp32" / "biasunlearn_export.json").read_text())["merge"] == \
        "`merge_and_unload`, in float32"


def test_export_weight_check_catches_an_unmerged_export_that_the_probes_miss(tiny, tmp_path, monkeypatch):
    """An adapter whose change is too small for the probe check (under 1e-3 nats/token) is still seen merged or not:
    the saved weights are compared row by row with base + scale·B·A."""
    from biasunlearn import deploy
    from biasunlearn.errors import BiasUnlearnError

    small = _tiny.make_adapter(tiny["llama"], tiny["root"] / "tinychange" / "adapter", seed=9, scale=1e-4)
    base, tok, _ = load_model(str(tiny["llama"]), device="cpu")
    plain = [s.mean for s in score_texts(base, tok, list(PROBE_TEXTS))]
    adapted = [s.mean for s in _adapter_scores(tiny["llama"], small, list(PROBE_TEXTS))]
    assert 0 < max(abs(a - b) for a, b in zip(plain, adapted)) < 1e-3  # the probes alone cannot tell

    res = export_merged(str(tiny["llama"]), small, tmp_path / "ok", device="cpu", log=QUIET)
    w = res["verification"]["weights"]
    assert w["lora_layers"] == 14 and w["changed_beyond_rounding"] == 14 and w["dora_layers_not_checked"] == 0
    assert 0 <= w["max_error_over_tolerance"] <= 1.0
    assert json.loads((tmp_path / "ok" / "biasunlearn_export.json").read_text())["verification"]["weights"] == w
    assert ("weights checked at export: in each of the 14 LoRA layers, the row of the weight the adapter changes most "
            "holds base + scale·B·A within two roundings of the saved dtype (14 of them changed by more than that "
            "rounding)\n") in (tmp_path / "ok" / "README.md").read_text()

    monkeypatch.setattr(deploy, "merge_into_weights", lambda peft_model: peft_model.unload())  # drops, not merges
    with pytest.raises(BiasUnlearnError) as e:
        export_merged(str(tiny["llama"]), small, tmp_path / "bad", device="cpu", log=QUIET)
    msg = str(e.value)
    assert "14 LoRA layer(s) of the saved merged model do not hold the merged weights" in msg
    assert "model.layers.0.self_attn.q_proj: row" in msg and "the row is the base model's, unmerged" in msg
    assert f"nothing was written to {tmp_path / 'bad'}" in msg and not (tmp_path / "bad").exists()


def test_merge_fingerprint_takes_the_most_changed_row_in_the_weight_layout(tiny):
    """Conv1D (GPT-2) weights are stored [in, out]: the fingerprint's row is a row of the weight as stored, and the
    merged row is base + the adapter's change in that layout."""
    from biasunlearn.adapters import apply_adapter
    from biasunlearn.deploy import merge_fingerprint

    for arch, adapter in (("gpt2", tiny["gpt2_adapter"]), ("llama", tiny["adapter"])):
        m, _, _ = load_model(str(tiny[arch]), device="cpu")
        pm = apply_adapter(m, adapter)
        fp = merge_fingerprint(pm)
        assert fp["dora_layers"] == 0 and len(fp["rows"]) == (8 if arch == "gpt2" else 14)
        for name, (row, base_row, want) in fp["rows"].items():
            layer = pm.base_model.model.get_submodule(name)
            delta = layer.get_delta_weight("default")
            assert delta.shape == layer.base_layer.weight.shape
            assert row == int(delta.abs().amax(dim=1).argmax())
            torch.testing.assert_close(base_row, layer.base_layer.weight[row])
            torch.testing.assert_close(want, layer.base_layer.weight[row] + delta[row])
        merged = pm.merge_and_unload()
        for name, (row, _, want) in fp["rows"].items():
            torch.testing.assert_close(merged.get_submodule(name).weight[row], want, rtol=0, atol=1e-6)
    # DoRA's merge also rescales each weight: its layers are counted, not fingerprinted
    dora = _tiny.make_adapter(tiny["llama"], tiny["root"] / "dora" / "adapter", seed=3, use_dora=True)
    m, _, _ = load_model(str(tiny["llama"]), device="cpu")
    fp = merge_fingerprint(apply_adapter(m, dora))
    assert fp == {"rows": {}, "dora_layers": 14}


def test_transfer_writes_report_and_before_after_results(tiny, tmp_path):
    out = tmp_path / "transfer"
    res = transfer(tiny["adapter"], str(tiny["variant"]), out, cfg=_cfg(tiny["data"]), device="cpu", log=QUIET)
    for side in ("eval_before", "eval_after"):
        doc = json.loads((out / side / "results.json").read_text())
        assert set(doc["benchmarks"]) == {"stereoset", "crows_pairs", "bbq", "perplexity"}
    before = json.loads((out / "eval_before" / "results.json").read_text())
    after = json.loads((out / "eval_after" / "results.json").read_text())
    assert before["model"]["adapter"] is None and after["model"]["adapter"] == str(tiny["adapter"])
    assert before["benchmarks"]["perplexity"]["metrics"]["perplexity"] != after["benchmarks"]["perplexity"]["metrics"]["perplexity"]
    report = (out / "report.md").read_text()
    assert report == res["report"].read_text()
    for s in ("StereoSet intrasentence", "CrowS-Pairs", "BBQ", "Perplexity", "relative change", "fit check"):
        assert s in report
    assert json.loads((out / "transfer.json").read_text())["results"]["after"] == "eval_after/results.json"

    # reuse: same model, adapter and settings -> the documents are kept, not recomputed
    stamp = before["created"]
    transfer(tiny["adapter"], str(tiny["variant"]), out, cfg=_cfg(tiny["data"]), device="cpu", reuse=True, log=QUIET)
    assert json.loads((out / "eval_before" / "results.json").read_text())["created"] == stamp
    cfg2 = _cfg(tiny["data"])
    cfg2.limit = 2
    lines = []
    transfer(tiny["adapter"], str(tiny["variant"]), out, cfg=cfg2, device="cpu", reuse=True, log=lines.append)
    assert json.loads((out / "eval_before" / "results.json").read_text())["created"] != stamp
    # the progress says which read is which; the report says its numbers are a sample
    assert f"[eval] eval_before: {tiny['variant']} alone" in lines
    assert f"[eval] eval_after: {tiny['variant']} + {tiny['adapter']}" in lines
    assert "**A quick look, not a measurement: at most 2 examples per benchmark" in (out / "report.md").read_text()


def test_transfer_reuse_reads_again_when_a_data_file_changed(tiny, tmp_path):
    """--reuse keeps a read only if it was made from the data files as they are now: a CrowS-Pairs row removed
    since (a data folder without SHA256SUMS does not stop that) makes both reads run again, and says why."""
    import shutil

    from biasunlearn.deploy import transfer

    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    cfg = _cfg(data)
    cfg.benchmarks = ("crows_pairs",)
    out = tmp_path / "t"
    transfer(tiny["adapter"], str(tiny["variant"]), out, cfg=cfg, device="cpu", log=QUIET)
    old = json.loads((out / "eval_before" / "results.json").read_text())
    crows = data / "crows_pairs" / "crows_pairs_anonymized.csv"
    lines = crows.read_text().splitlines(keepends=True)
    crows.write_text("".join(lines[:-1]))
    log = []
    transfer(tiny["adapter"], str(tiny["variant"]), out, cfg=cfg, device="cpu", reuse=True, log=log.append)
    new = json.loads((out / "eval_before" / "results.json").read_text())
    assert new["created"] != old["created"]
    n_old = old["benchmarks"]["crows_pairs"]["metrics"]["length_normalised"]["overall"]["n"]
    assert new["benchmarks"]["crows_pairs"]["metrics"]["length_normalised"]["overall"]["n"] == n_old - 1
    sha = new["benchmarks"]["crows_pairs"]["data"]["sha256"]["crows_pairs_anonymized.csv"]
    assert sha != old["benchmarks"]["crows_pairs"]["data"]["sha256"]["crows_pairs_anonymized.csv"]
    said = [x for x in log if "was read from other data (crows_pairs: crows_pairs_anonymized.csv changed since)" in x]
    assert len(said) == 2  # the variant alone, and with the adapter
    # as they are now, the new reads are reused
    log = []
    transfer(tiny["adapter"], str(tiny["variant"]), out, cfg=cfg, device="cpu", reuse=True, log=log.append)
    assert json.loads((out / "eval_before" / "results.json").read_text())["created"] == new["created"]
    # the data moved away: nothing can be compared, so the read is kept as recorded, and the log says so
    from biasunlearn.deploy import read_results

    shutil.move(str(data), str(tmp_path / "elsewhere"))
    log = []
    assert read_results(out / "eval_before" / "results.json", cfg, log.append)["created"] == new["created"]
    assert len(log) == 1 and log[0].startswith("[eval] the data files could not be checked against the read's (")
    assert log[0].endswith("its results are kept as recorded")


def test_transfer_merge_adapter_reads_like_the_adapter_and_is_not_reused_as_unmerged(tiny, tmp_path):
    """transfer(merge_adapter=True) reads the variant with the adapter merged: the same scores as the adapter
    applied (float32), marked as merged, and an unmerged after read in the folder is not taken for it (the before
    read is)."""
    out = tmp_path / "transfer"
    transfer(tiny["adapter"], str(tiny["variant"]), out, cfg=_cfg(tiny["data"]), device="cpu", log=QUIET)
    plain_after = json.loads((out / "eval_after" / "results.json").read_text())
    before_stamp = json.loads((out / "eval_before" / "results.json").read_text())["created"]
    transfer(tiny["adapter"], str(tiny["variant"]), out, cfg=_cfg(tiny["data"]), device="cpu", reuse=True,
             merge_adapter=True, log=QUIET)
    merged_after = json.loads((out / "eval_after" / "results.json").read_text())
    assert json.loads((out / "eval_before" / "results.json").read_text())["created"] == before_stamp  # reused
    assert merged_after["created"] != plain_after["created"]  # the unmerged read was not reused as the merged one
    assert merged_after["model"]["extra"]["adapter_merged"] is True
    assert not (plain_after["model"].get("extra") or {}).get("adapter_merged")
    ppl = [d["benchmarks"]["perplexity"]["metrics"]["perplexity"] for d in (plain_after, merged_after)]
    assert ppl[1] == pytest.approx(ppl[0], rel=1e-5) and ppl[0] != pytest.approx(
        json.loads((out / "eval_before" / "results.json").read_text())["benchmarks"]["perplexity"]["metrics"]
        ["perplexity"], rel=1e-5)  # the adapter changes the variant's perplexity; merged or not, the same change
    ss = [d["benchmarks"]["stereoset"]["metrics"]["intrasentence"]["overall"]["SS"] for d in (plain_after, merged_after)]
    assert ss[1] == ss[0]
    assert "merged into the weights for the read: `merge_and_unload`, in float32)" in \
        (out / "report.md").read_text()
    assert json.loads((out / "transfer.json").read_text())["adapter_merged_for_read"] is True


def test_cli_transfer_and_export(tiny, tmp_path, capsys, monkeypatch):
    from biasunlearn import cli

    def main(argv):
        monkeypatch.setattr(cli, "_extra_commands", [])  # cli.main registers the optional commands on each call
        return cli.main(argv)

    rc = main(["transfer", "--adapter", str(tiny["adapter"]), "--model", str(tiny["wide"]), "--out",
               str(tmp_path / "t"), "--device", "cpu", "--data-dir", str(tiny["data"]), "--merge-adapter"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not fit" in err and "q_proj" in err
    with pytest.raises(SystemExit) as stop:  # argparse says it, and --help shows it as required
        main(["export", "--model", str(tiny["llama"]), "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert stop.value.code == 2 and "the following arguments are required: --adapter" in capsys.readouterr().err
    # a shortened flag is refused, as by train, instead of standing for whichever flag it begins
    with pytest.raises(SystemExit) as stop:
        main(["eval", "--model", str(tiny["llama"]), "--lim", "2"])
    assert stop.value.code == 2 and "unrecognized arguments: --lim" in capsys.readouterr().err
    rc = main(["export", "--model", str(tiny["llama"]), "--adapter", str(tiny["adapter"]), "--out",
               str(tmp_path / "x"), "--device", "cpu"])
    assert rc == 0 and (tmp_path / "x" / "README.md").exists()
    assert "exported to" in capsys.readouterr().out


# --- report ------------------------------------------------------------------------------------------------------

def test_before_after_markdown_deltas_and_gaps():
    b = _tiny.results_doc("m", None, 60.0, 10.0)
    a = _tiny.results_doc("m", "ad", 52.0, 11.0)
    del a["benchmarks"]["bbq"]
    a["eval_config"]["limit"] = 5
    md = before_after_markdown(b, a)
    assert "| gender | 60.00 | 52.00 | -8.00 |" in md
    assert "| 10.000 | 11.000 | +1.000 | +10.00% | 100 |" in md
    assert "### BBQ\n\nnot measured (in the after read)" in md
    assert "different settings (limit)" in md
    assert "not measured" not in before_after_markdown(b, b)
    # a BBQ read on a per-category sample says so under its table (n alone does not)
    sample = "A seeded sample of at most 200 examples per category (`--bbq-per-category`, `eval_bbq_per_category`; " \
             "0 reads them all): n is what was scored."
    assert sample not in before_after_markdown(b, b)
    b2 = {**b, "eval_config": {**b["eval_config"], "bbq_per_category": 200}}
    md2 = before_after_markdown(b2, b2)
    assert md2.index(sample) > md2.index("BBQ (accuracy %") and md2.index(sample) < md2.index("Perplexity")
    # which benchmarks ran is not a setting difference: the missing section says "not measured" itself
    a2 = _tiny.results_doc("m", "ad", 52.0, 11.0)
    a2["eval_config"]["benchmarks"] = ["stereoset", "perplexity"]
    a2["eval_config"]["stereoset_intersentence"] = not b["eval_config"].get("stereoset_intersentence", True)
    assert "different settings" not in before_after_markdown(b, a2)


# --- bench scripts (smoke, on the tiny models) -------------------------------------------------------------------

_bench = _tiny.load_bench


def test_bench_make_variant_and_transfer_scripts(tiny, tmp_path):
    variant = tmp_path / "variant"
    rc = _bench("make_variant").main(["--model", str(tiny["llama"]), "--out", str(variant), "--data-dir",
                                      str(tiny["data"]), "--steps", "3", "--batch", "2", "--seq", "8",
                                      "--skip-tokens", "40", "--device", "cpu", "--lr", "1e-2"])
    assert rc == 0 and (variant / "model.safetensors").exists()
    info = json.loads((variant / "variant_info.json").read_text())
    assert info["steps"] == 3 and info["data"]["trained_token_range"][0] == 40
    assert "quantization_config" not in json.loads((variant / "config.json").read_text())

    md = tmp_path / "BENCH.md"
    md.write_text("# Benchmarks\n\n## Other section\n\nkeep me\n")
    bt = _bench("bench_transfer")
    common = ["--variant", str(variant), "--base", str(tiny["llama"]), "--data-dir", str(tiny["data"]),
              "--out", str(tmp_path / "bt"), "--limit", "3", "--ppl-max-tokens", "100", "--device", "cpu",
              "--update", str(md)]
    assert bt.main(common) == 0  # no adapter yet: base and variant only
    assert "to be filled" in md.read_text()
    assert bt.main(["--adapter", str(tiny["adapter"])] + common) == 0
    text = md.read_text()
    assert text.count(bt.BEGIN) == 1 and "keep me" in text and "to be filled" not in text
    assert "variant + transferred adapter" in text and "Base: before and after the adapter" in text


def test_bench_train_targets_from_two_results_documents():
    bt = _bench("bench_train")

    def doc(ss: dict, lms: float, ppl: float):
        intra = {d: {"SS": v, "LMS": lms, "ICAT": lms * min(v, 100 - v) / 50} for d, v in ss.items()}
        return {"benchmarks": {"stereoset": {"metrics": {"intrasentence": intra}},
                               "perplexity": {"metrics": {"perplexity": ppl}}}}

    before = doc({"gender": 62.0, "race": 64.0, "overall": 62.0}, 89.0, 20.0)
    t = bt.targets(before, doc({"gender": 53.9, "race": 48.0, "overall": 51.5}, 88.0, 20.5))
    assert t["dlms"] == pytest.approx(-1.0) and t["ppl_rel_change_pct"] == pytest.approx(2.5)
    assert t["icat_after"] == pytest.approx(88.0 * 48.5 / 50)  # 85.36
    assert t["met"] == {"ss_overall_within_2": True, "every_domain_within_4": True, "abs_dlms_le_1.5": True,
                        "icat_ge_85": True, "ppl_increase_le_3pct": True}
    t = bt.targets(before, doc({"gender": 54.1, "race": 48.0, "overall": 52.5}, 87.0, 21.0))
    assert t["met"] == {"ss_overall_within_2": False, "every_domain_within_4": False, "abs_dlms_le_1.5": False,
                        "icat_ge_85": False, "ppl_increase_le_3pct": False}
    assert t["ss_domains_before"] == {"gender": 62.0, "race": 64.0}


def test_bench_train_report_says_which_adapter_was_read():
    bt = _bench("bench_train")
    assert bt._which_adapter({"adapter": "step 250 (stop_at_step)"}) == "step 250 (stop_at_step), fixed before the run"
    assert bt._which_adapter({"adapter": "best dev check"}) == "its own dev-chosen checkpoint"
    assert bt._which_adapter({}) == "its own dev-chosen checkpoint"  # runs from before the field was recorded


def test_an_out_that_is_a_file_is_refused_before_any_model_is_read(tiny, tmp_path, monkeypatch):
    from biasunlearn import deploy, evaluate

    def no_model(*a, **k):
        raise AssertionError("a model was read before --out was checked")

    monkeypatch.setattr("biasunlearn.models.load_model", no_model)
    monkeypatch.setattr(deploy, "load_model", no_model, raising=False)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(ConfigError, match="--out .*afile: is a file, not a folder"):
        evaluate.run_eval(str(tiny["llama"]), cfg=_cfg(tiny["data"]), out_dir=afile, log=QUIET)
    with pytest.raises(ConfigError, match="--out .*afile: is a file, not a folder"):
        transfer(tiny["adapter"], str(tiny["variant"]), afile, cfg=_cfg(tiny["data"]), device="cpu", log=QUIET)
    with pytest.raises(ConfigError, match="goes through .*afile, which is a file"):
        export_merged(str(tiny["llama"]), tiny["adapter"], afile / "merged", device="cpu", log=QUIET)
    assert afile.read_text() == "mine"


def test_a_missing_or_damaged_adapter_is_named_before_the_model_is_read(tiny, tmp_path, capsys):
    import shutil

    from biasunlearn.cli import main

    def eval_with(adapter, model="no-such-model-dir", *more):
        capsys.readouterr()
        rc = main(["eval", "--model", model, "--adapter", str(adapter), "--data-dir", str(tiny["data"]),
                   "--benchmarks", "stereoset", "--limit", "2", *more])
        return rc, capsys.readouterr().err

    # the model does not exist either: the adapter, checked first, is what the message names
    rc, err = eval_with(tmp_path / "nowhere")
    assert rc == 2 and f"--adapter {tmp_path / 'nowhere'}: no such folder" in err
    run = tiny["adapter"].parent  # a training run's folder, given for the adapter inside it
    rc, err = eval_with(run)
    assert rc == 2 and "not a PEFT adapter folder" in err and f"--adapter {run / 'adapter'}" in err
    cut = tmp_path / "cut"
    shutil.copytree(tiny["adapter"], cut)
    data = (cut / "adapter_model.safetensors").read_bytes()
    (cut / "adapter_model.safetensors").write_bytes(data[: len(data) // 3])
    rc, err = eval_with(cut)
    assert rc == 2 and "adapter_model.safetensors is damaged or cut short" in err
    bad_cfg = tmp_path / "bad_cfg"
    shutil.copytree(tiny["adapter"], bad_cfg)
    (bad_cfg / "adapter_config.json").write_text('{"r": 8,')
    rc, err = eval_with(bad_cfg)
    assert rc == 2 and "adapter_config.json cannot be read as JSON" in err
    # an adapter of other shapes: one line per module kind, folded over the layers, as transfer and export say it
    rc, err = eval_with(tiny["adapter"], str(tiny["wide"]))
    message = err.split("biasunlearn: error:", 1)[-1]  # (transformers' loading bar names layers too)
    assert rc == 2 and "does not fit this model" in message and "[2 layers]" in message and "layers.0." not in message
    # a device torch does not know
    rc, err = eval_with(tiny["adapter"], str(tiny["llama"]), "--device", "gpu")
    assert rc == 2 and "--device gpu: not a device torch knows" in err
    for args in (["transfer", "--adapter", str(cut), "--model", str(tiny["variant"]), "--out", str(tmp_path / "t")],
                 ["export", "--adapter", str(cut), "--model", str(tiny["llama"]), "--out", str(tmp_path / "e")]):
        capsys.readouterr()
        assert main(args) == 2 and "is damaged or cut short" in capsys.readouterr().err


def test_a_model_folder_without_a_tokenizer_is_named(tiny, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny["llama"], bare)
    for f in bare.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
            f.unlink()
    with pytest.raises(ModelLoadError, match=r"--model .*bare: no tokenizer in the folder \(none of tokenizer.json"):
        load_model(str(bare), device="cpu")


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_transfer_refuses_an_out_that_holds_a_run_a_comparison_or_an_export(tiny, tmp_path, monkeypatch):
    from biasunlearn import deploy

    def no_model(*a, **k):
        raise AssertionError("a model was read before --out was checked")

    monkeypatch.setattr("biasunlearn.models.load_model", no_model)
    run = tmp_path / "run1"  # a training run's folder: its report and before/after results are the run's
    (run / "adapter").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"method": "biasunlearn", "config": {"seed": 1}}))
    (run / "report.md").write_text("the run's own report")
    for side in ("eval_before", "eval_after"):
        (run / side).mkdir()
        (run / side / "results.json").write_text(json.dumps({"side": side}))
    cda = tmp_path / "cc" / "cda"  # a compare method's run, in a comparison
    cda.mkdir(parents=True)
    (cda / "config.json").write_text(json.dumps({"method": "cda", "config": {}}))
    (tmp_path / "cc" / "compare.json").write_text(json.dumps({"methods": ["base", "cda"]}))
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "compare_seeds.json").write_text("{}")
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "biasunlearn_export.json").write_text("{}")
    before = _snapshot(tmp_path)
    tail = "; a transfer would write over its report.md, eval_before/ and eval_after/: name another --out"
    for out, said in ((run, "it holds a training run (biasunlearn; its config.json)"),
                      (cda, "it holds a training run (cda; its config.json)"),
                      (tmp_path / "cc", "it holds a comparison (biasunlearn compare), its compare.json"),
                      (seeds, "it holds a comparison (biasunlearn compare --seeds), its compare_seeds.json"),
                      (exp, "it holds an export (biasunlearn export), its biasunlearn_export.json")):
        with pytest.raises(ConfigError) as e:
            transfer(tiny["adapter"], str(tiny["variant"]), out, cfg=_cfg(tiny["data"]), device="cpu", log=QUIET)
        assert str(e.value) == f"--out {out}: {said}{tail}"
    rc, _, err = _tiny.run_cli(["transfer", "--model", str(tiny["variant"]), "--adapter", str(tiny["adapter"]),
                                "--out", str(run), "--limit", "2", "--data-dir", str(tiny["data"])])
    assert rc == 2 and err.strip() == f"biasunlearn: error: --out {run}: it holds a training run (biasunlearn; its " \
                                      f"config.json){tail}"
    assert _snapshot(tmp_path) == before  # byte for byte, and nothing added (no lock file left)
    # a model's config.json, a damaged one, or a transfer's own earlier folder is no run's
    for name, text in (("model", json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})),
                       ("damaged", "{bad"), ("earlier", None)):
        (tmp_path / name).mkdir()
        if text is not None:
            (tmp_path / name / "config.json").write_text(text)
        else:
            (tmp_path / name / "transfer.json").write_text("{}")
        assert deploy.check_transfer_out(tmp_path / name) == tmp_path / name


def test_export_overwrite_refuses_a_folder_holding_files_no_export_wrote(tiny, tmp_path):
    out = tmp_path / "e1"

    def export(**kw):
        return export_merged(str(tiny["llama"]), tiny["adapter"], out, device="cpu", verify=False, log=QUIET, **kw)

    export()
    prov = json.loads((out / "biasunlearn_export.json").read_text())
    assert prov["files"] == sorted(p.name for p in out.iterdir())
    assert {"README.md", "biasunlearn_export.json", "config.json", "model.safetensors"} <= set(prov["files"])
    import shutil

    shutil.copytree(out, out / "nested")  # an earlier export kept inside, and the user's notes
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    with pytest.raises(ConfigError) as e:
        export(overwrite=True)
    assert str(e.value) == (f"--out {out}: --overwrite replaces the folder whole, and it holds files that are not the "
                            "earlier export's: nested, notes.txt; move them out of it first, or name another --out")
    assert _snapshot(out) == before
    # an export made before biasunlearn_export.json listed its files: what an export writes is told by its name
    prov.pop("files")
    (out / "biasunlearn_export.json").write_text(json.dumps(prov))
    before = _snapshot(out)
    rc, _, err = _tiny.run_cli(["export", "--model", str(tiny["llama"]), "--adapter", str(tiny["adapter"]),
                                "--device", "cpu", "--no-verify", "--overwrite", "--out", str(out)])
    assert rc == 2 and err.strip().endswith("files that are not the earlier export's: nested, notes.txt; move them "
                                            "out of it first, or name another --out")
    assert _snapshot(out) == before
    shutil.rmtree(out / "nested")
    (out / "notes.txt").unlink()
    export(overwrite=True)  # only the export's own files: replaced
    assert json.loads((out / "biasunlearn_export.json").read_text())["files"] == sorted(p.name for p in out.iterdir())


def test_an_out_that_is_a_dangling_link_is_named(tiny, tmp_path):
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    said = f"--out {link}: is a symbolic link to {tmp_path / 'nowhere'}, which does not exist; make that folder, or " \
           "name another"
    with pytest.raises(ConfigError) as e:
        export_merged(str(tiny["llama"]), tiny["adapter"], link, device="cpu", verify=False, log=QUIET)
    assert str(e.value) == said
    with pytest.raises(ConfigError, match=f"--out {link}/sub: goes through {link}, which is a symbolic link to"):
        transfer(tiny["adapter"], str(tiny["variant"]), link / "sub", cfg=_cfg(tiny["data"]), device="cpu",
                 log=QUIET)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling"]  # no lock or staging folder beside it


def test_export_with_dtype_auto_verifies_in_the_dtype_it_chose(tiny, tmp_path):
    """--dtype auto: the verification reloads the export in the dtype auto resolved to (it asked resolve_dtype for
    'auto' and failed after the whole merge)."""
    from biasunlearn.models import auto_dtype, parse_device

    res = export_merged(str(tiny["llama"]), tiny["adapter"], tmp_path / "auto", dtype="auto", device="cpu", log=QUIET)
    assert res["verification"]["checked"] is True
    want = str(auto_dtype(parse_device("cpu"))).replace("torch.", "")
    assert json.loads((tmp_path / "auto" / "biasunlearn_export.json").read_text())["dtype"] == want


def test_an_adapter_with_trained_biases_fits_and_is_refused_only_for_gguf(tiny, tmp_path):
    """PEFT saves a LoRA layer's trained bias (bias="lora_only" or "all") under .base_layer.: the fit check finds it
    at the module's own name in the plain model (it reported "not in the model"). The GGUF rewrite adds B·A to
    weights and cannot carry a bias: --gguf is refused before the model loads, naming a tensor."""
    from safetensors import safe_open

    from biasunlearn.deploy import fit_problems, gguf_unsupported

    adapter = _tiny.make_adapter(tiny["gpt2"], tmp_path / "biased", bias="lora_only")
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        biases = sorted(k for k in f.keys() if k.endswith(".bias") and ".lora_" not in k)
    if not biases:  # PEFT 0.18 under transformers 5.0 (the floor versions) saves no trained bias at all
        pytest.skip("this PEFT does not save the trained biases of bias='lora_only'")
    # PEFT 0.21 saves them as ...c_attn.base_layer.bias (older ones as ...c_attn.bias): either fits
    assert len(biases) == 8 and all(k.endswith((".c_attn.base_layer.bias", ".c_attn.bias", ".c_proj.base_layer.bias",
                                                ".c_proj.bias", ".c_fc.base_layer.bias", ".c_fc.bias")) for k in biases)
    m, _, _ = load_model(str(tiny["gpt2"]), device="cpu")
    assert fit_problems(m, adapter) == []
    # a bias of another size is still found
    m.transformer.h[0].attn.c_attn.bias = torch.nn.Parameter(torch.zeros(7))
    assert any("c_attn.bias: adapter has shape" in p for p in fit_problems(m, adapter))
    assert gguf_unsupported(adapter) == biases and gguf_unsupported(tiny["adapter"]) == []
    with pytest.raises(ConfigError, match=r"^--gguf: .* holds weights beside the LoRA matrices \(8, e\.g\. "
                                          r"base_model\.model\.transformer\.h\.0\.attn\.c_attn\.(base_layer\.)?bias"):
        export_merged(str(tiny["gpt2"]), adapter, tmp_path / "g", device="cpu", gguf="f16", log=QUIET)
    assert not (tmp_path / "g").exists()
    # the folder export merges the bias as it merges the LoRA matrices
    res = export_merged(str(tiny["gpt2"]), adapter, tmp_path / "folder", device="cpu", log=QUIET)
    assert res["verification"]["checked"] is True


def test_export_refuses_an_out_that_is_a_symbolic_link(tiny, tmp_path):
    """The export replaces its folder whole: through a link it replaced the link (leaving the folder it pointed to
    as it was, and a .old link no later export could remove). Refused, naming the folder to give instead."""
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError) as exc:
        export_merged(str(tiny["llama"]), tiny["adapter"], link, device="cpu", log=QUIET)
    assert str(exc.value) == (f"--out {link}: a symbolic link (to {target}); an export replaces its folder whole, so "
                              f"name the folder itself (--out {target.resolve()})")
    assert link.is_symlink() and list(target.iterdir()) == []


def test_a_lora_on_a_tied_head_is_merged_into_the_head_alone(tiny, tmp_path):
    """An lm_head tied to the input embeddings, with a LoRA on it: merging in place changed the shared tensor, so the
    embeddings moved too and the merged model scored several nats per token away from the adapter model (export's
    check refused it; eval and transfer with --merge-adapter read the wrong model). merge_into_weights unties the
    head first: the merged read, and the export, score as the adapter model does, and the embeddings stay the
    base's."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny["llama"]), dtype=torch.float32)
    base.config.tie_word_embeddings = True
    base.tie_weights()
    tied = tmp_path / "tied"
    base.save_pretrained(str(tied))
    for f in tiny["llama"].iterdir():
        if "token" in f.name:
            (tied / f.name).write_bytes(f.read_bytes())
    m, _, _ = load_model(str(tied), device="cpu")
    assert m.lm_head.weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()
    embeddings = m.get_input_embeddings().weight.detach().clone()
    adapter = _tiny.make_adapter(tied, tmp_path / "head_adapter", target_modules=["q_proj", "lm_head"])
    texts = list(PROBE_TEXTS[:3])
    want = [s.mean for s in _adapter_scores(tied, adapter, texts)]
    merged, tok, info = load_model(str(tied), adapter=str(adapter), device="cpu", merge_adapter=True)
    got = [s.mean for s in score_texts(merged, tok, texts)]
    assert got == pytest.approx(want, abs=1e-5)
    assert torch.equal(merged.get_input_embeddings().weight, embeddings)
    assert not torch.equal(merged.lm_head.weight, embeddings)  # the head carries the LoRA change alone
    res = export_merged(str(tied), adapter, tmp_path / "export", device="cpu", log=QUIET)
    assert res["verification"]["checked"] is True
    assert json.loads((tmp_path / "export" / "config.json").read_text())["tie_word_embeddings"] is False
