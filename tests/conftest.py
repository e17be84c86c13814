"""Shared fixtures: a real Weaviate server and a tiny real Qwen2.5-VL, both built and started by the test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


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
