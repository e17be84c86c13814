"""Every shipped YAML in configs/ parses into the object it configures."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

from more_lightning.experts.connection import WeaviateConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "weaviate").glob("*.yaml")), ids=lambda p: p.name)
def test_weaviate_configs_parse(path):
    parser = ArgumentParser()
    parser.add_class_arguments(WeaviateConfig, "weaviate")
    parsed = parser.parse_args([f"--weaviate={path}"])
    config = parser.instantiate_classes(parsed).weaviate
    assert isinstance(config, WeaviateConfig)
    assert config.mode == path.stem


def test_a_bad_mode_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: embeded\n")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(WeaviateConfig, "weaviate")
    with pytest.raises(Exception, match="embeded"):
        parser.parse_args([f"--weaviate={bad}"])
