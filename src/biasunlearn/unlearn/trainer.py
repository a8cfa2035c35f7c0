"""BiasUnlearnTrainer: a transformers.Trainer whose compute_loss is the paper's eq. (4), and the dev-check callback.

The reference model is the same model with the LoRA adapter disabled (never a second copy). Reference
log-probabilities of forget examples are fixed, so they are cached; the KL term needs the reference distribution on
each unrelated batch, computed without gradients.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .. import interrupt
from ..errors import BiasUnlearnError, ConfigError
from ..evaluate import stereoset_records
from ..io import read_log_jsonl, write_json
from ..metrics import mean_margins as dev_margins  # one name here, so a test can stand in for it
from ..metrics import ss_standard_error, stereoset_scores
from ..models import start_token_id
from ..scoring import forward_params, model_device, pack_batch, pad_batch, score_mask, tokenize_parts
from .controller import SwapController
from .losses import forward_kl_rows, npo_loss, npo_loss_token_mean, retention_loss, twin_margins
from .sets import Item, UnlearnSets


class TrainingCollapse(BiasUnlearnError):
    """The run went wrong (NaN/inf loss or a dev LMS collapse); the last good checkpoint remains."""


class _StepIndex(torch.utils.data.Dataset):
    """A dataset of step indices: the real batch of a step is built from the sets in compute_loss."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"step_index": i}


