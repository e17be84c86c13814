"""The command line: subcommands listed, LightningCLI behind `fit`."""

from __future__ import annotations

import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "more_lightning", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_subcommands():
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    for name in ("fit", "validate", "test", "demo", "server", "install-weaviate", "build-tiny-model"):
        assert name in result.stdout


def test_fit_help_comes_from_lightning_cli():
    result = _run("fit", "--help")
    assert result.returncode == 0, result.stderr
    assert "--trainer" in result.stdout and "--print_config" in result.stdout and "--model" in result.stdout


def test_unknown_subcommand_is_an_error():
    result = _run("frobnicate")
    assert result.returncode != 0
    assert "frobnicate" in result.stderr
