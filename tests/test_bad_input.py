"""Bad input and faults a new user runs into: each gives a clear message (one line, what to do), and nothing is lost.

One test (or a few) per case: resuming with other settings, duplicate corpus ids, unreadable questions in evaluate,
training without a learning signal, over-long prompts, non-UTF-8 bytes and a first step without its question,
missing models and adapters, YAML and config errors, and a local Weaviate that is not running.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from more_lightning.data.trajectories import read_step_grpo_jsonl
from more_lightning.protocol.jsonl import BadRowError
from tests.conftest import FITTED_RUN_SETTINGS, FITTED_RUN_STEPS
from tests.helpers import CommandResult

ROOT = Path(__file__).resolve().parents[1]
TINY_FIT = ROOT / "configs" / "tiny" / "fit.yaml"
TRAJECTORIES = ROOT / "tests" / "fixtures" / "step_grpo_small.jsonl"


def _one_clear_line(result: CommandResult, *fragments: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = next((x for x in result.stderr.splitlines() if x.startswith("error:")), "")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-3000:]
    return line


def _fit_config(tmp_path: Path, **data) -> Path:
    config = yaml.safe_load(TINY_FIT.read_text())
    config["data"].update({"trajectories": str(TRAJECTORIES), **data})
    for callback in config["trainer"].get("callbacks") or []:
        for key in ("dirpath",):
            if key in callback.get("init_args", {}):
                callback["init_args"][key] = str(tmp_path / "checkpoints")
    config["trainer"]["logger"] = False
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# 1. resuming with other settings ------------------------------------------------------------------------------
@pytest.mark.unit
def test_settings_differences_name_each_field_with_both_values():
    from more_lightning.train.resume import settings_differences

    saved = {"policy": {"lora": {"r": 8}, "model": "m"}, "optimizer": {"lr": 1e-4, "betas": [0.9, 0.99]}}
    given = {"policy": {"lora": {"r": 16}, "model": "m"}, "optimizer": {"lr": 1e-4, "betas": (0.9, 0.99)}}
    given["val_sampling"] = {"greedy": False}  # validation decoding may change on resume
    assert settings_differences(saved, given) == [("model.policy.lora.r", 8, 16)]


@pytest.mark.integration
def test_a_resume_with_other_settings_stops_and_lists_them(fitted_tiny_run, run_cli, tmp_path):
    checkpoint = fitted_tiny_run / "checkpoints" / "tiny" / "last.ckpt"
    changed = run_cli(
        "fit", *FITTED_RUN_SETTINGS, "--trainer.logger", "false", "--model.policy.lora.r", "16",
        "--model.optimizer.lr", "0.5", "--trainer.max_steps", str(FITTED_RUN_STEPS + 1), "--ckpt_path", str(checkpoint),
        cwd=tmp_path,
    )  # fmt: skip
    _one_clear_line(changed, "model.policy.lora.r: saved 8, given 16", "model.optimizer.lr", "--model.policy.adapter")


# 2. duplicate corpus ids ----------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.weaviate
def test_duplicate_corpus_ids_are_reported_with_both_lines_and_the_counts_add_up(tmp_path, weaviate_client):
    from more_lightning.experts.indexing import IndexingFailed, index_expert, report_table
    from more_lightning.experts.text import TextExpert

    corpus = tmp_path / "passages.jsonl"
    rows = [{"id": "a", "text": "first"}, {"id": "b", "text": "second"}, {"id": "a", "text": "overwrites first"}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    expert = TextExpert(collection="Duplicates", corpus=str(corpus)).bind(weaviate_client)
    report = index_expert(expert, recreate=True)
    assert f"{corpus}:3: duplicate id 'a' (first at {corpus}:1); not indexed" in report.failures
    assert (report.rows, report.imported, report.already_present, report.skipped) == (4, 2, 0, 2)
    failed = len(report.failures) - report.skipped
    assert report.rows == report.imported + report.already_present + report.skipped + failed
    assert report.total_in_collection == 2 and expert.search(["first"], k=1)[0][0].text == "first"
    assert [c.header for c in report_table([report]).columns][:7] == [
        "expert", "collection", "rows", "new", "kept", "skipped", "failed",
    ]  # fmt: skip
    strict = tmp_path / "strict.jsonl"
    strict.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(IndexingFailed, match=f"{strict}:3: duplicate id 'a'"):
        index_expert(
            TextExpert(collection="DuplicatesStrict", corpus=str(strict)).bind(weaviate_client), on_error="raise"
        )


# 3. unreadable questions in evaluate ------------------------------------------------------------------------------
@pytest.mark.unit
def test_skipped_questions_are_reported_per_dataset_with_the_denominator(tmp_path):
    from more_lightning.agent.episodes import EpisodeTrace
    from more_lightning.agent.eval_reports import SCORE_DENOMINATOR, report_table, summarise, write_outputs
    from more_lightning.data.qa import QASource

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "q?", "answer": "a"}) + "\n" + json.dumps({"question": "q2"}) + "\n")
    read = QASource(str(questions), "2wiki", dataset="mine").read()
    assert len(read) == 1 and read.report.rows_skipped == 1
    trace = EpisodeTrace(read[0].to_episode())
    (report,) = summarise([trace], {"mine": read.report.rows_skipped})
    assert (report.questions, report.skipped) == (1, 1)
    summary = json.loads((write_outputs(tmp_path, [report], [trace], {}) / "summary.json").read_text())
    assert summary["score_denominator"] == SCORE_DENOMINATOR and summary["datasets"][0]["skipped"] == 1
    assert "skipped" in [c.header for c in report_table([report]).columns]
    (empty,) = summarise([], {"broken": 3})
    assert (empty.dataset, empty.questions, empty.skipped) == ("broken", 0, 3), "a dataset of bad rows keeps its row"


# 4. training without a learning signal ---------------------------------------------------------------------------
@pytest.mark.unit
def test_phases_without_reward_variance_warn_once_with_the_fix():
    from more_lightning.train.rollout import RolloutCallback

    rollout = RolloutCallback(group_size=4, warn_no_signal_after=3)
    flat = [SimpleNamespace(rewards=torch.zeros(4), size=4, parse_failures=4)]
    varied = [SimpleNamespace(rewards=torch.tensor([0.0, 1.0, 0.0, 0.0]), size=4, parse_failures=0)]
    with pytest.warns(UserWarning, match=r"No learning signal: the last 3 rollout phases.*100% .*demonstrations"):
        for groups in (flat, flat, varied, flat, flat, flat):
            rollout._watch_for_signal(groups)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rollout._watch_for_signal(flat)  # once: the fourth silent phase in a row says nothing more


# 5. over-long prompts -----------------------------------------------------------------------------------------------
def _long_trajectories(tmp_path: Path) -> Path:
    rows = [json.loads(line) for line in TRAJECTORIES.read_text().splitlines()]
    for row in rows:
        row.pop("images", None)
        row["steps"] = [{**s, "problem": s["problem"].replace("<image>", "")} for s in row["steps"]]
    rows[1]["steps"][0]["problem"] += "word " * 5000
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.integration
def test_a_row_longer_than_max_prompt_tokens_is_a_bad_row(tmp_path):
    from more_lightning.data.datamodule import StepGRPODataModule
    from more_lightning.policy.tiny import tiny_model_path

    tokenizer = str(tiny_model_path())
    unmeasured = StepGRPODataModule(str(_long_trajectories(tmp_path)), max_prompt_tokens=2000)
    unmeasured.setup("fit")
    data = StepGRPODataModule(str(_long_trajectories(tmp_path)), max_prompt_tokens=2000, tokenizer=tokenizer)
    data.setup("fit")
    assert len(data.steps) < len(unmeasured.steps) and len(data.episodes) == 1
    assert data.read_report.rows_skipped == 1 and data.read_report.bad_rows[0].line == 2
    assert "longer than max_prompt_tokens=2000" in str(data.read_report.bad_rows[0])
    strict = StepGRPODataModule(  # the default limit: the tiny model's 4096-token context less the completion
        str(_long_trajectories(tmp_path)), on_error="raise", tokenizer=tokenizer, completion_tokens=96
    )
    with pytest.raises(BadRowError, match=r"long.jsonl:2: .*max_prompt_tokens=4000"):
        strict.setup("fit")


# 6. non-UTF-8 bytes and a first step without its question ------------------------------------------------------------
@pytest.mark.unit
def test_a_non_utf8_byte_is_a_bad_row_with_its_line(tmp_path):
    good = TRAJECTORIES.read_bytes().splitlines()[1]
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(good + b"\n" + good.replace(b"Alien", b"Ali\xe9n") + b"\n" + good + b"\n")
    read = read_step_grpo_jsonl(path)
    assert len(read) == 2 and read.report.rows_skipped == 1
    assert str(read.report.bad_rows[0]).startswith(f"{path}:2: field '<row>': not UTF-8 (byte 0xe9")
    with pytest.raises(BadRowError, match=":2: .*not UTF-8"):
        read_step_grpo_jsonl(path, on_error="raise")


@pytest.mark.unit
def test_a_first_step_without_origin_question_is_a_bad_row(tmp_path):
    row = json.loads(TRAJECTORIES.read_text().splitlines()[1])
    row["steps"][0]["problem"] = "Who directed the film Alien?"
    path = tmp_path / "no_origin.jsonl"
    path.write_text(json.dumps(row) + "\n")
    read = read_step_grpo_jsonl(path)
    assert len(read) == 0
    assert "steps[0].problem" in str(read.report.bad_rows[0]) and "Origin question" in str(read.report.bad_rows[0])


# 7. missing models and adapters --------------------------------------------------------------------------------
@pytest.mark.unit
def test_missing_model_folders_and_unreachable_hub_names_are_one_line(tmp_path, monkeypatch):
    from more_lightning.policy.model_source import ModelNotFound, check_model_source

    with pytest.raises(ModelNotFound, match=r"policy.model './nowhere': no such folder"):
        check_model_source("./nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(ModelNotFound, match="has no config.json"):
        check_model_source(str(tmp_path / "half"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFound, match="not in the Hugging Face cache, and the hub is offline"):
        check_model_source("nobody/no-such-model")


@pytest.mark.integration
def test_cli_missing_model_and_adapter_are_one_line_errors(tmp_path, run_cli):
    result = run_cli(
        "fit", "--config", str(_fit_config(tmp_path)), "--model.policy.model", "./missing-model", cwd=tmp_path
    )
    line = _one_clear_line(result, "policy.model './missing-model': no such folder")
    assert line.startswith("error:")
    exported = run_cli("export", "--adapter", str(tmp_path / "empty"), "--output", str(tmp_path / "out"))
    _one_clear_line(exported, "no such adapter folder or checkpoint file")
    (tmp_path / "empty").mkdir()
    exported = run_cli("export", "--adapter", str(tmp_path / "empty"), "--output", str(tmp_path / "out"))
    _one_clear_line(exported, "has no adapter_config.json")


# 8. YAML and config errors ------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path, run_cli):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  policy:\n    model: [tiny\n")
    result = run_cli("fit", "--config", str(broken))
    _one_clear_line(result, f"{broken}:4:1: YAML syntax error")
    assert len(result.stderr.splitlines()) <= 3


@pytest.mark.integration
def test_an_empty_trajectory_file_names_the_files_with_their_counts(tmp_path, run_cli):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{bad json\n")
    result = run_cli("fit", "--config", str(_fit_config(tmp_path, trajectories=str(empty))), "--trainer.max_steps", "1")
    _one_clear_line(result, f"{empty}: 0 rows read, 1 skipped", f"{empty}:1: field '<row>': invalid JSON")


@pytest.mark.integration
def test_a_bad_trainer_setting_is_one_message(tmp_path, run_cli):
    result = run_cli("fit", "--config", str(_fit_config(tmp_path)), "--trainer.max_steps", "-5")
    _one_clear_line(result, "max_steps")


# 9. a local Weaviate that is not running ------------------------------------------------------------------------------
@pytest.mark.integration
def test_local_weaviate_with_nothing_listening_suggests_the_server_command(tmp_path, run_cli):
    from more_lightning.experts.ports import free_port

    config = tmp_path / "index.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "weaviate": {"mode": "local", "http_port": free_port(), "grpc_port": free_port(), "connect_retries": 1},
                "experts": [
                    {
                        "class_path": "more_lightning.experts.text.TextExpert",
                        "init_args": {"collection": "X", "corpus": str(ROOT / "tests/fixtures/corpus/passages.jsonl")},
                    }
                ],
            }
        )
    )
    result = run_cli("index", "--config", str(config))
    line = _one_clear_line(result, "python -m more_lightning server")
    assert line.startswith("error: Could not connect to Weaviate at")
