"""Step rewards: every branch with hand values; the cosine term against numpy on the real MiniLM."""

from __future__ import annotations

import numpy as np
import pytest

from more_lightning.experts.embedders import TextEmbedder
from more_lightning.protocol.parse import parse_routing
from more_lightning.rewards.step_rewards import (
    answer_reward_from_recall,
    answer_rewards,
    routing_reward_from_parts,
    routing_rewards,
)


@pytest.fixture(scope="module")
def minilm():
    return TextEmbedder()


class CountingEmbedder:
    """Wraps the real embedder to count calls (the group must be embedded in one call)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def embed(self, texts):
        self.calls.append(list(texts))
        return self.inner.embed(texts)


def _routing(sub_question: str, expert: str) -> str:
    return f"<think>t</think><sub-question>{sub_question}</sub-question><ret>{expert}</ret>"


@pytest.mark.unit
def test_routing_reward_parts_by_hand():
    good = parse_routing(_routing("q", "text retriever"))
    assert routing_reward_from_parts(good, ["text retriever"], 0.8) == pytest.approx(0.9)
    assert routing_reward_from_parts(good, ["table retriever"], 0.8) == pytest.approx(0.4)
    two = parse_routing(_routing("q", "text retriever, table retriever"))
    assert routing_reward_from_parts(two, ["text retriever"], 0.8) == pytest.approx(0.4), "exactly one expert"
    for bad in ("nonsense", _routing("q", "web retriever"), _routing("q", "none, text retriever")):
        assert routing_reward_from_parts(parse_routing(bad), ["text retriever"], 0.8) == 0.0


@pytest.mark.integration
def test_routing_rewards_cosine_matches_numpy_on_minilm(minilm):
    gold = "who directed the film alien?"
    outputs = [
        _routing("Who directed Alien?", "text retriever"),
        _routing("What is the population of Sweden?", "table retriever"),
        "no tags at all",
        _routing(gold, "text retriever"),
    ]
    counting = CountingEmbedder(minilm)
    scored = routing_rewards(outputs, gold, ["text retriever"], counting)
    assert len(counting.calls) == 1, "one embedding call per group"
    vectors = minilm.embed([gold, "who directed alien?", "what is the population of sweden?"])
    expected_cos = [float(np.dot(vectors[0], vectors[1])), float(np.dot(vectors[0], vectors[2]))]
    assert scored[0].reward == pytest.approx(0.5 * expected_cos[0] + 0.5, abs=1e-5)
    assert scored[1].reward == pytest.approx(0.5 * expected_cos[1], abs=1e-5)
    assert scored[2].reward == 0.0 and scored[2].parse_failed
    assert scored[3].reward == pytest.approx(1.0, abs=1e-5)
    assert scored[0].reward > scored[1].reward


@pytest.mark.parametrize(
    "sub_question, expert, gold_query, gold_expert",
    [
        ("", "text retriever", "who directed alien?", "text retriever"),  # empty sub-question, a real expert
        ("Who directed Alien?", "none", "who directed alien?", "text retriever"),  # a real question, expert none
        ("Who directed Alien?", "none", "none", "none"),  # ... against a none gold
        ("none", "text retriever", "who directed alien?", "text retriever"),  # sub-question none, a real expert
        ("null", "table retriever", "who directed alien?", "text retriever"),
    ],
)
@pytest.mark.integration
def test_the_none_rule_is_not_part_of_the_official_reward(minilm, sub_question, expert, gold_query, gold_expert):
    output = _routing(sub_question, expert)
    cosine = float(np.dot(*minilm.embed([gold_query, sub_question.lower().strip()])))
    official = 0.5 * cosine + 0.5 * float(expert == gold_expert)
    (scored,) = routing_rewards([output], gold_query, [gold_expert], minilm)
    assert scored.reward == pytest.approx(official, abs=1e-5)
    assert scored.parse_failed, "the loop's rule is still broken (counted), only the reward ignores it"
    (strict,) = routing_rewards([output], gold_query, [gold_expert], minilm, strict_none_pairing=True)
    assert strict.reward == 0.0


@pytest.mark.unit
def test_the_official_values_of_the_none_rule_cases_by_hand():
    parsed = parse_routing(_routing("Who directed Alien?", "none"))
    assert routing_reward_from_parts(parsed, ["text retriever"], 1.0) == pytest.approx(0.5)  # official 0.500
    assert routing_reward_from_parts(parsed, ["none"], 0.108) == pytest.approx(0.554)  # official 0.554
    empty = parse_routing(_routing("", "text retriever"))
    assert routing_reward_from_parts(empty, ["text retriever"], 0.022) == pytest.approx(0.511)  # official 0.511
    assert routing_reward_from_parts(empty, ["text retriever"], 0.022, strict_none_pairing=True) == 0.0


@pytest.mark.unit
def test_several_gold_experts_compare_with_the_first():
    parsed = parse_routing(_routing("q", "table retriever"))
    assert routing_reward_from_parts(parsed, ["table retriever", "text retriever"], 0.5) == pytest.approx(0.75)
    assert routing_reward_from_parts(parsed, ["text retriever", "table retriever"], 0.5) == pytest.approx(0.25)


@pytest.mark.integration
def test_routing_none_step_against_a_none_gold(minilm):
    scored = routing_rewards([_routing("None", "none")], "none", ["none"], minilm)
    assert scored[0].reward == pytest.approx(1.0, abs=1e-5)


@pytest.mark.unit
def test_a_group_where_nothing_parses_needs_no_embedding():
    class Refuses:
        def embed(self, texts):
            raise AssertionError("not called")

    assert [s.reward for s in routing_rewards(["x", "y"], "q", ["text retriever"], Refuses())] == [0.0, 0.0]


@pytest.mark.unit
def test_answer_reward_rules_by_hand():
    assert answer_reward_from_recall(1.0, ["ridley scott"]) == 1.0
    assert answer_reward_from_recall(0.5, ["ridley scott"]) == 0.0, "short single gold needs full recall"
    long_gold = ["he was born in south shields in england"]
    assert answer_reward_from_recall(0.5, long_gold) == 0.5, "long single gold: the recall itself"
    assert answer_reward_from_recall(0.5, ["a", "b"]) == 0.0 and answer_reward_from_recall(1.0, ["a", "b"]) == 1.0


@pytest.mark.integration
def test_answer_rewards_end_to_end():
    golds = ["Ridley Scott"]
    scored = answer_rewards(
        [
            "<think>ter-0 says so</think><answer>Ridley Scott</answer>",
            "<think>x</think><answer>Scott</answer>",
            "<answer>Ridley Scott</answer>",
            "<think>x</think>Ridley Scott",
        ],
        golds,
    )
    assert [s.reward for s in scored] == [1.0, 0.0, 0.0, 0.0]
    assert [s.parse_failed for s in scored] == [False, False, True, True]
    long = answer_rewards(
        ["<think>t</think><answer>born in south shields</answer>"], ["he was born in south shields in england"]
    )
    assert long[0].reward == pytest.approx(4 / 8)  # born, in, south, shields of 8 gold tokens


@pytest.mark.integration
def test_on_policy_routing_rewards_stopping_after_the_last_hop_over_searching_again():
    from more_lightning.protocol.records import Episode, Passage, SubStep
    from more_lightning.rewards.on_policy import OnPolicyRewarder, RewardWeights
    from more_lightning.rewards.scoring import MoREStepScorer

    episode = Episode(
        "q1",
        "Who directed the film Heat?",
        golds=("Michael Mann",),
        teacher=[SubStep("who directed the film heat?", "Michael Mann", ("table retriever",))],
    )
    rewarder = OnPolicyRewarder(RewardWeights(reference=1.0, stop=1.0, retrieval=0.5), MoREStepScorer())
    search = parse_routing(_routing("who directed the film heat?", "table retriever"))
    stop = parse_routing(_routing("none", "none"))
    found = [Passage("heat", "[Row] Heat | 1995 | Crime [Title] Films directed by Michael Mann", "table retriever")]

    first = rewarder.routing(episode, 0, [search, stop], [found, []])
    assert first[0] == pytest.approx(1.0 + 0.5), "the hop's gold (cos 1, right expert) and the passage holds the answer"
    assert first[1] < 0.5, "stopping before the hop misses the expert term"

    after = rewarder.routing(episode, 1, [search, stop], [found, []])
    assert after[1] == pytest.approx(1.0), "past the last hop the gold is the stop step: cos 1, expert none"
    assert after[0] < 0.5, "searching again is not paid for what the hop already found"

    no_stop = OnPolicyRewarder(RewardWeights(reference=1.0, stop=0.0, retrieval=0.5), MoREStepScorer())
    assert no_stop.routing(episode, 1, [search, stop], [found, []]) == [0.0, 0.0]
    assert rewarder.routing(episode, 2, [search, stop], [found, []]) == [0.0, 0.0], "no gold two steps past the hop"
