"""The one batched scoring path against direct per-sentence computations, on both tiny model shapes."""
import random

import pytest
import torch

from biasunlearn.errors import ConfigError, ModelLoadError
from biasunlearn.evaluate import perplexity_windows
from biasunlearn.models import start_token_id
from biasunlearn.scoring import (
    Score,
    encode_for_scoring,
    length_batches,
    pad_batch,
    score_mask,
    score_sequences,
    score_texts,
    score_texts_one_by_one,
    token_logprobs,
)

TEXTS = [
    "The mother was very caring today.",
    "Hi",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden gate.",
    "Her sister is a gentle person.",
    "Rain fell on the roof all afternoon, and the family played cards by the fire until the evening came.",
    "Ethiopian food is spicy.",
    "A",
    "Scientists study the stars.",
]
PREFIXES = [
    "The mother was very",
    "",
    "The quick brown fox",
    "Her sister is a",
    "Rain fell on the roof all afternoon,",
    "Ethiopian food is",
    "Birds sang in the tall trees.",
    "",
]
CONTINUATIONS = [" caring today.", "Hi", " jumps over the lazy dog.", " gentle person.", " and the family played.",
                 " spicy.", " A dog barked.", "Scientists study the stars."]


def manual_scores(model, tok, texts, prefixes=None):
    """Independent of the package: one forward pass per text, an explicit log_softmax and a loop over positions."""
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out = []
    for i, text in enumerate(texts):
        x = tok(prefixes[i], add_special_tokens=False)["input_ids"] if prefixes else []
        y = tok(text, add_special_tokens=False)["input_ids"]
        ids = [start] + x + y
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        total = sum(float(logp[t - 1, ids[t]]) for t in range(1 + len(x), len(ids)))
        out.append(Score(total, len(y)))
    return out


def assert_scores_close(a, b, tol=1e-5):
    """Same token counts; mean log-probabilities (what the metrics use) within `tol`; sums within float32
    accumulation error (a sum of 45 tokens near -330 nats carries ~3e-5 of float32 rounding)."""
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert sa.n == sb.n
        assert sa.mean == pytest.approx(sb.mean, abs=tol)
        assert sa.sum == pytest.approx(sb.sum, rel=1e-6, abs=tol)


def test_batched_equals_one_by_one_and_manual(tiny_model):
    model, tok = tiny_model
    # small budgets force several length-sorted, padded batches
    batched = score_texts(model, tok, TEXTS, max_tokens=64, max_batch=3)
    assert_scores_close(batched, score_texts_one_by_one(model, tok, TEXTS))
    assert_scores_close(batched, manual_scores(model, tok, TEXTS))
    # one big batch gives the same numbers
    assert_scores_close(score_texts(model, tok, TEXTS, max_tokens=100_000), batched)
    assert all(s.sum < 0 for s in batched)
    assert len({round(s.mean, 3) for s in batched}) > 4  # the tiny models are not uniform: scores differ


def test_batched_with_prefixes_equals_one_by_one_and_manual(tiny_model):
    model, tok = tiny_model
    batched = score_texts(model, tok, CONTINUATIONS, PREFIXES, max_tokens=48, max_batch=2)
    assert_scores_close(batched, score_texts_one_by_one(model, tok, CONTINUATIONS, PREFIXES))
    assert_scores_close(batched, manual_scores(model, tok, CONTINUATIONS, PREFIXES))
    # the prefix is context, not scored: n counts only the continuation's tokens
    for s, y in zip(batched, CONTINUATIONS):
        assert s.n == len(tok(y, add_special_tokens=False)["input_ids"])
    # and it matters: the same continuation without its prefix scores differently
    alone = score_texts(model, tok, CONTINUATIONS[:1])
    assert alone[0].n == batched[0].n
    assert abs(alone[0].sum - batched[0].sum) > 1e-3


