"""The demo: data built from packaged sources, parsed back by our own readers, and the demo fit config end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from more_lightning.data.qa import read_qa_jsonl
from more_lightning.data.trajectories import read_step_grpo_jsonl
from more_lightning.demo.data import _flat_steps, _package_file, build_demo_data
from more_lightning.demo.teacher import IMAGE, TABLE, TEXT
from more_lightning.experts.corpus import read_image_captions, read_passages, read_tables
from more_lightning.protocol.records import RoutingGold

ROOT = Path(__file__).resolve().parents[1]
TEXT_FILES = (
    "train_questions.jsonl",
    "val_text_questions.jsonl",
    "val_table_questions.jsonl",
    "val_two_hop_questions.jsonl",
    "val_heldout_phrasing_questions.jsonl",
)
IMAGE_FILES = (
    "train_image_questions.jsonl",
    "val_image_questions.jsonl",
    "val_two_hop_image_questions.jsonl",
    "val_heldout_phrasing_image_questions.jsonl",
)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-data")
    return build_demo_data(folder, rdatasets_limit=12, directors=12, easy_vqa_count=12)


@pytest.mark.integration
def test_every_file_parses_back_with_our_readers(demo_data):
    folder = demo_data.folder
    assert len(read_passages(folder / "passages.jsonl", on_error="raise")) > 10_000
    assert len(read_tables(folder / "tables.jsonl", on_error="raise")) >= 12
    assert len(read_image_captions(folder / "image_captions.jsonl", folder / "images", on_error="raise")) >= 12
    trajectories = read_step_grpo_jsonl(folder / "train_trajectories.jsonl", on_error="raise")
    assert len(trajectories) > 100 and all(t.steps[0].step_type == "ret" for t in trajectories)
    assert {s.gold.experts for t in trajectories for s in t.steps if isinstance(s.gold, RoutingGold)} == {
        (TEXT,),
        (TABLE,),
        (IMAGE,),
        ("none",),
    }, "the warm start sees teacher steps to every expert, and the stop step"
    for name in TEXT_FILES:
        assert read_qa_jsonl(folder / name, "2wiki", on_error="raise")
    for name in IMAGE_FILES:
        examples = read_qa_jsonl(folder / name, "webqa", folder / "images", on_error="raise")
        assert examples and all(Path(e.image).is_file() for e in examples)
    two_hop = [
        e.to_episode()
        for name in ("val_two_hop_questions.jsonl", "val_two_hop_image_questions.jsonl")
        for e in read_qa_jsonl(folder / name, "webqa" if "image" in name else "2wiki", folder / "images")
    ]
    assert {tuple(s.experts[0] for s in e.teacher) for e in two_hop} == {(TABLE, TEXT), (IMAGE, TEXT)}
    routes = [[s.gold.experts for s in t.steps if isinstance(s.gold, RoutingGold)] for t in trajectories]
    assert [(TABLE,), (TEXT,), ("none",)] in routes, "a table → text trajectory: a hop per expert, then the stop step"


@pytest.mark.integration
def test_questions_carry_their_gold_expert_and_phrasing(demo_data):
    folder = demo_data.folder

    def rows(*names: str) -> list[dict]:
        return [json.loads(line) for name in names for line in (folder / name).read_text().splitlines()]

    assert {row["expert"] for row in rows(*TEXT_FILES, *IMAGE_FILES)} == {TEXT, TABLE, IMAGE}
    trained = {r["template"] for r in rows("train_questions.jsonl", "train_image_questions.jsonl") if "template" in r}
    held_out = {
        r["template"]
        for r in rows("val_heldout_phrasing_questions.jsonl", "val_heldout_phrasing_image_questions.jsonl")
    }
    assert not trained & held_out, "a held-out phrasing is never trained on"
    assert {t.split("/")[0] for t in held_out} >= {
        "film-director",
        "dataset-topic",
        "person-nationality",
        "shape-colour",
    }
    assert len({t for t in trained if t.startswith("film-director/")}) > 1, "several trained phrasings per type"
    assert demo_data.fanoutqa["dev_questions"] == 310 and demo_data.fanoutqa["sub_questions_kept"] > 100


@pytest.mark.integration
def test_fanoutqa_conversion_keeps_sub_questions_and_answers(demo_data):
    dev = json.loads(_package_file("fanoutqa", "fanoutqa/data/fanout-final-dev.json").read_text())
    trajectories = read_step_grpo_jsonl(demo_data.folder / "train_trajectories.jsonl")
    answers: dict[str, set] = {}  # sub-question → the (routing gold, sub-answer gold, answer prompt) triples kept
    for trajectory in trajectories:
        steps = list(trajectory.steps)
        for routing, answer in zip(steps, steps[1:], strict=False):
            if isinstance(routing.gold, RoutingGold):
                answers.setdefault(routing.gold.query, set()).add(
                    (routing.gold.experts, answer.gold, answer.prompt.problem)
                )
    checked = 0
    for item in dev:
        for step in _flat_steps(item):
            query = step["question"].lower()
            kept = {k for k in answers.get(query, ()) if k[0] == (TEXT,)}  # a film question may also be a table one
            if kept and isinstance(step["answer"], str):
                assert any(
                    gold == (step["answer"],)
                    and f"to the Question: {step['question']}" in problem
                    and any(f"ter-{rank}: " + step["evidence"]["title"] in problem for rank in (0, 1))
                    for _, gold, problem in kept
                )
                checked += 1
    assert checked > 50


LIBRARY_NOISE = [
    "args parameter is intended to run from within Python",  # LightningCLI, called in-process
    "add_instantiator",  # jsonargparse deprecations
    "skip_none",
    "dataloader_iter",  # Lightning's notices about our training_step
    "LeafSpec",  # torch's pytree deprecation
    "is_gradient_checkpointing",  # transformers
    "past_key_values",
    "Epoch 0/",  # Lightning's epoch bar over an endless stream
    "\r",  # tqdm or rich bars redrawn in a piped log
]
"""What a user must not see in a piped demo log: none of it asks them to act."""


def assert_quiet_log_with_progress(stdout: str, stderr: str, progress: list[str]) -> None:
    """Each of ``progress`` (the start of a progress line) is in ``stdout``; no library warning (``file.py:line:``
    from a dependency) and none of :data:`LIBRARY_NOISE` in either stream."""
    for line in progress:
        assert any(printed.startswith(line) for printed in stdout.splitlines()), line
    for noise in LIBRARY_NOISE:
        assert noise not in stdout + stderr, noise
    library_warnings = re.findall(r"^.*site-packages/(?!more_lightning/).*\.py:\d+: .*$", stderr, re.MULTILINE)
    assert not library_warnings, library_warnings


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_demo_runs_end_to_end_and_writes_its_report_and_figures(tmp_path):
    """``python -m more_lightning demo`` with one step of each stage and one question per dataset, on a corpus slice
    in the embedded server: the same code path as ``make demo``, smaller numbers. Its output is piped, as in
    ``make demo > log``: each stage prints progress lines and no library warning leaks."""
    from more_lightning.demo.data import verify_demo_data
    from more_lightning.paths import build_once

    def build(staging: Path) -> None:
        build_demo_data(staging, wiki_limit=400, rdatasets_limit=5, directors=5, easy_vqa_count=5)

    build_once(tmp_path / "data" / "demo", build, verify_demo_data)
    command = [sys.executable, "-m", "more_lightning", "demo", "--max_steps", "1", "--sft_steps", "1"]
    result = subprocess.run([*command, "--val_limit", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    output = tmp_path / "eval_outputs" / "demo"
    report = json.loads((output / "report.json").read_text())
    systems = ["untrained", "no_retrieval", f"fixed:{TEXT}", f"fixed:{IMAGE}", f"fixed:{TABLE}", "all", "gold"]
    assert list(report["systems"]) == [*systems, "trained"]
    files = [source["path"] for source in yaml.safe_load((ROOT / "configs/demo/eval.yaml").read_text())["datasets"]]
    questions = sum(min(1, len((tmp_path / name).read_text().splitlines())) for name in files)
    datasets_run = {"demo-text", "demo-tables", "demo-images", "demo-two-hop", "demo-heldout-phrasing", "all"}
    for name, datasets in report["systems"].items():
        assert set(datasets) == datasets_run, name
        assert datasets["all"]["questions"] == questions, "one question of each file"
    assert report["systems"]["gold"]["all"]["routing_accuracy"] == 100.0
    assert {"data", "sft", "step_grpo", "evaluate_untrained", "evaluate_trained", "ask", "total"} <= set(
        report["seconds"]
    )
    assert any(t["name"].startswith("trained routing accuracy") for t in report["targets"])
    assert next(t for t in report["targets"] if t["name"] == "demo wall time (min)")["measured"] > 0
    for name, datasets in report["systems"].items():
        costs = datasets["all"]
        assert costs["prompt_tokens_per_question"] > 0 and costs["seconds_per_question"] > 0, name
    assert report["systems"]["no_retrieval"]["all"]["retrievals_per_question"] == 0
    assert report["systems"]["all"]["all"]["retrievals_per_question"] > 0
    figures = ("systems_f1_recall", "systems_routing_accuracy", "systems_cost_f1_recall", "confusion_trained")
    for figure in (*figures, "training_sft"):
        assert (output / f"{figure}.png").stat().st_size > 1000, figure
    header = next((tmp_path / "lightning_logs" / "demo").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "reward/ret/mean" in header and "rollout/routing_accuracy" in header
    assert (tmp_path / "checkpoints" / "demo-adapter" / "adapter_model.safetensors").is_file()
    assert "Targets" in result.stdout and "report.json" in result.stdout
    evaluated = f"{questions}/{questions} questions"
    stages = [f"router policy: {evaluated}", "demo-sft: 1/1 steps", "demo: 1/1 steps", f"router gold: {evaluated}"]
    indexing = [f"{name} → Demo" for name in ("text retriever", "text image retriever", "table retriever")]
    assert_quiet_log_with_progress(result.stdout, result.stderr, stages + indexing)


@pytest.mark.integration
def test_the_demo_data_is_verified_before_it_is_published(demo_data, tmp_path):
    from more_lightning.demo.data import verify_demo_data

    verify_demo_data(demo_data.folder)
    half = tmp_path / "half"
    half.mkdir()
    (half / "passages.jsonl").write_text((demo_data.folder / "passages.jsonl").read_text())
    with pytest.raises(FileNotFoundError, match="missing or empty demo files"):
        verify_demo_data(half)


@pytest.mark.integration
def test_the_demo_configs_describe_the_experts_as_its_teacher_trajectories_do(demo_data):
    """The warm start trains on the trajectories' prompts; the demo's episodes must write exactly the same ones."""
    from more_lightning.demo.teacher import DEMO_EXPERTS, PROMPT_STYLE, TABLE_ROWS_PER_PASSAGE
    from more_lightning.protocol.prompts import routing_prompt

    for name in ("eval.yaml", "fit.yaml", "synthesize.yaml"):
        config = yaml.safe_load((ROOT / "configs" / "demo" / name).read_text())
        experts = config["experts"] if "experts" in config else config["data"]["experts"]["init_args"]["experts"]
        assert [e["init_args"]["guideline"] for e in experts] == [s.guideline for s in DEMO_EXPERTS], name
        (table,) = [e["init_args"] for e in experts if e["class_path"].endswith("TableExpert")]
        assert table["rows_per_passage"] == TABLE_ROWS_PER_PASSAGE, name
    episode = yaml.safe_load((ROOT / "configs" / "demo" / "eval.yaml").read_text())["episode"]
    assert episode["prompt_style"] == PROMPT_STYLE
    trajectory = read_step_grpo_jsonl(demo_data.folder / "train_trajectories.jsonl")[0]
    first = trajectory.steps[0].prompt
    question = first.problem.removeprefix("Origin question: ").split("\n")[0]
    image = trajectory.images[0] if trajectory.images else None
    assert routing_prompt(question, [], image, DEMO_EXPERTS, PROMPT_STYLE).system == first.system
