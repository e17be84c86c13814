"""Live episodes against the real Weaviate experts: the runner, on-policy fit, evaluate and ask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from more_lightning.agent.episodes import EpisodeConfig, EpisodeRunner
from more_lightning.agent.eval_reports import summarise, write_outputs
from more_lightning.data.qa import read_qa_jsonl
from more_lightning.experts.base import ExpertUnavailable
from more_lightning.experts.connection import WeaviateConfig
from more_lightning.experts.pool import ExpertPool
from more_lightning.experts.server import WeaviateServer
from more_lightning.experts.table import TableExpert
from more_lightning.experts.text import TextExpert
from more_lightning.experts.text_image import TextImageExpert
from more_lightning.policy.sampler import SampledGroup
from more_lightning.protocol.records import Episode
from more_lightning.rewards.metric import answer_recall

pytestmark = [pytest.mark.integration, pytest.mark.weaviate]
ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fixtures" / "corpus"


class ScriptedPolicy:
    """Stands in for a trained policy: answers each kind of step prompt with a fixed script.

    (Allowed here: it replaces a model whose outputs we need to control, not a part a user runs.)
    """

    def __init__(
        self, routes: list[str], answer: str = "ridley scott", final: str = "Ridley Scott", broken_first: int = 0
    ) -> None:
        self.routes = routes
        self.answer = answer
        self.final = final
        self.broken_first = broken_first
        self.prompts = []

    def sample(self, prompts, n: int = 1):
        groups = []
        for prompt in prompts:
            self.prompts.append(prompt)
            if self.broken_first:
                self.broken_first -= 1
                text = "I am not following the format"
            elif prompt.step_type == "ret":
                step = prompt.problem.count("Sub-question")
                sub_question, expert = self.routes[min(step, len(self.routes) - 1)].split("|")
                text = f"<think>next</think><sub-question>{sub_question}</sub-question><ret>{expert}</ret>"
            elif "Give me the answer" in prompt.problem:
                text = f"<think>from the passages</think><answer>{self.answer}</answer>"
            else:
                text = f"<think>all steps</think><answer>{self.final}</answer>"
            groups.append(SampledGroup(prompt, [text] * n))
        return groups


def tiny_experts() -> list:
    return [
        TextExpert(collection="EpText", corpus=str(CORPUS / "passages.jsonl")),
        TextImageExpert(
            collection="EpImages",
            corpus=str(CORPUS / "image_captions.jsonl"),
            image_folder=str(CORPUS / "images"),
            alpha=0.3,
        ),
        TableExpert(collection="EpTables", corpus=str(CORPUS / "tables.jsonl")),
    ]


def local(server: WeaviateServer) -> WeaviateConfig:
    return WeaviateConfig(mode="local", http_port=server.ports.http, grpc_port=server.ports.grpc)


@pytest.fixture(scope="module")
def pool(weaviate_server):
    with ExpertPool(tiny_experts(), local(weaviate_server)) as opened:
        yield opened


ALIEN = Episode("q1", "Who directed the film Alien, and when was he born?", golds=("Ridley Scott",), dataset="t")


def test_the_chosen_expert_is_queried_and_its_passages_reach_the_answer_prompt(pool):
    policy = ScriptedPolicy(["who directed the film alien?|text retriever", "none|none"])
    (trace,) = EpisodeRunner(policy, pool).run([ALIEN])
    assert len(trace.steps) == 1 and trace.steps[0].experts == ("text retriever",)
    assert {p.expert for p in trace.steps[0].passages} == {"text retriever"}
    assert trace.steps[0].passages[0].id == "alien"
    answer_prompt = next(p for p in policy.prompts if "Give me the answer" in p.problem)
    assert answer_prompt.problem.startswith(
        "According to the related information searched, `ter` means this info is from text retriever, `tir` means "
        "this info is from text image retriever, `tar` means this info is from table retriever:ter-0: Alien (film) "
        "Alien is a 1979 science fiction horror film directed by Ridley Scott.\nter-1: "
    )
    assert answer_prompt.problem.count("\nter-") == 4, "top 5 passages per expert"
    assert answer_prompt.problem.endswith(
        "\n\n\n Give me the answer(with the format <answer></answer>) to the Question: who directed the film alien?"
    )
    final_prompt = policy.prompts[-1]
    assert final_prompt.problem.endswith(
        "Sub-question1: who directed the film alien?\nAnswer1: ridley scott\n"
        "Now, give me the final answer of the origin question: " + ALIEN.question
    )
    assert trace.final_answer == "ridley scott" and trace.retrieval_calls == 1


def test_episodes_stop_after_max_steps_and_batch_searches_per_expert(pool):
    policy = ScriptedPolicy(["what is the population of kyrgyzstan?|table retriever"])
    episodes = [ALIEN, Episode("q2", "How many people live in Kyrgyzstan?", golds=("6.6 million",))]
    calls_before = pool.calls
    traces = EpisodeRunner(policy, pool, EpisodeConfig(max_steps=3)).run(episodes)
    assert [len(t.steps) for t in traces] == [3, 3]
    assert pool.calls - calls_before == 3, "one batched search per expert per step, across episodes"
    assert traces[1].steps[0].passages[0].id == "populations"


def test_stop_on_repeat_ends_an_episode_at_its_first_repeated_search_without_searching_again(pool):
    repeating = ["what is the population of kyrgyzstan?|table retriever"]
    traces = EpisodeRunner(ScriptedPolicy(repeating), pool, EpisodeConfig(max_steps=3, stop_on_repeat=True)).run(
        [ALIEN]
    )
    (trace,) = traces
    assert trace.routes == ["table retriever", "table retriever"], "the repeat is recorded as the policy chose it"
    assert len(trace.steps) == 1 and trace.retrieval_calls == 1 and trace.ended_on_repeat
    assert trace.final_answer == "ridley scott"
    moving_on = ScriptedPolicy(
        ["who directed the film alien?|text retriever", "Who directed the film Alien|table retriever"]
    )
    (trace,) = EpisodeRunner(moving_on, pool, EpisodeConfig(max_steps=2, stop_on_repeat=True)).run([ALIEN])
    assert len(trace.steps) == 2 and trace.retrieval_calls == 2, "another expert for the same sub-question searches"
    assert not trace.ended_on_repeat
    (trace,) = EpisodeRunner(ScriptedPolicy(repeating), pool, EpisodeConfig(max_steps=3)).run([ALIEN])
    assert len(trace.steps) == 3 and trace.retrieval_calls == 3, "off by default: the official loop searches again"


def test_a_batch_says_each_stage_as_it_begins(pool):
    policy = ScriptedPolicy(["who directed the film alien?|text retriever", "none|none"])
    stages = []
    EpisodeRunner(policy, pool, EpisodeConfig(max_steps=3)).run([ALIEN, ALIEN], on_stage=stages.append)
    assert stages == [
        "routing step 1/3, 2 episodes",
        "sub-answers 1/3",
        "routing step 2/3, 2 episodes",
        "final answers",
    ], "the second routing step stops both episodes: no sub-answers, no third step"


def test_an_image_question_uses_the_text_image_expert(pool):
    policy = ScriptedPolicy(["what colour is the circle in the image?|text image retriever", "none|none"])
    image = str(CORPUS / "images" / "red_circle.png")
    (trace,) = EpisodeRunner(policy, pool).run([Episode("v", "What colour is this shape?", image=image)])
    assert trace.steps[0].passages and all(p.expert == "text image retriever" for p in trace.steps[0].passages)
    assert all(p.images == (image,) for p in policy.prompts), "the image goes with every step of a visual question"


def test_unparseable_output_is_retried_then_counted(pool):
    policy = ScriptedPolicy(["none|none"], broken_first=1)
    (trace,) = EpisodeRunner(policy, pool, EpisodeConfig(parse_retries=2)).run([ALIEN])
    assert trace.retries == 1 and trace.parse_failures == 0
    stubborn = ScriptedPolicy(["none|none"], broken_first=3)
    (trace,) = EpisodeRunner(stubborn, pool, EpisodeConfig(parse_retries=2)).run([ALIEN])
    assert trace.retries == 2 and trace.parse_failures == 1 and trace.steps == []


def test_an_expert_with_an_empty_collection_returns_nothing_and_the_episode_goes_on(weaviate_server):
    empty = TextExpert(collection="EpEmpty", corpus=None)
    with ExpertPool([empty], local(weaviate_server), index_if_missing=False) as pool:
        empty.ensure_collection(recreate=True)
        policy = ScriptedPolicy(["who directed alien?|text retriever", "none|none"])
        (trace,) = EpisodeRunner(policy, pool).run([ALIEN])
    assert len(trace.steps) == 1 and trace.steps[0].passages == []
    assert trace.final_answer == "ridley scott"


def test_a_server_that_goes_away_mid_rollout_is_a_clear_error(tmp_path):
    """A failed phase raises before it returns, so the training step's buffer keeps the last good phase."""
    server = WeaviateServer(tmp_path / "data").start()
    experts = [TextExpert(collection="Gone", corpus=str(CORPUS / "passages.jsonl"), retries=2, retry_delay=0.05)]
    pool = ExpertPool(experts, local(server)).open()
    policy = ScriptedPolicy(["who directed alien?|text retriever"])
    runner = EpisodeRunner(policy, pool)
    assert runner.run([ALIEN])[0].steps
    url = server.url
    server.stop()
    try:
        with pytest.raises(ExpertUnavailable, match=f"Weaviate at {url}"):
            runner.run([ALIEN])
    finally:
        pool.close()


