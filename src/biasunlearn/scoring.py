"""THE batched log-probability path. Every metric (StereoSet, CrowS-Pairs, BBQ, perplexity, the dev checks during
training, Self-Debias) goes through `score_sequences`, so a fix or a speed-up lands everywhere at once.

A text is scored as the sum of log p(token_t | tokens_<t) over its scored tokens, with one start token (BOS, else
EOS) in front so that the first word is scored too; the start token itself is never scored. A prefix (x) can be fed
without being scored: only the continuation (y) counts.

Speed: sequences are sorted by length and cut into batches under a token budget, so padding is small; each batch is
padded only to its own longest sequence; scoring runs under inference_mode. Where a model's logits are plainly
lm_head(hidden state), the head and a float32 log-softmax run only on the scored positions, a few rows at a time,
so the [batch, length, vocabulary] logits tensor never exists (bounded memory for 262k-token vocabularies). That path
checks itself against the full forward pass on the first batch and falls back to it on any disagreement.
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import interrupt
from .models import start_token_id


@dataclass(frozen=True)
class Score:
    """Log-probability of a text's scored tokens: `sum` in nats over `n` tokens."""

    sum: float
    n: int

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else float("-inf")


def encode_for_scoring(tokenizer, texts: Sequence[str], prefixes: Sequence[str] | None = None):
    """Token ids with the start token in front, and the index of each sequence's first scored token.

    With `prefixes`, text i is scored given prefixes[i]: the prefix and text are tokenized separately and joined,
    so the boundary between x and y is exact. Returns (sequences, score_from).
    """
    start = start_token_id(tokenizer)
    body = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if prefixes is None:
        return [[start] + ids for ids in body], [1] * len(body)
    if len(prefixes) != len(texts):
        raise ValueError(f"{len(prefixes)} prefixes for {len(texts)} texts")
    pre = tokenizer(list(prefixes), add_special_tokens=False)["input_ids"]
    body = continuation_ids(tokenizer, prefixes, texts, pre, body)
    seqs, score_from = [], []
    for p, t in zip(pre, body):
        seqs.append([start] + p + t)
        score_from.append(1 + len(p))
    return seqs, score_from


def continuation_ids(tokenizer, prefixes: Sequence[str], texts: Sequence[str], pre: list, body: list) -> list:
    """The token ids of each text as the continuation of its prefix (`pre`, `body`: each tokenized alone): where the
    whole text (prefix + text) begins with the prefix's own tokens, the text is the whole text's tokens after them;
    else it keeps its own. Most tokenizers give the same either way; a SentencePiece tokenizer in its legacy mode
    gives a text tokenized alone a lone "▁" in front (" Yes" as "▁", "▁Yes"), which the whole text does not have,
    and which would otherwise be scored as part of the answer."""
    body = list(body)
    at = [i for i, (p, t) in enumerate(zip(prefixes, texts)) if p and t]
    if not at:
        return body
    whole = tokenizer([prefixes[i] + texts[i] for i in at], add_special_tokens=False)["input_ids"]
    for i, w in zip(at, whole):
        p = pre[i]
        if len(w) > len(p) and w[:len(p)] == p:
            body[i] = w[len(p):]
    return body


def tokenize_parts(tokenizer, parts: Sequence[str]) -> tuple[list[list[int]], bool]:
    """The token ids of a text made of consecutive parts (x, y, z: only y is trained on), split where the parts meet.

    Each part is tokenized on its own, which is what the whole text gives with most tokenizers. Where it is not (a
    SentencePiece tokenizer in its legacy mode gives " caring." alone a lone "▁" token in front, which the whole
    sentence does not have), a fast tokenizer's whole-text tokens are used instead, split at the parts' character
    offsets (a token reaching over a boundary goes to the later part), so training sees the tokens the evaluation
    scores. Returns (ids per part, whether the whole text's tokens were used)."""
    alone = [tokenizer(t, add_special_tokens=False)["input_ids"] if t else [] for t in parts]
    if sum(1 for t in parts if t) < 2 or not getattr(tokenizer, "is_fast", False):
        return alone, False
    text = "".join(parts)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if ids == [i for a in alone for i in a]:
        return alone, False
    ends = list(itertools.accumulate(len(t) for t in parts))
    cuts = [0]
    for end in ends[:-1]:  # the first token that reaches past this part's end starts the next part
        cuts.append(next((k for k in range(cuts[-1], len(ids)) if enc["offset_mapping"][k][1] > end), len(ids)))
    cuts.append(len(ids))
    split = [ids[a:b] for a, b in zip(cuts, cuts[1:])]
    if any(t and not piece for t, piece in zip(parts, split)):  # a part lost all its tokens: keep them apart
        return alone, False
    return split, True


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | ...) for every position: [B, T, V] logits, [B, T] ids -> [B, T-1] float32.

    Differentiable; used by the training losses too. Computed in float32 for a stable log-softmax.
    """
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    picked = logits.gather(-1, targets).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def score_mask(lengths: torch.Tensor, score_from: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width-1] bool: which next-token predictions count. Prediction at t scores token t+1, which counts when
    score_from <= t+1 < length."""
    pos = torch.arange(1, width, device=lengths.device).unsqueeze(0)
    return (pos >= score_from.unsqueeze(1)) & (pos < lengths.unsqueeze(1))


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