@dataclass
class StepBatch:
    """A forward pass over a step's sentences, read in the padded [N, L-1] layout whatever the model saw.

    ids: what the model saw; scored: the tokens that carry the forget/retain losses; real: every real prediction
    (token 1.. of each sentence); index: the flat position in ids (and in out.logits' rows) of each prediction;
    tok_lp: log p of each next token, for the sentences it was asked for (0 elsewhere)."""

    out: object
    ids: torch.Tensor
    scored: torch.Tensor
    real: torch.Tensor
    index: torch.Tensor
    tok_lp: torch.Tensor | None = None

    def rows(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The real predictions of sentences sl, sentence-major: (flat positions [M], owner [M] = which sentence of
        sl, t [M] = which prediction of it)."""
        keep = self.real[sl].bool()
        owner, t = keep.nonzero(as_tuple=True)
        return self.index[sl][keep], owner, t

    def logits_at(self, flat_rows: torch.Tensor) -> torch.Tensor:
        logits = self.out.logits
        return logits.reshape(-1, logits.shape[-1])[flat_rows]

    def logit_rows(self, sl: slice) -> torch.Tensor:
        """Logits [M, V] of the real predictions of sentences sl, sentence-major."""
        return self.logits_at(self.rows(sl)[0])


# model types whose training forward wants token_type_ids, with 0 meaning a text token
TEXT_TOKEN_TYPE_ZERO = ("gemma3",)


def _any_process(flag: bool, device) -> bool:
    """`flag` or'ed over every process of a distributed run (one all-reduce); `flag` itself in a single process."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
    return bool(flag)


def _weights_sharded(trainer) -> bool:
    """Whether the engine partitions the weights: FSDP, or DeepSpeed ZeRO stage 3 (stages 1 and 2 partition only
    the optimizer state and gradients; an unknown stage counts as partitioned)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return False
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    stage = getattr(plugin, "zero_stage", None)
    return stage is None or int(stage) >= 3


def check_zero3_gathers(trainer) -> None:
    """Under DeepSpeed ZeRO-3 the adapter can be written only if DeepSpeed gathers the weights at saves
    (`stage3_gather_16bit_weights_on_model_save`). Without it the first dev check would fail after training had
    begun; this refuses at the start instead, naming the setting."""
    if not (getattr(trainer, "is_deepspeed_enabled", False) and trainer.sharded):
        return
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    zero = (getattr(plugin, "deepspeed_config", None) or {}).get("zero_optimization", {})
    if str(zero.get("stage3_gather_16bit_weights_on_model_save", False)).lower() != "true":
        raise ConfigError("DeepSpeed ZeRO-3: the adapter is gathered from the partitions to be written, which needs "
                          '"stage3_gather_16bit_weights_on_model_save": true under "zero_optimization" in the '
                          "DeepSpeed config (with `accelerate launch --use_deepspeed`: --zero3_save_16bit_model true)")


@contextlib.contextmanager
def _reference_pass(model, unwrapped):
    """The original model for a reference pass: the adapter off, no gradient, and in eval mode, so the model's own
    dropout (GPT-2's resid/embd/attn_pdrop, 0.1 each) does not make the reference noisy (a cached forget log-prob
    would keep one dropout draw for the whole run). The training mode is restored after. The policy pass keeps the
    model's dropout, as a plain fine-tune of it would (the default models, SmolLM2 and Gemma-3, have none): on a
    model with dropout the KL at step 0 is that noise, not 0."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), unwrapped.disable_adapter():
            yield
    finally:
        model.train(was)


def _collate(rows):
    return {"step_index": torch.tensor([r["step_index"] for r in rows])}


class BiasUnlearnTrainer(Trainer):
    def __init__(self, *, sets: UnlearnSets, controller: SwapController, tokenizer, **kw):
        args = kw["args"]
        kw.setdefault("train_dataset", _StepIndex(max(args.max_steps, 1) * max(args.world_size, 1)
                                                  * max(args.gradient_accumulation_steps, 1)))
        kw.setdefault("data_collator", _collate)
        super().__init__(processing_class=tokenizer, **kw)
        self.sets, self.controller, self.tok = sets, controller, tokenizer
        self._type_weights = self.args.type_weight_map()  # parsed once, not at every step
        self._valence_weights = self.args.valence_weight_map()
        self._sizes = self.args.step_batch_sizes()  # per process and micro-batch (global_batch: a share of the step)
        self._start = start_token_id(tokenizer)
        self._ids: dict[str, tuple[list[int], int]] = {}
        self._ref_cache: dict[str, tuple[float, list[float]]] = {}
        self._parts: dict[str, list[float]] = {}
        self.retokenized = 0  # sentences trained on their whole tokens, split at the scored part (tokenize_parts)
        self._packed: bool | None = None  # pack_sequences, once checked on the first step (_use_packing)
        self.packing_check: dict | None = None
        self._micro = (-1, 0)  # (optimizer step, micro-batch within it): with gradient accumulation each differs
        # FSDP and DeepSpeed ZeRO-3 gather the weights inside each forward, collectively: every process must run the
        # same passes, so the reference log-probs are computed afresh at each step (a cache hits on one process and
        # misses on another), and reference passes and dev checks go through the engine's wrapper
        self.sharded = _weights_sharded(self)
        check_zero3_gathers(self)
        self.loss_is_scaled_for_ga = False  # compute_loss returns a mean over one micro-batch: the Trainer divides
        # Gemma 3's multimodal model (4B on) asks in training for token types that mark image tokens: 0, all text.
        # Only there: in other models 0 can mean something else (PaliGemma's bidirectional prefix).
        inner = self.accelerator.unwrap_model(self.model)
        self._token_types = (getattr(getattr(inner, "config", None), "model_type", None) in TEXT_TOKEN_TYPE_ZERO
                             and "token_type_ids" in forward_params(inner))

    # --- batches ---
    def _encode(self, item: Item) -> tuple[list[int], int, int]:
        """(token ids, first scored position, end of the scored positions): start + x + y + z, y scored."""
        if item.key not in self._ids:
            (x, y, z), whole = tokenize_parts(self.tok, (item.x, item.y, item.z))
            if whole:
                self._note_retokenized(item)
            cap = self.args.unrelated_max_tokens
            if not item.bias_type and cap and len(x) + len(y) + len(z) > cap:  # a KL text (no bias type): capped
                x, y, z = [], (x + y + z)[:cap], []
            self._ids[item.key] = ([self._start] + x + y + z, 1 + len(x), 1 + len(x) + len(y))
        return self._ids[item.key]

    def _note_retokenized(self, item: Item) -> None:
        """Count the sentences whose parts tokenize apart otherwise than whole (`tokenize_parts`); say so once."""
        self.retokenized += 1
        if self.retokenized == 1:
            import logging

            logging.getLogger(__name__).warning(
                "this tokenizer splits a sentence's parts otherwise when they are tokenized apart (%r + %r); "
                "training uses the whole sentence's tokens, split where the scored part begins, as the evaluation "
                "scores them", item.x, item.y)

    @staticmethod
    def _masks(enc, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(scored [N, width-1], real [N, width-1]) as floats: prediction t scores token t+1."""
        scored = score_mask(torch.tensor([e[2] for e in enc], device=device),
                            torch.tensor([e[1] for e in enc], device=device), width).float()
        real = score_mask(torch.tensor([len(e[0]) for e in enc], device=device),
                          torch.ones(len(enc), dtype=torch.long, device=device), width).float()
        return scored, real

    def _forward(self, model, items: list[Item], device, packed: bool, score: slice = slice(None),
                 forward=None) -> StepBatch:
        """One forward pass over `items`, packed end to end (no padding) or padded to the longest. Token
        log-probabilities are computed for the sentences in `score` only (the unrelated sentences of a step need
        their full distribution for the KL, not a log-softmax of their own). `forward` replaces `model` as the
        callable (the packing check passes the forward from before accelerate's mixed-precision wrapper)."""
        forward = model if forward is None else forward
        enc = [self._encode(it) for it in items]
        seqs = [e[0] for e in enc]
        pad = self.tok.pad_token_id or 0
        if packed:
            pk = pack_batch(seqs, pad, device)
            ids, index = pk.ids, pk.index
            kw = {"position_ids": pk.positions}
        else:
            ids, attn = pad_batch(seqs, pad, device)
            kw = {"attention_mask": attn}
        if self._token_types:
            kw["token_type_ids"] = torch.zeros_like(ids)
        out = forward(input_ids=ids, use_cache=False, **kw)
        if not packed:
            index = torch.arange(ids.numel(), device=device).view_as(ids)[:, :-1]
        scored, real = self._masks(enc, index.shape[1] + 1, device)
        sb = StepBatch(out, ids, scored, real, index)
        rows, owner, t = sb.rows(score)
        logits = sb.logits_at(rows).float()
        lp = logits.gather(-1, ids.reshape(-1)[rows + 1].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
        sb.tok_lp = torch.zeros(real.shape, dtype=lp.dtype, device=device).index_put((owner + (score.start or 0), t),
                                                                                      lp)
        return sb

    def _use_packing(self, model, items: list[Item], device) -> bool:
        """Whether this model packs correctly: decided once, on the first step's batch, by scoring it both ways
        without dropout. A model whose attention ignores position-restarts (so packed sequences would see each
        other) differs by whole nats and trains padded; the decision is logged. The check runs outside mixed
        precision: it tests what the attention sees, and bf16 autocast alone moves a summed log-probability by
        tenths of a nat whichever way the batch is laid out, which turned packing off for bf16 runs. An outer
        autocast(enabled=False) is not enough: accelerate's mixed precision wraps the model's forward in its own
        autocast, entered inside the call, so the check calls the forward from before that wrapper
        (`_original_forward`, which accelerate keeps on the model) with autocast off as well."""
        if self._packed is None:
            if not self.args.pack_sequences:
                self._packed = False
            else:
                was = model.training
                model.eval()
                # The model's own attribute only (getattr would also find one on a wrapped inner model). Under DDP
                # the module inside may be called directly (no gradient is synced here); under FSDP or DeepSpeed the
                # wrapper must run (it gathers the weights), so the check goes through it as before.
                inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
                plain = inner.__dict__.get("_original_forward", model)
                try:
                    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
                        a = self._forward(model, items, device, packed=True, forward=plain)
                        b = self._forward(model, items, device, packed=False, forward=plain)
                finally:
                    model.train(was)
                diff = float(((a.tok_lp - b.tok_lp) * b.real).abs().max())
                tol = 0.01 if a.out.logits.dtype == torch.float32 else 0.3
                # every process trains the same layout: packed only if it checked out on every process's batch
                self._packed = not _any_process(diff > tol, device)
                self.packing_check = {"max_abs_diff_nats": round(diff, 6), "tolerance": tol,
                                      "packed": self._packed}
                if not self._packed:
                    import logging

                    logging.getLogger(__name__).warning(
                        "pack_sequences: packed and padded token log-probabilities differ by %.3g nats on this "
                        "model (tolerance %g); training with padded batches instead", diff, tol)
        return self._packed

    def draw_chunk(self, index: int) -> dict:
        """This process's share of chunk `index` (forget, retain and KL items), drawn as the config says: the
        swap directions of now, the batch sizes, and every way of dealing a batch (types, terms, valence)."""
        a = self.args
        return self.sets.chunk(index, self.controller.directions, *self._sizes[:3], rank=a.process_index,
                               world=a.world_size, balance_types=a.balance_types, pair_retain=a.pair_retain,
                               type_weights=self._type_weights, balance_terms=a.balance_terms,
                               neutral_bs=self._sizes[3], balance_valence=a.balance_valence,
                               valence_weights=self._valence_weights)

    # --- loss ---
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        a = self.args
        step = self.state.global_step
        if model.training:
            # with gradient accumulation, the micro-batches of one optimizer step are consecutive chunks
            self._micro = (step, self._micro[1] + 1 if self._micro[0] == step else 0)
        micro = self._micro[1] if self._micro[0] == step else 0
        ga = max(a.gradient_accumulation_steps, 1)
        chunk = self.draw_chunk(step * ga + micro % ga)
        device = inputs["step_index"].device
        # A switched-off term (alpha 0, an ablation) is still computed and logged, so its curve can be compared,
        # but it adds nothing to the loss.
        parts = [("forget", chunk["forget"]), ("retain", chunk["retain"]), ("unrelated", chunk["unrelated"])]
        items = [it for _, its in parts for it in its]
        packed = self._use_packing(model, items, device)
        n_scored = len(chunk["forget"]) + len(chunk["retain"])
        sb = self._forward(model, items, device, packed, score=slice(0, n_scored))
        out, tok_lp, mask = sb.out, sb.tok_lp, sb.scored
        sl = {}
        i = 0
        for name, its in parts:
            sl[name] = slice(i, i + len(its))
            i += len(its)

        unwrapped = self.accelerator.unwrap_model(model)
        # Reference passes (adapter off, no gradient) run the inner model as they are, except under FSDP or
        # DeepSpeed ZeRO-3, whose wrapper must run to gather the weights. Under DDP the wrapper would sync buffers
        # at each pass, a collective that processes reach a different number of times (the reference cache).
        ref_model = model if self.sharded else unwrapped
        f = sl["forget"]
        forget = chunk["forget"]
        if a.npo_variant == "sum":
            pol = (tok_lp[f] * mask[f]).sum(1)
            # npo_reference 'twin': forget item k is measured against the twin at batch row twin_row[k]; only the
            # others (the adversarial share) need the reference model's log-prob
            twin_row = self._twin_rows(chunk, sl) if a.npo_reference == "twin" else {}
            own = [k for k in range(len(forget)) if k not in twin_row]
            ref = torch.zeros(len(forget), device=device)
            if self.sharded:  # the same passes on every process: the whole forget batch, whatever has a twin
                ref[own] = self._ref_logp(ref_model, forget, device)[own]
            elif own:
                ref[own] = self._ref_logp(ref_model, [forget[k] for k in own], device)
            if twin_row:
                ks = list(twin_row)
                p_tw, r_tw = twin_margins(tok_lp, mask, sb.real, [f.start + k for k in ks],
                                          [twin_row[k] for k in ks], twin_grad=a.npo_twin_grad,
                                          offset=a.npo_twin_offset)
                idx = torch.as_tensor(ks, device=device)
                pol, ref = pol.index_copy(0, idx, p_tw), ref.index_copy(0, idx, r_tw)
            l_forget = npo_loss(pol, ref, a.npo_beta)
        else:
            ref_tok = self._ref_logp(ref_model, forget, device, per_token=tok_lp.shape[1])
            l_forget = npo_loss_token_mean(tok_lp[f], ref_tok, mask[f], a.npo_beta)
        r, u = sl["retain"], sl["unrelated"]
        floor = self._ref_logp(ref_model, chunk["retain"], device) + a.retain_floor_margin if a.retain_floor else None
        l_retain = retention_loss(tok_lp[r], mask[r], a.retain_reduction, floor)
        # KL over every real prediction of the unrelated sentences (token 1.. of each), in the same rows and order
        # for the reference (adapter off, no gradient) as for the policy
        if chunk["unrelated"]:
            with _reference_pass(ref_model, unwrapped):
                ref_rows = self._forward(ref_model, chunk["unrelated"], device, packed,
                                         score=slice(0, 0)).logit_rows(slice(None))
            l_kl = forward_kl_rows(ref_rows, sb.logit_rows(u), len(chunk["unrelated"]), a.kl_reduction)
        else:  # unrelated_batch_size 0, allowed only with alpha_kl 0 (an ablation): no KL term to compute
            l_kl = torch.zeros((), device=device)
        loss = a.alpha_forget * l_forget
        if a.alpha_retain > 0:
            loss = loss + a.alpha_retain * l_retain
        if a.alpha_kl > 0:
            loss = loss + a.alpha_kl * l_kl
        logs = {"loss_forget": l_forget.detach(), "loss_retain": l_retain.detach(), "loss_kl": l_kl.detach()}
        # every process stops together: one that raised alone would leave the others waiting in the gradient
        # all-reduce
        if _any_process(not bool(torch.isfinite(loss)), device):
            raise TrainingCollapse(
                f"loss is {loss.item()} at step {step} (forget {logs['loss_forget'].item():.4g}"
                f"{'' if not torch.isfinite(loss) else '; not finite on another process'}); training stopped. "
                f"The last good checkpoint is in {a.output_dir}; lower --learning_rate or check the data.")
        for k, v in logs.items():
            self._parts.setdefault(k, []).append(float(v))
        return (loss, out) if return_outputs else loss

    def _twin_rows(self, chunk, sl) -> dict[int, int]:
        """{index in the forget batch: batch row of its twin} for the forget items whose twin is in this step's
        retain batch (pair_retain puts it there; the adversarial share has none)."""
        pos = {it.key: sl["retain"].start + j for j, it in enumerate(chunk["retain"])}
        out = {}
        for k, it in enumerate(chunk["forget"]):
            tw = self.sets.twin(it)
            if tw is not None and tw.key in pos:
                out[k] = pos[tw.key]
        return out

    def _ref_logp(self, model, items, device, per_token: int = 0):
        """Reference log-probs of fixed items (forget, and retain with retain_floor), cached per item: the
        per-sequence sums over scored tokens [N], or with `per_token` = W (token_mean NPO) the per-token values
        [N, W] (zero-padded). Sharded (FSDP, ZeRO-3): computed afresh, never cached (see __init__)."""
        if self.sharded:
            self._ref_cache = {}
        missing = [it for it in items if it.key not in self._ref_cache]
        if missing:
            with _reference_pass(model, self.accelerator.unwrap_model(model)):
                sb = self._forward(model, missing, device, packed=bool(self._packed))
            for k, it in enumerate(missing):
                n = int(sb.real[k].sum())
                self._ref_cache[it.key] = (float((sb.tok_lp[k] * sb.scored[k]).sum()), sb.tok_lp[k, :n].tolist())
        if not per_token:
            return torch.tensor([self._ref_cache[it.key][0] for it in items], device=device)
        rows = []
        for it in items:
            v = self._ref_cache[it.key][1][:per_token]
            rows.append(v + [0.0] * (per_token - len(v)))
        return torch.tensor(rows, device=device)

    def save_adapter(self, path, extra: dict | None = None) -> None:
        """Write the LoRA adapter (and `extra` {file name: JSON object}) to the folder `path`, replacing it whole:
        written beside it first, then renamed; a crash between the two renames leaves `path`.old, which
        `io.recover_folder` puts back when the run is resumed (a fresh run removes it). Call it on every process:
        under FSDP or ZeRO-3 the adapter's weights are sharded, and gathering them takes every process (the main
        process writes)."""
        path = Path(path)
        # gathered from the shards (FSDP, ZeRO-3): all of the model comes to the main process, so each save costs
        # the full model's size in host memory there (DeepSpeed ZeRO-3 needs
        # stage3_gather_16bit_weights_on_model_save)
        state = self.accelerator.get_state_dict(self.model_wrapped) if self.sharded else None
        if not self.is_world_process_zero():
            return
        tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
        for p in (tmp, old):
            shutil.rmtree(p, ignore_errors=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(tmp, state_dict=state)
        for name, obj in (extra or {}).items():
            write_json(tmp / name, obj)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)

    def log(self, logs, start_time=None):
        if self._parts:
            for k, vals in self._parts.items():
                logs[k] = round(sum(vals) / len(vals), 6)
            self._parts = {}
        if self.controller is not None:
            logs["directions"] = ",".join(f"{b[:4]}{d:+d}" for b, d in self.controller.directions.items())
        super().log(logs, start_time)


class DevCheckCallback(TrainerCallback):
    """Every eval_every steps: dev SS per bias type and dev LMS through the one scoring path; the controller decides
    swaps and early stopping; the best adapter by the dev criterion is kept. Also the collapse guard and logs."""

    def __init__(self, trainer: BiasUnlearnTrainer, dev_examples, out_dir, log=print, trained_on=False):
        self.trainer, self.dev, self.out = trainer, dev_examples, Path(out_dir)
        self.trained_on = trained_on  # train_on_dev: the checks read trained data (a collapse guard, no choice)
        self.log = log
        self.start_lms = None
        self.best = None  # (criterion, step)
        self.stop_reason = ""  # why the run stopped where it did (set at the step it stops)
        self.stopped = None  # restore(): the checkpoint is where the run stopped (its reason), or None
        self.t0 = time.time()

    def _dev_check(self, model, step):
        args = self.trainer.args
        # the dev check computes in the precision training does; under FSDP or ZeRO-3 it goes through the engine's
        # wrapper (scoring's shortcut calls the decoder inside it directly, which would skip the weight gathering)
        half = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
        # callbacks are handed the model the Trainer was built with, not the engine's wrapper around it
        scored = self.trainer.model_wrapped if self.trainer.sharded else model
        with torch.autocast(model_device(model).type, dtype=half or torch.bfloat16, enabled=half is not None):
            recs = stereoset_records(scored, self.trainer.tok, self.dev,
                                     **({"direct": False} if self.trainer.sharded else {}))
        m = stereoset_scores(recs)
        ss = {b: v["SS"] for b, v in m.items() if b != "overall"}
        lms = m["overall"]["LMS"]
        result = [ss, lms, m["overall"]["SS"], dev_margins(recs), ss_standard_error(recs, resamples=500)]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast_object_list(result, src=0)  # every process acts on rank 0's numbers
        ss, lms, overall, margins, se = result
        if self.start_lms is None:
            self.start_lms = lms
        type_margins = {b: v for b, v in margins.items() if b != "overall"}
        directions, stop = self.trainer.controller.update(step, ss, lms, dev_margin=type_margins)
        # ss_se: bootstrap standard error of each dev SS over target terms and examples (a few terms make it large)
        entry = {"step": step, "ss": ss, "ss_overall": overall, "ss_se": {b: round(v, 2) for b, v in se.items()},
                 "lms": lms, "margin": margins,
                 "directions": directions,
                 "elapsed_s": round(time.time() - self.t0, 1), **({"trained_on": True} if self.trained_on else {})}
        if self.trainer.is_world_process_zero():
            with open(self.out / "dev_log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
        self.log(f"[dev{', trained on' if self.trained_on else ''}] step {step}: SS "
                 + " ".join(f"{b}={v:.1f}±{se[b]:.0f}" for b, v in ss.items())
                 + f" overall={overall:.1f}±{se['overall']:.0f} LMS={lms:.1f} margin={margins.get('overall', 0):+.4f} "
                 f"directions={directions}")
        if self.start_lms - lms > args.collapse_lms_drop:
            kept = (f"Best adapter so far: {self.out / 'best_adapter'} (step {self.best[1]})" if self.best else
                    "No best adapter was kept" + (" (the dev slice trained: train_on_dev)" if self.trained_on else
                                                  " (no dev check after step 0 came before this one)"))
            raise TrainingCollapse(
                f"dev LMS fell from {self.start_lms:.1f} to {lms:.1f} at step {step} (bound "
                f"{args.collapse_lms_drop}); training stopped. {kept}; the last checkpoint before this check "
                f"remains in {self.out}.")
        if args.checkpoint_metric == "margin":
            crit = SwapController.criterion(type_margins, target=0.0)
        else:
            crit = SwapController.criterion(ss)
        drop = self.start_lms - lms
        score = (0, crit) if drop <= args.lms_guard else (1, (drop,))
        if step > 0 and not self.trained_on and (self.best is None or score < self.best[0]):
            self.best = (score, step)
            self.trainer.save_adapter(self.out / "best_adapter", {"dev_check.json": entry})
        return stop

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._apply_schedule(state.global_step)  # the first step's (from the checkpoint's, after a resume)
        if state.global_step == 0 and not self.trainer.controller.history:
            self._dev_check(model, 0)
            if not any(self.trainer.controller.directions.values()):
                raise BiasUnlearnError(
                    "every bias type is already past level on the dev split before training "
                    f"(swap_mode {self.trainer.controller.mode!r} pauses such types): there is nothing to train. "
                    f"Dev SS at step 0: {self.trainer.controller.history[-1]['ss']}")
        elif self.trainer.controller.history:  # resumed: restore() has read start_lms and best from the checkpoint
            self.log(f"[resume] controller restored at step {state.global_step}: directions "
                     f"{self.trainer.controller.directions}, {len(self.trainer.controller.events)} swaps so far")

    def _apply_schedule(self, step: int) -> None:
        """Swaps fixed beforehand (scheduled_swaps) take effect from their step's chunk on. `step` is the number of
        steps done, so the next chunk drawn is number `step` (from 0)."""
        for ev in self.trainer.controller.apply_schedule(step):
            self.log(f"[train] step {step}: {ev['bias_type']} swapped as scheduled (scheduled_swaps): its "
                     "anti-stereotypes are forgotten and its stereotypes retained from this step on")

    def on_step_end(self, args, state, control, model=None, **kw):
        self._apply_schedule(state.global_step)  # before the dev check, so its logged directions are the next step's
        step, last = state.global_step, args.stop_at_step or args.max_steps
        # the last step is checked too when eval_every does not divide it: the adapter a run ends with has always
        # been through the collapse guard (and has its row in dev_log.jsonl)
        if step % args.eval_every == 0 or step == last:
            stop = self._dev_check(model, step)
            # with stop_at_step the schedule is fixed, so the early stop is not taken; but a run whose every type
            # is paused has nothing left to train (its next batches would be empty): it stops there too
            paused = stop and not any(self.trainer.controller.directions.values())
            if stop and (not args.stop_at_step or paused) and step < last:
                self.stop_reason = self.trainer.controller.stop_reason
                self.log(f"[dev] {self.stop_reason}: early stop at step {step}"
                         + (f", before stop_at_step {args.stop_at_step}; the adapter is this step's"
                            if args.stop_at_step else ""))
                control.should_training_stop = True
                control.should_save = True
        if step >= args.max_steps and not self.stop_reason:
            self.stop_reason = "max_steps"  # transformers stops the run here (and saves its checkpoint)
        if args.stop_at_step and step >= args.stop_at_step:
            self.stop_reason = "stop_at_step"
            self.log(f"[train] step {step}: stop_at_step reached; the adapter is this step's")
            control.should_training_stop = True
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kw):
        ck = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ck.exists() and self.trainer.is_world_process_zero():
            # "stopped": the run ends at this checkpoint (early stop, stop_at_step); a resume from it finishes the
            # run without training another step
            write_json(ck / "biasunlearn_state.json", {"controller": self.trainer.controller.state_dict(),
                                                       "start_lms": self.start_lms, "best": self.best,
                                                       "stopped": self.stop_reason if control.should_training_stop
                                                       else None, "packing": self.trainer.packing_check})
        return control

    def restore(self, checkpoint: Path) -> None:
        p = Path(checkpoint) / "biasunlearn_state.json"
        if not p.exists():
            raise BiasUnlearnError(f"{checkpoint}: no biasunlearn_state.json; not a biasunlearn checkpoint")
        st = json.loads(p.read_text())
        self.trainer.controller.load_state_dict(st["controller"])
        self.start_lms = st["start_lms"]
        self.best = ((int(st["best"][0][0]), tuple(st["best"][0][1])), st["best"][1]) if st["best"] else None
        self.stopped = st.get("stopped")
        if st.get("packing"):  # the layout checked on the run's first step, not re-decided on the resumed one's
            self.trainer.packing_check = st["packing"]
            self.trainer._packed = bool(st["packing"]["packed"])
        self._match_best_folder(Path(checkpoint))

    def _match_best_folder(self, checkpoint: Path) -> None:
        """After restore(): best_adapter/ must be the adapter of the restored best check. A kill after a new best
        was saved (at a dev check) but before that step's checkpoint was, or a resume from an older checkpoint,
        leaves a later check's adapter there, which the restored record does not describe. The record's own
        adapter is put back from its checkpoint when that is still on disk; else the record is dropped, and the
        best is chosen again among the checks still to come."""
        folder = self.out / "best_adapter"
        try:
            held = json.loads((folder / "dev_check.json").read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError):
            held = None
        want = self.best[1] if self.best else None
        if held == want:
            return
        source = self.out / f"checkpoint-{want}" if want is not None else None
        files = ("adapter_config.json", "adapter_model.safetensors")
        restorable = source is not None and all((source / f).is_file() for f in files)
        if self.trainer.is_world_process_zero():
            rows = read_log_jsonl(self.out / "dev_log.jsonl", warn=self.log)
            entry = next((r for r in rows if r.get("step") == want), {"step": want})
            shutil.rmtree(folder, ignore_errors=True)
            if restorable:
                tmp = folder.with_name(folder.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                for f in files:
                    shutil.copy2(source / f, tmp / f)
                write_json(tmp / "dev_check.json", entry)
                tmp.rename(folder)
        what = "nothing" if held is None else f"step {held}'s adapter"
        if restorable:
            self.log(f"[resume] best_adapter/ held {what}, not the best check of {checkpoint.name} (step {want}): "
                     f"put back from {source.name}")
        else:
            self.log(f"[resume] best_adapter/ held {what}, not the best check of {checkpoint.name} "
                     + (f"(step {want}, whose checkpoint is gone)" if want is not None else "(none yet)")
                     + ": removed; the best adapter is chosen again among the dev checks from here on")
            self.best = None


def _log_line(logs: dict) -> str:
    return str({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"})


class _StderrPrinter(TrainerCallback):
    """transformers' PrinterCallback (used when tqdm is off), writing to stderr instead of stdout."""

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_local_process_zero and logs:
            print(_log_line(logs), file=sys.stderr, flush=True)


class _StderrProgress(ProgressCallback):
    """transformers' ProgressCallback, its log lines written beside its bar on stderr, not to stdout."""

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            from tqdm.auto import tqdm

            tqdm.write(_log_line(logs), file=sys.stderr)


def route_logs_to_stderr(trainer) -> None:
    """The Trainer's own log lines ({'loss': ...}) go to stderr with the rest of the progress, so that stdout holds
    only a command's results (the tables `train` prints, which a user may redirect to a file)."""
    if trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(_StderrPrinter())
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_StderrProgress())


class InterruptCheck(TrainerCallback):
    """Ends training after the step in which a Ctrl-C came whose KeyboardInterrupt was swallowed (raised inside a
    weakref or garbage-collection callback, where Python drops it) instead of letting it run every step left. Added
    before the dev check, so that step's check is not run either."""

    def on_step_end(self, args, state, control, **kw):
        interrupt.check()


class JsonlLogCallback(TrainerCallback):
    """Per-step logs as JSONL (TensorBoard too when `report_to` names it)."""

    def __init__(self, path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_world_process_zero and logs:
            row = {"step": state.global_step, **{k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                                                 for k, v in logs.items()}}
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