def test_start_token_prepended_once_and_never_scored(tiny_model):
    model, tok = tiny_model
    start = start_token_id(tok)
    assert start == tok.bos_token_id
    seqs, score_from = encode_for_scoring(tok, TEXTS)
    for seq, sf, text in zip(seqs, score_from, TEXTS):
        body = tok(text, add_special_tokens=False)["input_ids"]
        assert seq == [start] + body  # exactly one start token, even for a tokenizer that adds BOS itself
        assert sf == 1
    for s, text in zip(score_texts(model, tok, TEXTS), TEXTS):
        assert s.n == len(tok(text, add_special_tokens=False)["input_ids"])
    seqs, score_from = encode_for_scoring(tok, CONTINUATIONS, PREFIXES)
    for seq, sf, x, y in zip(seqs, score_from, PREFIXES, CONTINUATIONS):
        xi = tok(x, add_special_tokens=False)["input_ids"]
        assert seq == [start] + xi + tok(y, add_special_tokens=False)["input_ids"]
        assert sf == 1 + len(xi)
    with pytest.raises(ValueError, match="2 prefixes for 3 texts"):
        encode_for_scoring(tok, TEXTS[:3], PREFIXES[:2])


def test_llama_tokenizer_adds_bos_by_default_but_scoring_does_not_double_it(tiny_model_paths):
    from biasunlearn.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_paths["llama"]))
    assert tok("Hi there")["input_ids"][0] == tok.bos_token_id
    seq = encode_for_scoring(tok, ["Hi there"])[0][0]
    assert seq.count(tok.bos_token_id) == 1


def test_start_token_falls_back_to_eos():
    class Tok:
        bos_token_id, eos_token_id = None, 7

    assert start_token_id(Tok()) == 7
    Tok.eos_token_id = None
    with pytest.raises(ModelLoadError, match="neither a BOS nor an EOS"):
        start_token_id(Tok())


def test_pad_id_does_not_change_scores(tiny_model):
    model, tok = tiny_model
    seqs, starts = encode_for_scoring(tok, TEXTS)
    a = score_sequences(model, seqs, starts, pad_id=tok.pad_token_id)
    b = score_sequences(model, seqs, starts, pad_id=5)
    assert a[0] == pytest.approx(b[0], abs=1e-5)
    assert list(a[1]) == list(b[1]) == [len(s) - 1 for s in seqs]


def test_score_sequences_restores_training_mode_and_handles_empty(tiny_model):
    model, tok = tiny_model
    sums, counts = score_sequences(model, [], [])
    assert len(sums) == 0 and len(counts) == 0
    model.train()
    try:
        seqs, starts = encode_for_scoring(tok, TEXTS[:2])
        s_train, _ = score_sequences(model, seqs, starts)
        assert model.training
    finally:
        model.eval()
    s_eval, _ = score_sequences(model, seqs, starts)
    assert s_train == pytest.approx(s_eval, abs=1e-5)  # scored in eval mode either way (no dropout)


def test_full_path_in_pieces_gives_the_scores_of_one_piece(tiny_model, monkeypatch):
    """The full path's log-softmax runs a few rows at a time (bounded memory): one row a piece scores the same."""
    import biasunlearn.scoring as sc

    model, tok = tiny_model
    seqs, starts = encode_for_scoring(tok, TEXTS)
    whole, n1 = score_sequences(model, seqs, starts, direct=False)
    monkeypatch.setattr(sc, "FULL_ELEMENTS", 1)  # one row per piece
    calls = []
    real = sc.token_logprobs
    monkeypatch.setattr(sc, "token_logprobs", lambda lg, ids: calls.append(lg.shape[0]) or real(lg, ids))
    pieces, n2 = score_sequences(model, seqs, starts, direct=False)
    assert set(calls) == {1} and len(calls) == len(TEXTS)
    assert (n1 == n2).all() and pieces == pytest.approx(whole, abs=1e-9)


def test_a_model_in_training_is_scored_without_inference_tensors(tiny_model):
    """A model in training mode (a dev check during training) is scored under no_grad, not inference mode: tensors
    made in inference mode from its weights could not be saved for the next backward. A model in eval mode is
    scored in inference mode, the faster one."""
    model, tok = tiny_model
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append(
        (torch.is_inference_mode_enabled(), torch.is_grad_enabled())))
    seqs, starts = encode_for_scoring(tok, TEXTS[:2])
    try:
        score_sequences(model, seqs, starts, direct=False)
        assert seen and set(seen) == {(True, False)}
        seen.clear()
        model.train()
        score_sequences(model, seqs, starts, direct=False)
        assert model.training
        assert seen and set(seen) == {(False, False)}
    finally:
        hook.remove()
        model.eval()


