"""Readers: official Step-GRPO trajectories and the six QA formats, good rows and bad ones."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from more_lightning.data.qa import (
    QA_FORMATS,
    read_2wikimultihopqa,
    read_dynvqa,
    read_infoseek,
    read_openwikitqa,
    read_qa_jsonl,
    read_tabfact,
    read_webqa,
)
from more_lightning.data.trajectories import read_step_grpo_jsonl
from more_lightning.protocol.jsonl import BadRowError
from more_lightning.protocol.records import RoutingGold, SubStep

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures"
IMAGES = FIXTURES / "images"


# --- Step-GRPO trajectories ---------------------------------------------------------------------------------------
def test_small_step_grpo_file_in_the_official_format():
    trajectories = read_step_grpo_jsonl(FIXTURES / "step_grpo_small.jsonl", on_error="raise")
    assert len(trajectories) == 2 and trajectories.report.rows_skipped == 0
    with_image, text_only = trajectories
    assert "".join(s.step_type[0].upper() for s in with_image.steps) == "RARARAA"
    assert "".join(s.step_type[0].upper() for s in text_only.steps) == "RARAA"
    assert Path(with_image.images[0]).resolve() == (IMAGES / "red_square.png").resolve()
    first = with_image.steps[0]
    assert first.gold == RoutingGold("what colour is the shape in the image?", ("text image retriever",))
    assert first.prompt.images == with_image.images and first.prompt.messages()[1]["content"][-1] == {"type": "image"}
    assert with_image.steps[-1].gold == ("red; kyrgyzstan",)
    assert text_only.steps[1].gold == ("ridley scott",) and text_only.steps[0].prompt.images == ()


def test_official_validation_trajectories_load():
    path = FIXTURES / "official" / "grpo_dataset_valid_head.jsonl"
    # the official rows carry the authors' absolute image paths
    with pytest.raises(BadRowError, match="image file not found"):
        read_step_grpo_jsonl(path, on_error="raise")
    trajectories = read_step_grpo_jsonl(path, on_error="raise", check_images=False)
    assert len(trajectories) == 8
    assert sum(bool(t.images) for t in trajectories) == 3
    for trajectory in trajectories:
        assert trajectory.steps[0].step_type == "ret" and trajectory.steps[-1].step_type == "ans"
        assert all(isinstance(s.gold, RoutingGold) == (s.step_type == "ret") for s in trajectory.steps)


def test_official_images_are_found_by_name_under_image_root(tmp_path):
    path = FIXTURES / "official" / "grpo_dataset_valid_head.jsonl"
    names = {Path(t.images[0]).name for t in read_step_grpo_jsonl(path, check_images=False) if t.images}
    for name in names:
        (tmp_path / name).write_bytes((IMAGES / "red_square.png").read_bytes())
    trajectories = read_step_grpo_jsonl(path, on_error="raise", image_root=tmp_path)
    assert {Path(t.images[0]).parent for t in trajectories if t.images} == {tmp_path}


def test_bad_step_grpo_rows_are_skipped_and_reported(caplog):
    path = FIXTURES / "step_grpo_with_bad_rows.jsonl"
    with caplog.at_level(logging.WARNING):
        trajectories = read_step_grpo_jsonl(path)
    assert len(trajectories) == 1
    bad = {row.line: (row.field, row.message) for row in trajectories.report.bad_rows}
    assert bad[2] == ("steps[0].answer.retriever", "expected a string or a non-empty list of strings")
    assert bad[3][0] == "images[0]" and "missing.png" in bad[3][1]
    assert bad[4][0] == "steps[0].step_type"
    assert bad[5][0] == "<row>" and "invalid JSON" in bad[5][1]
    assert bad[6] == ("steps[0].problem", "1 <image> marker(s) but the row has 0 image(s)")
    assert f"{path}:2: field 'steps[0].answer.retriever'" in caplog.text
    assert "skipped 5 bad rows" in caplog.text


def test_bad_step_grpo_row_fails_when_asked():
    with pytest.raises(BadRowError) as error:
        read_step_grpo_jsonl(FIXTURES / "step_grpo_with_bad_rows.jsonl", on_error="raise")
    assert error.value.bad.line == 2 and "on_error='skip'" in str(error.value)


# --- QA formats ---------------------------------------------------------------------------------------------------
OFFICIAL_QA = {
    "2wiki": ("2wikimultihopqa_val_head.jsonl", read_2wikimultihopqa),
    "openwikitqa": ("openwikitqa_val_head.jsonl", read_openwikitqa),
    "tabfact": ("tabfact_val_head.jsonl", read_tabfact),
    "infoseek": ("infoseek_val_head.jsonl", read_infoseek),
    "dynvqa": ("dynvqa_en_head.jsonl", read_dynvqa),
    "webqa": ("webqa_val_head.jsonl", read_webqa),
}


def test_every_format_has_a_reader():
    assert set(OFFICIAL_QA) == set(QA_FORMATS)


@pytest.mark.parametrize("format", sorted(OFFICIAL_QA))
def test_official_rows_load(format):
    name, reader = OFFICIAL_QA[format]
    examples = reader(FIXTURES / "official" / name, on_error="raise")
    assert len(examples) >= 5 and all(e.dataset == format and e.golds and e.question for e in examples)
    assert len({e.id for e in examples}) == len(examples)


def test_gold_lists_as_the_metric_uses_them():
    official = FIXTURES / "official"
    assert read_2wikimultihopqa(official / "2wikimultihopqa_val_head.jsonl")[0].golds == ("Małgorzata Braunek",)
    assert read_tabfact(official / "tabfact_val_head.jsonl")[0].golds == ("yes",)
    infoseek = read_infoseek(official / "infoseek_val_head.jsonl")
    assert infoseek[0].golds == ("energy conversion", "energy transformation", "conversion")
    assert "6.75" in infoseek[2].golds and "7" in infoseek[2].golds, "the numeric range is expanded"
    dynvqa = read_dynvqa(official / "dynvqa_en_head.jsonl")
    assert dynvqa[3].golds[:3] == ("1", "一", "单个的"), "numbers in golds become strings"
    assert dynvqa[0].gold_query == "What is the name of Leonardo DiCaprio's third child?"


@pytest.mark.parametrize(
    "format, field",
    [
        ("2wiki", "answer"),
        ("openwikitqa", "answer"),
        ("tabfact", "<row>"),
        ("infoseek", "answer_eval[0].range"),
        ("dynvqa", "answer"),
        ("webqa", "image_id"),
    ],
)
def test_each_format_reports_its_bad_row(format, field):
    path = FIXTURES / "qa" / f"{format}_with_bad_row.jsonl"
    examples = read_qa_jsonl(path, format, image_folder=IMAGES)
    assert len(examples) == 2
    (bad,) = examples.report.bad_rows
    assert (bad.line, bad.field) == (2, field)
    with pytest.raises(BadRowError, match=re.escape(f":2: field '{field}'")):
        read_qa_jsonl(path, format, image_folder=IMAGES, on_error="raise")


def test_images_resolve_by_id_in_the_image_folder():
    examples = read_webqa(FIXTURES / "qa" / "webqa_with_bad_row.jsonl", image_folder=IMAGES)
    assert [Path(e.image).name for e in examples] == ["red_square.png", "blue_circle.png"]
    unchecked = read_webqa(FIXTURES / "qa" / "webqa_with_bad_row.jsonl", image_folder=IMAGES, check_images=False)
    assert len(unchecked) == 3 and unchecked[1].image is None


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown QA format 'hotpot'"):
        read_qa_jsonl(FIXTURES / "qa" / "webqa_with_bad_row.jsonl", "hotpot")


def test_a_row_naming_its_gold_expert_becomes_a_single_hop_teacher_episode(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "Who directed Alien?", "answer": "Ridley Scott", "expert": "table retriever"}\n'
        '{"question": "Where is Paris?", "answer": "France"}\n'
        '{"question": "Bad?", "answer": "x", "expert": 3}\n'
    )
    result = read_qa_jsonl(path, "2wiki")
    assert result.report.rows_skipped == 1 and "expert" in str(result.report.bad_rows[0])
    routed, plain = (example.to_episode() for example in result)
    assert routed.teacher == [SubStep("Who directed Alien?", "Ridley Scott", ("table retriever",))]
    assert plain.teacher is None
