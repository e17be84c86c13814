"""The baseline routers of ``evaluate`` on the tiny model and the fixture corpus in a real Weaviate server: one
retrieval with the question at ``max_steps: 1``, and the policy's own routing steps with the router's experts above."""

from __future__ import annotations

import pytest

from more_lightning.agent.episodes import UNPARSED_ROUTE, EpisodeConfig, EpisodeRunner
from more_lightning.agent.eval_reports import summarise
from more_lightning.experts.pool import ExpertPool
from more_lightning.policy.generation import SamplingConfig, prompt_text, tokenizer_of
from more_lightning.policy.loading import PolicyConfig, load_policy
from more_lightning.policy.sampler import PolicySampler
from more_lightning.protocol.records import Episode, SubStep
from tests.test_episodes import ScriptedPolicy, local, tiny_experts

pytestmark = [pytest.mark.integration, pytest.mark.weaviate]
TEXT, IMAGE, TABLE = "text retriever", "text image retriever", "table retriever"
QUESTIONS = [
    Episode("t", "Who directed the film Alien?", golds=("Ridley Scott",), dataset="text", gold_expert=TEXT),
    Episode("b", "What is the GDP of Japan?", golds=("4.9 trillion",), dataset="table", gold_expert=TABLE),
    Episode("i", "What colour is the square?", golds=("red",), dataset="image", gold_expert=IMAGE),
]
TWO_HOP = Episode(
    "h",
    "How many people live in the country whose capital is Bishkek?",
    golds=("6.6 million",),
    dataset="two-hop",
    gold_expert=TEXT,
    teacher=[
        SubStep("which country has the capital bishkek?", "kyrgyzstan", (TEXT,)),
        SubStep("what is the population of kyrgyzstan?", "6.6 million", (TABLE,)),
    ],
)


@pytest.fixture(scope="module")
def runner_parts(weaviate_server, tiny_vl_path):
    model, processor = load_policy(PolicyConfig(model=str(tiny_vl_path), dtype="float32", lora=None))
    sampler = PolicySampler(model, processor, SamplingConfig(greedy=True, max_new_tokens=8), batch_prompts=4)
    with ExpertPool(tiny_experts(), local(weaviate_server)) as pool:
        yield sampler, pool


def run(runner_parts, router: str, episodes=QUESTIONS, max_steps: int = 1):
    sampler, pool = runner_parts
    config = EpisodeConfig(router=router, max_steps=max_steps, retrieve_k=3, passages_per_expert=2, parse_retries=0)
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


def test_a_two_step_gold_router_searches_each_hops_gold_expert_in_order(runner_parts):
    sampler, pool = runner_parts
    (trace,) = run(runner_parts, "gold", [TWO_HOP], max_steps=3)
    # the tiny model's routing outputs do not parse: each step asks the question itself, from the hop's gold expert
    assert [step.experts for step in trace.steps] == [(TEXT,), (TABLE,)]
    assert [{p.expert for p in step.passages} for step in trace.steps] == [{TEXT}, {TABLE}]
    assert trace.routes == [TEXT, TABLE, "none"], "past the last hop the oracle stops routing"
    assert trace.retrieval_calls == 2 and trace.stop_prompt is not None and trace.final_output
    first, second = trace.steps
    assert f"Sub-question1: {first.sub_question}\nAnswer1: {first.answer}\n" in second.routing_prompt.problem
    assert f"Sub-question2: {second.sub_question}\nAnswer2: {second.answer}\n" in trace.stop_prompt.problem
    step1, step2 = summarise([trace])[-1].routing_by_step
    assert (step1.accuracy, step1.confusion, step2.accuracy, step2.confusion) == (
        100.0,
        {TEXT: {TEXT: 1}},
        100.0,
        {TABLE: {TABLE: 1}},
    )
    assert trace.passages_read == sum(min(len(step.passages), 2) for step in trace.steps)
    prompts = [first.routing_prompt, first.answer_prompt, second.routing_prompt, second.answer_prompt]
    prompts += [trace.stop_prompt, trace.final_prompt]
    tokenizer = tokenizer_of(sampler.processor)
    assert trace.prompt_tokens == sum(len(tokenizer(prompt_text(sampler.processor, p))["input_ids"]) for p in prompts)


def test_a_baseline_keeps_the_policys_sub_questions_and_stop_and_replaces_its_experts(runner_parts):
    _, pool = runner_parts
    policy = ScriptedPolicy(
        [
            f"which country has the capital bishkek?|{IMAGE}",
            f"what is the population of kyrgyzstan?|{IMAGE}",
            "none|none",
        ]
    )
    config = EpisodeConfig(router=f"fixed:{TABLE}", max_steps=3, retrieve_k=3)
    (trace,) = EpisodeRunner(policy, pool, config).run([TWO_HOP])
    assert [(s.sub_question, s.experts) for s in trace.steps] == [
        ("which country has the capital bishkek?", (TABLE,)),
        ("what is the population of kyrgyzstan?", (TABLE,)),
    ]
    assert trace.routes == [TABLE, TABLE, "none"], "the policy's stop ends routing"
    assert trace.steps[1].passages[0].id == "populations"
    step1, step2 = summarise([trace])[-1].routing_by_step
    assert (step1.accuracy, step2.accuracy) == (0.0, 100.0)
    (trace,) = EpisodeRunner(policy, pool, EpisodeConfig(router="none", max_steps=3)).run([TWO_HOP])
    assert [s.experts for s in trace.steps] == [(), ()] and trace.retrieval_calls == 0
    assert trace.routes == ["none", "none", "none"] and trace.passages_read == 0