def test_token_logprobs_and_score_mask_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])  # [1, 3, 2]
    ids = torch.tensor([[0, 1, 1]])
    lp = token_logprobs(logits, ids)
    ln2 = torch.log(torch.tensor(2.0)).item()
    assert lp.shape == (1, 2)
    assert lp[0, 0].item() == pytest.approx(-ln2)  # uniform over 2
    assert lp[0, 1].item() == pytest.approx(0.0 - torch.logsumexp(torch.tensor([1.0, 0.0]), 0).item())
    # lengths 4 and 2 in a batch of width 5; second sequence scores from token 1, first from token 2
    m = score_mask(torch.tensor([4, 2]), torch.tensor([2, 1]), 5)
    assert m.tolist() == [[False, True, True, False], [True, False, False, False]]
    ids, attn = pad_batch([[5, 6, 7], [8]], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and attn.tolist() == [[1, 1, 1], [1, 0, 0]]


# --- batching ------------------------------------------------------------------------------------------------------

def test_length_batches_by_hand():
    assert length_batches([3, 5, 2, 5, 1], max_tokens=10, max_batch=8) == [[1, 3], [0, 2, 4]]
    assert length_batches([3, 5, 2, 5, 1], max_tokens=100, max_batch=2) == [[1, 3], [0, 2], [4]]
    # a sequence longer than the budget still gets a batch of its own
    assert length_batches([50, 2, 2], max_tokens=10, max_batch=8) == [[0], [1, 2]]
    assert length_batches([], max_tokens=10, max_batch=8) == []


def test_length_batches_budget_and_cover():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 60))]
        max_tokens, max_batch = rng.randint(20, 200), rng.randint(1, 16)
        batches = length_batches(lengths, max_tokens, max_batch)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
        for b in batches:
            assert len(b) <= max_batch
            width = max(lengths[i] for i in b)
            assert len(b) == 1 or width * len(b) <= max_tokens  # padded tokens within the budget
        widths = [max(lengths[i] for i in b) for b in batches]
        assert widths == sorted(widths, reverse=True)  # longest first


# --- perplexity windows --------------------------------------------------------------------------------------------

def scored_positions(n, window, stride):
    ids = list(range(n))  # token value == its position, so a window's content tells where it is
    seqs, starts = perplexity_windows(ids, window, stride)
    for seq, sf in zip(seqs, starts):
        assert seq == list(range(seq[0], seq[0] + len(seq)))  # contiguous
        assert 1 <= sf < len(seq) and len(seq) <= window  # at least one token of context, at least one scored
    return [t for seq, sf in zip(seqs, starts) for t in seq[sf:]], seqs, starts


def test_perplexity_windows_by_hand():
    pos, seqs, starts = scored_positions(20, 8, 4)
    assert [(s[0], s[-1]) for s in seqs] == [(0, 7), (4, 11), (8, 15), (12, 19)]
    assert starts == [1, 4, 4, 4]
    assert pos == list(range(1, 20))
    # stride == window: every token after the first still scored, each with context
    pos, seqs, starts = scored_positions(20, 8, 8)
    assert pos == list(range(1, 20))
    assert [(s[0], s[-1]) for s in seqs] == [(0, 7), (7, 14), (14, 19)]


@pytest.mark.parametrize("n,window,stride", [(1, 4, 2), (2, 4, 2), (5, 8, 4), (100, 16, 1), (100, 16, 5),
                                             (100, 16, 16), (101, 7, 3), (64, 2, 2), (64, 2, 1), (513, 512, 256)])
def test_perplexity_windows_score_every_token_after_the_first_once(n, window, stride):
    pos, seqs, starts = scored_positions(n, window, stride)
    assert pos == list(range(1, n))
    # every window after the first has window - stride tokens of context (one when stride == window)
    assert all(sf == max(1, window - stride) for sf in starts[1:])


def test_perplexity_windows_bad_settings():
    with pytest.raises(ConfigError, match="stride"):
        perplexity_windows(list(range(10)), 4, 5)
    with pytest.raises(ConfigError, match="stride"):
        perplexity_windows(list(range(10)), 4, 0)
    with pytest.raises(ConfigError, match="window"):
        perplexity_windows(list(range(10)), 1, 1)