@dataclass
class PackedBatch:
    """Sequences packed end to end into a few rows, no padding between them (`pack_batch`).

    ids, positions: [R, W]; each sequence restarts its positions at 0, which is how transformers' attention masks
    tell packed sequences apart (with attention_mask=None); the tail of a row is filler with its own positions.
    index: [N, L-1], L the longest sequence: for prediction t of sequence i (the logits that score its token t+1),
    its position in the rows flattened to [R*W], one row per sequence in input order; real: [N, L-1] which of those
    are real."""

    ids: torch.Tensor
    positions: torch.Tensor
    index: torch.Tensor
    real: torch.Tensor

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """[R, W, ...] per-position values (logits, hidden states) -> [N, L-1, ...] at each sequence's predicting
        positions, in the padded layout (what is not real reads position 0). Differentiable."""
        return values.reshape(-1, *values.shape[2:])[self.index]


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped into rows whose lengths sum to at most `width` (>= the longest)."""
    if lengths and max(lengths) > width:
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit a row of {width}")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, f in enumerate(free):
            if lengths[i] <= f:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(width - lengths[i])
    return rows


def pack_batch(seqs: Sequence[Sequence[int]], pad_id: int, device, width: int | None = None) -> PackedBatch:
    """Pack sequences into rows of `width` tokens (default: the longest sequence), so a batch costs about its real
    tokens instead of N x longest. Feed `ids` with `position_ids=positions` and no attention mask."""
    lengths = [len(s) for s in seqs]
    if not lengths or min(lengths) < 1:
        raise ValueError("pack_batch needs at least one sequence, none of them empty")
    width = max(lengths) if width is None else width
    rows = pack_rows(lengths, width)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    L = max(lengths)
    index = torch.zeros((len(seqs), max(L - 1, 1)), dtype=torch.long)
    real = torch.zeros((len(seqs), max(L - 1, 1)), dtype=torch.bool)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            n = lengths[i]
            ids[r, at:at + n] = torch.as_tensor(seqs[i], dtype=torch.long)
            pos[r, at:at + n] = torch.arange(n)
            index[i, : n - 1] = r * width + at + torch.arange(n - 1)
            real[i, : n - 1] = True
            at += n
        pos[r, at:] = torch.arange(width - at)  # filler: a sequence of its own
    return PackedBatch(ids.to(device), pos.to(device), index.to(device), real.to(device))


def length_batches(lengths: Sequence[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first, each under max_tokens padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur, cur_max = [], [], 0
    for i in order:
        width = max(cur_max, lengths[i])
        if cur and (width * (len(cur) + 1) > max_tokens or len(cur) >= max_batch):
            batches.append(cur)
            cur, width = [], lengths[i]
        cur.append(i)
        cur_max = width
    if cur:
        batches.append(cur)
    return batches


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


# config fields that make a model's logits differ from lm_head(hidden state)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale",
                     "logit_softcapping")
HEAD_ROWS = 64  # scored positions per lm_head + log-softmax piece on the direct path
_DIRECT_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> passed the first-batch check


def split_head(model):
    """(body, head) when `model`'s logits are head(body(...).last_hidden_state), else None (wrappers without a
    decoder, logit soft-capping or scaling). A PEFT model qualifies: its adapter layers live inside the body."""
    get_dec, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    if not callable(get_dec) or not callable(get_head):
        return None
    cfg = getattr(model, "config", None)
    for c in (cfg, getattr(cfg, "text_config", None)):
        for name in _LOGIT_TRANSFORMS:
            v = getattr(c, name, None) if c is not None else None
            if v is not None and v != 1 and v != 1.0:
                return None
    try:
        body, head = get_dec(), get_head()
    except (AttributeError, NotImplementedError, TypeError):
        return None
    if body is None or not isinstance(head, torch.nn.Linear):
        return None
    return body, head


FULL_ELEMENTS = 2 ** 27  # logits per float32 log-softmax piece on the full path (512 MB)


def _batch_full(model, ids, attn, m):
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    # a few rows at a time, so the float32 copy and the log-softmax's temporaries stay bounded (a 256k vocabulary
    # at a GPU's 8192-token budget would be 8 GB each)
    rows = max(1, FULL_ELEMENTS // max(1, logits.shape[1] * logits.shape[2]))
    lp = torch.cat([token_logprobs(logits[a:a + rows], ids[a:a + rows]) for a in range(0, ids.shape[0], rows)])
    del logits
    return (lp * m).sum(1).double()


def _batch_direct(body, head, ids, attn, m, head_rows: int = HEAD_ROWS):
    h = body(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state[:, :-1]
    rows, targets = h[m], ids[:, 1:][m]
    lp = torch.empty(len(rows), dtype=torch.float32, device=ids.device)
    for a in range(0, len(rows), head_rows):
        logp = torch.log_softmax(head(rows[a:a + head_rows]).float(), -1)
        lp[a:a + head_rows] = logp.gather(-1, targets[a:a + head_rows, None]).squeeze(-1)
    owner = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(m)[m]
    return torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device).index_add_(0, owner, lp.double())


def _default_budget(device: torch.device, max_tokens: int | None) -> int:
    # measured (BENCHMARKS.md): small batches are fastest on a CPU (cache-resident activations), big on a GPU
    return max_tokens if max_tokens is not None else (8192 if device.type == "cuda" else 256)


class _Progress:
    """A scoring loop's progress bar, which also stops the loop at its next batch after a Ctrl-C that something
    swallowed (interrupt.check), instead of at the end of the benchmark."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, n: int) -> None:
        interrupt.check()
        self.bar.update(n)


