"""biasunlearn: remove social bias from causal language models by bias unlearning, and measure it honestly."""

__version__ = "0.1.0"