def test_perplexity_windows_through_the_model_equal_one_pass(tiny_model):
    """With window >= the stream, the windowed total equals one pass over the stream; with small windows each
    token is scored once, so the count is the same."""
    model, tok = tiny_model
    ids = tok(" ".join(TEXTS), add_special_tokens=False)["input_ids"]
    seqs, starts = perplexity_windows(ids, len(ids), 1)
    s, c = score_sequences(model, seqs, starts)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    manual = sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)))
    assert float(s.sum()) == pytest.approx(manual, abs=1e-4)
    assert int(c.sum()) == len(ids) - 1
    seqs, starts = perplexity_windows(ids, 8, 8)
    s8, c8 = score_sequences(model, seqs, starts, max_tokens=32)
    assert int(c8.sum()) == len(ids) - 1
    # the first window's tokens have the same context either way
    first, _ = score_sequences(model, [ids[:8]], [1])
    assert float(s8[0]) == pytest.approx(float(first[0]), abs=1e-5)


# --- the direct path: lm_head on scored positions only ----------------------------------------------------------

def _seqs(tok, n=12):
    return encode_for_scoring(tok, TEXTS[:n], PREFIXES[:n])


def test_direct_head_path_equals_full_forward(tiny_model):
    from biasunlearn.scoring import split_head

    model, tok = tiny_model
    assert split_head(model) is not None  # the direct path really runs on these models
    seqs, starts = _seqs(tok)
    a, ca = score_sequences(model, seqs, starts, pad_id=tok.pad_token_id, direct=True, max_tokens=48)
    b, cb = score_sequences(model, seqs, starts, pad_id=tok.pad_token_id, direct=False, max_tokens=48)
    assert (ca == cb).all() and ca.sum() > 0
    assert a == pytest.approx(b, abs=1e-4)


def test_direct_head_path_with_a_lora_adapter(tiny_model_paths, tmp_path):
    from _tiny import make_adapter

    from biasunlearn.models import load_model
    from biasunlearn.scoring import split_head

    ad = make_adapter(tiny_model_paths["llama"], tmp_path / "ad")
    model, tok, _ = load_model(str(tiny_model_paths["llama"]), adapter=str(ad), device="cpu")
    assert split_head(model) is not None
    seqs, starts = _seqs(tok)
    with_ad = score_sequences(model, seqs, starts, direct=True)[0]
    assert with_ad == pytest.approx(score_sequences(model, seqs, starts, direct=False)[0], abs=1e-4)
    with model.disable_adapter():
        plain = score_sequences(model, seqs, starts, direct=True)[0]
        assert plain == pytest.approx(score_sequences(model, seqs, starts, direct=False)[0], abs=1e-4)
    assert abs(with_ad - plain).max() > 1e-3  # the adapter is live on the direct path


def test_direct_head_path_refused_or_dropped_when_logits_are_transformed(tiny_model_paths):
    from biasunlearn.models import load_model
    from biasunlearn.scoring import split_head

    model, tok, _ = load_model(str(tiny_model_paths["llama"]), device="cpu")
    model.config.final_logit_softcapping = 30.0
    assert split_head(model) is None
    model.config.final_logit_softcapping = None
    from biasunlearn.baselines import SelfDebias

    assert split_head(SelfDebias(model, tok)) is None  # a scoring wrapper keeps its own forward
    seqs, starts = _seqs(tok)
    plain = score_sequences(model, seqs, starts)[0]
    # a model whose forward rescales the logits although its config says nothing: the first-batch check catches it
    model, tok, _ = load_model(str(tiny_model_paths["llama"]), device="cpu")
    orig = model.forward

    def scaled(*a, **kw):
        out = orig(*a, **kw)
        out.logits = out.logits * 3.0
        return out

    model.forward = scaled
    assert split_head(model) is not None
    got = score_sequences(model, seqs, starts, direct=True, max_tokens=48)[0]
    want = score_sequences(model, seqs, starts, direct=False, max_tokens=48)[0]
    assert got == pytest.approx(want, abs=1e-5)
    assert abs(got - plain).max() > 0.1
    # and the verdict sticks to that model: a later call does not try the direct path again
    assert score_sequences(model, seqs, starts, direct=True, max_tokens=48)[0] == pytest.approx(want, abs=1e-5)


# --- shared-prompt scoring (BBQ) --------------------------------------------------------------------------------

SHARED_PROMPTS = ["The mother was very", "Rain fell on the roof all afternoon, and then", "A",
                  "Scientists study the stars. Who studies them?"]
