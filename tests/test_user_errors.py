"""One kind of user error: every user-facing error class derives from ``UserError``, the command line prints it as one
``error:`` line (exit 2, no traceback), and out-of-range config values are all named at once before anything loads.

The command line runs in-process (``cli.main``): a subprocess would spend ~15 s importing before the same lines.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from more_lightning import cli
from more_lightning.errors import ConfigError, UserError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "more_lightning"
OPERATIONS = ROOT / "docs" / "operations.md"
TINY_FIT = ROOT / "configs" / "tiny" / "fit.yaml"
TINY_EVAL = ROOT / "configs" / "tiny" / "eval.yaml"


def _error_lines_and_after(capsys) -> list[str]:
    """stderr from the first ``error:`` line on (a gathered error lists its problems on the lines after it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    lines = err.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("error:")) :]


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


INTERNAL_ERRORS = {
    "more_lightning.protocol.jsonl.RowError": "a row parser's signal: the reader reports it as a bad row (file:line)",
}
"""Exception classes of the package that never reach the user as such (name → why)."""


def _error_classes() -> dict[str, type[BaseException]]:
    """``module.Class`` → class, for every exception class the package defines."""
    classes = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = importlib.import_module(name.removesuffix(".__init__"))
        classes |= {
            f"{module.__name__}.{name}": value
            for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__
        }
    return classes


