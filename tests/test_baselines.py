"""The baselines on a tiny model: CDA, SFT and DPO train a few steps on the same split as BiasUnlearn, write an
adapter and dev logs, and the evaluation reads the adapter; Self-Debias matches the rescaling rule computed by hand."""
import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from test_unlearn_train import train_data  # noqa: F401  (fixture)


def small_config(out, model_path, data, **kw):
    from biasunlearn.unlearn.config import make_config

    base = dict(output_dir=str(out), model=str(model_path), data_dir=str(data), train_pool="pool.json",
                max_steps=3, eval_every=2, forget_batch_size=2, retain_batch_size=4, unrelated_batch_size=3,
                learning_rate=5e-3, warmup_steps=0, logging_steps=1, dev_fraction=0.3, min_dev_per_type=1,
                skip_final_eval=True, use_cpu=True, bf16=False, disable_tqdm=True, seed=0)
    base.update(kw)
    return make_config(**base)


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def check_run_folder(run, cfg, steps):
    from biasunlearn.data.splits import checked_splits

    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "splits.json", "config.json",
                 "log.jsonl", "dev_log.jsonl", "train_summary.json"):
        assert (run / name).exists(), name
    w = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in w.items() if "lora_B" in k)  # LoRA B starts at 0: it trained
    # the same split as BiasUnlearn's pipeline makes from the same config
    splits, _, _ = checked_splits(cfg)
    assert json.loads((run / "splits.json").read_text())["checksum"] == splits.to_dict()["checksum"]
    assert json.loads((run / "config.json").read_text())["machine"]["cuda"] == []  # the hardware is recorded
    dev = read_jsonl(run / "dev_log.jsonl")
    assert [d["step"] for d in dev] == [0, 2, steps]  # every eval_every steps, plus the start and the last step
    for d in dev:
        assert set(d) >= {"step", "ss", "ss_overall", "lms"}
        assert set(d["ss"]) == {"gender", "race"}
    assert json.loads((run / "train_summary.json").read_text())["steps"] == steps


def evaluate_adapter(model_path, adapter, data, out):
    """The evaluation suite reads the adapter: results.json names it, and its scores differ from the base model's."""
    from biasunlearn.evaluate import EvalConfig, evaluate_model
    from biasunlearn.models import load_model
    from biasunlearn.scoring import score_texts

    model, tok, info = load_model(str(model_path), adapter=str(adapter), device="cpu")
    assert info.adapter == str(adapter)
    doc = evaluate_model(model, tok, EvalConfig(benchmarks=("stereoset", "crows_pairs"), data_dir=str(data),
                                                progress=False), info.to_dict(), out, log=None)
    assert json.loads((out / "results.json").read_text())["model"]["adapter"] == str(adapter)
    base, tok, _ = load_model(str(model_path), device="cpu")
    texts = ["The mother was very caring today.", "Women cannot drive well."]
    tuned = [s.sum for s in score_texts(model, tok, texts)]
    plain = [s.sum for s in score_texts(base, tok, texts)]
    assert any(abs(a - b) > 1e-4 for a, b in zip(tuned, plain))
    return doc


@pytest.mark.parametrize("name", ["cda", "sft"])
def test_sentence_baselines_train_write_adapter_and_evaluate(name, tmp_path, tiny_llama_path, train_data):
    from biasunlearn.baselines import CDA, SFT

    cls = {"cda": CDA, "sft": SFT}[name]
    cfg = small_config(tmp_path / name, tiny_llama_path, train_data)
    summary = cls(cfg, log=lambda s: None).train()
    assert summary["steps"] == 3 and summary["batch_size"] == 6  # forget + retain batch of BiasUnlearn
    check_run_folder(tmp_path / name, cfg, 3)
    logs = read_jsonl(tmp_path / name / "log.jsonl")
    assert any("loss" in r for r in logs)
    doc = evaluate_adapter(tiny_llama_path, tmp_path / name / "adapter", train_data, tmp_path / "eval")
    assert doc["benchmarks"]["crows_pairs"]["metrics"]["length_normalised"]["overall"]["n"] == 3


