"""Printing an episode trace readably (``ask``)."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from more_lightning.agent.episodes import EpisodeTrace


def print_trace(trace: EpisodeTrace, console: Console, passages_shown: int = 3) -> None:
    """Steps with their experts and top passages, sub-answers, and the final answer."""
    episode = trace.episode
    console.print(
        Panel(f"{episode.question}" + (f"\n[dim]image: {episode.image}[/]" if episode.image else ""), title="question")
    )
    for i, step in enumerate(trace.steps, start=1):
        table = Table(title=f"step {i}: {step.sub_question.strip()}  →  {', '.join(step.experts)}", show_lines=False)
        table.add_column("passage")
        table.add_column("score", justify="right")
        table.add_column("text")
        for passage in step.passages[:passages_shown]:
            score = f"{passage.score:.3f}" if passage.score is not None else "-"
            table.add_row(f"{passage.expert}:{passage.id}", score, passage.text[:160])
        console.print(table)
        console.print(f"  sub-answer: [bold]{step.answer.strip() or '(none)'}[/]")
    if not trace.steps:
        console.print("  (the policy asked no sub-question)")
    console.print(Panel(trace.final_answer or "(no answer parsed)", title="final answer"))
    console.print(
        f"[dim]parse failures {trace.parse_failures}, retries {trace.retries}, retrieval calls "
        f"{trace.retrieval_calls}, passages read {trace.passages_read}, prompt tokens {trace.prompt_tokens:,}, "
        f"seconds {dict((k, round(v, 2)) for k, v in trace.seconds.items())}[/]"
    )
