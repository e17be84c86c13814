"""The command line: subcommands listed, LightningCLI behind `fit`."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_help_lists_the_subcommands(run_cli):
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in ("fit", "validate", "test", "demo", "server", "install-weaviate", "build-tiny-model"):
        assert name in result.stdout


def test_fit_help_comes_from_lightning_cli(run_cli):
    result = run_cli("fit", "--help")
    assert result.returncode == 0, result.stderr
    assert "--trainer" in result.stdout and "--print_config" in result.stdout and "--model" in result.stdout


def test_unknown_subcommand_is_an_error(run_cli):
    result = run_cli("frobnicate")
    assert result.returncode != 0
    assert "frobnicate" in result.stderr