def test_a_baseline_rerun_starts_its_logs_again_and_a_failed_plot_loses_no_summary(tmp_path, tiny_llama_path,
                                                                                   train_data, monkeypatch):
    from biasunlearn import plots
    from biasunlearn.baselines import CDA

    cfg = small_config(tmp_path / "cda", tiny_llama_path, train_data)
    CDA(cfg, log=lambda s: None).train()
    first = read_jsonl(tmp_path / "cda" / "dev_log.jsonl")

    def no_plot(*a, **kw):
        raise ValueError("no display")

    monkeypatch.setattr(plots, "plot_dev_ss", no_plot)
    (tmp_path / "cda" / "dev_ss.png").unlink()
    said = []
    summary = CDA(cfg, log=said.append).train()  # a baseline does not resume: the same folder again starts afresh
    again = read_jsonl(tmp_path / "cda" / "dev_log.jsonl")
    assert [d["step"] for d in again] == [0, 2, 3]  # not appended to the first run's rows
    assert [d["ss"] for d in again] == [d["ss"] for d in first]  # the same seed: the same run
    assert json.loads((tmp_path / "cda" / "train_summary.json").read_text())["steps"] == summary["steps"] == 3
    assert f"[cda] warning: {tmp_path / 'cda' / 'dev_ss.png'} not drawn (ValueError: no display)" in said
    assert [m for m in said if re.fullmatch(r"\[cda\] \d+ training sentences, 3 steps of 6", m)] == \
        [m for m in said if " training sentences, " in m] != [], said
    assert not (tmp_path / "cda" / "dev_ss.png").exists()


