"""The Step-GRPO loss: PPO's clipped surrogate, KL to the reference, entropy bonus, and the aggregation over tokens.

Per completion token ``t`` of sample ``i`` with advantage ``A_i``, ratio ``ρ = exp(logπ − logπ_old)``:

    policy term   −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)
    KL term       β · k3(π ‖ π_ref),  k3 = exp(logπ_ref − logπ) − (logπ_ref − logπ) − 1, clamped to [−10, 10]
    entropy term  −c_H · H_t

**The KL term is applied when β > 0.** The official MoRE/EasyR1 code computes and logs the KL but the line adding it
to the loss is commented out, so the official runs train without it; set ``beta: 0`` to reproduce that.

:class:`StepGRPOLoss` (configured from :class:`LossConfig`) adds them up; the terms are pure functions below.

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
from torch import nn

from more_lightning.errors import check_ranges

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
class LossConfig:
    """The training objective: Step-GRPO, or the supervised warm start before it."""

    objective: Literal["step_grpo", "sft"] = "step_grpo"
    """``step_grpo``: the clipped surrogate over sampled groups (with a ``RolloutCallback``); ``sft``: the mean
    negative log-likelihood of the teacher's completion tokens (the warm start, with ``TeacherDemonstrations``)."""
    beta: float = 1e-3
    """KL coefficient to the reference (adapter disabled). Applied when > 0; the official code computes it but does
    not add it (set 0 to reproduce that)."""
    clip_low: float = 0.2
    """PPO clip ε below 1 (ratio ≥ 1 − ε_low)."""
    clip_high: float = 0.2
    """PPO clip ε above 1 (ratio ≤ 1 + ε_high; DAPO's clip-higher uses 0.28)."""
    entropy_coef: float = 1e-3
    """Entropy bonus coefficient (official: 1e-3)."""
    aggregation: Aggregation = "token_mean"
    """``token_mean`` (official), ``seq_mean`` (GRPO paper) or ``dapo`` (global token mean over the optimizer step)."""
    engine_is_cap: float | None = None
    """Truncated importance sampling for rollouts sampled by the vLLM engine: each token's policy term is weighted by
    ``min(π_old / π_engine, cap)`` (TRL's ``vllm_importance_sampling_cap``; 2.0 is usual). ``None``: off (the
    official code samples and trains with the same weights)."""
    old_logprobs: Literal["trainer", "engine"] = "trainer"
    """π_old, the sampling policy's log-probs in the ratio: ``trainer`` (official) recomputes them with the rollout's
    weights, a forward pass over the phase when it feeds several optimizer steps; ``engine`` takes the vLLM server's
    sampled-token log-probs (``model.rollout.engine.kind: vllm``, no demonstrations), with no pass: exact to ~1e-6
    when the server serves the policy's float32 weights (``engine.sync: weights``, a CPU); a bf16 or 4-bit server
    differs by ``rollout/engine_logprob_gap``, which is then measured against the trainer's current log-probs."""

    def __post_init__(self) -> None:
        check_ranges(
            "model.loss",
            {
                "beta": (self.beta, self.beta >= 0, ">= 0"),
                "clip_low": (self.clip_low, 0 <= self.clip_low < 1, "in [0, 1)"),
                "clip_high": (self.clip_high, self.clip_high >= 0, ">= 0"),
                "entropy_coef": (self.entropy_coef, self.entropy_coef >= 0, ">= 0"),
            },
        )


@dataclass
class LossStats:
    """What gets logged about one micro-batch's loss (detached 0-d tensors)."""

    policy: torch.Tensor
    """The aggregated policy (clipped surrogate) term."""
    kl: torch.Tensor
    """The aggregated k3 KL to the reference (0 without reference log-probs), whether or not ``beta`` adds it."""
    entropy: torch.Tensor
    """The aggregated token entropy (0 without entropies)."""
    clip_ratio: torch.Tensor
    """The share of completion tokens where the clipped branch was taken."""


class StepGRPOLoss(nn.Module):
    """The Step-GRPO loss of one micro-batch (see the module docstring for the terms and the aggregation modes).

    Args:
        config: β, the clip range, the entropy coefficient and the aggregation (``model.loss``).
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.beta = config.beta
        self.clip_low = config.clip_low
        self.clip_high = config.clip_high
        self.entropy_coef = config.entropy_coef
        self.aggregation = config.aggregation

    def forward(
        self,
        *,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        ref_logprobs: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
        token_weights: torch.Tensor | None = None,
        step_tokens: float | None = None,
    ) -> tuple[torch.Tensor, LossStats]:
        """
        Args:
            logprobs: ``(B, C)`` log-probs of the completion tokens under the policy being trained (with grad).
            old_logprobs: ``(B, C)`` log-probs under the rollout policy (``logprobs.detach()`` when the phase is one
                optimizer step).
            advantages: ``(B,)`` one per completion, or ``(B, C)`` one per token.
            mask: ``(B, C)`` 1 on completion tokens, 0 on padding.
            ref_logprobs: ``(B, C)`` log-probs under the reference (adapter disabled); needed when ``beta > 0``.
            entropy: ``(B, C)`` token entropies of the policy (the bonus; logged).
            token_weights: ``(B, C)`` weights of each token's policy term (the engine importance-sampling
                correction, :func:`engine_importance_weights`).
            step_tokens: completion tokens in the whole optimizer step (``dapo`` only).

        Returns:
            The scalar loss, and its :class:`LossStats`.
        """
        policy_tokens, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, self.clip_low, self.clip_high)
        if token_weights is not None:
            policy_tokens = policy_tokens * token_weights
        policy = aggregate(policy_tokens, mask, self.aggregation, step_tokens)
        loss = policy
        kl = torch.zeros((), device=logprobs.device)
        if ref_logprobs is not None:
            kl = aggregate(low_var_kl(logprobs, ref_logprobs), mask, self.aggregation, step_tokens)
            if self.beta > 0:
                loss = loss + self.beta * kl
        elif self.beta > 0:
            raise ValueError("beta > 0 needs the reference log-probs")
        mean_entropy = torch.zeros((), device=logprobs.device)
        if entropy is not None:
            mean_entropy = aggregate(entropy, mask, self.aggregation, step_tokens)
            if self.entropy_coef:
                loss = loss - self.entropy_coef * mean_entropy
        clip_ratio = (clipped * mask).sum() / mask.sum().clamp(min=1)
        return loss, LossStats(policy.detach(), kl.detach(), mean_entropy.detach(), clip_ratio.detach())
