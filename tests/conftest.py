"""Shared fixtures: a real Weaviate server, a tiny real Qwen2.5-VL and one fitted tiny run, all built by the test
session; the command line run in-process; and the check that every test names its tier."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import command_context, run_in_process

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "e2e")

FITTED_RUN_SETTINGS = [
    "--config", str(ROOT / "configs" / "tiny" / "fit.yaml"),
    "--data.trajectories", str(ROOT / "tests" / "fixtures" / "step_grpo_small.jsonl"),
    "--model.policy.quantization", "none", "--model.policy.dtype", "float32",
    "--model.optimizer.lr", "0.05",  # large enough that the adapter visibly changes the logits
]  # fmt: skip
"""The model and data settings of ``fitted_tiny_run``: a resume of it gives them again."""
FITTED_RUN_STEPS = 3


def pytest_configure(config):
    """In a parallel run (``make test``: ``pytest -n 2``) each worker's torch gets its share of the cores: two workers
    with a thread per core each would oversubscribe them (2 cores: a thread each, also in the subprocesses a test
    starts; a spawned vLLM server sets its own)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)  # the commands a test runs as subprocesses (the demo, fits)


def pytest_collection_modifyitems(config, items):
    """Every test names its tier (tests/README.md): exactly one of unit, integration, e2e. The ``slow`` tests go
    first, so that a parallel run does not end with one worker busy on a long test while the others wait."""
    wrong = [item.nodeid for item in items if len({m.name for m in item.iter_markers() if m.name in TIERS}) != 1]
    if wrong:
        raise pytest.UsageError(f"mark each test with exactly one tier of {', '.join(TIERS)}: {', '.join(wrong)}")
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def weaviate_server(tmp_path_factory):
    """One embedded Weaviate server for the whole session, on its own data folder and free ports."""
    from more_lightning.experts.server import WeaviateServer

    with WeaviateServer(tmp_path_factory.mktemp("weaviate-session")) as server:
        yield server


@pytest.fixture
def weaviate_client(weaviate_server):
    client = weaviate_server.connect()
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_vl_path(tmp_path_factory):
    """A tiny Qwen2.5-VL saved with save_pretrained, loaded by path like a hub checkpoint."""
    from more_lightning.policy.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), seed=0)


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*args, cwd=None)``: ``python -m more_lightning <args>`` run in this process, as a
    :class:`~tests.helpers.CommandResult` (exit status, stdout, stderr)."""
    return lambda *args, cwd=None: run_in_process(capsys, list(args), cwd)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def fitted_tiny_run(tmp_path_factory):
    """The folder of one ``fit`` of the tiny config (``FITTED_RUN_SETTINGS``, 3 steps), shared by the export, resume
    and logging tests: ``checkpoints/tiny/last.ckpt``, the adapter in ``checkpoints/tiny-adapter/`` and a W&B offline
    run with a rollout table every step in ``wandb_logs/``. Read-only: a test that writes copies it
    (``fitted_tiny_copy``); the session ends with an error if one did not."""
    import wandb

    from more_lightning import cli

    folder = tmp_path_factory.mktemp("fitted-tiny-run")
    logging = ["--config", str(ROOT / "configs" / "logging" / "wandb.yaml")]
    logging += ["--trainer.callbacks+=more_lightning.train.run_logging.RolloutSamplesTable"]
    logging += ["--trainer.callbacks.every_n_steps=1"]
    with pytest.MonkeyPatch.context() as patch, command_context(folder):
        patch.setenv("WANDB_SILENT", "true")
        patch.setenv("WANDB_CONSOLE", "off")  # wandb would wrap this process's stdout and stderr
        status = cli.main(["fit", *FITTED_RUN_SETTINGS, *logging, "--trainer.max_steps", str(FITTED_RUN_STEPS)])
        wandb.finish()
        wandb.teardown()  # the run's files are complete once its service stops, as at the exit of a subprocess
    assert status == 0, "the shared tiny fit failed: see its output above"
    files = _files(folder)
    yield folder
    assert _files(folder) == files, "a test changed fitted_tiny_run: copy it first (the fitted_tiny_copy fixture)"


@pytest.fixture
def fitted_tiny_copy(fitted_tiny_run, tmp_path) -> Path:
    """A writable copy of ``fitted_tiny_run``."""
    return Path(shutil.copytree(fitted_tiny_run, tmp_path / "fitted", symlinks=True))
