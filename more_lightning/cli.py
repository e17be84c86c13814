"""The ``python -m more_lightning`` command line.

``fit``/``validate``/``test``/``predict`` are LightningCLI subcommands (jsonargparse: ``--config``, ``--print_config``,
dotted overrides). The other subcommands are plain functions whose typed signatures and docstrings make their
``--help``; each lives in its verb's module, and this file only maps names to them (no module imports it).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from more_lightning.errors import UserError

LIGHTNING_SUBCOMMANDS = {
    "fit": "Train with Step-GRPO (LightningCLI; see `fit --help`).",
    "validate": "Run the validation loop of a configured model (LightningCLI).",
    "test": "Run the test loop of a configured model (LightningCLI).",
    "predict": "Run prediction with a configured model (LightningCLI).",
}


HARMLESS_WARNINGS = {
    r"`is_gradient_checkpointing` is deprecated": "peft reads transformers' old attribute name",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated": "Lightning's own call into torch.utils._pytree",
    r"Total length of `list` across ranks is zero": "an empty validation list is allowed",
    r".*does not have many workers": "rollout batches are built in the training step by design",
    r"Precision \S+ is not supported by the model summary": "only the summary's size estimate, not training",
}
"""Warnings from our dependencies that say nothing a user can act on (the start of the message → why it is
harmless). Where we caused one, our call is fixed instead (e.g. ``parser.dump(skip_unset=...)``)."""

HARMLESS_DEPRECATIONS_FROM = {
    r"lightning\.pytorch\.cli": "jsonargparse's add_instantiator and skip_none, in LightningCLI's own calls",
}
"""Modules whose calls into a dependency's deprecated API are their authors' business, not the user's."""

HARMLESS_LOG_LINES = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",  # an optional hub kernel; CPU works
    "lightning.pytorch.utilities.rank_zero": "💡 Tip",  # advertisements for Lightning's cloud products
    "": "No pretrained weights loaded for model",  # open_clip, on the root logger; our own warning says more
}
"""Log lines of our dependencies that are dropped (logger → the start of the message)."""


class _DropLines(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def configure_output() -> None:
    """What the command line prints: one handler for every log line (Lightning's lines once, not twice), our
    dependencies' harmless warnings and per-load progress bars silenced; everything a user can act on kept."""
    import lightning  # noqa: F401 - its import adds a handler of its own, replaced below

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "more_lightning"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.handlers.clear()
        logger.propagate = True
    for name, prefix in HARMLESS_LOG_LINES.items():
        logging.getLogger(name).addFilter(_DropLines(prefix))
    with warnings.catch_warnings():  # weaviate's import turns every library's warnings on (simplefilter("default"))
        import weaviate  # noqa: F401 - imported here so that the filters it replaces are restored, ours in front
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for module in HARMLESS_DEPRECATIONS_FROM:
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a "Loading weights" bar per model load
    import transformers

    transformers.utils.logging.disable_progress_bar()


def _enable_attribute_docstrings() -> None:
    """Config-field docstrings (the string under each dataclass field) become ``--help`` text."""
    from jsonargparse import set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)


def commands() -> dict:
    """Subcommand name → the function it runs (imported here, when a command line is parsed)."""
    from more_lightning.agent.ask import ask
    from more_lightning.agent.evaluate import evaluate
    from more_lightning.agent.synthesize import synthesize
    from more_lightning.demo.run import demo_data, run_demo
    from more_lightning.experts.binary import install_weaviate
    from more_lightning.experts.connection import server
    from more_lightning.experts.indexing import index
    from more_lightning.ops.export import export
    from more_lightning.ops.sweep import sweep
    from more_lightning.policy.tiny import build_tiny_model

    return {
        "demo": run_demo,
        "demo-data": demo_data,
        "index": index,
        "evaluate": evaluate,
        "ask": ask,
        "synthesize": synthesize,
        "server": server,
        "install-weaviate": install_weaviate,
        "build-tiny-model": build_tiny_model,
        "sweep": sweep,
        "export": export,
    }


POSITIONAL_ARGUMENTS = {"sweep"}
"""Commands whose required arguments are positional (``sweep configs/sweep.yaml``, as ``wandb sweep`` takes it)."""


def build_parser():
    """The top-level parser: our own subcommands plus the LightningCLI ones (listed for ``--help``)."""
    from jsonargparse import ArgumentParser

    from more_lightning.ops.arguments import function_parser

    parser = ArgumentParser(
        prog="python -m more_lightning",
        description="Mixture-of-Retrieval-Experts training with Step-GRPO on PyTorch Lightning.",
    )
    subcommands = parser.add_subcommands(required=True, dest="command")
    for name, help_text in LIGHTNING_SUBCOMMANDS.items():
        subcommands.add_subcommand(name, ArgumentParser(), help=help_text)
    for name, function in commands().items():
        sub = function_parser(function, positional=name in POSITIONAL_ARGUMENTS)
        subcommands.add_subcommand(name, sub, help=(function.__doc__ or "").strip().splitlines()[0])
    return parser


def command_arguments(args: list[str]) -> tuple[str, dict]:
    """Parse ``[subcommand, --flags...]`` (config files included) into the subcommand and its function's arguments;
    every out-of-range value is reported at once, before anything is built."""
    from more_lightning.errors import ConfigError
    from more_lightning.ops.config_check import config_problems

    parser = build_parser()
    parsed = parser.parse_args(args)
    name = parsed.command
    if problems := config_problems(parsed[name].as_dict(), commands()[name]):
        raise ConfigError(problems)
    parsed = parser.instantiate_classes(parsed)
    return name, {k: v for k, v in vars(parsed[name]).items() if not k.startswith("__") and k != "config"}


class ConfigFileError(UserError, ValueError):
    """A ``--config`` file that does not exist or is not valid YAML."""


def check_config_files(args: list[str]) -> None:
    """Fail with the file, line and column of a YAML syntax error in any ``--config`` file (jsonargparse would print
    its usage and ``line 3, column 15 in "<unicode string>"``)."""
    import yaml

    files = [b for a, b in zip(args, args[1:], strict=False) if a == "--config"]
    files += [a.removeprefix("--config=") for a in args if a.startswith("--config=")]
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise ConfigFileError(f"--config {name}: no such file")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigFileError(f"{where}: YAML syntax error: {problem}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m more_lightning`` and the ``more-lightning`` script: runs one command line and
    returns its exit status (never raises ``SystemExit``, so tests and notebooks can call it with ``argv``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    configure_output()
    _enable_attribute_docstrings()
    try:
        check_config_files(args)
        if args and args[0] in LIGHTNING_SUBCOMMANDS:
            from more_lightning.ops.lightning_cli import run_lightning_cli

            run_lightning_cli(None if argv is None else args)
            return 0
        name, arguments = command_arguments(args)
        result = commands()[name](**arguments)
        return int(result or 0)
    except UserError as error:  # every error a user can fix (Lightning's own become one in ops/lightning_cli.py)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # --help, --print_config and usage errors: the parser printed them, then exited
        return int(stop.code or 0)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM where a command turns it into one (server, sweep)
        print(
            "error: stopped (Ctrl-C or SIGTERM). What finished is kept; run the same command again to resume "
            "(fit: --ckpt_path <folder>/last.ckpt).",
            file=sys.stderr,
        )
        return 130
