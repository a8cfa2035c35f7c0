"""Perplexity from summed log-probabilities."""
from __future__ import annotations

import math


def perplexity(total_logprob: float, n_tokens: int) -> float:
    """exp(-total_logprob / n_tokens), with total_logprob in nats."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(-total_logprob / n_tokens)
