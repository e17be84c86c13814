"""``synthesize``: Step-GRPO training data from a user's own QA pairs.

A teacher policy runs MoRE episodes on each question against the live experts, up to ``attempts`` times (sampled
decoding), and the first attempt that passes the filter the official data was built with is kept: its final answer's
F1-Recall reaches ``min_f1_recall`` (official: 1), every step followed the protocol, and — with
``require_gold_expert`` — its first routing step chose the question's gold expert where the row names one. A kept
episode is written as one row of the official Step-GRPO JSONL (``{images, steps}``): each routing step
``{query, retriever}`` with the prompt the teacher saw, each sub-answer, the ``none`` step where the teacher stopped
early, and the final answer with the golds, exactly what ``fit`` (``data.trajectories``) and the official reader read.

Resumable and idempotent, as ``index`` is: questions go in fixed chunks of ``batch_size``, each chunk sampled under
its own seed; after a chunk its rows are appended and ``<output>.progress.json`` (atomically replaced) records the
file's length and every question tried. A killed run truncates the file to the recorded length and goes on with the
next chunk, so it ends with the file a clean run writes; re-running a finished synthesis adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from more_lightning.agent.episodes import UNPARSED_ROUTE, EpisodeConfig, EpisodeTrace
from more_lightning.agent.evaluate import build_agent, read_datasets
from more_lightning.data.qa import QAExample, QASource
from more_lightning.engines.config import EngineConfig
from more_lightning.errors import SettingError, UserError
from more_lightning.experts.connection import WeaviateConfig
from more_lightning.experts.weaviate_expert import WeaviateExpert
from more_lightning.policy.generation import SamplingConfig
from more_lightning.policy.loading import PolicyConfig
from more_lightning.progress import progress_bar
from more_lightning.protocol.experts import NONE_EXPERT
from more_lightning.protocol.records import StepPrompt
from more_lightning.rewards.metric import answer_recall

PROGRESS_VERSION = 1


class SynthesisMismatch(UserError, ValueError):
    """The output file belongs to another synthesis (or to none): continuing it would mix two datasets."""


@dataclass(frozen=True)
class KeepFilter:
    """Which teacher episodes become training data."""

    min_f1_recall: float = 1.0
    """The final answer's F1-Recall against the golds must reach this (official: 1, a full recall)."""
    require_gold_expert: bool = False
    """Also require the first routing step to choose the question's gold expert, where its row names one."""

    def keeps(self, trace: EpisodeTrace) -> bool:
        if not complete(trace) or answer_recall(trace.final_answer, list(trace.episode.golds)) < self.min_f1_recall:
            return False
        gold = trace.episode.gold_expert
        return not (self.require_gold_expert and gold) or trace.first_route == gold


def complete(trace: EpisodeTrace) -> bool:
    """Every step of the episode followed the protocol: routing steps parsed (ended by a parsed ``none`` or the step
    limit), every sub-answer and the final answer parsed."""
    if trace.first_route == UNPARSED_ROUTE or trace.final_prompt is None or not trace.final_answer:
        return False
    routed = all(s.routing_prompt is not None and s.answer_prompt is not None and s.answer for s in trace.steps)
    return routed and (trace.stop_prompt is not None or len(trace.steps) > 0)


def _row(prompt: StepPrompt, answer) -> dict:
    return {"step_type": prompt.step_type, "system": prompt.system, "problem": prompt.problem, "answer": answer}


def official_row(trace: EpisodeTrace) -> dict:
    """A complete teacher episode as one row of the official Step-GRPO JSONL."""
    steps = []
    for step in trace.steps:
        steps.append(_row(step.routing_prompt, {"query": step.sub_question, "retriever": list(step.experts)}))
        steps.append(_row(step.answer_prompt, step.answer))
    if trace.stop_prompt is not None:
        steps.append(_row(trace.stop_prompt, {"query": NONE_EXPERT, "retriever": [NONE_EXPERT]}))
    steps.append(_row(trace.final_prompt, list(trace.episode.golds)))
    image = trace.episode.image
    return {"images": [image] if image else [], "steps": steps}


