"""The demo's questions that need two experts in turn, built from its corpora (pure functions over rows and passages).

- table → text: a film's row in the table expert names its director (the table's title, "Films directed by …"); the
  director's Wikipedia lead in the text expert gives their nationality ("What nationality was the director of the
  film Vertigo?"). The packaged leads leave out the parenthesised birth dates, so a birth year is not there to ask;
  the nationality is, in the lead's first sentence ("… was an English filmmaker").
- image → text: an image's caption in the text-image expert names the shape's colour or kind; that colour's or
  shape's Wikipedia lead gives a fact about it (a colour's dominant wavelength, a shape's number of sides).

A question whose hop's answer is not in its evidence as an episode reads it (cut to ``episode.passage_chars``) is
not answerable from the corpora: :meth:`DemoQuestion.answerable` tells, and the demo data keeps only those that are.
The sub-questions are the first (trained) phrasings of their single-hop types (``demo/phrasings.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from more_lightning.demo.phrasings import FILM_DIRECTOR, PERSON_NATIONALITY, SHAPE_COLOUR, SHAPE_KIND
from more_lightning.demo.teacher import DemoQuestion, Hop
from more_lightning.protocol.records import Passage

TABLE_TO_TEXT, IMAGE_TO_TEXT = "two-hop table→text", "two-hop image→text"
NATIONALITY = re.compile(r"\b(?:is|was) an? ((?:[A-Z][\w'-]*)(?:(?: and | )[A-Z][\w'-]*)*)")
"""The first sentence of a person's lead: "… was an Italian-born American film director" → ``Italian-born American``."""


def nationality(lead: str) -> str | None:
    """The nationality the first sentence of a person's Wikipedia lead states, or ``None``."""
    match = NATIONALITY.search(lead.split(". ", 1)[0])
    return match.group(1) if match else None


def director_nationality_question(film: str, director: str, film_row: Passage, lead: Passage) -> DemoQuestion | None:
    """ "What nationality was the director of the film ``film``?": the table passage holding the film's row names the
    director (hop 1), the director's lead their nationality (hop 2); ``None`` when the lead states none."""
    answer = nationality(lead.text)
    if answer is None:
        return None
    hops = (
        Hop(FILM_DIRECTOR.phrasings[0].format(film=film), director, film_row, needs=(film,)),
        Hop(PERSON_NATIONALITY.phrasings[0].format(person=director), answer, lead),
    )
    question = f"What nationality was the director of the film {film}?"
    return DemoQuestion(question, answer, hops, TABLE_TO_TEXT, "two-hop-director-nationality/0")


@dataclass(frozen=True)
class LeadFact:
    """A fact a Wikipedia lead states about what an image shows (a colour, a shape), and the questions asking it."""

    name: str
    about: str
    """The image fact the first hop reads from the caption: ``colour`` or ``shape``."""
    question: str
    """The two-hop question, about the image."""
    sub_question: str
    """The second hop, about the thing (``{}``: the colour or shape)."""
    pattern: re.Pattern
    """Finds the answer in the thing's lead (group 1)."""


LEAD_FACTS = (
    LeadFact(
        "colour-wavelength",
        "colour",
        "What is the dominant wavelength of light of the colour of the shape in this image?",
        "What is the dominant wavelength of {} light?",
        re.compile(
            r"dominant wavelength of (?:approximately |roughly )?(\d+\s?[–-]\s?\d+ ?(?:nanometers|nanometres|nm))"
        ),
    ),
    LeadFact(
        "shape-sides",
        "shape",
        "How many sides does the shape in this image have?",
        "How many sides does a {} have?",
        re.compile(r"\b(three|four|five|six|\d+) (?:straight )?sides"),
    ),
)
"""The lead facts the image → text questions ask."""


def image_fact_questions(
    image_id: str, caption: Passage, colour: str, shape: str, lead_of: Callable[[str], Passage | None]
) -> list[DemoQuestion]:
    """The image → text questions about an image whose caption names its shape's ``colour`` and ``shape``: one per
    :data:`LEAD_FACTS` entry whose thing has a lead (``lead_of``, by title) stating the fact."""
    questions = []
    for fact in LEAD_FACTS:
        thing = colour if fact.about == "colour" else shape
        lead = lead_of(thing.capitalize())
        found = fact.pattern.search(lead.text) if lead else None
        if lead is None or found is None:
            continue
        first = (SHAPE_COLOUR if fact.about == "colour" else SHAPE_KIND).phrasings[0]
        hops = (Hop(first, thing, caption), Hop(fact.sub_question.format(thing), found.group(1), lead))
        questions.append(
            DemoQuestion(fact.question, found.group(1), hops, IMAGE_TO_TEXT, f"two-hop-{fact.name}/0", image_id)
        )
    return questions
