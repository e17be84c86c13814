"""Greedy completions shared across an evaluation's systems: each distinct prompt generated once, and every system
reading what it reads when it generates alone (the tiny model on the fixture corpus in a real Weaviate server)."""

from __future__ import annotations

import pytest

from more_lightning.agent.episodes import EpisodeConfig, EpisodeRunner
from more_lightning.agent.shared_completions import SharedGreedyCompletions
from more_lightning.experts.pool import ExpertPool
from more_lightning.policy.generation import SamplingConfig
from more_lightning.policy.loading import PolicyConfig, load_policy
from more_lightning.policy.sampler import PolicySampler, SampledGroup
from more_lightning.protocol.records import StepPrompt
from tests.test_episodes import local, tiny_experts
from tests.test_routers import IMAGE, QUESTIONS, TABLE, TEXT, TWO_HOP


class CountingSampler:
    """Completes a prompt with its own text and counts what it was asked (a scripted engine for the bookkeeping)."""

    seed, calls = 0, 0

    def __init__(self) -> None:
        self.asked: list[StepPrompt] = []

    def sample(self, prompts, n: int = 1):
        self.asked += prompts
        return [
            SampledGroup(p, [p.problem] * n, {"input_ids": [[1, 2, 3]], "pixel_values": 0}, seconds=0.5)
            for p in prompts
        ]

    def demonstrate(self, group, text, count):
        group.texts[-count:] = [text] * count


def prompt(text: str) -> StepPrompt:
    return StepPrompt("ans", "system", text)


@pytest.mark.unit
def test_a_prompt_is_generated_once_and_its_completion_handed_to_every_later_request():
    engine = CountingSampler()
    shared = SharedGreedyCompletions(engine)
    first = shared.sample([prompt("a"), prompt("b"), prompt("a")])
    assert engine.asked == [prompt("a"), prompt("b")], "a prompt twice in one call is generated once"
    second = shared.sample([prompt("b"), prompt("c")])
    assert engine.asked[2:] == [prompt("c")]
    assert [g.texts for g in first + second] == [["a"], ["b"], ["a"], ["b"], ["c"]]
    assert (shared.generated, shared.shared) == (3, 2)
    assert shared.summary() == "3 of 5 prompts generated, 2 shared across the systems"
    assert second[0].seconds == 0.5, "a shared completion costs what its first generation cost"
    assert second[0].prompt_inputs == {"input_ids": [[1, 2, 3]]}, "pixel values are not kept"
    second[0].texts[0] = "changed by a reader"
    assert shared.sample([prompt("b")])[0].texts == ["b"]


@pytest.mark.unit
def test_groups_of_samples_are_not_shared():
    engine = CountingSampler()
    shared = SharedGreedyCompletions(engine)
    shared.sample([prompt("a")], n=4)
    shared.sample([prompt("a")], n=4)
    assert engine.asked == [prompt("a"), prompt("a")] and shared.generated == shared.shared == 0


@pytest.fixture(scope="module")
def one_prompt_per_call(weaviate_server, tiny_vl_path):
    """The tiny model generating one prompt per call: its greedy completion of a prompt does not depend on others."""
    model, processor = load_policy(PolicyConfig(model=str(tiny_vl_path), dtype="float32", lora=None))
    sampler = PolicySampler(model, processor, SamplingConfig(greedy=True, max_new_tokens=8), batch_prompts=1)
    with ExpertPool(tiny_experts(), local(weaviate_server)) as pool:
        yield sampler, pool


def what_it_read(trace) -> tuple:
    steps = [
        (s.routing_output, s.sub_question, s.experts, [p.id for p in s.passages], s.answer_output) for s in trace.steps
    ]
    return trace.routes, steps, trace.final_output, trace.prompt_tokens, trace.retrieval_calls, trace.passages_read


@pytest.mark.integration
@pytest.mark.weaviate
def test_every_system_reads_with_shared_completions_what_it_reads_alone(one_prompt_per_call):
    sampler, pool = one_prompt_per_call
    routers = ["policy", "gold", f"fixed:{TEXT}", f"fixed:{TABLE}", f"fixed:{IMAGE}", "all", "none"]
    episodes = [*QUESTIONS, TWO_HOP]
    shared = SharedGreedyCompletions(sampler)
    for router in routers:
        config = EpisodeConfig(router=router, max_steps=2, retrieve_k=3, passages_per_expert=2, parse_retries=0)
        alone = EpisodeRunner(sampler, pool, config).run(episodes)
        together = EpisodeRunner(shared, pool, config).run(episodes)
        assert [what_it_read(t) for t in together] == [what_it_read(t) for t in alone], router
        assert all(t.seconds["generation"] > 0 for t in together)
    assert shared.shared > shared.generated / 2, shared.summary()
