"""The baseline routers of ``evaluate`` on the tiny model and the fixture corpus in a real Weaviate server."""

from __future__ import annotations

import pytest

from more_lightning.agent.episodes import UNPARSED_ROUTE, EpisodeConfig, EpisodeRunner
from more_lightning.agent.evaluation import summarise
from more_lightning.experts.pool import ExpertPool
from more_lightning.policy.generation import SamplingConfig
from more_lightning.policy.loading import PolicyConfig, load_policy
from more_lightning.policy.sampler import PolicySampler
from more_lightning.protocol.records import Episode
from tests.test_episodes import local, tiny_experts

pytestmark = [pytest.mark.integration, pytest.mark.weaviate]
TEXT, IMAGE, TABLE = "text retriever", "text image retriever", "table retriever"
QUESTIONS = [
    Episode("t", "Who directed the film Alien?", golds=("Ridley Scott",), dataset="text", gold_expert=TEXT),
    Episode("b", "What is the GDP of Japan?", golds=("4.9 trillion",), dataset="table", gold_expert=TABLE),
    Episode("i", "What colour is the square?", golds=("red",), dataset="image", gold_expert=IMAGE),
]


@pytest.fixture(scope="module")
def runner_parts(weaviate_server, tiny_vl_path):
    model, processor = load_policy(PolicyConfig(model=str(tiny_vl_path), dtype="float32", lora=None))
    sampler = PolicySampler(model, processor, SamplingConfig(greedy=True, max_new_tokens=8), batch_prompts=4)
    with ExpertPool(tiny_experts(), local(weaviate_server)) as pool:
        yield sampler, pool


def run(runner_parts, router: str, episodes=QUESTIONS):
    sampler, pool = runner_parts
    config = EpisodeConfig(router=router, max_steps=2, retrieve_k=3, parse_retries=0)
    return EpisodeRunner(sampler, pool, config).run(episodes)


def test_the_gold_router_routes_every_question_to_its_gold_expert(runner_parts):
    traces = run(runner_parts, "gold")
    assert [t.first_route for t in traces] == [TEXT, TABLE, IMAGE]
    for trace in traces:
        (step,) = trace.steps
        assert step.sub_question == trace.episode.question, "a baseline retrieves with the question itself"
        assert step.passages and {p.expert for p in step.passages} == {trace.episode.gold_expert}
        assert trace.retrieval_calls == 1 and trace.final_output
    assert summarise(traces)[-1].routing_accuracy == 100.0


@pytest.mark.parametrize("expert", [TEXT, IMAGE, TABLE])
def test_a_fixed_router_calls_only_its_expert(runner_parts, expert):
    sampler, pool = runner_parts
    calls_before = pool.calls
    traces = run(runner_parts, f"fixed:{expert}")
    assert pool.calls - calls_before == 1, "one batched search for the whole batch"
    for trace in traces:
        assert trace.first_route == expert and trace.retrieval_calls == 1
        assert {p.expert for s in trace.steps for p in s.passages} == {expert}
    report = summarise(traces)[-1]
    assert report.routing_accuracy == pytest.approx(100 / 3)
    assert report.confusion[expert] == {expert: 1}


def test_the_none_router_retrieves_nothing_and_answers_at_once(runner_parts):
    sampler, pool = runner_parts
    calls_before = pool.calls
    traces = run(runner_parts, "none")
    assert pool.calls == calls_before
    assert all(t.steps == [] and t.retrieval_calls == 0 and t.first_route == "none" for t in traces)
    assert all(t.final_output for t in traces), "the policy still writes the final answer"
    assert summarise(traces)[-1].routing_accuracy == 0.0


def test_the_all_router_searches_every_expert(runner_parts):
    traces = run(runner_parts, "all")
    for trace in traces:
        assert trace.retrieval_calls == 3
        assert {p.expert for p in trace.steps[0].passages} == {TEXT, IMAGE, TABLE}


def test_the_policy_router_records_its_first_route(runner_parts):
    traces = run(runner_parts, "policy")  # a random tiny model: its routing output does not parse
    assert {t.first_route for t in traces} == {UNPARSED_ROUTE}
    assert summarise(traces)[-1].confusion == {
        TEXT: {UNPARSED_ROUTE: 1},
        TABLE: {UNPARSED_ROUTE: 1},
        IMAGE: {UNPARSED_ROUTE: 1},
    }


def test_a_router_is_checked_against_the_pool_and_the_question(runner_parts):
    sampler, pool = runner_parts
    with pytest.raises(ValueError, match="expected one of policy, none, all, gold, fixed:<expert>"):
        EpisodeConfig(router="best")
    with pytest.raises(ValueError, match="no such expert; the pool has text retriever"):
        EpisodeRunner(sampler, pool, EpisodeConfig(router="fixed:web search"))
    with pytest.raises(ValueError, match="names no gold expert"):
        run(runner_parts, "gold", [Episode("x", "a question?", golds=("a",))])