@dataclass
class QuestionRecord:
    """What synthesis did with one question (kept in the progress file; the stats are made from these)."""

    id: str
    dataset: str
    kept: bool
    attempts: int
    """Attempts run: up to the first kept one, or all of them."""
    expert: str = ""
    """The first route of the kept episode."""
    steps: int = 0
    """Routing steps (sub-questions) of the kept episode."""


@dataclass
class Progress:
    """The progress file: the settings it belongs to, the output's committed length, every question tried."""

    settings: str
    output_bytes: int = 0
    chunks_done: int = 0
    questions: list[QuestionRecord] = field(default_factory=list)
    seconds: float = 0.0

    @staticmethod
    def path_for(output: Path) -> Path:
        return output.with_name(output.name + ".progress.json")

    @classmethod
    def load(cls, output: Path, settings: str) -> Progress:
        path = cls.path_for(output)
        if not path.exists():
            if output.exists() and output.stat().st_size:
                raise SynthesisMismatch(
                    f"{output} exists and no synthesis progress file is beside it: choose another --output, "
                    "or pass --overwrite true to start it again"
                )
            return cls(settings)
        state = json.loads(path.read_text())
        if state.get("version") != PROGRESS_VERSION or state.get("settings") != settings:
            raise SynthesisMismatch(
                f"{output} was synthesised with other settings (policy, experts, questions, filter or sampling): "
                "choose another --output, or pass --overwrite true to start it again"
            )
        questions = [QuestionRecord(**q) for q in state["questions"]]
        return cls(settings, state["output_bytes"], state["chunks_done"], questions, state["seconds"])

    def save(self, output: Path) -> None:
        state = {
            "version": PROGRESS_VERSION,
            "settings": self.settings,
            "output_bytes": self.output_bytes,
            "chunks_done": self.chunks_done,
            "seconds": self.seconds,
            "questions": [vars(q) for q in self.questions],
        }
        path = self.path_for(output)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, path)