def test_training_texts_cda_anti_only_sft_one_to_one(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.baselines import CDA, SFT
    from biasunlearn.data.splits import checked_splits

    cfg = small_config(tmp_path / "x", tiny_llama_path, train_data)
    splits, _, _ = checked_splits(cfg)
    cda = CDA(cfg).training_texts(splits.train)
    sft = SFT(cfg).training_texts(splits.train)
    assert cda == [e.anti_stereotype for e in splits.train]
    assert sorted(sft) == sorted([e.stereotype for e in splits.train] + cda)
    assert sum(s in {e.stereotype for e in splits.train} for s in sft) == len(splits.train)  # 1:1


def test_dpo_pairs_prompt_chosen_rejected(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.baselines import DPO, preference_pairs
    from biasunlearn.data.splits import checked_splits

    cfg = small_config(tmp_path / "x", tiny_llama_path, train_data)
    splits, _, _ = checked_splits(cfg)
    pairs = preference_pairs(splits.train)
    assert len(pairs) == len(splits.train)
    e, p = splits.train[0], pairs[0]
    assert p["x"] + p["chosen"] == e.anti_stereotype and p["x"] + p["rejected"] == e.stereotype
    assert p["x"] == f"The {e.target} was"
    from biasunlearn.models import load_tokenizer, start_token_id

    tok = load_tokenizer(str(tiny_llama_path))
    rows = DPO(cfg).encode_pairs(tok, pairs[:1])
    assert rows[0]["prompt_ids"][0] == start_token_id(tok)
    assert rows[0]["prompt_ids"].count(start_token_id(tok)) == 1  # our start token only, no second BOS
    assert rows[0]["chosen_ids"] == tok(p["chosen"], add_special_tokens=False)["input_ids"]
    # a legacy SentencePiece tokenizer: the completions are split from the whole sentences' tokens, without the
    # lone "▁" that " caring." tokenized alone starts with
    from _tiny import make_legacy_sp_tokenizer

    sp = make_legacy_sp_tokenizer()
    ids = sp.convert_tokens_to_ids
    (row,) = DPO(cfg).encode_pairs(sp, [{"x": "The mother was", "chosen": " very strict.", "rejected": " very caring."}])
    assert row == {"prompt_ids": [start_token_id(sp)] + ids(["▁The", "▁mother", "▁was"]),
                   "chosen_ids": ids(["▁very", "▁strict", "."]), "rejected_ids": ids(["▁very", "▁caring", "."])}


def test_dpo_trains_against_adapter_disabled_reference(tmp_path, tiny_llama_path, train_data):
    from biasunlearn.baselines import DPO

    cfg = small_config(tmp_path / "dpo", tiny_llama_path, train_data)
    said = []
    summary = DPO(cfg, log=said.append).train()
    assert summary["steps"] == 3 and summary["batch_size"] == 3  # pairs per step: half of forget + retain
    # what it trains on and for how long, said once before the first step
    assert [m for m in said if re.fullmatch(r"\[dpo\] \d+ preference pairs, 3 steps of 3 pairs", m)] == \
        [m for m in said if " preference pairs, " in m] != [], said
    check_run_folder(tmp_path / "dpo", cfg, 3)
    logs = [r for r in read_jsonl(tmp_path / "dpo" / "log.jsonl") if "rewards/margins" in r]
    # step 1: the policy equals the reference (base model, adapter disabled): loss log 2 and zero rewards
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert logs[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert logs[-1]["rewards/margins"] > 0  # and it learns to prefer the anti-stereotype
    cfgdoc = json.loads((tmp_path / "dpo" / "adapter" / "adapter_config.json").read_text())
    assert cfgdoc["r"] == cfg.lora_r
    assert not (tmp_path / "dpo" / "adapter" / "ref").exists()  # no copied reference adapter
    doc = evaluate_adapter(tiny_llama_path, tmp_path / "dpo" / "adapter", train_data, tmp_path / "eval")
    assert doc["benchmarks"]["stereoset"]["metrics"]["intrasentence"]["overall"]["n_examples"] == 7


# --- Self-Debias ---------------------------------------------------------------------------------------------

START, PA, PB, WORD = 0, 1, 2, 3  # tiny vocabulary: start token, prefix-A marker, prefix-B marker, a word
# next-token distributions by context: no prefix / prefix A / prefix B, and by the number of words seen so far
TABLE = {
    "none": [[0.5, 0.3, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]],
    "A": [[0.2, 0.6, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.7, 0.1, 0.1, 0.1]],
    "B": [[0.4, 0.4, 0.1, 0.1], [0.25, 0.05, 0.6, 0.1], [0.1, 0.1, 0.1, 0.7]],
}


class FakeLM(torch.nn.Module):
    """Its distribution at position t depends on which prefix marker the context holds and on how many words
    (token 3) it holds: the same context with and without a prefix lines up exactly when aligned right."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, input_ids, attention_mask=None, **kw):
        self.calls.append(tuple(input_ids.shape))
        b, t = input_ids.shape
        out = torch.empty(b, t, 4)
        for i in range(b):
            for j in range(t):
                ctx = input_ids[i, : j + 1].tolist()
                key = "A" if PA in ctx else "B" if PB in ctx else "none"
                n = min(ctx.count(WORD), 2)
                out[i, j] = torch.log(torch.tensor(TABLE[key][n])) + 3.0  # unnormalised logits
        return type("Out", (), {"logits": out})()


class FakeTok:
    bos_token_id, eos_token_id, pad_token_id = START, START, START

    def __call__(self, text, add_special_tokens=False):
        ids = {"A: ": [PA], "B: ": [PB, PB]}[text]  # prefixes of different lengths
        return {"input_ids": ids}


def rule_by_hand(p, prefixed, lam=50.0, eps=0.01):
    """The rescaling written out in plain Python (Schick et al.'s floor: no factor below eps)."""
    mx = [max(q[w] for q in prefixed) for w in range(len(p))]
    alpha = [max(eps, 1.0 if p[w] - mx[w] >= 0 else math.exp(lam * (p[w] - mx[w]))) for w in range(len(p))]
    z = sum(a * x for a, x in zip(alpha, p))
    return [a * x / z for a, x in zip(alpha, p)]


def test_self_debias_rule_by_hand_on_tiny_vocabulary():
    from biasunlearn.baselines import SelfDebias

    ids = torch.tensor([[START, WORD, WORD], [START, WORD, START]])  # second row: right padding (pad = START)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # p(.|x) = [.5 .3 .1 .1]; max over prefixes = [.4 .6 .1 .1]; delta = [.1 -.3 0 0]; e^(50 * -.3) = e^-15
    # without a floor (epsilon 0): alpha = [1, e^-15, 1, 1]; p~ = [.5, .3 e^-15, .1, .1] / (.7 + .3 e^-15)
    z = 0.7 + 0.3 * math.exp(-15)
    unfloored = SelfDebias(FakeLM(), FakeTok(), prefixes=["A: ", "B: "], decay=50.0, epsilon=0.0)
    got = unfloored(input_ids=ids, attention_mask=mask).logits.exp()
    torch.testing.assert_close(got[0, 0], torch.tensor([0.5 / z, 0.3 * math.exp(-15) / z, 0.1 / z, 0.1 / z]),
                               rtol=1e-4, atol=1e-9)
    # with Schick et al.'s floor (the default, epsilon .01): alpha = [1, .01, 1, 1]; p~ = [.5, .003, .1, .1] / .703
    wrapper = SelfDebias(FakeLM(), FakeTok(), prefixes=["A: ", "B: "], decay=50.0)
    assert wrapper.epsilon == 0.01
    by_hand = [0.5 / 0.703, 0.003 / 0.703, 0.1 / 0.703, 0.1 / 0.703]
    out = wrapper(input_ids=ids, attention_mask=mask)
    got = out.logits.exp()
    torch.testing.assert_close(got[0, 0], torch.tensor(by_hand), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(got[1, 0], torch.tensor(by_hand), rtol=1e-4, atol=1e-9)
    assert got[0, 0, 1].item() == pytest.approx(0.003 / 0.703, rel=1e-4)
    with pytest.raises(ValueError, match=r"epsilon must lie in \[0, 1\], got 2.0"):
        SelfDebias(FakeLM(), FakeTok(), prefixes=["A: "], epsilon=2)
    # every position, against the rule written out by hand for the aligned contexts
    for j in range(3):
        want = rule_by_hand(TABLE["none"][j], [TABLE["A"][j], TABLE["B"][j]])
        torch.testing.assert_close(got[0, j], torch.tensor(want), rtol=1e-4, atol=1e-9)
    # position 1 (one word seen): p = uniform; A raises token 3, B raises token 2 -> both pushed down
    assert got[0, 1, 2] < 0.25 and got[0, 1, 3] < 0.25 and got[0, 1, 0] > 0.25
    # the logits are a normalised log-distribution, so score_sequences' log-softmax leaves them unchanged
    torch.testing.assert_close(torch.log_softmax(out.logits, -1), out.logits)
    # three forward passes: the input, then each prefix inserted after the start token (lengths 1 and 2)
    assert wrapper.model.calls == [(2, 3), (2, 4), (2, 5)]
    # a batch that does not begin with the start token gets the prefixes in front, aligned the same way
    got = wrapper(input_ids=torch.tensor([[WORD, WORD]])).logits.exp()
    for j in range(2):
        want = rule_by_hand(TABLE["none"][j + 1], [TABLE["A"][j + 1], TABLE["B"][j + 1]])
        torch.testing.assert_close(got[0, j], torch.tensor(want), rtol=1e-4, atol=1e-9)


def test_self_debias_function_matches_rule():
    from biasunlearn.baselines import self_debias_logprobs

    p = torch.tensor([0.5, 0.3, 0.1, 0.1]).log()
    pa, pb = torch.tensor([0.2, 0.6, 0.1, 0.1]).log(), torch.tensor([0.4, 0.4, 0.1, 0.1]).log()
    got = self_debias_logprobs(p, [pa, pb], 50.0).exp()
    want = rule_by_hand([0.5, 0.3, 0.1, 0.1], [[0.2, 0.6, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1]])
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=1e-9)
    # the floor binds here: delta(token 1) = -.3, e^-15 < .01, so token 1 keeps a factor of exactly .01
    torch.testing.assert_close(got, torch.tensor([0.5, 0.003, 0.1, 0.1]) / 0.703, rtol=1e-5, atol=1e-9)
    # a milder lambda stays above the floor: e^(5 * -.3) = e^-1.5 > .01
    got = self_debias_logprobs(p, [pa, pb], 5.0).exp()
    z = 0.7 + 0.3 * math.exp(-1.5)
    torch.testing.assert_close(got, torch.tensor([0.5, 0.3 * math.exp(-1.5), 0.1, 0.1]) / z, rtol=1e-5, atol=1e-9)
    # epsilon 0 is the rule without the floor; an epsilon outside [0, 1] is refused
    got = self_debias_logprobs(p, [pa, pb], 50.0, epsilon=0.0).exp()
    assert got[1].item() == pytest.approx(0.3 * math.exp(-15) / (0.7 + 0.3 * math.exp(-15)), rel=1e-4)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"epsilon must lie in \[0, 1\]"):
            self_debias_logprobs(p, [pa, pb], 50.0, epsilon=bad)
    # with no token made more likely by a prefix nothing changes
    torch.testing.assert_close(self_debias_logprobs(p, [p], 50.0), p, rtol=1e-6, atol=1e-6)


def test_self_debias_padded_batch_matches_single_sequences(tiny_llama_path):
    """On a real tiny model: the batched, right-padded wrapper equals the rule applied to each sentence alone, with
    every prefix run as its own unpadded sequence (so the position alignment is right)."""
    from biasunlearn.baselines import SelfDebias, self_debias_logprobs
    from biasunlearn.models import load_model
    from biasunlearn.scoring import encode_for_scoring, pad_batch

    model, tok, _ = load_model(str(tiny_llama_path), device="cpu")
    prefixes = ["The following text discriminates against people because of their gender: ",
                "The following text discriminates against people because of their religion: "]
    wrapper = SelfDebias(model, tok, prefixes=prefixes)
    texts = ["The mother was very caring today.", "The nurse helped.", "My sister is a gentle person."]
    seqs, _ = encode_for_scoring(tok, texts)
    ids, attn = pad_batch(seqs, tok.pad_token_id, "cpu")
    with torch.no_grad():
        got = wrapper(input_ids=ids, attention_mask=attn).logits
        for i, s in enumerate(seqs):
            lp = torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0].float(), -1)
            pre = []
            for p in prefixes:
                pid = tok(p, add_special_tokens=False)["input_ids"]
                full = torch.tensor([[s[0]] + pid + s[1:]])
                pre.append(torch.log_softmax(model(input_ids=full).logits[0, len(pid):].float(), -1))
            want = self_debias_logprobs(lp, pre, 50.0)
            torch.testing.assert_close(got[i, : len(s)], want, rtol=1e-4, atol=1e-4)


def test_self_debias_scores_through_the_evaluation_suite(tiny_gpt2_path, fake_data, tmp_path):
    from biasunlearn.baselines import SelfDebias, scoring_cost
    from biasunlearn.data import load_crows_pairs
    from biasunlearn.evaluate import EvalConfig, evaluate_model
    from biasunlearn.models import load_model
    from biasunlearn.scoring import score_texts

    model, tok, info = load_model(str(tiny_gpt2_path), device="cpu")
    cfg = EvalConfig(data_dir=str(fake_data), progress=False)
    plain = evaluate_model(model, tok, cfg, info.to_dict(), tmp_path / "plain", log=None)
    deb = evaluate_model(SelfDebias(model, tok), tok, cfg, info.to_dict(), tmp_path / "deb", log=None)
    assert set(deb["benchmarks"]) == {"stereoset", "crows_pairs", "bbq", "perplexity"}
    p0 = plain["benchmarks"]["perplexity"]["metrics"]
    p1 = deb["benchmarks"]["perplexity"]["metrics"]
    assert p1["tokens_scored"] == p0["tokens_scored"]  # same tokens scored: the prefixes are never scored
    assert p1["perplexity"] != pytest.approx(p0["perplexity"], rel=1e-4), (p0, p1)

    def preds(read, bench):
        rows = [json.loads(x) for x in (tmp_path / read / "predictions.jsonl").read_text().splitlines()]
        return {r["id"]: r for r in rows if r["benchmark"] == bench}

    # StereoSet: the same examples, and every sentence score of every example is the debiased model's, not the plain's
    ss0, ss1 = preds("plain", "stereoset"), preds("deb", "stereoset")
    assert set(ss1) == set(ss0) and {r["task"] for r in ss1.values()} == {"intrasentence", "intersentence"}
    for i, r in ss1.items():
        for key in ("s_stereo", "s_anti", "s_unrel"):
            assert r[key] != pytest.approx(ss0[i][key], rel=1e-6, abs=1e-6), (i, key)
    # CrowS-Pairs: each sentence's summed log-prob is the one the SelfDebias wrapper gives when scored directly, and
    # differs from the plain model's
    cp0, cp1 = preds("plain", "crows_pairs"), preds("deb", "crows_pairs")
    pairs = load_crows_pairs(fake_data / "crows_pairs" / "crows_pairs_anonymized.csv")
    assert set(cp1) == set(cp0) == {p.id for p in pairs}
    direct = score_texts(SelfDebias(model, tok), tok, [t for p in pairs for t in (p.sent_more, p.sent_less)])
    for k, p in enumerate(pairs):
        r = cp1[p.id]
        assert r["sum_more"] == pytest.approx(direct[2 * k].sum, rel=1e-5, abs=1e-5)
        assert r["sum_less"] == pytest.approx(direct[2 * k + 1].sum, rel=1e-5, abs=1e-5)
        for key in ("sum_more", "sum_less", "mean_more", "mean_less"):
            assert r[key] != pytest.approx(cp0[p.id][key], rel=1e-6, abs=1e-6), (p.id, key)

    # the cost: the times are sub-millisecond on this tiny model, so no bound on the timed ratio (it would be flaky);
    # what is deterministic is the work: each batch the wrapper scores runs the model once plain and once per prefix
    calls = {"inside": 0, "wrapper": 0, "active": False}

    def enter(*a):
        calls.update(active=True, wrapper=calls["wrapper"] + 1)

    def leave(*a):
        calls["active"] = False

    def model_call(*a):
        calls["inside"] += calls["active"]

    wrapper = SelfDebias(model, tok)
    hooks = [wrapper.register_forward_pre_hook(enter), wrapper.register_forward_hook(leave),
             model.register_forward_hook(model_call)]
    try:
        cost = scoring_cost(model, wrapper, tok, ["The river flows past the village."] * 6)
    finally:
        for h in hooks:
            h.remove()
    assert cost["forward_passes_per_batch"] == 4 == 1 + len(wrapper.prefix_ids)
    assert cost["n_sentences"] == 6
    # each batch the wrapper scores runs the model four times: once plain, once per prefix
    assert calls["wrapper"] >= 1 and calls["inside"] == 4 * calls["wrapper"], calls
    assert cost["ratio"] == pytest.approx(cost["self_debias_ms_per_sentence"] / cost["plain_ms_per_sentence"])
    assert cost["plain_ms_per_sentence"] > 0 and cost["self_debias_ms_per_sentence"] > 0


@pytest.mark.parametrize("name", ["sft", "dpo"])
def test_a_baseline_stops_at_stop_at_step_of_the_same_schedule(name, tmp_path, tiny_llama_path, train_data):
    """A recipe that fixes its schedule (stop_at_step 2 of max_steps 4) stops a baseline at step 2 with the learning
    rates of the 4-step schedule: its first two logged steps are those of the full run, step for step."""
    from biasunlearn.baselines import DPO, SFT

    kw = dict(max_steps=4, eval_every=1, swap_mode="none")
    full = {"sft": SFT, "dpo": DPO}[name](small_config(tmp_path / "full", tiny_llama_path, train_data, **kw),
                                          log=lambda s: None).train()
    cut = {"sft": SFT, "dpo": DPO}[name](small_config(tmp_path / "cut", tiny_llama_path, train_data, stop_at_step=2,
                                                      **kw), log=lambda s: None).train()
    assert (full["steps"], cut["steps"]) == (4, 2)
    assert cut["kept"] == "final adapter (no checkpoint choice), step 2 of a 4-step schedule (stop_at_step)"
    assert full["kept"] == "final adapter (no checkpoint choice)"
    assert [d["step"] for d in read_jsonl(tmp_path / "cut" / "dev_log.jsonl")] == [0, 1, 2]

    def steps(run):
        return {r["step"]: r for r in read_jsonl(run / "log.jsonl") if "learning_rate" in r}

    a, b = steps(tmp_path / "full"), steps(tmp_path / "cut")
    assert sorted(b) == [1, 2] and sorted(a) == [1, 2, 3, 4]
    for s in (1, 2):
        assert b[s]["learning_rate"] == pytest.approx(a[s]["learning_rate"], rel=1e-9)
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-5)
    assert a[2]["learning_rate"] > a[4]["learning_rate"]  # the schedule decays over 4 steps, not 2


