"""Baselines for the comparison (paper section 4.2, 4.5, appendix A.3): CDA, SFT and DPO (LoRA fine-tuning with the
same split, step budget and learning-rate policy as BiasUnlearn) and Self-Debias (an inference-time scoring
wrapper). Each is usable on its own:

    from biasunlearn.unlearn import make_config
    from biasunlearn.baselines import CDA
    CDA(make_config(output_dir="runs/cda", max_steps=200)).train()     # -> runs/cda/adapter, dev_log.jsonl, ...

    from biasunlearn.baselines import SelfDebias
    model, tok, info = load_model("smollm2-135m")
    evaluate_model(SelfDebias(model, tok), tok, EvalConfig(), info.to_dict(), "runs/self_debias")
"""
from .cda import CDA
from .common import DevSSCallback, LoraFineTune
from .dpo import DPO, preference_pairs
from .self_debias import DEFAULT_PREFIXES, SelfDebias, scoring_cost, self_debias_logprobs
from .sft import SFT

__all__ = ["CDA", "SFT", "DPO", "SelfDebias", "LoraFineTune", "DevSSCallback", "preference_pairs",
           "DEFAULT_PREFIXES", "scoring_cost", "self_debias_logprobs"]
