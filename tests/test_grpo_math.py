"""Step-GRPO math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from more_lightning.grpo.advantages import group_advantages, has_zero_std
from more_lightning.grpo.loss import LossConfig, StepGRPOLoss, aggregate, clipped_surrogate, low_var_kl

pytestmark = pytest.mark.unit


def test_group_advantages_use_the_unbiased_std():
    # mean 0.5; unbiased std sqrt((4 * 0.25) / 3) = 0.57735
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert advantages.tolist() == pytest.approx(
        [0.5 / math.sqrt(1 / 3)] * 1 + [-0.5 / math.sqrt(1 / 3)] * 2 + [0.5 / math.sqrt(1 / 3)], rel=1e-5
    )
    assert group_advantages(torch.tensor([3.0, 1.0])).tolist() == pytest.approx(
        [1 / math.sqrt(2), -1 / math.sqrt(2)], rel=1e-5
    )


def test_a_group_of_one_and_a_zero_std_group_get_zero_advantage():
    assert group_advantages(torch.tensor([0.7])).tolist() == [0.0]
    assert group_advantages(torch.tensor([0.4, 0.4, 0.4])).tolist() == [0.0, 0.0, 0.0]
    assert has_zero_std(torch.tensor([0.4, 0.4])) and not has_zero_std(torch.tensor([0.4, 0.5]))


def test_clipped_surrogate_both_sides():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    loss, clipped = clipped_surrogate(torch.log(ratio), torch.zeros_like(ratio), advantages)
    # A>0, ratio 1.5 -> capped at 1.2; A<0, ratio 0.5 -> 0.8·(−1) = −0.8 is the min; 1.1 inside; 0.7 with A>0
    # is below the clip range but min(0.7, 0.8) keeps the unclipped 0.7 (pessimistic bound)
    assert loss[0].tolist() == pytest.approx([-1.2, 0.8, -1.1, -0.7], rel=1e-5)
    assert clipped[0].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_asymmetric_clip_higher():
    ratio = torch.tensor([[1.25]])
    loss, clipped = clipped_surrogate(torch.log(ratio), torch.zeros(1, 1), torch.tensor([1.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.25) and clipped.item() == 0.0
    loss, _ = clipped_surrogate(torch.log(ratio), torch.zeros(1, 1), torch.tensor([1.0]), 0.2, 0.2)
    assert loss.item() == pytest.approx(-1.2)


def test_low_var_kl():
    logprobs = torch.tensor([-1.0, -3.0, -0.5])
    assert low_var_kl(logprobs, logprobs).tolist() == [0.0, 0.0, 0.0]
    # log_ratio = ref − logp = −1: e^{−1} + 1 − 1
    assert low_var_kl(torch.tensor([-1.0]), torch.tensor([-2.0])).item() == pytest.approx(math.exp(-1), rel=1e-6)
    assert low_var_kl(torch.tensor([-30.0]), torch.tensor([0.0])).item() == 10.0, "clamped"


VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_aggregation_modes():
    assert aggregate(VALUES, MASK, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(VALUES, MASK, "seq_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(VALUES, MASK, "dapo", step_tokens=8).item() == pytest.approx(10 / 8)
    with pytest.raises(ValueError, match="dapo"):
        aggregate(VALUES, MASK, "dapo")


def test_full_loss_adds_kl_only_when_beta_is_positive_and_subtracts_entropy():
    logprobs = torch.log(torch.tensor([[0.5, 0.5]]))
    reference = torch.log(torch.tensor([[0.25, 0.25]]))
    entropy = torch.tensor([[2.0, 2.0]])
    mask = torch.ones(1, 2)
    one = torch.tensor([1.0])
    base, stats = StepGRPOLoss(LossConfig(beta=0.0, entropy_coef=0.0))(
        logprobs=logprobs, old_logprobs=logprobs, advantages=one, mask=mask, ref_logprobs=reference, entropy=entropy
    )
    assert base.item() == pytest.approx(-1.0)  # ratio 1, A = 1
    kl = math.exp(math.log(0.5)) - math.log(0.5) - 1  # k3 with log_ratio = log 0.25 − log 0.5
    assert stats.kl.item() == pytest.approx(kl, rel=1e-5)
    with_kl, _ = StepGRPOLoss(LossConfig(beta=0.1, entropy_coef=0.0))(
        logprobs=logprobs, old_logprobs=logprobs, advantages=one, mask=mask, ref_logprobs=reference, entropy=entropy
    )
    assert with_kl.item() == pytest.approx(-1.0 + 0.1 * kl, rel=1e-5)
    with_entropy, _ = StepGRPOLoss(LossConfig(beta=0.0, entropy_coef=0.01))(
        logprobs=logprobs, old_logprobs=logprobs, advantages=one, mask=mask, entropy=entropy
    )
    assert with_entropy.item() == pytest.approx(-1.0 - 0.02)
    with pytest.raises(ValueError, match="reference"):
        StepGRPOLoss(LossConfig(beta=0.1))(logprobs=logprobs, old_logprobs=logprobs, advantages=one, mask=mask)


def test_the_gradient_pushes_up_positive_advantage_tokens():
    logits = torch.zeros(2, requires_grad=True)
    logprobs = torch.log_softmax(logits, -1).unsqueeze(0)  # (1, 2): token 0 and token 1
    loss, _ = StepGRPOLoss(LossConfig(beta=0.0, entropy_coef=0.0))(
        logprobs=logprobs, old_logprobs=logprobs.detach(), advantages=torch.tensor([[1.0, -1.0]]), mask=torch.ones(1, 2)
    )
    loss.backward()
    assert logits.grad[0] < 0 < logits.grad[1], "descending the loss raises token 0 and lowers token 1"
