"""``evaluate`` with nothing to evaluate is an error (not F1-Recall 0.00), and a run stopped half-way keeps the traces
of the episodes it finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from more_lightning import cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TINY_EVAL = ROOT / "configs" / "tiny" / "eval.yaml"


def test_an_empty_questions_file_is_an_error_before_the_policy_loads(tmp_path, capsys, monkeypatch):
    from more_lightning.agent import evaluate

    monkeypatch.setattr(evaluate, "build_agent", lambda *_: pytest.fail("the policy was loaded"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    datasets = json.dumps([{"path": str(empty), "format": "2wiki", "dataset": "mine"}])
    argv = ["evaluate", "--config", str(TINY_EVAL), "--datasets", datasets, "--output_dir", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: no questions to run" in err and f"{empty}: 0 rows read, 0 skipped" in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_a_stopped_run_keeps_the_traces_of_finished_episodes(tmp_path):
    from more_lightning.agent.episodes import EpisodeConfig, EpisodeTrace
    from more_lightning.agent.evaluate import run_episodes
    from more_lightning.data.qa import QASource

    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": f"q{i}?", "answer": "a"}) + "\n" for i in range(4)))
    examples = QASource(str(questions), "2wiki").read()

    class StopsOnTheSecondBatch:
        batches = 0
        config = EpisodeConfig()

        def run(self, episodes, on_stage=None):
            self.batches += 1
            if self.batches == 2:
                raise KeyboardInterrupt
            return [EpisodeTrace(e) for e in episodes]

    traces = tmp_path / "out" / "traces.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_episodes(StopsOnTheSecondBatch(), examples, 2, "questions", traces)
    kept = [json.loads(line) for line in traces.read_text().splitlines()]
    assert len(kept) == 2