SHARED_ANSWERS = [" caring", " tired today.", " kind", " the farmer and his dog", " sunshine", " rain",
                  " B", " C and D and E", " Not known", " Scientists", " nobody at all", " birds"]


def test_shared_prompt_scoring_equals_scoring_each_answer_with_its_prompt(tiny_model):
    from biasunlearn.scoring import _SHARED_CHECKED, score_texts_shared

    model, tok = tiny_model
    prefixes = [p for p in SHARED_PROMPTS for _ in range(3)]
    want = score_texts(model, tok, SHARED_ANSWERS, prefixes)
    got = score_texts_shared(model, tok, SHARED_PROMPTS, SHARED_ANSWERS, 3, max_tokens=40)
    assert [g.n for g in got] == [w.n for w in want] and all(w.n > 0 for w in want)
    assert [g.sum for g in got] == pytest.approx([w.sum for w in want], abs=1e-4)
    assert _SHARED_CHECKED.get(model) is True  # the fast path ran and passed its check
    # batches after the checked one use the fast path alone: still the same numbers
    again = score_texts_shared(model, tok, SHARED_PROMPTS, SHARED_ANSWERS, 3, max_tokens=40)
    assert [g.sum for g in again] == pytest.approx([w.sum for w in want], abs=1e-4)


def test_shared_prompt_scoring_with_adapter_and_wrapper(tiny_model_paths, tmp_path):
    from _tiny import make_adapter

    from biasunlearn.baselines import SelfDebias
    from biasunlearn.models import load_model
    from biasunlearn.scoring import score_texts_shared

    ad = make_adapter(tiny_model_paths["gpt2"], tmp_path / "ad")
    model, tok, _ = load_model(str(tiny_model_paths["gpt2"]), adapter=str(ad), device="cpu")
    prefixes = [p for p in SHARED_PROMPTS for _ in range(3)]
    for m in (model, SelfDebias(model, tok)):  # the wrapper cannot take a cache: it goes the plain way
        want = [s.sum for s in score_texts(m, tok, SHARED_ANSWERS, prefixes)]
        got = [s.sum for s in score_texts_shared(m, tok, SHARED_PROMPTS, SHARED_ANSWERS, 3)]
        assert got == pytest.approx(want, abs=1e-4)
    from biasunlearn.scoring import _SHARED_CHECKED

    assert _SHARED_CHECKED.get(model) is True
    with pytest.raises(ValueError, match="continuations"):
        score_texts_shared(model, tok, SHARED_PROMPTS, SHARED_ANSWERS[:5], 3)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_prompt_head_never_copies_the_head_weight_per_prompt(tiny_model_paths, arch):
    """With a frozen head (a PEFT model's base, a merged adapter), the head on a [B, 1, H] slice of the prompt's hidden
    states ran as a batched product over its weight expanded B times (each a copy of the whole weight). The prompt
    pass applies the head to the [B, H] rows instead: no operation sees a [B, H, V] weight."""
    from torch.profiler import ProfilerActivity, profile

    from biasunlearn.models import load_model
    from biasunlearn.scoring import _SHARED_CHECKED, score_texts_shared

    model, tok, _ = load_model(str(tiny_model_paths[arch]), device="cpu")
    model.requires_grad_(False)
    V, H = model.get_output_embeddings().weight.shape
    prefixes = [p for p in SHARED_PROMPTS for _ in range(3)]
    want = [s.sum for s in score_texts(model, tok, SHARED_ANSWERS, prefixes)]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        got = [s.sum for s in score_texts_shared(model, tok, SHARED_PROMPTS, SHARED_ANSWERS, 3)]
    assert got == pytest.approx(want, abs=1e-4) and _SHARED_CHECKED.get(model) is True
    shapes = [tuple(s) for e in prof.events() for s in (e.input_shapes or [])]
    # the positive control: the profiler recorded the head's own 2-D weight going into an operation, so that finding
    # no expanded copy below means there was none, not that the head's operations went unrecorded
    assert V != H and [s for s in shapes if s in ((V, H), (H, V))], sorted(set(s for s in shapes if len(s) == 2))
    expanded = [s for s in shapes if len(s) == 3 and s[1:] in ((H, V), (V, H))]
    assert expanded == [], expanded


