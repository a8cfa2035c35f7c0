"""Metrics: pure functions of scores (no model in here), exactly as docs/PROTOCOL.md defines them."""
from .stereoset import (icat, level_outside_any, level_outside_band, mean_margins, paired_ss_difference, ss_bootstrap_draws, ss_standard_error,
                        stereoset_scores, term_scores)
from .crows_pairs import crows_pairs_scores
from .bbq import bbq_scores
from .perplexity import perplexity

__all__ = ["icat", "level_outside_any", "level_outside_band", "mean_margins", "paired_ss_difference", "ss_bootstrap_draws", "ss_standard_error", "stereoset_scores", "term_scores", "crows_pairs_scores", "bbq_scores", "perplexity"]
