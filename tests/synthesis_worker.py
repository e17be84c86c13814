"""A scripted teacher for ``synthesize``, and a process that synthesises with it (the resume test kills it).

(A stand-in *model* only: the experts it queries are the real Weaviate ones.)

    python tests/synthesis_worker.py HTTP_PORT GRPC_PORT QUESTIONS OUTPUT DELAY_SECONDS
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from more_lightning.policy.sampler import SampledGroup

CORPUS = Path(__file__).resolve().parent / "fixtures" / "corpus"


class ScriptedTeacher:
    """Routes every question to ``expert`` with the question as its sub-question, answers the sub-question with the
    passages' first words, then stops; the final answer is ``finals[question][attempt]`` (the last one repeating), or
    with ``seeded`` the gold or not by a draw seeded by ``seed`` and ``calls``, as a sampled model's."""

    def __init__(self, golds: dict[str, str], finals=None, expert="text retriever", seeded=False, delay=0.0):
        self.golds, self.finals, self.expert, self.seeded, self.delay = golds, finals or {}, expert, seeded, delay
        self.seed, self.calls = 0, 0
        self.attempt: dict[str, int] = {}

    def _final(self, question: str) -> str:
        if self.seeded:
            right = random.Random(self.seed * 1000 + self.calls).random() < 0.3
            return self.golds[question] if right else "a wrong answer"
        attempt = self.attempt.get(question, 0)
        self.attempt[question] = attempt + 1
        choices = self.finals.get(question, [self.golds[question]])
        return choices[min(attempt, len(choices) - 1)]

    def sample(self, prompts, n: int = 1):
        time.sleep(self.delay)
        self.calls += 1
        groups = []
        for prompt in prompts:
            question = prompt.problem.split("\n")[0].removeprefix("Origin question: ")
            if prompt.step_type == "ret" and "Sub-question1" in prompt.problem:
                text = "<think>enough</think><sub-question>none</sub-question><ret>none</ret>"
            elif prompt.step_type == "ret":
                text = f"<think>look it up</think><sub-question>{question}</sub-question><ret>{self.expert}</ret>"
            elif "Give me the answer" in prompt.problem:
                text = "<think>from the passages</think><answer>the passages say so</answer>"
            else:
                text = f"<think>all steps</think><answer>{self._final(question)}</answer>"
            groups.append(SampledGroup(prompt, [text] * n))
        return groups


def experts() -> list:
    from more_lightning.experts.table import TableExpert
    from more_lightning.experts.text import TextExpert

    return [
        TextExpert(collection="SynText", corpus=str(CORPUS / "passages.jsonl")),
        TableExpert(collection="SynTables", corpus=str(CORPUS / "tables.jsonl")),
    ]


def main() -> None:
    from more_lightning.agent.episodes import EpisodeConfig, EpisodeRunner
    from more_lightning.agent.synthesize import KeepFilter, synthesize_questions
    from more_lightning.data.qa import read_qa_jsonl
    from more_lightning.experts.connection import WeaviateConfig
    from more_lightning.experts.pool import ExpertPool

    http, grpc, questions, output, delay = sys.argv[1:6]
    examples = read_qa_jsonl(questions, "2wiki")
    teacher = ScriptedTeacher({e.question: e.golds[0] for e in examples}, seeded=True, delay=float(delay))
    weaviate = WeaviateConfig(mode="local", http_port=int(http), grpc_port=int(grpc))
    with ExpertPool(experts(), weaviate) as pool:
        runner = EpisodeRunner(teacher, pool, EpisodeConfig(max_steps=2))
        synthesize_questions(runner, examples, Path(output), 3, KeepFilter(), 1, 0, "scripted")


if __name__ == "__main__":
    main()
