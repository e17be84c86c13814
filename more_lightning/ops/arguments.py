"""A typed function as a command: its parser (``--config`` files, dotted overrides, ``--help`` from its docstring) and
its arguments parsed from a command line. The CLI builds every subcommand this way; the demo reads its configs so."""

from __future__ import annotations

from collections.abc import Callable


def function_parser(function: Callable, positional: bool = False):
    """A jsonargparse parser for ``function``'s typed signature, with ``--config``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(description=function.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file with this command's arguments.")
    parser.add_function_arguments(function, as_positional=positional)
    return parser


def function_arguments(function: Callable, args: list[str]) -> dict:
    """``function``'s keyword arguments parsed from ``args`` (config files included), classes instantiated."""
    parser = function_parser(function)
    parsed = parser.instantiate_classes(parser.parse_args(args))
    return {k: v for k, v in vars(parsed).items() if not k.startswith("__") and k != "config"}
