"""``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI over ``MoRELightningModule`` and
``StepGRPODataModule``. The config is checked when it is read, before anything is built: every out-of-range value
(``config_check.py``) and every pair of settings that do not fit together (:func:`fit_problems`) in one
``ConfigError``; a checkpoint that cannot be resumed from is named; Lightning's own config errors become a
``SettingError``, so the command line prints all of them as one ``error:`` line."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from more_lightning.errors import SettingError, UserError


class CheckpointUnreadable(UserError, ValueError):
    """``--ckpt_path`` names no file, or a file that is not a readable Lightning checkpoint."""


def check_checkpoint(path: str) -> dict:
    """Fail early, naming the file, when ``--ckpt_path`` is not a checkpoint torch can read (truncated, wrong file);
    return it."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointUnreadable(f"--ckpt_path {path}: no such file") from None
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointUnreadable(
            f"--ckpt_path {path} is not a readable checkpoint ({type(error).__name__}: {str(error)[:200]}). "
            "It may be truncated by an interrupted save: pick another file in the checkpoint folder "
            "(last.ckpt or a step*.ckpt) or start without --ckpt_path."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointUnreadable(f"--ckpt_path {path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def fit_problems(config: Mapping) -> list[tuple[str, object, str]]:
    """Settings of different sections that do not fit together, from the parsed ``model`` / ``data`` / ``trainer``
    values: the loss objective and the rollout, the rollout and the data it needs, the schedule and the trainer."""
    from more_lightning.ops.config_check import class_from_path
    from more_lightning.train.rollout import RolloutCallback
    from more_lightning.train.sft import TeacherDemonstrations, objective_problem

    model, data, trainer = (dict(config.get(key) or {}) for key in ("model", "data", "trainer"))
    rollout = model.get("rollout") or {}
    rollout_class = class_from_path(rollout["class_path"]) if rollout.get("class_path") else type(None)
    mode = (rollout.get("init_args") or {}).get("mode", "teacher_forced")
    teacher_forced = issubclass(rollout_class, RolloutCallback) and mode == "teacher_forced"
    problems = []
    if problem := objective_problem((model.get("loss") or {}).get("objective", "step_grpo"), rollout_class):
        problems.append(problem)
    if data.get("trajectories") is None and (teacher_forced or issubclass(rollout_class, TeacherDemonstrations)):
        needs = "model.rollout.init_args.mode teacher_forced" if teacher_forced else "the warm start"
        problems.append(("data.trajectories", None, f"a teacher-trajectory file for {needs}"))
    if data.get("experts") is None and issubclass(rollout_class, RolloutCallback) and mode == "on_policy":
        problems.append(("data.experts", None, "an ExpertPool: on-policy rollouts search the experts"))
    elif data.get("experts") is None and data.get("val_questions"):
        problems.append(("data.experts", None, "an ExpertPool: validation episodes (data.val_questions) search it"))
    schedule = (model.get("optimizer") or {}).get("schedule", "constant")
    max_steps = trainer.get("max_steps")
    if schedule not in ("constant", "inverse_sqrt") and not (max_steps and max_steps > 0):
        problems.append(("trainer.max_steps", max_steps, f"> 0: model.optimizer.schedule {schedule!r} ends there"))
    return problems


def longest_completion(rollout) -> int:
    """The rollout's ``sampling.max_new_tokens`` from its parsed ``class_path``/``init_args`` (0 when it samples
    nothing: the warm start's teacher steps are measured with the prompt)."""
    init_args = getattr(rollout, "init_args", None)
    sampling = getattr(init_args, "sampling", None) if init_args is not None else None
    return int(getattr(sampling, "max_new_tokens", 0) or 0) if sampling is not None else 0


def run_lightning_cli(args: list[str] | None):
    """Hand the arguments to LightningCLI: ``MoRELightningModule`` + ``StepGRPODataModule`` (subclasses allowed).
    ``args`` (a call from Python, e.g. the demo's) replaces the command line's; ``None`` reads ``sys.argv``."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ProgressBar
    from lightning.pytorch.cli import LightningCLI

    from more_lightning.data.datamodule import StepGRPODataModule
    from more_lightning.errors import ConfigError
    from more_lightning.ops.config_check import config_problems
    from more_lightning.ops.trial_report import ReportToOptunaTrial
    from more_lightning.train.module import MoRELightningModule
    from more_lightning.train.progress import StepProgress
    from more_lightning.train.resume import check_resume_settings
    from more_lightning.train.rollout import RolloutCallback
    from more_lightning.train.run_logging import SaveResolvedConfig
    from more_lightning.train.sft import TeacherDemonstrations

    class MoRELightningCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:  # the data is measured with the policy's tokenizer
            parser.link_arguments("model.policy.model", "data.tokenizer")
            parser.link_arguments("model.rollout", "data.completion_tokens", compute_fn=longest_completion)

        def before_instantiate_classes(self) -> None:  # every problem at once, before anything loads
            subcommand = self.config.get("subcommand")
            config = self.config[subcommand] if subcommand else self.config
            config = config.as_dict() if hasattr(config, "as_dict") else dict(config)
            checked = (MoRELightningModule, RolloutCallback, TeacherDemonstrations, StepGRPODataModule)
            problems = []
            for key, owner in (("model", MoRELightningModule), ("data", StepGRPODataModule)):
                if values := config.get(key):
                    problems += config_problems(values, owner, key, checked)
            if subcommand in (None, "fit"):
                problems += fit_problems(config)
            if problems:
                raise ConfigError(problems)

        def parse_arguments(self, parser, args) -> None:
            if args is None:
                return super().parse_arguments(parser, args)
            command_line = sys.argv  # a call from Python (the demo's fits): args are the whole command line
            sys.argv = command_line[:1]
            try:
                super().parse_arguments(parser, args)
            finally:
                sys.argv = command_line

        def _parse_ckpt_path(self) -> None:  # LightningCLI reads the checkpoint here, first
            subcommand = self.config.get("subcommand")
            ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if ckpt_path not in (None, "last", "best", "hpc", "registry"):
                checkpoint = check_checkpoint(str(ckpt_path))
                given = self.config[subcommand]
                check_resume_settings(
                    str(ckpt_path), checkpoint, given.as_dict() if hasattr(given, "as_dict") else given
                )
            super()._parse_ckpt_path()

        def _instantiate_trainer(self, config: dict, callbacks: list):  # our step-counting bar, unless one is set
            chosen = [*callbacks]
            for given in (config.get("callbacks"), self.trainer_defaults.get("callbacks")):
                chosen += given if isinstance(given, list) else [given] if given else []
            if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in chosen):
                callbacks = [*callbacks, StepProgress()]
            return super()._instantiate_trainer(config, callbacks)

    reporter = ReportToOptunaTrial.from_environment()  # a trial of `sweep`: report the swept metric to the study
    try:
        return MoRELightningCLI(
            MoRELightningModule,
            StepGRPODataModule,
            args=args,
            save_config_callback=SaveResolvedConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [reporter]} if reporter else None,
        )
    except MisconfigurationException as error:  # Lightning's word for a trainer setting it cannot use
        raise SettingError(str(error)) from None