@contextlib.contextmanager
def _scoring(model, n: int, progress: str | None):
    """Eval mode and no autograd for the duration (the training mode is restored after), with a progress bar. A model
    being trained (in training mode when called: a dev check) is scored under no_grad rather than inference mode:
    inference tensors made from its weights (DeepSpeed ZeRO-3 gathers them in the forward) could not be saved for
    the next backward."""
    from tqdm.auto import tqdm

    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    bar = tqdm(total=n, desc=progress, unit="seq", disable=progress is None, leave=False, mininterval=1.0)
    try:
        with torch.no_grad() if was_training else torch.inference_mode():
            yield _Progress(bar)
    finally:
        bar.close()
        if was_training:
            model.train()


def _runtime(model):
    """The scoring method of a model run outside torch (`gguf_export.LlamaCppScorer`: llama.cpp), else None."""
    return None if isinstance(model, torch.nn.Module) else getattr(model, "score_token_sequences", None)


def score_sequences(model, sequences: Sequence[Sequence[int]], score_from: Sequence[int], *, pad_id: int = 0,
                    max_tokens: int | None = None, max_batch: int = 128, progress: str | None = None,
                    direct: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log-probabilities (nats) and count of scored tokens for each sequence, in input order.

    `model(input_ids=..., attention_mask=...)` must return an object with `.logits` ([B, T, V]). With `direct`
    (default) and a model `split_head` accepts, the lm_head runs on the scored positions only (see the module
    docstring); the first batch a model sees is scored both ways and the direct path is dropped for that model if
    they differ by more than 0.05 nats per token (the same hidden states go through the same head, so only
    rounding differs; a logit transform the config check missed does not pass).
    """
    n = len(sequences)
    sums, counts = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64)
    if n == 0:
        return sums, counts
    runtime = _runtime(model)
    if runtime is not None:
        return runtime(sequences, score_from, progress=progress)
    device = model_device(model)
    batches = length_batches([len(s) for s in sequences], _default_budget(device, max_tokens), max_batch)
    split = split_head(model) if direct else None
    checked = _DIRECT_CHECKED.get(model, False) if split is not None else True
    if checked is None:  # failed before: do not try again
        split = None
    with _scoring(model, n, progress) as bar:
        for idx in batches:
            ids, attn = pad_batch([sequences[i] for i in idx], pad_id, device)
            m = score_mask(attn.sum(1), torch.as_tensor([score_from[i] for i in idx], device=device), ids.shape[1])
            c = m.sum(1)
            if split is None:
                s = _batch_full(model, ids, attn, m)
            else:
                s = _batch_direct(*split, ids, attn, m)
                if not checked:
                    full = _batch_full(model, ids, attn, m)
                    ok = not ((s - full).abs() > 0.05 * c.clamp(min=1)).any()
                    if not ok:
                        split, s = None, full
                    _DIRECT_CHECKED[model] = True if ok else None
                    checked = True
            sums[idx], counts[idx] = s.cpu().numpy(), c.cpu().numpy()
            bar.update(len(idx))
    return sums, counts


_SHARED_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> shared-prompt path verified


def forward_params(model) -> set:
    """Parameter names of the underlying transformers model's forward (through a PEFT wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return set(inspect.signature(type(base).forward).parameters)
    except (TypeError, ValueError):
        return set()


def _prompt_head(model):
    """(body, head) for the prompt pass of `_shared_batch` when the body takes explicit positions, else None.

    Through the model with logits_to_keep=1, the head gets the hidden states' last position as a [B, 1, H] slice of
    [B, P, H], which torch.matmul cannot fold into one matrix product: when the head's weight does not require grad
    (a PEFT model's frozen base, a merged adapter) it runs a batched product over the weight expanded and copied B
    times (B x 56 MB for SmolLM2): BBQ took 1.5 times as long, and the read's peak was 0.95 GB higher
    (BENCHMARKS.md, session 32).
    The head on the [B, H] rows themselves is one matrix product."""
    split = split_head(model)
    if split is None:
        return None
    try:
        params = set(inspect.signature(type(split[0]).forward).parameters)
    except (TypeError, ValueError):
        return None
    return split if {"position_ids", "use_cache"} <= params else None


def _shared_batch(model, names: set, prompts, conts, k: int, pad_id: int, device, prompt_head=None):
    """Sums and counts for one batch of prompts with k continuations each: the prompts run once (left-padded, explicit
    positions), their key/value cache is repeated k times, and the continuations run on it. `names`: the model's
    forward parameters (`forward_params`); `prompt_head`: `_prompt_head(model)`."""
    B = len(prompts)
    P = max(len(p) for p in prompts)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    pmask = torch.zeros((B, P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.as_tensor(p, dtype=torch.long)
        pmask[i, P - len(p):] = 1
    ids, pmask = ids.to(device), pmask.to(device)
    pos = (pmask.cumsum(1) - 1).clamp(min=0)
    if prompt_head is not None:  # only the last prompt position is needed
        body, head = prompt_head
        out = body(input_ids=ids, attention_mask=pmask, position_ids=pos, use_cache=True)
        last = head(out.last_hidden_state[:, -1])
    else:
        extra = {"logits_to_keep": 1} if "logits_to_keep" in names else {}
        out = model(input_ids=ids, attention_mask=pmask, position_ids=pos, use_cache=True, **extra)
        last = out.logits[:, -1]
    first = torch.log_softmax(last.float(), -1).repeat_interleave(k, 0)  # predicts each first token
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    del out
    cache.batch_repeat_interleave(k)
    cids, cmask = pad_batch(conts, pad_id, device)
    plen = pmask.sum(1).repeat_interleave(k, 0)
    cpos = plen.unsqueeze(1) + torch.arange(cids.shape[1], device=device).unsqueeze(0)
    full_mask = torch.cat([pmask.repeat_interleave(k, 0), cmask], 1)
    cache_kw = {"cache": cache} if "cache" in names else {"past_key_values": cache}  # renamed in transformers 5.2x
    logits = model(input_ids=cids, attention_mask=full_mask, position_ids=cpos, use_cache=True, **cache_kw).logits
    lp0 = first.gather(-1, cids[:, :1]).squeeze(-1)
    rest = token_logprobs(logits, cids)  # [B*k, C-1]: token t+1 given the prompt and tokens <= t
    m = cmask[:, 1:].bool()
    sums = lp0.double() * cmask[:, 0] + (rest * m).sum(1).double()
    return sums, cmask.sum(1)


def score_shared_prefix(model, prompts: Sequence[Sequence[int]], conts: Sequence[Sequence[int]], k: int, *,
                        pad_id: int = 0, max_tokens: int | None = None, max_batch: int = 64,
                        progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Score k continuations of every prompt: conts[i*k + j] given prompts[i] (which starts with the start token).
    The same numbers as `score_sequences` on prompt + continuation, with each prompt run once instead of k times
    (BBQ: three answers share a long context and question). The first batch a model sees is also scored the plain
    way; on a difference above 0.01 nats per token (0.3 in bf16/fp16), or a model that cannot take a cache and
    explicit positions (a scoring wrapper), every batch goes the plain way."""
    if len(conts) != k * len(prompts):
        raise ValueError(f"{len(conts)} continuations for {len(prompts)} prompts x {k}")
    if any(len(c) == 0 for c in conts):
        raise ValueError("empty continuation")
    n = len(conts)
    sums, counts = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64)
    if n == 0:
        return sums, counts
    device = model_device(model) if _runtime(model) is None else torch.device("cpu")
    max_tokens = _default_budget(device, max_tokens)
    full_seqs = [list(prompts[i // k]) + list(conts[i]) for i in range(n)]
    starts = [len(prompts[i // k]) for i in range(n)]

    def plain(rows):
        return score_sequences(model, [full_seqs[r] for r in rows], [starts[r] for r in rows], pad_id=pad_id,
                               max_tokens=max_tokens)

    verdict = _SHARED_CHECKED.get(model, False) if isinstance(model, torch.nn.Module) else None
    if verdict is None or not callable(getattr(model, "get_decoder", None)):
        return score_sequences(model, full_seqs, starts, pad_id=pad_id, max_tokens=max_tokens, progress=progress)
    # bf16/fp16 logits carry about 0.1 nats of rounding per token whatever the batching (their spacing is 1/16 at
    # 10); a wrong cache, position or mask is off by whole nats
    tol = 0.01 if next(model.parameters()).dtype == torch.float32 else 0.3
    # a batch's cost: its prompts once plus k continuations each
    cost = [len(prompts[i]) + sum(len(conts[i * k + j]) for j in range(k)) for i in range(len(prompts))]
    batches = length_batches(cost, max_tokens * k, max_batch)
    names, prompt_head = forward_params(model), _prompt_head(model)
    with _scoring(model, n, progress) as bar:
        for b, idx in enumerate(batches):
            rows = [i * k + j for i in idx for j in range(k)]
            args = (names, [prompts[i] for i in idx], [conts[r] for r in rows], k, pad_id, device, prompt_head)
            if verdict:
                s, c = (t.cpu().numpy() for t in _shared_batch(model, *args))
            else:
                try:
                    s, c = (t.cpu().numpy() for t in _shared_batch(model, *args))
                except (TypeError, ValueError, AttributeError, NotImplementedError, RuntimeError):
                    s = c = None  # the plain way below
                ref_s, ref_c = plain(rows)
                ok = s is not None and (c == ref_c).all() and (np.abs(s - ref_s) <= tol * np.maximum(c, 1)).all()
                _SHARED_CHECKED[model] = True if ok else None
                verdict = True
                if not ok:  # this batch and the rest the plain way
                    rest = [r for bb in batches[b:] for i in bb for r in range(i * k, i * k + k)]
                    sums[rest], counts[rest] = plain(rest)
                    bar.update(len(rest))
                    break
            sums[rows], counts[rows] = s, c
            bar.update(len(rows))
    return sums, counts


def score_texts(model, tokenizer, texts: Sequence[str], prefixes: Sequence[str] | None = None, **kw) -> list[Score]:
    """Score each text (given its prefix, if any). Keyword arguments go to `score_sequences`."""
    seqs, starts = encode_for_scoring(tokenizer, texts, prefixes)
    sums, counts = score_sequences(model, seqs, starts, pad_id=tokenizer.pad_token_id or 0, **kw)
    return [Score(float(s), int(c)) for s, c in zip(sums, counts)]


def score_texts_shared(model, tokenizer, prompts: Sequence[str], texts: Sequence[str], k: int, **kw) -> list[Score]:
    """texts[i*k + j] given prompts[i], each prompt run once (see `score_shared_prefix`); the same tokens as
    `score_texts(model, tokenizer, texts, prefixes)` with each prompt repeated k times."""
    pre, _ = encode_for_scoring(tokenizer, prompts)  # start token + prompt
    body = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    # each text as its prompt's continuation (the prompt's tokens, without the start token, are shared by its k)
    body = continuation_ids(tokenizer, [p for p in prompts for _ in range(k)], texts,
                            [q[1:] for q in pre for _ in range(k)], body)
    sums, counts = score_shared_prefix(model, pre, body, k, pad_id=tokenizer.pad_token_id or 0, **kw)
    return [Score(float(s), int(c)) for s, c in zip(sums, counts)]


def score_texts_one_by_one(model, tokenizer, texts: Sequence[str], prefixes: Sequence[str] | None = None) -> list[Score]:
    """The straightforward way of the reference implementations: one sentence per forward pass, no batching.

    Kept as the baseline for the benchmark and as an independent check of `score_texts` in the tests.
    """
    seqs, starts = encode_for_scoring(tokenizer, texts, prefixes)
    device = model_device(model)
    out = []
    with torch.inference_mode():
        for seq, sf in zip(seqs, starts):
            ids = torch.tensor([seq], device=device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1)
            targets = ids[0, 1:]
            tok_lp = lp[torch.arange(len(targets)), targets]
            out.append(Score(float(tok_lp[sf - 1:].sum()), int(len(targets) - (sf - 1))))
    return out
