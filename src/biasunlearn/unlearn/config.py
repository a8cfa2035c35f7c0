"""UnlearnConfig: every BiasUnlearn setting, with the paper's defaults (section 3, appendix A.2) and a help text.

It extends transformers.TrainingArguments, so mixed precision, checkpoints, resume, logging and multi-GPU or
multi-node runs (`accelerate launch`: DDP, FSDP, DeepSpeed) come from the library.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from ..errors import ConfigError
from ..models import cpu_has_native_bf16, cuda_has_native_bf16
from .controller import SWAP_MODES, SWAP_SIGNALS
from .losses import NPO_REFERENCES, REDUCTIONS
from .sets import SCORE_SPANS

UNRELATED_SOURCES = ("stereoset", "wikitext", "generated")


def _f(default, help_text):
    return field(default=default, metadata={"help": help_text})


@dataclass
class UnlearnConfig(TrainingArguments):
    # --- model and data ---
    model: str = _f("smollm2-135m", "Model to debias: hub id, local folder, .gguf file or built-in name.")
    model_dtype: str = _f("auto", "dtype the model's weights are loaded in for training: float32, bfloat16, float16, "
                                  "or auto (bfloat16 when training runs in bf16 on a GPU, where the frozen weights "
                                  "then take half the memory; float32 elsewhere, as on a CPU, whose recipes train "
                                  "float32 weights under bf16 autocast). The LoRA weights are float32 either way.")
    cpu_malloc_tuning: bool = _f(True, "Training on a CPU with glibc (Linux): keep freed memory for reuse instead of "
                                       "returning it to the system at every step (mallopt: no mmap for large blocks, "
                                       "a high trim threshold), so the large tensors of each step are not mapped and "
                                       "unmapped anew. SmolLM2's first 10 steps ran 1.06 and 1.21 times faster here "
                                       "for 1.2 times the peak memory (BENCHMARKS.md, session 25). The environment "
                                       "variables MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_ and MALLOC_TOP_PAD_, if "
                                       "set, win.")
    data_dir: str | None = _f(None, "Benchmark data folder (default: $BIASUNLEARN_DATA or ../shared/data).")
    train_pool: str = _f("stereoset/zjunlp__BiasEdit/dev.json,stereoset/zjunlp__EditBias/dev.json",
                         "Comma-separated StereoSet files (relative to data_dir) forming the train pool. The defaults "
                         "come from the StereoSet test split, as the paper's training set does.")
    test_set: str = _f("stereoset/ano1-yu__stereoset_adaptation", "Held-out StereoSet test set (checked for overlap "
                                                                   "with the train pool; never used for decisions).")
    dev_fraction: float = _f(0.15, "Share of the train pool held out as dev, disjoint by target term, per bias type.")
    min_dev_per_type: int = _f(8, "At least this many dev examples per bias type.")
    dev_folds: int = _f(0, "Cross-validation by target term: with K >= 2, the pool's terms are split per bias type "
                           "into K folds of about equal size and dev is fold dev_fold (dev_fraction is then unused); "
                           "K runs, one per fold, hold out every term once. 0: the default dev slice.")
    dev_fold: int = _f(0, "Which fold is dev when dev_folds >= 2 (0 .. dev_folds - 1).")
    train_on_dev: bool = _f(False, "Train on the dev slice too (every term of the train pool), for a schedule fixed "
                                   "beforehand only: it needs stop_at_step and swap_mode 'none', since no decision "
                                   "may read data the run trains on. The dev checks still run as a collapse guard "
                                   "(dev LMS), marked trained_on in dev_log.jsonl; no best adapter is kept.")
    unrelated_source: str = _f("stereoset", "Text for the KL term: 'stereoset' (unrelated sentences of the train pool), "
                                            "'wikitext' (WikiText-2 raw test lines; perplexity is then left out of "
                                            "the report) or 'generated' (texts sampled once from the original model, "
                                            "kept in the run folder as generated_unrelated.jsonl).")
    generated_count: int = _f(512, "With unrelated_source 'generated': how many texts to sample.")
    generated_tokens: int = _f(48, "With unrelated_source 'generated': new tokens per sampled text (at most).")
    unrelated_drop_terms: bool = _f(False, "Leave out of the KL term every text that names a target term of the "
                                           "train split (whole word, any case), so that the anchor to the original "
                                           "model does not hold its behaviour around the groups being unlearned. "
                                           "How many are left out is logged; none left is an error.")
    unrelated_max_tokens: int = _f(256, "The KL term reads at most this many tokens of each unrelated text (0: all). "
                                        "StereoSet's unrelated sentences and sampled texts are far shorter; a "
                                        "WikiText-2 paragraph can run to 500 tokens or more, and the KL holds a "
                                        "[tokens, vocabulary] float32 tensor per copy (5 GB at 10k tokens and a "
                                        "128k vocabulary).")
    score_span: str = _f("y", "Tokens that carry the forget/retain losses: 'y' (after the blank, as the released code), "
                              "'sentence' (the whole sentence) or 'word' (only the filled-in word(s), where the "
                              "stereotype and anti-stereotype sentences differ; the rest is fed, not scored).")
    # --- the method ---
    forget_batch_size: int = _f(4, "Forget examples per step and device (the paper's global batch is 4).")
    retain_batch_size: int = _f(28, "Retain examples per step and device (1:n with n = 7, the paper's 28).")
    unrelated_batch_size: int = _f(28, "Unrelated examples per step and device for the KL term.")
    global_batch: bool = _f(False, "Read forget_batch_size, retain_batch_size, unrelated_batch_size and "
                                   "neutral_anchor_batch_size per optimizer step over every process and "
                                   "accumulation step (the paper's 4 + 28 + 28 per step), instead of per process "
                                   "and micro-batch: each process draws its share of the step's sentences, so a run "
                                   "on N processes trains the sentences a one-process run trains. Each size must "
                                   "divide by world size x gradient_accumulation_steps.")
    balance_types: bool = _f(False, "Deal each forget and retain batch evenly over the bias types (round-robin) "
                                    "instead of drawing from the pooled sets, where the largest type dominates.")
    balance_terms: bool = _f(False, "With balance_types: deal each type's share of a batch evenly over its target "
                                    "terms (round-robin, each term's examples read cyclically) instead of over its "
                                    "examples, so that the few terms with many examples do not dominate.")
    balance_valence: bool = _f(False, "With balance_types: deal each type's share of a batch evenly over three groups "
                                      "of its pairs: the stereotype more negative than its anti-stereotype, about as "
                                      "positive, or more positive (VADER's compound valence of the two sentences; "
                                      "needs the vaderSentiment package). Adapters trained without it lowered the "
                                      "unflattering stereotypes past level and left the flattering ones (BENCHMARKS.md, "
                                      "session 36). How many pairs fall in each group is logged.")
    gender_counterfactual: bool = _f(False, "Add a pair for each gender stereotype that names a gendered word: the "
                                            "stereotype is forgotten against its counterfactual (the same sentence "
                                            "with he/she, father/mother, ... exchanged, the filled-in word kept), "
                                            "which is retained. It teaches that the attribute should not follow the "
                                            "gender named, not only that one attribute should beat another. No "
                                            "counterfactual names a dev or test target term; how many were made "
                                            "is logged.")
    train_exclude_pattern: str = _f("", "A regular expression (case-insensitive): train pairs whose stereotype or "
                                        "anti-stereotype sentence matches it are left out of training (the dev "
                                        "slice and the test set are untouched). How many per bias type is logged "
                                        "and their ids are written to splits.json. '' = none.")
    gender_term_variants: int = _f(0, "More pairs for each gender pair whose target term is a singular person noun "
                                      "(father, wife, ...; step-relations left out) or the pronoun he or she: up "
                                      "to this many copies with the term replaced by another noun of the same "
                                      "gender ('My father is strong' -> 'My uncle is strong'), drawn by the seed, "
                                      "so that what is unlearned follows the gender rather than one word. No copy "
                                      "names a dev or test target term; how many were made is logged. 0 = off.")
    neutral_anchor_batch_size: int = _f(0, "Sentences added to each step's KL batch from the train pairs with their "
                                           "group taken out ('The father was polite.' -> 'Someone was polite.', "
                                           "both sentences of each pair whose target term comes before the blank), "
                                           "so the KL term holds the filled-in words' own probabilities at the "
                                           "original model's and what is unlearned has to depend on the group "
                                           "named. 0 = off.")
    type_weights: str = _f("", "With balance_types: round-robin slots per bias type, e.g. 'gender=2,race=2,"
                               "profession=2' (a type not named gets 1; whole numbers of 1 or more). '' = one each.")
    valence_weights: str = _f("", "With balance_valence: round-robin slots per valence group within each bias "
                                  "type's share of a batch, e.g. 'positive=2' deals the pairs whose stereotype is "
                                  "the more flattering sentence twice as often as each other group (groups: "
                                  "negative, same, positive; a group not named gets 1; whole numbers of 1 or "
                                  "more). '' = one each.")
    pair_retain: bool = _f(False, "Put the twin of each forget sentence (its anti-stereotype, or its stereotype when "
                                  "the type is swapped) into the same step's retain batch, so the pair is pushed "
                                  "apart in one update; the rest of the retain batch is drawn as usual.")
    retain_reduction: str = _f("token", "Retention CE: 'token' = mean over all scored tokens of the batch (the "
                                        "paper); 'sequence' = per-sentence summed NLL averaged over sentences, the "
                                        "scale of NPO's per-sentence sums.")
    retain_floor: bool = _f(False, "Hold retain sentences at the original model's level instead of raising them "
                                   "without bound: a retain sentence adds its NLL only while its summed "
                                   "log-probability is below the original model's (adapter off, cached per "
                                   "sentence), as relu(log p_ref - log p). The paper's CE has no such floor.")
    retain_floor_margin: float = _f(0.0, "With retain_floor: how far, in nats of a retain sentence's summed "
                                         "log-probability, it may rise above the original model's level before it "
                                         "stops counting: relu(log p_ref + margin - log p). 0 = held at the "
                                         "original level; a large margin is the plain CE.")
    kl_reduction: str = _f("token", "KL term, over the next-token distributions that predict each unrelated "
                                    "sentence's tokens after its start (not the one after its last token): "
                                    "'token' = mean over all real tokens of the unrelated batch (the paper); "
                                    "'sequence' = per-sentence summed KL averaged over sentences, so with "
                                    "retain_reduction 'sequence' all three terms are on NPO's per-sentence scale.")
    pack_sequences: bool = _f(True, "Pack each step's sentences end to end into rows (positions restart per "
                                    "sentence, so they cannot see each other) instead of padding every sentence to "
                                    "the longest: about half the tokens of a StereoSet step are padding otherwise. "
                                    "Checked once on the first step against the padded way; a model whose "
                                    "attention does not honour the restarts trains padded, with a warning.")
    adversarial_share: float = _f(0.25, "Share of each type's anti-stereotype sentences added to its forget set.")
    alpha_forget: float = _f(0.4, "Weight of the NPO forget loss (alpha_1).")
    alpha_retain: float = _f(0.4, "Weight of the retention cross-entropy (alpha_2); 0 = ablation without it.")
    alpha_kl: float = _f(0.2, "Weight of the forward KL to the original model (alpha_3); 0 = ablation without it.")
    npo_beta: float = _f(0.1, "NPO's beta: the push on a forget sentence is 2*sigmoid(beta*d) times a plain "
                              "gradient ascent's (d = its log-probability minus the reference's), so it fades over "
                              "about 1/beta nats below the reference (the paper: 0.1).")
    npo_variant: str = _f("sum", "'sum': one NPO term per example on summed log-probs (the paper); "
                                 "'token_mean': the released code's batch-mean of token-mean NLL.")
    npo_reference: str = _f("model", "What NPO's forget push is measured against: 'model' (the original model's "
                                     "log-probability of the same sentence, the paper) or 'twin' (the sentence's "
                                     "twin in the same step, on StereoSet's per-token scale: a stereotype is pushed "
                                     "down while it is above its anti-stereotype, and the push fades about 1/beta "
                                     "nats below it, not below the original model). 'twin' needs pair_retain and "
                                     "npo_variant 'sum'; forget items without a twin in the step (the adversarial "
                                     "share) keep the model reference.")
    npo_twin_grad: bool = _f(False, "With npo_reference 'twin': let the twin's scored tokens carry NPO's gradient "
                                    "too, so the push acts on the pair's difference (the stereotype lowered and its "
                                    "twin raised together) instead of on the forget sentence alone.")
    npo_twin_offset: float = _f(0.0, "With npo_reference 'twin': keep pushing a forget sentence until it is this "
                                     "many nats per token below its twin (0: until level). Held-out pairs move "
                                     "only part of the way the training pairs do, so a small overshoot on the "
                                     "training pairs can be what brings unseen ones to level; the dev control "
                                     "(swap_mode, swap_signal) decides when a type has gone far enough.")
    swap_mode: str = _f("swap", "'swap': swap forget/retain of a type whose dev SS falls below 50 (the paper); "
                                "'focus_worst': after the first round train only the type farthest from 50 "
                                "(the released code); 'pause': stop training a type whose dev SS falls below 50 instead of "
                                "training it toward its stereotypes, and train it again once it is back above 50 (the "
                                "run stops if every type is paused); 'none': never swap (ablation). swap_margin and "
                                "swap_signal apply to 'swap' and 'pause'.")
    swap_margin: float = _f(0.0, "Dead band for swapping: a type is swapped when its dev SS falls below 50 - margin "
                                 "and swapped back when it rises above 50 + margin; inside the band, its edges included, "
                                 "it keeps its direction. 0 = the paper's rule (swap below 50, back above 50). "
                                 "Used with swap_signal 'ss'.")
    swap_signal: str = _f("ss", "What the swap rule reads per bias type: 'ss' (dev SS against 50, the paper) or "
                                "'margin' (the mean dev margin s(stereo) - s(anti) in nats per token against 0). "
                                "On a small dev slice SS moves by whole examples, so one example can swap a type "
                                "whose stereotypes are still clearly preferred; the margin is continuous.")
    swap_margin_nats: float = _f(0.0, "Dead band for swap_signal 'margin', in nats per token: swapped below "
                                      "-band, swapped back above +band.")
    scheduled_swaps: str = _f("", "Swaps fixed beforehand instead of read from dev: 'religion=100' trains "
                                  "religion's forget and retain sets swapped (its anti-stereotypes forgotten, its "
                                  "stereotypes retained) from optimizer step 100 to the end; several as "
                                  "'TYPE=STEP,TYPE=STEP' (a step of 0 swaps from the start). For a schedule no "
                                  "dev check may steer (train_on_dev), so it needs swap_mode 'none'. Each swap is "
                                  "logged and recorded with the run's swaps. '' = none.")
    eval_every: int = _f(20, "Dev check (and checkpoint) every this many steps.")
    early_stop_tolerance: float = _f(2.0, "Stop when every type's dev SS is within 50 +- this.")
    lms_guard: float = _f(1.0, "Best checkpoint: only dev checks whose LMS is at most this many points below the "
                               "start count (falls back to the smallest drop if none qualifies).")
    checkpoint_metric: str = _f("ss", "Best checkpoint by 'ss' (each type's dev SS against 50, worst first) or "
                                      "'margin' (each type's mean dev margin s(stereo) - s(anti) against 0, worst "
                                      "first): the margin is continuous, where a small dev slice makes SS jump by "
                                      "whole examples.")
    stop_at_step: int = _f(0, "A schedule fixed beforehand (e.g. its length chosen on the pooled curve of a "
                              "cross-validation, bench/cv_curve.py): the run stops at this step and its adapter is "
                              "that step's, whatever dev says (no early stop; best_adapter/ still records dev's "
                              "choice, except under train_on_dev, where dev is trained and chooses nothing). The "
                              "learning-rate schedule still spans max_steps, so the adapter is the one "
                              "a full run has at this step. 0: off (the adapter is the best dev check).")
    collapse_lms_drop: float = _f(15.0, "Stop the run (collapse guard) when dev LMS falls this many points.")
    # --- LoRA ---
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA alpha.")
    lora_dropout: float = _f(0.1, "LoRA dropout.")
    lora_targets: str = _f("auto", "Comma-separated module names, or 'auto': every attention and MLP linear layer.")
    # --- evaluation of the result ---
    eval_benchmarks: str = _f("stereoset,crows_pairs,bbq,perplexity", "Benchmarks for the before/after report.")
    eval_bbq_per_category: int = _f(200, "BBQ examples per category in the report (0 = all).")
    eval_intersentence: bool = _f(False, "Also score StereoSet intersentence in the report (doubles its cost).")
    eval_limit: int = _f(0, "At most this many examples per benchmark in the report (a seeded sample, for a quick "
                            "look; the report says so); 0 = all.")
    eval_dtype: str = _f("auto", "dtype for the before/after evaluation: float32, bfloat16, or auto (bfloat16 where the "
                         "GPU or CPU computes it natively, else float32: emulated bf16 is many times slower).")
    eval_merge_adapter: bool = _f(True, "Read the after-training evaluation with the adapter merged into the "
                                  "weights (in float32, rounded once to eval_dtype): the deployed model's read, "
                                  "without the adapter's extra layers per call.")
    skip_final_eval: bool = _f(False, "Only train; no before/after evaluation and report.")

    def __post_init__(self):
        super().__post_init__()
        checks = {"score_span": SCORE_SPANS, "npo_variant": ("sum", "token_mean"),
                  "swap_mode": SWAP_MODES, "npo_reference": NPO_REFERENCES, "unrelated_source": UNRELATED_SOURCES,
                  "eval_dtype": ("auto", "float32", "bfloat16"),
                  "model_dtype": ("auto", "float32", "bfloat16", "float16"), "checkpoint_metric": ("ss", "margin"),
                  "swap_signal": SWAP_SIGNALS, "retain_reduction": REDUCTIONS, "kl_reduction": REDUCTIONS}

        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        self.type_weight_map()  # raises on a malformed type_weights
        self.valence_weight_map()  # and on a malformed valence_weights
        self.scheduled_swap_map()  # and on a malformed scheduled_swaps
        if self.train_exclude_pattern:
            try:
                re.compile(self.train_exclude_pattern)
            except re.error as e:
                raise ConfigError(f"train_exclude_pattern={self.train_exclude_pattern!r}: not a regular expression "
                                  f"({e})") from e
        from ..evaluate import benchmark_names_problem
        from ..io import comma_list

        named = comma_list(self.eval_benchmarks)
        problem = benchmark_names_problem(named)
        if problem and (named or not self.skip_final_eval):  # training alone needs no benchmark
            raise ConfigError(f"eval_benchmarks={self.eval_benchmarks!r}: {problem}; skip_final_eval=true trains "
                              "without them")
        if self.balance_terms and not self.balance_types:
            raise ConfigError("balance_terms=true needs balance_types=true (it deals each bias type's share of a "
                              "batch over that type's target terms)")
        if self.balance_valence and (not self.balance_types or self.balance_terms):
            raise ConfigError("balance_valence=true needs balance_types=true and balance_terms=false (it deals each "
                              "bias type's share of a batch over the valence groups of its pairs, instead of over "
                              "its target terms)")
        for name in ("unrelated_max_tokens", "eval_limit", "swap_margin", "swap_margin_nats", "retain_floor_margin",
                     "neutral_anchor_batch_size", "gender_term_variants", "eval_bbq_per_category"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be 0 or more")
        if self.retain_floor_margin > 0 and not self.retain_floor:
            raise ConfigError(f"retain_floor_margin={self.retain_floor_margin} needs retain_floor=true (it is a "
                              "margin above that floor)")
        if self.npo_reference == "twin" and not (self.pair_retain and self.npo_variant == "sum"):
            raise ConfigError("npo_reference='twin' needs pair_retain=true and npo_variant='sum' (the twin of each "
                              "forget sentence must be scored in the same step)")
        if self.npo_twin_offset < 0 or (self.npo_twin_offset > 0 and self.npo_reference != "twin"):
            raise ConfigError(f"npo_twin_offset={self.npo_twin_offset}: must be 0 or more, and above 0 needs "
                              "npo_reference='twin' (it is measured against the twin)")
        if self.npo_twin_grad and self.npo_reference != "twin":
            raise ConfigError("npo_twin_grad=true needs npo_reference='twin' (it is the twin that gets the gradient)")
        if self.unrelated_source == "generated" and (self.generated_count < 1 or self.generated_tokens < 1):
            raise ConfigError(f"generated_count={self.generated_count}, generated_tokens={self.generated_tokens}: "
                              "both must be at least 1 with unrelated_source='generated'")
        if self.stop_at_step < 0 or (self.stop_at_step and self.max_steps > 0 and self.stop_at_step > self.max_steps):
            raise ConfigError(f"stop_at_step={self.stop_at_step}: must be 0 (off) or between 1 and max_steps "
                              f"({self.max_steps}); to stop a recipe that fixes its schedule earlier, lower "
                              "--stop_at_step (the learning-rate schedule still spans max_steps)")
        if self.forget_batch_size < 1 or self.retain_batch_size < 1:
            raise ConfigError("forget_batch_size and retain_batch_size must be at least 1")
        if self.alpha_kl > 0 and self.unrelated_batch_size < 1:
            raise ConfigError(f"unrelated_batch_size={self.unrelated_batch_size}: must be at least 1 while alpha_kl "
                              "is above 0")
        positive = {"learning_rate": self.learning_rate, "max_steps": self.max_steps, "eval_every": self.eval_every,
                    "npo_beta": self.npo_beta, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha,
                    "gradient_accumulation_steps": self.gradient_accumulation_steps,
                    "per_device_train_batch_size": self.per_device_train_batch_size}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name}={value}: must be above 0")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout={self.lora_dropout}: must be 0 or more and below 1 (the share of the LoRA "
                              "input dropped)")
        if self.dev_folds < 0 or self.dev_folds and not (self.dev_folds >= 2 and 0 <= self.dev_fold < self.dev_folds):
            raise ConfigError(f"dev_folds={self.dev_folds}, dev_fold={self.dev_fold}: need dev_folds 0 (off) or >= 2, "
                              "and 0 <= dev_fold < dev_folds")
        for name in ("alpha_forget", "alpha_retain", "alpha_kl", "adversarial_share"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be 0 or more")
        if self.train_on_dev and (not self.stop_at_step or self.swap_mode != "none"):
            raise ConfigError(f"train_on_dev=true with stop_at_step={self.stop_at_step}, swap_mode="
                              f"{self.swap_mode!r}: training on the dev slice needs a schedule fixed beforehand "
                              "(stop_at_step set, swap_mode 'none'), since swaps, early stopping and the checkpoint "
                              "choice read the dev slice")
        if self.adversarial_share > 1 or not 0 < self.dev_fraction < 1:
            raise ConfigError(f"adversarial_share={self.adversarial_share}, dev_fraction={self.dev_fraction}: a share "
                              "of 0 to 1, and a fraction above 0 and below 1")

    def load_dtype(self) -> str:
        """The dtype `model_dtype` stands for (see its help)."""
        if self.model_dtype != "auto":
            return self.model_dtype
        import torch

        return "bfloat16" if self.bf16 and not self.use_cpu and torch.cuda.is_available() else "float32"

    def engine_places_model(self) -> bool:
        """Whether FSDP or DeepSpeed runs the model (from these arguments or `accelerate launch`'s environment):
        the engine then moves (and, for FSDP and ZeRO-3, shards) the weights itself, so the model is loaded into
        host memory. Which engines shard the weights is the trainer's `sharded`, read from the running engine."""
        import os

        env = any(os.environ.get(k, "").lower() in ("1", "true")
                  for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))
        return bool(self.fsdp or self.deepspeed or env)

    def step_batch_sizes(self) -> tuple[int, int, int, int]:
        """(forget, retain, unrelated, neutral anchor) sentences one process draws for one micro-batch: the set
        sizes, or with global_batch their share of the optimizer step. Raises ConfigError naming the setting when a
        size does not divide by world size x gradient_accumulation_steps."""
        names = ("forget_batch_size", "retain_batch_size", "unrelated_batch_size", "neutral_anchor_batch_size")
        sizes = tuple(getattr(self, n) for n in names)
        if not self.global_batch:
            return sizes
        world, ga = max(self.world_size, 1), max(self.gradient_accumulation_steps, 1)
        bad = [f"{n}={v}" for n, v in zip(names, sizes) if v % (world * ga)]
        if bad:
            raise ConfigError(f"global_batch: {', '.join(bad)} cannot be shared evenly by {world} process"
                              f"{'' if world == 1 else 'es'} x gradient_accumulation_steps {ga}: each batch size "
                              f"must divide by {world * ga} (or leave global_batch off: sizes per process)")
        return tuple(v // (world * ga) for v in sizes)

    def _slot_weights(self, name: str, what: str, minimum: int = 1, unit: str = "N") -> dict[str, int]:
        """A NAME=N,... setting parsed: {name: N}, each N a whole number of at least `minimum`. Raises ConfigError
        naming the setting when it is malformed."""
        text = getattr(self, name)
        out: dict[str, int] = {}
        for part in [p.strip() for p in text.split(",") if p.strip()]:
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or not key or not value.strip().isdigit() or int(value) < minimum or key in out:
                raise ConfigError(f"{name}={text!r}: expected comma-separated {what}={unit} with {unit} a whole "
                                  f"number of {minimum} or more, each {what.lower()} once (bad part: {part!r})")
            out[key] = int(value)
        return out

    def type_weight_map(self) -> dict[str, int]:
        """type_weights parsed: {bias type: slots}. Raises ConfigError naming the setting when it is malformed."""
        out = self._slot_weights("type_weights", "TYPE")
        if out and not self.balance_types:
            raise ConfigError(f"type_weights={self.type_weights!r} needs balance_types=true (it weights the "
                              "round-robin over the bias types)")
        return out

    def scheduled_swap_map(self) -> dict[str, int]:
        """scheduled_swaps parsed: {bias type: first swapped step}. Raises ConfigError naming the setting when it is
        malformed, names no bias type, sets a step outside the schedule, or comes with a dev swap rule."""
        from ..data.stereoset import BIAS_TYPES

        out = self._slot_weights("scheduled_swaps", "TYPE", minimum=0, unit="STEP")
        if not out:
            return out
        unknown = sorted(set(out) - set(BIAS_TYPES))
        if unknown:
            raise ConfigError(f"scheduled_swaps={self.scheduled_swaps!r}: no bias type named {', '.join(unknown)} "
                              f"(the types: {', '.join(BIAS_TYPES)})")
        end = self.stop_at_step or self.max_steps
        late = {b: s for b, s in out.items() if end > 0 and s >= end}
        if late:
            raise ConfigError(f"scheduled_swaps={self.scheduled_swaps!r}: step {max(late.values())} is not before "
                              f"the run's last step ({end}), so nothing would be trained swapped")
        if self.swap_mode != "none":
            raise ConfigError(f"scheduled_swaps={self.scheduled_swaps!r} with swap_mode={self.swap_mode!r}: swaps "
                              "fixed beforehand need swap_mode 'none' (the dev rule would undo or repeat them)")
        return out

    def valence_weight_map(self) -> dict[str, int]:
        """valence_weights parsed: {valence group: slots}. Raises ConfigError naming the setting when it is
        malformed, names a group that does not exist, or is set without balance_valence."""
        from .valence import GROUPS

        out = self._slot_weights("valence_weights", "GROUP")
        unknown = sorted(set(out) - set(GROUPS))
        if unknown:
            raise ConfigError(f"valence_weights={self.valence_weights!r}: no valence group named "
                              f"{', '.join(unknown)} (the groups: {', '.join(GROUPS)})")
        if out and not self.balance_valence:
            raise ConfigError(f"valence_weights={self.valence_weights!r} needs balance_valence=true (it weights the "
                              "round-robin over the valence groups of each type's pairs)")
        return out

    def method_dict(self) -> dict:
        """The BiasUnlearn-specific settings plus the optimisation ones that matter (for configs and model cards)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in TrainingArguments.__dataclass_fields__}
        own.update({k: getattr(self, k) for k in ("learning_rate", "max_steps", "warmup_steps", "lr_scheduler_type",
                                                   "weight_decay", "seed", "bf16", "gradient_checkpointing",
                                                   "optim")})
        own["lr_scheduler_type"] = _plain_value(own["lr_scheduler_type"])
        own["optim"] = _plain_value(own["optim"])
        return own

    def run_settings(self) -> dict:
        """Every setting that differs from its default, as a JSON-ready dict that `make_config` takes back: the
        run's config.json keeps it so that `--resume DIR` continues with the settings the run started with
        (transformers' own arguments included: gradient_accumulation_steps, logging_steps, ...). Where the run
        folder is and bf16, which make_config chooses by machine, are written as they are."""
        out = {}
        for f in fields(self):
            if not f.init or f.name.startswith("_") or f.name in NOT_RUN_SETTINGS:
                continue
            value = _plain_value(getattr(self, f.name))
            if not _is_plain(value):
                continue
            default = _plain_value(_default_of(f))
            if f.name != "bf16" and (value == default or default is None and value in (False, [], "", {})):
                continue  # the default, or an unset value post-init filled in (a deprecated alias among them)
            if f.name == "save_steps" and value == self.eval_every:
                continue  # it follows eval_every (make_config), also when a resume changes eval_every
            out[f.name] = value
        return out


DEFAULTS = dict(learning_rate=5e-5, max_steps=1000, lr_scheduler_type="linear", warmup_steps=0.05, logging_steps=5,
                save_strategy="steps", save_total_limit=2, report_to="none", remove_unused_columns=False,
                per_device_train_batch_size=1, dataloader_num_workers=0, optim="adamw_torch", weight_decay=0.0,
                disable_tqdm=False, seed=42, max_grad_norm=1.0)


# not carried over by --resume: where the run is (the folder named), per-process and per-machine values (which
# device, the engine and its config files: given again with accelerate launch), and log folders
NOT_RUN_SETTINGS = {"output_dir", "logging_dir", "run_name", "local_rank", "ddp_backend", "hub_token", "use_cpu",
                    "dataloader_pin_memory", "fsdp", "fsdp_config", "deepspeed", "accelerator_config",
                    "torch_compile_backend"}


def _plain_value(v):
    """An enum as its value ("linear", not "SchedulerType.LINEAR"), so written settings read back in."""
    import enum

    return v.value if isinstance(v, enum.Enum) else v


def legacy_value(v):
    """A setting as runs written before this version stored it: enums as "SchedulerType.LINEAR" -> "linear"."""
    if isinstance(v, str) and v.startswith(("SchedulerType.", "OptimizerNames.")):
        return v.split(".", 1)[1].lower()
    return v


def _is_plain(v) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_is_plain(x) for x in v)
    if isinstance(v, dict):  # lr_scheduler_kwargs, gradient_checkpointing_kwargs, ...
        return all(isinstance(k, str) and _is_plain(x) for k, x in v.items())
    return v is None or isinstance(v, (str, int, float, bool))


def _default_of(f):
    from dataclasses import MISSING

    if f.name in DEFAULTS:
        return DEFAULTS[f.name]
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def setting_default(name: str):
    """A setting's default as `make_config` fills it in (plain JSON value), or KeyError for a name that is not a
    setting."""
    return _plain_value(_default_of(UnlearnConfig.__dataclass_fields__[name]))


@functools.cache
def _field_types() -> dict:
    import typing

    return typing.get_type_hints(UnlearnConfig)


def coerce_settings(values: dict, source: str) -> dict:
    """Values read from YAML or JSON, converted to their setting's type: YAML reads `1e-4` as a string, and a
    value such as `max_steps: five` should fail here, naming the setting and where it came from, not after the
    model has loaded."""
    import typing

    hints = _field_types()
    out = {}
    for name, value in values.items():
        hint = hints.get(name)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_args(hint) else [hint]
        want = args[0] if len(args) == 1 else None
        if value is None and type(None) not in typing.get_args(hint) and name in UnlearnConfig.__dataclass_fields__ \
                and UnlearnConfig.__dataclass_fields__[name].default is not None:
            raise ConfigError(f"{source}: {name} has no value (null, or nothing after the colon): give one, or leave "
                              "the setting out for its default")
        if value is None or want not in (int, float, bool, str) or isinstance(value, want) and not (
                want in (int, float) and isinstance(value, bool)):
            out[name] = value
            continue
        try:
            if isinstance(value, (dict, list, tuple)) or (want is not bool and isinstance(value, bool)):
                raise ValueError  # e.g. YAML reads `swap_mode: off` as false: not the text "False", nor 0
            if want is bool:
                text = str(value).strip().lower()
                if text not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                out[name] = text in ("true", "1", "yes")
            elif want is int:
                number = float(value)
                if number != int(number):
                    raise ValueError
                out[name] = int(number)
            elif want is float:
                out[name] = float(value)
            else:
                out[name] = str(value)
        except (TypeError, ValueError, OverflowError):
            kind = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}[want]
            raise ConfigError(f"{source}: {name}={value!r}: expected {kind}") from None
    return out


def settings_from_pairs(items, source: str = "--set") -> dict:
    """NAME=VALUE items (compare's and the benchmarks' --set) as settings: the name with hyphens read as
    underscores, the value read as YAML (so a list or mapping is one, as in --config) and converted to its
    setting's type by coerce_settings. Names are not checked here; the caller says which it takes."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{source} {item!r}: expected NAME=VALUE (an UnlearnConfig setting)")
        name, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        out.update(coerce_settings({name.strip().replace("-", "_"): value}, source))
    return out


def make_config(**overrides) -> UnlearnConfig:
    """UnlearnConfig with the project's defaults; save_steps follows eval_every so each dev check has a checkpoint."""
    import torch

    kw = dict(DEFAULTS)
    kw.update(overrides)
    kw.setdefault("eval_every", UnlearnConfig.__dataclass_fields__["eval_every"].default)
    kw.setdefault("save_steps", kw["eval_every"])
    if "bf16" not in kw:
        kw["bf16"] = cuda_has_native_bf16() if torch.cuda.is_available() else cpu_has_native_bf16()
    if not torch.cuda.is_available():
        kw.setdefault("use_cpu", True)
    return UnlearnConfig(**kw)


def unknown_settings(names) -> str:
    """`names` that are not settings, each with the nearest setting names when there are any ("lora_rr (did you
    mean lora_r?)"), for an error message; '' when every name is a setting."""
    import difflib

    known = list(UnlearnConfig.__dataclass_fields__)
    out = []
    for n in names:
        if n in known:
            continue
        near = difflib.get_close_matches(str(n), known, n=2, cutoff=0.75)
        out.append(f"{n}" + (f" (did you mean {' or '.join(near)}?)" if near else ""))
    return ", ".join(out)
