"""Several phrasings per question type of the demo, the last ones of each type held out from training.

Every template question of the demo is written with one phrasing of its type, and its row records which
(``template``: ``"<type>/<index>"``). Training questions only use a type's first phrasings; the validation
entities are asked once with those (the ``val_*`` files) and once with a held-out phrasing (the
``val_heldout_phrasing*`` files), so routing accuracy on phrasings the policy never saw can be measured against
the same entities asked the trained way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from more_lightning.demo.teacher import IMAGE, TABLE, TEXT, DemoQuestion, Hop
from more_lightning.protocol.records import Passage


@dataclass(frozen=True)
class QuestionType:
    """One kind of template question: its gold expert and its phrasings (``str.format`` templates)."""

    name: str
    expert: str
    phrasings: tuple[str, ...]
    held_out: int = 2
    """How many of the last phrasings are only asked in the held-out-phrasing validation files."""

    def __post_init__(self) -> None:
        if not 0 < self.held_out < len(self.phrasings):
            raise ValueError(f"{self.name}: hold out at least one phrasing and train on at least one")

    def ask(
        self,
        rng: random.Random,
        answer: str,
        evidence: Passage,
        source: str,
        held_out: bool = False,
        image_id: str | None = None,
        needs: tuple[str, ...] = (),
        **fields: str,
    ) -> DemoQuestion:
        """A single-hop question with a phrasing drawn by ``rng`` among the trained (or the held-out) ones;
        ``needs``: what else its evidence must hold (:class:`Hop`)."""
        if evidence.expert != self.expert:
            raise ValueError(f"{self.name} questions are answered by the {self.expert}, not the {evidence.expert}")
        cut = len(self.phrasings) - self.held_out
        index = rng.randrange(cut, len(self.phrasings)) if held_out else rng.randrange(cut)
        question = self.phrasings[index].format(**fields)
        return DemoQuestion(
            question, answer, (Hop(question, answer, evidence, needs),), source, f"{self.name}/{index}", image_id
        )


FILM_DIRECTOR = QuestionType(
    "film-director",
    TABLE,
    (
        "Who directed the film {film}?",
        "Who was the director of the movie {film}?",
        "Which filmmaker made {film}?",
        "Name the director of the film {film}.",
        "{film} was directed by whom?",
        "Who is credited as the director of {film}?",
    ),
)
FILM_YEAR = QuestionType(
    "film-year",
    TABLE,
    (
        "In which year was the film {film} released?",
        "When did the movie {film} come out?",
        "What year was {film} released in?",
        "Give the release year of the film {film}.",
        "{film} premiered in which year?",
        "In what year did the movie {film} first appear?",
    ),
)
FILM_GENRE = QuestionType(
    "film-genre",
    TABLE,
    (
        "What genre is the film {film}?",
        "Which genre does the movie {film} belong to?",
        "What kind of film is {film}?",
        "{film} is a film of which genre?",
        "Classify the movie {film} by its genre.",
    ),
)
DATASET_TOPIC = QuestionType(
    "dataset-topic",
    TABLE,
    (
        "What is the R dataset {item} from the {package} package about?",
        "What does the dataset {package}::{item} record?",
        "Which data does the table {item} of the R package {package} hold?",
        "Describe the {item} data shipped with the R package {package}.",
        "What is the title of the {package} dataset {item}?",
    ),
)
PERSON_NATIONALITY = QuestionType(
    "person-nationality",
    TEXT,
    (
        "What nationality was {person}?",
        "What was the nationality of {person}?",
        "Which nationality did {person} have?",
        "{person} was of which nationality?",
        "Give the nationality of {person}.",
    ),
)
PICTURE_CONTENT = QuestionType(
    "picture-content",
    IMAGE,
    (
        "What does this picture show?",
        "What is in this image?",
        "What can be seen in this photo?",
        "Describe what this picture shows.",
        "What is the subject of this image?",
    ),
)
SHAPE_COLOUR = QuestionType(
    "shape-colour",
    IMAGE,
    (
        "What colour is the shape in this image?",
        "Which colour is the shape shown here?",
        "What is the colour of the figure in this picture?",
        "Name the colour of the shape in the image.",
        "The shape in this picture is painted in which colour?",
    ),
)
SHAPE_KIND = QuestionType(
    "shape-kind",
    IMAGE,
    (
        "What shape is in this image?",
        "Which geometric shape does this picture show?",
        "What is the shape drawn here?",
        "Name the shape in this image.",
        "What form does the figure in this picture have?",
    ),
)
