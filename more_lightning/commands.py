"""The subcommands of ``python -m more_lightning`` that are not LightningCLI's (one typed function each)."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from rich.console import Console

from more_lightning.data.jsonl import OnError
from more_lightning.data.qa import QASource
from more_lightning.demo import run_demo
from more_lightning.episodes import EpisodeConfig
from more_lightning.experts.connection import WeaviateConfig, open_weaviate
from more_lightning.experts.weaviate_expert import WeaviateExpert
from more_lightning.policy.generation import SamplingConfig
from more_lightning.policy.loading import PolicyConfig


def install_weaviate(force: bool = False) -> int:
    """Build the Weaviate server binary into the cache with `go install` (no-op when already built).

    Args:
        force: rebuild even if the binary exists.
    """
    from more_lightning.experts.binary import install_binary

    print(install_binary(force=force))
    return 0


def server(data_dir: str | None = None, http_port: int | None = None, grpc_port: int | None = None) -> int:
    """Run the embedded Weaviate server in the foreground until Ctrl-C (for `weaviate.mode: local` users).

    Args:
        data_dir: persistence folder (default: the cache's default data folder).
        http_port: HTTP port (default: a free one).
        grpc_port: gRPC port (default: a free one).
    """
    from more_lightning.experts.connection import WeaviateConfig
    from more_lightning.experts.server import WeaviateServer

    folder = WeaviateConfig(data_dir=data_dir).resolved_data_dir()
    with WeaviateServer(folder, http_port=http_port, grpc_port=grpc_port) as running:
        print(f"Weaviate ready at {running.url} (gRPC {running.ports.grpc}), data in {folder}. Ctrl-C stops it.")
        print(
            f"Connect with: weaviate.mode=local, host=127.0.0.1, http_port={running.ports.http}, "
            f"grpc_port={running.ports.grpc}"
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        try:
            while running.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


def build_tiny_model(name: str = "qwen2.5-vl", seed: int = 0) -> int:
    """Build (once) a tiny random model that configs can name as `tiny:<name>`, and print its folder.

    Args:
        name: which tiny model.
        seed: weight-initialisation seed.
    """
    from more_lightning.policy.tiny import tiny_model_path

    print(tiny_model_path(name, seed=seed))
    return 0


def index(
    experts: list[WeaviateExpert],
    weaviate: WeaviateConfig = WeaviateConfig(),
    batch_size: int = 64,
    on_error: OnError = "skip",
    recreate: bool = False,
) -> int:
    """Embed the experts' corpora and import them into their Weaviate collections (resumable, no duplicates).

    Args:
        experts: the experts to index (``class_path``/``init_args``), each with its ``corpus``.
        weaviate: how to reach Weaviate (default: the embedded server).
        batch_size: rows embedded and imported together.
        on_error: ``skip`` bad rows (reported at the end) or ``raise`` at the first one.
        recreate: drop each collection first and index from scratch.
    """
    from more_lightning.experts.indexing import index_expert, progress_bar, report_table

    with open_weaviate(weaviate) as client:
        reports = []
        with progress_bar() as progress:
            for expert in experts:
                expert.bind(client, weaviate.describe())
                reports.append(index_expert(expert, batch_size, on_error, recreate, progress))
        console = Console()
        console.print(report_table(reports))
        for report in reports:
            for failure in report.failures:
                console.print(f"[yellow]not indexed[/] {failure}")
    return 1 if any(r.failures for r in reports) and on_error == "raise" else 0


def _agent(
    policy: PolicyConfig,
    experts: list[WeaviateExpert],
    weaviate: WeaviateConfig,
    episode: EpisodeConfig,
    sampling: SamplingConfig,
    seed: int,
    batch_size: int,
):
    """The policy sampler, the opened expert pool and the runner shared by evaluate and ask."""
    from more_lightning.episodes import EpisodeRunner
    from more_lightning.experts.pool import ExpertPool
    from more_lightning.policy.loading import load_policy
    from more_lightning.policy.sampler import PolicySampler

    torch.manual_seed(seed)
    model, processor = load_policy(policy)
    pool = ExpertPool(experts, weaviate).open()
    sampler = PolicySampler(model, processor, sampling, batch_prompts=batch_size, seed=seed)
    return EpisodeRunner(sampler, pool, episode), pool


def evaluate(
    policy: PolicyConfig,
    experts: list[WeaviateExpert],
    datasets: list[QASource],
    weaviate: WeaviateConfig = WeaviateConfig(),
    episode: EpisodeConfig = EpisodeConfig(),
    sampling: SamplingConfig = SamplingConfig(greedy=True, max_new_tokens=128),
    seed: int = 0,
    batch_size: int = 8,
    output_dir: str = "eval_outputs",
    routers: list[str] | None = None,
) -> int:
    """Run MoRE episodes over QA sets and score F1-Recall and routing accuracy per dataset (table, summary.json,
    traces.jsonl, figures).

    Args:
        policy: the policy model; set ``policy.adapter`` to evaluate a trained LoRA adapter.
        experts: the retrieval experts (already indexed).
        datasets: the QA files to run.
        weaviate: how to reach Weaviate.
        episode: step limit, retrieval depth, retries, prompts, and the router (``episode.router``).
        sampling: decoding (greedy by default; seeded sampling gives the same numbers for the same seed).
        seed: sampling seed.
        batch_size: episodes run together.
        output_dir: where summary.json, traces.jsonl and the figures go (one sub-folder per router with ``routers``).
        routers: compare these routers on the same questions with the same policy answering, e.g.
            ``[policy, none, all, gold, "fixed:table retriever"]`` (default: ``episode.router`` alone).
    """
    from more_lightning.evaluation import confusion_table, report_table, systems_table

    results = evaluate_systems(
        policy, experts, datasets, weaviate, episode, sampling, seed, batch_size, output_dir, routers
    )
    console = Console()
    for router, reports in results.items():
        console.print(report_table(reports, title=f"F1-Recall, router {router}"))
        overall = reports[-1]
        if overall.confusion:
            console.print(confusion_table(overall.confusion, title=f"Routing of {router}: gold expert × first route"))
    if len(results) > 1:
        console.print(systems_table(results))
    print(f"Wrote summary.json, traces.jsonl and figures under {output_dir}")
    return 0


def router_folder(router: str) -> str:
    """A file-system name for a router (``fixed:table retriever`` → ``fixed-table-retriever``)."""
    return router.replace(":", "-").replace(" ", "-")


def evaluate_systems(
    policy, experts, datasets, weaviate, episode, sampling, seed, batch_size, output_dir, routers=None
) -> dict[str, list]:
    """Each router's per-dataset reports on the same questions, the policy loaded and the experts opened once; each
    router's outputs and figures written into ``output_dir`` (its own sub-folder when there are several)."""
    from more_lightning.episodes import EpisodeRunner

    routers = routers or [episode.router]
    runner, pool = _agent(policy, experts, weaviate, episode, sampling, seed, batch_size)
    results = {}
    try:
        examples, skipped = read_datasets(datasets)
        for router in routers:
            config = replace(episode, router=router)
            routed = EpisodeRunner(runner.sampler, pool, config)
            traces = run_episodes(routed, examples, batch_size, label=f"router {router}")
            folder = Path(output_dir) / router_folder(router) if len(routers) > 1 else Path(output_dir)
            results[router] = report_and_write(traces, skipped, folder, policy, sampling, seed, config)
            write_figures(results[router], folder, router)
    finally:
        pool.close()
    if len(routers) > 1:
        from more_lightning.figures import systems_bar_chart

        scores = {router: {r.dataset: r.f1_recall for r in reports} for router, reports in results.items()}
        systems_bar_chart(scores, Path(output_dir) / "systems_f1_recall.png")
    return results


def write_figures(reports: list, folder: Path, router: str) -> None:
    """F1-Recall per dataset, and the confusion matrix of the routing where questions name their gold expert."""
    from more_lightning.figures import confusion_matrix_figure, systems_bar_chart

    systems_bar_chart({router: {r.dataset: r.f1_recall for r in reports}}, folder / "f1_recall.png")
    overall = reports[-1]
    if overall.confusion:
        title = f"Routing ({router}): gold expert × first route"
        confusion_matrix_figure(overall.confusion, folder / "routing_confusion.png", title)


def read_datasets(datasets: list[QASource], report_bad_rows: bool = False) -> tuple[list, dict[str, int]]:
    """Every question of ``datasets``, and the unreadable rows per dataset name (each printed as ``file:line:
    problem`` with ``report_bad_rows``)."""
    examples, skipped = [], {}
    for source in datasets:
        read = source.read()
        examples += read
        name = source.dataset or source.format
        skipped[name] = skipped.get(name, 0) + read.report.rows_skipped
        if report_bad_rows:
            for bad in read.report.bad_rows:
                print(f"skipped bad row {bad}")
    return examples, skipped


def run_episodes(runner, examples: list, batch_size: int, label: str = "questions") -> list:
    """The episodes of ``examples``, ``batch_size`` at a time, with a progress bar."""
    from more_lightning.progress import progress_bar

    traces = []
    with progress_bar() as progress:
        task = progress.add_task(label, total=len(examples))
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            traces += runner.run([e.to_episode() for e in batch])
            progress.advance(task, len(batch))
    return traces


def report_and_write(traces, skipped, output_dir, policy, sampling, seed, episode) -> list:
    """The per-dataset reports of ``traces``, written with the traces and settings into ``output_dir``."""
    from more_lightning.evaluation import summarise, write_outputs

    reports = summarise(traces, skipped)
    settings = {"policy": asdict(policy), "sampling": asdict(sampling), "seed": seed, "episode": asdict(episode)}
    write_outputs(output_dir, reports, traces, settings)
    return reports


def ask(
    question: str,
    policy: PolicyConfig,
    experts: list[WeaviateExpert],
    image: str | None = None,
    weaviate: WeaviateConfig = WeaviateConfig(),
    episode: EpisodeConfig = EpisodeConfig(),
    sampling: SamplingConfig = SamplingConfig(greedy=True, max_new_tokens=128),
    seed: int = 0,
    datasets: list[QASource] | None = None,
    batch_size: int = 1,
    output_dir: str | None = None,
) -> int:
    """Answer one question with routed retrieval and print the trace (steps, experts, passages, answers).

    Args:
        question: the question.
        policy: the policy; set ``policy.adapter`` to use a trained adapter.
        experts: the retrieval experts (already indexed).
        image: an image file for a visual question.
        weaviate: how to reach Weaviate.
        episode: step limit, retrieval depth, retries.
        sampling: decoding (greedy by default).
        seed: sampling seed.
        datasets: ignored (lets ask share evaluate's config file).
        batch_size: ignored (as above).
        output_dir: ignored (as above).
    """
    from more_lightning.protocol.records import Episode
    from more_lightning.trace_view import print_trace

    if image is not None and not Path(image).is_file():
        raise FileNotFoundError(f"--image {image}: no such file")
    runner, pool = _agent(policy, experts, weaviate, episode, sampling, seed, 1)
    try:
        (trace,) = runner.run([Episode("ask", question, image)])
    finally:
        pool.close()
    print_trace(trace, Console())
    return 0


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
    """
    from more_lightning.progress import progress_bar
    from more_lightning.synthesis import (
        KeepFilter,
        Progress,
        SynthesisStats,
        settings_key,
        synthesize_questions,
        write_stats,
    )

    if episode.router != "policy":
        raise ValueError(
            f"synthesize runs the teacher's own routing: episode.router must be policy, not {episode.router!r}"
        )
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
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
    runner, pool = _agent(policy, experts, weaviate, episode, sampling, seed, batch_size)
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
    return 0


def demo_data(output: str = "data/demo", seed: int = 0) -> int:
    """Build the demo corpora and questions from packaged data (Wikipedia, tables, images, FanOutQA).

    Args:
        output: the folder to write; ``data/demo`` (the default, what the demo configs name) links to a folder in the
            cache, shared by every clone on this machine.
        seed: the train/validation split seed.
    """
    from more_lightning.demo import ensure_demo_data

    print(ensure_demo_data(output, Console(), seed=seed))
    return 0


def sweep(
    sweep_file: str,
    count: int = 3,
    storage: str = "sqlite:///sweeps/study.db",
    study_name: str | None = None,
    seed: int | None = None,
    output_dir: str = "sweeps",
    extra_args: list[str] | None = None,
) -> int:
    """Run a W&B sweep file as an Optuna study (random, grid, TPE; Hyperband pruning); resumable, parallel workers.

    Args:
        sweep_file: the sweep YAML (the same file ``wandb sweep`` takes), e.g. ``configs/sweep.yaml``.
        count: finished trials the study should hold (a resumed study runs only the rest; grid: at most its size).
        storage: the study's RDB URL; several workers sharing it run trials of one study in parallel.
        study_name: the study in ``storage`` (default: the sweep file's name).
        seed: sampler seed (reproducible with one worker; leave unset when several workers share the study).
        output_dir: trial logs and ``leaderboard.json``.
        extra_args: appended to every trial's command, e.g. ``["--trainer.max_steps=50"]``.
    """
    from rich.table import Table

    from more_lightning.ops.sweep import leaderboard, run_sweep, write_leaderboard
    from more_lightning.ops.sweep_spec import SweepSpec

    spec = SweepSpec.load(sweep_file)
    name = study_name or Path(sweep_file).stem
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))  # the running trial fails
    study = run_sweep(spec, count, storage, name, seed, output_dir, extra_args)
    rows = leaderboard(study)
    write_leaderboard(rows, Path(output_dir) / "leaderboard.json")
    table = Table(title=f"study {name!r} in {storage}: {spec.metric} ({spec.goal})")
    for column in ("rank", "trial", "state", spec.metric, "seconds", *spec.parameters):
        table.add_column(column)
    for rank, row in enumerate(rows, start=1):
        value = f"{row.value:.4f}" if row.value is not None else f"- ({row.log})"
        values = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.parameters.values()]
        seconds = f"{row.seconds:.0f}" if row.seconds is not None else "-"
        table.add_row(str(rank), str(row.number), row.state, value, seconds, *values)
    Console().print(table)
    best = rows[0] if rows and rows[0].value is not None else None
    if best is not None:
        print(f"best: trial {best.number} {spec.metric}={best.value:.4f} {json.dumps(best.parameters)}")
    print(
        f"Wrote {output_dir}/leaderboard.json. Dashboard: optuna-dashboard {storage}; "
        "sync the offline W&B runs with `wandb sync <run folder>`"
    )
    return 0 if best is not None else 1


def export(adapter: str, output: str, merge: bool = True, base: str | None = None, dtype: str = "float32") -> int:
    """Export a trained adapter: merged into a full-precision copy of its base (an HF model folder), or alone.

    Args:
        adapter: a PEFT adapter folder (``SaveAdapter``) or a ``fit`` checkpoint (``checkpoints/.../last.ckpt``).
        output: the folder to write.
        merge: merge the adapter into the base weights (``false``: save the adapter alone, in PEFT format).
        base: the base model (default: the one the adapter or checkpoint names).
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the exported weights.
    """
    from more_lightning.export import export_policy

    folder = export_policy(adapter, output, merge, base, dtype)
    print(f"{'Merged model' if merge else 'Adapter'} written to {folder}")
    return 0


COMMANDS = {
    "demo": run_demo,
    "demo-data": demo_data,
    "index": index,
    "evaluate": evaluate,
    "ask": ask,
    "synthesize": synthesize,
    "server": server,
    "install-weaviate": install_weaviate,
    "build-tiny-model": build_tiny_model,
    "sweep": sweep,
    "export": export,
}
POSITIONAL_ARGUMENTS = {"sweep"}
"""Commands whose required arguments are positional (``sweep configs/sweep.yaml``, as ``wandb sweep`` takes it)."""
