"""A sampled completion is cut after its first stop token, or else loses only its trailing padding (the fits on the
tiny random model reach either branch only when their samples happen to)."""

from __future__ import annotations

import pytest
import torch

from more_lightning.policy.generation import trim_completion

pytestmark = pytest.mark.unit


def test_a_completion_ends_at_its_first_stop_token():
    assert trim_completion(torch.tensor([5, 6, 2, 7, 3, 0, 0]), {2, 3}, pad_id=0).tolist() == [5, 6, 2]


def test_a_completion_without_a_stop_token_loses_only_its_trailing_padding():
    assert trim_completion(torch.tensor([5, 0, 7, 0, 0]), {2}, pad_id=0).tolist() == [5, 0, 7]
    assert trim_completion(torch.tensor([0, 0]), {2}, pad_id=0).tolist() == []
