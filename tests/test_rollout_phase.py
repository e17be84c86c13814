"""A rollout phase on the tiny Qwen2.5-VL: called on its own it returns groups and statistics; in training, every
phase samples with the weights of the optimizer step that uses it."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from more_lightning.data.datamodule import StepGRPODataModule
from more_lightning.policy.generation import SamplingConfig, tokenizer_of
from more_lightning.policy.loading import LoraSettings, PolicyConfig, load_policy
from more_lightning.policy.shared_prompt import group_token_stats
from more_lightning.train.rollout import RolloutCallback
from more_lightning.train.rollout_phase import Policy
from tests.test_training import LetterScorer, make_module, make_trainer, short_trajectories

pytestmark = pytest.mark.integration


def test_a_phase_returns_its_groups_and_stats_given_only_the_policy_and_the_data(tiny_vl_path, tmp_path):
    model, processor = load_policy(PolicyConfig(model=str(tiny_vl_path), dtype="float32", lora=LoraSettings(r=4)))
    model.train()
    data = StepGRPODataModule(str(short_trajectories(tmp_path / "t.jsonl")), groups_per_batch=2, ppo_epochs=2)
    data.setup("fit")
    rollout = RolloutCallback(
        group_size=3, groups_per_rollout=2, sampling=SamplingConfig(max_new_tokens=5), scorer=LetterScorer()
    )
    phase = rollout.run(Policy(model, processor), data, phase=0, reference=True)
    assert model.training, "the phase puts the policy back in training mode"
    assert len(phase.groups) == 2 and all(g.size == 3 for g in phase.groups)
    assert {"generation", "scoring", "logprobs", "total"} <= set(phase.stats.timings)
    assert phase.stats.dropped == 0 and phase.stats.routing_samples is None
    for group in phase.groups:  # two passes over the phase: the old log-probs are kept, and beta > 0's reference
        width = max(len(c) for c in group.completions)
        assert group.old_logprobs.shape == group.ref_logprobs.shape == (3, width)
        assert torch.isclose(group.advantages.sum(), torch.tensor(0.0), atol=1e-5)
    one_pass = StepGRPODataModule(str(short_trajectories(tmp_path / "t.jsonl")), groups_per_batch=2)
    one_pass.setup("fit")
    (group, *_) = rollout.run(Policy(model, processor), one_pass, phase=1).groups
    assert group.old_logprobs is None and group.ref_logprobs is None, "one optimizer step per phase needs neither"


class CheckOldLogprobs(pl.Callback):
    """Before each backward pass: the current weights' log-probs of the phase's completions against the old
    log-probs the rollout stored. A phase sampled in this step must match them; a later micro-batch of the same
    phase, after an optimizer step, must not (else this check could not see a stale phase)."""

    def __init__(self) -> None:
        self.phase = 0
        self.fresh: list[float] = []
        self.later: list[float] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        groups = pl_module.buffer.groups
        pad = tokenizer_of(pl_module.processor).pad_token_id
        pl_module.model.eval()
        with torch.no_grad():
            now, _, mask = group_token_stats(
                pl_module.model, [g.prompt_inputs for g in groups], [g.completions for g in groups], pad, True
            )
        pl_module.model.train()
        width = now.shape[1]
        old = torch.cat([torch.nn.functional.pad(g.old_logprobs, (0, width - g.old_logprobs.shape[1])) for g in groups])
        gap = float(((now - old).abs() * mask).max())
        new_phase = pl_module.buffer.phases != self.phase
        self.phase = pl_module.buffer.phases
        (self.fresh if new_phase else self.later).append(gap)


def test_every_phase_samples_with_the_weights_of_the_step_that_uses_it(tiny_vl_path, tmp_path):
    pl.seed_everything(0)
    rollout = RolloutCallback(
        group_size=3, groups_per_rollout=2, sampling=SamplingConfig(max_new_tokens=5), scorer=LetterScorer()
    )
    data = StepGRPODataModule(str(short_trajectories(tmp_path / "t.jsonl")), groups_per_batch=2, ppo_epochs=2)
    check = CheckOldLogprobs()
    module = make_module(str(tiny_vl_path), lr=1e-2)
    make_trainer(4, [rollout, check]).fit(module, datamodule=data)
    assert len(check.fresh) == len(check.later) == 2
    assert max(check.fresh) < 1e-4, check.fresh
    assert min(check.later) > 1e-3, check.later
