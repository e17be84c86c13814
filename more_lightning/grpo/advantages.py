"""Group-relative advantages: each step prompt's n samples form one group.

``A_i = (r_i − mean(r)) / (std(r) + 1e-6)`` with the unbiased std, broadcast to every token of sample i. A group of
one sample has no baseline and gets advantage 0; a group whose rewards are all equal gets 0 too (and contributes no
policy gradient — ``frac_reward_zero_std`` reports how often that happens).
"""

from __future__ import annotations

import torch

EPSILON = 1e-6


def group_advantages(rewards: torch.Tensor, epsilon: float = EPSILON) -> torch.Tensor:
    """Advantages of one group's rewards ``(n,)``."""
    rewards = rewards.float()
    if rewards.numel() < 2:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean()) / (rewards.std(unbiased=True) + epsilon)


def has_zero_std(rewards: torch.Tensor) -> bool:
    """Whether a group's rewards are all equal (no learning signal)."""
    return rewards.numel() < 2 or bool((rewards == rewards[0]).all())
