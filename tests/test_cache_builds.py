"""Cached builds are complete or absent: staged, verified, published in one rename, repaired when found half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from more_lightning.paths import MANIFEST, CacheBuildError, build_once, is_complete


def _write_file(name: str, text: str = "x"):
    def build(folder: Path) -> None:
        (folder / name).write_text(text)

    return build


def _needs(name: str):
    def verify(folder: Path) -> None:
        if not (folder / name).is_file():
            raise FileNotFoundError(name)

    return verify


@pytest.mark.unit
def test_a_build_is_published_with_a_manifest_and_reused(tmp_path):
    target = tmp_path / "thing"
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "weights.bin").write_bytes(b"1234")

    assert build_once(target, build, _needs("weights.bin")) == target
    assert build_once(target, build, _needs("weights.bin")) == target
    assert len(calls) == 1 and calls[0] != target
    assert json.loads((target / MANIFEST).read_text())["files"] == {"weights.bin": 4}
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []


@pytest.mark.unit
def test_a_build_that_fails_verification_publishes_nothing(tmp_path):
    target = tmp_path / "thing"
    with pytest.raises(CacheBuildError, match="unusable"):
        build_once(target, _write_file("tokenizer.json"), _needs("config.json"))
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []


@pytest.mark.unit
def test_a_half_written_folder_is_rebuilt_not_trusted(tmp_path):
    target = tmp_path / "thing"
    target.mkdir()
    (target / "tokenizer.json").write_text("{}")  # what the DDP bug left: the processor's files only
    build_once(target, _write_file("config.json"), _needs("config.json"))
    assert sorted(p.name for p in target.iterdir()) == sorted(["config.json", MANIFEST])


@pytest.mark.unit
def test_a_file_truncated_after_publishing_makes_the_folder_incomplete(tmp_path):
    target = build_once(tmp_path / "thing", _write_file("weights.bin", "12345678"), _needs("weights.bin"))
    (target / "weights.bin").write_text("1234")
    assert not is_complete(target)
    build_once(target, _write_file("weights.bin", "12345678"), _needs("weights.bin"))
    assert (target / "weights.bin").read_text() == "12345678"


@pytest.mark.unit
def test_a_complete_folder_without_a_manifest_is_verified_and_adopted(tmp_path):
    target = tmp_path / "thing"
    target.mkdir()
    (target / "config.json").write_text("{}")  # built by an older version, before manifests
    build_once(target, lambda folder: pytest.fail("must not rebuild"), _needs("config.json"))
    assert is_complete(target)


@pytest.mark.integration
def test_tiny_model_repairs_a_processor_only_folder(tmp_path, monkeypatch):
    from more_lightning.policy.tiny import TINY_BUILDER_VERSION, tiny_model_path, verify_model_folder

    monkeypatch.setenv("MORE_LIGHTNING_CACHE", str(tmp_path))
    half = tmp_path / "models" / f"tiny-qwen2.5-vl-seed0-v{TINY_BUILDER_VERSION}"
    half.mkdir(parents=True)
    (half / "tokenizer_config.json").write_text("{}")
    path = tiny_model_path()
    assert path == half and is_complete(path) and (path / "config.json").is_file()
    verify_model_folder(path)


@pytest.mark.e2e
def test_two_processes_building_at_once_both_get_a_complete_folder(tmp_path):
    code = "from more_lightning.policy.model_source import resolve_model_name as r; print(r('tiny:qwen2.5-vl'))"
    env = dict(os.environ, MORE_LIGHTNING_CACHE=str(tmp_path), OMP_NUM_THREADS="1")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in processes]
    assert [rc for _, _, rc in results] == [0, 0], [err[-2000:] for _, err, _ in results]
    paths = {out.strip().splitlines()[-1] for out, _, _ in results}
    assert len(paths) == 1
    assert is_complete(Path(paths.pop()))
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if "staging" in p.name]
    assert leftovers == []