def settings_key(settings: dict) -> str:
    """A digest of what decides the output (a resumed run must continue the same synthesis)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def synthesize_chunk(runner, examples: Sequence[QAExample], attempts: int, keep: KeepFilter, seed: int):
    """Up to ``attempts`` rounds of episodes over ``examples`` (each round only the questions not yet kept), sampled
    under ``seed``; returns the rows kept, in question order, and a record per question."""
    runner.sampler.seed, runner.sampler.calls = seed, 0
    kept: dict[int, EpisodeTrace] = {}
    tried = [0] * len(examples)
    for _ in range(attempts):
        pending = [i for i in range(len(examples)) if i not in kept]
        if not pending:
            break
        for i, trace in zip(pending, runner.run([examples[i].to_episode() for i in pending]), strict=True):
            tried[i] += 1
            if keep.keeps(trace):
                kept[i] = trace
    rows, records = [], []
    for i, example in enumerate(examples):
        trace = kept.get(i)
        if trace is not None:
            rows.append(official_row(trace))
        records.append(
            QuestionRecord(
                example.id,
                example.dataset,
                trace is not None,
                tried[i],
                trace.first_route if trace else "",
                len(trace.steps) if trace else 0,
            )
        )
    return rows, records


def synthesize_questions(
    runner,
    examples: Sequence[QAExample],
    output: Path,
    attempts: int,
    keep: KeepFilter,
    batch_size: int,
    seed: int,
    settings: str,
    progress_bar=None,
) -> Progress:
    """Synthesise (or resume synthesising) ``output`` from ``examples``; see the module docstring."""
    output.parent.mkdir(parents=True, exist_ok=True)
    state = Progress.load(output, settings)
    with open(output, "ab") as handle:
        handle.truncate(state.output_bytes)  # drop rows of a chunk a killed run did not commit
    chunks = [examples[start : start + batch_size] for start in range(0, len(examples), batch_size)]
    task = None
    if progress_bar is not None:
        done = len(state.questions)
        task = progress_bar.add_task(_progress_text(state), total=len(examples), completed=done, start_count=done)
    for index in range(state.chunks_done, len(chunks)):
        began = time.monotonic()
        rows, records = synthesize_chunk(runner, chunks[index], attempts, keep, seed + 1_000_003 * index)
        with open(output, "ab") as handle:
            handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode())
            handle.flush()
            os.fsync(handle.fileno())
            state.output_bytes = handle.tell()
        state.chunks_done, state.seconds = index + 1, state.seconds + time.monotonic() - began
        state.questions += records
        state.save(output)
        if task is not None:
            progress_bar.update(task, advance=len(records), description=_progress_text(state))
    return state


def _progress_text(state: Progress) -> str:
    kept = sum(q.kept for q in state.questions)
    return f"synthesize: kept {kept}/{len(state.questions)} tried"


@dataclass
class SynthesisStats:
    """The stats file and table: how many questions were tried and kept, where, and at what cost."""

    tried: int
    kept: int
    keep_rate: float
    kept_per_dataset: dict[str, str]
    kept_per_expert: dict[str, int]
    attempts_per_kept: float
    mean_steps: float
    seconds: float
    seconds_per_question: float
    bad_rows: int

    @classmethod
    def of(cls, state: Progress, bad_rows: int) -> SynthesisStats:
        questions = state.questions
        kept = [q for q in questions if q.kept]
        tried_per = Counter(q.dataset for q in questions)
        kept_per = Counter(q.dataset for q in kept)
        return cls(
            tried=len(questions),
            kept=len(kept),
            keep_rate=round(len(kept) / max(len(questions), 1), 4),
            kept_per_dataset={name: f"{kept_per[name]}/{count}" for name, count in tried_per.items()},
            kept_per_expert=dict(Counter(q.expert for q in kept)),
            attempts_per_kept=round(sum(q.attempts for q in kept) / max(len(kept), 1), 3),
            mean_steps=round(sum(q.steps for q in kept) / max(len(kept), 1), 3),
            seconds=round(state.seconds, 1),
            seconds_per_question=round(state.seconds / max(len(questions), 1), 2),
            bad_rows=bad_rows,
        )

    def table(self) -> Table:
        table = Table(title="synthesize: teacher episodes kept")
        table.add_column("")
        table.add_column("value", justify="right")
        rows = [
            ("questions tried", str(self.tried)),
            ("kept", f"{self.kept} ({100 * self.keep_rate:.1f} %)"),
            *((f"kept, {name}", value) for name, value in self.kept_per_dataset.items()),
            *((f"kept, first route {expert}", str(n)) for expert, n in self.kept_per_expert.items()),
            ("attempts per kept question", f"{self.attempts_per_kept:.2f}"),
            ("routing steps per kept episode", f"{self.mean_steps:.2f}"),
            ("bad rows skipped", str(self.bad_rows)),
            ("wall time", f"{self.seconds:.0f} s ({self.seconds_per_question:.2f} s / question)"),
        ]
        for name, value in rows:
            table.add_row(name, value)
        return table


def stats_path(output: Path) -> Path:
    return output.with_name(output.name + ".stats.json")


def write_stats(stats: SynthesisStats, output: Path) -> Path:
    path = stats_path(output)
    path.write_text(json.dumps(vars(stats), indent=2) + "\n")
    return path


def synthesize(
    policy: PolicyConfig,
    experts: list[WeaviateExpert],
    datasets: list[QASource],
    output: str,
    attempts: int = 4,
    min_f1_recall: float = 1.0,
    require_gold_expert: bool = False,
    weaviate: WeaviateConfig = WeaviateConfig(),
    episode: EpisodeConfig = EpisodeConfig(),
    sampling: SamplingConfig = SamplingConfig(),
    seed: int = 0,
    batch_size: int = 8,
    overwrite: bool = False,
    engine: EngineConfig = EngineConfig(),
) -> int:
    """Write Step-GRPO training data (the official JSONL) from QA pairs: a teacher policy runs MoRE episodes against
    the experts and the episodes whose final answer recalls the gold are kept (resumable; a stats table at the end).

    Args:
        policy: the teacher (any model or adapter a policy config names).
        experts: the retrieval experts (already indexed).
        datasets: the QA files whose questions to synthesise from (an optional ``expert`` per row is its gold expert).
        output: the JSONL file to write (``fit``'s ``data.trajectories``); ``<output>.progress.json`` and
            ``<output>.stats.json`` go beside it.
        attempts: sampled episodes per question at most; the first one that passes is kept.
        min_f1_recall: keep an episode whose final answer reaches this F1-Recall (official: 1).
        require_gold_expert: also require the first routing step to choose the row's gold expert, where it names one.
        weaviate: how to reach Weaviate.
        episode: step limit, retrieval depth, retries, prompts (``episode.router`` must be ``policy``).
        sampling: the teacher's decoding (official: T 1.0, top-k 20; greedy makes every attempt the same).
        seed: sampling seed (each chunk of ``batch_size`` questions has its own, so a resumed run writes the same).
        batch_size: questions run together (one chunk: the unit a killed run resumes from).
        overwrite: start ``output`` again from nothing.
        engine: who samples: ``hf`` (in this process) or ``vllm`` (a vLLM server).
    """
    if episode.router != "policy":
        raise SettingError(
            f"synthesize runs the teacher's own routing: episode.router must be policy, not {episode.router!r}"
        )
    if attempts < 1:
        raise SettingError("attempts must be at least 1")
    if sampling.greedy and attempts > 1:
        print(f"note: greedy decoding makes every attempt the same; running 1 attempt per question, not {attempts}")
        attempts = 1
    target = Path(output)
    if overwrite:
        for path in (target, Progress.path_for(target)):
            path.unlink(missing_ok=True)
    examples, skipped = read_datasets(datasets, report_bad_rows=True)
    keep = KeepFilter(min_f1_recall, require_gold_expert)
    settings = {
        "policy": asdict(policy),
        "experts": [(type(e).__name__, asdict(e.spec), e.collection_name) for e in experts],
        "questions": [e.id for e in examples],
        "keep": asdict(keep),
        "attempts": attempts,
        "episode": asdict(episode),
        "sampling": asdict(sampling),
        "seed": seed,
        "batch_size": batch_size,
    }
    runner, pool = build_agent(policy, experts, weaviate, episode, sampling, seed, batch_size, engine)
    try:
        with progress_bar() as bar:
            state = synthesize_questions(
                runner, examples, target, attempts, keep, batch_size, seed, settings_key(settings), bar
            )
    finally:
        pool.close()
    stats = SynthesisStats.of(state, sum(skipped.values()))
    Console().print(stats.table())
    print(f"Wrote {stats.kept} trajectories to {target} (stats: {write_stats(stats, target)})")
    if stats.tried and not stats.kept:  # an empty file would only fail later, in fit, as "no usable training data"
        print(f"warning: {nothing_kept(stats.tried, keep, attempts, sampling.greedy)}", file=sys.stderr)
    return 0


def nothing_kept(tried: int, keep: KeepFilter, attempts: int, greedy: bool) -> str:
    """Why a run kept no episode, and what to change."""
    rule = f"followed the protocol and reached F1-Recall >= {keep.min_f1_recall}"
    rule += " with the gold expert routed first" if keep.require_gold_expert else ""
    changes = ["a stronger teacher (policy.model, or a warm-started policy.adapter)"]
    if greedy or attempts < 2:
        changes.append("more tries per question (--attempts 4 with sampled decoding, --sampling.greedy false)")
    if keep.min_f1_recall > 0.5:
        changes.append("a looser filter (--min_f1_recall 0.5)")
    if keep.require_gold_expert:
        changes.append("--require_gold_expert false")
    return (
        f"synthesize kept 0 of {tried} questions: no teacher episode {rule}. The teacher is too weak for these "
        f"questions or the filter too strict; read a few episodes with `ask`, then try " + "; or ".join(changes) + "."
    )
