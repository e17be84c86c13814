"""``evaluate``: MoRE episodes over QA sets, F1-Recall, routing accuracy at each step and what an answer costs per
dataset, each router a system on the same questions (the policy loaded and the experts opened once); ``build_agent``
is the sampler + pool + runner that ``evaluate``, ``ask`` and ``synthesize`` share."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
from rich.console import Console

from more_lightning.agent.episodes import EpisodeConfig
from more_lightning.agent.eval_reports import TRACES, trace_line
from more_lightning.data.qa import QASource
from more_lightning.engines.config import EngineConfig
from more_lightning.errors import UserError
from more_lightning.experts.connection import WeaviateConfig
from more_lightning.experts.weaviate_expert import WeaviateExpert
from more_lightning.policy.generation import SamplingConfig
from more_lightning.policy.loading import PolicyConfig
from more_lightning.protocol.jsonl import describe_reads


def build_agent(
    policy: PolicyConfig,
    experts: list[WeaviateExpert],
    weaviate: WeaviateConfig,
    episode: EpisodeConfig,
    sampling: SamplingConfig,
    seed: int,
    batch_size: int,
    engine: EngineConfig = EngineConfig(),
):
    """The policy sampler, the opened expert pool and the runner shared by evaluate, ask and synthesize. With
    ``engine.kind: vllm`` the policy's weights are not loaded here: the server serves them (and ``policy.adapter``)."""
    from more_lightning.agent.episodes import EpisodeRunner
    from more_lightning.experts.pool import ExpertPool

    torch.manual_seed(seed)
    if engine.kind == "vllm":
        from more_lightning.engines.launch import check_vllm_policy, open_vllm_engine
        from more_lightning.engines.vllm_sampler import VLLMSampler, model_facts
        from more_lightning.policy.loading import load_processor
        from more_lightning.policy.model_source import resolve_model_name

        check_vllm_policy(policy, training=False)
        served = open_vllm_engine(engine, policy, training=False)
        facts = model_facts(resolve_model_name(policy.model))
        sampler = VLLMSampler(served, load_processor(policy.model), facts, sampling, seed=seed)
    else:
        from more_lightning.policy.loading import load_policy
        from more_lightning.policy.sampler import PolicySampler

        model, processor = load_policy(policy)
        sampler = PolicySampler(model, processor, sampling, batch_prompts=batch_size, seed=seed)
    pool = ExpertPool(experts, weaviate).open()
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
    engine: EngineConfig = EngineConfig(),
    share_completions: bool = True,
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
        engine: who samples: ``hf`` (``generate`` in this process) or ``vllm`` (a vLLM server; see
            ``docs/operations.md``).
        share_completions: with several ``routers`` and greedy decoding, generate each distinct prompt once and
            share its completion with every system that asks it again (``agent/shared_completions.py``); ``false``:
            every system generates its own.
    """
    from more_lightning.agent.eval_reports import confusion_table, overall, report_table, systems_table

    results = evaluate_systems(
        policy,
        experts,
        datasets,
        weaviate,
        episode,
        sampling,
        seed,
        batch_size,
        output_dir,
        routers,
        engine,
        share_completions,
    )
    console = Console()
    for router, reports in results.items():
        console.print(report_table(reports, title=f"F1-Recall, router {router}"))
        for routing in overall(reports).routing_by_step:
            title = f"Routing of {router}, step {routing.step}: gold expert × route"
            console.print(confusion_table(routing.confusion, title=title))
    if len(results) > 1:
        console.print(systems_table(results))
    print(f"Wrote summary.json, traces.jsonl and figures under {output_dir}")
    return 0


def router_folder(router: str) -> str:
    """A file-system name for a router (``fixed:table retriever`` → ``fixed-table-retriever``)."""
    return router.replace(":", "-").replace(" ", "-")


def evaluate_systems(
    policy,
    experts,
    datasets,
    weaviate,
    episode,
    sampling,
    seed,
    batch_size,
    output_dir,
    routers=None,
    engine=None,
    share_completions: bool = True,
) -> dict[str, list]:
    """Each router's per-dataset reports on the same questions, the policy loaded and the experts opened once (and,
    decoding greedily, each distinct prompt generated once: ``share_completions``); each router's outputs and
    figures written into ``output_dir`` (its own sub-folder when there are several)."""
    from more_lightning.agent.episodes import EpisodeRunner
    from more_lightning.agent.shared_completions import SharedGreedyCompletions

    routers = routers or [episode.router]
    examples, skipped = read_datasets(datasets)  # before the policy loads: no questions is an error, not 0.00
    runner, pool = build_agent(policy, experts, weaviate, episode, sampling, seed, batch_size, engine or EngineConfig())
    shared = share_completions and sampling.greedy and len(routers) > 1
    sampler = SharedGreedyCompletions(runner.sampler) if shared else runner.sampler
    results = {}
    try:
        for router in routers:
            config = replace(episode, router=router)
            routed = EpisodeRunner(sampler, pool, config)
            folder = Path(output_dir) / router_folder(router) if len(routers) > 1 else Path(output_dir)
            traces = run_episodes(routed, examples, batch_size, f"router {router}", folder / TRACES)
            results[router] = report_and_write(traces, skipped, folder, policy, sampling, seed, config)
            write_figures(results[router], folder, router)
    finally:
        pool.close()
    if shared:
        Console().print(sampler.summary())
    if len(routers) > 1:
        write_systems_figures(results, Path(output_dir))
    return results


def write_systems_figures(results: dict[str, list], folder: Path) -> list[Path]:
    """The systems' F1-Recall per dataset, and F1-Recall against retrievals per question over all questions."""
    from more_lightning.agent.eval_reports import overall
    from more_lightning.agent.figures import cost_scatter, systems_bar_chart

    scores = {router: {r.dataset: r.f1_recall for r in reports} for router, reports in results.items()}
    costs = {
        router: (overall(reports).average_retrieval_calls, overall(reports).f1_recall)
        for router, reports in results.items()
    }
    return [
        systems_bar_chart(scores, folder / "systems_f1_recall.png"),
        cost_scatter(costs, folder / "systems_cost_f1_recall.png"),
    ]


