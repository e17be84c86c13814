"""Every shipped YAML in configs/ parses into the object it configures."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from more_lightning.cli import build_parser
from more_lightning.experts.connection import WeaviateConfig
from more_lightning.ops.sweep_spec import SweepSpec

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

pytestmark = pytest.mark.integration


def _kind(path: Path) -> str:
    content = yaml.safe_load(path.read_text())
    if path.parent.name in ("weaviate", "strategies", "logging"):
        return path.parent.name
    if "method" in content and "parameters" in content:
        return "sweep"
    if "trainer" in content:
        return "fit"
    if "datasets" in content:
        return "synthesize" if "output" in content else "evaluate"
    if "experts" in content:
        return "index"
    return "other"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_config_parses(path, run_cli):
    kind = _kind(path)
    if kind == "weaviate":
        parser = ArgumentParser()
        parser.add_class_arguments(WeaviateConfig, "weaviate")
        config = parser.instantiate_classes(parser.parse_args([f"--weaviate={path}"])).weaviate
        assert config.mode == path.stem
    elif kind in ("strategies", "logging"):  # overlays on a fit config
        result = run_cli("fit", "--config", "configs/tiny/fit.yaml", "--config", str(path), "--print_config", cwd=ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
        printed = yaml.safe_load(result.stdout)["trainer"]
        expected = yaml.safe_load(path.read_text())["trainer"]
        for key in ("strategy", "logger"):
            if isinstance(expected.get(key), dict):
                assert printed[key]["class_path"] == expected[key]["class_path"]
    elif kind == "sweep":  # every parameter is checked as a fit override in test_sweep.py
        assert SweepSpec.load(path).parameters
    elif kind in ("index", "evaluate", "synthesize"):
        build_parser().parse_args([kind, "--config", str(path)])
    elif kind == "fit":
        result = run_cli("fit", "--config", str(path), "--print_config", cwd=ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
        printed = yaml.safe_load(result.stdout)
        assert {"trainer", "model", "data"} <= set(printed)
    else:
        pytest.fail(f"{path}: no test knows how to parse this config; add its kind to test_configs.py")


def test_print_config_shows_every_field(run_cli):
    result = run_cli("fit", "--config", "configs/tiny/fit.yaml", "--print_config", cwd=ROOT)
    printed = yaml.safe_load(result.stdout)
    assert set(printed["model"]["loss"]) == {
        "objective",
        "beta",
        "clip_low",
        "clip_high",
        "entropy_coef",
        "aggregation",
        "engine_is_cap",
        "old_logprobs",
    }
    assert {"model", "quantization", "dtype", "lora", "gradient_checkpointing"} <= set(printed["model"]["policy"])
    assert {"trajectories", "groups_per_batch", "ppo_epochs", "image_root"} <= set(printed["data"])


def test_config_field_docstrings_become_help(run_cli):
    result = run_cli("fit", "--help")
    assert "KL coefficient to the reference" in result.stdout
    assert "4-bit NormalFloat with double quantisation" in result.stdout


def test_a_bad_weaviate_mode_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: embeded\n")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(WeaviateConfig, "weaviate")
    with pytest.raises(Exception, match="embeded"):
        parser.parse_args([f"--weaviate={bad}"])


def test_a_malformed_fit_config_names_the_field(tmp_path, run_cli):
    bad = tmp_path / "fit.yaml"
    bad.write_text(
        (ROOT / "configs" / "tiny" / "fit.yaml")
        .read_text()
        .replace("aggregation: token_mean", "aggregation: token_meen")
    )
    result = run_cli("fit", "--config", str(bad), "--print_config")
    assert result.returncode != 0
    assert "aggregation" in result.stderr and "token_meen" in result.stderr


def _config_fields() -> dict[str, list[str]]:
    import dataclasses
    import inspect

    from more_lightning.agent.episodes import EpisodeConfig
    from more_lightning.data.datamodule import StepGRPODataModule
    from more_lightning.data.qa import QASource
    from more_lightning.engines.config import EngineConfig
    from more_lightning.experts.pool import ExpertPool
    from more_lightning.experts.table import TableExpert
    from more_lightning.experts.text import TextExpert
    from more_lightning.experts.text_image import TextImageExpert
    from more_lightning.experts.weaviate_expert import WeaviateExpert
    from more_lightning.policy.generation import SamplingConfig
    from more_lightning.policy.loading import LoraSettings, PolicyConfig
    from more_lightning.rewards.on_policy import RewardWeights
    from more_lightning.train.adapter_checkpoint import SaveAdapter
    from more_lightning.train.module import LossConfig, MoRELightningModule, OptimizerConfig
    from more_lightning.train.rollout import RolloutCallback
    from more_lightning.train.run_logging import RolloutSamplesTable
    from more_lightning.train.sft import TeacherDemonstrations as Demos
    from more_lightning.train.strategies import LoraFSDPStrategy

    fields = {}
    configs = (PolicyConfig, LoraSettings, LossConfig, OptimizerConfig, SamplingConfig, EpisodeConfig, RewardWeights)
    for cls in (*configs, EngineConfig):
        fields[cls.__name__] = [f.name for f in dataclasses.fields(cls)]
    fields["WeaviateConfig"] = [f.name for f in dataclasses.fields(WeaviateConfig)]
    fields["QASource"] = [f.name for f in dataclasses.fields(QASource)]
    classes = (MoRELightningModule, StepGRPODataModule, RolloutCallback, SaveAdapter, ExpertPool, WeaviateExpert)
    for cls in (*classes, TextExpert, TableExpert, TextImageExpert, RolloutSamplesTable, LoraFSDPStrategy, Demos):
        parameters = inspect.signature(cls.__init__).parameters.values()
        fields[cls.__name__] = [p.name for p in parameters if p.name != "self" and p.kind is not p.VAR_KEYWORD]
    return fields


def test_the_configuration_reference_names_every_field():
    """docs/configuration.md is the reference users read: a new config field must be documented there."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        f"{owner}.{name}" for owner, names in _config_fields().items() for name in names if f"`{name}`" not in text
    ]
    assert not missing, f"document these in docs/configuration.md: {missing}"
