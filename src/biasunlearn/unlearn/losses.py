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
                 twin_rows: list[int], twin_grad: bool = False,
                 offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
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

    offset (`npo_twin_offset`, nats per token): the reference becomes n*(s_twin - offset), so the push goes on
    until the forget sentence is about `offset` nats per token below its twin instead of level with it.
    """
    r = torch.as_tensor(rows, device=tok_logp.device, dtype=torch.long)
    t = torch.as_tensor(twin_rows, device=tok_logp.device, dtype=torch.long)
    n = real[r].sum(1).clamp(min=1)
    mean_self = _mean_over_real(tok_logp[r], scored[r], real[r], grad=True)
    twin_mean = _mean_over_real(tok_logp[t], scored[t], real[t], grad=twin_grad)
    return n * mean_self, n * (twin_mean - offset)


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


KL_CHUNK_ROWS = 32  # rows of logits per piece of the fused KL (a few MB each, even with 262k-token vocabularies)


class _ForwardKL(torch.autograd.Function):
    """sum_i w_i KL(softmax(ref_i) || softmax(pol_i)) over rows i, with its gradient for pol computed in the same
    pass, a few rows at a time: softmax(pol_i) - softmax(ref_i), times w_i. Autograd through log-softmax, exp and
    the product would keep five [M, V] float32 tensors and run twice as many passes over them. The reference gets
    no gradient (it is the frozen model's)."""

    @staticmethod
    def forward(ctx, ref_logits, policy_logits, weights):
        total = torch.zeros((), dtype=torch.float32, device=policy_logits.device)
        grad = torch.empty(policy_logits.shape, dtype=torch.float32, device=policy_logits.device)
        for a in range(0, policy_logits.shape[0], KL_CHUNK_ROWS):
            rows = slice(a, a + KL_CHUNK_ROWS)
            ref_lp = torch.log_softmax(ref_logits[rows].float(), -1)
            pol_lp = torch.log_softmax(policy_logits[rows].float(), -1)
            p_ref = ref_lp.exp()
            w = weights[rows]
            total += (w * (p_ref * (ref_lp - pol_lp)).sum(-1)).sum()
            torch.sub(pol_lp.exp_(), p_ref, out=grad[rows]).mul_(w.unsqueeze(-1))
        ctx.save_for_backward(grad)
        ctx.pol_dtype = policy_logits.dtype
        return total

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return None, (grad * g).to(ctx.pol_dtype), None


def forward_kl_rows(ref_logits: torch.Tensor, policy_logits: torch.Tensor, n_seq: int,
                    reduction: str = "token") -> torch.Tensor:
    """KL(pi_ref || pi_theta) on rows of logits that are all real tokens ([M, V] each) of n_seq sentences. Computed in float32 over the full vocabulary: sum_v p_ref (log p_ref -
    log p_theta), fused with its gradient (`_ForwardKL`; the reference gets none). reduction 'token': averaged over
    the M tokens (the paper); 'sequence': each sentence's summed KL, averaged over the n_seq sentences, the
    per-sentence scale of NPO's sums and of retain_reduction 'sequence'."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"KL reduction {reduction!r}: expected 'token' or 'sequence'")
    m = policy_logits.shape[0]
    scale = 1.0 / max(n_seq, 1) if reduction == "sequence" else 1.0 / max(m, 1)
    weights = torch.full((m,), scale, dtype=torch.float32, device=policy_logits.device)
    return _ForwardKL.apply(ref_logits.detach(), policy_logits, weights)


def forward_kl(ref_logits: torch.Tensor, policy_logits: torch.Tensor, mask: torch.Tensor,
               reduction: str = "token") -> torch.Tensor:
    """KL(pi_ref || pi_theta) per token over the real (unpadded) tokens. logits: [N, T, V], mask [N, T]: only the
    rows the mask keeps are computed (`forward_kl_rows`)."""
    keep = mask.bool()
    return forward_kl_rows(ref_logits[keep], policy_logits[keep], mask.shape[0], reduction)
