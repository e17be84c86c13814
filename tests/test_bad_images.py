"""Bad image files: a decompression bomb, a truncated file, a directory and a symlink loop are skipped per row with
their reason (index corpus, evaluate questions), and ``ask --image`` names the reason in one error line."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from more_lightning import cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
GOOD = ROOT / "tests" / "fixtures" / "corpus" / "images" / "red_circle.png"
REASONS = {
    "bomb.png": "too large",
    "truncated.png": "truncated",
    "folder.png": "a directory, not a file",
    "loop.png": "a symlink loop",
    "text.png": "not an image",
}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` pixels (Pillow reads the size before any pixel)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def bad_images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.png").write_bytes(GOOD.read_bytes())
    (folder / "bomb.png").write_bytes(_png_header(20000, 20000))
    big = folder / "big.png"
    Image.new("RGB", (256, 256), "red").save(big)
    (folder / "truncated.png").write_bytes(big.read_bytes()[:300])
    big.unlink()
    (folder / "folder.png").mkdir()
    os.symlink(folder / "loop.png", folder / "loop.png")
    (folder / "text.png").write_text("not a picture")
    return folder


def test_bad_corpus_images_are_skipped_rows_with_their_reason(bad_images):
    from more_lightning.experts.corpus import read_image_captions

    captions = bad_images.parent / "captions.jsonl"
    names = ["good.png", *REASONS]
    captions.write_text("".join(json.dumps({"id": n, "file": n, "caption": f"caption {n}"}) + "\n" for n in names))
    read = read_image_captions(captions, bad_images)
    assert [r.source_id for r in read] == ["good.png"] and read.report.rows_skipped == len(REASONS)
    for bad, (name, reason) in zip(read.report.bad_rows, REASONS.items(), strict=True):
        assert bad.field == "file" and name in bad.message and reason in bad.message, bad


def test_bad_question_images_are_skipped_rows_with_their_reason(bad_images):
    from more_lightning.data.qa import QASource

    questions = bad_images.parent / "questions.jsonl"
    ids = ["good", *(name.removesuffix(".png") for name in REASONS)]
    questions.write_text("".join(json.dumps({"question": "q?", "answer": ["a"], "image_id": i}) + "\n" for i in ids))
    read = QASource(str(questions), "webqa", image_folder=str(bad_images)).read()
    assert len(read) == 1 and read[0].image.endswith("good.png")
    assert read.report.rows_skipped == len(REASONS)
    reasons = " ".join(str(bad) for bad in read.report.bad_rows)
    looked_up = ("folder.png", "loop.png")  # image ids are looked up among files: these are missing images
    assert all(reason in reasons for name, reason in REASONS.items() if name not in looked_up), reasons
    assert "no image file for 'folder'" in reasons and "no image file for 'loop'" in reasons


@pytest.mark.parametrize("name", list(REASONS))
def test_ask_with_a_bad_image_is_one_line_with_the_reason(bad_images, capsys, monkeypatch, name):
    from more_lightning.agent import ask

    monkeypatch.setattr(ask, "build_agent", lambda *_: pytest.fail("the policy was loaded"))
    path = bad_images / name
    argv = ["ask", "--config", str(ROOT / "configs" / "tiny" / "eval.yaml"), "--question", "q?", "--image", str(path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"error: --image {path}: {REASONS[name]}"), err
