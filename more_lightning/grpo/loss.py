"""The Step-GRPO loss: PPO's clipped surrogate, KL to the reference, entropy bonus, and the aggregation over tokens.

Per completion token ``t`` of sample ``i`` with advantage ``A_i``, ratio ``ρ = exp(logπ − logπ_old)``:

    policy term   −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)
    KL term       β · k3(π ‖ π_ref),  k3 = exp(logπ_ref − logπ) − (logπ_ref − logπ) − 1, clamped to [−10, 10]
    entropy term  −c_H · H_t

**The KL term is applied when β > 0.** The official MoRE/EasyR1 code computes and logs the KL but the line adding it
to the loss is commented out, so the official runs train without it; set ``beta: 0`` to reproduce that.

Aggregation (``mode``):
- ``token_mean`` — mean over all completion tokens of the micro-batch (official EasyR1 default);
- ``seq_mean`` — mean over sequences of each sequence's token mean (the original GRPO paper);
- ``dapo`` — sum over tokens divided by the number of completion tokens in the whole optimizer step
  (all micro-batches of gradient accumulation), so long and short micro-batches weigh by their tokens (DAPO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Aggregation = Literal["token_mean", "seq_mean", "dapo"]
KL_CLAMP = 10.0


def low_var_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π ‖ π_ref) per token, clamped as in verl/EasyR1."""
    log_ratio = ref_logprobs - logprobs
    return (torch.exp(log_ratio) - log_ratio - 1).clamp(-KL_CLAMP, KL_CLAMP)


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token policy loss and a mask of tokens where the clipped branch was taken.

    ``advantages`` is ``(batch,)`` (one per sample) or ``(batch, tokens)``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: Aggregation = "token_mean", step_tokens: float | None = None
) -> torch.Tensor:
    """Reduce per-token ``values`` over the ``mask``ed completion tokens (see the module docstring)."""
    if mode == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    if mode == "seq_mean":
        per_sequence = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_sequence.mean()
    if mode == "dapo":
        if step_tokens is None:
            raise ValueError("dapo aggregation needs the number of completion tokens in the optimizer step")
        return (values * mask).sum() / max(step_tokens, 1.0)
    raise ValueError(f"unknown aggregation {mode!r}; use token_mean, seq_mean or dapo")


def engine_importance_weights(old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling (TIS) for samples drawn by another engine: ``min(π_old / π_engine, cap)`` per
    token, 1 where the engine gave no log-prob (NaN: a teacher demonstration). Corrects the surrogate's expectation
    for the engine/trainer mismatch (vLLM's kernels, its 16-bit or 4-bit base) without letting a rare token blow up."""
    known = torch.isfinite(engine_logprobs)
    ratio = torch.exp(old_logprobs - torch.where(known, engine_logprobs, old_logprobs)).clamp(max=cap)
    return torch.where(known, ratio, torch.ones_like(ratio)).detach()


def engine_logprob_gap(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean ``|log π_trainer − log π_engine|`` over the completion tokens the engine sampled."""
    known = torch.isfinite(engine_logprobs) & (mask > 0)
    if not known.any():
        return 0.0
    return float((trainer_logprobs.detach() - engine_logprobs)[known].abs().mean())


@dataclass
class LossTerms:
    """The loss and what gets logged about it."""

    loss: torch.Tensor
    policy: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    clip_ratio: torch.Tensor


def step_grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    beta: float = 0.0,
    entropy_coef: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    mode: Aggregation = "token_mean",
    step_tokens: float | None = None,
    token_weights: torch.Tensor | None = None,
) -> LossTerms:
    """The full loss of one micro-batch. ``ref_logprobs`` is needed when ``beta > 0``; ``token_weights`` scale each
    token's policy term (the engine importance-sampling correction, :func:`engine_importance_weights`)."""
    policy_tokens, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip_low, clip_high)
    if token_weights is not None:
        policy_tokens = policy_tokens * token_weights
    policy = aggregate(policy_tokens, mask, mode, step_tokens)
    loss = policy
    kl = torch.zeros((), device=logprobs.device)
    if ref_logprobs is not None:
        kl = aggregate(low_var_kl(logprobs, ref_logprobs), mask, mode, step_tokens)
        if beta > 0:
            loss = loss + beta * kl
    elif beta > 0:
        raise ValueError("beta > 0 needs the reference log-probs")
    mean_entropy = torch.zeros((), device=logprobs.device)
    if entropy is not None:
        mean_entropy = aggregate(entropy, mask, mode, step_tokens)
        if entropy_coef:
            loss = loss - entropy_coef * mean_entropy
    clip_ratio = (clipped * mask).sum() / mask.sum().clamp(min=1)
    return LossTerms(loss, policy.detach(), kl.detach(), mean_entropy.detach(), clip_ratio.detach())
