"""The valence of a StereoSet pair: is its stereotype the more negative sentence, the more positive one, or about
as positive as its anti-stereotype?

Session 36 found (`bench/valence.py`, BENCHMARKS.md) that every adapter trained so far lowered stereotypes that are
more negative than their anti-stereotypes far past level, and left the more positive ones where they were: what they
learned is in part "less negative after a group". `balance_valence` deals each type's training batches evenly over
the three groups, so the flattering stereotypes (a mother is caring) are unlearned as often as the unflattering
ones. Valence is VADER's compound score of each whole sentence (the `vaderSentiment` package, a dependency of
biasunlearn since the SmolLM2 recipe sets balance_valence); the two sentences of a pair differ only in the filled-in
word.
"""
from __future__ import annotations

from ..errors import ConfigError

GROUPS = ("negative", "same", "positive")  # the stereotype more negative, about the same, more positive
MARGIN = 0.05  # VADER's own neutral band: differences within it are "same"


def sentence_scorer():
    """A function text -> VADER compound valence (-1 .. 1), memoised; ConfigError when vaderSentiment is missing."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:
        raise ConfigError("balance_valence needs the vaderSentiment package, a dependency of biasunlearn that "
                          "is missing here (pip install vaderSentiment)") from e
    analyzer = SentimentIntensityAnalyzer()
    cache: dict[str, float] = {}

    def score(text: str) -> float:
        if text not in cache:
            cache[text] = float(analyzer.polarity_scores(text)["compound"])
        return cache[text]

    return score


def valence_group(gap: float, margin: float = MARGIN) -> str:
    """The group of a pair whose stereotype is `gap` more positive than its anti-stereotype."""
    return GROUPS[0] if gap < -margin else GROUPS[2] if gap > margin else GROUPS[1]


def pair_valence(examples, score=None, margin: float = MARGIN) -> dict[str, str]:
    """{example id: group} of each pair, from score(stereotype) - score(anti-stereotype)."""
    score = score or sentence_scorer()
    return {e.id: valence_group(score(e.stereotype) - score(e.anti_stereotype), margin) for e in examples}


def group_counts(examples, groups: dict[str, str]) -> dict[str, dict[str, int]]:
    """{bias type: {group: how many of its pairs}} (every group listed), for the log."""
    out: dict[str, dict[str, int]] = {}
    for e in examples:
        out.setdefault(e.bias_type, dict.fromkeys(GROUPS, 0))[groups[e.id]] += 1
    return dict(sorted(out.items()))
