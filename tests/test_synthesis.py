"""``synthesize``: teacher episodes against the real Weaviate experts, the official recall filter, the official JSONL
(read back and trained on), the gold-expert requirement, resume after SIGKILL, bad rows."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from more_lightning.agent.episodes import EpisodeConfig, EpisodeRunner
from more_lightning.agent.synthesize import KeepFilter, Progress, SynthesisStats, synthesize_questions
from more_lightning.data.qa import read_qa_jsonl
from more_lightning.data.trajectories import episode_from_trajectory, read_step_grpo_jsonl
from more_lightning.experts.pool import ExpertPool
from more_lightning.protocol.prompts import final_answer_prompt, routing_prompt
from more_lightning.protocol.records import RoutingGold
from tests.synthesis_worker import ScriptedTeacher, experts
from tests.test_episodes import _config_copy, local
from tests.test_training import TINY_FIT, _metrics

pytestmark = pytest.mark.weaviate
ROOT = Path(__file__).resolve().parents[1]
QA = ROOT / "tests" / "fixtures" / "corpus" / "qa.jsonl"
WORKER = ROOT / "tests" / "synthesis_worker.py"
DEMO_SAMPLE = ROOT / "tests" / "fixtures" / "synthesized" / "demo_sample.jsonl"
"""Rows ``synthesize --config configs/demo/synthesize.yaml`` kept with the demo's warm-started policy as the teacher
(its text and table questions; see the file's README)."""


@pytest.fixture(scope="module")
def pool(weaviate_server):
    with ExpertPool(experts(), local(weaviate_server)) as opened:
        yield opened


def _questions(count: int) -> list:
    return list(read_qa_jsonl(QA, "2wiki"))[:count]


def _synthesize(pool, examples, output: Path, teacher, keep: KeepFilter | None = None, attempts: int = 3):
    runner = EpisodeRunner(teacher, pool, EpisodeConfig(max_steps=2))
    return synthesize_questions(runner, examples, output, attempts, keep or KeepFilter(), 2, 0, "test")


@pytest.mark.integration
def test_episodes_that_recall_the_gold_are_kept_in_the_official_format_and_fit_trains_on_them(pool, tmp_path, run_cli):
    alien, penicillin, stockholm = _questions(3)
    golds = {e.question: e.golds[0] for e in (alien, penicillin, stockholm)}
    finals = {penicillin.question: ["1930", "1928"], stockholm.question: ["the North Sea"]}
    output = tmp_path / "synthesized.jsonl"
    state = _synthesize(pool, [alien, penicillin, stockholm], output, ScriptedTeacher(golds, finals))

    assert [(q.kept, q.attempts) for q in state.questions] == [(True, 1), (True, 2), (False, 3)]
    trajectories = read_step_grpo_jsonl(output, on_error="raise")
    assert len(trajectories) == 2
    first = trajectories[0]
    assert [s.step_type for s in first.steps] == ["ret", "ans", "ret", "ans"]
    assert first.steps[0].gold == RoutingGold(alien.question.lower(), ("text retriever",))
    assert first.steps[0].prompt.problem == routing_prompt(alien.question, [], None, pool.specs).problem
    assert "Alien is a 1979 science fiction horror film" in first.steps[1].prompt.problem, "the passages it saw"
    assert first.steps[2].gold == RoutingGold("none", ("none",)), "the teacher's stop, as the official rows have"
    assert first.steps[3].gold == ("Ridley Scott",)
    assert first.steps[3].prompt.problem.startswith(final_answer_prompt(alien.question, []).problem.split("\n")[0])
    assert episode_from_trajectory(trajectories[1]).golds == ("1928",)
    row = json.loads(output.read_text().splitlines()[0])
    assert set(row) == {"images", "steps"} and row["steps"][0]["answer"]["retriever"] == ["text retriever"]

    stats = SynthesisStats.of(state, bad_rows=0)
    assert (stats.tried, stats.kept, stats.attempts_per_kept, stats.mean_steps) == (3, 2, 1.5, 1.0)
    assert stats.kept_per_expert == {"text retriever": 2}

    fit = run_cli(
        "fit", "--config", str(TINY_FIT), "--trainer.max_steps", "1", "--data.trajectories", str(output), cwd=tmp_path
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert float(_metrics(tmp_path / "lightning_logs")[-1]["reward"]) >= 0


@pytest.mark.integration
def test_the_gold_expert_requirement_drops_episodes_routed_elsewhere(pool, tmp_path):
    examples = _questions(2)  # their rows name the text retriever
    golds = {e.question: e.golds[0] for e in examples}
    routed_to_tables = ScriptedTeacher(golds, expert="table retriever")
    plain = _synthesize(pool, examples, tmp_path / "plain.jsonl", routed_to_tables, attempts=1)
    strict = _synthesize(
        pool, examples, tmp_path / "strict.jsonl", routed_to_tables, KeepFilter(require_gold_expert=True), 1
    )
    assert [q.kept for q in plain.questions] == [True, True]
    assert [q.kept for q in strict.questions] == [False, False]
    assert (tmp_path / "strict.jsonl").read_text() == ""
    assert KeepFilter(min_f1_recall=0.5).min_f1_recall == 0.5


@pytest.mark.e2e
def test_a_run_killed_mid_way_resumes_to_the_file_of_a_clean_run_and_a_rerun_adds_nothing(weaviate_server, tmp_path):
    questions = tmp_path / "qa.jsonl"
    questions.write_text("".join(QA.read_text().splitlines(keepends=True)[:9]))
    ports = [str(weaviate_server.ports.http), str(weaviate_server.ports.grpc), str(questions)]

    def worker(output: Path, delay: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(WORKER), *ports, str(output), str(delay)], cwd=ROOT)

    clean = tmp_path / "clean.jsonl"
    assert worker(clean, 0.0).wait(timeout=300) == 0
    killed = tmp_path / "killed.jsonl"
    process = worker(killed, 0.3)
    progress = Progress.path_for(killed)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (progress.exists() and json.loads(progress.read_text())["chunks_done"]):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    done = json.loads(progress.read_text())["chunks_done"]
    assert 1 <= done < 9, "killed mid-way"
    with killed.open("a") as handle:
        handle.write('{"images": [], "steps": [{"step_ty')  # a row torn by the kill
    assert worker(killed, 0.0).wait(timeout=300) == 0
    assert killed.read_bytes() == clean.read_bytes()
    kept = len(clean.read_text().splitlines())
    assert 0 < kept < 9, "the scripted teacher misses some questions on every attempt"
    assert worker(killed, 0.0).wait(timeout=300) == 0
    assert killed.read_bytes() == clean.read_bytes(), "re-running a finished synthesis adds nothing"


@pytest.mark.timeout(1200)  # 431 s on a loaded 2-core machine
@pytest.mark.integration
def test_synthesize_cli_with_a_real_model_skips_bad_rows_with_file_and_line(weaviate_server, tmp_path, run_cli):
    questions = tmp_path / "qa.jsonl"
    lines = QA.read_text().splitlines()[:3]
    questions.write_text("\n".join([lines[0], '{"question": "no answer"}', lines[1], "not json", lines[2]]) + "\n")
    config = _config_copy("synthesize.yaml", tmp_path, weaviate_server)
    output = tmp_path / "out.jsonl"
    args = ["synthesize", "--config", str(config), "--output", str(output), "--attempts", "2"]
    args += ["--datasets", json.dumps([{"path": str(questions), "format": "2wiki"}])]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{questions}:2" in result.stdout and f"{questions}:4" in result.stdout
    assert "questions tried" in result.stdout
    stats = json.loads((output.parent / "out.jsonl.stats.json").read_text())
    assert stats["tried"] == 3 and stats["bad_rows"] == 2
    again = run_cli(*args, "--min_f1_recall", "0.5", cwd=tmp_path)
    assert again.returncode == 2 and "other settings" in again.stderr


@pytest.mark.integration
def test_rows_synthesized_on_the_demo_data_train_with_fit(tmp_path, run_cli):
    trajectories = read_step_grpo_jsonl(DEMO_SAMPLE, on_error="raise")
    assert len(trajectories) >= 3
    assert {t.steps[0].gold.experts for t in trajectories} == {("text retriever",), ("table retriever",)}
    for trajectory in trajectories:
        episode = episode_from_trajectory(trajectory)
        assert trajectory.steps[-1].gold == episode.golds and episode.question in trajectory.steps[0].prompt.problem
    fit = run_cli(
        "fit",
        "--config",
        str(TINY_FIT),
        "--trainer.max_steps",
        "1",
        "--data.trajectories",
        str(DEMO_SAMPLE),
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert float(_metrics(tmp_path / "lightning_logs")[-1]["reward"]) >= 0