def test_every_error_class_the_package_defines_is_a_user_error_listed_in_the_operations_guide():
    classes = _error_classes()
    assert len(classes) > 30 and set(INTERNAL_ERRORS) <= set(classes)
    assert sorted(name for name, c in classes.items() if not issubclass(c, UserError)) == sorted(INTERNAL_ERRORS)
    from more_lightning.experts.connection import WeaviateUnreachable
    from more_lightning.policy.model_source import ModelNotFound

    assert issubclass(ModelNotFound, FileNotFoundError) and issubclass(WeaviateUnreachable, ConnectionError)
    guide = OPERATIONS.read_text().split("### The error classes", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(\w+)`", guide))
    user_errors = {c.__name__ for c in classes.values() if issubclass(c, UserError) and c is not UserError}
    assert sorted(user_errors - listed) == [], "error classes missing from docs/operations.md"


@pytest.mark.parametrize("error_class", ["WeaviateStartError", "TrialFailed"])
def test_a_user_error_from_any_command_is_one_line_and_exit_2(monkeypatch, capsys, error_class):
    from more_lightning.experts.server import WeaviateStartError
    from more_lightning.ops.sweep import TrialFailed

    error = {"WeaviateStartError": WeaviateStartError, "TrialFailed": TrialFailed}[error_class]

    def fails(**_):
        """Fail as a command would."""
        raise error("the server died while starting: see its log")

    commands = cli.commands()
    monkeypatch.setattr(cli, "commands", lambda: {**commands, "build-tiny-model": fails})
    assert cli.main(["build-tiny-model"]) == 2
    assert _error_lines(capsys) == ["error: the server died while starting: see its log"]


def test_a_missing_config_file_is_one_line(capsys, tmp_path):
    assert cli.main(["index", "--config", str(tmp_path / "none.yaml")]) == 2
    assert _error_lines(capsys) == [f"error: --config {tmp_path / 'none.yaml'}: no such file"]


def test_fit_names_every_out_of_range_value_before_anything_loads(capsys, tmp_path, monkeypatch):
    from more_lightning.train import module

    monkeypatch.setattr(module, "load_policy", lambda *_: pytest.fail("the policy was loaded"))
    monkeypatch.chdir(tmp_path)
    overrides = {
        "model.rollout.init_args.group_size": "1",
        "model.rollout.init_args.sampling.temperature": "0.0",
        "model.rollout.init_args.sampling.max_new_tokens": "0",
        "model.optimizer.lr": "-1.0",
        "model.policy.lora.r": "0",
        "data.groups_per_batch": "0",
    }
    argv = ["fit", "--config", str(TINY_FIT), "--trainer.logger", "false"]
    assert cli.main(argv + [x for key, value in overrides.items() for x in (f"--{key}", value)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    assert "6 settings to fix" in err
    for key, value in overrides.items():
        assert f"{key} {value}: expected" in err
    assert "expected >= 2" in err and "expected > 0 when sampling" in err and "expected an integer >= 1" in err


def test_fit_gathers_problems_across_sections_into_one_error_before_any_model_loads(capsys, tmp_path, monkeypatch):
    from more_lightning.train import module

    monkeypatch.setattr(module, "load_policy", lambda *_: pytest.fail("the policy was loaded"))
    monkeypatch.chdir(tmp_path)  # the config's relative data file is not here: the data is not read either
    overrides = {
        "model.loss.clip_low": "1.5",
        "model.rollout.init_args.engine.retries": "-1",
        "model.rollout.init_args.episode.max_steps": "0",
        "model.optimizer.schedule": "cosine",
        "trainer.max_steps": "-1",
        "model.loss.objective": "sft",
        "model.logits_chunk_tokens": "0",
    }
    argv = ["fit", "--config", str(TINY_FIT), "--trainer.logger", "false"]
    assert cli.main(argv + [x for key, value in overrides.items() for x in (f"--{key}", value)]) == 2
    (line, *rest) = [x for x in _error_lines_and_after(capsys)]
    assert line == "error: 6 settings to fix:", line
    assert rest == [
        "  model.loss.clip_low 1.5: expected in [0, 1)",
        "  model.rollout.init_args.episode.max_steps 0: expected >= 1",
        "  model.rollout.init_args.engine.retries -1: expected >= 0",
        "  model.logits_chunk_tokens 0: expected >= 1",
        "  model.loss.objective 'sft': expected step_grpo to match model.rollout (RolloutCallback): the warm start "
        "pairs objective sft with more_lightning.train.sft.TeacherDemonstrations, Step-GRPO pairs step_grpo with a "
        "RolloutCallback",
        "  trainer.max_steps -1: expected > 0: model.optimizer.schedule 'cosine' ends there",
    ]


def test_greedy_decoding_allows_temperature_0():
    from more_lightning.policy.generation import SamplingConfig

    SamplingConfig(temperature=0.0, greedy=True)
    with pytest.raises(ConfigError, match=r"sampling.temperature 0.0: expected > 0 when sampling"):
        SamplingConfig(temperature=0.0)


def test_evaluate_rejects_retrieve_k_0_with_the_other_problems(capsys):
    argv = ["evaluate", "--config", str(TINY_EVAL), "--episode.retrieve_k", "0", "--sampling.top_p", "2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "episode.retrieve_k 0: expected >= 1" in err and "sampling.top_p 2.0: expected in (0, 1]" in err


def test_an_unwritable_cache_is_one_line_naming_the_variable(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache cannot be made under a file")
    monkeypatch.setenv("MORE_LIGHTNING_CACHE", str(blocker / "cache"))
    assert cli.main(["build-tiny-model", "--seed", "7"]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and f"the cache folder {blocker / 'cache'} cannot be written" in lines[0]
    assert "MORE_LIGHTNING_CACHE" in lines[0]


def test_a_stopped_command_is_one_line_not_a_keyboard_interrupt_traceback(monkeypatch, capsys):
    def stopped(**_):
        """Stopped by SIGTERM, as sweep turns it into KeyboardInterrupt."""
        raise KeyboardInterrupt

    commands = cli.commands()
    monkeypatch.setattr(cli, "commands", lambda: {**commands, "build-tiny-model": stopped})
    assert cli.main(["build-tiny-model"]) == 130
    assert _error_lines(capsys) == [
        "error: stopped (Ctrl-C or SIGTERM). What finished is kept; run the same command again to resume "
        "(fit: --ckpt_path <folder>/last.ckpt)."
    ]


def test_synthesize_keeping_nothing_says_why_and_what_to_change():
    from more_lightning.agent.synthesize import KeepFilter, nothing_kept

    message = nothing_kept(12, KeepFilter(min_f1_recall=1.0, require_gold_expert=True), attempts=1, greedy=True)
    assert message.startswith("synthesize kept 0 of 12 questions: no teacher episode followed the protocol")
    for change in ("a stronger teacher", "--attempts 4", "--min_f1_recall 0.5", "--require_gold_expert false"):
        assert change in message


def test_settings_that_do_not_fit_together_are_one_line_before_the_data_is_read(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's relative data path does not exist from here
    argv = ["fit", "--config", str(TINY_FIT), "--trainer.logger", "false"]
    assert cli.main([*argv, "--model.loss.objective", "sft"]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("error: model.loss.objective 'sft': expected step_grpo to match model.rollout (RolloutC")
    assert cli.main(argv) == 2  # settings that fit: now the data is read, and its file is missing
    assert _error_lines(capsys) == [
        f"error: tests/fixtures/step_grpo_small.jsonl: no such file (relative paths are read from {tmp_path})"
    ]


def test_a_warm_start_without_trajectories_and_on_policy_rollouts_without_experts_are_named(capsys, tmp_path):
    argv = ["fit", "--config", str(TINY_FIT), "--trainer.logger", "false", "--data.trajectories", "null"]
    questions = ["--data.questions", '[{"path": "q.jsonl", "format": "2wiki"}]']
    assert cli.main([*argv, "--model.rollout.init_args.mode", "on_policy", *questions]) == 2
    assert _error_lines(capsys) == [
        "error: data.experts None: expected an ExpertPool: on-policy rollouts search the experts"
    ]
    sft = ["--model.loss.objective", "sft", "--model.rollout", "more_lightning.train.sft.TeacherDemonstrations"]
    assert cli.main([*argv, *sft, *questions, "--model.rollout.init_args.steps_per_phase", "0"]) == 2
    assert _error_lines_and_after(capsys)[1:] == [
        "  model.rollout.init_args.steps_per_phase 0: expected >= 1",
        "  data.trajectories None: expected a teacher-trajectory file for the warm start",
    ]