def confusion_file(step: int) -> str:
    """The figure of routing step ``step``'s confusion matrix (step 1 keeps the single-step name)."""
    return "routing_confusion.png" if step == 1 else f"routing_confusion_step{step}.png"


def write_figures(reports: list, folder: Path, router: str) -> None:
    """F1-Recall per dataset, and the confusion matrix of each routing step where questions name its gold expert."""
    from more_lightning.agent.eval_reports import overall
    from more_lightning.agent.figures import confusion_matrix_figure, systems_bar_chart

    systems_bar_chart({router: {r.dataset: r.f1_recall for r in reports}}, folder / "f1_recall.png")
    for routing in overall(reports).routing_by_step:
        title = f"Routing ({router}), step {routing.step}: gold expert × route"
        confusion_matrix_figure(routing.confusion, folder / confusion_file(routing.step), title, routing.step)


class NoQuestions(UserError, ValueError):
    """Every questions file is empty or all its rows are bad (a score over no questions would read as 0.00)."""


def read_datasets(datasets: list[QASource], report_bad_rows: bool = False) -> tuple[list, dict[str, int]]:
    """Every question of ``datasets``, and the unreadable rows per dataset name (each printed as ``file:line:
    problem`` with ``report_bad_rows``); :class:`NoQuestions` when there is none."""
    examples, skipped, reports = [], {}, []
    for source in datasets:
        read = source.read()
        examples += read
        reports.append(read.report)
        name = source.dataset or source.format
        skipped[name] = skipped.get(name, 0) + read.report.rows_skipped
        if report_bad_rows:
            for bad in read.report.bad_rows:
                print(f"skipped bad row {bad}")
    if not examples:
        raise NoQuestions(describe_reads("no questions to run (fix or replace the datasets' files):", reports))
    return examples, skipped


def run_episodes(runner, examples: list, batch_size: int, label: str, traces_file: Path) -> list:
    """The episodes of ``examples``, ``batch_size`` at a time, with a progress bar (a line at least every few
    seconds when stdout is not a terminal, while a batch runs too, its status saying the batch's stage: ``batch 1/3:
    routing step 2/3, 40 episodes``, and the time left counting the batch's stages begun); each finished batch's
    traces are appended to ``traces_file`` at once, so a run that is killed keeps the episodes it finished."""
    from more_lightning.progress import progress_bar

    traces = []
    traces_file.parent.mkdir(parents=True, exist_ok=True)
    batches = range(0, len(examples), batch_size)
    stages = 2 * runner.config.max_steps + 1  # at most: routing and sub-answers per step, then the final answers
    with progress_bar() as progress, traces_file.open("w") as handle:
        task = progress.add_task(label, total=len(examples), unit="questions", status="", partial=0.0)
        for number, start in enumerate(batches, 1):
            where = f"batch {number}/{len(batches)}"
            batch = examples[start : start + batch_size]
            begun = []

            def stage(name: str, where: str = where, size: int = len(batch), begun: list = begun) -> None:
                progress.update(task, status=f"{where}: {name}", partial=size * min(len(begun), stages) / stages)
                begun.append(name)

            finished = runner.run([e.to_episode() for e in batch], on_stage=stage)
            handle.writelines(trace_line(trace) for trace in finished)
            handle.flush()
            traces += finished
            progress.update(task, partial=0.0)
            progress.advance(task, len(batch))
    return traces


def report_and_write(traces, skipped, output_dir, policy, sampling, seed, episode) -> list:
    """The per-dataset reports of ``traces``, written with the traces and settings into ``output_dir``."""
    from more_lightning.agent.eval_reports import summarise, write_outputs

    reports = summarise(traces, skipped)
    settings = {"policy": asdict(policy), "sampling": asdict(sampling), "seed": seed, "episode": asdict(episode)}
    write_outputs(output_dir, reports, traces, settings)
    return reports