def test_load_model_warns_when_the_cpu_would_emulate_bf16(tiny_llama_path, monkeypatch):
    import warnings

    import biasunlearn.models as models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"--dtype bfloat16: .*use --dtype float32 here"):
        model, _, info = models.load_model(str(tiny_llama_path), dtype="bfloat16", device="cpu")
    assert info.dtype == "bfloat16" and next(model.parameters()).dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        models.load_model(str(tiny_llama_path), dtype="float32", device="cpu")  # fp32: nothing to warn about
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
        models.load_model(str(tiny_llama_path), dtype="bfloat16", device="cpu")  # native bf16: no warning


def test_auto_dtype_is_bf16_only_where_the_device_computes_it_natively(tiny_llama_path, monkeypatch):
    import warnings

    import biasunlearn.models as models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert models.auto_dtype("cpu") == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # auto never picks the emulated (slow) bf16
        model, _, info = models.load_model(str(tiny_llama_path), dtype="auto", device="cpu")
    assert info.dtype == "float32" and next(model.parameters()).dtype == torch.float32
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert models.auto_dtype("cpu") == torch.bfloat16
    model, _, info = models.load_model(str(tiny_llama_path), dtype="auto", device="cpu")
    assert info.dtype == "bfloat16" and next(model.parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # a V100: emulated bf16
    assert models.auto_dtype("cuda") == torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    assert models.auto_dtype("cuda") == torch.bfloat16


def test_a_device_this_machine_lacks_is_refused_before_any_model_is_read(tiny_llama_path, monkeypatch):
    import biasunlearn.models as models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ConfigError, match=r"^--device cuda: no CUDA device here \(this torch build has no CUDA\); "
                                          r"use --device cpu$"):
        models.load_model(str(tiny_llama_path), device="cuda")
    with pytest.raises(ConfigError, match=r"^--device cuda:0: no CUDA device here"):
        models.check_device_available(torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    models.check_device_available(torch.device("cuda:1"))  # there: nothing said
    models.check_device_available(torch.device("cuda"))
    with pytest.raises(ConfigError, match=r"^--device cuda:2: torch sees 2 GPU\(s\) here \(cuda:0 to cuda:1\)$"):
        models.check_device_available(torch.device("cuda:2"))
    models.check_device_available(torch.device("cpu"))


def test_a_training_run_folder_as_model_is_pointed_to_its_adapter(tmp_path, tiny_llama_path):
    import json

    from biasunlearn.models import resolve_model_path

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "cda", "model": {"spec": "smollm2-135m"},
                                                 "settings": {}}))
    with pytest.raises(ModelLoadError) as e:
        resolve_model_path(str(run))
    assert str(e.value) == (f"--model {run}: a cda training run's folder, not a model; read its adapter on the model "
                            f"it was trained on: --model smollm2-135m --adapter {run / 'adapter'}")
    # a run written before runs named their method: its settings under "config", nothing of a model's
    (run / "config.json").write_text(json.dumps({"config": {"lora_r": 8}}))
    with pytest.raises(ModelLoadError, match="a biasunlearn training run's folder, not a model; .*--model <the model "
                                             "it was trained on> --adapter"):
        resolve_model_path(str(run))
    assert resolve_model_path(str(tiny_llama_path)) == (str(tiny_llama_path), "local folder")  # a model's: loaded


SKYLAKE_X_CPUINFO = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
SAPPHIRE_CPUINFO = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"


@pytest.mark.parametrize("capability,cpuinfo,native", [
    ("AVX512", SKYLAKE_X_CPUINFO, False),  # AVX-512 without the bf16 instructions: torch emulates bf16
    ("AVX512", SAPPHIRE_CPUINFO, True),
    ("AVX2", SKYLAKE_X_CPUINFO.replace(" avx512f avx512bw avx512vl", ""), False),
    ("AVX2", "flags\t: avx2 avx512_bf16\n", True),  # the flag decides, whatever torch's dispatch level says
    ("AMX", "", True),
    ("DEFAULT", "", False),  # no /proc/cpuinfo flags line (e.g. another OS): fp32
])
def test_cpu_has_native_bf16_needs_the_bf16_instructions(capability, cpuinfo, native):
    from biasunlearn.models import cpu_has_native_bf16

    assert cpu_has_native_bf16(cpuinfo=cpuinfo, capability=capability) is native


