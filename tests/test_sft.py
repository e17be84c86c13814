"""The supervised warm start: the loss on hand-computed tokens, and ``fit`` with it on the tiny model (loss falls,
adapter-only checkpoints, resume, then Step-GRPO continues the adapter)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import yaml

from more_lightning.data.trajectories import read_step_grpo_jsonl, teacher_demonstration
from more_lightning.policy.generation import demonstration_tokens, encode_prompts, split_prompt_inputs, tokenizer_of
from more_lightning.policy.loading import PolicyConfig, load_policy
from more_lightning.policy.shared_prompt import group_token_stats
from more_lightning.train.sft import demonstration_group, supervised_nll
from tests.test_training import ROOT, TINY_FIT, TINY_TRAJECTORIES, _metrics

TINY_SFT = ROOT / "configs" / "tiny" / "sft.yaml"


@pytest.mark.integration
@pytest.mark.parametrize("shared", [True, False])
def test_the_sft_loss_is_the_mean_nll_of_the_completion_tokens_only(tiny_vl_path, shared):
    model, processor = load_policy(PolicyConfig(model=str(tiny_vl_path), dtype="float32", lora=None))
    steps = [s for t in read_step_grpo_jsonl(TINY_TRAJECTORIES) for s in t.steps][:3]
    prompts = [s.prompt for s in steps]
    inputs = split_prompt_inputs(encode_prompts(processor, prompts), prompts)
    groups = []
    for step, prompt_inputs in zip(steps, inputs, strict=True):
        text = teacher_demonstration(step)
        groups.append(demonstration_group(step, prompt_inputs, demonstration_tokens(model, processor, text), text))
    pad = tokenizer_of(processor).pad_token_id
    with torch.no_grad():
        logprobs, _, mask = group_token_stats(
            model, [g.prompt_inputs for g in groups], [g.completions for g in groups], pad, shared, with_entropy=False
        )
        loss = supervised_nll(logprobs, mask)
        # by hand: one plain forward per step over prompt + completion; the completion tokens' log-probs only
        total, count = 0.0, 0
        for group in groups:
            prompt_ids, completion = group.prompt_inputs["input_ids"][0], group.completions[0]
            ids = torch.cat([prompt_ids, completion]).unsqueeze(0)
            extra = {k: v for k, v in group.prompt_inputs.items() if k in ("pixel_values", "image_grid_thw")}
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0].float()
            predicted = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
            total += predicted.gather(1, completion.unsqueeze(1)).sum().item()
            count += len(completion)
    assert int(mask.sum()) == count, "exactly the completion tokens count, the stop token included"
    assert loss.item() == pytest.approx(-total / count, rel=1e-4)


def _sft_config(tmp_path, **trainer) -> str:
    config = yaml.safe_load(TINY_SFT.read_text())
    config["data"]["trajectories"] = str(TINY_TRAJECTORIES)
    config["trainer"].update(trainer)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _nll(log_dir) -> dict[int, float]:
    return {int(r["step"]): float(r["loss/nll"]) for r in _metrics(log_dir) if r.get("loss/nll")}


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_warm_start_learns_checkpoints_the_adapter_resumes_and_step_grpo_continues_it(tmp_path, run_cli):
    (tmp_path / "whole").mkdir()
    config = _sft_config(tmp_path)
    whole = run_cli("fit", "--config", config, cwd=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    losses = _nll(tmp_path / "whole" / "lightning_logs")
    print("warm-start NLL per step", losses)
    assert sorted(losses) == list(range(8))
    first, last = (losses[0] + losses[1]) / 2, (losses[6] + losses[7]) / 2
    assert last < first - 0.2, "the NLL of the teacher steps falls (nats per token)"
    checkpoint = tmp_path / "whole" / "checkpoints" / "tiny-sft" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 8 and saved["state_dict"] and all("lora_" in k for k in saved["state_dict"])
    adapter = tmp_path / "whole" / "checkpoints" / "tiny-sft-adapter"
    assert (adapter / "adapter_model.safetensors").is_file()

    middle = next((tmp_path / "whole" / "checkpoints" / "tiny-sft").glob("*step=4.ckpt"))
    (tmp_path / "resumed").mkdir()
    resumed = run_cli("fit", "--config", config, "--ckpt_path", str(middle), cwd=tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = _nll(tmp_path / "resumed" / "lightning_logs")
    assert sorted(again) == [4, 5, 6, 7]
    for step, value in again.items():
        assert value == pytest.approx(losses[step], rel=1e-5), step

    grpo = yaml.safe_load(TINY_FIT.read_text())
    grpo["data"]["trajectories"] = str(TINY_TRAJECTORIES)
    grpo["model"]["policy"]["adapter"] = str(adapter)
    (tmp_path / "grpo").mkdir()
    path = tmp_path / "grpo" / "fit.yaml"
    path.write_text(yaml.safe_dump(grpo))
    continued = run_cli("fit", "--config", str(path), "--trainer.max_steps", "1", cwd=tmp_path / "grpo")
    assert continued.returncode == 0, continued.stderr[-3000:]


@pytest.mark.integration
def test_an_sft_objective_without_the_demonstration_feed_is_a_clear_error(tmp_path, run_cli):
    config = yaml.safe_load(TINY_FIT.read_text())
    config["data"]["trajectories"] = str(TINY_TRAJECTORIES)
    config["model"]["loss"]["objective"] = "sft"
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("fit", "--config", str(path), "--trainer.max_steps", "1", cwd=tmp_path)
    assert result.returncode != 0
    assert "model.loss.objective 'sft': expected step_grpo to match model.rollout (RolloutCallback)" in result.stderr


@pytest.mark.unit
def test_step_repeats_oversample_one_step_type_in_every_pass():
    from more_lightning.data.datamodule import StepGRPODataModule

    plain = StepGRPODataModule(str(TINY_TRAJECTORIES))
    plain.setup("fit")
    routing = [s for s in plain.steps if s.step_type == "ret"]
    data = StepGRPODataModule(str(TINY_TRAJECTORIES), step_repeats={"ret": 3})
    data.setup("fit")
    assert len(data.steps) == len(plain.steps) + 2 * len(routing)
    one_pass = data.next_steps(len(data.steps))
    assert sum(s.step_type == "ret" for s in one_pass) == 3 * len(routing)
    assert {s.prompt.problem for s in one_pass} == {s.prompt.problem for s in plain.steps}
    for bad in ({"route": 2}, {"ret": 0}):
        with pytest.raises(ValueError, match="step_repeats"):
            StepGRPODataModule(str(TINY_TRAJECTORIES), step_repeats=bad)


@pytest.mark.unit
def test_multi_hop_repeats_oversample_every_step_of_the_trajectories_that_route_twice_or_more(tmp_path):
    from more_lightning.data.datamodule import StepGRPODataModule, routing_hops, step_kind
    from more_lightning.demo.teacher import TABLE, TEXT, teacher_trajectory
    from more_lightning.protocol.records import Passage

    row, lead = (
        Passage("r", "Vertigo | Alfred Hitchcock", TABLE),
        Passage("l", "Hitchcock was an English director", TEXT),
    )
    one_hop = teacher_trajectory(
        "Who directed Vertigo?", [("Who directed Vertigo?", "Alfred Hitchcock", row)], "Hitchcock"
    )
    two_hops = teacher_trajectory(
        "What nationality was the director of Vertigo?",
        [
            ("Who directed Vertigo?", "Alfred Hitchcock", row),
            ("What nationality was Alfred Hitchcock?", "English", lead),
        ],
        "English",
    )
    path = tmp_path / "trajectories.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in (one_hop, two_hops)))
    assert [routing_hops(t) for t in read_step_grpo_jsonl(str(path))] == [1, 2], "the stop step is not a hop"

    def kinds(**settings) -> Counter:
        data = StepGRPODataModule(str(path), **settings)
        data.setup("fit")
        return Counter(step_kind(s) for s in data.steps)

    one, two = (Counter({"ret": n, "stop": 1, "ans": n + 1}) for n in (1, 2))
    assert kinds() == one + two
    assert kinds(multi_hop_repeats=3) == one + Counter({k: 3 * n for k, n in two.items()})
    assert kinds(multi_hop_repeats=3, step_repeats={"ret": 2, "stop": 1}) == {
        "ret": 2 + 12,
        "stop": 1 + 3,
        "ans": 2 + 9,
    }
    with pytest.raises(ValueError, match="multi_hop_repeats"):
        StepGRPODataModule(str(path), multi_hop_repeats=0)


@pytest.mark.unit
def test_stop_steps_are_their_own_kind_and_count_as_routing_steps_unless_told():
    from more_lightning.data.datamodule import StepGRPODataModule, step_kind

    official = ROOT / "tests" / "fixtures" / "official" / "grpo_dataset_valid_head.jsonl"
    plain = StepGRPODataModule(str(official))
    plain.setup("fit")
    kinds = [step_kind(s) for s in plain.steps]
    assert kinds.count("stop") >= 1 and kinds.count("ret") >= 1, "the official trajectories end with a stop step"
    assert all(s.gold.experts == ("none",) for s, kind in zip(plain.steps, kinds, strict=True) if kind == "stop")

    def counts(repeats):
        data = StepGRPODataModule(str(official), step_repeats=repeats)
        data.setup("fit")
        found = [step_kind(s) for s in data.steps]
        return found.count("ret"), found.count("stop"), found.count("ans")

    ret, stop, ans = kinds.count("ret"), kinds.count("stop"), kinds.count("ans")
    assert counts({"ret": 3}) == (3 * ret, 3 * stop, ans)
    assert counts({"ret": 3, "stop": 1}) == (3 * ret, stop, ans)
