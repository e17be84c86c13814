"""``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI over ``MoRELightningModule`` and
``StepGRPODataModule``, with a readable error for a checkpoint that cannot be resumed from."""

from __future__ import annotations

from more_lightning.errors import UserError


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


def longest_completion(rollout) -> int:
    """The rollout's ``sampling.max_new_tokens`` from its parsed ``class_path``/``init_args`` (0 when it samples
    nothing: the warm start's teacher steps are measured with the prompt)."""
    init_args = getattr(rollout, "init_args", None)
    sampling = getattr(init_args, "sampling", None) if init_args is not None else None
    return int(getattr(sampling, "max_new_tokens", 0) or 0) if sampling is not None else 0


def run_lightning_cli(args: list[str] | None):
    """Hand the arguments to LightningCLI: ``MoRELightningModule`` + ``StepGRPODataModule`` (subclasses allowed)."""
    from lightning.pytorch.cli import LightningCLI

    from more_lightning.data.datamodule import StepGRPODataModule
    from more_lightning.errors import ConfigError
    from more_lightning.ops.config_check import config_problems
    from more_lightning.ops.trial_report import ReportToOptunaTrial
    from more_lightning.train.module import MoRELightningModule
    from more_lightning.train.resume import check_resume_settings
    from more_lightning.train.rollout import RolloutCallback
    from more_lightning.train.run_logging import SaveResolvedConfig

    class MoRELightningCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:  # the data is measured with the policy's tokenizer
            parser.link_arguments("model.policy.model", "data.tokenizer")
            parser.link_arguments("model.rollout", "data.completion_tokens", compute_fn=longest_completion)

        def before_instantiate_classes(self) -> None:  # every out-of-range value at once, before anything loads
            subcommand = self.config.get("subcommand")
            config = self.config[subcommand] if subcommand else self.config
            problems = []
            for key, owner in (("model", MoRELightningModule), ("data", StepGRPODataModule)):
                values = config.get(key)
                values = values.as_dict() if hasattr(values, "as_dict") else values
                if values:
                    problems += config_problems(values, owner, key, (RolloutCallback, StepGRPODataModule))
            if problems:
                raise ConfigError(problems)

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

    reporter = ReportToOptunaTrial.from_environment()  # a trial of `sweep`: report the swept metric to the study
    return MoRELightningCLI(
        MoRELightningModule,
        StepGRPODataModule,
        args=args,
        save_config_callback=SaveResolvedConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [reporter]} if reporter else None,
    )