def test_machine_info_names_the_cpu_and_its_bf16(monkeypatch):
    from biasunlearn.models import machine_info

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = machine_info(cpuinfo=SKYLAKE_X_CPUINFO)
    assert info == {"cpu": "Intel(R) Xeon(R) Gold 6148", "cpu_capability": "AVX512", "cpu_native_bf16": False,
                    "cuda": []}
    info = machine_info(cpuinfo=SAPPHIRE_CPUINFO)  # no model name line: the platform's name stands in
    assert info["cpu_native_bf16"] is True and info["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU{i}")
    assert machine_info(cpuinfo=SKYLAKE_X_CPUINFO)["cuda"] == ["GPU0", "GPU1"]


# --- packing (training batches) ------------------------------------------------------------------------------------

def test_pack_batch_by_hand():
    from biasunlearn.scoring import pack_batch, pack_rows

    assert pack_rows([3, 1, 2], 3) == [[0], [2, 1]]
    assert pack_rows([2, 2, 2, 1], 4) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([5], 4)
    pk = pack_batch([[5, 6, 7], [8], [9, 10]], pad_id=0, device="cpu")
    assert pk.ids.tolist() == [[5, 6, 7], [9, 10, 8]]
    assert pk.positions.tolist() == [[0, 1, 2], [0, 1, 0]]
    # predicting positions in the rows flattened to [2 * 3]: sequence 0 -> 0, 1; sequence 2 -> row 1 slot 0
    # (predicts 10 from 9); sequence 1 has a single token and so no prediction
    assert pk.index.tolist() == [[0, 1], [0, 0], [3, 0]]
    assert pk.real.tolist() == [[True, True], [False, False], [True, False]]
    vals = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert (pk.unpack(vals) * pk.real).tolist() == [[1.0, 2.0], [0.0, 0.0], [4.0, 0.0]]
    # filler at a row's end is a sequence of its own
    pk = pack_batch([[1, 2, 3, 4], [5, 6]], pad_id=0, device="cpu")
    assert pk.ids.tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]] and pk.positions.tolist()[1] == [0, 1, 0, 1]


def test_packed_forward_equals_padded_and_unrestarted_positions_leak(tiny_model):
    from biasunlearn.scoring import pack_batch

    model, tok = tiny_model
    texts = ["The mother was very caring.", "Hi there", "The river runs past the old city and into the sea.",
             "My sister is strong."]
    seqs, _ = encode_for_scoring(tok, texts)
    pk = pack_batch(seqs, tok.pad_token_id or 0, "cpu")
    assert pk.ids.shape[0] < len(seqs)  # it really packed
    ids, attn = pad_batch(seqs, tok.pad_token_id or 0, "cpu")
    with torch.no_grad():
        padded = token_logprobs(model(input_ids=ids, attention_mask=attn, use_cache=False).logits, ids)
        def from_rows(logits):  # log p of each sequence's next tokens, read from the packed rows
            lg = pk.unpack(logits)
            nxt = pk.ids.reshape(-1)[(pk.index + 1) * pk.real]
            return lg.gather(-1, nxt.unsqueeze(-1)).squeeze(-1) - lg.logsumexp(-1)

        packed = from_rows(model(input_ids=pk.ids, position_ids=pk.positions, use_cache=False).logits)
        # the same rows with plain 0..W-1 positions: later sentences in a row attend to the earlier ones
        leaked = from_rows(model(input_ids=pk.ids, use_cache=False).logits)
    real = pk.real
    assert real.sum().item() == sum(len(s) - 1 for s in seqs)
    assert ((packed - padded) * real).abs().max().item() < 1e-4
    assert ((leaked - padded) * real).abs().max().item() > 1e-2


