"""The rollout engine's pure parts: refusals before anything starts, response parsing, the gap and the importance
weights (the server itself is exercised in test_vllm_engine.py)."""

from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import replace

import pytest
import torch

from more_lightning.engines.config import EngineConfig
from more_lightning.engines.launch import EngineUnsupported, check_vllm_policy
from more_lightning.engines.vllm_sampler import chat_messages, parse_choice
from more_lightning.engines.vllm_server import EngineNotInstalled, lora_rank_limit, vllm_python
from more_lightning.grpo.loss import engine_importance_weights, engine_logprob_gap
from more_lightning.policy.loading import LoraSettings, PolicyConfig
from more_lightning.protocol.records import StepPrompt

pytestmark = pytest.mark.unit


def test_an_engine_that_was_never_set_up_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MORE_LIGHTNING_VLLM_ENV", str(tmp_path / "none"))
    with pytest.raises(EngineNotInstalled, match="make setup-vllm"):
        vllm_python()


def test_the_cli_prints_one_error_line_when_the_engine_is_missing(tmp_path, monkeypatch, capsys):
    from more_lightning.cli import main

    monkeypatch.setenv("MORE_LIGHTNING_VLLM_ENV", str(tmp_path / "none"))
    code = main(["ask", "--config", "configs/tiny/eval.yaml", "--question", "q?", "--engine.kind", "vllm"])
    error = capsys.readouterr().err
    assert code == 2 and "make setup-vllm" in error and "Traceback" not in error


def test_full_fine_tuning_and_sharded_training_are_refused_with_the_reason():
    with pytest.raises(EngineUnsupported, match="full fine-tuning"):
        check_vllm_policy(PolicyConfig(lora=None), training=True)
    with pytest.raises(EngineUnsupported, match="FSDP"):
        check_vllm_policy(PolicyConfig(lora=LoraSettings()), training=True, sharded=True)


def test_an_architecture_the_installed_vllm_does_not_serve_is_refused(tmp_path, monkeypatch):
    env = tmp_path / "env"
    env.mkdir()
    (env / "architectures.txt").write_text("LlamaForCausalLM\nQwen2_5_VLForConditionalGeneration\n")
    monkeypatch.setenv("MORE_LIGHTNING_VLLM_ENV", str(env))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["FancyForCausalLM"]}))
    with pytest.raises(EngineUnsupported, match="FancyForCausalLM"):
        check_vllm_policy(PolicyConfig(model=str(model)), training=False)
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    check_vllm_policy(PolicyConfig(model=str(model)), training=False)


def test_a_training_server_follows_an_unquantised_policy_on_a_cpu_by_its_weights():
    from more_lightning.engines.launch import syncs_weights

    plain, nf4 = PolicyConfig(lora=LoraSettings()), PolicyConfig(quantization="nf4", lora=LoraSettings())
    auto, external = EngineConfig(kind="vllm"), EngineConfig(kind="vllm", mode="external", url="http://gpu:8000")
    assert syncs_weights(auto, plain, training=True) != torch.cuda.is_available()
    assert not syncs_weights(auto, nf4, training=True) and not syncs_weights(external, plain, training=True)
    assert not syncs_weights(auto, plain, training=False), "evaluation serves a fixed adapter"
    assert not syncs_weights(EngineConfig(kind="vllm", sync="lora"), plain, training=True)
    for refused, policy in (
        (EngineConfig(kind="vllm", sync="weights"), nf4),
        (replace(external, sync="weights"), plain),
    ):
        with pytest.raises(EngineUnsupported, match="engine.sync lora"):
            syncs_weights(refused, policy, training=True)


def test_old_logprobs_from_the_engine_need_a_vllm_rollout_without_demonstrations():
    from more_lightning.train.rollout import RolloutCallback, engine_old_logprobs_problem
    from more_lightning.train.sft import TeacherDemonstrations

    vllm = EngineConfig(kind="vllm")
    assert engine_old_logprobs_problem("engine", RolloutCallback(engine=vllm)) is None
    assert engine_old_logprobs_problem("trainer", RolloutCallback()) is None
    for rollout in (RolloutCallback(), RolloutCallback(engine=vllm, demonstrations=1), TeacherDemonstrations()):
        field, value, expected = engine_old_logprobs_problem("engine", rollout)
        assert (field, value) == ("model.loss.old_logprobs", "engine") and "engine.kind vllm" in expected


def test_config_values_are_checked():
    with pytest.raises(ValueError, match="engine.url"):
        EngineConfig(kind="vllm", mode="external")
    with pytest.raises(ValueError, match="engine.kind"):
        EngineConfig(kind="sglang")
    assert lora_rank_limit(8) == 8 and lora_rank_limit(9) == 16 and lora_rank_limit(64) == 64


def test_completion_and_chat_answers_parse_to_token_ids_and_logprobs():
    completion = {"logprobs": {"tokens": ["token_id:5", "token_id:2"], "token_logprobs": [-0.5, -0.25]}}
    assert parse_choice(completion) == ([5, 2], [-0.5, -0.25])
    chat = {"logprobs": {"content": [{"token": "token_id:7", "logprob": -1.0}, {"token": "token_id:2", "logprob": 0}]}}
    assert parse_choice(chat) == ([7, 2], [-1.0, 0.0])
    with pytest.raises(ValueError, match="not an id"):
        parse_choice({"logprobs": {"tokens": ["hello"], "token_logprobs": [-1.0]}})


def test_image_prompts_become_chat_messages_with_the_image_inline(tmp_path):
    from PIL import Image

    path = tmp_path / "red.png"
    Image.new("RGB", (8, 8), "red").save(path)
    prompt = StepPrompt("ret", "Route.", "Origin question: what is it?\n<image>", images=(str(path),))
    system, user = chat_messages(prompt)
    assert system == {"role": "system", "content": [{"type": "text", "text": "Route."}]}
    text, image = user["content"]
    assert text == {"type": "text", "text": "Origin question: what is it?\n"}
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1])[:4] == b"\x89PNG"


def test_the_gap_and_the_truncated_importance_weights_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    engine = torch.tensor([[-1.5, float("nan"), -0.5]])  # the middle token: a teacher demonstration
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    assert engine_logprob_gap(old, engine, mask) == pytest.approx(0.25)
    weights = engine_importance_weights(old, engine, cap=1.5)
    assert weights.tolist()[0] == pytest.approx([1.5, 1.0, 1.0])  # exp(0.5) = 1.65 capped; NaN → 1
    weights = engine_importance_weights(old, engine, cap=2.0)
    assert weights[0, 0] == pytest.approx(math.exp(0.5))


def test_only_the_most_recently_served_merged_copies_stay_in_the_cache(tmp_path):
    from more_lightning.engines.merged_adapter import keep_recent_merged

    root = tmp_path / "merged-adapters"
    for age, name in enumerate(["newest", "newer", "older", "oldest"]):
        folder = root / name
        folder.mkdir(parents=True)
        os.utime(folder, (1_000_000 - age * 100, 1_000_000 - age * 100))
    (root / ".building.staging-1").mkdir()
    keep_recent_merged(root / "oldest", keep=3)  # served now: it becomes the most recent
    assert sorted(p.name for p in root.iterdir()) == [".building.staging-1", "newer", "newest", "oldest"]
