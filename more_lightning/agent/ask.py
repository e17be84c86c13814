"""``ask``: one question answered with routed retrieval, its trace printed."""

from __future__ import annotations

from rich.console import Console

from more_lightning.agent.episodes import EpisodeConfig
from more_lightning.agent.evaluate import build_agent
from more_lightning.data.qa import QASource
from more_lightning.engines.config import EngineConfig
from more_lightning.experts.connection import WeaviateConfig
from more_lightning.experts.weaviate_expert import WeaviateExpert
from more_lightning.policy.generation import SamplingConfig
from more_lightning.policy.loading import PolicyConfig
from more_lightning.protocol.images import ImageError, image_problem


def ask(
    question: str,
    policy: PolicyConfig,
    experts: list[WeaviateExpert],
    image: str | None = None,
    weaviate: WeaviateConfig = WeaviateConfig(),
    episode: EpisodeConfig = EpisodeConfig(),
    sampling: SamplingConfig = SamplingConfig(greedy=True, max_new_tokens=128),
    seed: int = 0,
    datasets: list[QASource] | None = None,
    batch_size: int = 1,
    output_dir: str | None = None,
    engine: EngineConfig = EngineConfig(),
) -> int:
    """Answer one question with routed retrieval and print the trace (steps, experts, passages, answers).

    Args:
        question: the question.
        policy: the policy; set ``policy.adapter`` to use a trained adapter.
        experts: the retrieval experts (already indexed).
        image: an image file for a visual question.
        weaviate: how to reach Weaviate.
        episode: step limit, retrieval depth, retries.
        sampling: decoding (greedy by default).
        seed: sampling seed.
        datasets: ignored (lets ask share evaluate's config file).
        batch_size: ignored (as above).
        output_dir: ignored (as above).
        engine: who samples: ``hf`` (in this process) or ``vllm`` (a vLLM server).
    """
    from more_lightning.agent.trace_view import print_trace
    from more_lightning.protocol.records import Episode

    if image is not None and (problem := image_problem(image)):
        raise ImageError(f"--image {image}: {problem}")
    runner, pool = build_agent(policy, experts, weaviate, episode, sampling, seed, 1, engine)
    try:
        (trace,) = runner.run([Episode("ask", question, image)])
    finally:
        pool.close()
    print_trace(trace, Console())
    return 0