def test_model_spec_resolution_and_a_mistyped_built_in_name(tmp_path):
    from biasunlearn.errors import ModelLoadError
    from biasunlearn.models import resolve_model_path

    assert resolve_model_path("openai-community/gpt2") == ("openai-community/gpt2", "Hugging Face hub id")
    assert resolve_model_path("gpt2") == ("gpt2", "Hugging Face hub id")
    with pytest.raises(ModelLoadError, match=r"--model smollm2-13m: not a built-in name, a file or a folder; did you "
                                             r"mean smollm2-135m\?"):
        resolve_model_path("smollm2-13m")
    with pytest.raises(ModelLoadError, match="no such .gguf file"):
        resolve_model_path(str(tmp_path / "m.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="must be a save_pretrained folder with config.json"):
        resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        resolve_model_path(str(tmp_path / "missing"))


def test_tokenize_parts_splits_the_whole_sentences_tokens_where_parts_tokenize_otherwise_apart():
    """A legacy SentencePiece tokenizer gives " caring." alone a lone "▁" token in front; training must see the
    tokens the evaluation scores (the whole sentence's), split where the scored part begins."""
    from _tiny import make_legacy_sp_tokenizer, make_tokenizer

    from biasunlearn.scoring import tokenize_parts

    tok = make_legacy_sp_tokenizer()
    ids = lambda *ts: tok.convert_tokens_to_ids(list(ts))  # noqa: E731
    assert tok(" caring.", add_special_tokens=False)["input_ids"] == ids("▁", "▁caring", ".")  # the trap
    whole = tok("The mother was very caring.", add_special_tokens=False)["input_ids"]
    parts, used_whole = tokenize_parts(tok, ("The mother was very", " caring.", ""))
    assert used_whole and parts == [ids("▁The", "▁mother", "▁was", "▁very"), ids("▁caring", "."), []]
    assert sum(parts, []) == whole
    # three parts (score_span 'word'): the filled word alone is y
    parts, used_whole = tokenize_parts(tok, ("The mother was very", " caring", "."))
    assert used_whole and parts == [ids("▁The", "▁mother", "▁was", "▁very"), ids("▁caring"), ids(".")]
    # one part (a KL text): tokenized as it is
    assert tokenize_parts(tok, ("", " caring.", "")) == ([[], ids("▁", "▁caring", "."), []], False)
    # a tokenizer whose parts tokenize apart as whole keeps them apart (no offsets needed)
    plain = make_tokenizer()
    parts, used_whole = tokenize_parts(plain, ("The river", " runs past", " the city ."))
    assert not used_whole
    assert parts == [plain(t, add_special_tokens=False)["input_ids"] for t in ("The river", " runs past", " the city .")]



def _legacy_sentencepiece_tokenizer():
    """A tiny fast tokenizer that splits like a SentencePiece tokenizer in its legacy mode: a "▁" is put in front of
    every text, so " Yes" alone is "▁" + "▁Yes" while "Answer: Yes" is "▁Answer:" + "▁Yes"."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "<unk>": 3, "▁": 4, "▁Yes": 5, "▁No": 6, "▁Answer:": 7, "▁The": 8,
             "▁cat.": 9, "▁It": 10, "▁sat.": 11}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # as the Llama-2 tokenizers' legacy normalizer: a "▁" in front of every text, each space made a "▁"
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_a_continuation_is_scored_as_the_whole_text_tokenizes_it():
    """BBQ's answers and StereoSet intersentence's candidates are scored given a prefix. A legacy SentencePiece
    tokenizer gives " Yes" alone a lone "▁" token that "Answer: Yes" does not have: the continuation is scored as the
    whole text's tokens after the prefix's, so that token is never scored as part of the answer."""
    from biasunlearn.scoring import encode_for_scoring, score_texts, score_texts_shared

    tok = _legacy_sentencepiece_tokenizer()
    assert tok(" Yes", add_special_tokens=False)["input_ids"] == [4, 5]  # the premise: a lone "▁" in front
    seqs, starts = encode_for_scoring(tok, [" Yes", " No", "The cat."], ["Answer:", "Answer:", ""])
    assert seqs == [[0, 7, 5], [0, 7, 6], [0, 8, 9]] and starts == [2, 2, 1]
    assert seqs[0] == [0] + tok("Answer: Yes", add_special_tokens=False)["input_ids"]

    class Uniform(torch.nn.Module):  # every next token equally likely: a text's summed score is -n log V
        def forward(self, input_ids, attention_mask=None, **kw):
            from transformers.modeling_outputs import CausalLMOutput
            return CausalLMOutput(logits=torch.zeros(*input_ids.shape, 12))

    got = score_texts(Uniform(), tok, [" Yes", " No"], ["Answer:", "Answer:"])
    assert [s.n for s in got] == [1, 1]  # one token each: "▁Yes", "▁No"
    shared = score_texts_shared(Uniform(), tok, ["Answer:"], [" Yes", " No"], 2)
    assert [s.n for s in shared] == [1, 1] and [s.sum for s in shared] == pytest.approx([s.sum for s in got])