def test_evaluation_scores_equal_the_metric_on_its_own_traces(pool, tmp_path):
    examples = list(read_qa_jsonl(CORPUS / "eval_text.jsonl", "2wiki", dataset="tiny-text"))
    policy = ScriptedPolicy(["who directed the film alien?|text retriever", "none|none"], final="Ridley Scott 1928")
    traces = EpisodeRunner(policy, pool).run([e.to_episode() for e in examples])
    (report,) = summarise(traces)
    written = write_outputs(tmp_path, [report], traces, {})
    rows = [json.loads(line) for line in (written / "traces.jsonl").read_text().splitlines()]
    expected = 100 * sum(answer_recall(r["final_answer"], r["golds"]) for r in rows) / len(rows)
    assert report.f1_recall == pytest.approx(expected) and 0 < report.f1_recall < 100
    assert json.loads((written / "summary.json").read_text())["datasets"][0]["f1_recall"] == report.f1_recall
    assert report.expert_usage == {"step1": {"text retriever": len(examples)}}


# --- through the command line, against the embedded server --------------------------------------------------------
def _config_copy(name: str, folder: Path, server: WeaviateServer) -> Path:
    """A shipped config with repo-relative paths made absolute and Weaviate pointed at the test server."""
    text = (ROOT / "configs" / "tiny" / name).read_text().replace("tests/fixtures/", f"{ROOT}/tests/fixtures/")
    config = yaml.safe_load(text)
    weaviate = {"mode": "local", "http_port": server.ports.http, "grpc_port": server.ports.grpc}
    if "data" in config:
        config["data"]["experts"]["init_args"]["weaviate"] = weaviate
    else:
        config["weaviate"] = weaviate
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_on_policy_fit_through_the_cli(weaviate_server, tmp_path, run_cli):
    config = _config_copy("fit_on_policy.yaml", tmp_path, weaviate_server)
    result = run_cli("fit", "--config", str(config), "--trainer.max_steps", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = tmp_path.rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"reward/ret/mean", "reward/ans/mean", "time/retrieval_s", "val/f1_recall"} <= set(header)
    assert any(column.startswith("experts/") for column in header)
    assert (tmp_path / "checkpoints" / "tiny-on-policy-adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.timeout(1200)  # over 600 s on a loaded 2-core machine, as a subprocess or in-process
def test_evaluate_is_reproducible_with_a_seed(weaviate_server, tmp_path, run_cli):
    config = _config_copy("eval.yaml", tmp_path, weaviate_server)
    outputs = []
    for run in ("a", "b"):
        result = run_cli(
            "evaluate",
            "--config",
            str(config),
            "--sampling.greedy",
            "false",
            "--seed",
            "7",
            "--output_dir",
            str(tmp_path / run),
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "F1-Recall" in result.stdout
        traces = [json.loads(line) for line in (tmp_path / run / "traces.jsonl").read_text().splitlines()]
        for trace in traces:
            trace.pop("seconds")  # wall-clock timings differ between runs; everything else must not
        datasets = json.loads((tmp_path / run / "summary.json").read_text())["datasets"]
        for dataset in datasets:
            dataset.pop("seconds_per_question")  # the same: wall-clock
        outputs.append((traces, datasets))
    assert outputs[0] == outputs[1]
    traces = outputs[0][0]
    assert len(traces) == 12 and len({t["final_output"] for t in traces}) > 1, "sampled, not constant"


def test_ask_prints_the_trace_and_rejects_a_missing_image(weaviate_server, tmp_path, run_cli):
    config = _config_copy("eval.yaml", tmp_path, weaviate_server)
    result = run_cli("ask", "--config", str(config), "--question", "Who directed the film Alien?", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Who directed the film Alien?" in result.stdout and "final answer" in result.stdout
    missing = run_cli(
        "ask", "--config", str(config), "--question", "What is this?", "--image", "nope.png", cwd=tmp_path
    )
    assert missing.returncode != 0 and "nope.png: no such file" in missing.stderr
