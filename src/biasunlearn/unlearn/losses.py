"""The three BiasUnlearn losses, as pure functions of tensors (no model inside)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("token", "sequence")  # how retention_loss and forward_kl reduce over a batch
NPO_REFERENCES = ("model", "twin")  # what NPO's forget push is measured against (see twin_margins)


def npo_loss(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """NPO (Zhang et al. 2024), eq. (1) of the paper: -(2/beta) * mean(logsigmoid(-beta * (log pi - log pi_ref))).

    policy_logp, ref_logp: [N] log-probabilities of y given x, one per forget example (sums over y's tokens).
    Minimising it lowers policy_logp below ref_logp: the forget set is forgotten. Equals 2/beta*log 2 at the start.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (policy_logp - ref_logp)).mean()


def _mean_over_real(lp: torch.Tensor, sc: torch.Tensor, rl: torch.Tensor, grad: bool) -> torch.Tensor:
    """Mean log-probability over a sentence's real tokens; with grad, only its scored tokens (y) carry gradient."""
    if not grad:
        return ((lp * rl).sum(1) / rl.sum(1).clamp(min=1)).detach()
    return ((lp * sc).sum(1) + (lp.detach() * (rl - sc)).sum(1)) / rl.sum(1).clamp(min=1)


def twin_margins(tok_logp: torch.Tensor, scored: torch.Tensor, real: torch.Tensor, rows: list[int],
                 twin_rows: list[int], twin_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Each forget sentence against its twin, on StereoSet's scale, for NPO with `npo_reference: twin`.

    tok_logp [N, T] token log-probs of the step's batch; scored [N, T] the tokens that carry the losses (y); real
    [N, T] every real token after the start token (what StereoSet's sentence score averages). For each pair
    (rows[k], twin_rows[k]) returns (policy, reference) = (n*s, n*s_twin): s is the forget sentence's mean
    log-probability over all its real tokens, n their number, s_twin the twin's mean, detached. Only the forget
    sentence's scored tokens carry gradient: x is shared with the twin, so lowering it would lower both.
    NPO on (policy - reference) then pushes a stereotype down only while it is above (or level with) its twin,
    and fades once it is about 1/beta nats below it, instead of pushing it below its reference model's
    log-probability however far its twin lags.

    twin_grad (`npo_twin_grad`): the twin's scored tokens carry gradient too, so NPO acts on the difference of the
    pair (a contrastive loss: the stereotype is lowered and its twin raised by the same push, which fades once the
    pair is past level), not on the forget sentence alone.
    """
    r = torch.as_tensor(rows, device=tok_logp.device, dtype=torch.long)
    t = torch.as_tensor(twin_rows, device=tok_logp.device, dtype=torch.long)
    n = real[r].sum(1).clamp(min=1)
    mean_self = _mean_over_real(tok_logp[r], scored[r], real[r], grad=True)
    twin_mean = _mean_over_real(tok_logp[t], scored[t], real[t], grad=twin_grad)
    return n * mean_self, n * twin_mean


def npo_loss_token_mean(policy_tok_logp: torch.Tensor, ref_tok_logp: torch.Tensor, mask: torch.Tensor,
                        beta: float = 0.1) -> torch.Tensor:
    """The released code's variant: one NPO term on the batch-mean of token-mean log-probabilities.

    *_tok_logp, mask: [N, T]. Much weaker than `npo_loss` (one term per batch, per-token scale).
    """
    n = mask.sum(1).clamp(min=1)
    pol = ((policy_tok_logp * mask).sum(1) / n).mean()
    ref = ((ref_tok_logp * mask).sum(1) / n).mean()
    return -(2.0 / beta) * F.logsigmoid(-beta * (pol - ref))


def retention_loss(tok_logp: torch.Tensor, mask: torch.Tensor, reduction: str = "token",
                   floor_logp: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on the retain batch, eq. (2). [N, T] in.

    reduction 'token': mean negative log-likelihood over all scored tokens of the batch (the paper);
    'sequence': each sentence's summed NLL, averaged over sentences, the same per-sentence scale as NPO's summed
    log-probabilities, so a retain sentence weighs as much as a forget sentence.

    floor_logp ([N], optional; `retain_floor`): each sentence's summed log-probability under the original model.
    A sentence then adds only what it has lost against it, relu(floor - log p), so it is held at its original
    level instead of being raised without bound; its gradient is the CE's while it is below the floor, 0 above.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"retention reduction {reduction!r}: expected 'token' or 'sequence'")
    nll = -(tok_logp * mask).sum(1)
    if floor_logp is not None:
        nll = torch.relu(nll + floor_logp)
    if reduction == "sequence":
        return nll.mean()
    return nll.sum() / mask.sum().clamp(min=1)


def forward_kl_rows(ref_logits: torch.Tensor, policy_logits: torch.Tensor, owner: torch.Tensor, n_seq: int,
                    reduction: str = "token") -> torch.Tensor:
    """KL(pi_ref || pi_theta) on rows of logits that are all real tokens: [M, V] each, owner [M] = the sentence
    (0..n_seq-1) each row belongs to. Computed in float32 over the full vocabulary: sum_v p_ref (log p_ref -
    log p_theta). reduction 'token': averaged over the M tokens (the paper); 'sequence': each sentence's summed KL,
    averaged over the n_seq sentences, the per-sentence scale of NPO's sums and of retain_reduction 'sequence'."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"KL reduction {reduction!r}: expected 'token' or 'sequence'")
    ref_lp = torch.log_softmax(ref_logits.float(), -1)
    pol_lp = torch.log_softmax(policy_logits.float(), -1)
    kl = (ref_lp.exp() * (ref_lp - pol_lp)).sum(-1)
    if reduction == "sequence":
        return kl.sum() / max(n_seq, 1)
    return kl.sum() / max(kl.shape[0], 1)


def forward_kl(ref_logits: torch.Tensor, policy_logits: torch.Tensor, mask: torch.Tensor,
               reduction: str = "token") -> torch.Tensor:
    """KL(pi_ref || pi_theta) per token over the real (unpadded) tokens. logits: [N, T, V], mask [N, T]: only the
    rows the mask keeps are computed (`forward_kl_rows`)."""
    keep = mask.bool()
    owner = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(keep)[keep]
    return forward_kl_rows(ref_logits[keep], policy_logits[keep], owner, mask.shape[0], reduction)
