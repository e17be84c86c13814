"""The warm-start stage before Step-GRPO: supervised fine-tuning on the teacher's steps.

``TeacherDemonstrations`` takes the place of the rollout callback (``model.rollout``) and feeds the same data module
and LightningModule: each phase takes the data module's next teacher steps (the official Step-GRPO JSONL, routing
and answer steps alike) and makes each a one-completion group — the step prompt, and the teacher's step written as a
policy output (``protocol/demonstrations.py``) ended by the stop token. With ``model.loss.objective: sft`` the module
minimises the mean negative log-likelihood of those completion tokens; prompt tokens never count. The adapter it
saves is what Step-GRPO then continues (``model.policy.adapter``).

Why: a small base policy never writes the protocol's tags, so its first Step-GRPO groups carry no reward variance and
no signal; a few hundred teacher steps give it the format and the teacher's routing decisions first.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from more_lightning.data.buffer import TrainingGroup
from more_lightning.data.datamodule import StepGRPODataModule
from more_lightning.data.trajectories import TeacherStep, teacher_demonstration
from more_lightning.errors import SettingError, check_ranges
from more_lightning.policy.generation import demonstration_tokens, encode_prompts, split_prompt_inputs
from more_lightning.protocol.records import RoutingGold
from more_lightning.train.rollout_phase import Policy, RolloutPhase


def supervised_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the completion tokens (``mask``) of a micro-batch: every token weighs the
    same, as ``token_mean`` does in the Step-GRPO loss; prompt and padding positions are outside ``mask``."""
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)


def demonstration_group(step: TeacherStep, prompt_inputs: dict, tokens: torch.Tensor, text: str) -> TrainingGroup:
    """A one-completion group holding the teacher's step (reward and advantage 1: the objective ignores both)."""
    one = torch.ones(1)
    experts = [step.gold.experts] if isinstance(step.gold, RoutingGold) else [()]
    return TrainingGroup(step.prompt, prompt_inputs, [tokens], [text], one, one.clone(), experts=experts)


class TeacherDemonstrations(pl.Callback):
    """The warm start's phases (:meth:`run`): the teacher's steps as one-completion groups to imitate.

    Args:
        steps_per_phase: teacher steps per phase; the training step cuts a phase into micro-batches of
            ``data.groups_per_batch`` (one optimizer step each, or ``accumulate_grad_batches`` of them).
    """

    def __init__(self, steps_per_phase: int = 16) -> None:
        check_ranges("model.rollout.init_args", {"steps_per_phase": (steps_per_phase, steps_per_phase >= 1, ">= 1")})
        self.steps_per_phase = steps_per_phase

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if not isinstance(datamodule, StepGRPODataModule):
            raise SettingError("TeacherDemonstrations needs a StepGRPODataModule (trainer.fit(model, datamodule=...))")
        if datamodule.trajectories_path is None:
            raise SettingError("the supervised warm start trains on teacher steps: set data.trajectories")

    def run(
        self,
        policy: Policy,
        data: StepGRPODataModule,
        phase: int,
        accumulate: int = 1,
        reference: bool = False,
        recompute_old: bool = True,
    ) -> RolloutPhase:
        """One phase: ``data``'s next teacher steps, tokenised with their demonstrations (nothing is sampled, so
        ``phase``, ``accumulate``, ``reference`` and ``recompute_old`` change nothing)."""
        steps = data.next_steps(self.steps_per_phase)
        prompts = [s.prompt for s in steps]
        inputs = split_prompt_inputs(encode_prompts(policy.processor, prompts), prompts)
        groups = []
        for step, prompt_inputs in zip(steps, inputs, strict=True):
            text = teacher_demonstration(step)
            tokens = demonstration_tokens(policy.model, policy.processor, text)
            groups.append(demonstration_group(step, prompt_inputs, tokens, text))
        return RolloutPhase(groups)


def objective_problem(objective: str, rollout: type) -> tuple[str, str, str] | None:
    """The ``(field, value, expected)`` problem when ``model.loss.objective`` does not pair with the rollout's class
    (``sft`` with :class:`TeacherDemonstrations`, ``step_grpo`` with a ``RolloutCallback``), else ``None``."""
    if (objective == "sft") == issubclass(rollout, TeacherDemonstrations):
        return None
    fits = "step_grpo" if objective == "sft" else "sft"
    return (
        "model.loss.objective",
        objective,
        f"{fits} to match model.rollout ({rollout.__name__}): the warm start pairs objective sft with "
        "more_lightning.train.sft.TeacherDemonstrations, Step-GRPO pairs step_grpo with a RolloutCallback",
    )
