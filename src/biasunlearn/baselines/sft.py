"""Supervised fine-tuning (the paper's section 4.5 comparison): LoRA fine-tuning on the stereotype and
anti-stereotype sentences of the train pool at 1:1 (both sentences of every example), with the language-modelling
loss on the whole sentence."""
from __future__ import annotations

from .common import LoraFineTune


class SFT(LoraFineTune):
    name = "sft"
    description = "SFT: LoRA fine-tuning on stereotype and anti-stereotype sentences at 1:1"

    def training_texts(self, train) -> list[str]:
        out = []
        for e in train:
            out += [e.stereotype, e.anti_stereotype]
        return out
