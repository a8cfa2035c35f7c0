"""Counterfactual data augmentation (CDA; Zmigrod et al. 2019), as the paper implements it for several bias types
at once (section 4.2, appendix A.3): LoRA fine-tuning on the anti-stereotype (counterfactual) sentences of the
train pool, with the language-modelling loss on the whole sentence."""
from __future__ import annotations

from .common import LoraFineTune


class CDA(LoraFineTune):
    name = "cda"
    description = "CDA: LoRA fine-tuning on the anti-stereotype sentences of the train pool"

    def training_texts(self, train) -> list[str]:
        return [e.anti_stereotype for e in train]
