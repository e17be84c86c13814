"""``python -m more_lightning demo`` (what ``make demo`` runs): the whole product once, on a laptop CPU.

1. build the demo data from packaged sources if missing (``demo/data.py``);
2. evaluate the untrained policy (SmolLM2-135M-Instruct) on held-out questions with live retrieval — the experts'
   collections are indexed into the embedded Weaviate server on first use;
3. warm start: supervised fine-tuning on the teacher steps (``configs/demo/sft.yaml``);
4. on-policy Step-GRPO from the warm-start adapter (``configs/demo/fit.yaml``);
5. evaluate the trained policy routing, and the baselines with it answering (no retrieval, each fixed expert, all
   experts, the gold expert); print the systems' table (scores and costs); write the figures; ``ask`` once; print
   the targets (the whole run's wall time among them) and write ``report.json`` (``demo/report.py``).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "demo"
ADAPTER = "checkpoints/demo-adapter"
"""Where ``configs/demo/fit.yaml`` saves the Step-GRPO adapter."""
ASK = "Who directed the film Alien?"


DEMO_DATA_VERSION = "v6"


def demo_data_folder(data_dir: str | Path) -> Path:
    """The demo data folder. ``data_dir`` (default ``data/demo``, what the configs name) becomes a link to a folder in
    the cache, so every clone on this machine shares one built and indexed copy; a link to an older version's folder
    is moved to this version's."""
    from more_lightning.paths import cache_root

    path = Path(data_dir)
    versions = cache_root() / "demo-data"
    target = versions / DEMO_DATA_VERSION
    linked = Path(os.readlink(path)) if path.is_symlink() else None
    if linked is not None and linked.parent == versions and linked != target:
        path.unlink()
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target, target_is_directory=True)
    return path


def ensure_demo_data(data_dir: str | Path, console: Console, seed: int = 0) -> Path:
    """Build the demo data into ``data_dir`` unless it is there and complete (``paths.build_once``); return it."""
    from more_lightning.demo.data import build_demo_data, verify_demo_data
    from more_lightning.paths import build_once, is_complete

    folder = demo_data_folder(data_dir)
    target = folder.resolve()
    if not is_complete(target):
        console.print("Building the demo data from packaged corpora (once per machine)...")

        def build(staging: Path) -> None:
            print_data_summary(build_demo_data(staging, seed=seed), folder, console)

        build_once(target, build, verify_demo_data)
    return folder


def print_data_summary(summary, folder: Path, console: Console) -> None:
    table = Table(title=f"Demo data in {folder}")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, count in summary.counts.items():
        table.add_row(name, f"{count:,}")
    console.print(table)
    console.print(f"FanOutQA dev: {summary.fanoutqa}")
    for split, counts in summary.questions_by_expert.items():
        console.print(f"{split} questions by gold expert (source): {dict(counts)}")
    if summary.dropped:
        console.print(f"questions dropped, a hop's answer not in its evidence passage: {summary.dropped}")


def _eval_arguments(val_limit: int | None, adapter: str | None, output: Path, engine: str = "hf") -> dict:
    from more_lightning.agent.evaluate import evaluate
    from more_lightning.ops.arguments import function_arguments

    args = ["--config", str(CONFIGS / "eval.yaml"), "--output_dir", str(output), "--engine.kind", engine]
    if adapter:
        args += ["--policy.adapter", adapter]
    arguments = function_arguments(evaluate, args)
    if val_limit is not None:
        for source in arguments["datasets"]:
            source.limit = val_limit
    return arguments


def _fit(config: str, max_steps: int | None, engine: str | None = None) -> Path:
    """Run ``fit`` with a demo config (``engine``: the rollout engine, for a config that samples; with ``vllm``, π_old
    is the server's log-probs: ``loss.old_logprobs: engine``); return its ``metrics.csv``."""
    from more_lightning.ops.lightning_cli import run_lightning_cli

    args = ["fit", "--config", str(CONFIGS / config)]
    if engine is not None:
        args += ["--model.rollout.init_args.engine.kind", engine]
    if engine == "vllm":
        args += ["--model.loss.old_logprobs", "engine"]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps)]
    cli = run_lightning_cli(args)
    return Path(cli.trainer.logger.log_dir) / "metrics.csv"


