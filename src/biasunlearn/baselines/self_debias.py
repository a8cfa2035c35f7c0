"""Self-Debias (Schick et al. 2021) as a scoring wrapper, the way bias-bench (Meade et al. 2022) applies it to
likelihood benchmarks.

`SelfDebias(model, tokenizer)` is an nn.Module whose forward(input_ids, attention_mask, **kw) returns an object
whose `.logits` hold the debiased next-token LOG-distribution, so `biasunlearn.scoring.score_sequences` (and with it
`evaluate_model`, StereoSet, CrowS-Pairs, BBQ and perplexity) scores it like any model: its log-softmax of a
log-distribution is the identity.

For each position the next-token distribution p(w|x) is compared with the distributions under bias-describing
prefixes ("The following text discriminates against people because of their gender: " + x):

    delta(w) = p(w|x) - max_prefix p(w|prefix, x)
    alpha(w) = max(epsilon, 1 if delta(w) >= 0 else exp(lambda * delta(w)))      (lambda = 50, epsilon = 0.01)
    p~(w|x)  = alpha(w) p(w|x) / sum_v alpha(v) p(v|x)

The floor epsilon is Schick et al.'s (their code, which bias-bench reuses, keeps every factor at least 0.01): a
token the prefixes make likelier is scaled down at most a hundredfold. `epsilon=0` gives the rule without it.

computed in log space (log alpha + log p, then log-sum-exp normalisation) so that no probability underflows to
log 0. Alignment: the prefix is inserted right after the start token the scoring path puts in front of every
sequence (or in front of everything when the batch does not begin with it), so position j of the input is
position j + len(prefix) of the prefixed input in every row; padding stays at the right end (score_sequences pads
on the right). Cost: one extra forward pass per prefix (3 by default), done one prefix at a time so that only two
full-vocabulary distributions are held at once.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from transformers.modeling_outputs import CausalLMOutput

from ..models import start_token_id

# Short bias-describing prefixes in the style of bias-bench's DEBIASING_PREFIXES (one per bias type it covers).
DEFAULT_PREFIXES = {
    "gender": "The following text discriminates against people because of their gender: ",
    "race": "The following text discriminates against people because of their race or skin color: ",
    "religion": "The following text discriminates against people because of their religion: ",
}
DEFAULT_DECAY = 50.0
DEFAULT_EPSILON = 0.01


def _log_floor(epsilon: float) -> float:
    """log(epsilon), the lowest log-factor; -inf for epsilon 0 (no floor). Refuses an epsilon outside [0, 1]."""
    epsilon = float(epsilon)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"Self-Debias epsilon must lie in [0, 1], got {epsilon}")
    return math.log(epsilon) if epsilon > 0 else -math.inf


def self_debias_logprobs(logp: torch.Tensor, prefixed_logps: Sequence[torch.Tensor], decay: float = DEFAULT_DECAY,
                         epsilon: float = DEFAULT_EPSILON) -> torch.Tensor:
    """The rescaling rule on aligned log-distributions ([..., V] each): returns log p~ (same shape, float32)."""
    floor = _log_floor(epsilon)
    logp = logp.float()
    max_pb = None
    for lp in prefixed_logps:
        pb = lp.float().exp()
        max_pb = pb if max_pb is None else torch.maximum(max_pb, pb)
    if max_pb is None:
        return logp - torch.logsumexp(logp, -1, keepdim=True)
    delta = logp.exp() - max_pb
    log_alpha = torch.where(delta >= 0, torch.zeros_like(delta), decay * delta).clamp(min=floor)
    scaled = logp + log_alpha
    return scaled - torch.logsumexp(scaled, -1, keepdim=True)


class SelfDebias(torch.nn.Module):
    """A causal LM whose next-token distributions are debiased by Self-Debias (see the module docstring)."""

    def __init__(self, model, tokenizer, prefixes: dict | Sequence[str] | None = None, decay: float = DEFAULT_DECAY,
                 epsilon: float = DEFAULT_EPSILON):
        super().__init__()
        self.model = model
        self.decay = float(decay)
        self.epsilon = float(epsilon)
        self._log_floor = _log_floor(epsilon)
        prefixes = DEFAULT_PREFIXES if prefixes is None else prefixes
        self.prefixes = dict(prefixes) if isinstance(prefixes, dict) else {f"prefix{i}": p for i, p in enumerate(prefixes)}
        self.prefix_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in self.prefixes.values()]
        if any(not ids for ids in self.prefix_ids):
            raise ValueError("a Self-Debias prefix tokenizes to nothing")
        self.start_id = start_token_id(tokenizer)
        self.config = getattr(model, "config", None)

    @property
    def n_forward_passes(self) -> int:
        return 1 + len(self.prefix_ids)

    def with_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: Sequence[int]):
        """(ids, mask, offset): `prefix` inserted after the start token (or in front); input position j is output
        position j + offset in every row."""
        b = input_ids.shape[0]
        p = torch.as_tensor(list(prefix), dtype=input_ids.dtype, device=input_ids.device).unsqueeze(0).expand(b, -1)
        ones = torch.ones_like(p, dtype=attention_mask.dtype)
        if bool((input_ids[:, 0] == self.start_id).all()):
            ids = torch.cat([input_ids[:, :1], p, input_ids[:, 1:]], 1)
            mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], 1)
        else:
            ids = torch.cat([p, input_ids], 1)
            mask = torch.cat([ones, attention_mask], 1)
        return ids, mask, p.shape[1]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw):
        for k in ("labels", "position_ids", "past_key_values", "cache_position"):
            kw.pop(k, None)
        kw["use_cache"] = False
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        width = input_ids.shape[1]
        logp = torch.log_softmax(self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).logits.float(), -1)
        max_pb = None
        for prefix in self.prefix_ids:
            ids, mask, off = self.with_prefix(input_ids, attention_mask, prefix)
            logits = self.model(input_ids=ids, attention_mask=mask, **kw).logits[:, off:off + width]
            pb = torch.softmax(logits.float(), -1)
            del logits
            max_pb = pb if max_pb is None else torch.maximum(max_pb, pb, out=max_pb)
            del pb
        # in place, so that at most three [B, T, V] float32 tensors live at once:
        # log alpha = max(log epsilon, lambda * min(delta, 0)) == log max(epsilon, 1 if delta >= 0 else e^(lambda delta))
        log_alpha = logp.exp().sub_(max_pb).clamp_(max=0.0).mul_(self.decay).clamp_(min=self._log_floor)
        del max_pb
        scaled = logp.add_(log_alpha)
        del log_alpha
        scaled = scaled.sub_(torch.logsumexp(scaled, -1, keepdim=True))
        return CausalLMOutput(logits=scaled)


def scoring_cost(model, wrapper, tokenizer, texts: Sequence[str], max_tokens: int | None = None) -> dict:
    """Time per sentence of scoring `texts` with the plain model and with the Self-Debias wrapper (same batches)."""
    from ..scoring import score_texts

    out = {"n_sentences": len(texts)}
    for name, m in (("plain", model), ("self_debias", wrapper)):
        t0 = time.perf_counter()
        score_texts(m, tokenizer, list(texts), max_tokens=max_tokens)
        out[f"{name}_ms_per_sentence"] = 1000.0 * (time.perf_counter() - t0) / max(len(texts), 1)
    out["ratio"] = out["self_debias_ms_per_sentence"] / max(out["plain_ms_per_sentence"], 1e-9)
    out["forward_passes_per_batch"] = wrapper.n_forward_passes
    return out