@pytest.mark.parametrize("name", ["sft", "dpo"])
def test_a_baseline_trains_on_the_dev_slice_too_when_the_recipe_does(name, tmp_path, tiny_llama_path, train_data,
                                                                     monkeypatch):
    """With train_on_dev a baseline trains on the pairs BiasUnlearn trains on (train and dev): SFT's sentences and
    DPO's preference pairs are made from both; its dev log says it reads trained data."""
    import biasunlearn.baselines.dpo as dpo_mod
    from biasunlearn.baselines import DPO, SFT

    seen = []
    if name == "sft":
        texts = SFT.training_texts
        monkeypatch.setattr(SFT, "training_texts", lambda self, exs: seen.append(sorted(e.id for e in exs))
                            or texts(self, exs))
    else:
        pairs = dpo_mod.preference_pairs
        monkeypatch.setattr(dpo_mod, "preference_pairs", lambda exs: seen.append(sorted(e.id for e in exs))
                            or pairs(exs))
    cfg = small_config(tmp_path / name, tiny_llama_path, train_data, train_on_dev=True, swap_mode="none",
                       stop_at_step=3)
    {"sft": SFT, "dpo": DPO}[name](cfg, log=lambda s: None).train()
    splits = json.loads((tmp_path / name / "splits.json").read_text())
    assert splits["dev_ids"] and splits["dev_trained_on"] is True
    assert seen == [sorted(splits["train_ids"] + splits["dev_ids"])]
    assert all(d["trained_on"] is True for d in read_jsonl(tmp_path / name / "dev_log.jsonl"))