def run_demo(
    max_steps: int | None = None,
    sft_steps: int | None = None,
    val_limit: int | None = None,
    data_dir: str = "data/demo",
    output_dir: str = "eval_outputs/demo",
    engine: Literal["hf", "vllm"] = "hf",
) -> int:
    """The main job: demo data → evaluate → warm start → on-policy Step-GRPO → the trained policy against the
    baselines (no retrieval, each fixed expert, all, gold) → report.json and figures → ask, on the embedded Weaviate.

    Args:
        max_steps: optimizer steps of the Step-GRPO fit (default: ``configs/demo/fit.yaml``'s).
        sft_steps: optimizer steps of the warm start (default: ``configs/demo/sft.yaml``'s).
        val_limit: held-out questions per dataset (default: ``configs/demo/eval.yaml``'s).
        data_dir: where the demo data is built (once).
        output_dir: where the report, the figures and every system's traces go.
        engine: who samples in the evaluations and the Step-GRPO rollouts: ``hf`` (in this process) or ``vllm`` (one
            vLLM server for the whole run; ``make setup-vllm`` first).
    """
    from more_lightning.agent.ask import ask
    from more_lightning.agent.eval_reports import systems_table
    from more_lightning.agent.evaluate import evaluate_systems
    from more_lightning.demo.report import system_name, targets, targets_table, write_demo_figures, write_report

    console = Console()
    began = time.monotonic()
    output = Path(output_dir)
    seconds: dict[str, float] = {}

    def stage(name: str, title: str, function, *args):
        console.rule(title)
        started = time.monotonic()
        result = function(*args)
        seconds[name] = round(time.monotonic() - started, 1)
        return result

    console.rule("more_lightning demo: MoRE routing, warm start + Step-GRPO, experts in Weaviate")
    stage("data", "demo data", ensure_demo_data, data_dir, console)
    console.print(
        "[yellow]The text-image expert uses open_clip with RANDOM weights (none ships offline); its search "
        "leans on BM25 over captions and on the question's own image.[/]"
    )

    def run_systems(adapter: str | None, routers: list[str], folder: Path) -> dict:
        arguments = _eval_arguments(val_limit, adapter, folder, engine)
        arguments["routers"] = routers
        results = evaluate_systems(**arguments)
        return {system_name(router, adapter is not None): reports for router, reports in results.items()}

    systems = stage(
        "evaluate_untrained", "1/4 the untrained policy routes", run_systems, None, ["policy"], output / "untrained"
    )
    logs = {
        "sft": stage("sft", "2/4 warm start: supervised fine-tuning on the teacher steps", _fit, "sft.yaml", sft_steps),
        "step_grpo": stage(
            "step_grpo", "3/4 on-policy Step-GRPO from the warm start", _fit, "fit.yaml", max_steps, engine
        ),
    }
    experts = [e.name for e in _eval_arguments(val_limit, None, output)["experts"]]
    routers = ["policy", "none", *(f"fixed:{name}" for name in experts), "all", "gold"]
    title = "4/4 the trained policy routes, and the baselines (the trained policy answers)"
    systems.update(stage("evaluate_trained", title, run_systems, ADAPTER, routers, output / "trained"))
    order = ["untrained", "no_retrieval", *(f"fixed:{name}" for name in experts), "all", "gold", "trained"]
    systems = {name: systems[name] for name in order}
    console.print(systems_table(systems, title="F1-Recall (routing accuracy) and costs on the held-out questions"))
    figures = write_demo_figures(output, systems, logs)
    arguments = _eval_arguments(None, ADAPTER, output, engine)
    ask_arguments = {
        k: v for k, v in arguments.items() if k in ("policy", "experts", "weaviate", "episode", "sampling", "engine")
    }
    stage("ask", f"ask: {ASK}", lambda: ask(ASK, **ask_arguments))
    seconds["total"] = round(time.monotonic() - began, 1)
    found = targets(systems, seconds)
    console.print(targets_table(found))
    report = write_report(output, systems, found, seconds)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(f"Wall time: {', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}; peak memory {peak:,.0f} MiB.")
    console.print(f"Report, figures ({len(figures)}) and traces in {output}/ ({report.name})")
    return 0


def demo_data(output: str = "data/demo", seed: int = 0) -> int:
    """Build the demo corpora and questions from packaged data (Wikipedia, tables, images, FanOutQA).

    Args:
        output: the folder to write; ``data/demo`` (the default, what the demo configs name) links to a folder in the
            cache, shared by every clone on this machine.
        seed: the train/validation split seed.
    """
    print(ensure_demo_data(output, Console(), seed=seed))
    return 0
